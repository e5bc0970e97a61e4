//! Write transactions on a SQLite file, run on the calling thread ([`super::WriteTxn`] of a
//! [`super::Db`] on a SQLite file; in-memory SQLite and PostgreSQL keep sea-orm's transaction).
//!
//! sqlx-sqlite runs every statement on its connection's own worker thread: each statement is
//! handed to that thread and its result (each row, then the outcome) handed back, two or more
//! thread wake-ups per statement, and BEGIN and COMMIT three each. A statement of a write takes
//! microseconds in SQLite; the bench's profile of PlaceReservation had a quarter of every
//! service's CPU in `futex` and the scheduler, most of it these hand-offs. Here a transaction's
//! statements run on one rusqlite connection, on the thread of the task that runs the
//! transaction, while it holds the [`super::Db`]'s writer lock (one writer at a time, as before).
//!
//! What stays as it was:
//! - **Durability**: the same file, WAL, `synchronous=NORMAL`, foreign keys on (see
//!   [`super::Db::connect_with`]). `BEGIN IMMEDIATE` takes the write lock up front; a writer in
//!   another process makes it wait (up to [`BUSY_WAIT`], without blocking the thread) and then
//!   fail with SQLite's busy code, which [`super::is_transient_conflict`] knows.
//! - **Errors**: SQLite's failures reach callers as the database errors sqlx would give (the
//!   extended result code as the code, unique and foreign-key violations as such), so
//!   [`super::is_unique_violation`], [`super::violates`] and [`super::error_code`] answer alike.
//! - **Rows**: typed as sea-orm's drivers type them, through the entities. Each result column
//!   that comes from a table column (SQLite's column metadata names it, also under `RETURNING`)
//!   takes the `Value` of that entity column's type ([`TableTypes`], filled from each service's
//!   [`super::Tables`]); a computed column (`COUNT(*)`) takes its SQLite storage class. A column
//!   of a table no entity describes is an error, not a guess: an `i32` field given a 64-bit
//!   value would read as NULL.
//!
//! Checkpoints: the writer never checkpoints while committing (that would copy the WAL into the
//! file and fsync it on the calling thread); once the WAL holds [`CHECKPOINT_FRAMES`] pages a passive
//! checkpoint runs on a blocking thread, on a connection of its own, between two transactions
//! (it holds the writer lock, as SQLite's own checkpoint inside a commit would): it then copies
//! every frame, and the next transaction writes the WAL from its start again. A WAL that grew
//! past [`WAL_LIMIT`] (a long reader kept it from starting over) is cut back to it then.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use sea_orm::sqlx::error::{DatabaseError, ErrorKind};
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, ExecResult, IdenStatic, Iterable, MockDatabase, MockExecResult, QueryResult,
    RuntimeErr, Statement, Value,
};

use super::reads::{Kind, Prepared, param_value};

/// How long `BEGIN IMMEDIATE` waits for another process's writer (sqlx's busy timeout was the
/// same).
pub const BUSY_WAIT: Duration = Duration::from_secs(10);

/// Pages in the WAL that start a checkpoint (SQLite's own automatic checkpoint starts at this
/// many too, inside the commit).
pub const CHECKPOINT_FRAMES: i32 = 1000;

thread_local! {
    /// The pages in the WAL after the last commit on this thread, as SQLite's WAL hook tells it
    /// (the hook runs inside the COMMIT, on the thread that runs it).
    static WAL_FRAMES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// SQLite's WAL hook: keeps the count for [`SqliteWriter::commit`].
fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

/// The size a WAL that grew is cut back to when it starts over (`journal_size_limit`).
pub const WAL_LIMIT: i64 = 64 * 1024 * 1024;

/// Prepared statements the writer keeps.
const STATEMENT_CACHE: usize = 128;

/// The value types of the columns of each table an entity describes, by table and column name.
#[derive(Debug, Default)]
pub struct TableTypes(HashMap<String, HashMap<String, Kind>>);

impl TableTypes {
    /// Adds the columns of `E`'s table. An entity column of a type rows cannot be typed as here
    /// (a date, a UUID, JSON) is left out: a write reading it back fails loudly.
    pub fn add<E: EntityTrait>(&mut self) -> &mut Self {
        let columns = E::Column::iter()
            .filter_map(|c| Kind::of(&sea_orm::ColumnTrait::def(&c)).map(|k| (c.as_str().to_owned(), k)))
            .collect();
        self.0.insert(E::default().as_str().to_owned(), columns);
        self
    }

    fn kind(&self, table: &str, column: &str) -> Result<Kind, DbErr> {
        let columns = self.0.get(table).ok_or_else(|| {
            DbErr::Custom(format!(
                "table {table} is described by no entity of this service's Tables: its rows cannot be typed"
            ))
        })?;
        columns.get(column).copied().ok_or_else(|| {
            DbErr::Custom(format!(
                "column {table}.{column} is not a column of its entity (or has a type rows are not read as)"
            ))
        })
    }
}

/// The writer of one SQLite file: one connection, used by one transaction at a time.
pub struct SqliteWriter {
    conn: Mutex<Writer>,
    tables: RwLock<TableTypes>,
    checkpoints: Arc<Checkpoints>,
}

/// The checkpoints of the file: one at a time, on a connection of their own (opened on first
/// use), each holding the writer lock.
struct Checkpoints {
    path: PathBuf,
    conn: Mutex<Option<rusqlite::Connection>>,
    running: AtomicBool,
    done: AtomicU64,
    /// The [`super::Db`]'s writer lock.
    writers: Arc<tokio::sync::Mutex<()>>,
}

/// The connection and, per statement, the name and value type of each result column.
struct Writer {
    conn: rusqlite::Connection,
    columns: HashMap<String, Arc<[ResultColumn]>>,
}

/// A result column: its name and the value type of the entity column it comes from (`None`: a
/// computed column).
type ResultColumn = (String, Option<Kind>);

impl SqliteWriter {
    /// A writer of the file at `path` (which the pool created), whose transactions hold `lock`.
    pub(super) fn open(path: &Path, lock: Arc<tokio::sync::Mutex<()>>) -> Result<Self, rusqlite::Error> {
        Ok(Self {
            conn: Mutex::new(Writer {
                conn: open(path)?,
                columns: HashMap::new(),
            }),
            tables: RwLock::new(TableTypes::default()),
            checkpoints: Arc::new(Checkpoints {
                path: path.to_owned(),
                conn: Mutex::new(None),
                running: AtomicBool::new(false),
                done: AtomicU64::new(0),
                writers: lock,
            }),
        })
    }

    /// Describes more tables (see [`TableTypes::add`]).
    pub(super) fn describe(&self, add: impl FnOnce(&mut TableTypes)) {
        add(&mut self.tables.write().unwrap_or_else(|p| p.into_inner()));
        // Column maps were made from the tables known then.
        self.lock().columns.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`), waiting without blocking the thread
    /// while another process writes.
    pub(super) async fn begin(&self) -> Result<(), DbErr> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let outcome = self.lock().conn.execute_batch("BEGIN IMMEDIATE");
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) if is_busy(&e) && started.elapsed() < BUSY_WAIT => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(exec_err(e)),
            }
        }
    }

    /// Commits the open transaction; once the WAL holds [`CHECKPOINT_FRAMES`] pages, starts a
    /// checkpoint in the background.
    pub(super) fn commit(&self) -> Result<(), DbErr> {
        WAL_FRAMES.set(0);
        let outcome = self.lock().conn.execute_batch("COMMIT");
        if let Err(e) = outcome {
            // A failed COMMIT may leave the transaction open (SQLITE_BUSY); end it.
            self.rollback();
            return Err(exec_err(e));
        }
        if WAL_FRAMES.get() >= CHECKPOINT_FRAMES {
            self.checkpoints.start();
        }
        Ok(())
    }

    /// Rolls the open transaction back, if one is open.
    pub(super) fn rollback(&self) {
        let writer = self.lock();
        if !writer.conn.is_autocommit()
            && let Err(e) = writer.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rollback failed");
        }
    }

    /// Checkpoints run so far.
    #[cfg(test)]
    pub(super) fn checkpoints(&self) -> u64 {
        self.checkpoints.done.load(Ordering::Relaxed)
    }

    /// Runs a statement that returns no rows.
    pub(super) fn execute(&self, stmt: &Statement) -> Result<MockExecResult, DbErr> {
        let params = params(stmt)?;
        let writer = self.lock();
        let changed = Prepared::new(&writer.conn, &stmt.sql, params.len())
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
            .map_err(exec_err)?;
        Ok(MockExecResult {
            last_insert_id: u64::try_from(writer.conn.last_insert_rowid()).unwrap_or(0),
            rows_affected: changed as u64,
        })
    }

    /// Runs SQL text as it is (several statements allowed).
    pub(super) fn execute_unprepared(&self, sql: &str) -> Result<MockExecResult, DbErr> {
        let writer = self.lock();
        let before = writer.conn.total_changes();
        writer.conn.execute_batch(sql).map_err(exec_err)?;
        Ok(MockExecResult {
            last_insert_id: u64::try_from(writer.conn.last_insert_rowid()).unwrap_or(0),
            rows_affected: writer.conn.total_changes() - before,
        })
    }

    /// Runs a statement and returns its rows (at most `limit`).
    pub(super) fn query(&self, stmt: &Statement, limit: usize) -> Result<Vec<Row>, DbErr> {
        let params = params(stmt)?;
        let mut writer = self.lock();
        let Writer { conn, columns } = &mut *writer;
        let mut prepared = Prepared::new(conn, &stmt.sql, params.len()).map_err(query_err)?;
        let result_columns = prepared.columns(columns, &stmt.sql, STATEMENT_CACHE, |s| self.result_columns(s).map(Arc::from))?;
        let mut rows = prepared.query(rusqlite::params_from_iter(params)).map_err(query_err)?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.next().map_err(query_err)? else { break };
            let mut values = BTreeMap::new();
            for (i, (name, kind)) in result_columns.iter().enumerate() {
                let v = row.get_ref(i).map_err(query_err)?;
                let value = match kind {
                    Some(kind) => kind
                        .value(v)
                        .ok_or_else(|| DbErr::Type(format!("column {name} ({kind:?}) holds {:?}", v.data_type())))?,
                    None => untyped(v)?,
                };
                values.insert(name.clone(), value);
            }
            out.push(values);
        }
        Ok(out)
    }

    /// The name and value type of each result column of `stmt`: its entity column's type, or
    /// `None` for a computed column.
    fn result_columns(&self, stmt: &rusqlite::Statement<'_>) -> Result<Vec<ResultColumn>, DbErr> {
        let tables = self.tables.read().unwrap_or_else(|p| p.into_inner());
        stmt.columns_with_metadata()
            .iter()
            .map(|c| {
                let kind = match (c.table_name(), c.origin_name()) {
                    (Some(table), Some(column)) => Some(tables.kind(table, column)?),
                    _ => None,
                };
                Ok((c.name().to_owned(), kind))
            })
            .collect()
    }
}

/// A row: each column's value by its name.
pub(super) type Row = BTreeMap<String, Value>;

/// `done` as sea-orm's result of a statement.
///
/// sea-orm 2.0.4 makes its results only in its drivers: `ExecResult` and `QueryResult` have no
/// public constructor, and its `proxy` feature, meant for drivers outside it, does not compile
/// beside `sqlx-sqlite` (`driver/sqlx_sqlite.rs` builds `Value`s of the wrong shape). Its mock
/// connection is the public way to hand it a result it did not read itself: a connection that
/// answers the next statement with `done` (the statement given to it is not run, and is empty).
pub(super) async fn exec_result(done: MockExecResult) -> Result<ExecResult, DbErr> {
    MockDatabase::new(DatabaseBackend::Sqlite)
        .append_exec_results([done])
        .into_connection()
        .execute_raw(Statement::from_string(DatabaseBackend::Sqlite, String::new()))
        .await
}

/// `rows` as sea-orm's rows (see [`exec_result`]).
pub(super) async fn query_results(rows: Vec<Row>) -> Result<Vec<QueryResult>, DbErr> {
    MockDatabase::new(DatabaseBackend::Sqlite)
        .append_query_results([rows])
        .into_connection()
        .query_all_raw(Statement::from_string(DatabaseBackend::Sqlite, String::new()))
        .await
}

impl Checkpoints {
    /// Starts a checkpoint in the background, unless one is running.
    fn start(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.running.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        handle.spawn(async move {
            // Between transactions: with no frame appended while it copies, the checkpoint
            // catches up with the WAL, and the next transaction starts the WAL over from its
            // beginning instead of growing it (a checkpoint racing the writer never catches up).
            let writers_wait = this.writers.lock().await;
            let run = this.clone();
            let outcome = tokio::task::spawn_blocking(move || run.passive()).await;
            drop(writers_wait);
            match outcome {
                Ok(Ok(())) => {
                    this.done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "SQLite checkpoint failed; the next one retries"),
                Err(e) => tracing::warn!(error = %e, "SQLite checkpoint did not finish; the next one retries"),
            }
            this.running.store(false, Ordering::Release);
        });
    }

    /// A passive checkpoint, on the blocking thread it runs on.
    fn passive(&self) -> Result<(), rusqlite::Error> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match &mut *conn {
            Some(c) => c,
            none => none.insert(open(&self.path)?),
        };
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    }
}

/// Opens the writer's connection on the file the pool created.
fn open(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    // As the pool's connections (see `Db::connect_with`), but: never wait on the thread (begin
    // waits asynchronously), and no checkpoint inside a commit.
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "mmap_size", super::SQLITE_MMAP_SIZE)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", WAL_LIMIT)?;
    // After `wal_autocheckpoint`, which sets a hook of its own.
    conn.wal_hook(Some(note_wal_frames));
    conn.busy_timeout(Duration::ZERO)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// A computed column's value, by its storage class.
fn untyped(v: ValueRef<'_>) -> Result<Value, DbErr> {
    Ok(match v {
        ValueRef::Null => Value::BigInt(None),
        ValueRef::Integer(i) => Value::BigInt(Some(i)),
        ValueRef::Real(f) => Value::Double(Some(f)),
        ValueRef::Text(t) => Value::String(Some(
            std::str::from_utf8(t)
                .map_err(|e| DbErr::Type(format!("text that is not UTF-8: {e}")))?
                .to_owned(),
        )),
        ValueRef::Blob(b) => Value::Bytes(Some(b.to_vec())),
    })
}

fn params(stmt: &Statement) -> Result<Vec<rusqlite::types::Value>, DbErr> {
    match &stmt.values {
        Some(values) => values.0.iter().map(|v| param_value(v).map_err(DbErr::Type)).collect(),
        None => Ok(Vec::new()),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// `e` from a statement that returns no rows, as sea-orm's sqlx driver reports it.
fn exec_err(e: rusqlite::Error) -> DbErr {
    DbErr::Exec(runtime_err(e))
}

/// `e` from a query, as sea-orm's sqlx driver reports it.
fn query_err(e: rusqlite::Error) -> DbErr {
    DbErr::Query(runtime_err(e))
}

fn runtime_err(e: rusqlite::Error) -> RuntimeErr {
    match e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            let message = message.unwrap_or_else(|| failure.to_string());
            RuntimeErr::SqlxError(Arc::new(sea_orm::sqlx::Error::Database(Box::new(SqliteFailure {
                code: failure.extended_code,
                message,
            }))))
        }
        other => RuntimeErr::Internal(other.to_string()),
    }
}

/// A SQLite error as a database error: its extended result code and message.
#[derive(Debug)]
pub(super) struct SqliteFailure {
    code: i32,
    message: String,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    /// The extended result code, as sqlx-sqlite gives it.
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => ErrorKind::UniqueViolation,
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QuerySelect, Set};

    use super::*;
    use crate::storage::{Db, TxnConn, WriteTxn, is_transient_conflict, is_unique_violation, typed};

    fn model(id: i64) -> typed::Model {
        typed::Model {
            id,
            small: -7,
            maybe_small: Some(i32::MAX),
            big: 9_000_000_000,
            maybe_big: None,
            flag: true,
            name: "ünïcode".into(),
            maybe_name: None,
            payload: vec![0, 255],
            ratio: 0.25,
        }
    }

    fn on_the_writer(tx: &WriteTxn) -> bool {
        matches!(&**tx, TxnConn::Sqlite(_))
    }

    #[tokio::test]
    async fn rows_a_write_reads_back_are_typed_by_their_entity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = typed::file_db(&dir).await;
        let tx = db.begin_write().await.expect("begin");
        assert!(on_the_writer(&tx), "a SQLite file's writes run on the writer");
        // INSERT ... RETURNING: i32 and i64 columns, NULLs of each type, bool, text, blob, real.
        let inserted = model(1).into_active_model().insert(&*tx).await.expect("insert");
        assert_eq!(inserted, model(1));
        let mut changed = inserted.clone().into_active_model();
        changed.maybe_big = Set(Some(-1));
        changed.maybe_small = Set(None);
        let updated = changed.update(&*tx).await.expect("update");
        assert_eq!((updated.maybe_big, updated.maybe_small), (Some(-1), None));
        let found = typed::Entity::find()
            .filter(typed::Column::Flag.eq(true))
            .all(&*tx)
            .await
            .expect("select");
        assert_eq!(found, vec![updated.clone()]);
        // A computed column takes its storage class.
        let count = tx
            .query_one_raw(Statement::from_string(
                DatabaseBackend::Sqlite,
                "SELECT COUNT(*) AS n, MAX(maybe_name) AS m FROM typed",
            ))
            .await
            .expect("count")
            .expect("a row");
        assert_eq!(count.try_get::<i64>("", "n").expect("n"), 1);
        assert_eq!(count.try_get::<Option<String>>("", "m").expect("m"), None);
        tx.commit().await.expect("commit");
        // Committed: the pool sees it.
        assert_eq!(typed::Entity::find_by_id(1).one(db.conn()).await.expect("read"), Some(updated));
    }

    #[tokio::test]
    async fn a_table_no_entity_describes_is_refused_not_guessed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = typed::file_db(&dir).await;
        db.conn()
            .execute_unprepared("CREATE TABLE loose (v INTEGER)")
            .await
            .expect("create");
        let tx = db.begin_write().await.expect("begin");
        // Writing needs no types ...
        tx.execute_unprepared("INSERT INTO loose VALUES (1)").await.expect("insert");
        // ... reading a row back does.
        let err = tx
            .query_one_raw(Statement::from_string(DatabaseBackend::Sqlite, "SELECT v FROM loose"))
            .await
            .expect_err("untyped");
        assert!(err.to_string().contains("table loose is described by no entity"), "{err}");
    }

    #[tokio::test]
    async fn sqlite_failures_keep_the_codes_callers_decide_by() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = typed::file_db(&dir).await;
        let tx = db.begin_write().await.expect("begin");
        model(1).into_active_model().insert(&*tx).await.expect("insert");
        let err = model(1).into_active_model().insert(&*tx).await.expect_err("the same key twice");
        assert!(is_unique_violation(&err), "{err}");
        assert_eq!(crate::storage::error_code(&err).as_deref(), Some("1555"), "{err}");
        assert!(crate::storage::violates(&err, "typed.id"), "{err}");
        // A failed statement leaves the transaction usable, as on the pool.
        model(2).into_active_model().insert(&*tx).await.expect("insert");
        tx.commit().await.expect("commit");
        assert_eq!(typed::Entity::find().all(db.conn()).await.expect("read").len(), 2);
    }

    /// On a current-thread runtime: had the second writer's wait blocked the thread, the first
    /// could never commit.
    #[tokio::test]
    async fn a_writer_in_another_process_is_waited_for_without_blocking_the_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = typed::file_db(&dir).await;
        // A second handle on the file has its own writer, as another process would.
        let other = Db::connect(&typed::url(&dir)).await.expect("connect");
        let first = other.begin_write().await.expect("begin");
        first
            .execute_unprepared("INSERT INTO typed VALUES (7, 1, NULL, 2, NULL, 0, 'x', NULL, x'', 1.0)")
            .await
            .expect("insert");
        let release = async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            first.commit().await.expect("commit");
        };
        let (second, ()) = tokio::join!(db.begin_write(), release);
        let second = second.expect("waited for the first writer");
        let seen = second
            .query_one_raw(Statement::from_string(DatabaseBackend::Sqlite, "SELECT COUNT(*) AS n FROM typed"))
            .await
            .expect("count")
            .expect("a row");
        assert_eq!(seen.try_get::<i64>("", "n").expect("n"), 1, "begins after the other's commit");
        drop(second);
        let held = other.begin_write().await.expect("begin");
        let started = Instant::now();
        let err = tokio::time::timeout(BUSY_WAIT + Duration::from_secs(5), db.begin_write())
            .await
            .expect("gives up after its wait")
            .err()
            .expect("refused while the other holds the lock");
        assert!(started.elapsed() >= BUSY_WAIT, "waited {:?}", started.elapsed());
        assert!(is_transient_conflict(&err), "{err}");
        drop(held);
    }

    /// Writes with reads beside them, as under load: the WAL starts over after each checkpoint
    /// instead of growing with every commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_are_checkpointed_in_the_background_and_the_wal_starts_over() {
        use crate::storage::ReadModels;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = typed::file_db(&dir).await;
        let writer = db.writer.clone().expect("a file has a writer");
        let commits = 3000u64;
        for id in 1..=i64::try_from(commits).expect("small") {
            let tx = db.begin_write().await.expect("begin");
            let mut row = model(id);
            row.name = "x".repeat(3000);
            row.into_active_model().insert(&*tx).await.expect("insert");
            tx.commit().await.expect("commit");
            let seen = db.read_all(typed::Entity::find_by_id(id).limit(1)).await.expect("read");
            assert_eq!(seen.len(), 1);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while writer.checkpoints() < 2 {
            assert!(
                Instant::now() < deadline,
                "{} checkpoints after {commits} commits",
                writer.checkpoints()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Each commit writes two or more pages (a frame of 4 KiB and its header each): without
        // starting over the WAL would hold them all; starting over, it holds about
        // CHECKPOINT_FRAMES of them.
        let wal = std::fs::metadata(dir.path().join("typed.db-wal")).expect("wal").len();
        let frames = u64::try_from(CHECKPOINT_FRAMES).expect("positive");
        assert!(
            wal < 2 * frames * 4152 && wal < commits * 2 * 4152 / 2,
            "WAL of {wal} bytes after {commits} commits"
        );
        // Nothing checkpoints inside a commit.
        let conn = writer.lock();
        let auto: i64 = conn.conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).expect("pragma");
        assert_eq!(auto, 0);
    }
}
