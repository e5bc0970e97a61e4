//! Transactions that meet concurrent ones on real databases: the database's own refusal
//! (SQLite busy, PostgreSQL deadlock) is recognised as transient, retried by `retry_conflicts`,
//! and answered ABORTED when it persists. The PostgreSQL part needs `SHAREMESH_TEST_POSTGRES`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, DbErr};
use sharemesh_mesh::status::storage_failure;
use sharemesh_mesh::storage::{CONFLICT_ATTEMPTS, Db, is_transient_conflict, retry_conflicts};
use sharemesh_mesh::testing::PgDatabase;

/// Runs `transaction` under `retry_conflicts`, counting the attempts.
async fn attempts_of(transaction: impl Fn(u32) -> Result<(), DbErr>) -> (Result<(), DbErr>, u32) {
    let calls = AtomicU32::new(0);
    let result = retry_conflicts(
        || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let outcome = transaction(n);
            async move { outcome }
        },
        |e: &DbErr| Some(e),
    )
    .await;
    (result, calls.load(Ordering::SeqCst))
}

#[tokio::test]
async fn sqlite_busy_is_transient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/busy.db?mode=rwc", dir.path().display());
    let impatient = || {
        let mut opts = ConnectOptions::new(url.clone());
        opts.max_connections(1)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::ZERO));
        sea_orm::Database::connect(opts)
    };
    let first = impatient().await.expect("connect");
    let second = impatient().await.expect("connect");
    first.execute_unprepared("CREATE TABLE t (v INTEGER)").await.expect("create");
    first.execute_unprepared("BEGIN IMMEDIATE").await.expect("begin");
    let err = second
        .execute_unprepared("BEGIN IMMEDIATE")
        .await
        .expect_err("a second writer is refused while the first holds the lock");
    assert!(is_transient_conflict(&err), "{err}");
    assert_eq!(storage_failure(&err).code(), tonic::Code::Aborted);
    assert!(!is_transient_conflict(&DbErr::Custom("disk full".into())));
}

#[tokio::test]
async fn a_postgres_deadlock_is_transient_and_retried() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let db = Db::connect(&pg.url).await.expect("connect");
    db.conn()
        .execute_unprepared("CREATE TABLE t (id INT PRIMARY KEY, v INT); INSERT INTO t VALUES (1, 0), (2, 0)")
        .await
        .expect("create");
    // Two transactions take the rows in opposite order: PostgreSQL aborts one of them.
    let a = db.begin_write().await.expect("begin a");
    let b = db.begin_write().await.expect("begin b");
    a.execute_unprepared("UPDATE t SET v = 1 WHERE id = 1").await.expect("a takes 1");
    b.execute_unprepared("UPDATE t SET v = 2 WHERE id = 2").await.expect("b takes 2");
    let (ra, rb) = tokio::join!(
        a.execute_unprepared("UPDATE t SET v = 1 WHERE id = 2"),
        b.execute_unprepared("UPDATE t SET v = 2 WHERE id = 1"),
    );
    let err = match (ra, rb) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        other => panic!("expected exactly one deadlock victim, got {other:?}"),
    };
    assert!(is_transient_conflict(&err), "{err}");
    assert_eq!(storage_failure(&err).code(), tonic::Code::Aborted);
    drop((a, b));

    // The victim runs again and succeeds; a conflict that never ends stops after the budget;
    // any other error is not retried.
    let (result, attempts) = attempts_of(|n| if n < 3 { Err(err.clone()) } else { Ok(()) }).await;
    assert!(result.is_ok());
    assert_eq!(attempts, 3);
    let (result, attempts) = attempts_of(|_| Err(err.clone())).await;
    assert!(result.is_err_and(|e| is_transient_conflict(&e)));
    assert_eq!(attempts, CONFLICT_ATTEMPTS);
    let (result, attempts) = attempts_of(|_| Err(DbErr::Custom("disk full".into()))).await;
    assert!(result.is_err());
    assert_eq!(attempts, 1);
    drop(db);
    pg.drop_now().await;
}
