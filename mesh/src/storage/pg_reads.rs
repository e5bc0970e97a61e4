//! Reads outside a transaction on PostgreSQL ([`super::ReadModels`] on a [`super::Db`]), one
//! round trip each.
//!
//! sqlx pings every connection that goes back to its pool (sqlx-core 0.9,
//! `PoolConnection::return_to_pool`, no option turns it off), so every query sea-orm runs on the
//! pool is two round trips to the server: the query, then a `Sync` for the ping. These readers
//! keep a few of the pool's connections checked out and run reads on them the way sea-orm does
//! (the same SQL, values bound by `sea-query-sqlx`, rows turned into models through sea-orm's own
//! `QueryResult`), without giving the connection back in between.
//!
//! The kept connections count in the pool's size (`SHAREMESH_DB_POOL` less the outbox relay's own
//! session, [`super::pg_lead`]), and the writers come first: a quarter of what the pool has
//! beyond [`super::group::PG_WRITERS`] + 4 connections (for the group writers, the event
//! consumers, the outbox's purge and count and the dispatcher) is kept — none up to a pool of 11
//! (the chart's default of 5, a pool of 4, keeps none), 1 of the services' default 16 (a pool of
//! 15). (The write transactions keep up to half the pool the same way, [`super::pg_writes`]: at
//! most 8 of 15 connections are kept in all.) A read gives
//! its connection back instead of keeping it while the pool has nothing to spare, and a
//! connection idle for `pg_conns::MAX_IDLE` is closed rather than used (a proxy or firewall may have
//! dropped it without a word; the pool pings such a connection before it hands it out, these
//! readers never ping). An SQL error is answered as the pool would answer it. When every kept
//! connection is busy, or a read fails on one for any other reason (a connection the server
//! closed), the read runs on the pool instead — so a read here answers what the pool would
//! have — and the failed connection goes back to the pool, whose ping closes it if it is broken.

use std::time::Instant;

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{PgPool, Postgres};
use sea_orm::{DatabaseBackend, DbErr, EntityTrait, FromQueryResult, QueryResult, QueryTrait, Select};

use super::parked::Parked;
use super::pg_conns::{self, KeptConns};

/// Connections of the pool left to the writers before any is kept for reads.
const LEFT_TO_WRITERS: usize = super::group::PG_WRITERS + 4;

/// Connections kept out of a PostgreSQL pool for reads.
pub(super) struct PgReaders {
    pool: PgPool,
    /// Connections taken from the pool; an idle one with the time it was last used.
    kept: KeptConns,
}

impl PgReaders {
    /// Readers keeping a quarter of what `pool` has beyond [`LEFT_TO_WRITERS`] connections;
    /// `None` when that is none (every read goes to the pool without asking here first).
    pub(super) fn new(pool: PgPool) -> Option<Self> {
        let max = (pool.options().get_max_connections() as usize).saturating_sub(LEFT_TO_WRITERS) / 4;
        (max > 0).then(|| Self {
            pool,
            kept: Parked::new(max),
        })
    }

    /// Reads answered here so far (the rest went to the pool).
    pub(super) fn direct_reads(&self) -> u64 {
        self.kept.uses()
    }

    /// The models `select` finds (or the SQL error the pool would answer too), read on a kept
    /// connection; `None` when the read must run on the pool instead.
    pub(super) async fn models<E: EntityTrait>(&self, select: &Select<E>) -> Option<Result<Vec<E::Model>, DbErr>> {
        let mut kept = self.take()?;
        let stmt = select.build(DatabaseBackend::Postgres);
        let rows = match pg_conns::bind(&stmt).fetch_all(&mut **kept.conn.as_mut()?).await {
            Ok(rows) => rows,
            // The server refused the statement and the session goes on: the pool would answer
            // the same error (as sea-orm maps it).
            Err(e @ sea_orm::sqlx::Error::Database(_)) if !pg_conns::session_gone(&e) => {
                self.give_back(kept);
                return Some(Err(pg_conns::query_err(e)));
            }
            Err(e) => {
                // Back to the pool (its ping closes a broken connection); the pool runs the read.
                tracing::debug!(error = %e, "PostgreSQL read left to the pool");
                return None;
            }
        };
        self.give_back(kept);
        self.kept.served();
        // Rows become models as sea-orm's own driver makes them: the same error if one does not fit.
        Some(
            rows.into_iter()
                .map(|row| E::Model::from_query_result(&QueryResult::from(row), ""))
                .collect(),
        )
    }

    /// An idle kept connection, or one more from the pool if fewer than `max` are kept and the
    /// pool has one idle now (never waits).
    fn take(&self) -> Option<Kept<'_>> {
        let conn = match pg_conns::pop_fresh(&self.kept) {
            Some(conn) => conn,
            None if self.kept.reserve() => match self.pool.try_acquire() {
                Some(conn) => conn,
                None => {
                    self.kept.release();
                    return None;
                }
            },
            None => return None,
        };
        Some(Kept {
            readers: self,
            conn: Some(conn),
        })
    }

    /// Keeps the connection for the next read while the pool has room to spare (an idle
    /// connection, or fewer open than its maximum); when the pool is saturated it goes back to
    /// the pool instead, so reads never hold connections the writers are waiting for.
    fn give_back(&self, mut kept: Kept<'_>) {
        if pg_conns::pool_has_room(&self.pool)
            && let Some(conn) = kept.conn.take()
        {
            self.kept.push((conn, Instant::now()));
        }
        // Otherwise `kept` drops here: the connection goes back to the pool.
    }
}

/// A kept connection in use. Dropped without [`PgReaders::give_back`] (a failed read, or the
/// caller gone mid-query), it goes back to the pool, which pings it (closing it if the
/// interrupted query left it unusable), and no longer counts as kept.
struct Kept<'a> {
    readers: &'a PgReaders,
    conn: Option<PoolConnection<Postgres>>,
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.readers.kept.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

    use crate::storage::{Db, ReadModels, typed};

    /// Reads run on a kept connection and answer what the pool answers; a kept connection the
    /// server closed costs one read a trip to the pool, which still answers.
    #[tokio::test]
    async fn on_postgresql_reads_run_on_kept_connections_and_survive_a_closed_one() {
        let Some(pg) = crate::testing::PgDatabase::create().await else {
            return;
        };
        let db = Db::connect(&pg.url).await.expect("connect");
        db.conn().execute_unprepared(typed::PG_TABLE).await.expect("create");
        db.conn()
            .execute_unprepared(
                "INSERT INTO typed VALUES (1, -7, NULL, 9000000000, NULL, TRUE, 'a', NULL, '\\x00ff', 0.5), \
                 (2, 2147483647, -2147483648, -1, 5000000000, FALSE, 'ü', 'b', '', 2)",
            )
            .await
            .expect("create");
        let select = || typed::Entity::find().order_by_asc(typed::Column::Id);
        let pooled = select().all(db.conn()).await.expect("pool");
        assert_eq!(pooled.len(), 2);
        // A reader takes a connection only when the pool has one idle at that moment (it never
        // waits), and the pool gets each connection back asynchronously: read until one is kept.
        let read_directly = async || {
            let before = db.direct_reads();
            for _ in 0..100 {
                let models = db.read_all(select()).await.expect("read");
                if db.direct_reads() > before {
                    return models;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("no read ran on a kept connection");
        };
        assert_eq!(read_directly().await, pooled);
        assert_eq!(db.direct_reads(), 1);

        // The kept connection (now idle, so the next read takes it) runs a statement no pooled
        // connection ran; then the server ends the session that ran it.
        let marked = db.read_all(select().filter(Expr::cust("'kept-marker' <> ''"))).await.expect("read");
        assert_eq!((marked, db.direct_reads()), (pooled.clone(), 2));
        db.conn()
            .execute_unprepared(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%kept-marker%'",
            )
            .await
            .expect("terminate");
        assert_eq!(db.read_all(select()).await.expect("read after its connection was closed"), pooled);
        assert_eq!(db.direct_reads(), 2, "a read on a closed connection answered");
        assert_eq!(read_directly().await, pooled);
        assert_eq!(db.direct_reads(), 3);

        // An SQL error answers as the pool answers it, and leaves the connection kept.
        let refused = || typed::Entity::find().filter(Expr::cust("small = 'seven'"));
        let direct = db.read_all(refused()).await.map_err(|e| e.to_string());
        let pooled_err = refused().all(db.conn()).await.map_err(|e| e.to_string());
        assert!(direct.is_err(), "{direct:?}");
        assert_eq!(direct, pooled_err);
        assert_eq!(db.read_all(select()).await.expect("read"), pooled);
        assert_eq!(db.direct_reads(), 4);
        pg.drop_now().await;
    }
}
