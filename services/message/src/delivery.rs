//! The dispatcher: sends due messages through the configured [`Sender`] until they are
//! delivered.
//!
//! A message is due when it is PENDING or FAILED, its `next_attempt_at_ms` has come and no
//! claim on it runs. A pass takes up to [`BATCH`] messages of each of two kinds:
//!
//! 1. the messages consumers recorded and handed over since the last pass ([`crate::handoff`]):
//!    claimed as they were recorded (their `lease_until_ms` set in the consumer's transaction),
//!    so they cost no claim here;
//! 2. when it is time to look at the table (every poll interval, at once after a full look, and
//!    when messages were recorded without a hand-off), the due ones, oldest first, claimed in
//!    one statement: their `lease_until_ms` set to the end of a lease, which makes them not due
//!    for anyone else until then. On PostgreSQL rows another dispatcher (a second replica on the
//!    same database) is claiming right now are skipped, not waited for, so two never send a
//!    message at once and each takes its own share. This is how failures are retried and how
//!    the messages of a replica that died are sent;
//!
//! then sends them, concurrently, and records the outcomes (one write transaction for the pass):
//! SENT with the delivery time and `MessageSent` (one statement for all the deliveries; their
//! events go into the outbox with the commit, 16 to a statement), or FAILED with the reason and
//! the next attempt after a backoff ([`crate::domain::retry_delay`]). `attempts` counts both. An
//! outcome is recorded only while the claim still holds: if the lease lapsed and another
//! dispatcher took the message over, its record stands and this one writes nothing (no second
//! `MessageSent`).
//!
//! Nothing gives up: a message is retried until it is delivered. A crash between recording (or
//! claiming) and recording the outcome leaves the claim, which lapses at the end of the lease;
//! the message is then sent again (the receiver has its `Idempotency-Key` to drop the repeat). A
//! dispatcher that stops releases the claims of the handed-over messages it did not take.
//!
//! The dispatcher wakes when a consumer has committed new messages and otherwise every poll
//! interval. Passes begin at least [`PASS_SPACING`] apart: under load consumers record messages
//! faster than a pass ends, and a pass woken at once would take a few messages, for the same
//! transaction a batch of many costs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sharemesh_mesh::events::{millis, now_ms};
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::storage::WriteTxn;

use crate::Messages;
use crate::domain::MessageError;
use crate::events;
use crate::sender::Sender;
use crate::storage::messages::{self as repo, MessageRow};

/// Messages taken per look.
pub const BATCH: u64 = 100;
/// The least time between the starts of two passes a wake-up begins (at most this much later
/// than at once; a message recorded while the dispatcher is idle is sent at once).
pub const PASS_SPACING: Duration = Duration::from_millis(20);
/// Default lease of one attempt (see [`Dispatcher::with_lease`]).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Delivered: SENT.
    Sent,
    /// Not delivered: FAILED, retried at `next_attempt_at_ms`.
    Failed {
        /// Why.
        reason: String,
        /// When it is due again (ms since the epoch).
        next_attempt_at_ms: i64,
    },
    /// Another dispatcher claimed it first; not sent here.
    Skipped,
    /// Sent (or tried) here after the lease had lapsed and another dispatcher had taken the
    /// message over: nothing is recorded here, the other's record stands (the recipient may see
    /// the message twice and drops the repeat by its `Idempotency-Key`).
    LeaseLost,
}

/// What one pass attempted.
#[derive(Debug, Clone, Copy)]
struct Pass {
    /// Messages handed over by consumers.
    handed: usize,
    /// Messages it claimed from the table.
    claimed: usize,
}

/// Sends due messages and records the outcome.
pub struct Dispatcher {
    messages: Messages,
    sender: Arc<dyn Sender>,
    retry_base: Duration,
    poll: Duration,
    lease: Duration,
}

impl Dispatcher {
    /// A dispatcher of `messages` through `sender`; a failed delivery is retried after
    /// `retry_base`, doubling per failure (at most [`crate::domain::MAX_RETRY_DELAY`]); without a wake-up
    /// it looks for due messages every `poll`.
    pub fn new(messages: Messages, sender: Arc<dyn Sender>, retry_base: Duration, poll: Duration) -> Self {
        Self {
            messages,
            sender,
            retry_base,
            poll,
            lease: DEFAULT_LEASE,
        }
    }

    /// How long a claimed message is left to one attempt before it is due again (default
    /// [`DEFAULT_LEASE`]); must exceed the longest a send can take.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Delivers until `shutdown`; an attempt in flight is finished (bounded by the sender's
    /// timeout) before it returns. Database errors are logged and retried with backoff. While it
    /// runs, consumers hand it the messages they record ([`crate::handoff`]).
    pub async fn run(self, shutdown: Shutdown) {
        let mut errors = 0u32;
        tracing::info!(poll = ?self.poll, retry_base = ?self.retry_base, "message dispatcher started");
        self.messages.handoff.open(self.lease);
        // When to look at the table next.
        let mut look_at = tokio::time::Instant::now();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let started = tokio::time::Instant::now();
            // Taken every pass: a look that was due anyway also claims what was recorded unclaimed.
            let unclaimed = self.messages.handoff.take_unclaimed();
            let look = started >= look_at || unclaimed;
            if look {
                look_at = started + self.poll;
            }
            let pause = match self.pass(look).await {
                Ok(pass) => {
                    errors = 0;
                    if pass.claimed as u64 >= BATCH {
                        // A full look: more may be due right away.
                        look_at = started;
                    }
                    if pass.claimed as u64 >= BATCH || pass.handed as u64 >= BATCH {
                        continue;
                    }
                    look_at.saturating_duration_since(tokio::time::Instant::now())
                }
                Err(e) => {
                    errors += 1;
                    look_at = started;
                    let delay = sharemesh_mesh::events::backoff(Duration::from_millis(200), errors, Duration::from_secs(10));
                    tracing::warn!(error = %e, ?delay, "message delivery interrupted; retrying");
                    delay
                }
            };
            tokio::select! {
                _ = self.messages.handoff.rung(), if errors == 0 => {
                    tokio::time::sleep_until(started + PASS_SPACING).await;
                }
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait() => break,
            }
        }
        if let Err(e) = self.release(self.messages.handoff.close()).await {
            tracing::warn!(error = %e, "could not release the handed-over messages; they are due when their leases lapse");
        }
        tracing::info!("message dispatcher stopped");
    }

    /// Makes one pass over the messages due now: those handed over and those it claims (at most
    /// [`BATCH`] of each); returns how many were attempted (sent or failed).
    pub async fn deliver_due(&self) -> Result<usize, MessageError> {
        let pass = self.pass(true).await?;
        Ok(pass.handed + pass.claimed)
    }

    /// One pass: claims due messages if `look`, takes the handed-over ones, sends and records
    /// them all.
    async fn pass(&self, look: bool) -> Result<Pass, MessageError> {
        let mut rows = Vec::new();
        if look {
            let tx = repo::begin_claim(self.messages.db()).await?;
            let now = now_ms();
            rows = repo::claim_due(&*tx, now, self.lease_until(now), BATCH).await?;
            tx.commit().await?;
        }
        let claimed = rows.len();
        // Taken after the claim: a failed claim leaves them waiting.
        let handed = self.messages.handoff.take(BATCH as usize, now_ms());
        let pass = Pass {
            handed: handed.len(),
            claimed,
        };
        rows.extend(handed);
        self.send_and_record(rows).await?;
        Ok(pass)
    }

    /// Releases the claims of `rows`, handed over and not sent: one statement per lease.
    async fn release(&self, rows: Vec<MessageRow>) -> Result<(), MessageError> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.messages.db().begin_write().await?;
        let mut released = 0;
        for (lease, ids) in by_lease(&rows) {
            released += repo::release(&*tx, ids, lease).await?;
        }
        tx.commit().await?;
        tracing::info!(released, "released the claims of handed-over messages not sent");
        Ok(())
    }

    /// Claims, sends and records one message read as `row`.
    pub async fn attempt(&self, row: MessageRow) -> Result<Attempt, MessageError> {
        let tx = self.messages.db().begin_write().await?;
        let claimed = self.claim(&tx, vec![row]).await?;
        tx.commit().await?;
        Ok(self.send_and_record(claimed).await?.pop().unwrap_or(Attempt::Skipped))
    }

    /// The rows of `rows` this dispatcher could claim in `tx` (see the module docs).
    async fn claim(&self, tx: &WriteTxn, rows: Vec<MessageRow>) -> Result<Vec<MessageRow>, MessageError> {
        let lease_until = self.lease_until(now_ms());
        let mut claimed = Vec::with_capacity(rows.len());
        for mut row in rows {
            if repo::claim(&**tx, &row, lease_until).await? {
                // As stored now: the record checks the claim by it.
                row.lease_until_ms = lease_until;
                claimed.push(row);
            }
        }
        Ok(claimed)
    }

    /// The end of the lease of a claim made at `now`.
    fn lease_until(&self, now: i64) -> i64 {
        now.saturating_add(millis(self.lease))
    }

    /// Sends claimed messages concurrently, then records every outcome in one transaction: the
    /// deliveries in one statement (and their `MessageSent`s with the commit), each failure on
    /// its own. The attempts are answered in the order of `claimed`.
    async fn send_and_record(&self, claimed: Vec<MessageRow>) -> Result<Vec<Attempt>, MessageError> {
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let messages: Vec<_> = claimed.iter().map(MessageRow::to_proto).collect();
        let outcomes = futures::future::join_all(messages.iter().map(|m| self.sender.send(m))).await;
        let now = now_ms();
        let tx = self.messages.db().begin_write().await?;
        let mut attempts = Vec::with_capacity(claimed.len());
        // The delivered rows, each with its place in `attempts`.
        let mut delivered = Vec::new();
        for (row, outcome) in claimed.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    // What `MessageRow::delivered` checks; the statement below writes what it sets.
                    row.require_undelivered()?;
                    delivered.push((attempts.len(), row));
                    attempts.push(Attempt::Sent);
                }
                Err(e) => attempts.push(self.record_failure(&tx, row, e.reason(), now).await?),
            }
        }
        for place in record_deliveries(&tx, delivered, now).await? {
            attempts[place] = Attempt::LeaseLost;
        }
        tx.commit().await?;
        Ok(attempts)
    }

    /// Records a failed attempt of the claim `row` in `tx`, if that claim still holds.
    async fn record_failure(&self, tx: &WriteTxn, mut row: MessageRow, reason: &str, now: i64) -> Result<Attempt, MessageError> {
        let lease_until = row.lease_until_ms;
        let next_attempt_at_ms = row.failed(reason, now, self.retry_base)?;
        let (message_id, recipient_id, attempts) = (row.message_id.clone(), row.recipient_id.clone(), row.attempts);
        let reason = row.failure_reason.clone();
        if !repo::save_claimed(&**tx, row, lease_until).await? {
            lease_lost(&message_id, &recipient_id);
            return Ok(Attempt::LeaseLost);
        }
        tracing::warn!(
            %message_id,
            %recipient_id,
            attempts,
            reason = %reason,
            retry_in_ms = next_attempt_at_ms - now,
            "message delivery failed; will retry"
        );
        Ok(Attempt::Failed {
            reason,
            next_attempt_at_ms,
        })
    }
}

/// Records the deliveries of `rows` (claims as stored when claimed, each with a caller's tag) in
/// `tx` with their `MessageSent`s: one statement per lease (a batch has one); the events are
/// inserted with the commit.
/// Returns the tags of the rows whose claim was lost meanwhile: nothing is recorded for those.
async fn record_deliveries(tx: &WriteTxn, rows: Vec<(usize, MessageRow)>, now: i64) -> Result<Vec<usize>, MessageError> {
    let mut written = HashMap::new();
    for (lease, ids) in by_lease(rows.iter().map(|(_, row)| row)) {
        for stored in repo::save_delivered(&**tx, ids, lease, now).await? {
            written.insert(stored.message_id.clone(), stored);
        }
    }
    let mut lost = Vec::new();
    let mut sent = Vec::with_capacity(written.len());
    for (tag, row) in rows {
        match written.remove(&row.message_id) {
            Some(stored) => {
                tracing::debug!(message_id = %stored.message_id, recipient_id = %stored.recipient_id, attempts = stored.attempts, "message sent");
                sent.push((stored.to_proto(), stored.event_id));
            }
            None => {
                lease_lost(&row.message_id, &row.recipient_id);
                lost.push(tag);
            }
        }
    }
    events::sent_all(tx, sent, now).await?;
    Ok(lost)
}

/// The ids of `rows` by the lease they were claimed until.
fn by_lease<'r>(rows: impl IntoIterator<Item = &'r MessageRow>) -> BTreeMap<i64, Vec<String>> {
    let mut by_lease: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for row in rows {
        by_lease.entry(row.lease_until_ms).or_default().push(row.message_id.clone());
    }
    by_lease
}

/// Logs an attempt whose claim another dispatcher took over meanwhile.
fn lease_lost(message_id: &str, recipient_id: &str) {
    tracing::warn!(%message_id, %recipient_id, "message attempt outlived its lease; another dispatcher's record stands");
}
