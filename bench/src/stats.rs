//! Latency samples and error counts: a tiny exact histogram (every sample kept, sorted once).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Latencies (microseconds) and failures of one measured window.
#[derive(Debug, Default, Clone)]
pub(crate) struct Recorder {
    micros: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    /// Records one successful call.
    pub(crate) fn ok(&mut self, latency: Duration) {
        self.micros.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Records one failed call under `code` (a gRPC code name, `http 503`, `timeout`...).
    pub(crate) fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }

    /// Adds another recorder's samples (one per worker, merged at the end).
    pub(crate) fn merge(&mut self, other: Recorder) {
        self.micros.extend(other.micros);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    /// Sorts the samples and computes the summary over a window of `window`.
    pub(crate) fn summarize(mut self, window: Duration) -> Summary {
        self.micros.sort_unstable();
        let count = self.micros.len() as u64;
        let errors: u64 = self.errors.values().sum();
        let secs = window.as_secs_f64().max(f64::EPSILON);
        Summary {
            count,
            rps: count as f64 / secs,
            p50_ms: percentile_ms(&self.micros, 50.0),
            p90_ms: percentile_ms(&self.micros, 90.0),
            p99_ms: percentile_ms(&self.micros, 99.0),
            max_ms: self.micros.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
            errors,
            errors_by_code: self.errors,
            window_s: window.as_secs_f64(),
        }
    }
}

/// The nearest-rank percentile of sorted samples, in milliseconds (0 when empty).
pub(crate) fn percentile_ms(sorted_micros: &[u32], p: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_micros.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted_micros.len()) - 1;
    f64::from(sorted_micros[idx]) / 1000.0
}

/// What one scenario measured: successful calls, their rate and latency, failures by code.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// Successful calls completed inside the window.
    pub(crate) count: u64,
    /// Successful calls per second.
    pub(crate) rps: f64,
    /// Median latency.
    pub(crate) p50_ms: f64,
    /// 90th percentile latency.
    pub(crate) p90_ms: f64,
    /// 99th percentile latency.
    pub(crate) p99_ms: f64,
    /// Slowest call.
    pub(crate) max_ms: f64,
    /// Failed calls inside the window.
    pub(crate) errors: u64,
    /// Failed calls by gRPC code / HTTP status.
    pub(crate) errors_by_code: BTreeMap<String, u64>,
    /// Length of the measured window in seconds.
    pub(crate) window_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert!((percentile_ms(&samples, 50.0) - 50.0).abs() < 1e-9);
        assert!((percentile_ms(&samples, 99.0) - 99.0).abs() < 1e-9);
        assert!((percentile_ms(&samples, 100.0) - 100.0).abs() < 1e-9);
        assert!((percentile_ms(&[7000], 1.0) - 7.0).abs() < 1e-9);
        assert!(percentile_ms(&[], 50.0).abs() < 1e-9);
    }

    #[test]
    fn summary_counts_successes_and_errors() {
        let mut a = Recorder::default();
        a.ok(Duration::from_millis(2));
        a.error("Unavailable");
        let mut b = Recorder::default();
        b.ok(Duration::from_millis(4));
        b.error("Unavailable");
        b.error("http 503");
        a.merge(b);
        let s = a.summarize(Duration::from_secs(2));
        assert_eq!(s.count, 2);
        assert!((s.rps - 1.0).abs() < 1e-9);
        assert_eq!(s.errors, 3);
        assert_eq!(s.errors_by_code.get("Unavailable"), Some(&2));
        assert!((s.max_ms - 4.0).abs() < 1e-9);
    }
}
