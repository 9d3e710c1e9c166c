//! Fixed-bucket latency histograms (loader and Redis call durations), cheap enough for every
//! call: one relaxed atomic add per bucket hit plus one for the sum. Exported as Prometheus
//! histograms by [`crate::exposition`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bounded buckets per histogram (one more counts what is past the last bound).
pub const BUCKETS: usize = 14;

/// Upper bounds of the loader duration buckets, in microseconds: loaders are database queries
/// and remote calls, from sub-millisecond to seconds.
pub const LOADER_BUCKETS_MICROS: [u64; BUCKETS] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// Upper bounds of the Redis call duration buckets, in microseconds: a loopback round trip is
/// tens of microseconds, a call that times out ends at the operation timeout (1 s by default).
pub const L2_BUCKETS_MICROS: [u64; BUCKETS] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];

/// One histogram: [`BUCKETS`] bounded buckets and one past the last bound (`+Inf`).
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [u64; BUCKETS],
    /// Non-cumulative counts; the last one is the overflow bucket.
    counts: [AtomicU64; BUCKETS + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) const fn new(bounds: &'static [u64; BUCKETS]) -> Self {
        Self { bounds, counts: [const { AtomicU64::new(0) }; BUCKETS + 1], sum_micros: AtomicU64::new(0) }
    }

    pub(crate) fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = self.bounds.iter().position(|&b| micros <= b).unwrap_or(BUCKETS);
        if let Some(c) = self.counts.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        let mut counts = [0; BUCKETS + 1];
        for (slot, c) in counts.iter_mut().zip(&self.counts) {
            *slot = c.load(Ordering::Relaxed);
        }
        LatencySnapshot { bounds_micros: self.bounds, counts, sum_micros: self.sum_micros.load(Ordering::Relaxed) }
    }
}

/// A copy of one latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySnapshot {
    bounds_micros: &'static [u64; BUCKETS],
    counts: [u64; BUCKETS + 1],
    /// Sum of every recorded duration, in microseconds.
    pub sum_micros: u64,
}

impl Default for LatencySnapshot {
    fn default() -> Self {
        Self { bounds_micros: &LOADER_BUCKETS_MICROS, counts: [0; BUCKETS + 1], sum_micros: 0 }
    }
}

impl LatencySnapshot {
    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound in seconds, cumulative count)` per bucket, ending with `+Inf` (the count).
    pub fn cumulative_seconds(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        let mut out: Vec<(f64, u64)> = self
            .bounds_micros
            .iter()
            .zip(self.counts)
            .map(|(&bound, count)| {
                total += count;
                (bound as f64 / 1e6, total)
            })
            .collect();
        out.push((f64::INFINITY, self.count()));
        out
    }

    /// `(upper bound in seconds, count)` per bucket, not cumulative, ending with `+Inf` (what
    /// passed the last bound).
    pub fn buckets_seconds(&self) -> Vec<(f64, u64)> {
        let bounds = self.bounds_micros.iter().map(|&b| b as f64 / 1e6).chain([f64::INFINITY]);
        bounds.zip(self.counts).collect()
    }

    /// Sum of every recorded duration, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros as f64 / 1e6
    }
}

impl std::ops::AddAssign for LatencySnapshot {
    fn add_assign(&mut self, other: Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_micros += other.sum_micros;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&LOADER_BUCKETS_MICROS);
        h.record(Duration::from_micros(400));
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        let cumulative = s.cumulative_seconds();
        assert_eq!(cumulative[0], (0.0005, 2));
        assert_eq!(cumulative[3], (0.005, 3));
        assert_eq!(cumulative[13], (10.0, 3));
        assert_eq!(cumulative[14], (f64::INFINITY, 4));
        assert_eq!(s.count(), 4);
        let buckets = s.buckets_seconds();
        assert_eq!(
            (buckets.len(), buckets[0], buckets[3], buckets[14]),
            (15, (0.0005, 2), (0.005, 1), (f64::INFINITY, 1))
        );
        assert_eq!(s.sum_micros, 400 + 500 + 3_000 + 60_000_000);
    }
}
