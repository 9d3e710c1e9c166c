//! [`Freshness`]: what a cache does around a value's expiry — refresh it early (XFetch), serve it
//! stale while it is refreshed, or serve it stale when the source fails — and how long a caller
//! may wait on a loader.
//!
//! Every envelope carries the value's logical expiry and the time its load took. With a grace
//! period configured (stale-while-revalidate or fail-safe), Redis keeps the value for the logical
//! TTL plus that grace (the `PX` of the write), and L1 keeps its copy as long: past the logical
//! expiry the copy is *stale*. Plain reads (`get`, `get_many`) never return a stale value;
//! [`Cache::get_or_refresh`](crate::Cache::get_or_refresh) and the fail-safe of `get_or_set` may.

use std::any::TypeId;
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::codec::Meta;
use crate::error::{Error, Result};
use crate::ttl::MAX_TTL;

/// Freshness settings of a cache ([`CacheBuilder::freshness`](crate::CacheBuilder::freshness)).
/// The default turns everything off: a value is served until its TTL and loaded on the next
/// read, and loaders are not timed.
///
/// ```
/// use std::time::Duration;
/// use strata::Freshness;
///
/// let freshness = Freshness::new()
///     .early_refresh(1.0)                                 // XFetch
///     .stale_while_revalidate(Duration::from_secs(10))
///     .fail_safe(Duration::from_secs(3600))               // serve up to 1 h stale if the source fails
///     .soft_timeout(Duration::from_millis(100))           // with a stale value in hand, wait no longer
///     .hard_timeout(Duration::from_secs(2));              // never wait longer
/// # let _ = freshness;
/// ```
///
/// | setting | [`get_or_refresh`](crate::Cache::get_or_refresh) | `get_or_set`, `get_or_set_optional` |
/// | --- | --- | --- |
/// | early refresh | refresh in the background, return the cached value | — (needs a loader that outlives the call) |
/// | stale-while-revalidate | return the stale value, refresh in the background | — (same) |
/// | fail-safe | stale value on loader error or soft timeout | same |
/// | soft timeout | return the stale value; the load finishes in the background and is stored | return the stale value; the load is abandoned |
/// | hard timeout | bounds the caller's wait | bounds the loader |
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Freshness {
    /// XFetch ("Optimal Probabilistic Cache Stampede Prevention", Vattani et al., VLDB 2015):
    /// a read of a fresh value starts a refresh when `now - load_time * beta * ln(rand) >=
    /// expiry`, `rand` uniform in (0, 1). A slower load starts earlier; beta > 1 favours earlier
    /// refreshes, < 1 later ones. `None` (default): no early refresh. Decided on L1 hits (the
    /// hot keys), where the entry carries its load time.
    pub early_refresh_beta: Option<f64>,
    /// How long past its logical expiry a value may still be returned by `get_or_refresh` while
    /// one background refresh replaces it (default zero: off).
    pub stale_while_revalidate: Duration,
    /// How long past its logical expiry a value may stand in for a load that fails or passes
    /// the soft timeout (default zero: off). Counted in `stale_served`.
    pub fail_safe_max_staleness: Duration,
    /// With a stale value within the fail-safe window in hand, the longest a caller waits for a
    /// load before getting the stale value instead (default: no limit).
    pub soft_timeout: Option<Duration>,
    /// The longest a caller waits for a load; past it, a stale value within the fail-safe window
    /// is returned, or else an error for which [`Error::is_timeout`] is true (default: no limit).
    pub hard_timeout: Option<Duration>,
}

impl Freshness {
    /// Everything off (same as `Default`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns on XFetch early refresh with this `beta` (1.0 is the usual choice).
    #[must_use]
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh_beta = Some(beta);
        self
    }

    /// Sets the stale-while-revalidate window.
    #[must_use]
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// Turns on fail-safe, serving values up to `max_staleness` past their expiry.
    #[must_use]
    pub fn fail_safe(mut self, max_staleness: Duration) -> Self {
        self.fail_safe_max_staleness = max_staleness;
        self
    }

    /// Sets the soft timeout.
    #[must_use]
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Sets the hard timeout.
    #[must_use]
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(beta) = self.early_refresh_beta
            && !(beta.is_finite() && beta > 0.0)
        {
            return Err(Error::config(format!("early_refresh_beta must be a positive number, got {beta}")));
        }
        if self.stale_while_revalidate > MAX_TTL || self.fail_safe_max_staleness > MAX_TTL {
            return Err(Error::config("freshness windows must not exceed MAX_TTL"));
        }
        if self.soft_timeout.is_some_and(|t| t.is_zero()) || self.hard_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("loader timeouts must be positive"));
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout)
            && soft > hard
        {
            return Err(Error::config("the soft timeout must not exceed the hard timeout"));
        }
        Ok(())
    }

    /// How long Redis and L1 keep a value past its logical expiry, in milliseconds.
    pub(crate) fn grace_ms(&self) -> u64 {
        millis(self.stale_while_revalidate.max(self.fail_safe_max_staleness))
    }

    /// Whether a value with this meta may stand in for a failed or slow load now: never with
    /// fail-safe off (a zero window: the load's error is the answer), else until the window
    /// past its logical expiry ends. The value must have passed its stamp checks.
    pub(crate) fn fail_safe_allows(&self, meta: Meta) -> bool {
        !self.fail_safe_max_staleness.is_zero()
            && crate::ttl::now_ms() < meta.expires_at_ms.saturating_add(millis(self.fail_safe_max_staleness))
    }

    /// Where a value stands at `now_ms`, drawing XFetch's random number when it is fresh.
    pub(crate) fn age(&self, meta: Meta, now_ms: u64) -> Age {
        if now_ms < meta.expires_at_ms {
            return match self.early_refresh_beta {
                Some(beta) if xfetch_due(meta, beta, now_ms, rand::random::<f64>()) => Age::RefreshEarly,
                _ => Age::Fresh,
            };
        }
        let late = now_ms - meta.expires_at_ms;
        if late < millis(self.stale_while_revalidate) {
            Age::Revalidate
        } else if late < millis(self.fail_safe_max_staleness) {
            Age::FailSafe
        } else {
            Age::Expired
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a cached value may be used for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Age {
    /// Serve it.
    Fresh,
    /// Serve it, and refresh it in the background (XFetch drew this read).
    RefreshEarly,
    /// Expired, within stale-while-revalidate: serve it, refresh in the background.
    Revalidate,
    /// Expired, within fail-safe: load, and serve it if the load fails or is too slow.
    FailSafe,
    /// Expired beyond every window.
    Expired,
}

/// XFetch's test with the random draw `r` in [0, 1) passed in. `-ln(r)` is exponentially
/// distributed, so the gap before expiry at which a read refreshes is random, scaled by the load
/// time: many readers refresh early, but rarely at once. `r = 0` gives an infinite gap (refresh);
/// a load time of zero never refreshes early (0 × ∞ is NaN, and NaN compares false).
pub(crate) fn xfetch_due(meta: Meta, beta: f64, now_ms: u64, r: f64) -> bool {
    let gap_ms = f64::from(meta.load_us) / 1000.0 * beta * -r.ln();
    now_ms as f64 + gap_ms >= meta.expires_at_ms as f64
}

/// How a bounded wait ended.
pub(crate) enum Bounded<R> {
    Done(R),
    /// The soft timeout passed (the caller has a stale value to serve).
    Soft(Duration),
    Hard(Duration),
}

/// Awaits `fut` for at most the shorter of the two timeouts.
pub(crate) async fn bounded<F: Future>(fut: F, soft: Option<Duration>, hard: Option<Duration>) -> Bounded<F::Output> {
    let limit = [soft.map(|d| (d, true)), hard.map(|d| (d, false))].into_iter().flatten().min_by_key(|(d, _)| *d);
    match limit {
        None => Bounded::Done(fut.await),
        Some((after, soft)) => match tokio::time::timeout(after, fut).await {
            Ok(out) => Bounded::Done(out),
            Err(_) if soft => Bounded::Soft(after),
            Err(_) => Bounded::Hard(after),
        },
    }
}

type RefreshKey = (Arc<str>, TypeId);

/// Keys (and value types) with a background refresh running in this process: one at a time per
/// key, however many reads ask for it.
#[derive(Default)]
pub(crate) struct Refreshes {
    running: Mutex<HashSet<RefreshKey>>,
}

impl Refreshes {
    /// Claims the refresh of `key`; `None` if one is already running. The claim ends when the
    /// returned guard is dropped.
    pub(crate) fn claim(self: &Arc<Self>, key: &Arc<str>, type_id: TypeId) -> Option<RefreshClaim> {
        let entry = (key.clone(), type_id);
        if !self.lock().insert(entry.clone()) {
            return None;
        }
        Some(RefreshClaim { refreshes: self.clone(), entry })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<RefreshKey>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running refresh; dropping it (finished, failed or panicked) lets the next one start.
pub(crate) struct RefreshClaim {
    refreshes: Arc<Refreshes>,
    entry: RefreshKey,
}

impl Drop for RefreshClaim {
    fn drop(&mut self) {
        self.refreshes.lock().remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: Meta = Meta { expires_at_ms: 10_000, load_us: 50_000 };

    #[test]
    fn xfetch_refreshes_earlier_for_slow_loads_and_big_beta() {
        // -ln(e^-1) = 1: the gap is exactly load time × beta = 50 ms.
        let r = (-1.0f64).exp();
        assert!(!xfetch_due(META, 1.0, 9_940, r));
        assert!(xfetch_due(META, 1.0, 9_951, r));
        assert!(xfetch_due(META, 4.0, 9_801, r));
        assert!(!xfetch_due(Meta { load_us: 10_000, ..META }, 1.0, 9_951, r));
        // The extremes of the draw: r → 0 always refreshes, r → 1 only at expiry.
        assert!(xfetch_due(META, 1.0, 0, 0.0));
        assert!(!xfetch_due(META, 1.0, 9_999, 1.0 - f64::EPSILON));
        // A value written by `set` has no load time: never refreshed early.
        assert!(!xfetch_due(Meta { load_us: 0, ..META }, 1.0, 9_999, 0.0));
    }

    #[test]
    fn windows_classify_expired_values() {
        let f = Freshness::new().stale_while_revalidate(Duration::from_secs(1)).fail_safe(Duration::from_secs(5));
        assert_eq!(f.age(META, 9_999), Age::Fresh);
        assert_eq!(f.age(META, 10_000), Age::Revalidate);
        assert_eq!(f.age(META, 11_000), Age::FailSafe);
        assert_eq!(f.age(META, 15_000), Age::Expired);
        assert_eq!(f.grace_ms(), 5_000);
        assert_eq!(Freshness::default().age(META, 10_000), Age::Expired);
        assert_eq!(Freshness::default().grace_ms(), 0);
    }

    #[test]
    fn a_zero_fail_safe_window_never_stands_in() {
        let fresh = Meta { expires_at_ms: crate::ttl::now_ms() + 60_000, load_us: 0 };
        let expired = Meta { expires_at_ms: crate::ttl::now_ms() - 1_000, load_us: 0 };
        for off in [Freshness::default(), Freshness::new().fail_safe(Duration::ZERO)] {
            assert!(!off.fail_safe_allows(fresh), "fail-safe off: a failed load is an error");
            assert!(!off.fail_safe_allows(expired));
        }
        let on = Freshness::new().fail_safe(Duration::from_secs(5));
        assert!(on.fail_safe_allows(fresh) && on.fail_safe_allows(expired));
        assert!(!on.fail_safe_allows(Meta { expires_at_ms: crate::ttl::now_ms() - 6_000, load_us: 0 }));
    }

    #[test]
    fn validation() {
        assert!(Freshness::new().early_refresh(0.0).validate().is_err());
        assert!(Freshness::new().early_refresh(f64::NAN).validate().is_err());
        assert!(Freshness::new().hard_timeout(Duration::ZERO).validate().is_err());
        let inverted = Freshness::new().soft_timeout(Duration::from_secs(2)).hard_timeout(Duration::from_secs(1));
        assert!(inverted.validate().is_err());
        assert!(Freshness::new().early_refresh(1.0).fail_safe(Duration::from_secs(60)).validate().is_ok());
    }

    #[test]
    fn one_refresh_claim_per_key_and_type() {
        let refreshes = Arc::new(Refreshes::default());
        let key: Arc<str> = "k".into();
        let claim = refreshes.claim(&key, TypeId::of::<u8>());
        assert!(claim.is_some());
        assert!(refreshes.claim(&key, TypeId::of::<u8>()).is_none());
        assert!(refreshes.claim(&key, TypeId::of::<u16>()).is_some());
        drop(claim);
        assert!(refreshes.claim(&key, TypeId::of::<u8>()).is_some());
    }
}
