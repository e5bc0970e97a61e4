//! The bookkeeping the readers ([`super::reads`] on SQLite, [`super::pg_reads`] on PostgreSQL)
//! and PostgreSQL's writers ([`super::pg_writes`]) share: connections kept beside the pool, at
//! most so many, and a count of the uses (reads, transactions) they served.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Connections `C` kept beside a pool: the idle ones, how many exist (idle or in use) out of at
/// most `max`, and how many uses they served. Taking one never waits.
pub(super) struct Parked<C> {
    idle: Mutex<Vec<C>>,
    count: AtomicUsize,
    max: usize,
    served: AtomicU64,
}

impl<C> Parked<C> {
    pub(super) fn new(max: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            max,
            served: AtomicU64::new(0),
        }
    }

    /// An idle connection, if one is parked.
    pub(super) fn pop(&self) -> Option<C> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Parks a connection in use again, for the next use.
    pub(super) fn push(&self, conn: C) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    }

    /// Counts one more connection if fewer than `max` exist; false (nothing counted) at `max`.
    pub(super) fn reserve(&self) -> bool {
        if self.count.fetch_add(1, Ordering::Relaxed) < self.max {
            return true;
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// One connection fewer: it was not made after all, was closed, or went back to the pool.
    pub(super) fn release(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a use (a read, a transaction) served by a parked connection.
    pub(super) fn served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// Uses served by parked connections so far.
    pub(super) fn uses(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_connections_are_counted() {
        let parked = Parked::<u8>::new(2);
        assert!(parked.reserve() && parked.reserve());
        assert!(!parked.reserve(), "a third connection was counted");
        parked.release();
        assert!(parked.reserve());
        assert!(Parked::<u8>::new(0).pop().is_none() && !Parked::<u8>::new(0).reserve());
    }
}
