//! What PostgreSQL's readers ([`super::pg_reads`]), writers ([`super::pg_writes`]) and the
//! relay's lead session ([`super::pg_lead`]) share: connections kept beside the pool (when one is
//! too old to trust, when the pool can spare one), sea-orm statements bound and run for sqlx as
//! sea-orm's driver runs them, sqlx errors mapped as sea-orm's driver maps them, and which errors
//! end a session.

use std::time::{Duration, Instant};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{AssertSqlSafe, PgPool, Postgres};
use sea_orm::{ConnAcquireErr, DbErr, ExecResult, QueryResult, RuntimeErr, Statement, Values};
use sea_query_sqlx::SqlxValues;

use super::parked::Parked;

/// How long a kept connection may sit unused before it is closed instead of used (a proxy or
/// firewall may have dropped it without a word; the pool pings such a connection before it
/// hands it out, kept connections are never pinged).
pub(super) const MAX_IDLE: Duration = Duration::from_secs(30);

/// Connections kept out of a pool, each idle one with the time it was last used.
pub(super) type KeptConns = Parked<(PoolConnection<Postgres>, Instant)>;

/// An idle kept connection used within [`MAX_IDLE`]; an older one is closed (sqlx bounds the
/// close) and no longer counts as kept, and `None` is returned for it as when none is idle.
pub(super) fn pop_fresh(kept: &KeptConns) -> Option<PoolConnection<Postgres>> {
    let (mut conn, last_used) = kept.pop()?;
    if last_used.elapsed() < MAX_IDLE {
        return Some(conn);
    }
    conn.close_on_drop();
    kept.release();
    None
}

/// Whether `pool` can spare a connection now (one idle, or fewer open than its maximum): only
/// then is a connection kept out of it, so nobody waits on the pool behind a kept one.
pub(super) fn pool_has_room(pool: &PgPool) -> bool {
    pool.num_idle() > 0 || pool.size() < pool.options().get_max_connections()
}

/// `stmt` bound for sqlx as sea-orm's driver binds it (`sea-query-sqlx`).
pub(super) fn bind(stmt: &Statement) -> sea_orm::sqlx::query::Query<'_, Postgres, SqlxValues> {
    let values = stmt.values.clone().unwrap_or(Values(Vec::new()));
    sea_orm::sqlx::query_with(AssertSqlSafe(stmt.sql.as_str()), SqlxValues(values))
}

/// Runs `stmt` on `conn` and answers what sea-orm's driver answers for it.
pub(super) async fn execute(conn: &mut sea_orm::sqlx::PgConnection, stmt: &Statement) -> Result<ExecResult, DbErr> {
    bind(stmt).execute(conn).await.map(ExecResult::from).map_err(exec_err)
}

/// Runs `sql` on `conn` as a simple query (no parameters, any number of statements).
pub(super) async fn execute_unprepared(conn: &mut sea_orm::sqlx::PgConnection, sql: &str) -> Result<ExecResult, DbErr> {
    use sea_orm::sqlx::Executor;
    conn.execute(AssertSqlSafe(sql.to_owned()))
        .await
        .map(ExecResult::from)
        .map_err(exec_err)
}

/// The rows `stmt` returns on `conn`.
pub(super) async fn query_all(conn: &mut sea_orm::sqlx::PgConnection, stmt: &Statement) -> Result<Vec<QueryResult>, DbErr> {
    let rows = bind(stmt).fetch_all(conn).await.map_err(query_err)?;
    Ok(rows.into_iter().map(QueryResult::from).collect())
}

/// The first row `stmt` returns on `conn`, if any.
pub(super) async fn query_one(conn: &mut sea_orm::sqlx::PgConnection, stmt: &Statement) -> Result<Option<QueryResult>, DbErr> {
    let row = bind(stmt).fetch_optional(conn).await.map_err(query_err)?;
    Ok(row.map(QueryResult::from))
}

/// True for an error after which the server closes the session (severity FATAL or PANIC, such
/// as an administrator's `pg_terminate_backend` or a shutdown), or one that is not PostgreSQL's.
pub(super) fn ends_the_session(e: &dyn sea_orm::sqlx::error::DatabaseError) -> bool {
    use sea_orm::sqlx::postgres::{PgDatabaseError, PgSeverity};
    e.try_downcast_ref::<PgDatabaseError>()
        .is_none_or(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic))
}

/// True for an error after which the connection is of no further use: the server ended the
/// session ([`ends_the_session`]) or the socket failed.
pub(super) fn session_gone(e: &sea_orm::sqlx::Error) -> bool {
    match e {
        sea_orm::sqlx::Error::Io(_) => true,
        sea_orm::sqlx::Error::Database(e) => ends_the_session(e.as_ref()),
        _ => false,
    }
}

/// [`session_gone`] for an error as sea-orm answers it.
pub(super) fn ended_session(e: &DbErr) -> bool {
    super::sqlx_error(e).is_some_and(session_gone)
}

/// A failed statement, as sea-orm's driver answers it (`sqlx_error_to_exec_err`).
pub(super) fn exec_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(e.into()))
}

/// A failed query, as sea-orm's driver answers it (`sqlx_error_to_query_err`).
pub(super) fn query_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e.into()))
}

/// A connection the pool could not hand out, as sea-orm's driver answers it
/// (`sqlx_conn_acquire_err`).
pub(super) fn acquire_err(e: sea_orm::sqlx::Error) -> DbErr {
    match e {
        sea_orm::sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sea_orm::sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        e => DbErr::Conn(RuntimeErr::SqlxError(e.into())),
    }
}
