//! A circuit breaker around Redis.
//!
//! Closed: calls go through; `failure_threshold` consecutive failures open it. Open: Redis is not
//! called at all (callers fall back to the loader at once instead of waiting on timeouts) until
//! `open_for` has passed. Half-open: exactly one probe call goes through; its success closes the
//! breaker, its failure re-opens it for another `open_for`.
//!
//! On a Redis Cluster a call on a key also passes the breaker of its range of 256 hash slots
//! ([`Breakers`]), so a dead master opens the breakers of its own slots and the rest of the
//! keyspace keeps using Redis during a failover. Redis assigns slots to masters in contiguous
//! ranges, so a range nearly always belongs to one master.
//!
//! Time comes from `tokio::time::Instant`, so tests drive it with `tokio::time::pause`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The open period is over: the next call (one at a time) probes whether Redis is back.
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

/// Breaker tuning ([`CacheBuilder::breaker`](crate::CacheBuilder::breaker)).
///
/// ```
/// use std::time::Duration;
///
/// let breaker = strata::BreakerConfig::new()
///     .failure_threshold(3)                      // open after 3 consecutive failures
///     .open_for(Duration::from_millis(500));     // then skip Redis for 500 ms
/// assert_eq!(breaker.failure_threshold, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failed Redis calls that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a probe is allowed.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_for: Duration::from_secs(1) }
    }
}

impl BreakerConfig {
    /// The defaults: open after 5 consecutive failures, for 1 s (same as `Default`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many consecutive failed Redis calls open the breaker.
    #[must_use]
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures;
        self
    }

    /// Sets how long the breaker stays open before a probe is allowed.
    #[must_use]
    pub fn open_for(mut self, period: Duration) -> Self {
        self.open_for = period;
        self
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
    /// Shared by the range breakers of a cluster (see [`ProbeGate`]).
    probe_gate: Option<Arc<ProbeGate>>,
    /// What it guards, for its log events: `redis` (every call) or `slots A-B`.
    scope: Box<str>,
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
            probe_gate: None,
            scope: "redis".into(),
        }
    }

    fn gated(config: BreakerConfig, gate: Arc<ProbeGate>, first_slot: u16) -> Self {
        let scope = format!("slots {first_slot}-{}", first_slot + (SLOTS_PER_BREAKER - 1)).into();
        Self { probe_gate: Some(gate), scope, ..Self::new(config) }
    }

    /// Takes the shared probe gate, if any; false when it is not this breaker's turn.
    fn take_gate(&self) -> bool {
        self.probe_gate.as_ref().is_none_or(|g| g.take())
    }

    /// `outcome`: `Some(success)` when the probe ran, `None` when it was cancelled.
    fn end_probe(&self, slow: &mut Slow, outcome: Option<bool>) {
        slow.probe_in_flight = false;
        if let Some(gate) = &self.probe_gate {
            gate.release(outcome, self.config.open_for);
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        let slow = self.lock();
        // Open with its period over: the next call probes. Reported as half-open so that a
        // breaker no call has touched since (an idle slot range) does not look open forever.
        if slow.state == BreakerState::Open && slow.opened_at.elapsed() >= self.config.open_for {
            return BreakerState::HalfOpen;
        }
        slow.state
    }

    /// Whether a probe call is in flight.
    fn probing(&self) -> bool {
        self.lock().probe_in_flight
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
            BreakerState::Open
                if slow.opened_at.elapsed() >= self.config.open_for && !slow.probe_in_flight && self.take_gate() =>
            {
                slow.state = BreakerState::HalfOpen;
                slow.probe_in_flight = true;
                tracing::warn!(breaker = %self.scope, state = "half-open", "redis circuit breaker half-open: probing");
                Some(Permit { breaker: self, probe: true, reported: false })
            }
            BreakerState::HalfOpen if !slow.probe_in_flight && self.take_gate() => {
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
                self.end_probe(&mut slow, Some(true));
                slow.state = BreakerState::Closed;
                self.failures.store(0, Ordering::Relaxed);
                self.closed.store(true, Ordering::Release);
                tracing::warn!(breaker = %self.scope, state = "closed", "redis circuit breaker closed: redis is back");
            } else if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let mut slow = self.lock();
        if permit.probe {
            self.end_probe(&mut slow, Some(false));
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
            tracing::warn!(
                breaker = %self.scope,
                state = "open",
                open_for_ms = self.config.open_for.as_millis() as u64,
                failures = self.failures.load(Ordering::Relaxed),
                "redis circuit breaker opened"
            );
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

/// Paces the probes of the range breakers of one cluster: one at a time, and after a failed
/// probe none for `open_for`. A probe on a dead master costs its caller a failed call (up to the
/// operation timeout), and a third of the ranges may be dead at once; without the gate each
/// would probe every period. A successful probe lets the next range probe at once, so the
/// ranges of a promoted replica close one after the other within milliseconds.
#[derive(Debug)]
struct ProbeGate {
    state: Mutex<(bool, Instant)>,
}

impl Default for ProbeGate {
    fn default() -> Self {
        Self { state: Mutex::new((false, Instant::now())) }
    }
}

impl ProbeGate {
    fn take(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (busy, next_at) = &mut *state;
        if *busy || Instant::now() < *next_at {
            return false;
        }
        *busy = true;
        true
    }

    fn release(&self, outcome: Option<bool>, pause: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = false;
        if outcome == Some(false) {
            state.1 = Instant::now() + pause;
        }
    }
}

/// Hash slots per range breaker on a cluster: 64 ranges over the 16384 slots.
const SLOTS_PER_BREAKER: u16 = 256;
const CLUSTER_SLOTS: u16 = 16384;

/// The breakers of one cache. `whole` guards every call; on a cluster, a call on a key also
/// passes the breaker of its slot range. A dead master fails only its own ranges, whose
/// breakers open after `failure_threshold` consecutive failures, while calls on the other
/// ranges keep succeeding and keep `whole` closed. Range probes are paced by a [`ProbeGate`]. `whole` opens after twice that many
/// consecutive failures anywhere: Redis is down as a whole, and waiting for each of the 64
/// range breakers to open on its own would cost callers hundreds of failed calls.
#[derive(Debug)]
pub(crate) struct Breakers {
    whole: Breaker,
    /// `[slot / 256]`; empty unless the cache talks to a cluster.
    ranges: Box<[Breaker]>,
}

/// Permission for one Redis call from [`Breakers::try_acquire`].
#[derive(Debug)]
pub(crate) struct Permits<'a> {
    whole: Permit<'a>,
    range: Option<(&'a Breaker, Permit<'a>)>,
}

impl Breakers {
    pub(crate) fn new(config: BreakerConfig, cluster: bool) -> Self {
        if !cluster {
            return Self { whole: Breaker::new(config), ranges: Box::new([]) };
        }
        let whole = config.clone().failure_threshold(config.failure_threshold.saturating_mul(2));
        let gate = Arc::new(ProbeGate::default());
        let ranges = (0..CLUSTER_SLOTS / SLOTS_PER_BREAKER)
            .map(|i| Breaker::gated(config.clone(), gate.clone(), i * SLOTS_PER_BREAKER))
            .collect();
        Self { whole: Breaker::new(whole), ranges }
    }

    /// Permission to call Redis on `key` (`None`: a call that names no key), or `None` when a
    /// breaker on its way is open.
    pub(crate) fn try_acquire(&self, key: Option<&[u8]>) -> Option<Permits<'_>> {
        let range = match key {
            Some(key) if !self.ranges.is_empty() => {
                Some(&self.ranges[usize::from(redis_slot(key) / SLOTS_PER_BREAKER)])
            }
            _ => None,
        };
        let whole = self.whole.try_acquire()?;
        // When the range refuses, `whole`'s permit is dropped unreported: a probe slot it held
        // is freed for another call.
        let range = match range {
            Some(breaker) => Some((breaker, breaker.try_acquire()?)),
            None => None,
        };
        Some(Permits { whole, range })
    }

    /// Reports the outcome of the call made under `permits`.
    pub(crate) fn record(&self, permits: Permits<'_>, success: bool) {
        self.whole.record(permits.whole, success);
        if let Some((breaker, permit)) = permits.range {
            breaker.record(permit, success);
        }
    }

    /// Whether calls are being skipped now: `Open` when the whole breaker or some range breaker
    /// is within its open period, `HalfOpen` while a probe runs or the whole breaker's period
    /// is over. A range breaker whose period ended with no call since does not count: nothing
    /// is skipped, and the next call on it probes.
    pub(crate) fn state(&self) -> BreakerState {
        let whole = self.whole.state();
        if whole != BreakerState::Closed {
            return whole;
        }
        if self.ranges.iter().any(|b| b.state() == BreakerState::Open) {
            BreakerState::Open
        } else if self.ranges.iter().any(Breaker::probing) {
            BreakerState::HalfOpen
        } else {
            BreakerState::Closed
        }
    }

    /// How many breakers are within their open period now.
    pub(crate) fn open_now(&self) -> usize {
        std::iter::once(&self.whole).chain(self.ranges.iter()).filter(|b| b.state() == BreakerState::Open).count()
    }

    /// How many times any breaker has opened.
    pub(crate) fn opens(&self) -> u64 {
        std::iter::once(&self.whole).chain(self.ranges.iter()).map(Breaker::opens).sum()
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of the hash tag when there is a
/// non-empty `{...}`, else of the whole key, modulo 16384.
pub(crate) fn redis_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % CLUSTER_SLOTS
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            let mut slow = self.breaker.lock();
            self.breaker.end_probe(&mut slow, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::new().failure_threshold(3).open_for(Duration::from_secs(5)))
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

    #[test]
    fn slots_match_redis() {
        // Reference values from Redis's CLUSTER KEYSLOT.
        assert_eq!(redis_slot(b"foo"), 12182);
        assert_eq!(redis_slot(b"bar"), 5061);
        assert_eq!(redis_slot(b"{user1000}.following"), redis_slot(b"user1000"));
        assert_eq!(redis_slot(b"foo{{bar}}zap"), redis_slot(b"{bar"));
        // An empty tag hashes the whole key; unclosed braces too.
        #[cfg(feature = "cluster")]
        for key in [b"a".as_slice(), b"app:v1:user:42", b"{x}y", b"foo{}{bar}", b"{abc", b"x}{"] {
            let theirs = redis::cluster_routing::Slot::for_key(key);
            assert_eq!(Some(theirs), redis::cluster_routing::Slot::new(redis_slot(key)), "{key:?}");
        }
    }

    fn call(b: &Breakers, key: Option<&[u8]>, success: bool) -> bool {
        let Some(permits) = b.try_acquire(key) else { return false };
        b.record(permits, success);
        true
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_range_does_not_open_the_others() {
        let breakers = Breakers::new(BreakerConfig::new().failure_threshold(3).open_for(Duration::from_secs(5)), true);
        // A failover: calls on the dead range fail, calls elsewhere succeed in between.
        for _ in 0..3 {
            assert!(call(&breakers, Some(b"foo"), false));
            assert!(call(&breakers, Some(b"bar"), true), "slot 5061 is another range");
        }
        assert_eq!(breakers.state(), BreakerState::Open);
        assert_eq!(breakers.open_now(), 1);
        assert!(!call(&breakers, Some(b"foo"), true), "the dead range is skipped");
        assert!(call(&breakers, Some(b"bar"), true));
        assert!(call(&breakers, None, true));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(breakers.state(), BreakerState::Closed, "nothing is skipped once the period is over");
        assert!(call(&breakers, Some(b"foo"), true), "the probe");
        assert_eq!((breakers.state(), breakers.opens()), (BreakerState::Closed, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn range_probes_are_paced() {
        let breakers = Breakers::new(BreakerConfig::new().failure_threshold(1).open_for(Duration::from_secs(5)), true);
        assert!(call(&breakers, Some(b"foo"), false));
        assert!(call(&breakers, Some(b"bar"), true), "resets the whole breaker's count");
        assert!(call(&breakers, Some(b"bar"), false));
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = breakers.try_acquire(Some(b"foo")).expect("first range probes");
        assert!(breakers.try_acquire(Some(b"bar")).is_none(), "the other range waits for the gate");
        drop(probe);
        let probe = breakers.try_acquire(Some(b"bar")).expect("gate free again after a cancelled probe");
        breakers.record(probe, true);
        assert!(call(&breakers, Some(b"foo"), true), "a success lets the next range probe at once");
        assert_eq!(breakers.state(), BreakerState::Closed);
        // After a failed probe, no range probes for a period.
        assert!(call(&breakers, Some(b"foo"), false));
        assert!(call(&breakers, Some(b"bar"), true), "resets the whole breaker's count");
        assert!(call(&breakers, Some(b"bar"), false));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(call(&breakers, Some(b"foo"), false), "probe fails");
        assert!(!call(&breakers, Some(b"bar"), true), "paced: bar's period is over but the gate waits");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(call(&breakers, Some(b"bar"), true), "bar probes after the pause");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_everywhere_open_the_whole_breaker() {
        let breakers = Breakers::new(BreakerConfig::new().failure_threshold(3).open_for(Duration::from_secs(5)), true);
        // Six failures on six different ranges: no range reaches 3, the whole reaches 6.
        for key in [b"a", b"b", b"c", b"d", b"e", b"f"] {
            assert!(call(&breakers, Some(key), false));
        }
        assert_eq!(breakers.state(), BreakerState::Open);
        assert!(!call(&breakers, Some(b"bar"), true));
        assert!(!call(&breakers, None, true));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(call(&breakers, Some(b"bar"), true), "the whole breaker's probe");
        assert_eq!(breakers.state(), BreakerState::Closed);
        // Standalone: one breaker, the configured threshold.
        let single = Breakers::new(BreakerConfig::new().failure_threshold(3).open_for(Duration::from_secs(5)), false);
        (0..3).for_each(|_| assert!(call(&single, Some(b"foo"), false)));
        assert_eq!(single.state(), BreakerState::Open);
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
