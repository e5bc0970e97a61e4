//! Write transactions on PostgreSQL ([`super::WriteTxn`] of a [`super::Db`]) on connections kept
//! out of the pool between transactions, each already inside the next transaction.
//!
//! sqlx pings every connection that goes back to its pool (see [`super::pg_reads`]), so a
//! transaction on a pooled connection is its BEGIN, its statements, its COMMIT and then one more
//! round trip, after the commit, when the connection goes back. These writers keep the
//! connection a transaction committed on, and its COMMIT begins the next transaction in the same
//! round trip (`COMMIT; BEGIN`, one simple query): a transaction on a kept connection is its
//! statements and its COMMIT, with neither a ping nor a BEGIN of its own. The statements are the
//! same as sea-orm's (the unit's statements bound by `sea-query-sqlx` and their rows made into
//! sea-orm's `QueryResult`s as sea-orm's driver makes them).
//!
//! A kept connection therefore waits in a transaction that has run nothing: `idle in
//! transaction` in `pg_stat_activity`, with no snapshot, no transaction id and no lock (under READ
//! COMMITTED each statement takes its own snapshot), so it holds back neither vacuum nor anyone
//! else; its `xact_start` is when the previous transaction committed. Nothing here reads the
//! transaction's start time (`now()`): times are the services' own.
//!
//! At most half the pool is kept (2 of the chart's 4 pooled connections): the rest
//! serves reads, migrations and whatever else asks the pool. A connection goes back to the pool
//! instead of being kept when the pool has nothing to spare as its transaction ends, when its
//! transaction did not end cleanly (a failed COMMIT or ROLLBACK, a transaction dropped
//! mid-statement: the pool's ping then finishes the queued ROLLBACK, or closes a broken
//! connection), and when it sat idle for `pg_conns::MAX_IDLE` (closed rather than trusted). A
//! kept connection never goes back to the pool inside its transaction: a ROLLBACK is queued
//! first, which the pool's ping sends.
//!
//! A connection the server closed (a restart, a failover, an administrator's
//! `pg_terminate_backend`, `idle_in_transaction_session_timeout`) fails the first statement of
//! the transaction begun on it, before anything of that transaction ran: it is closed and the
//! transaction begins again on a connection of the pool, whose BEGIN does the same, so the closed
//! session costs the transaction a failed round trip or two, never an error.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::PgTransactionManager;
use sea_orm::sqlx::{AssertSqlSafe, Executor, PgConnection, PgPool, Postgres, SqlSafeStr, SqlStr};
use sea_orm::{DbErr, ExecResult, QueryResult, Statement};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::Mutex;

use super::parked::Parked;
use super::pg_conns::{self, KeptConns, acquire_err, query_err};

/// Connections a PostgreSQL database's write transactions keep between transactions.
pub(super) struct PgWriters {
    pool: PgPool,
    /// Connections kept, each inside a transaction that has run nothing yet; an idle one with
    /// the time its last transaction ended.
    kept: KeptConns,
}

impl PgWriters {
    /// Writers keeping at most half of `pool`'s connections.
    pub(super) fn new(pool: PgPool) -> Self {
        let max = pool.options().get_max_connections() as usize / 2;
        Self {
            pool,
            kept: Parked::new(max),
        }
    }

    /// Transactions that began on a kept connection so far.
    pub(super) fn kept_begins(&self) -> u64 {
        self.kept.uses()
    }

    /// A transaction on a kept connection (begun when the connection's previous transaction
    /// committed), or one begun on a connection of the pool.
    ///
    /// `settings` (statements such as `SET LOCAL …`) run first: on a kept connection as one
    /// more round trip, on the pool's in the same round trip as the BEGIN.
    pub(super) async fn begin(self: &Arc<Self>, settings: Option<&'static str>) -> Result<PgTxn, DbErr> {
        if let Some(txn) = self.begin_kept(settings).await {
            return Ok(txn);
        }
        let (conn, kept) = self.begin_on_pool(settings).await?;
        Ok(self.txn(conn, kept, false))
    }

    /// A transaction on an idle kept connection, if one is kept and (with `settings`) its
    /// settings run; a connection where they fail goes back to the pool (its transaction's
    /// ROLLBACK queued, its ping closes a broken one). Without settings nothing is sent:
    /// the transaction's first statement finds out whether the session is still there
    /// ([`PgTxn::run`]).
    async fn begin_kept(self: &Arc<Self>, settings: Option<&'static str>) -> Option<PgTxn> {
        let conn = pg_conns::pop_fresh(&self.kept)?;
        // A transaction from here on: dropped (its settings failed, or this future was), it
        // queues its ROLLBACK, gives its kept slot back and its connection to the pool, whose
        // ping closes it if it is broken.
        let txn = self.txn(conn, true, settings.is_none());
        if let Some(settings) = settings
            && let Err(e) = txn.execute_unprepared(settings).await
        {
            tracing::debug!(error = %e, "a kept PostgreSQL connection failed its transaction's settings; beginning on the pool");
            return None;
        }
        self.kept.served();
        Some(txn)
    }

    /// Begins a transaction on a connection of the pool (waiting for it as the pool makes
    /// callers wait), with `settings` in the BEGIN's round trip; and whether the connection
    /// counts among the kept ones. A connection the server closed fails its BEGIN, before
    /// anything ran on it: it is closed and the next one is tried, up to one more than the pool
    /// holds, so a restarted server or a terminated session costs no write an error.
    async fn begin_on_pool(&self, settings: Option<&'static str>) -> Result<(PoolConnection<Postgres>, bool), DbErr> {
        let mut tries = self.pool.options().get_max_connections() + 1;
        loop {
            let mut conn = self.pool.acquire().await.map_err(acquire_err)?;
            match PgTransactionManager::begin(&mut conn, begin_sql(settings)).await {
                Ok(()) => return Ok((conn, self.kept.reserve())),
                Err(e) if tries > 1 && pg_conns::session_gone(&e) => {
                    tracing::debug!(error = %e, "BEGIN failed on a closed PostgreSQL connection; trying another");
                    conn.close_on_drop();
                    tries -= 1;
                }
                Err(e) => return Err(query_err(e)),
            }
        }
    }

    fn txn(self: &Arc<Self>, conn: PoolConnection<Postgres>, kept: bool, unverified: bool) -> PgTxn {
        PgTxn {
            writers: self.clone(),
            slot: Mutex::new(Slot {
                conn: Some(conn),
                kept,
                unverified,
            }),
        }
    }
}

impl Drop for PgWriters {
    /// The kept connections go back to the pool (which outlives the writers when others share
    /// it) with their open transactions' ROLLBACK queued.
    fn drop(&mut self) {
        while let Some((mut conn, _)) = self.kept.pop() {
            PgTransactionManager::start_rollback(&mut conn);
        }
    }
}

/// A transaction open on a connection of `PgWriters`. Dropped before `PgTxn::commit` or
/// `PgTxn::rollback`, it queues a ROLLBACK and the connection goes back to the pool, whose
/// ping sends it.
pub struct PgTxn {
    writers: Arc<PgWriters>,
    slot: Mutex<Slot>,
}

/// A [`PgTxn`]'s connection and what is known of it.
struct Slot {
    /// `None` once committed or rolled back.
    conn: Option<PoolConnection<Postgres>>,
    /// Whether the connection counts among the kept ones.
    kept: bool,
    /// Begun by the previous transaction's COMMIT on a kept connection, and nothing sent since:
    /// the session may have been closed meanwhile.
    unverified: bool,
}

/// A statement run on a transaction's connection (see [`PgTxn::run`]).
type Op<A, T> = for<'c> fn(&'c mut PgConnection, &'c A) -> BoxFuture<'c, Result<T, DbErr>>;

/// How a transaction ends.
#[derive(Clone, Copy)]
enum End {
    Commit,
    Rollback,
}

impl End {
    /// The simple query that ends the transaction and begins the next one on the same session.
    fn and_begin(self) -> &'static str {
        match self {
            Self::Commit => "COMMIT; BEGIN",
            Self::Rollback => "ROLLBACK; BEGIN",
        }
    }

    /// Ends the transaction as sqlx's own transaction manager does.
    async fn alone(self, conn: &mut PgConnection) -> Result<(), sea_orm::sqlx::Error> {
        match self {
            Self::Commit => PgTransactionManager::commit(conn).await,
            Self::Rollback => PgTransactionManager::rollback(conn).await,
        }
    }
}

impl PgTxn {
    /// Runs `stmt` and returns what sea-orm's driver returns for it.
    pub(super) async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.run(&stmt, |conn, stmt| Box::pin(pg_conns::execute(conn, stmt))).await
    }

    /// Runs `sql` as a simple query (no parameters, any number of statements).
    pub(super) async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.run(sql, |conn, sql| Box::pin(pg_conns::execute_unprepared(conn, sql))).await
    }

    /// The rows `stmt` returns.
    pub(super) async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.run(&stmt, |conn, stmt| Box::pin(pg_conns::query_all(conn, stmt))).await
    }

    /// The first row `stmt` returns, if any.
    pub(super) async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.run(&stmt, |conn, stmt| Box::pin(pg_conns::query_one(conn, stmt))).await
    }

    /// Runs `op` on the transaction's connection. The first statement of a transaction begun
    /// on a kept connection is the first word to its session since the previous COMMIT: when
    /// the server closed the session meanwhile, nothing of this transaction has run, so it begins
    /// on a connection of the pool and the statement runs there.
    async fn run<A: ?Sized, T>(&self, arg: &A, op: Op<A, T>) -> Result<T, DbErr> {
        let mut slot = self.slot.lock().await;
        let unverified = std::mem::take(&mut slot.unverified);
        let conn = slot.conn.as_mut().ok_or_else(finished)?;
        let answer = op(conn, arg).await;
        match answer {
            Err(e) if unverified && pg_conns::ended_session(&e) => {
                tracing::debug!(error = %e, "a kept PostgreSQL connection was closed before its transaction ran; beginning on the pool");
                if let Some(mut closed) = slot.conn.take() {
                    closed.close_on_drop();
                }
                if slot.kept {
                    self.writers.kept.release();
                }
                let (conn, kept) = self.writers.begin_on_pool(None).await?;
                slot.kept = kept;
                op(slot.conn.insert(conn), arg).await
            }
            answer => answer,
        }
    }

    /// Commits; the connection is kept, already in the next transaction (or goes back to the
    /// pool).
    pub(super) async fn commit(&self) -> Result<(), DbErr> {
        self.end(End::Commit).await
    }

    /// Rolls back; the connection is kept, already in the next transaction (or goes back to
    /// the pool).
    pub(super) async fn rollback(&self) -> Result<(), DbErr> {
        self.end(End::Rollback).await
    }

    /// Ends the transaction. A connection that counts among the kept ones, while the pool has
    /// room to spare (an idle connection, or fewer open than its maximum, so writers never hold
    /// connections others are waiting for), ends it with `COMMIT; BEGIN` (or `ROLLBACK; BEGIN`)
    /// and is kept; any other ends it alone and goes back to the pool. When the COMMIT fails,
    /// the simple query stops there: the session is in no transaction, and the ROLLBACK queued
    /// for it is a no-op.
    async fn end(&self, end: End) -> Result<(), DbErr> {
        let mut slot = self.slot.lock().await;
        let keep = slot.kept && pg_conns::pool_has_room(&self.writers.pool);
        // Nothing of the transaction ran when it is still unverified.
        let ran_nothing = std::mem::take(&mut slot.unverified);
        // Left in its slot until the server has answered: if this future is dropped before, the
        // transaction's drop queues a ROLLBACK (a no-op, or the end of the next transaction, if
        // the COMMIT got through) and the connection goes back to the pool, never kept with the
        // transaction's state unknown.
        let conn = slot.conn.as_mut().ok_or_else(finished)?;
        let ended = if keep {
            // sqlx's transaction depth stays 1: the session is in the next transaction.
            (&mut **conn).execute(end.and_begin()).await.map(drop)
        } else {
            end.alone(conn).await
        };
        let Some(mut conn) = slot.conn.take() else {
            return Err(finished());
        };
        let clean = ended.is_ok() && PgTransactionManager::get_transaction_depth(&conn) == usize::from(keep);
        if clean && keep {
            self.writers.kept.push((conn, Instant::now()));
            return Ok(());
        }
        if !clean {
            // Still in a transaction, or not known to be out of it: queue its ROLLBACK, sent by
            // the pool's ping when the connection drops below.
            PgTransactionManager::start_rollback(&mut conn);
        }
        if slot.kept {
            self.writers.kept.release();
        }
        match ended {
            // A session the server closed before the transaction ran anything lost nothing.
            Err(e) if ran_nothing && pg_conns::session_gone(&e) => {
                conn.close_on_drop();
                Ok(())
            }
            Err(e) => Err(query_err(e)),
            Ok(()) if !clean => Err(DbErr::Custom(
                "the transaction ended in a state sqlx did not expect; its outcome is unknown".into(),
            )),
            Ok(()) => Ok(()),
        }
    }
}

impl Drop for PgTxn {
    fn drop(&mut self) {
        let slot = self.slot.get_mut();
        if let Some(mut conn) = slot.conn.take() {
            PgTransactionManager::start_rollback(&mut conn);
            if slot.kept {
                self.writers.kept.release();
            }
        }
    }
}

/// What BEGIN sends: sqlx's own `BEGIN`, or `BEGIN` and `settings` as one simple query (one
/// round trip; sqlx checks the session is in a transaction afterwards).
fn begin_sql(settings: Option<&'static str>) -> Option<SqlStr> {
    settings.map(|settings| AssertSqlSafe(format!("BEGIN; {settings}")).into_sql_str())
}

fn finished() -> DbErr {
    DbErr::Custom("transaction already finished".into())
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use crate::storage::Db;

    async fn count(db: &Db) -> i64 {
        let row = db
            .conn()
            .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT count(*) AS n FROM t"))
            .await
            .expect("count")
            .expect("a row");
        row.try_get("", "n").expect("n")
    }

    /// The server process of the session `tx` runs on.
    async fn backend_pid(tx: &crate::storage::WriteTxn) -> i32 {
        let stmt = Statement::from_string(DbBackend::Postgres, "SELECT pg_backend_pid() AS pid");
        let row = tx.query_one_raw(stmt).await.expect("pid").expect("a row");
        row.try_get("", "pid").expect("pid")
    }

    /// The session's `lock_timeout` as `tx` sees it.
    async fn lock_timeout(tx: &crate::storage::WriteTxn) -> String {
        let row = tx
            .query_one_raw(Statement::from_string(DbBackend::Postgres, "SHOW lock_timeout"))
            .await
            .expect("show")
            .expect("a row");
        row.try_get("", "lock_timeout").expect("lock_timeout")
    }

    /// Write transactions begin on the connection the previous one ended on; what they commit is
    /// committed, what they roll back or drop is not, a failed statement fails its transaction
    /// only, and sessions the server ended (the kept one and the pool's idle ones) cost the next
    /// transaction nothing but a failed first statement and a few failed BEGINs.
    #[tokio::test]
    async fn on_postgresql_write_transactions_reuse_kept_connections_and_survive_a_closed_one() {
        let Some(pg) = crate::testing::PgDatabase::create().await else {
            return;
        };
        let db = Db::connect(&pg.url).await.expect("connect");
        db.conn()
            .execute_unprepared("CREATE TABLE t (id BIGINT PRIMARY KEY)")
            .await
            .expect("create");
        let insert = |id: i64| Statement::from_sql_and_values(DbBackend::Postgres, "INSERT INTO t (id) VALUES ($1)", [id.into()]);

        let tx = db.begin_write().await.expect("begin");
        let first_pid = backend_pid(&tx).await;
        tx.execute_raw(insert(1)).await.expect("insert");
        tx.commit().await.expect("commit");
        assert_eq!((count(&db).await, db.kept_write_begins()), (1, 0));

        // The COMMIT began the next transaction on the kept session, which waits in it holding
        // nothing back: no snapshot, no transaction id.
        let kept = db
            .conn()
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT state, backend_xmin IS NULL AND backend_xid IS NULL AS holds_nothing \
                 FROM pg_stat_activity WHERE pid = $1",
                [first_pid.into()],
            ))
            .await
            .expect("activity")
            .expect("the kept session");
        let state: String = kept.try_get("", "state").expect("state");
        assert_eq!(state, "idle in transaction");
        assert!(kept.try_get::<bool>("", "holds_nothing").expect("holds_nothing"));

        // The next transaction runs on the same session, kept: no ping, no BEGIN in between.
        let tx = db.begin_write().await.expect("begin");
        assert_eq!(backend_pid(&tx).await, first_pid, "began on another connection");
        assert_eq!(db.kept_write_begins(), 1);
        tx.execute_raw(insert(2)).await.expect("insert");
        tx.rollback().await;
        assert_eq!(count(&db).await, 1, "a rolled-back insert is visible");

        // A statement the server refuses fails it; the transaction rolls back whole.
        let tx = db.begin_write().await.expect("begin");
        tx.execute_raw(insert(3)).await.expect("insert");
        let err = tx.execute_raw(insert(1)).await.expect_err("a duplicate key");
        assert!(crate::storage::is_unique_violation(&err), "{err:?}");
        drop(tx);

        // Settings asked for run on a kept session too, for its transaction only.
        let tx = db
            .begin_write_with(Some("SET LOCAL lock_timeout = '50ms'"))
            .await
            .expect("begin with settings");
        assert_eq!(lock_timeout(&tx).await, "50ms");
        tx.commit().await.expect("commit");
        let tx = db.begin_write().await.expect("begin");
        assert_eq!(lock_timeout(&tx).await, "0", "the setting outlived its transaction");
        tx.rollback().await;

        // A COMMIT the server refuses (a deferred constraint) ends the transaction, and nothing
        // of it is left for the next one on that session.
        db.conn()
            .execute_unprepared("CREATE TABLE d (id BIGINT, CONSTRAINT d_once UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)")
            .await
            .expect("create");
        let tx = db.begin_write().await.expect("begin");
        for _ in 0..2 {
            tx.execute_unprepared("INSERT INTO d (id) VALUES (1)").await.expect("deferred");
        }
        let err = tx.commit().await.expect_err("a duplicate at the commit");
        assert!(crate::storage::is_unique_violation(&err), "{err:?}");
        let tx = db.begin_write().await.expect("begin after a refused commit");
        tx.execute_unprepared("INSERT INTO d (id) VALUES (2)").await.expect("insert");
        tx.commit().await.expect("commit");
        let rows = db
            .conn()
            .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT count(*) AS n FROM d"))
            .await
            .expect("count")
            .expect("a row");
        assert_eq!(rows.try_get::<i64>("", "n").expect("n"), 1, "only the second transaction committed");

        // Dropped mid-transaction: its ROLLBACK reaches the server before the connection is used
        // again.
        let tx = db.begin_write().await.expect("begin");
        tx.execute_raw(insert(4)).await.expect("insert");
        drop(tx);
        let tx = db.begin_write().await.expect("begin after a dropped transaction");
        tx.execute_raw(insert(5)).await.expect("insert");
        tx.commit().await.expect("commit");
        assert_eq!(count(&db).await, 2, "only 1 and 5 committed");

        // The server ends every session of the database but the one asking (as a restart or a
        // failover would): the next transaction still commits, on a new connection.
        let tx = db.begin_write().await.expect("begin");
        let kept_pid = backend_pid(&tx).await;
        tx.commit().await.expect("commit");
        // Reads at once open more of the pool's connections, idle in the pool afterwards.
        let reads = (0..4).map(|_| db.conn().execute_unprepared("SELECT pg_sleep(0.05)"));
        for read in futures::future::join_all(reads).await {
            read.expect("read");
        }
        let ended = db
            .conn()
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            ))
            .await
            .expect("terminate")
            .expect("a row");
        assert!(ended.try_get::<i64>("", "n").expect("n") >= 1);
        let tx = db.begin_write().await.expect("begin after its kept connection was closed");
        assert_ne!(backend_pid(&tx).await, kept_pid);
        tx.execute_raw(insert(6)).await.expect("insert");
        tx.commit().await.expect("commit");
        assert_eq!(count(&db).await, 3);

        // A transaction that runs nothing on a kept session the server closed commits nothing,
        // and says so without an error.
        let tx = db.begin_write().await.expect("begin");
        let kept_pid = backend_pid(&tx).await;
        tx.commit().await.expect("commit");
        let gone = |sql: &'static str| {
            let db = db.clone();
            async move {
                let stmt = Statement::from_sql_and_values(DbBackend::Postgres, sql, [kept_pid.into()]);
                let row = db.conn().query_one_raw(stmt).await.expect("query").expect("a row");
                row.try_get::<bool>("", "b").expect("b")
            }
        };
        assert!(gone("SELECT pg_terminate_backend($1) AS b").await);
        while !gone("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1) AS b").await {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let tx = db.begin_write().await.expect("begin on the closed kept session");
        tx.commit().await.expect("an empty transaction commits");
        pg.drop_now().await;
    }
}
