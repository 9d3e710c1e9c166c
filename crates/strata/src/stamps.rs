//! This instance's knowledge of namespace and tag stamps: what was read, when, and a version
//! that lets L1 hits skip the check while nothing changed. See [`crate::namespace`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Most stamps one instance remembers; past it, stale ones are dropped (then all): forgetting
/// only costs a read.
const MAX_KNOWN: usize = 4096;

/// This instance's knowledge of stamps, keyed by stamp id (a namespace, or `APP:tag:NAME`).
///
/// An L1 hit must not pay a lookup here each time: an entry remembers the `version` under which
/// it was last found current, and is served without a check while `version` has not moved.
/// `version` moves whenever what is known changes, and every `refresh / 2` (a ticker); known
/// stamps are trusted for `refresh / 2`. A hit therefore relies on stamps read at most
/// `refresh` ago, as documented.
pub(crate) struct Stamps {
    /// Half of `stamp_refresh`: how long a read stamp is trusted, and the ticker's period.
    window: Duration,
    known: RwLock<HashMap<Arc<str>, Known>>,
    /// Raised by every forget: a read that started before one must not re-install what it read.
    epoch: AtomicU64,
    /// See above. Starts at 1 (0 means "never verified" in [`Marks::verified`](crate::tags::Marks)).
    version: Arc<AtomicU64>,
    /// Whether the ticker runs; without it, every hit is checked.
    ticking: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    generation: u64,
    /// When the read that learnt it was sent: the stamp was at least `generation` from then on.
    asked_at: Instant,
}

impl Stamps {
    pub(crate) fn new(refresh: Duration) -> Self {
        Self {
            window: refresh / 2,
            known: RwLock::default(),
            epoch: AtomicU64::new(0),
            version: Arc::new(AtomicU64::new(1)),
            ticking: AtomicBool::new(false),
        }
    }

    /// Starts the ticker on the current tokio runtime (none with a zero refresh, or outside a
    /// runtime: hits are then always checked). It stops when the cache is dropped.
    pub(crate) fn start_ticker(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.window.is_zero() {
            return;
        }
        let (version, period) = (Arc::clone(&self.version), self.window);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if Arc::strong_count(&version) == 1 {
                    break;
                }
                version.fetch_add(1, Ordering::AcqRel);
            }
        });
        self.ticking.store(true, Ordering::Release);
    }

    /// The current version, when hits may rely on it.
    pub(crate) fn version(&self) -> Option<u64> {
        self.ticking.load(Ordering::Acquire).then(|| self.version.load(Ordering::Acquire))
    }

    /// The generation of `id` if it was learnt less than `refresh / 2` before `now`.
    pub(crate) fn fresh(&self, id: &str, now: Instant) -> Option<u64> {
        let known = *self.read().get(id)?;
        (now.saturating_duration_since(known.asked_at) < self.window).then_some(known.generation)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records what a read (or a bump) sent at `asked_at` found. Generations never go down here:
    /// a stamp that went back in Redis (a failover lost a write) cannot resurrect what this
    /// instance already knows to be old.
    pub(crate) fn learn(&self, id: &str, generation: u64, asked_at: Instant, epoch: u64) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if known.len() >= MAX_KNOWN && !known.contains_key(id) {
            let window = self.window;
            known.retain(|_, k| asked_at.saturating_duration_since(k.asked_at) < window);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        let before = known.get(id).map(|k| k.generation);
        let entry = known.entry(id.into()).or_insert(Known { generation, asked_at });
        entry.generation = entry.generation.max(generation);
        entry.asked_at = entry.asked_at.max(asked_at);
        if before != Some(entry.generation) {
            // After the change: a check that sees the new version also sees the new generation.
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn forget(&self, id: Option<&str>) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        match id {
            Some(id) => {
                known.remove(id);
            }
            None => known.clear(),
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Known>> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_trusted_for_half_the_refresh_interval() {
        let stamps = Stamps::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(stamps.fresh("a", t0), None);
        stamps.learn("a", 10, t0, stamps.epoch());
        assert_eq!(stamps.fresh("a", t0 + Duration::from_millis(499)), Some(10));
        assert_eq!(stamps.fresh("a", t0 + Duration::from_millis(500)), None);
        // A zero interval means: always ask Redis.
        let strict = Stamps::new(Duration::ZERO);
        strict.learn("a", 10, t0, strict.epoch());
        assert_eq!(strict.fresh("a", t0), None);
    }

    #[test]
    fn generations_never_go_down_and_forgets_win_over_reads_in_flight() {
        let stamps = Stamps::new(Duration::from_secs(1));
        let t0 = Instant::now();
        stamps.learn("a", 10, t0, stamps.epoch());
        stamps.learn("a", 7, t0 + Duration::from_millis(300), stamps.epoch());
        assert_eq!(stamps.fresh("a", t0 + Duration::from_millis(700)), Some(10));
        // A read sent before a forget must not re-install its (possibly old) answer.
        let epoch = stamps.epoch();
        stamps.forget(Some("a"));
        stamps.learn("a", 10, t0, epoch);
        assert_eq!(stamps.fresh("a", t0), None);
        stamps.learn("b", 1, t0, stamps.epoch());
        stamps.forget(None);
        assert_eq!(stamps.fresh("b", t0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_version_moves_on_every_change_and_every_half_interval() {
        let stamps = Stamps::new(Duration::from_secs(1));
        assert_eq!(stamps.version(), None, "no ticker yet: hits are always checked");
        stamps.start_ticker();
        let v0 = stamps.version().expect("ticking");
        let t0 = Instant::now();
        stamps.learn("a", 10, t0, stamps.epoch());
        let v1 = stamps.version().expect("ticking");
        assert!(v1 > v0, "a new stamp");
        stamps.learn("a", 10, t0, stamps.epoch());
        assert_eq!(stamps.version(), Some(v1), "nothing changed");
        stamps.learn("a", 11, t0, stamps.epoch());
        let v2 = stamps.version().expect("ticking");
        assert!(v2 > v1, "a higher generation");
        stamps.forget(Some("a"));
        let v3 = stamps.version().expect("ticking");
        assert!(v3 > v2, "a forget");
        tokio::time::sleep(Duration::from_millis(510)).await;
        assert!(stamps.version().expect("ticking") > v3, "the ticker");
        // A zero interval: no ticker, every hit is checked.
        let strict = Stamps::new(Duration::ZERO);
        strict.start_ticker();
        assert_eq!(strict.version(), None);
    }

    #[test]
    fn the_stamp_cache_is_bounded() {
        let stamps = Stamps::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..MAX_KNOWN * 2 {
            stamps.learn(&format!("ns{i}"), 1, t0, stamps.epoch());
        }
        assert!(stamps.read().len() <= MAX_KNOWN);
        assert_eq!(stamps.fresh(&format!("ns{}", MAX_KNOWN * 2 - 1), t0), Some(1));
    }
}
