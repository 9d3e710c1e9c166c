//! Raw Redis structures: rate-limit counters, the leaderboard (sorted set) and unique visitors
//! (HyperLogLog).

use std::time::Duration;

use strata::{Key, KeySchema};

use super::sessions::now_ms;
use crate::error::{Error, Result};
use crate::raw::RawRedis;

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests counted in this window, this one included.
    pub count: u64,
    /// The limit per window.
    pub limit: u64,
    /// The window's number (milliseconds since the epoch / window length).
    pub window: u64,
}

/// A fixed-window rate limiter: one counter per client and window,
/// `{app}:v1:ratelimit:CLIENT:WINDOW`.
///
/// `INCR` and `PEXPIRE` go in one pipeline on one key (one slot, one round trip), so every
/// counter gets its TTL with its first increment; the TTL is two windows, long enough to outlive
/// the window it counts, after which Redis drops it. Windows are numbered from this process's
/// clock: instances with skewed clocks disagree on window edges by their skew, not more.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: RawRedis,
    schema: KeySchema,
    limit: u64,
    window_ms: u64,
}

impl RateLimiter {
    pub(super) fn new(redis: RawRedis, schema: KeySchema, limit: u64, window: Duration) -> Result<Self> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if limit == 0 || window_ms == 0 {
            return Err(Error::config("rate limit and window must be positive"));
        }
        Ok(Self { redis, schema, limit, window_ms })
    }

    /// Counts a request of `client` and says whether it is within the limit.
    pub async fn check(&self, client: &str) -> Result<Decision> {
        let window = now_ms() / self.window_ms;
        let key = self.schema.key_with_variant("ratelimit", client, &window.to_string())?;
        let mut pipe = redis::pipe();
        pipe.cmd("INCR")
            .arg(key.as_str())
            .cmd("PEXPIRE")
            .arg(key.as_str())
            .arg(self.window_ms.saturating_mul(2))
            .ignore();
        let (count,): (u64,) = self.redis.pipe(&pipe).await?;
        Ok(Decision { allowed: count <= self.limit, count, limit: self.limit, window })
    }
}

/// Longest player name or visitor id accepted.
pub const MAX_MEMBER_LEN: usize = 128;

/// A global leaderboard in one sorted set, `{app}:v1:leaderboard:global`.
#[derive(Debug, Clone)]
pub struct Leaderboard {
    redis: RawRedis,
    key: Key,
}

impl Leaderboard {
    pub(super) fn new(redis: RawRedis, schema: &KeySchema) -> Result<Self> {
        Ok(Self { redis, key: schema.key("leaderboard", "global")? })
    }

    /// Adds `points` to `player`'s score (`ZINCRBY`); returns the new score.
    pub async fn add(&self, player: &str, points: f64) -> Result<f64> {
        check_member("player", player)?;
        if !points.is_finite() {
            return Err(Error::invalid("score must be a finite number"));
        }
        self.redis.cmd(redis::cmd("ZINCRBY").arg(self.key.as_str()).arg(points).arg(player)).await
    }

    /// The `n` best players, best first (`ZREVRANGE 0 n-1 WITHSCORES`).
    pub async fn top(&self, n: usize) -> Result<Vec<(String, f64)>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        self.redis.cmd(redis::cmd("ZREVRANGE").arg(self.key.as_str()).arg(0).arg(n - 1).arg("WITHSCORES")).await
    }
}

/// Unique visitors per page, one HyperLogLog per page (`{app}:v1:visits:PAGE`): about 12 KiB per
/// page whatever the number of visitors, with a standard error of 0.81 %.
#[derive(Debug, Clone)]
pub struct Visitors {
    redis: RawRedis,
    schema: KeySchema,
}

impl Visitors {
    pub(super) fn new(redis: RawRedis, schema: KeySchema) -> Self {
        Self { redis, schema }
    }

    /// Records a visit (`PFADD`); `true` if the estimate changed (likely a new visitor).
    pub async fn record(&self, page: &str, visitor: &str) -> Result<bool> {
        check_member("visitor", visitor)?;
        let key = self.schema.key("visits", page)?;
        let changed: i64 = self.redis.cmd(redis::cmd("PFADD").arg(key.as_str()).arg(visitor)).await?;
        Ok(changed == 1)
    }

    /// Estimated unique visitors of a page (`PFCOUNT`).
    pub async fn count(&self, page: &str) -> Result<u64> {
        let key = self.schema.key("visits", page)?;
        self.redis.cmd(redis::cmd("PFCOUNT").arg(key.as_str())).await
    }
}

fn check_member(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_MEMBER_LEN || value.chars().any(char::is_control) {
        return Err(Error::invalid(format!("{what} must be 1 to {MAX_MEMBER_LEN} bytes without control characters")));
    }
    Ok(())
}
