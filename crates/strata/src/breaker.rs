//! A circuit breaker around Redis.
//!
//! Closed: calls go through; `failure_threshold` consecutive failures open it. Open: Redis is not
//! called at all (callers fall back to the loader at once instead of waiting on timeouts) until
//! `open_for` has passed. Half-open: exactly one probe call goes through; its success closes the
//! breaker, its failure re-opens it for another `open_for`.
//!
//! Time comes from `tokio::time::Instant`, so tests drive it with `tokio::time::pause`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Redis is used normally.
    Closed,
    /// Redis is skipped until the open period ends.
    Open,
    /// One probe call is testing whether Redis is back.
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 open, 2 half-open: the value exported as a gauge.
    pub fn as_gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// Breaker tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed Redis calls that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a probe is allowed.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_for: Duration::from_secs(2) }
    }
}

#[derive(Debug)]
struct Slow {
    state: BreakerState,
    opened_at: Instant,
    probe_in_flight: bool,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    /// Fast path: when true, calls go through without taking the lock.
    closed: AtomicBool,
    failures: AtomicU32,
    opens: AtomicU64,
    slow: Mutex<Slow>,
}

/// Permission for one Redis call. Report its outcome with [`Breaker::record`]; dropping a probe
/// permit without reporting (the caller was cancelled) frees the probe slot.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            closed: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            opens: AtomicU64::new(0),
            slow: Mutex::new(Slow { state: BreakerState::Closed, opened_at: Instant::now(), probe_in_flight: false }),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// How many times the breaker has opened.
    pub(crate) fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    /// A permit when Redis may be called now; `None` when the breaker is open.
    pub(crate) fn try_acquire(&self) -> Option<Permit<'_>> {
        if self.closed.load(Ordering::Acquire) {
            return Some(Permit { breaker: self, probe: false, reported: false });
        }
        let mut slow = self.lock();
        match slow.state {
            BreakerState::Closed => Some(Permit { breaker: self, probe: false, reported: false }),
            BreakerState::Open if slow.opened_at.elapsed() >= self.config.open_for && !slow.probe_in_flight => {
                slow.state = BreakerState::HalfOpen;
                slow.probe_in_flight = true;
                tracing::info!("redis circuit breaker half-open: probing");
                Some(Permit { breaker: self, probe: true, reported: false })
            }
            BreakerState::HalfOpen if !slow.probe_in_flight => {
                slow.probe_in_flight = true;
                Some(Permit { breaker: self, probe: true, reported: false })
            }
            _ => None,
        }
    }

    /// Reports the outcome of the call made under `permit`.
    pub(crate) fn record(&self, mut permit: Permit<'_>, success: bool) {
        permit.reported = true;
        if success {
            if permit.probe {
                let mut slow = self.lock();
                slow.probe_in_flight = false;
                slow.state = BreakerState::Closed;
                self.failures.store(0, Ordering::Relaxed);
                self.closed.store(true, Ordering::Release);
                tracing::warn!("redis circuit breaker closed: redis is back");
            } else if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let mut slow = self.lock();
        if permit.probe {
            slow.probe_in_flight = false;
            self.open(&mut slow);
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if slow.state == BreakerState::Closed && failures >= self.config.failure_threshold {
            self.open(&mut slow);
        }
    }

    fn open(&self, slow: &mut Slow) {
        if slow.state != BreakerState::Open {
            self.opens.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(open_for = ?self.config.open_for, "redis circuit breaker opened");
        }
        slow.state = BreakerState::Open;
        slow.opened_at = Instant::now();
        self.closed.store(false, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slow> {
        // The guarded data stays consistent at every await-free step, so a poisoned lock is usable.
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            let mut slow = self.breaker.lock();
            slow.probe_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig { failure_threshold: 3, open_for: Duration::from_secs(5) })
    }

    fn fail(b: &Breaker) {
        if let Some(p) = b.try_acquire() {
            b.record(p, false);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_recovers_through_one_probe() {
        let b = breaker();
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none());

        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.try_acquire().expect("probe allowed after open_for");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.opens(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_a_full_period() {
        let b = breaker();
        (0..3).for_each(|_| fail(&b));
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.try_acquire().expect("probe");
        b.record(probe, false);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_failure_count() {
        let b = breaker();
        fail(&b);
        fail(&b);
        let p = b.try_acquire().expect("closed");
        b.record(p, true);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_the_slot() {
        let b = breaker();
        (0..3).for_each(|_| fail(&b));
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b.try_acquire().expect("probe"));
        assert!(b.try_acquire().is_some(), "a dropped probe must not wedge the breaker");
    }
}
