//! A PostgreSQL session of its own that holds a session-level advisory lock: the replicas of a
//! service share one outbox, and the one whose session holds the lock publishes it.
//!
//! While the session holds the lock, the leader's statements run on it in autocommit, each its
//! own round trip: no BEGIN, no COMMIT, no lock statement per pass. The lock ends with the
//! session:
//! - a replica that stops (or is killed: its socket is closed) ends it at once;
//! - a statement that fails ends it here (the connection is dropped, and the next
//!   [`PgLead::lead`] connects again and asks for the lock anew);
//! - the server ends a session idle longer than `idle_session_timeout` (set on PostgreSQL 14
//!   and later), so a replica that vanished without closing its socket (its node lost power, a
//!   network partition) holds the lock that long at most, not until TCP keepalive notices.
//!
//! The session is one connection beside the pool (`SHAREMESH_DB_POOL`), opened with the pool's
//! own connect options, and named `sharemesh outbox relay` in `pg_stat_activity`.

use std::time::Duration;

use sea_orm::sqlx::{Connection, PgConnection, PgPool};
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, ExecResult, QueryResult, Statement};
use tokio::sync::{Mutex, MutexGuard};

use super::pg_conns::{self, query_err};

/// `application_name` of a lead session.
pub const APPLICATION_NAME: &str = "sharemesh outbox relay";

/// A session that leads while it holds the advisory lock `key` (see the module docs).
pub struct PgLead {
    pool: PgPool,
    key: i64,
    idle_timeout: Duration,
    session: Mutex<Option<Session>>,
}

struct Session {
    conn: PgConnection,
    /// Whether this session holds the lock (it keeps it until the session ends).
    leading: bool,
}

impl PgLead {
    /// A lead on the advisory lock `key`, its session opened with `pool`'s connect options when
    /// first asked; the server ends it after `idle_timeout` without a statement.
    pub fn new(pool: PgPool, key: i64, idle_timeout: Duration) -> Self {
        Self {
            pool,
            key,
            idle_timeout,
            session: Mutex::new(None),
        }
    }

    /// The lead session when this process holds the lock, taking it if no session does (one
    /// round trip while another replica leads, none while this one does); `None` while another
    /// session holds it. Statements run through the returned [`Leading`].
    pub async fn lead(&self) -> Result<Option<Leading<'_>>, DbErr> {
        let mut slot = self.session.lock().await;
        let session = match slot.as_mut() {
            Some(session) if session.leading => session,
            Some(session) => match try_lock(&mut session.conn, self.key, "").await {
                Ok(taken) => {
                    session.leading = taken;
                    session
                }
                Err(e) => {
                    *slot = None;
                    return Err(e);
                }
            },
            None => {
                let mut conn = PgConnection::connect_with(&self.pool.connect_options())
                    .await
                    .map_err(pg_conns::acquire_err)?;
                let leading = try_lock(&mut conn, self.key, &self.session_settings()).await?;
                slot.insert(Session { conn, leading })
            }
        };
        Ok(session.leading.then(|| Leading { slot: Mutex::new(slot) }))
    }

    /// The settings a new session takes with its first lock request: commits that do not wait
    /// for the WAL flush (see the relay: its marks need not be durable), its name, how long
    /// it may sit idle (PostgreSQL 14 and later know that setting), a plan made for each
    /// execution (PostgreSQL 12 and later), and no bitmap scans.
    ///
    /// The plan per execution is there because the session lives as long as the process and
    /// runs few statements, each of whose best plan changes as the outbox grows. A prepared
    /// statement's plan is otherwise made generic after five executions and kept until the table's
    /// statistics change: a mark of two rows planned while the outbox held a hundred rows scans
    /// the whole table (a sequential scan is cheapest then), and went on scanning it at 3,000
    /// rows (bench/README "Session 21": 190 pages read per mark, 0.7 ms instead of 0.05). Where
    /// autovacuum is off, or between two of its ANALYZEs, nothing replaces that plan. Planning
    /// each of a pass's two statements costs less than one such scan.
    ///
    /// No bitmap scans, because of what a mark leaves behind: the index entry of every row
    /// marked published stays in the pending rows' partial index, pointing at a dead row
    /// version, until VACUUM removes it. A plain index scan that finds such a row dead flags its
    /// entry, and the next read steps over it inside the index page. A bitmap scan (the
    /// planner's choice for the relay's read, which it expects to find a few dozen rows) flags
    /// nothing: every read visited the heap page of every row marked since the last VACUUM
    /// (bench/README "Session 23": 384 pages a read, 1.4 ms, in payment's outbox of a few
    /// thousand rows; 13 pages and 0.02 ms by the index).
    fn session_settings(&self) -> String {
        let idle_ms = self.idle_timeout.as_millis();
        format!(
            ", set_config('synchronous_commit', 'off', false), set_config('application_name', '{APPLICATION_NAME}', false), \
             CASE WHEN current_setting('server_version_num')::int >= 140000 \
             THEN set_config('idle_session_timeout', '{idle_ms}ms', false) END, \
             CASE WHEN current_setting('server_version_num')::int >= 120000 \
             THEN set_config('plan_cache_mode', 'force_custom_plan', false) END, \
             set_config('enable_bitmapscan', 'off', false)"
        )
    }
}

/// `pg_try_advisory_lock(key)` on `conn`, with `settings` (more columns of the same `SELECT`).
async fn try_lock(conn: &mut PgConnection, key: i64, settings: &str) -> Result<bool, DbErr> {
    use sea_orm::sqlx::Row;
    let sql = format!("SELECT pg_try_advisory_lock($1) AS locked{settings}");
    let row = sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(sql))
        .bind(key)
        .fetch_one(conn)
        .await
        .map_err(query_err)?;
    row.try_get::<bool, _>("locked").map_err(query_err)
}

/// The lead session while it holds the lock: a sea-orm connection whose statements run one by one
/// in autocommit. A statement that fails ends the session, and with it the lead.
pub struct Leading<'a> {
    slot: Mutex<MutexGuard<'a, Option<Session>>>,
}

/// The lead session's connection, while it lasts.
fn conn(slot: &mut Option<Session>) -> Result<&mut PgConnection, DbErr> {
    slot.as_mut()
        .map(|session| &mut session.conn)
        .ok_or_else(|| DbErr::Custom("the outbox lead session has ended".into()))
}

/// `result` of a statement on the lead session; whatever failed, the lead ends with the session
/// (the next pass asks anew).
fn ended_on_error<T>(slot: &mut Option<Session>, result: Result<T, DbErr>) -> Result<T, DbErr> {
    if result.is_err() {
        *slot = None;
    }
    result
}

#[sea_orm_migration::async_trait::async_trait]
impl ConnectionTrait for Leading<'_> {
    fn get_database_backend(&self) -> DatabaseBackend {
        DatabaseBackend::Postgres
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let mut slot = self.slot.lock().await;
        let result = pg_conns::execute(conn(&mut slot)?, &stmt).await;
        ended_on_error(&mut slot, result)
    }

    /// Runs `sql` as a simple query (no parameters, any number of statements).
    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let mut slot = self.slot.lock().await;
        let result = pg_conns::execute_unprepared(conn(&mut slot)?, sql).await;
        ended_on_error(&mut slot, result)
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let mut slot = self.slot.lock().await;
        let result = pg_conns::query_one(conn(&mut slot)?, &stmt).await;
        ended_on_error(&mut slot, result)
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut slot = self.slot.lock().await;
        let result = pg_conns::query_all(conn(&mut slot)?, &stmt).await;
        ended_on_error(&mut slot, result)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use crate::storage::Db;

    const KEY: i64 = 42;

    async fn show(leading: &super::Leading<'_>, setting: &str) -> String {
        let stmt = Statement::from_string(DbBackend::Postgres, format!("SELECT current_setting('{setting}') AS v"));
        let row = leading.query_one_raw(stmt).await.expect("show").expect("a row");
        row.try_get("", "v").expect("v")
    }

    /// One session leads at a time; it commits without waiting for the WAL flush, plans each
    /// statement for its parameters and may sit idle only so long; a statement that fails on
    /// it ends the session, and the lead passes on.
    #[tokio::test]
    async fn on_postgresql_one_session_leads_and_a_failed_statement_ends_its_lead() {
        let Some(pg) = crate::testing::PgDatabase::create().await else {
            return;
        };
        let db = Db::connect(&pg.url).await.expect("connect");
        let (first, second) = (
            db.lead_session(KEY, Duration::from_secs(45)).expect("postgres"),
            db.lead_session(KEY, Duration::from_secs(45)).expect("postgres"),
        );
        {
            let leading = first.lead().await.expect("lead").expect("the lock is free");
            assert_eq!(show(&leading, "synchronous_commit").await, "off");
            assert_eq!(show(&leading, "idle_session_timeout").await, "45s");
            assert_eq!(show(&leading, "application_name").await, super::APPLICATION_NAME);
            assert_eq!(show(&leading, "plan_cache_mode").await, "force_custom_plan");
            assert_eq!(show(&leading, "enable_bitmapscan").await, "off");
        }
        assert!(second.lead().await.expect("ask").is_none(), "two sessions lead");
        assert!(first.lead().await.expect("lead again").is_some(), "the leader lost its lead");

        let leading = first.lead().await.expect("lead").expect("still leading");
        leading.execute_unprepared("SELECT 1/0").await.expect_err("division by zero");
        drop(leading);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while second.lead().await.expect("ask").is_none() {
            assert!(std::time::Instant::now() < deadline, "the failed session kept its lock");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            first.lead().await.expect("ask").is_none(),
            "the old leader leads again beside the new one"
        );
        drop((first, second));
        pg.drop_now().await;
    }

    /// `lead`'s session, leading, with the mesh's tables created through it.
    async fn leading_with_outbox(lead: &super::PgLead) -> super::Leading<'_> {
        let leading = lead.lead().await.expect("lead").expect("the lock is free");
        for migration in crate::events::MIGRATIONS {
            leading.execute_unprepared(migration.postgres).await.expect("the mesh's tables");
        }
        leading
    }

    /// Inserts the pending outbox rows `from..=to` (of 300-byte payloads).
    async fn insert_outbox(leading: &super::Leading<'_>, from: i64, to: i64) {
        let sql = format!(
            "INSERT INTO mesh_outbox (event_id, subject, source, aggregate_id, payload, occurred_at_ms) \
             SELECT 'e-' || n, 'sharemesh.test.v1.Thing', 'test', 'a-' || n, decode(repeat('00', 300), 'hex'), n \
             FROM generate_series({from}, {to}) AS n"
        );
        leading.execute_unprepared(&sql).await.expect("outbox rows");
    }

    /// A statement the lead session ran while the outbox was small is planned anew once it has
    /// grown: the relay's mark of two rows reads them through the key's index, not by scanning
    /// the table as the plan of the small table would (see `session_settings`).
    #[tokio::test]
    async fn on_postgresql_the_lead_plans_a_mark_for_the_outbox_as_it_is_now() {
        let Some(pg) = crate::testing::PgDatabase::create().await else {
            return;
        };
        let db = Db::connect(&pg.url).await.expect("connect");
        let lead = db.lead_session(KEY, Duration::from_secs(45)).expect("postgres");
        let leading = leading_with_outbox(&lead).await;
        insert_outbox(&leading, 1, 112).await;
        let mark = |n: i64| crate::events::outbox::mark_published(&leading, vec![2 * n, 2 * n + 1]);
        // A prepared statement's plan is made generic after its fifth execution.
        for n in 1..=8 {
            mark(n).await.expect("mark");
        }
        insert_outbox(&leading, 113, 20_000).await;
        // The session's scans of the outbox so far (counts not yet sent to the statistics included).
        let scans = || async {
            let stmt = Statement::from_string(
                DbBackend::Postgres,
                "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'mesh_outbox'",
            );
            let row = leading.query_one_raw(stmt).await.expect("scans").expect("a row");
            let count = |column| row.try_get::<i64>("", column).expect("a count");
            (count("seq_scan"), count("idx_scan"))
        };
        let before = scans().await;
        mark(9).await.expect("mark");
        let after = scans().await;
        assert_eq!(
            after.0 - before.0,
            0,
            "the mark scanned the table instead of reading its two rows by key"
        );
        assert!(after.1 > before.1, "the mark did not read the key's index");
        drop(leading);
        drop(lead);
        pg.drop_now().await;
    }

    /// Once a read has found the rows marked since the last VACUUM, the next one reads the
    /// pending rows' index and not those rows' pages again (see `session_settings`: a bitmap
    /// scan, the planner's choice here, read every one of them on every read).
    #[tokio::test]
    async fn on_postgresql_the_relay_reads_past_published_rows_by_the_index_alone() {
        use sea_orm::QueryTrait;
        let Some(pg) = crate::testing::PgDatabase::create().await else {
            return;
        };
        let db = Db::connect(&pg.url).await.expect("connect");
        let lead = db.lead_session(KEY, Duration::from_secs(45)).expect("postgres");
        let leading = leading_with_outbox(&lead).await;
        insert_outbox(&leading, 1, 4_000).await;
        leading
            .execute_unprepared("UPDATE mesh_outbox SET published_at_ms = 1")
            .await
            .expect("marked");
        insert_outbox(&leading, 4_001, 4_002).await;
        let read = crate::events::outbox::pending(&leading, 256).await.expect("read");
        assert_eq!(read.iter().map(|row| row.seq).collect::<Vec<_>>(), [4_001, 4_002]);

        let sql = crate::events::outbox::pending_query(256).build(DbBackend::Postgres).to_string();
        let (plan, pages) = crate::testing::explain_until_under(&leading, &sql, 40).await;
        assert!(plan.iter().all(|line| !line.contains("Bitmap")), "{plan:#?}");
        // The index of 4,002 entries is a dozen pages; the 4,000 marked rows lie on hundreds.
        assert!(pages < 40, "the read visited {pages} pages: {plan:#?}");
        drop(leading);
        drop(lead);
        pg.drop_now().await;
    }
}
