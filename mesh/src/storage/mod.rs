//! Storage through sea-orm: SQLite (default, a file under the data dir) or PostgreSQL, chosen by
//! `DATABASE_URL`; migrations written as SQL per backend and run at start; commands' writes
//! committed in groups ([`group`]). On a SQLite file, reads outside a transaction ([`reads`]) and
//! every write transaction ([`writes`]) run on the calling thread instead of sqlx's
//! per-connection worker thread.

pub mod coalesced;
pub mod group;
mod parked;
mod pg_conns;
pub mod pg_lead;
pub mod pg_reads;
pub mod pg_writes;
pub mod reads;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, ExecResult, QueryResult,
    QuerySelect, RuntimeErr, Select, Statement, TransactionTrait, TryIntoModel,
};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

/// A database handle shared by a service's handlers, relay and consumers.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    /// SQLite file only: connections that read on the calling thread ([`reads`]).
    readers: Option<Arc<reads::SqliteReaders>>,
    /// PostgreSQL only: connections kept out of the pool for reads ([`pg_reads`]).
    pg_readers: Option<Arc<pg_reads::PgReaders>>,
    /// PostgreSQL only: connections write transactions keep between transactions
    /// ([`pg_writes`]).
    pg_writers: Option<Arc<pg_writes::PgWriters>>,
    /// SQLite file only: the connection write transactions run on, on the calling thread
    /// ([`writes`]).
    writer: Option<Arc<writes::SqliteWriter>>,
    /// SQLite has one writer at a time: writers queue here instead of failing with SQLITE_BUSY.
    write_lock: Option<Arc<Mutex<()>>>,
    /// Woken after a commit that wrote outbox rows.
    outbox_wakeup: Arc<Notify>,
    /// Where [`Db::write`] queues its units (`None` in the writers' own handle).
    group: Option<group::GroupCommit>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("backend", &self.backend()).finish()
    }
}

impl Db {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://...`) with the default pool
    /// size, creating a SQLite file's directory if needed.
    pub async fn connect(url: &str) -> Result<Self, DbErr> {
        Self::connect_with(url, None).await
    }

    /// [`Db::connect`] with at most `max_connections` connections (default: 16 on PostgreSQL,
    /// [`SQLITE_POOL`] on SQLite). On PostgreSQL every replica of every service holds up to this
    /// many: the pool holds all but one, the outbox relay's lead session ([`Db::lead_session`])
    /// is the last (a pool of at least one). Keep replicas × this below the server's
    /// `max_connections`.
    pub async fn connect_with(url: &str, max_connections: Option<u32>) -> Result<Self, DbErr> {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10));
        let sqlite = url.starts_with("sqlite:");
        if sqlite {
            if let Some(dir) = sqlite_dir(url) {
                std::fs::create_dir_all(&dir).map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", dir.display())))?;
            }
            // A SQLite "connection" is a file handle in this process: nothing to ping, and a
            // ping is one more hand-off to sqlx's per-connection worker thread on every query.
            opts.max_connections(max_connections.unwrap_or(SQLITE_POOL))
                .min_connections(1)
                .test_before_acquire(false);
            // WAL with `synchronous=NORMAL`: a commit appends to the WAL without fsync, the WAL is
            // synced at each checkpoint. A process crash loses nothing committed; a power loss or
            // kernel crash may lose the last commits (never corrupts the file), and the relay may
            // already have published their events: after a power loss, other services can hold
            // effects of a write this one no longer has. SQLite is the single-machine default;
            // deployments run PostgreSQL, which syncs every commit (`synchronous_commit=on`).
            // `mmap_size`: pages are read from a shared mapping instead of a `pread` into each
            // connection's own cache.
            opts.map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    .pragma("mmap_size", SQLITE_MMAP_SIZE.to_string())
            });
        } else {
            // A pooled connection is pinged only after it sat idle long enough for a server,
            // proxy or firewall to have dropped it, not on every checkout (a round trip each).
            // One of the process's connections is the outbox relay's session of its own
            // ([`pg_lead`]), opened beside the pool: the pool has the rest.
            opts.max_connections(max_connections.unwrap_or(16).saturating_sub(1).max(1))
                .min_connections(1)
                .test_before_acquire_if_idle_for(Duration::from_secs(30));
        }
        let conn = sea_orm::Database::connect(opts).await?;
        let write_lock = sqlite.then(|| Arc::new(Mutex::new(())));
        let pg_pool = (conn.get_database_backend() == DatabaseBackend::Postgres).then(|| conn.get_postgres_connection_pool().clone());
        let mut db = Self {
            writer: write_lock.as_ref().and_then(|lock| sqlite_writer(url, lock.clone())),
            readers: reads::SqliteReaders::for_url(url).map(Arc::new),
            pg_readers: pg_pool.clone().and_then(pg_reads::PgReaders::new).map(Arc::new),
            pg_writers: pg_pool.map(|pool| Arc::new(pg_writes::PgWriters::new(pool))),
            conn,
            write_lock,
            outbox_wakeup: Arc::new(Notify::new()),
            group: None,
        };
        let writers = if sqlite { 1 } else { group::PG_WRITERS };
        db.group = Some(group::GroupCommit::start(db.clone(), writers));
        Ok(db)
    }

    /// Runs `unit` in a write transaction shared with the units other callers queued at the
    /// same time (group commit, see [`group`]) and returns its outcome once that transaction
    /// has committed. `unit` may run more than once (only its committed run counts), so it
    /// must do nothing but read and write through the transaction it is given; its `Err`
    /// rolls back only its own writes. A failed commit is `E::from` the database error.
    pub async fn write<T, E, F>(&self, unit: F) -> Result<T, E>
    where
        F: for<'t> Fn(&'t WriteTxn) -> group::UnitFuture<'t, T, E> + Send + Sync + 'static,
        T: Send + 'static,
        E: From<DbErr> + Send + 'static,
    {
        match &self.group {
            Some(group) => group.write(unit).await,
            // Only the writers' own handle has no group, and they run units, not queue them.
            None => Err(E::from(DbErr::Custom("a database writer cannot queue a write".into()))),
        }
    }

    /// On PostgreSQL, a session of its own that leads while it holds the advisory lock `key`
    /// ([`pg_lead`]), idle at most `idle_timeout`; `None` on SQLite (one process: nobody to
    /// share with).
    pub fn lead_session(&self, key: i64, idle_timeout: Duration) -> Option<pg_lead::PgLead> {
        (self.backend() == DatabaseBackend::Postgres)
            .then(|| pg_lead::PgLead::new(self.conn.get_postgres_connection_pool().clone(), key, idle_timeout))
    }

    /// Transactions [`Db::write`] has committed (each holding one or more units).
    pub fn group_commits(&self) -> u64 {
        self.group.as_ref().map_or(0, group::GroupCommit::commits)
    }

    /// The connection pool, for reads ([`ReadModels`] on `Db` reads whole models faster).
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// Reads of [`ReadModels`] answered without the pool: on the calling thread (a SQLite
    /// file) or on a kept connection (PostgreSQL).
    pub fn direct_reads(&self) -> u64 {
        self.readers.as_ref().map_or(0, |r| r.direct_reads()) + self.pg_readers.as_ref().map_or(0, |r| r.direct_reads())
    }

    /// Write transactions that began on a connection kept from an earlier one (PostgreSQL,
    /// [`pg_writes`]) instead of one from the pool.
    pub fn kept_write_begins(&self) -> u64 {
        self.pg_writers.as_ref().map_or(0, |w| w.kept_begins())
    }

    /// SQLite or PostgreSQL.
    pub fn backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }

    /// Describes tables whose rows write transactions read back (see [`Tables`]); the mesh's
    /// own are described from the start.
    pub fn describe(&self, add: impl FnOnce(&mut writes::TableTypes)) {
        if let Some(writer) = &self.writer {
            writer.describe(add);
        }
    }

    /// Starts a write transaction. Dropping it without [`WriteTxn::commit`] rolls back.
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        self.begin_write_with(None).await
    }

    /// [`Db::begin_write`]; on PostgreSQL `pg_settings` (such as `SET LOCAL lock_timeout = …`)
    /// runs in the same round trip as the BEGIN, for this transaction only. Other backends have
    /// no such settings and ignore it.
    pub async fn begin_write_with(&self, pg_settings: Option<&'static str>) -> Result<WriteTxn, DbErr> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let txn = match (&self.writer, &self.pg_writers) {
            (Some(writer), _) => {
                writer.begin().await?;
                TxnConn::Sqlite(writer.clone())
            }
            (None, Some(writers)) => TxnConn::Pg(writers.begin(pg_settings).await?),
            // SQLite without a writer of its own (in memory, or a file it could not open): BEGIN
            // IMMEDIATE takes the write lock up front, so a writer in another process (a second
            // instance during a restart) makes this one wait (busy timeout) instead of failing
            // with SQLITE_BUSY_SNAPSHOT when it upgrades from reading to writing.
            (None, None) => {
                let options = sea_orm::TransactionOptions {
                    sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                    ..Default::default()
                };
                TxnConn::Pool(self.conn.begin_with_options(options).await?)
            }
        };
        Ok(WriteTxn {
            txn: Some(txn),
            guard,
            outbox: std::sync::Mutex::new(Vec::new()),
            after_commit: std::sync::Mutex::new(Vec::new()),
            wakeup: self.outbox_wakeup.clone(),
        })
    }

    /// Runs the migrations `M` (each service's own plus the mesh's outbox and inbox tables).
    ///
    /// On PostgreSQL they all run in one transaction on a pooled connection, under a
    /// transaction-level advisory lock: replicas starting at the same instant on an empty
    /// database take turns (the first migrates, the others wait for its commit, then find nothing
    /// left to do; concurrent `CREATE EXTENSION` / `CREATE TABLE IF NOT EXISTS` otherwise fail on
    /// PostgreSQL's catalog unique indexes). A replica killed mid-migration takes its transaction,
    /// and so its lock and its half-done schema, with it. Each migration is a savepoint inside.
    ///
    /// The tables of `M` are described to the SQLite writer ([`Tables`]).
    pub async fn migrate<M: sea_orm_migration::MigratorTrait + Tables>(&self) -> Result<(), DbErr> {
        self.describe(M::tables);
        if self.backend() != DatabaseBackend::Postgres {
            return M::up(&self.conn, None).await;
        }
        let txn = self.conn.begin().await?;
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
        M::up(&txn, None).await?;
        txn.commit().await
    }

    /// Resolves when a commit wrote outbox rows (used by the relay).
    pub(crate) fn outbox_wakeup(&self) -> Arc<Notify> {
        self.outbox_wakeup.clone()
    }
}

/// Where whole models are read from: a transaction or the pool (any sea-orm connection), or a
/// [`Db`] outside a transaction, which on a SQLite file reads on the calling thread ([`reads`])
/// and on PostgreSQL on connections it keeps out of the pool ([`pg_reads`]).
/// Repositories take `&impl ReadModels` for their reads, so one function serves handlers (given
/// the `Db`) and write units (given their transaction).
pub trait ReadModels: Sync {
    /// The models `select` finds.
    fn read_all<E>(&self, select: Select<E>) -> impl Future<Output = Result<Vec<E::Model>, DbErr>> + Send
    where
        E: EntityTrait,
        E::Model: Send,
        E::ActiveModel: TryIntoModel<E::Model>;

    /// The first model `select` finds.
    fn read_one<E>(&self, select: Select<E>) -> impl Future<Output = Result<Option<E::Model>, DbErr>> + Send
    where
        E: EntityTrait,
        E::Model: Send,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        async move { Ok(self.read_all(select.limit(1)).await?.into_iter().next()) }
    }
}

impl<C: ConnectionTrait> ReadModels for C {
    fn read_all<E>(&self, select: Select<E>) -> impl Future<Output = Result<Vec<E::Model>, DbErr>> + Send
    where
        E: EntityTrait,
        E::Model: Send,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        select.all(self)
    }
}

impl ReadModels for Db {
    async fn read_all<E>(&self, select: Select<E>) -> Result<Vec<E::Model>, DbErr>
    where
        E: EntityTrait,
        E::Model: Send,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        if let Some(models) = self.readers.as_ref().and_then(|r| r.models(&select)) {
            return Ok(models);
        }
        if let Some(pg) = &self.pg_readers
            && let Some(models) = pg.models(&select).await
        {
            return models;
        }
        select.all(&self.conn).await
    }
}

/// Default SQLite pool. Reads of whole models run on connections of their own ([`reads`]); the
/// pool serves the one writer at a time and the few reads that do not run on the calling thread,
/// and each connection keeps its own page cache (up to 2 MiB) and statement cache, and its own
/// memory map (counted in the process's RSS once per connection). Measured in the bench on the
/// same day: 2 connections gave the same throughput as 4 and 3–10 MiB less resident memory
/// after the load (before the readers, 2, 4 and 8 gave the same throughput too).
pub const SQLITE_POOL: u32 = 2;

/// How much of a SQLite file is memory-mapped (256 MiB; larger files read the rest by `pread`).
const SQLITE_MMAP_SIZE: i64 = 268_435_456;

/// Rows per multi-row statement (the outbox's inserts, the view's upserts, message's inserts). A
/// statement's text varies with its rows, and this bounds it to a few forms: on PostgreSQL each
/// new form costs a round trip to prepare it and a place in the connection's statement cache. (On
/// SQLite a multi-row insert of more than 4 rows is parsed each time instead of displacing cached
/// statements, [`reads`]' rule.)
pub const ROWS_PER_STATEMENT: usize = 16;

/// `rows` in groups of at most [`ROWS_PER_STATEMENT`], in their order: one group per statement.
pub fn per_statement<T>(rows: impl IntoIterator<Item = T>) -> impl Iterator<Item = Vec<T>> {
    let mut rows = rows.into_iter().peekable();
    std::iter::from_fn(move || {
        rows.peek()?;
        Some(rows.by_ref().take(ROWS_PER_STATEMENT).collect())
    })
}

/// Key of the PostgreSQL advisory lock migrations run under (`"SHMIGRAT"` as an integer).
pub const MIGRATION_LOCK: i64 = 0x5348_4d49_4752_4154;

fn sqlite_dir(url: &str) -> Option<std::path::PathBuf> {
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_path_buf())
}

/// A write transaction: state changes and their outbox events commit together.
pub struct WriteTxn {
    /// `None` only after commit or during drop.
    txn: Option<TxnConn>,
    guard: Option<OwnedMutexGuard<()>>,
    /// The outbox rows its units emitted, inserted when it commits.
    outbox: std::sync::Mutex<Vec<crate::events::outbox::entity::ActiveModel>>,
    /// What runs once it has committed ([`WriteTxn::after_commit`]).
    after_commit: std::sync::Mutex<Vec<AfterCommit>>,
    wakeup: Arc<Notify>,
}

/// A step [`WriteTxn::after_commit`] defers.
type AfterCommit = Box<dyn FnOnce() + Send>;

/// What a [`WriteTxn`] runs its statements on: the SQLite file's writer, on the calling thread
/// ([`writes`]), a PostgreSQL connection the writers keep ([`pg_writes`]), or a sea-orm
/// transaction on the pool (SQLite in memory).
pub enum TxnConn {
    /// A transaction open on the SQLite writer.
    Sqlite(Arc<writes::SqliteWriter>),
    /// A transaction on a PostgreSQL connection of the writers.
    Pg(pg_writes::PgTxn),
    /// A transaction on a pooled connection.
    Pool(DatabaseTransaction),
}

#[sea_orm_migration::async_trait::async_trait]
impl ConnectionTrait for TxnConn {
    fn get_database_backend(&self) -> DatabaseBackend {
        match self {
            Self::Sqlite(_) => DatabaseBackend::Sqlite,
            Self::Pg(_) => DatabaseBackend::Postgres,
            Self::Pool(txn) => txn.get_database_backend(),
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Self::Sqlite(writer) => writes::exec_result(writer.execute(&stmt)?).await,
            Self::Pg(txn) => txn.execute(stmt).await,
            Self::Pool(txn) => txn.execute_raw(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Self::Sqlite(writer) => writes::exec_result(writer.execute_unprepared(sql)?).await,
            Self::Pg(txn) => txn.execute_unprepared(sql).await,
            Self::Pool(txn) => txn.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Self::Sqlite(writer) => Ok(writes::query_results(writer.query(&stmt, 1)?).await?.pop()),
            Self::Pg(txn) => txn.query_one(stmt).await,
            Self::Pool(txn) => txn.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Self::Sqlite(writer) => writes::query_results(writer.query(&stmt, usize::MAX)?).await,
            Self::Pg(txn) => txn.query_all(stmt).await,
            Self::Pool(txn) => txn.query_all_raw(stmt).await,
        }
    }
}

impl WriteTxn {
    /// Commits, then wakes the outbox relay if events were written and runs the steps left to
    /// [`WriteTxn::after_commit`].
    ///
    /// The outbox rows emitted in it are inserted first, a few to a statement, in the order they
    /// were emitted (so in commit order); a failure there rolls the transaction back.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        let events = std::mem::take(self.outbox.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner));
        let wrote_outbox = !events.is_empty();
        crate::events::outbox::insert_rows(&*self, events).await?;
        let txn = self
            .txn
            .take()
            .ok_or_else(|| DbErr::Custom("transaction already finished".into()))?;
        // On error the transaction is rolled back; the writer lock is released when `self`
        // drops, after.
        match txn {
            TxnConn::Sqlite(writer) => {
                writer.commit()?;
                // Its statements ran without ever giving the thread back (each is done when
                // called); yield once per transaction, so a loop of writes (a dispatcher or a
                // consumer working off a backlog) cannot keep other tasks, NATS's connection
                // among them, off this worker thread.
                tokio::task::yield_now().await;
            }
            TxnConn::Pg(txn) => txn.commit().await?,
            TxnConn::Pool(txn) => txn.commit().await?,
        }
        if wrote_outbox {
            self.wakeup.notify_one();
        }
        for step in std::mem::take(self.after_commit.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            step();
        }
        Ok(())
    }

    /// Runs `step` right after the transaction commits, on the committing task; never if it
    /// rolls back or its commit fails. For what must not be seen before the writes are (a
    /// hand-off of the rows written to a task that acts on them).
    pub fn after_commit(&self, step: impl FnOnce() + Send + 'static) {
        self.after_commit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(step));
    }

    /// Rolls back now (dropping does it too); a failed rollback is logged.
    pub async fn rollback(mut self) {
        let rolled_back = match self.txn.take() {
            Some(TxnConn::Sqlite(writer)) => {
                writer.rollback();
                Ok(())
            }
            Some(TxnConn::Pg(txn)) => txn.rollback().await,
            Some(TxnConn::Pool(txn)) => txn.rollback().await,
            None => Ok(()),
        };
        if let Err(e) = rolled_back {
            tracing::warn!(error = %e, "rollback failed");
        }
    }

    /// Adds outbox rows to insert when the transaction commits ([`WriteTxn::commit`]).
    pub(crate) fn defer_outbox(&self, rows: impl IntoIterator<Item = crate::events::outbox::entity::ActiveModel>) {
        self.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(rows);
    }
}

impl Drop for WriteTxn {
    /// An uncommitted transaction rolls back. The writer lock is held until the rollback has
    /// really run, so the next SQLite writer never meets a half-finished transaction.
    fn drop(&mut self) {
        let (Some(txn), guard) = (self.txn.take(), self.guard.take()) else {
            return;
        };
        let txn = match txn {
            TxnConn::Sqlite(writer) => {
                writer.rollback();
                return;
            }
            // Queues its ROLLBACK; the pool's ping sends it.
            TxnConn::Pg(txn) => {
                drop(txn);
                return;
            }
            TxnConn::Pool(txn) => txn,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = txn.rollback().await {
                        tracing::warn!(error = %e, "rollback failed");
                    }
                    drop(guard);
                });
            }
            Err(_) => drop(txn),
        }
    }
}

impl std::ops::Deref for WriteTxn {
    type Target = TxnConn;
    fn deref(&self) -> &TxnConn {
        // Only `commit` and `drop` take the transaction, and both consume or end `self`.
        self.txn.as_ref().expect("transaction is open while WriteTxn is alive")
    }
}

/// The entities of a service's tables, described to the SQLite writer so rows a write reads
/// back are typed by their entity ([`writes`]); implemented by each service's migrator.
pub trait Tables {
    /// Adds each entity, e.g. `tables.add::<listings::Entity>()`.
    fn tables(tables: &mut writes::TableTypes);
}

/// The writer of a SQLite file URL (with the mesh's own tables described), whose transactions
/// hold `lock`; `None` for other URLs, and when it cannot be opened (then transactions run on the
/// pool).
fn sqlite_writer(url: &str, lock: Arc<Mutex<()>>) -> Option<Arc<writes::SqliteWriter>> {
    let path = reads::sqlite_file(url)?;
    match writes::SqliteWriter::open(&path, lock) {
        Ok(writer) => {
            writer.describe(crate::events::describe_tables);
            Some(Arc::new(writer))
        }
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "cannot open the SQLite writer; writes run on the pool");
            None
        }
    }
}

/// A migration written as SQL, once per backend (statements separated by `;`).
#[derive(Debug, Clone, Copy)]
pub struct SqlMigration {
    /// Unique, ordered name (`m0001_listings`).
    pub name: &'static str,
    /// SQL for SQLite.
    pub sqlite: &'static str,
    /// SQL for PostgreSQL.
    pub postgres: &'static str,
}

impl MigrationName for SqlMigration {
    fn name(&self) -> &str {
        self.name
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for SqlMigration {
    /// In one transaction on every backend: a migration applies whole or not at all, and on
    /// SQLite its statements run on one connection (a table rebuilt and renamed by one statement
    /// is then visible to the next).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let sql = match backend {
            DatabaseBackend::Postgres => self.postgres,
            _ => self.sqlite,
        };
        let conn = manager.get_connection();
        if matches!(backend, DatabaseBackend::Postgres) {
            // One round trip; PostgreSQL runs a multi-statement simple query atomically.
            conn.execute_unprepared(sql).await?;
        } else {
            for stmt in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                conn.execute_unprepared(stmt).await?;
            }
        }
        Ok(())
    }
}

/// Boxes SQL migrations for a `MigratorTrait::migrations` list.
pub fn boxed(migrations: &'static [SqlMigration]) -> Vec<Box<dyn MigrationTrait>> {
    migrations.iter().map(|m| Box::new(*m) as Box<dyn MigrationTrait>).collect()
}

/// A service's migrations: the mesh's own tables (outbox, inbox) first, then `own`.
pub fn with_mesh_tables(own: &'static [SqlMigration]) -> Vec<Box<dyn MigrationTrait>> {
    let mut all = boxed(crate::events::MIGRATIONS);
    all.extend(boxed(own));
    all
}

/// True when `err` is a violation of the constraint or trigger named `name`.
pub fn violates(err: &DbErr, name: &str) -> bool {
    err.to_string().contains(name)
}

/// True when the database aborted the transaction because of a concurrent one: a PostgreSQL
/// serialization failure (`40001`) or deadlock (`40P01`, which concurrent inserts checked by one
/// exclusion constraint can meet), or SQLite's busy answers. Running the whole transaction again
/// is safe, and is what [`retry_conflicts`] does.
pub fn is_transient_conflict(err: &DbErr) -> bool {
    matches!(error_code(err).as_deref(), Some("40001" | "40P01" | "5" | "517"))
}

/// The database's own code for `err` (a PostgreSQL SQLSTATE, a SQLite result code), if the
/// database answered with one.
pub fn error_code(err: &DbErr) -> Option<String> {
    database_error(err).and_then(|db| db.code().map(|c| c.into_owned()))
}

/// The database's own error inside `err`, if the database answered with one.
fn database_error(err: &DbErr) -> Option<&dyn sea_orm::sqlx::error::DatabaseError> {
    match sqlx_error(err)? {
        sea_orm::sqlx::Error::Database(db) => Some(db.as_ref()),
        _ => None,
    }
}

/// The sqlx error inside `err`, if sqlx answered with one.
fn sqlx_error(err: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Conn(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// How many times [`retry_conflicts`] runs a transaction at most.
pub const CONFLICT_ATTEMPTS: u32 = 5;

/// Runs `transaction` (one whole transaction, begun and committed inside) and runs it again, up
/// to [`CONFLICT_ATTEMPTS`] times with a short growing pause, while it fails with a
/// [transient conflict](is_transient_conflict). `db_err` finds the database error inside `E`.
pub async fn retry_conflicts<T, E, F, Fut>(mut transaction: F, db_err: impl Fn(&E) -> Option<&DbErr>) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match transaction().await {
            Err(e) if attempt < CONFLICT_ATTEMPTS && db_err(&e).is_some_and(is_transient_conflict) => {
                tracing::debug!(attempt, "transaction met a concurrent one; running it again");
                // 2, 4, 8, 16 ms plus up to as much again, so the two sides do not meet again.
                let base = 1u64 << attempt;
                tokio::time::sleep(Duration::from_millis(base + fastrand::u64(0..=base))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// True when `err` is a unique-key violation (as the database's own error says: sqlx's, and the
/// SQLite writer's ([`writes`]), which keeps SQLite's codes).
pub fn is_unique_violation(err: &DbErr) -> bool {
    database_error(err).is_some_and(|e| e.is_unique_violation())
}

/// Inserts `row` unless a row with the same values in `key` (a unique key of the table) exists:
/// false then, and nothing changes. One statement (`INSERT … ON CONFLICT (key) DO NOTHING`)
/// where a read and an insert took two, and no error that would roll a group of units back
/// ([`group`]) for a row that was there already.
pub async fn insert_unless_taken<A>(
    db: &impl ConnectionTrait,
    row: A,
    key: impl IntoIterator<Item = <A::Entity as EntityTrait>::Column>,
) -> Result<bool, DbErr>
where
    A: sea_orm::ActiveModelTrait,
{
    let inserted = A::Entity::insert(row)
        .on_conflict_do_nothing_on(key)
        .exec_without_returning(db)
        .await?;
    Ok(matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0))
}

/// A model with a field of every type the readers ([`reads`], [`pg_reads`]) map, for their tests.
#[cfg(test)]
#[allow(unreachable_pub)]
pub(crate) mod typed {
    use sea_orm::entity::prelude::*;

    /// The URL of a SQLite file in `dir` (the file itself: `typed.db`).
    pub fn url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}/typed.db?mode=rwc", dir.path().display())
    }

    /// A database on a SQLite file in `dir` with the empty table of this model, described to its
    /// writer.
    pub async fn file_db(dir: &tempfile::TempDir) -> crate::storage::Db {
        let db = crate::storage::Db::connect(&url(dir)).await.expect("connect");
        db.conn().execute_unprepared(SQLITE_TABLE).await.expect("create");
        db.describe(|t| {
            t.add::<Entity>();
        });
        db
    }

    /// Its table on SQLite.
    pub const SQLITE_TABLE: &str = "CREATE TABLE typed (id INTEGER PRIMARY KEY AUTOINCREMENT, small INTEGER NOT NULL, \
        maybe_small INTEGER, big BIGINT NOT NULL, maybe_big BIGINT, flag BOOLEAN NOT NULL, name TEXT NOT NULL, \
        maybe_name TEXT, payload BLOB NOT NULL, ratio REAL NOT NULL)";

    /// Its table on PostgreSQL.
    pub const PG_TABLE: &str = "CREATE TABLE typed (id BIGINT PRIMARY KEY, small INTEGER NOT NULL, maybe_small INTEGER, \
        big BIGINT NOT NULL, maybe_big BIGINT, flag BOOLEAN NOT NULL, name TEXT NOT NULL, maybe_name TEXT, \
        payload BYTEA NOT NULL, ratio DOUBLE PRECISION NOT NULL)";

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "typed")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub small: i32,
        pub maybe_small: Option<i32>,
        pub big: i64,
        pub maybe_big: Option<i64>,
        pub flag: bool,
        pub name: String,
        pub maybe_name: Option<String>,
        pub payload: Vec<u8>,
        pub ratio: f64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_per_statement_in_their_order() {
        let groups: Vec<Vec<usize>> = per_statement(0..2 * ROWS_PER_STATEMENT + 3).collect();
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [ROWS_PER_STATEMENT, ROWS_PER_STATEMENT, 3]
        );
        assert_eq!(groups.concat(), (0..2 * ROWS_PER_STATEMENT + 3).collect::<Vec<_>>());
        assert_eq!(per_statement(Vec::<u8>::new()).count(), 0);
    }

    #[test]
    fn sqlite_dir_is_the_parent_of_the_file() {
        assert_eq!(sqlite_dir("sqlite://./data/catalog.db?mode=rwc"), Some("./data".into()));
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_dir("sqlite://catalog.db"), None);
    }

    /// `.cargo/config.toml` builds SQLite with the query planner stability guarantee; without it
    /// every `LIMIT ?` query is re-prepared on each execution.
    #[tokio::test]
    async fn sqlite_is_built_with_a_stable_query_planner() {
        let db = Db::connect("sqlite::memory:").await.expect("connect");
        let rows = db
            .conn()
            .query_all_raw(sea_orm::Statement::from_string(db.backend(), "PRAGMA compile_options"))
            .await
            .expect("compile options");
        let options: Vec<String> = rows.iter().filter_map(|r| r.try_get_by_index::<String>(0).ok()).collect();
        assert!(
            options.iter().any(|o| o == "ENABLE_QPSG"),
            "SQLite built without ENABLE_QPSG (is .cargo/config.toml's LIBSQLITE3_FLAGS in effect?): {options:?}"
        );
    }

    /// A database on a SQLite file (in the directory returned with it) with a table `t (v)`.
    async fn with_table_t() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(&format!("sqlite://{}/t.db?mode=rwc", dir.path().display()))
            .await
            .expect("connect");
        db.conn().execute_unprepared("CREATE TABLE t (v INTEGER)").await.expect("create");
        (dir, db)
    }

    #[tokio::test]
    async fn writes_commit_and_roll_back() {
        let (_dir, db) = with_table_t().await;
        let tx = db.begin_write().await.expect("begin");
        tx.execute_unprepared("INSERT INTO t VALUES (1)").await.expect("insert");
        tx.commit().await.expect("commit");
        {
            let tx = db.begin_write().await.expect("begin");
            tx.execute_unprepared("INSERT INTO t VALUES (2)").await.expect("insert");
            // dropped: rolled back
        }
        let rows = db
            .conn()
            .query_all_raw(sea_orm::Statement::from_string(db.backend(), "SELECT v FROM t"))
            .await
            .expect("select");
        assert_eq!(rows.len(), 1);
    }

    #[tokio::test]
    async fn after_commit_steps_run_once_committed_and_never_after_a_rollback() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (_dir, db) = with_table_t().await;
        let ran = Arc::new(AtomicUsize::new(0));
        let count = |ran: &Arc<AtomicUsize>| {
            let ran = ran.clone();
            move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        };
        let tx = db.begin_write().await.expect("begin");
        tx.execute_unprepared("INSERT INTO t VALUES (1)").await.expect("insert");
        tx.after_commit(count(&ran));
        tx.after_commit(count(&ran));
        assert_eq!(ran.load(Ordering::SeqCst), 0, "not before the commit");
        tx.commit().await.expect("commit");
        assert_eq!(ran.load(Ordering::SeqCst), 2, "each step once the commit is done");

        let dropped = db.begin_write().await.expect("begin");
        dropped.after_commit(count(&ran));
        drop(dropped);
        let rolled_back = db.begin_write().await.expect("begin");
        rolled_back.after_commit(count(&ran));
        rolled_back.rollback().await;
        assert_eq!(ran.load(Ordering::SeqCst), 2, "a transaction that did not commit runs none");
    }
}
