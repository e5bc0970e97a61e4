//! Reads by key that arrive together share one statement (PostgreSQL).
//!
//! On PostgreSQL every read is at least one round trip to the server and one statement for it to
//! run, and under load most of a point read's cost is that trip, not the row. [`PointReads`]
//! answers reads of one row by key (a listing, a reservation, a payment by id) the way a busy
//! counter serves a queue: at most [`LEADERS`] statements are in flight at a time; a read that
//! finds them all taken waits, and when a statement ends, the first waiting read leads the next
//! one, for its own key and those of up to [`MAX_KEYS`]` - 1` reads waiting behind it
//! (`SELECT … WHERE id IN (…)`), and hands each its row.
//!
//! A read joins only a statement that starts after it was asked, so it sees every write that
//! committed before it was asked (read-your-writes holds as for a read of its own). Nothing
//! waits on a timer: when the statements are not all taken, a read runs at once. Coalescing is
//! per process (each replica coalesces its own reads). On SQLite a read is a call on the calling
//! thread ([`super::reads`]), cheaper than any hand-off, and runs alone.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sea_orm::sea_query::ValueType;
use sea_orm::{
    ColumnTrait, DatabaseBackend, DbErr, EntityTrait, Iterable, ModelTrait, PrimaryKeyToColumn, QueryFilter, TryIntoModel, Value,
};
use tokio::sync::oneshot;

use super::{Db, ReadModels};

/// Most keys one statement reads.
pub const MAX_KEYS: usize = 64;

/// Statements [`PointReads`] keeps in flight at a time, per process and table: reads beyond
/// them wait for the next statement and share it.
pub const LEADERS: usize = 2;

/// Reads of one row of `E` by its primary key (of one column, whose values are `K`), coalesced on
/// PostgreSQL; see the module documentation. Clones share their reads: a service keeps one per
/// table and its handlers clone it.
pub struct PointReads<E: EntityTrait, K> {
    column: E::Column,
    reads: Coalescer<K, E::Model>,
}

impl<E: EntityTrait, K> Clone for PointReads<E, K> {
    fn clone(&self) -> Self {
        Self {
            column: self.column,
            reads: Coalescer {
                inner: self.reads.inner.clone(),
            },
        }
    }
}

impl<E: EntityTrait, K> Default for PointReads<E, K> {
    /// Reads by the entity's primary key.
    fn default() -> Self {
        let mut key = E::PrimaryKey::iter();
        let column = key.next().map(PrimaryKeyToColumn::into_column);
        debug_assert!(key.next().is_none(), "PointReads reads by a primary key of one column");
        Self {
            column: column.expect("an entity has a primary key"),
            reads: Coalescer::new(LEADERS),
        }
    }
}

impl<E, K> PointReads<E, K>
where
    E: EntityTrait,
    E::Model: Clone + Send + Sync,
    E::ActiveModel: TryIntoModel<E::Model>,
    K: Into<Value> + ValueType + Eq + Hash + Ord + Clone + Send + Sync + 'static,
{
    /// The row whose `column` is `key`, read through `db` (with reads asked at the same time on
    /// PostgreSQL).
    pub async fn get(&self, db: &Db, key: K) -> Result<Option<E::Model>, DbErr> {
        let column = self.column;
        if db.backend() != DatabaseBackend::Postgres {
            return db.read_one(E::find().filter(column.eq(key))).await;
        }
        self.reads
            .get(key, |keys| async move {
                let models = db.read_all(E::find().filter(column.is_in(padded(keys)))).await?;
                models
                    .into_iter()
                    .map(|m| {
                        let key = K::try_from(m.get(column)).map_err(|e| DbErr::Type(format!("{column:?}: {e}")))?;
                        Ok((key, m))
                    })
                    .collect()
            })
            .await
    }

    /// Statements led so far, each shared by the reads waiting when it started (PostgreSQL only;
    /// reads that ran alone after a failed statement not counted).
    pub fn statements(&self) -> u64 {
        self.reads.statements()
    }
}

/// `keys` (sorted, at least one) padded with the last to a power of two: statements take one of
/// a few forms (1, 2, 4 … [`MAX_KEYS`] values), each prepared once per connection.
fn padded<K: Clone>(mut keys: Vec<K>) -> Vec<K> {
    if let Some(last) = keys.last().cloned() {
        keys.resize(keys.len().next_power_of_two(), last);
    }
    keys
}

/// Loads by key coalesced: at most `leaders` loads in flight, the reads asked meanwhile share the
/// next. Generic over what a load is, for its tests.
pub struct Coalescer<K, V> {
    inner: Arc<Inner<K, V>>,
}

struct Inner<K, V> {
    state: Mutex<State<K, V>>,
    /// Most loads in flight.
    leaders: usize,
    statements: AtomicU64,
}

struct State<K, V> {
    /// Loads in flight (each a [`Lead`]).
    leading: usize,
    waiting: VecDeque<Waiter<K, V>>,
}

/// A read waiting for a load.
struct Waiter<K, V> {
    key: K,
    turn: oneshot::Sender<Turn<K, V>>,
}

/// What a waiting read is told.
enum Turn<K, V> {
    /// Its value (`None`: no such key), from a load another read led.
    Answer(Option<V>),
    /// It leads the next load.
    Lead(Lead<K, V>),
    /// The load it was in failed: it loads its key alone (and answers its own error).
    Alone,
}

/// The right to run one load. Dropped (whatever happens to the read holding it, even a waiter
/// dropped before it received it), it passes to the first read still waiting.
struct Lead<K, V> {
    inner: Option<Arc<Inner<K, V>>>,
}

impl<K, V> Drop for Lead<K, V> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        loop {
            let next = {
                let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
                match state.waiting.pop_front() {
                    Some(next) => next,
                    None => {
                        state.leading -= 1;
                        return;
                    }
                }
            };
            let lead = Lead {
                inner: Some(inner.clone()),
            };
            // That read is gone (the lead comes back): disarm it and try the next one.
            let Err(Turn::Lead(mut refused)) = next.turn.send(Turn::Lead(lead)) else {
                return;
            };
            refused.inner = None;
        }
    }
}

impl<K, V> Coalescer<K, V> {
    /// A coalescer keeping at most `leaders` (at least one) loads in flight.
    pub fn new(leaders: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    leading: 0,
                    waiting: VecDeque::new(),
                }),
                leaders: leaders.max(1),
                statements: AtomicU64::new(0),
            }),
        }
    }

    /// Loads started so far by a lead (reads that ran alone after a failed load not counted).
    pub fn statements(&self) -> u64 {
        self.inner.statements.load(Ordering::Relaxed)
    }
}

impl<K: Eq + Hash + Ord + Clone, V: Clone> Coalescer<K, V> {
    /// The value of `key`: from a load of its own with the keys of the reads waiting (when fewer
    /// than `leaders` loads are in flight or its turn comes), or from the load another read led.
    /// `load` gets the keys sorted, without repeats, and answers the values it found.
    pub async fn get<F, Fut, E>(&self, key: K, load: F) -> Result<Option<V>, E>
    where
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
    {
        let queued = {
            let mut state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.leading < self.inner.leaders {
                state.leading += 1;
                None
            } else {
                let (turn, rx) = oneshot::channel();
                state.waiting.push_back(Waiter { key: key.clone(), turn });
                Some(rx)
            }
        };
        let lead = match queued {
            None => Lead {
                inner: Some(self.inner.clone()),
            },
            Some(rx) => match rx.await {
                Ok(Turn::Answer(value)) => return Ok(value),
                Ok(Turn::Lead(lead)) => lead,
                // The load failed, or its leader was dropped mid-load (the waiters' senders with it).
                Ok(Turn::Alone) | Err(_) => return Ok(load(vec![key.clone()]).await?.remove(&key)),
            },
        };
        self.lead(key, lead, load).await
    }

    /// Runs one load for `key` and up to [`MAX_KEYS`]` - 1` waiting reads, answers them, then
    /// passes the lead on.
    async fn lead<F, Fut, E>(&self, key: K, lead: Lead<K, V>, load: F) -> Result<Option<V>, E>
    where
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
    {
        let riders: Vec<Waiter<K, V>> = {
            let mut state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.waiting.retain(|w| !w.turn.is_closed());
            let n = state.waiting.len().min(MAX_KEYS - 1);
            state.waiting.drain(..n).collect()
        };
        let mut keys: Vec<K> = riders.iter().map(|w| w.key.clone()).chain([key.clone()]).collect();
        keys.sort_unstable();
        keys.dedup();
        self.inner.statements.fetch_add(1, Ordering::Relaxed);
        let loaded = load(keys).await;
        let answer = match loaded {
            Ok(mut found) => {
                for rider in riders {
                    let _ = rider.turn.send(Turn::Answer(found.get(&rider.key).cloned()));
                }
                Ok(found.remove(&key))
            }
            Err(e) => {
                for rider in riders {
                    let _ = rider.turn.send(Turn::Alone);
                }
                Err(e)
            }
        };
        drop(lead);
        answer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use sea_orm::{ConnectionTrait, TransactionTrait};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::storage::typed;

    /// Loads that each wait for a permit and record the keys they were given.
    #[derive(Clone)]
    struct Gated {
        gate: Arc<Semaphore>,
        loads: Arc<Mutex<Vec<Vec<u32>>>>,
        fail: Arc<AtomicUsize>,
    }

    impl Default for Gated {
        fn default() -> Self {
            Self {
                gate: Arc::new(Semaphore::new(0)),
                loads: Arc::default(),
                fail: Arc::default(),
            }
        }
    }

    impl Gated {
        /// Values are the key times ten; key 0 does not exist; the next `fail` loads fail.
        async fn load(self, keys: Vec<u32>) -> Result<HashMap<u32, u32>, String> {
            self.loads.lock().expect("loads").push(keys.clone());
            self.gate.acquire().await.expect("gate").forget();
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("refused".into());
            }
            Ok(keys.into_iter().filter(|k| *k != 0).map(|k| (k, k * 10)).collect())
        }

        fn loads(&self) -> Vec<Vec<u32>> {
            self.loads.lock().expect("loads").clone()
        }

        /// Waits until `n` loads have started.
        async fn started(&self, n: usize) {
            for _ in 0..500 {
                if self.loads.lock().expect("loads").len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            panic!("{n} loads never started: {:?}", self.loads());
        }
    }

    type Reads = Arc<Coalescer<u32, u32>>;

    fn spawn_get(reads: &Reads, gated: &Gated, key: u32) -> tokio::task::JoinHandle<Result<Option<u32>, String>> {
        let (reads, gated) = (reads.clone(), gated.clone());
        tokio::spawn(async move { reads.get(key, |keys| gated.load(keys)).await })
    }

    /// Lets the spawned reads queue.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_key_asked_during_a_load_goes_in_the_next_one() {
        let (reads, gated): (Reads, _) = (Arc::new(Coalescer::new(1)), Gated::default());
        let first = spawn_get(&reads, &gated, 5);
        gated.started(1).await;
        let waiting: Vec<_> = [3, 0, 3, 9].into_iter().map(|k| spawn_get(&reads, &gated, k)).collect();
        settle().await;
        assert_eq!(gated.loads(), [vec![5]], "a read joined a load started before it");
        gated.gate.add_permits(2);
        assert_eq!(first.await.expect("read task"), Ok(Some(50)));
        let mut answers = Vec::new();
        for w in waiting {
            answers.push(w.await.expect("read task"));
        }
        assert_eq!(answers, [Ok(Some(30)), Ok(None), Ok(Some(30)), Ok(Some(90))]);
        assert_eq!(gated.loads(), [vec![5], vec![0, 3, 9]]);
        assert_eq!(reads.statements(), 2);
    }

    #[tokio::test]
    async fn leaders_run_side_by_side_and_a_load_holds_at_most_max_keys() {
        let (reads, gated): (Reads, _) = (Arc::new(Coalescer::new(2)), Gated::default());
        let leaders = [spawn_get(&reads, &gated, 1000), spawn_get(&reads, &gated, 2000)];
        gated.started(2).await;
        let waiting: Vec<_> = (1..=100).map(|k| spawn_get(&reads, &gated, k)).collect();
        settle().await;
        gated.gate.add_permits(10);
        for (i, w) in waiting.into_iter().enumerate() {
            assert_eq!(w.await.expect("read task"), Ok(Some((i as u32 + 1) * 10)));
        }
        for l in leaders {
            assert!(l.await.expect("read task").is_ok());
        }
        // Two loads in flight; the waiting reads share the next ones (how they split depends on
        // which lead passed on first), each key loaded once.
        let loads = gated.loads();
        assert_eq!(loads[..2], [vec![1000], vec![2000]]);
        assert!(loads.len() <= 5, "{loads:?}");
        assert_eq!(loads.iter().map(Vec::len).max(), Some(MAX_KEYS), "{loads:?}");
        let mut keys = loads[2..].concat();
        keys.sort_unstable();
        assert_eq!(keys, (1..=100).collect::<Vec<_>>());
    }

    /// A read of 1 is in flight; 2 and 3 wait, then 2 leads a load of both.
    async fn two_riding(reads: &Reads, gated: &Gated) -> [tokio::task::JoinHandle<Result<Option<u32>, String>>; 2] {
        let first = spawn_get(reads, gated, 1);
        gated.started(1).await;
        let riding = [spawn_get(reads, gated, 2), spawn_get(reads, gated, 3)];
        settle().await;
        gated.gate.add_permits(1);
        assert_eq!(first.await.expect("read task"), Ok(Some(10)));
        gated.started(2).await;
        assert_eq!(gated.loads(), [vec![1], vec![2, 3]]);
        riding
    }

    #[tokio::test]
    async fn when_a_load_fails_its_riders_read_alone() {
        let (reads, gated): (Reads, _) = (Arc::new(Coalescer::new(1)), Gated::default());
        let [leader, rider] = two_riding(&reads, &gated).await;
        gated.fail.store(1, Ordering::SeqCst);
        gated.gate.add_permits(10);
        assert_eq!(leader.await.expect("read task"), Err("refused".into()));
        assert_eq!(rider.await.expect("read task"), Ok(Some(30)));
        assert_eq!(gated.loads(), [vec![1], vec![2, 3], vec![3]]);
    }

    #[tokio::test]
    async fn a_leader_gone_mid_load_leaves_its_riders_to_read_alone() {
        let (reads, gated): (Reads, _) = (Arc::new(Coalescer::new(1)), Gated::default());
        let [leader, rider] = two_riding(&reads, &gated).await;
        leader.abort();
        gated.gate.add_permits(10);
        assert_eq!(rider.await.expect("read task"), Ok(Some(30)));
        // And the lead was given back: a new read runs at once.
        assert_eq!(spawn_get(&reads, &gated, 4).await.expect("read task"), Ok(Some(40)));
        assert_eq!(gated.loads(), [vec![1], vec![2, 3], vec![3], vec![4]]);
    }

    #[tokio::test]
    async fn a_waiter_gone_before_its_turn_passes_the_lead_on() {
        let (reads, gated): (Reads, _) = (Arc::new(Coalescer::new(1)), Gated::default());
        let leader = spawn_get(&reads, &gated, 1);
        gated.started(1).await;
        let gone = spawn_get(&reads, &gated, 2);
        settle().await;
        gone.abort();
        let _ = gone.await;
        let next = spawn_get(&reads, &gated, 3);
        settle().await;
        gated.gate.add_permits(10);
        assert_eq!(leader.await.expect("read task"), Ok(Some(10)));
        assert_eq!(next.await.expect("read task"), Ok(Some(30)));
        assert_eq!(gated.loads(), [vec![1], vec![3]], "the gone read's key was loaded");
        // Nobody leads now: a read runs at once.
        assert_eq!(spawn_get(&reads, &gated, 4).await.expect("read task"), Ok(Some(40)));
    }

    /// On PostgreSQL, reads asked together share statements and each answers what a read of its
    /// own answers.
    #[tokio::test]
    async fn on_postgresql_concurrent_reads_share_statements() {
        let Some(pg) = crate::testing::PgDatabase::create().await else {
            return;
        };
        let db = Db::connect(&pg.url).await.expect("connect");
        db.conn().execute_unprepared(typed::PG_TABLE).await.expect("create");
        db.conn()
            .execute_unprepared(
                "INSERT INTO typed SELECT i, i, NULL, i * 1000, NULL, i % 2 = 0, 'n' || i, NULL, '\\x00', i / 2.0 \
                 FROM generate_series(1, 300) i",
            )
            .await
            .expect("create");
        let reads = PointReads::<typed::Entity, i64>::default();
        // The table is locked until every read has been asked: the first two statements wait on
        // the lock, so the others all wait for them (on a fast server, reads spawned one after
        // another could otherwise each find a statement free).
        let lock = db.conn().begin().await.expect("begin");
        lock.execute_unprepared("LOCK TABLE typed IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        let tasks: Vec<_> = (0..403_i64)
            .map(|i| {
                let (reads, db) = (reads.clone(), db.clone());
                // Keys repeat, and some do not exist.
                let key = i % 350;
                tokio::spawn(async move { (key, reads.get(&db, key).await.expect("read")) })
            })
            .collect();
        while reads.statements() < LEADERS as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        lock.commit().await.expect("unlock");
        for task in tasks {
            let (key, model) = task.await.expect("task");
            let alone = db.read_one(typed::Entity::find_by_id(key)).await.expect("read alone");
            assert_eq!(model, alone, "key {key}");
            assert_eq!(model.is_some(), (1..=300).contains(&key));
        }
        // Two statements on the lock, then the 401 waiting reads in statements of up to 64 keys.
        assert!(reads.statements() <= 12, "{} statements for 403 reads", reads.statements());
        pg.drop_now().await;
    }

    #[tokio::test]
    async fn on_sqlite_reads_run_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = typed::file_db(&dir).await;
        db.conn()
            .execute_unprepared("INSERT INTO typed VALUES (7, 1, NULL, 2, NULL, 1, 'x', NULL, x'00', 0.5)")
            .await
            .expect("insert");
        let reads = PointReads::<typed::Entity, i64>::default();
        assert_eq!(reads.get(&db, 7).await.expect("read").map(|m| m.name), Some("x".into()));
        assert_eq!(reads.get(&db, 8).await.expect("read"), None);
        assert_eq!(reads.statements(), 0);
    }
}
