//! The hand-off: while the dispatcher runs, a consumer claims the messages it records in its
//! own transaction (they are inserted with a lease, see [`crate::delivery`]) and passes them to
//! the dispatcher in memory once that transaction has committed. The dispatcher sends them
//! without a claim of its own: one write transaction less per pass, and on PostgreSQL one
//! statement and one WAL flush less.
//!
//! The lease keeps every rule of a claim the dispatcher makes itself: no other dispatcher takes
//! the message while it runs, the outcome is recorded only while it still holds, and a message
//! whose hand-off is lost (the process dies between the commit and the send) is due again when
//! the lease lapses, for whichever dispatcher looks first.
//!
//! Bounds: at most [`MAX_WAITING`] messages wait in memory; messages recorded beyond that, or
//! while no dispatcher runs, are recorded unclaimed and the dispatcher claims them from the table
//! (it is told to look at once). A waiting message whose lease has run half its length is left
//! to lapse rather than sent late. When the dispatcher stops, the leases of the messages still
//! waiting are released, so another replica sends them at its next look instead of after the
//! lease.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::delivery::BATCH;
use crate::storage::messages::MessageRow;

/// Most messages waiting in memory for the dispatcher.
pub const MAX_WAITING: usize = 4 * BATCH as usize;
/// Claims made at recording end on a multiple of this many ms (see [`Handoff::lease_until`]).
pub const LEASE_STEP_MS: i64 = 1_000;

/// Messages claimed at recording, waiting for the dispatcher, and the bell that wakes it when
/// messages were recorded (see the module docs).
#[derive(Debug, Default)]
pub struct Handoff {
    state: Mutex<State>,
    bell: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The lease of a claim made at recording (ms), while a dispatcher runs.
    lease_ms: Option<i64>,
    /// Committed, claimed, not yet taken: oldest first.
    waiting: VecDeque<MessageRow>,
    /// Messages were recorded unclaimed since the dispatcher last asked: it should claim them.
    unclaimed: bool,
}

impl Handoff {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts handing off, with claims of `lease`: called by the running dispatcher.
    pub fn open(&self, lease: Duration) {
        self.state().lease_ms = Some(sharemesh_mesh::events::millis(lease));
    }

    /// Stops handing off; returns the messages still waiting (their leases are to be released).
    pub fn close(&self) -> Vec<MessageRow> {
        let mut state = self.state();
        state.lease_ms = None;
        state.waiting.drain(..).collect()
    }

    /// The `lease_until_ms` to record `count` new messages with at `now_ms`: the end of a claim
    /// when they can be handed off, 0 (unclaimed) when no dispatcher runs or too many wait.
    ///
    /// The end is rounded up to a whole [`LEASE_STEP_MS`], so the messages recorded within one
    /// step share it and a pass records their deliveries in one statement (the record checks
    /// the lease, one statement per lease). Two claims of one message still never share a
    /// lease: a claim is taken over only once it has lapsed, so the next ends at least a lease
    /// later.
    pub fn lease_until(&self, now_ms: i64, count: usize) -> i64 {
        let state = self.state();
        match state.lease_ms {
            Some(lease) if state.waiting.len() + count <= MAX_WAITING => {
                let end = now_ms.saturating_add(lease);
                end.saturating_add(LEASE_STEP_MS - 1) / LEASE_STEP_MS * LEASE_STEP_MS
            }
            _ => 0,
        }
    }

    /// After the commit that recorded `rows`, claimed: they wait for the dispatcher (unless it
    /// stopped meanwhile; then their leases lapse), which is woken.
    pub fn committed(&self, rows: Vec<MessageRow>) {
        {
            let mut state = self.state();
            if state.lease_ms.is_some() {
                state.waiting.extend(rows);
            }
        }
        self.bell.notify_one();
    }

    /// After a commit that recorded messages unclaimed: the dispatcher is woken to claim them.
    pub fn committed_unclaimed(&self) {
        self.state().unclaimed = true;
        self.bell.notify_one();
    }

    /// Resolves when messages were committed since the dispatcher last waited (or at once if
    /// they were while it was not waiting).
    pub async fn rung(&self) {
        self.bell.notified().await;
    }

    /// Up to `max` waiting messages, oldest first, as stored when claimed; those whose lease has
    /// run half its length by `now_ms` are dropped (left to lapse and be claimed again).
    pub fn take(&self, max: usize, now_ms: i64) -> Vec<MessageRow> {
        let mut state = self.state();
        let half = state.lease_ms.unwrap_or(0) / 2;
        let mut taken = Vec::with_capacity(max.min(state.waiting.len()));
        while taken.len() < max {
            let Some(row) = state.waiting.pop_front() else { break };
            if row.lease_until_ms.saturating_sub(now_ms) >= half {
                taken.push(row);
            } else {
                tracing::debug!(message_id = %row.message_id, "handed-off message waited too long; left to its lease");
            }
        }
        taken
    }

    /// Whether messages were recorded unclaimed since the last call.
    pub fn take_unclaimed(&self) -> bool {
        std::mem::take(&mut self.state().unclaimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, lease_until_ms: i64) -> MessageRow {
        MessageRow {
            message_id: id.into(),
            event_id: format!("e-{id}"),
            recipient_id: "alice".into(),
            recipient_role: "CUSTOMER".into(),
            reservation_id: String::new(),
            listing_id: "l-1".into(),
            topic: String::new(),
            subject: String::new(),
            body: String::new(),
            delivery_status: "PENDING".into(),
            failure_reason: String::new(),
            attempts: 0,
            next_attempt_at_ms: 0,
            created_at_ms: 0,
            delivered_at_ms: None,
            lease_until_ms,
        }
    }

    #[test]
    fn nothing_is_claimed_at_recording_unless_a_dispatcher_runs_with_room() {
        let handoff = Handoff::default();
        assert_eq!(handoff.lease_until(1_000, 1), 0, "no dispatcher");
        handoff.open(Duration::from_secs(30));
        assert_eq!(handoff.lease_until(1_000, MAX_WAITING), 31_000);
        assert_eq!(
            [1_001, 1_500, 1_999, 2_000].map(|now| handoff.lease_until(now, 1)),
            [32_000; 4],
            "rounded up to a whole step: shared by the messages recorded within it"
        );
        handoff.committed((0..MAX_WAITING - 1).map(|i| row(&i.to_string(), 31_000)).collect());
        assert_eq!(handoff.lease_until(1_000, 1), 31_000);
        assert_eq!(handoff.lease_until(1_000, 2), 0, "beyond MAX_WAITING: recorded unclaimed");
        assert!(!handoff.take_unclaimed());
        handoff.committed_unclaimed();
        assert!(handoff.take_unclaimed(), "an unclaimed message asks for a claim");
        assert!(!handoff.take_unclaimed(), "once");
        assert_eq!(handoff.close().len(), MAX_WAITING - 1, "what waited is handed back");
        assert_eq!(handoff.lease_until(1_000, 1), 0, "closed");
    }

    #[test]
    fn waiting_messages_are_taken_oldest_first_and_stale_ones_left_to_their_lease() {
        let handoff = Handoff::default();
        handoff.open(Duration::from_secs(30));
        handoff.committed(vec![row("a", 31_000), row("b", 10_000), row("c", 31_001), row("d", 31_002)]);
        let taken: Vec<_> = handoff.take(2, 1_000).into_iter().map(|r| r.message_id).collect();
        assert_eq!(taken, ["a", "c"], "b has 9 s of its 30 s lease left: dropped");
        let taken: Vec<_> = handoff.take(10, 1_000).into_iter().map(|r| r.message_id).collect();
        assert_eq!(taken, ["d"]);
        assert!(handoff.take(10, 1_000).is_empty());
        handoff.close();
        handoff.committed(vec![row("late", 31_000)]);
        assert!(
            handoff.take(10, 1_000).is_empty(),
            "committed after the dispatcher stopped: left to its lease"
        );
    }
}
