//! Group commit: units of work from concurrent callers share one write transaction.
//!
//! [`Db::write`](super::Db::write) queues a unit (a closure that does its reads and writes in
//! the transaction it is given) and waits for the transaction it ran in to commit. A writer
//! takes every unit queued at that moment (up to [`MAX_UNITS`]), runs them one after another in
//! one transaction and commits once: one BEGIN/COMMIT (on PostgreSQL, one WAL flush) for the
//! group instead of one per unit. Nothing waits to fill a group: a lone unit runs at once, and
//! groups grow only while the writers are busy.
//!
//! Each unit sees the writes of the units before it in its group, as it would had they
//! committed first, so the result is the same as running them one by one in queue order. A unit
//! that fails leaves no trace: the group is rolled back; the units before it run again as a
//! group, the units after it as a group of their own, and then the failed one again alone (its
//! answer is the error of that run): it may have failed waiting for a lock, and must not hold up
//! the rest. (Callers queued at the same time are concurrent: any order of theirs is one they
//! could have had.) A unit can therefore run more than once, and only its committed run
//! counts: it must be a pure function of the database and what it captured (no side effects
//! besides the transaction). A commit the database refused (and so rolled back) sends every unit
//! of the group back to run alone; a commit whose outcome is unknown (a lost connection) answers
//! every unit with that error, as a unit's own transaction would have. On PostgreSQL a unit of a
//! group waits at most 50 ms for a row lock (then it runs alone, and waits as long as it must), so
//! two groups holding locks the other wants never wait for each other for long.
//!
//! A unit runs in its caller's `tracing` span: the events it emits carry the caller's trace.
//!
//! A unit whose caller stopped waiting before it ran is not run. Once it has run, its caller
//! going away changes nothing: it commits with its group.
//!
//! SQLite has one writer (the [`Db`]'s lock); PostgreSQL runs [`PG_WRITERS`] groups
//! at a time, as concurrent transactions.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use sea_orm::DbErr;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument;

use super::{Db, WriteTxn};

/// Most units in one transaction.
pub const MAX_UNITS: usize = 64;
/// Groups PostgreSQL runs at once (SQLite: one).
pub const PG_WRITERS: usize = 4;
/// How long a unit in a group of several waits for a row lock on PostgreSQL (see
/// [`run_together`]); sent with the group's BEGIN, no round trip of its own.
const GROUP_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '50ms'";
/// Units waiting for a writer before callers wait to queue.
const QUEUE: usize = 4096;

/// The future a unit returns: it borrows the transaction.
pub type UnitFuture<'t, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 't>>;

/// A queued unit and its caller's answer.
trait Job: Send {
    /// False when the caller stopped waiting.
    fn wanted(&self) -> bool;
    /// Runs the unit in `tx` and keeps the outcome; false when it failed.
    fn run<'a>(&'a mut self, tx: &'a WriteTxn) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
    /// Sends the kept outcome (of the committed run, or the failure of a run alone).
    fn answer(self: Box<Self>);
    /// Sends `err` (the commit of the unit's own transaction failed, or none could begin).
    fn fail(self: Box<Self>, err: DbErr);
}

struct Queued<F, T, E> {
    unit: F,
    /// The caller's span: the unit runs in it, so what it emits (an event's trace context)
    /// belongs to the caller's trace, not to the writer.
    span: tracing::Span,
    outcome: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> Job for Queued<F, T, E>
where
    F: for<'t> Fn(&'t WriteTxn) -> UnitFuture<'t, T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: From<DbErr> + Send + 'static,
{
    fn wanted(&self) -> bool {
        !self.reply.is_closed()
    }

    fn run<'a>(&'a mut self, tx: &'a WriteTxn) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            // A panicking unit fails alone; its caller sees the write abandoned.
            // The closure is called inside the guarded future, so a panic before its own future
            // exists is caught too.
            let span = self.span.clone();
            let unit = &self.unit;
            let outcome = AssertUnwindSafe(async move { unit(tx).instrument(span).await })
                .catch_unwind()
                .await;
            let ok = matches!(outcome, Ok(Ok(_)));
            self.outcome = outcome.ok();
            ok
        })
    }

    fn answer(self: Box<Self>) {
        if let Some(outcome) = self.outcome {
            let _ = self.reply.send(outcome);
        }
    }

    fn fail(self: Box<Self>, err: DbErr) {
        let _ = self.reply.send(Err(E::from(err)));
    }
}

/// The queue of a [`Db`]'s units and what its writers have done.
#[derive(Clone)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Box<dyn Job>>,
    commits: Arc<AtomicU64>,
}

impl GroupCommit {
    /// Starts the writers of `db` (which must have no group of its own) on this runtime.
    pub(super) fn start(db: Db, writers: usize) -> Self {
        let (queue, rx) = mpsc::channel::<Box<dyn Job>>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let commits = Arc::new(AtomicU64::new(0));
        for _ in 0..writers.max(1) {
            tokio::spawn(writer(db.clone(), rx.clone(), commits.clone()));
        }
        Self { queue, commits }
    }

    /// Queues `unit` and waits for its committed outcome.
    pub(super) async fn write<T, E, F>(&self, unit: F) -> Result<T, E>
    where
        F: for<'t> Fn(&'t WriteTxn) -> UnitFuture<'t, T, E> + Send + Sync + 'static,
        T: Send + 'static,
        E: From<DbErr> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Queued {
            unit,
            span: tracing::Span::current(),
            outcome: None,
            reply,
        });
        if self.queue.send(job).await.is_err() {
            return Err(E::from(DbErr::Custom("the database's writers have stopped".into())));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(E::from(DbErr::Custom("the write was abandoned (its unit panicked)".into()))))
    }

    /// Transactions committed so far.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// Takes every unit queued (up to [`MAX_UNITS`]) and runs them as a group, until the queue
/// closes (every [`Db`] handle dropped).
async fn writer(db: Db, rx: Arc<Mutex<mpsc::Receiver<Box<dyn Job>>>>, commits: Arc<AtomicU64>) {
    loop {
        let mut units = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            units.push(first);
            while units.len() < MAX_UNITS {
                match rx.try_recv() {
                    Ok(job) => units.push(job),
                    Err(_) => break,
                }
            }
        }
        units.retain(|job| job.wanted());
        run_groups(&db, units, &commits).await;
    }
}

/// How running a group together ended.
enum Together {
    Committed,
    /// The unit at this index failed; the group was rolled back.
    UnitFailed(usize),
    /// BEGIN failed, or the database refused the COMMIT and rolled the group back: each unit
    /// may run again alone.
    RolledBack,
    /// The COMMIT's outcome is unknown (the connection failed): running the units again could
    /// apply them twice, so each one answers with this error, as a transaction of its own would.
    Unknown(String),
}

/// Runs `units` in queue order: together while they succeed, splitting around a failed unit.
async fn run_groups(db: &Db, units: Vec<Box<dyn Job>>, commits: &AtomicU64) {
    let mut work = VecDeque::from([units]);
    while let Some(mut group) = work.pop_front() {
        if group.len() <= 1 {
            if let Some(job) = group.pop() {
                run_alone(db, job, commits).await;
            }
            continue;
        }
        match run_together(db, &mut group, commits).await {
            Together::Committed => group.into_iter().for_each(|job| job.answer()),
            Together::UnitFailed(i) => {
                let after = group.split_off(i + 1);
                let failed = group.pop().into_iter().collect::<Vec<_>>();
                for part in [failed, after, group] {
                    if !part.is_empty() {
                        work.push_front(part);
                    }
                }
            }
            Together::RolledBack => group.into_iter().rev().for_each(|job| work.push_front(vec![job])),
            Together::Unknown(e) => group
                .into_iter()
                .for_each(|job| job.fail(DbErr::Custom(format!("the commit's outcome is unknown: {e}")))),
        }
    }
}

async fn run_together(db: &Db, group: &mut [Box<dyn Job>], commits: &AtomicU64) -> Together {
    // Units of one group take row locks in turn and hold them to the end: two groups (of this
    // replica's writers, or of two replicas) can wait for each other. On PostgreSQL a unit that
    // waits longer than the group's lock timeout fails the group, which releases its locks; the
    // unit then runs alone, and waits as long as it has to.
    let Ok(tx) = db.begin_write_with(Some(GROUP_LOCK_TIMEOUT)).await else {
        return Together::RolledBack;
    };
    for (i, job) in group.iter_mut().enumerate() {
        if !job.run(&tx).await {
            tx.rollback().await;
            return Together::UnitFailed(i);
        }
    }
    match tx.commit().await {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            Together::Committed
        }
        Err(e) if refused(&e) => {
            tracing::debug!(error = %e, units = group.len(), "group commit refused; running its units one by one");
            Together::RolledBack
        }
        Err(e) => {
            tracing::warn!(error = %e, units = group.len(), "group commit failed; its outcome is unknown");
            Together::Unknown(e.to_string())
        }
    }
}

/// True when the database answered a COMMIT with a refusal that rolled the transaction back (an
/// integrity violation, class 23, or a serialization failure or deadlock, class 40), as opposed
/// to a failure that leaves its outcome unknown.
fn refused(err: &DbErr) -> bool {
    super::error_code(err).is_some_and(|c| c.starts_with("23") || c.starts_with("40"))
}

async fn run_alone(db: &Db, mut job: Box<dyn Job>, commits: &AtomicU64) {
    let tx = match db.begin_write().await {
        Ok(tx) => tx,
        Err(e) => return job.fail(e),
    };
    if !job.run(&tx).await {
        tx.rollback().await;
        return job.answer();
    }
    match tx.commit().await {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            job.answer()
        }
        Err(e) => job.fail(e),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sea_orm::{ConnectionTrait, Statement};

    use super::*;

    async fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(&format!("sqlite://{}/g.db?mode=rwc", dir.path().display()))
            .await
            .expect("connect");
        db.conn()
            .execute_unprepared("CREATE TABLE t (v INTEGER PRIMARY KEY)")
            .await
            .expect("create");
        (dir, db)
    }

    /// Inserts `v`; then fails if `fail`.
    fn insert(v: i64, fail: bool) -> impl for<'t> Fn(&'t WriteTxn) -> UnitFuture<'t, i64, DbErr> + Send + 'static {
        move |tx: &WriteTxn| -> UnitFuture<'_, i64, DbErr> {
            Box::pin(async move {
                tx.execute_unprepared(&format!("INSERT INTO t VALUES ({v})")).await?;
                if fail {
                    return Err(DbErr::Custom(format!("unit {v} refused")));
                }
                Ok(v)
            })
        }
    }

    async fn stored(db: &Db) -> Vec<i64> {
        let rows = db
            .conn()
            .query_all_raw(Statement::from_string(db.backend(), "SELECT v FROM t ORDER BY v"))
            .await
            .expect("select");
        rows.iter().map(|r| r.try_get_by_index::<i64>(0).expect("v")).collect()
    }

    /// Queues `units` while the writer waits for the SQLite write lock this test holds, then
    /// lets it go: the writer finds them all queued.
    async fn queued_behind_a_writer(db: &Db, units: Vec<(i64, bool)>) -> Vec<Result<i64, DbErr>> {
        let blocker = db.begin_write().await.expect("begin");
        let handles: Vec<_> = units
            .into_iter()
            .map(|(v, fail)| {
                let db = db.clone();
                tokio::spawn(async move { db.write(insert(v, fail)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        blocker.rollback().await;
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("join"));
        }
        out
    }

    #[tokio::test]
    async fn units_queued_together_commit_in_few_transactions() {
        let (_dir, db) = sqlite().await;
        let results = queued_behind_a_writer(&db, (1..=40).map(|v| (v, false)).collect()).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(stored(&db).await, (1..=40).collect::<Vec<_>>());
        // The first unit the writer took waited alone for the lock; the rest queued behind it.
        assert!(db.group_commits() <= 3, "40 units took {} commits", db.group_commits());
    }

    #[tokio::test]
    async fn a_failing_unit_rolls_back_only_its_own_writes() {
        let (_dir, db) = sqlite().await;
        let units = vec![(1, false), (2, false), (3, false), (99, true), (4, false), (5, false)];
        let results = queued_behind_a_writer(&db, units).await;
        let answers: Vec<_> = results.iter().map(|r| r.as_ref().map_err(ToString::to_string).cloned()).collect();
        assert_eq!(answers[..3], [Ok(1), Ok(2), Ok(3)]);
        assert!(answers[3].as_ref().is_err_and(|e| e.contains("unit 99 refused")), "{answers:?}");
        assert_eq!(answers[4..], [Ok(4), Ok(5)]);
        // Each committed once (a second insert of a value would break the primary key).
        assert_eq!(stored(&db).await, vec![1, 2, 3, 4, 5]);
    }

    /// Inserts `v` and emits one event about `v` (two for an even `v`); then fails if `fail`.
    fn insert_and_emit(v: i64, fail: bool) -> impl for<'t> Fn(&'t WriteTxn) -> UnitFuture<'t, i64, DbErr> + Send + 'static {
        move |tx: &WriteTxn| -> UnitFuture<'_, i64, DbErr> {
            Box::pin(async move {
                let events = (0..1 + (v + 1) % 2).map(|n| crate::events::outbox::OutgoingEvent {
                    event_id: format!("{v}-{n}"),
                    event_type: "sharemesh.test.v1.Happened".into(),
                    aggregate_id: v.to_string(),
                    payload: vec![],
                    occurred_at_ms: 1,
                });
                crate::events::outbox::enqueue_all(tx, "sharemesh/test", events.collect()).await?;
                insert(v, fail)(tx).await
            })
        }
    }

    /// A group's events are written when it commits, a few rows to a statement: in the order its
    /// units emitted them, and none of a unit that failed.
    #[tokio::test]
    async fn a_group_writes_its_units_events_in_their_order_and_none_of_a_failed_one() {
        let (_dir, db) = sqlite().await;
        for migration in crate::events::MIGRATIONS {
            for sql in migration.sqlite.split(";\n") {
                db.conn().execute_unprepared(sql).await.expect("migrate");
            }
        }
        let blocker = db.begin_write().await.expect("begin");
        let handles: Vec<_> = (1..=9)
            .map(|v| {
                let db = db.clone();
                tokio::spawn(async move { db.write(insert_and_emit(v, v == 5)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        blocker.rollback().await;
        for (v, h) in (1..=9).zip(handles) {
            assert_eq!(h.await.expect("join").is_ok(), v != 5, "unit {v}");
        }
        let rows = db
            .conn()
            .query_all_raw(Statement::from_string(
                db.backend(),
                "SELECT event_id FROM mesh_outbox ORDER BY seq",
            ))
            .await
            .expect("select");
        let ids: Vec<String> = rows.iter().map(|r| r.try_get_by_index(0).expect("id")).collect();
        let expected = ["1-0", "2-0", "2-1", "3-0", "4-0", "4-1", "6-0", "6-1", "7-0", "8-0", "8-1", "9-0"];
        assert_eq!(ids, expected);
        assert!(db.group_commits() <= 3, "9 units took {} commits", db.group_commits());
    }

    #[tokio::test]
    async fn a_unit_whose_caller_left_before_it_ran_is_not_run() {
        let (_dir, db) = sqlite().await;
        let blocker = db.begin_write().await.expect("begin");
        let first = tokio::spawn({
            let db = db.clone();
            async move { db.write(insert(1, false)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let gone = tokio::spawn({
            let db = db.clone();
            async move { db.write(insert(2, false)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        gone.abort();
        blocker.rollback().await;
        assert_eq!(first.await.expect("join").expect("write"), 1);
        // The writer has taken the next unit by the time a third one answers.
        assert_eq!(db.write(insert(3, false)).await.expect("write"), 3);
        assert_eq!(stored(&db).await, vec![1, 3]);
    }

    #[tokio::test]
    async fn a_panicking_unit_is_abandoned_and_the_others_commit() {
        let (_dir, db) = sqlite().await;
        let blocker = db.begin_write().await.expect("begin");
        let ok = tokio::spawn({
            let db = db.clone();
            async move { db.write(insert(1, false)).await }
        });
        let panics = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(|_tx: &WriteTxn| -> UnitFuture<'_, i64, DbErr> { Box::pin(async { panic!("unit panicked") }) })
                    .await
            }
        });
        let after = tokio::spawn({
            let db = db.clone();
            async move { db.write(insert(2, false)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        blocker.rollback().await;
        assert_eq!(ok.await.expect("join").expect("write"), 1);
        let err = panics.await.expect("join").expect_err("a panicking unit cannot commit");
        assert!(err.to_string().contains("abandoned"), "{err}");
        assert_eq!(after.await.expect("join").expect("write"), 2);
        assert_eq!(stored(&db).await, vec![1, 2]);
    }

    #[tokio::test]
    async fn a_unit_runs_in_the_span_of_its_caller() {
        // This test's runtime has one thread: the writer task runs under this subscriber too.
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let (_dir, db) = sqlite().await;
        let caller = tracing::info_span!("caller");
        let seen = db
            .write(|_tx: &WriteTxn| -> UnitFuture<'_, Option<tracing::Id>, DbErr> { Box::pin(async { Ok(tracing::Span::current().id()) }) })
            .instrument(caller.clone())
            .await
            .expect("write");
        assert!(caller.id().is_some());
        assert_eq!(seen, caller.id(), "the unit ran outside its caller's span");
    }

    #[tokio::test]
    async fn a_unit_that_panics_before_its_future_exists_leaves_the_writer_running() {
        let (_dir, db) = sqlite().await;
        let err = db
            .write(|_tx: &WriteTxn| -> UnitFuture<'_, i64, DbErr> { panic!("no future at all") })
            .await
            .expect_err("a panicking unit cannot commit");
        assert!(err.to_string().contains("abandoned"), "{err}");
        assert_eq!(db.write(insert(7, false)).await.expect("the writer still runs"), 7);
    }

    /// On PostgreSQL a unit of a group that waits for a row lock held elsewhere fails the group
    /// after the lock timeout: the units queued with it commit without waiting for that lock, and
    /// it runs again alone, after them, and waits as long as it must.
    #[tokio::test]
    async fn on_postgresql_a_unit_blocked_on_a_lock_does_not_hold_up_its_group() {
        fn touch(tx: &WriteTxn) -> UnitFuture<'_, i64, DbErr> {
            Box::pin(async move {
                tx.execute_unprepared("UPDATE t SET v = 100 WHERE v = 100").await?;
                Ok(100)
            })
        }
        let Some(pg) = crate::testing::PgDatabase::create().await else {
            return;
        };
        let db = Db::connect(&pg.url).await.expect("connect");
        db.conn()
            .execute_unprepared("CREATE TABLE t (v BIGINT PRIMARY KEY); INSERT INTO t VALUES (100)")
            .await
            .expect("create");
        // Another transaction holds the row `touch` wants.
        let holder = db.begin_write().await.expect("begin");
        holder
            .execute_unprepared("SELECT v FROM t WHERE v = 100 FOR UPDATE")
            .await
            .expect("lock");
        // Every writer busy with a unit that waits at a gate, so the next units queue up.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut busy = Vec::new();
        for _ in 0..PG_WRITERS {
            let (db, gate) = (db.clone(), gate.clone());
            busy.push(tokio::spawn(async move {
                db.write(move |_tx: &WriteTxn| -> UnitFuture<'_, i64, DbErr> {
                    let gate = gate.clone();
                    Box::pin(async move {
                        gate.acquire().await.map_err(|e| DbErr::Custom(e.to_string()))?.forget();
                        Ok(0)
                    })
                })
                .await
            }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let first = tokio::spawn({
            let db = db.clone();
            async move { db.write(insert(1, false)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let blocked = tokio::spawn({
            let db = db.clone();
            async move { db.write(touch).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let last = tokio::spawn({
            let db = db.clone();
            async move { db.write(insert(2, false)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // One writer is freed and takes the three queued units as a group.
        gate.add_permits(1);
        for (h, v) in [(first, 1), (last, 2)] {
            let answer = tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .expect("a unit waited for the lock another unit of its group wanted")
                .expect("join");
            assert_eq!(answer.expect("write"), v);
        }
        assert!(!blocked.is_finished(), "the blocked unit cannot have run: the lock is still held");
        holder.rollback().await;
        assert_eq!(blocked.await.expect("join").expect("write once the lock is free"), 100);
        gate.add_permits(PG_WRITERS);
        for h in busy {
            h.await.expect("join").expect("write");
        }
        drop(db);
        pg.drop_now().await;
    }
}
