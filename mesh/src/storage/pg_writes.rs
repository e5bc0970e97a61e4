//! Write transactions on PostgreSQL ([`super::WriteTxn`] of a [`super::Db`]) on connections kept
//! out of the pool between transactions.
//!
//! sqlx pings every connection that goes back to its pool (see [`super::pg_reads`]), so a
//! transaction on a pooled connection is its BEGIN, its statements, its COMMIT and then one more
//! round trip, after the commit, when the connection goes back. These writers keep the
//! connection a transaction committed on and begin the next one on it: the statements are the
//! same (BEGIN and COMMIT as sqlx's own transaction manager sends them, the unit's statements
//! bound by `sea-query-sqlx` and their rows made into sea-orm's `QueryResult`s as sea-orm's driver
//! makes them), without the ping in between.
//!
//! At most half the pool is kept (2 of the chart's 4 pooled connections): the rest
//! serves reads, migrations and whatever else asks the pool. A connection goes back to the pool
//! instead of being kept when the pool has nothing to spare at that moment, when its transaction
//! did not end cleanly (a failed COMMIT or ROLLBACK, a transaction dropped mid-statement: the
//! pool's ping then finishes the queued ROLLBACK, or closes a broken connection), and when it sat
//! idle for `pg_conns::MAX_IDLE` (closed rather than trusted). A connection the server
//! closed (kept or pooled) fails its BEGIN before anything ran on it: it is closed and the
//! transaction begins on another.

use std::sync::Arc;
use std::time::Instant;

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::PgTransactionManager;
use sea_orm::sqlx::{AssertSqlSafe, PgPool, Postgres, SqlSafeStr, SqlStr};
use sea_orm::{DbErr, ExecResult, QueryResult, Statement};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::Mutex;

use super::parked::Parked;
use super::pg_conns::{self, KeptConns, acquire_err, query_err};

/// Connections a PostgreSQL database's write transactions keep between transactions.
pub(super) struct PgWriters {
    pool: PgPool,
    /// Connections kept; an idle one with the time its last transaction ended.
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

    /// Begins a transaction on a kept connection, or on one from the pool (waiting for it as
    /// the pool makes callers wait). A connection the server closed fails its BEGIN, before
    /// anything ran on it: it is closed and the next one is tried, up to one more than the pool
    /// holds, so a restarted server or a terminated session costs no write an error.
    ///
    /// `settings` (statements such as `SET LOCAL …`) run in the same round trip as the BEGIN.
    pub(super) async fn begin(self: &Arc<Self>, settings: Option<&'static str>) -> Result<PgTxn, DbErr> {
        if let Some(txn) = self.begin_kept(settings).await {
            return Ok(txn);
        }
        let mut tries = self.pool.options().get_max_connections() + 1;
        loop {
            let mut conn = self.pool.acquire().await.map_err(acquire_err)?;
            match PgTransactionManager::begin(&mut conn, begin_sql(settings)).await {
                Ok(()) => {
                    let kept = self.kept.reserve();
                    return Ok(self.txn(conn, kept));
                }
                Err(e) if tries > 1 && pg_conns::session_gone(&e) => {
                    tracing::debug!(error = %e, "BEGIN failed on a closed PostgreSQL connection; trying another");
                    conn.close_on_drop();
                    tries -= 1;
                }
                Err(e) => return Err(query_err(e)),
            }
        }
    }

    /// A transaction begun on an idle kept connection, if one is kept and its BEGIN succeeds
    /// (otherwise the connection is closed or goes back to the pool).
    async fn begin_kept(self: &Arc<Self>, settings: Option<&'static str>) -> Option<PgTxn> {
        let mut conn = pg_conns::pop_fresh(&self.kept)?;
        match PgTransactionManager::begin(&mut conn, begin_sql(settings)).await {
            Ok(()) => {
                self.kept.served();
                Some(self.txn(conn, true))
            }
            Err(e) => {
                tracing::debug!(error = %e, "BEGIN failed on a kept PostgreSQL connection; beginning on the pool");
                conn.close_on_drop();
                self.kept.release();
                None
            }
        }
    }

    fn txn(self: &Arc<Self>, conn: PoolConnection<Postgres>, kept: bool) -> PgTxn {
        PgTxn {
            writers: self.clone(),
            conn: Mutex::new(Some(conn)),
            kept,
        }
    }

    /// After a clean COMMIT or ROLLBACK: keeps the connection for the next transaction while the
    /// pool has room to spare (an idle connection, or fewer open than its maximum), so writers
    /// never hold connections others are waiting for; otherwise it goes back to the pool.
    fn give_back(&self, conn: PoolConnection<Postgres>, kept: bool) {
        let spare = pg_conns::pool_has_room(&self.pool);
        if kept && spare {
            self.kept.push((conn, Instant::now()));
        } else if kept {
            self.kept.release();
        }
    }
}

/// A transaction open on a connection of `PgWriters`. Dropped before `PgTxn::commit` or
/// `PgTxn::rollback`, it queues a ROLLBACK and the connection goes back to the pool, whose
/// ping sends it.
pub struct PgTxn {
    writers: Arc<PgWriters>,
    /// `None` once committed or rolled back.
    conn: Mutex<Option<PoolConnection<Postgres>>>,
    /// Whether the connection counts among the kept ones.
    kept: bool,
}

impl PgTxn {
    /// Runs `stmt` and returns what sea-orm's driver returns for it.
    pub(super) async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        pg_conns::execute(&mut *self.open().await?, &stmt).await
    }

    /// Runs `sql` as a simple query (no parameters, any number of statements).
    pub(super) async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        pg_conns::execute_unprepared(&mut *self.open().await?, sql).await
    }

    /// The rows `stmt` returns.
    pub(super) async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        pg_conns::query_all(&mut *self.open().await?, &stmt).await
    }

    /// The first row `stmt` returns, if any.
    pub(super) async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        pg_conns::query_one(&mut *self.open().await?, &stmt).await
    }

    /// The transaction's connection, while it is open.
    async fn open(&self) -> Result<tokio::sync::MappedMutexGuard<'_, PoolConnection<Postgres>>, DbErr> {
        tokio::sync::MutexGuard::try_map(self.conn.lock().await, Option::as_mut).map_err(|_| finished())
    }

    /// Commits; the connection is kept for the next transaction (or goes back to the pool).
    pub(super) async fn commit(&self) -> Result<(), DbErr> {
        self.end(|conn| Box::pin(PgTransactionManager::commit(conn))).await
    }

    /// Rolls back; the connection is kept for the next transaction (or goes back to the pool).
    pub(super) async fn rollback(&self) -> Result<(), DbErr> {
        self.end(|conn| Box::pin(PgTransactionManager::rollback(conn))).await
    }

    async fn end<F>(&self, finish: F) -> Result<(), DbErr>
    where
        F: for<'c> FnOnce(&'c mut sea_orm::sqlx::PgConnection) -> futures::future::BoxFuture<'c, Result<(), sea_orm::sqlx::Error>>,
    {
        let mut slot = self.conn.lock().await;
        // Left in its slot until COMMIT or ROLLBACK has answered: if this future is dropped
        // before, the transaction's drop queues a ROLLBACK (a no-op if the COMMIT got through)
        // and the connection goes back to the pool, never kept with the transaction's state unknown.
        let ended = finish(slot.as_mut().ok_or_else(finished)?).await;
        let Some(mut conn) = slot.take() else {
            return Err(finished());
        };
        if ended.is_ok() && PgTransactionManager::get_transaction_depth(&conn) == 0 {
            self.writers.give_back(conn, self.kept);
        } else {
            // Still in the transaction: queue its ROLLBACK, sent by the pool's ping when the
            // connection drops below.
            PgTransactionManager::start_rollback(&mut conn);
            if self.kept {
                self.writers.kept.release();
            }
        }
        ended.map_err(query_err)
    }
}

impl Drop for PgTxn {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.get_mut().take() {
            PgTransactionManager::start_rollback(&mut conn);
            if self.kept {
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

    /// Write transactions begin on the connection the previous one ended on; what they commit is
    /// committed, what they roll back or drop is not, a failed statement fails its transaction
    /// only, and sessions the server ended (the kept one and the pool's idle ones) cost the next
    /// transaction nothing but a few failed BEGINs.
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

        // The next transaction runs on the same session, kept: no ping in between.
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
        pg.drop_now().await;
    }
}
