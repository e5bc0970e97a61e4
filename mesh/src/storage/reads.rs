//! Reads outside a transaction on a SQLite file ([`super::ReadModels`] on a [`super::Db`]; on
//! PostgreSQL: [`super::pg_reads`]).
//!
//! A read runs on the calling thread, on a
//! connection of its own opened with rusqlite on the same file, instead of on sqlx-sqlite's
//! per-connection worker thread: sqlx hands every statement to that thread and back (two thread
//! wake-ups), and every connection returned to its pool costs a spawned task and a ping (two
//! more). A point read takes microseconds in SQLite, far less than those hand-offs; the bench's
//! profile of GetListing had a fifth of catalog's CPU on sqlx's worker threads and most of
//! another tenth waking them.
//!
//! SQLite in WAL mode lets these readers run beside the writer: a statement sees every
//! transaction committed before it started, so a caller reads its own committed writes.
//!
//! A row becomes a model the way sea-orm's own drivers do it, through the entity: each result
//! column is matched by name to the entity's column, and its SQLite value is turned into the
//! `Value` that column's type takes (an `i32` field takes `Value::Int`, an `i64` field
//! `Value::BigInt`). Whatever this module cannot type exactly — a column type it does not map, a
//! value that does not fit its column (text in an integer column), a parameter type it does not
//! bind, a busy database — runs on the pool instead, as does a statement without a `LIMIT`
//! (it may scan without bound, and the pool runs it off the runtime's threads). So a read here
//! answers what the pool would have (the pool panics on a `u64` parameter above `i64::MAX`; here
//! it falls back to the pool).

use std::any::TypeId;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::types::ValueRef;
use sea_orm::sea_query::ColumnType;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseBackend, DbErr, EntityTrait, IdenStatic, Iterable, QueryTrait, Select, Statement, TryIntoModel,
    Value,
};

use super::parked::Parked;

/// rusqlite connections on one SQLite file, opened as needed and reused.
pub(super) struct SqliteReaders {
    path: PathBuf,
    readers: Parked<Reader>,
    /// Set when a reader could not be opened: every read goes to the pool from then on.
    off: AtomicBool,
}

impl SqliteReaders {
    /// Readers of the file of `url`; `None` for in-memory SQLite and other backends.
    pub(super) fn for_url(url: &str) -> Option<Self> {
        let workers = std::thread::available_parallelism().map_or(2, usize::from);
        sqlite_file(url).map(|path| Self {
            path,
            readers: Parked::new(workers.clamp(2, MAX_READERS)),
            off: AtomicBool::new(false),
        })
    }

    /// Reads answered here so far (the rest went to the pool).
    pub(super) fn direct_reads(&self) -> u64 {
        self.readers.uses()
    }

    /// The models `select` finds, read on the calling thread; `None` when the read must run on
    /// the pool instead.
    pub(super) fn models<E>(&self, select: &Select<E>) -> Option<Vec<E::Model>>
    where
        E: EntityTrait,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        let stmt = select.build(DatabaseBackend::Sqlite);
        if !stmt.sql.contains(" LIMIT ") {
            return None;
        }
        let mut reader = self.take()?;
        let models = reader.models::<E>(&stmt);
        self.readers.push(reader);
        match models {
            Ok(models) => {
                self.readers.served();
                Some(models)
            }
            Err(e) => {
                tracing::debug!(error = %e, sql = %stmt.sql, "SQLite read left to the pool");
                None
            }
        }
    }

    fn take(&self) -> Option<Reader> {
        if let Some(reader) = self.readers.pop() {
            return Some(reader);
        }
        if self.off.load(Ordering::Relaxed) || !self.readers.reserve() {
            return None;
        }
        match Reader::open(&self.path) {
            Ok(reader) => Some(reader),
            Err(e) => {
                self.readers.release();
                self.off.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e, path = %self.path.display(), "cannot open a SQLite reader; every read goes through the pool");
                None
            }
        }
    }
}

/// Most readers open at once. Reads run on the runtime's worker threads and never wait while
/// holding one, so a process needs about one per worker thread (one per core, at least 2, at
/// most this); past that, reads go to the pool.
const MAX_READERS: usize = 8;

/// Statements whose text varies with a list (`IN (?, ?, …)`, rows of a multi-row `VALUES`) and
/// that have more parameters than this are prepared each time instead of displacing the cached
/// ones; every other statement is cached (a model's full-row UPDATE has as many parameters as
/// columns, and its text never varies).
const CACHED_PARAMS: usize = 16;

/// A multi-row `VALUES` of up to this many rows is cached whatever its parameters: its text has
/// that few forms (an event's messages, one per recipient), and parsing a wide insert costs more
/// than running it.
const CACHED_ROWS: usize = 4;

/// True when `sql`, with `params` parameters, is worth keeping prepared (see [`CACHED_PARAMS`]
/// and [`CACHED_ROWS`]).
fn worth_caching(sql: &str, params: usize) -> bool {
    params <= CACHED_PARAMS || !(sql.contains(" IN (") || sql.matches("), (").count() >= CACHED_ROWS)
}

/// A statement prepared for one run, or kept in its connection's cache (see [`worth_caching`]).
pub(super) enum Prepared<'c> {
    Kept(rusqlite::CachedStatement<'c>),
    Once(rusqlite::Statement<'c>),
}

impl<'c> Prepared<'c> {
    /// `sql`, with `params` parameters, prepared on `conn`.
    pub(super) fn new(conn: &'c rusqlite::Connection, sql: &str, params: usize) -> rusqlite::Result<Self> {
        Ok(if worth_caching(sql, params) {
            Self::Kept(conn.prepare_cached(sql)?)
        } else {
            Self::Once(conn.prepare(sql)?)
        })
    }

    /// What `make` makes of this statement's result columns: kept in `maps` (at most `cap`, by
    /// SQL text) beside a kept statement, made anew for a statement prepared once.
    pub(super) fn columns<C: ?Sized, E>(
        &self,
        maps: &mut HashMap<String, Arc<C>>,
        sql: &str,
        cap: usize,
        make: impl FnOnce(&rusqlite::Statement<'_>) -> Result<Arc<C>, E>,
    ) -> Result<Arc<C>, E> {
        if matches!(self, Self::Once(_)) {
            return make(self);
        }
        if let Some(known) = maps.get(sql) {
            return Ok(known.clone());
        }
        let made = make(self)?;
        // Bounded like the statement cache; a map is cheap to make again.
        if maps.len() >= cap {
            maps.clear();
        }
        maps.insert(sql.to_owned(), made.clone());
        Ok(made)
    }
}

impl<'c> std::ops::Deref for Prepared<'c> {
    type Target = rusqlite::Statement<'c>;
    fn deref(&self) -> &Self::Target {
        match self {
            Self::Kept(s) => s,
            Self::Once(s) => s,
        }
    }
}

impl std::ops::DerefMut for Prepared<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Self::Kept(s) => s,
            Self::Once(s) => s,
        }
    }
}

/// Page cache of a reader, KiB: the file's pages come from the memory map; this holds the pages
/// read from the WAL.
const READER_CACHE_KIB: i64 = 512;

/// Prepared statements each reader keeps.
const STATEMENT_CACHE: usize = 64;

/// One connection and how the result columns of each statement it ran map to entity columns
/// (by entity type, then SQL text).
struct Reader {
    conn: rusqlite::Connection,
    columns: HashMap<TypeId, HashMap<String, Arc<[Column]>>>,
}

/// Why a statement was left to the pool.
#[derive(Debug)]
enum Unfit {
    Sqlite(rusqlite::Error),
    /// A parameter or column type this module does not map exactly.
    Type(String),
    /// The entity refused a value or a row.
    Model(DbErr),
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(e) => write!(f, "{e}"),
            Self::Type(what) => f.write_str(what),
            Self::Model(e) => write!(f, "{e}"),
        }
    }
}

impl From<rusqlite::Error> for Unfit {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

impl Reader {
    fn open(path: &std::path::Path) -> Result<Self, rusqlite::Error> {
        use rusqlite::OpenFlags;
        // Read-write without CREATE: the file and its WAL index exist (the pool opened them),
        // and a read-write open shares the WAL index like any other connection; `query_only`
        // then refuses every write on this connection.
        let conn = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.pragma_update(None, "query_only", true)?;
        conn.pragma_update(None, "mmap_size", super::SQLITE_MMAP_SIZE)?;
        conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
        // Never wait on the calling thread: a busy database (WAL recovery, a checkpoint
        // restarting the log) sends the read to the pool, which waits without blocking.
        conn.busy_timeout(std::time::Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self {
            conn,
            columns: HashMap::new(),
        })
    }

    /// Runs `stmt` (built from a `Select<E>`) and turns each row into an `E::Model`.
    fn models<E>(&mut self, stmt: &Statement) -> Result<Vec<E::Model>, Unfit>
    where
        E: EntityTrait,
        E::ActiveModel: TryIntoModel<E::Model>,
    {
        let params = match &stmt.values {
            Some(values) => values.0.iter().map(param).collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let mut prepared = Prepared::new(&self.conn, &stmt.sql, params.len())?;
        let maps = self.columns.entry(TypeId::of::<E>()).or_default();
        let columns = prepared.columns(maps, &stmt.sql, STATEMENT_CACHE, |s| columns_of::<E>(s).map(Arc::from))?;
        rows_to_models::<E>(prepared.query(rusqlite::params_from_iter(params))?, &columns)
    }
}

/// Turns each row into an `E::Model`, column `i` typed as `columns[i]` says.
fn rows_to_models<E>(mut rows: rusqlite::Rows<'_>, columns: &[Column]) -> Result<Vec<E::Model>, Unfit>
where
    E: EntityTrait,
    E::ActiveModel: TryIntoModel<E::Model>,
{
    let entity_columns: Vec<E::Column> = E::Column::iter().collect();
    let targets = columns
        .iter()
        .map(|c| entity_columns.get(c.entity).map(|&e| (e, c.kind)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Unfit::Type("a column map of another entity".into()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut model = E::ActiveModel::default();
        for (i, &(column, kind)) in targets.iter().enumerate() {
            let v = row.get_ref(i)?;
            let value = kind
                .value(v)
                .ok_or_else(|| Unfit::Type(format!("column {} ({kind:?}) holds {:?}", column.as_str(), v.data_type())))?;
            model.try_set(column, value).map_err(Unfit::Model)?;
        }
        out.push(model.try_into_model().map_err(Unfit::Model)?);
    }
    Ok(out)
}

/// A result column: which entity column it is (its index in `E::Column::iter()`) and the
/// value type that column takes.
#[derive(Debug)]
struct Column {
    entity: usize,
    kind: Kind,
}

/// The `Value` variant an entity column takes, from its column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `i32`.
    Int,
    /// `i64`.
    BigInt,
    /// `bool`, stored as 0 or 1.
    Bool,
    /// `String`.
    Text,
    /// `Vec<u8>`.
    Bytes,
    /// `f64`.
    Double,
}

/// Maps each result column of `stmt` to the column of `E` with its name.
fn columns_of<E: EntityTrait>(stmt: &rusqlite::Statement<'_>) -> Result<Vec<Column>, Unfit> {
    let entity_columns: Vec<E::Column> = E::Column::iter().collect();
    stmt.column_names()
        .into_iter()
        .map(|name| {
            let entity = entity_columns
                .iter()
                .position(|c| c.as_str() == name)
                .ok_or_else(|| Unfit::Type(format!("result column {name} is not a column of {}", E::default().as_str())))?;
            let def = entity_columns[entity].def();
            let kind = Kind::of(&def).ok_or_else(|| Unfit::Type(format!("column {name} has type {:?}", def.get_column_type())))?;
            Ok(Column { entity, kind })
        })
        .collect()
}

impl Kind {
    /// The kind of an entity column; `None` for a type this module does not map.
    pub(super) fn of(def: &sea_orm::ColumnDef) -> Option<Self> {
        Some(match def.get_column_type() {
            ColumnType::Integer => Self::Int,
            ColumnType::BigInteger => Self::BigInt,
            ColumnType::Boolean => Self::Bool,
            ColumnType::String(_) | ColumnType::Text | ColumnType::Char(_) => Self::Text,
            ColumnType::Binary(_) | ColumnType::VarBinary(_) | ColumnType::Blob => Self::Bytes,
            ColumnType::Double => Self::Double,
            _ => return None,
        })
    }

    /// `v` as this kind's `Value` (NULL as its typed `None`); `None` when it does not fit.
    pub(super) fn value(self, v: ValueRef<'_>) -> Option<Value> {
        Some(match (self, v) {
            (Self::Int, ValueRef::Null) => Value::Int(None),
            (Self::Int, ValueRef::Integer(i)) => Value::Int(Some(i32::try_from(i).ok()?)),
            (Self::BigInt, ValueRef::Null) => Value::BigInt(None),
            (Self::BigInt, ValueRef::Integer(i)) => Value::BigInt(Some(i)),
            (Self::Bool, ValueRef::Null) => Value::Bool(None),
            (Self::Bool, ValueRef::Integer(i)) => Value::Bool(Some(i != 0)),
            (Self::Text, ValueRef::Null) => Value::String(None),
            (Self::Text, ValueRef::Text(t)) => Value::String(Some(std::str::from_utf8(t).ok()?.to_owned())),
            (Self::Bytes, ValueRef::Null) => Value::Bytes(None),
            (Self::Bytes, ValueRef::Blob(b)) => Value::Bytes(Some(b.to_vec())),
            (Self::Double, ValueRef::Null) => Value::Double(None),
            (Self::Double, ValueRef::Real(f)) => Value::Double(Some(f)),
            _ => return None,
        })
    }
}

/// A statement parameter as SQLite stores it; other types (enums, dates, JSON, UUIDs) send the
/// read to the pool.
fn param(v: &Value) -> Result<rusqlite::types::Value, Unfit> {
    param_value(v).map_err(Unfit::Type)
}

/// A statement parameter as SQLite stores it (as sea-query-sqlx binds the same values for
/// sqlx-sqlite); other types (enums, dates, JSON, UUIDs) are refused, with what they are.
pub(super) fn param_value(v: &Value) -> Result<rusqlite::types::Value, String> {
    use rusqlite::types::Value as Sql;
    fn int(v: Option<i64>) -> Sql {
        v.map_or(Sql::Null, Sql::Integer)
    }
    Ok(match v {
        Value::Bool(b) => int(b.map(i64::from)),
        Value::TinyInt(i) => int(i.map(i64::from)),
        Value::SmallInt(i) => int(i.map(i64::from)),
        Value::Int(i) => int(i.map(i64::from)),
        Value::BigInt(i) => int(*i),
        Value::TinyUnsigned(i) => int(i.map(i64::from)),
        Value::SmallUnsigned(i) => int(i.map(i64::from)),
        Value::Unsigned(i) => int(i.map(i64::from)),
        Value::BigUnsigned(Some(i)) => Sql::Integer(i64::try_from(*i).map_err(|_| format!("parameter {i} out of range"))?),
        Value::BigUnsigned(None) => Sql::Null,
        Value::Float(f) => f.map_or(Sql::Null, |f| Sql::Real(f64::from(f))),
        Value::Double(f) => f.map_or(Sql::Null, Sql::Real),
        Value::String(s) => s.clone().map_or(Sql::Null, Sql::Text),
        Value::Char(c) => c.map_or(Sql::Null, |c| Sql::Text(c.to_string())),
        Value::Bytes(b) => b.clone().map_or(Sql::Null, Sql::Blob),
        other => return Err(format!("parameter of type {other:?}")),
    })
}

/// The file of a SQLite URL (`sqlite://path?mode=rwc`, `sqlite:///abs/path`); `None` for in-memory databases and for
/// other backends.
pub(super) fn sqlite_file(url: &str) -> Option<PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    // As sqlx-sqlite reads it, so both open the same file.
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.split('&').any(|kv| kv == "mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

    use super::*;
    use crate::storage::{Db, ReadModels, typed};

    async fn file_db(dir: &tempfile::TempDir) -> Db {
        let db = typed::file_db(dir).await;
        db.conn()
            .execute_unprepared(
                "INSERT INTO typed VALUES (1, -7, NULL, 9000000000, NULL, 1, 'a', NULL, x'00ff', 0.5), \
                 (2, 2147483647, -2147483648, -1, 5000000000, 0, 'ü', 'b', x'', 2)",
            )
            .await
            .expect("insert");
        db
    }

    #[tokio::test]
    async fn models_read_on_the_calling_thread_equal_the_pools() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = file_db(&dir).await;
        let select = || typed::Entity::find().order_by_asc(typed::Column::Id).limit(10);
        let pooled = select().all(db.conn()).await.expect("pool");
        let direct = db.read_all(select()).await.expect("direct");
        assert_eq!(db.direct_reads(), 1, "the read ran on the pool");
        assert_eq!(direct, pooled);
        assert_eq!(direct.len(), 2);
        // Parameters of each kind bind as the pool binds them.
        let found = db
            .read_one(
                typed::Entity::find()
                    .filter(typed::Column::Small.eq(i32::MAX))
                    .filter(typed::Column::Big.lt(0i64))
                    .filter(typed::Column::Flag.eq(false))
                    .filter(typed::Column::Name.eq("ü"))
                    .filter(typed::Column::Ratio.gt(1.5)),
            )
            .await
            .expect("direct");
        assert_eq!(found.map(|m| m.id), Some(2));
        assert_eq!(db.direct_reads(), 2);
        // A long `IN (...)` list is prepared afresh rather than cached; the answer is the same.
        let ids: Vec<i64> = (0..40).collect();
        let many = db
            .read_all(
                typed::Entity::find()
                    .filter(typed::Column::Id.is_in(ids))
                    .order_by_asc(typed::Column::Id)
                    .limit(40),
            )
            .await
            .expect("direct");
        assert_eq!(many, pooled);
        assert_eq!(db.direct_reads(), 3);
    }

    #[tokio::test]
    async fn a_read_without_a_limit_runs_on_the_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = file_db(&dir).await;
        assert_eq!(db.read_all(typed::Entity::find()).await.expect("read").len(), 2);
        assert_eq!(db.direct_reads(), 0, "an unbounded read ran on the calling thread");
    }

    #[tokio::test]
    async fn a_read_sees_what_was_committed_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = file_db(&dir).await;
        let all = || typed::Entity::find().limit(100);
        let before = db.read_all(all()).await.expect("read").len();
        db.write(|tx| {
            Box::pin(async move {
                tx.execute_unprepared("INSERT INTO typed VALUES (3, 0, 0, 0, 0, 0, 'c', 'c', x'01', 1)")
                    .await
                    .map(|_| ())
            })
        })
        .await
        .expect("write");
        let after = db.read_all(all()).await.expect("read");
        assert_eq!((before, after.len()), (2, 3));
        assert_eq!(db.direct_reads(), 2);
    }

    #[tokio::test]
    async fn a_value_that_does_not_fit_its_column_is_read_by_the_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = file_db(&dir).await;
        // SQLite keeps text in an INTEGER column; an i64 in an i32 column cannot be a model.
        db.conn()
            .execute_unprepared("UPDATE typed SET small = 'seven' WHERE id = 1; UPDATE typed SET maybe_small = 4294967296 WHERE id = 2")
            .await
            .expect("update");
        for id in [1, 2] {
            let select = || typed::Entity::find_by_id(id);
            let direct = db.read_one(select()).await.map_err(|e| e.to_string());
            let pooled = select().one(db.conn()).await.map_err(|e| e.to_string());
            assert_eq!(direct, pooled, "row {id}");
        }
        assert_eq!(db.direct_reads(), 0, "a misfit was read directly");
    }

    #[tokio::test]
    async fn an_in_memory_database_is_read_by_the_pool() {
        let db = Db::connect("sqlite::memory:").await.expect("connect");
        db.conn().execute_unprepared(typed::SQLITE_TABLE).await.expect("create");
        assert!(db.read_all(typed::Entity::find()).await.expect("read").is_empty());
        assert_eq!(db.direct_reads(), 0);
    }

    #[test]
    fn long_statements_are_cached_unless_their_text_varies_with_a_list_or_many_rows() {
        let full_row_update = "UPDATE \"messages\" SET \"a\" = ?, \"b\" = ? WHERE \"id\" = ?";
        assert!(worth_caching(full_row_update, 18));
        assert!(worth_caching("UPDATE \"t\" SET \"x\" = ? WHERE \"seq\" IN (?, ?)", 3));
        assert!(!worth_caching("UPDATE \"t\" SET \"x\" = ? WHERE \"seq\" IN (?, ?, ?)", 40));
        // Rows of ten columns.
        let rows = |n: usize| {
            format!(
                "INSERT INTO \"t\" VALUES {}",
                vec![format!("({})", ["?"; 10].join(", ")); n].join(", ")
            )
        };
        assert!(worth_caching(&rows(4), 40), "a few rows: a few forms");
        assert!(!worth_caching(&rows(5), 50));
    }

    #[test]
    fn the_file_of_a_url() {
        assert_eq!(sqlite_file("sqlite://./data/catalog.db?mode=rwc"), Some("./data/catalog.db".into()));
        assert_eq!(sqlite_file("sqlite:///tmp/x.db"), Some("/tmp/x.db".into()));
        assert_eq!(sqlite_file("sqlite:////tmp/x.db"), Some("//tmp/x.db".into()));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory&cache=shared"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
