//! TTL classes and jitter: every write carries a TTL, spread by ±jitter so that keys written
//! together do not all expire together.

use std::time::Duration;

use rand::Rng;

/// Longest TTL written (10 years); longer ones, `Duration::MAX` included, are clamped to it.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long a value lives: a named class (resolved through [`TtlPolicy`]) or a duration.
/// Every variant but [`Ttl::Exact`] gets the policy's ±jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ttl {
    /// [`TtlPolicy::short`] (default 1 minute).
    Short,
    /// [`TtlPolicy::medium`] (default 10 minutes).
    Medium,
    /// [`TtlPolicy::long`] (default 1 hour).
    Long,
    /// A duration of your choice, with jitter.
    Custom(Duration),
    /// A duration without jitter (for values that must all expire at one moment).
    Exact(Duration),
}

impl From<Duration> for Ttl {
    /// A plain duration is [`Ttl::Custom`]: jittered.
    fn from(d: Duration) -> Self {
        Ttl::Custom(d)
    }
}

/// The durations behind the TTL classes, the jitter, and the negative-caching TTL.
///
/// ```
/// use std::time::Duration;
/// use strata::TtlPolicy;
///
/// let policy = TtlPolicy::new()
///     .short(Duration::from_secs(30))
///     .negative(Duration::from_secs(5))
///     .jitter(0.2);                        // ±20 %
/// assert_eq!(policy.medium, Duration::from_secs(600)); // the default
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TtlPolicy {
    /// Duration of [`Ttl::Short`].
    pub short: Duration,
    /// Duration of [`Ttl::Medium`].
    pub medium: Duration,
    /// Duration of [`Ttl::Long`].
    pub long: Duration,
    /// TTL of a cached "not found" (negative caching); kept short on purpose.
    pub negative: Duration,
    /// Each written TTL is multiplied by a uniform factor in `[1 - jitter, 1 + jitter]`.
    /// A fraction in `[0, 0.5]`; 0.1 means ±10 %.
    pub jitter: f64,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        Self {
            short: Duration::from_secs(60),
            medium: Duration::from_secs(600),
            long: Duration::from_secs(3600),
            negative: Duration::from_secs(30),
            jitter: 0.1,
        }
    }
}

impl TtlPolicy {
    /// The defaults: short 1 minute, medium 10 minutes, long 1 hour, negative 30 s, jitter ±10 %
    /// (same as `Default`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the duration of [`Ttl::Short`].
    #[must_use]
    pub fn short(mut self, ttl: Duration) -> Self {
        self.short = ttl;
        self
    }

    /// Sets the duration of [`Ttl::Medium`].
    #[must_use]
    pub fn medium(mut self, ttl: Duration) -> Self {
        self.medium = ttl;
        self
    }

    /// Sets the duration of [`Ttl::Long`].
    #[must_use]
    pub fn long(mut self, ttl: Duration) -> Self {
        self.long = ttl;
        self
    }

    /// Sets the TTL of a cached "not found".
    #[must_use]
    pub fn negative(mut self, ttl: Duration) -> Self {
        self.negative = ttl;
        self
    }

    /// Sets the jitter: a fraction in `[0, 0.5]` (checked when the cache is built).
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The nominal duration of a TTL, before jitter.
    pub fn nominal(&self, ttl: Ttl) -> Duration {
        match ttl {
            Ttl::Short => self.short,
            Ttl::Medium => self.medium,
            Ttl::Long => self.long,
            Ttl::Custom(d) | Ttl::Exact(d) => d,
        }
    }

    /// The TTL to write: nominal ± jitter (none for [`Ttl::Exact`]), between 1 ms and
    /// [`MAX_TTL`].
    pub fn jittered(&self, ttl: Ttl) -> Duration {
        match ttl {
            Ttl::Exact(d) => clamp(d),
            other => self.apply_jitter(self.nominal(other)),
        }
    }

    /// The TTL for a cached "not found", with jitter.
    pub fn jittered_negative(&self) -> Duration {
        self.apply_jitter(self.negative)
    }

    fn apply_jitter(&self, base: Duration) -> Duration {
        let base = clamp(base);
        if self.jitter <= 0.0 {
            return base;
        }
        let factor = rand::rng().random_range(1.0 - self.jitter..=1.0 + self.jitter);
        clamp(Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(MAX_TTL))
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        if !self.jitter.is_finite() {
            return Err(crate::Error::config("ttl jitter must be a finite number"));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(crate::Error::config(format!("ttl jitter must be in [0, 0.5], got {}", self.jitter)));
        }
        for (name, d) in
            [("short", self.short), ("medium", self.medium), ("long", self.long), ("negative", self.negative)]
        {
            if d < Duration::from_millis(1) {
                return Err(crate::Error::config(format!("ttl class {name} must be at least 1 ms")));
            }
        }
        Ok(())
    }
}

fn clamp(d: Duration) -> Duration {
    d.clamp(Duration::from_millis(1), MAX_TTL)
}

/// How long an L1 copy of a value read from Redis may live: what is left of it by the envelope's
/// logical expiry and, when known, by Redis's own PTTL (immune to clock skew between writer and
/// reader). PTTL -2 means the key vanished meanwhile: do not keep it.
pub(crate) fn l1_ttl(meta: crate::codec::Meta, pttl: Option<i64>) -> Duration {
    let by_envelope = Duration::from_millis(meta.expires_at_ms.saturating_sub(now_ms()));
    match pttl {
        Some(ms) if ms >= 0 => by_envelope.min(Duration::from_millis(ms as u64)),
        Some(-2) => Duration::ZERO,
        _ => by_envelope,
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn expiry_ms(ttl: Duration) -> u64 {
    now_ms().saturating_add(ttl_millis(ttl))
}

pub(crate) fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_bounds_and_varies() {
        let policy = TtlPolicy::new().jitter(0.2);
        let base = Duration::from_secs(100);
        let samples: Vec<Duration> = (0..2000).map(|_| policy.jittered(Ttl::Custom(base))).collect();
        assert!(samples.iter().all(|d| *d >= Duration::from_secs(80) && *d <= Duration::from_secs(120)));
        let min = samples.iter().min().copied().unwrap_or_default();
        let max = samples.iter().max().copied().unwrap_or_default();
        assert!(max - min > Duration::from_secs(30), "jitter should spread values: {min:?}..{max:?}");
    }

    #[test]
    fn classes_resolve_and_zero_jitter_is_exact() {
        let policy = TtlPolicy::new().jitter(0.0);
        assert_eq!(policy.jittered(Ttl::Short), Duration::from_secs(60));
        assert_eq!(policy.jittered(Ttl::Long), Duration::from_secs(3600));
        assert_eq!(policy.jittered(Ttl::Custom(Duration::ZERO)), Duration::from_millis(1));
    }

    #[test]
    fn huge_ttls_are_clamped_not_a_panic() {
        let policy = TtlPolicy::default();
        assert_eq!(policy.jittered(Ttl::Exact(Duration::MAX)), MAX_TTL);
        // Custom is clamped first, then jittered down by up to 10 % (and clamped again).
        for _ in 0..200 {
            let d = policy.jittered(Ttl::Custom(Duration::MAX));
            assert!(d <= MAX_TTL && d >= MAX_TTL.mul_f64(0.9), "{d:?}");
        }
        let exact = Duration::from_secs(42);
        assert!((0..100).all(|_| policy.jittered(Ttl::Exact(exact)) == exact));
    }

    #[test]
    fn validation_rejects_bad_jitter() {
        assert!(TtlPolicy::new().jitter(0.9).validate().is_err());
        assert!(TtlPolicy::default().validate().is_ok());
    }
}
