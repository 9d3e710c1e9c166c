//! Which Redis replies are worth another attempt, and how long to wait before it.
//!
//! Some replies say the command was not executed and the server expects to serve it shortly:
//! `LOADING` (restarting from its AOF/RDB), `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN` (a replica
//! cut off from its master), and on Sentinel `READONLY` (the master was demoted; the next attempt
//! resolves the new one). [`L2::run`](crate::l2::L2) retries those with exponential backoff and
//! full jitter — each delay uniform in `[0, min(cap, base * 2^n)]`, so that callers hit by the
//! same event do not come back in lockstep — as long as the delay ends before the call's
//! deadline. Nothing else is retried here: a timeout or a lost connection is the breaker's and
//! the fallback's business, and a rejection (`WRONGTYPE`, `NOAUTH`, `NOPERM`, ...) would only be
//! rejected again.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// The first delay's upper bound.
pub(crate) const BASE: Duration = Duration::from_millis(10);
/// No delay is longer than this, however many attempts came before.
pub(crate) const CAP: Duration = Duration::from_millis(200);

/// Whether `err` means "not executed, try again shortly". `READONLY` only counts when the next
/// attempt may reach another server (Sentinel re-resolves the master after it); a standalone
/// server that is a replica stays one.
pub(crate) fn is_retryable(err: &redis::RedisError, sentinel: bool) -> bool {
    // A pipeline's error carries the kind of its first failing reply. These replies refuse a
    // server state, not a command, and a server changes state between reads of its socket, not
    // within a pipeline read in one go: the rest of the pipeline met the same refusal. (A pipeline
    // split across reads could straddle the change; the cache's pipelines set absolute values,
    // so running their first part twice is harmless, except that a write-behind dead letter
    // could then be recorded twice.)
    use redis::ServerErrorKind::{BusyLoading, ClusterDown, MasterDown, ReadOnly, TryAgain};
    match err.kind() {
        redis::ErrorKind::Server(BusyLoading | TryAgain | ClusterDown | MasterDown) => true,
        redis::ErrorKind::Server(ReadOnly) => sentinel,
        _ => false,
    }
}

/// The delays between the attempts of one call.
#[derive(Debug)]
pub(crate) struct Backoff {
    deadline: Instant,
    retries: u32,
}

impl Backoff {
    /// A schedule for a call that must be over by `deadline`.
    pub(crate) fn new(deadline: Instant) -> Self {
        Self { deadline, retries: 0 }
    }

    /// The wait before the next attempt, or `None` when that wait would not end before the
    /// deadline (an attempt started at the deadline could only time out).
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        let delay = jittered(self.retries, &mut rand::rng());
        if Instant::now() + delay >= self.deadline {
            return None;
        }
        self.retries += 1;
        Some(delay)
    }

    /// How many delays have been handed out.
    #[cfg(test)]
    fn retries(&self) -> u32 {
        self.retries
    }
}

/// The upper bound of the wait before retry number `n` (from 0): `BASE * 2^n`, capped.
pub(crate) fn ceiling(n: u32) -> Duration {
    BASE.saturating_mul(1u32 << n.min(16)).min(CAP)
}

/// A wait drawn uniformly from `[0, ceiling(n)]` ("full jitter").
/// In whole milliseconds: tokio's timer rounds a sleep up to the next millisecond, so a
/// sub-millisecond draw checked against the deadline could still sleep past it.
fn jittered(n: u32, rng: &mut impl Rng) -> Duration {
    let max = u64::try_from(ceiling(n).as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=max))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error redis-rs makes of the reply `-CODE detail`.
    fn server_error(code: &str) -> redis::RedisError {
        crate::error::reply(&format!("{code} detail"))
    }

    #[test]
    fn only_refusals_of_the_moment_are_retryable() {
        for code in ["LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"] {
            assert!(is_retryable(&server_error(code), false), "{code}");
            assert!(is_retryable(&server_error(code), true), "{code}");
        }
        assert!(is_retryable(&server_error("READONLY"), true));
        assert!(!is_retryable(&server_error("READONLY"), false));
        for code in ["WRONGTYPE", "NOAUTH", "NOPERM", "ERR", "OOM", "BUSY", "NOSCRIPT"] {
            assert!(!is_retryable(&server_error(code), true), "{code}");
        }
        let timeout = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "t"));
        let reset = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "r"));
        assert!(!is_retryable(&timeout, true));
        assert!(!is_retryable(&reset, true));
    }

    #[test]
    fn ceilings_double_from_the_base_up_to_the_cap() {
        let got: Vec<_> = (0..7).map(ceiling).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(got, [ms(10), ms(20), ms(40), ms(80), ms(160), ms(200), ms(200)]);
        assert_eq!(ceiling(u32::MAX), CAP);
    }

    #[test]
    fn delays_are_jittered_within_their_ceiling() {
        let mut rng = rand::rng();
        for n in 0..8 {
            let draws: Vec<_> = (0..200).map(|_| jittered(n, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= ceiling(n)), "retry {n}: {draws:?}");
            // 200 draws from at least 11 values: all equal only if there is no jitter.
            assert!(draws.iter().any(|d| *d != draws[0]), "retry {n}: no jitter");
            // Full jitter: draws spread over the whole range, not around its top.
            assert!(draws.iter().any(|d| *d < ceiling(n) / 2), "retry {n}: {draws:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_never_passes_the_deadline() {
        for budget_ms in [0, 1, 5, 50, 250, 1000] {
            let start = Instant::now();
            let deadline = start + Duration::from_millis(budget_ms);
            let mut backoff = Backoff::new(deadline);
            while let Some(delay) = backoff.next_delay() {
                assert!(delay <= ceiling(backoff.retries() - 1));
                tokio::time::sleep(delay).await;
                assert!(Instant::now() < deadline, "budget {budget_ms} ms: slept past the deadline");
                assert!(backoff.retries() < 10_000, "budget {budget_ms} ms: unbounded schedule");
            }
            assert!(Instant::now() <= deadline);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_budget_allows_several_retries_then_stops() {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut backoff = Backoff::new(deadline);
        while let Some(delay) = backoff.next_delay() {
            tokio::time::sleep(delay).await;
        }
        // Each wait is at most 200 ms, so a second allows at least four of them before one no
        // longer fits.
        assert!(backoff.retries() >= 4, "{}", backoff.retries());
        // The schedule gave up only because the next wait could not end in time.
        assert!(deadline - Instant::now() <= CAP);
    }
}
