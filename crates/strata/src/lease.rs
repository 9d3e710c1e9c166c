//! Leases: distributed single-flight and protection against stale sets, in the spirit of
//! memcache leases (Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013).
//!
//! On an L2 miss, the single-flight leader of each process tries to take the key's lease:
//! `SET {key}:lease <token> NX PX <lease_ttl>`, in a script that does so only while the key is
//! absent. The braces make the lease hash to the same cluster slot as the key, so one script can
//! touch both, and the script rides in the same pipeline as the leader's GET: a miss costs two
//! round trips (read + lease, then the store), like naive cache-aside.
//!
//! - The **holder** runs the loader and stores the value with a compare-and-set script that
//!   writes only if its token still holds the lease, then releases it.
//! - Every **invalidation** made through Strata (`delete`, `set`, `set_many`) deletes the lease
//!   together with the key. A loader that started before the invalidation therefore cannot
//!   store its (possibly stale) value after it: the race "reader loads v1; writer stores v2 and
//!   invalidates; reader stores v1" ends with the reader's write refused.
//! - **Other processes** wait: they poll Redis with capped, jittered backoff until the value
//!   appears, and take the lease over when it expires (its holder died or hung past
//!   `lease_ttl`). After `lease_max_wait` they load on their own rather than fail.
//!
//! Writes made directly in Redis by other clients do not delete the lease; such writers should
//! `DEL` the lease key too (or accept that a concurrent load may overwrite them once).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::cache::{Cache, CacheValue, Coordinated, L2Read};
use crate::codec::Encoded;
use crate::error::Result;
use crate::key::Key;
use crate::l1::{Checks, Slot, Stamp};
use crate::metrics::NsCounters;
use crate::tiers::ttl_millis;

/// Takes the lease unless the value is already there, atomically: a holder that stores its value
/// and releases the lease between our read and our SET NX must not let us load a second time.
/// KEYS: key, lease. ARGV: token, px, 1 when the key holds a stale value (kept past its logical
/// expiry by a freshness grace period: present, yet to be replaced).
/// Returns 0 value present, 1 lease taken, 2 lease held. Taking it again with the token that
/// holds it answers 1: a retried call must not wait for its own lease.
pub(crate) const ACQUIRE_UNLESS_PRESENT: &str = r"
if ARGV[3] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
return 2";

/// Stores the value only while the caller's token still holds the lease, then releases it.
/// KEYS: key, lease. ARGV: token, value, px. Returns 1 when stored, 0 when the lease was lost.
pub(crate) const FILL_IF_LEASED: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0";

/// A write-through's store, after its source write: the value goes in only while the caller's
/// token still holds the lease and no other write-through overlapped it (ARGV[4] = '0');
/// otherwise the key and the lease are both deleted, whoever holds the lease, so that readers
/// load from the source (see [`crate::write_through`]).
/// KEYS: key, lease. ARGV: token, value, px, contended ('1' / '0'). Returns 1 when stored.
pub(crate) const FILL_THROUGH: &str = r"
if ARGV[4] == '0' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
redis.call('DEL', KEYS[1], KEYS[2])
return 0";

/// Takes the lease for a background refresh ([`Cache::get_or_refresh`]) unless the key was
/// replaced since the refresh was decided: a refresh that comes after another process's has
/// landed (and released the lease) must not load again. The key is compared by its envelope's
/// [`Meta`](crate::codec::Meta) bytes; an absent key is refreshed (loaded) like a miss.
/// KEYS: key, lease. ARGV: token, px, the meta bytes seen, their first and last offset.
/// Returns 0 replaced, 1 lease taken, 2 lease held.
pub(crate) const ACQUIRE_FOR_REFRESH: &str = r"
local now = redis.call('GETRANGE', KEYS[1], ARGV[4], ARGV[5])
if now ~= '' and now ~= ARGV[3] then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 2";

/// Releases the lease if the caller's token still holds it (a failed or uncacheable load).
/// KEYS: lease. ARGV: token.
pub(crate) const RELEASE_IF_HELD: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Lease settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Whether processes coordinate loads through Redis (default on). Off: each process loads
    /// on its own miss (in-process single-flight still applies).
    pub enabled: bool,
    /// How long a lease lives: a holder that dies is replaced after this (default 10 s). Keep it
    /// above the slowest normal load.
    pub ttl: Duration,
    /// Longest a caller waits for another process's load before loading itself (default 10 s).
    pub max_wait: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self { enabled: true, ttl: Duration::from_secs(10), max_wait: Duration::from_secs(10) }
    }
}

const LEASE_PREFIX: &[u8] = b"{";
const LEASE_SUFFIX: &[u8] = b"}:lease";

/// The lease key of `key`: `{KEY}:lease`. The hash tag puts it in the key's cluster slot, and it
/// falls outside the key's own namespace. Tools that delete keys behind Strata's back should
/// delete this one too.
pub fn lease_key(key: impl AsRef<[u8]>) -> Vec<u8> {
    [LEASE_PREFIX, key.as_ref(), LEASE_SUFFIX].concat()
}

/// The key a lease key protects (the inverse of [`lease_key`]); `None` for any other key.
pub fn lease_target(key: &[u8]) -> Option<&[u8]> {
    key.strip_prefix(LEASE_PREFIX).and_then(|k| k.strip_suffix(LEASE_SUFFIX)).filter(|k| !k.is_empty())
}

/// A fresh random token.
pub(crate) fn token() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// What starts the token of a write-through's lease, and no other: a write-through that takes
/// the lease over from one knows that another write is in progress.
pub(crate) const THROUGH_TOKEN_PREFIX: &str = "wt:";

/// A fresh random write-through token.
pub(crate) fn through_token() -> String {
    format!("{THROUGH_TOKEN_PREFIX}{}", token())
}

/// How a lease holder stores its value ([`Cache::fill_leased`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Holder<'a> {
    /// A load under the lease `token`: stored while the token still holds the lease, else
    /// dropped (the invalidation or write that revoked it wins).
    Load(&'a str),
    /// A write-through under the lease `token`, after its source write: stored while the token
    /// still holds the lease and the write took it from no other write-through (`contended`);
    /// else the key and its lease are deleted.
    Through { token: &'a str, contended: bool },
}

/// How often a leader that found the key present, but not usable (invalidated, then removed;
/// or expired), tries the lease again before loading without one.
const PRESENT_RETRIES: u32 = 3;

/// Backoff between polls of a waiting caller: 5 ms doubling to 50 ms, ±25 % jitter so waiters
/// in different processes do not poll in lockstep.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 5u64.saturating_mul(1 << attempt.min(4)).min(50);
    let jitter = rand::rng().random_range(0.75..1.25);
    Duration::from_millis(base).mul_f64(jitter)
}

/// The lease attempt sent with the first read of a load ([`Cache::read_l2_leasing`]): the token
/// it used and what [`ACQUIRE_UNLESS_PRESENT`] answered.
#[derive(Debug)]
pub(crate) struct FirstTry {
    pub(crate) token: String,
    pub(crate) outcome: i64,
}

impl FirstTry {
    /// Whether this attempt took the lease (the key was absent when the script ran).
    pub(crate) fn took_lease(&self) -> bool {
        self.outcome == 1
    }
}

impl Cache {
    /// The first read of a load (an L1 miss, leases on): GET, PTTL and the lease attempt in ONE
    /// round trip, instead of a GET then, on a miss, the lease script. The script takes the
    /// lease only if the key is absent when it runs, so a hit costs nothing more; a lease taken
    /// although the read found something usable (the key appeared or went between the two)
    /// must be handed back by the caller (see [`FirstTry::took_lease`]). `None` when the combined
    /// call failed: the read's error, and no lease attempt.
    pub(crate) async fn read_l2_leasing<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
    ) -> (Result<L2Read<T>>, Option<FirstTry>) {
        let k = key.as_str();
        let ticket = self.inner.coherence.ticket(k);
        let lease = lease_key(k);
        let token = token();
        let px = ttl_millis(self.inner.leases.ttl);
        let (l, t) = (lease.as_slice(), token.as_str());
        let script = &redis::Script::new(ACQUIRE_UNLESS_PRESENT);
        let got = self
            .l2_call_for(k, "GET + lease acquire", |mut c| async move {
                let mut invocation = script.key(k);
                invocation.key(l).arg(t).arg(px).arg("0");
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(k).cmd("PTTL").arg(k).invoke_script(&invocation);
                match pipe.query_async::<(Option<Vec<u8>>, i64, i64)>(&mut c).await {
                    // The script is not cached on this node yet (first use, restart, failover):
                    // load it and send the pipeline again, as `invoke_async` would.
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        invocation.load_async(&mut c).await?;
                        pipe.query_async(&mut c).await
                    }
                    other => other,
                }
            })
            .await;
        let (got, first) = match got {
            Ok((bytes, pttl, outcome)) => {
                let pttl = self.inner.l1.is_some().then_some(pttl);
                (Ok((bytes, pttl)), Some(FirstTry { token, outcome }))
            }
            Err(err) => (Err(err), None),
        };
        (self.interpret_l2(key, ns, accept_negative, ticket, got).await, first)
    }

    /// The single-flight leader's coordination with other processes after an L2 miss: take the
    /// lease, or wait for its holder's value (taking the lease over if the holder goes away).
    /// `stale`: the key holds an expired value, which does not count as present. `first`: the
    /// attempt already sent with the read ([`Cache::read_l2_leasing`]), used as the first one
    /// unless the value is stale (that attempt treated it as present).
    pub(crate) async fn coordinate<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
        stale: bool,
        first: Option<FirstTry>,
    ) -> Coordinated {
        let mut stale_flag = if stale { "1" } else { "0" };
        let lease = lease_key(key.as_str());
        // A lease the first attempt took is ours whatever the read found: load under it.
        let mut first = first.filter(|f| !stale || f.took_lease());
        let token = first.as_ref().map_or_else(token, |f| f.token.clone());
        let px = ttl_millis(self.inner.leases.ttl);
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            let (k, l, t) = (key.as_str(), lease.as_slice(), token.as_str());
            let script = &redis::Script::new(ACQUIRE_UNLESS_PRESENT);
            let taken = match first.take() {
                Some(done) => Ok(done.outcome),
                None => {
                    self.l2_call_for(k, "lease acquire", |mut c| async move {
                        script.key(k).key(l).arg(t).arg(px).arg(stale_flag).invoke_async::<i64>(&mut c).await
                    })
                    .await
                }
            };
            match taken {
                Ok(1) => return Coordinated::Holder(token),
                Ok(0) => {
                    // Present: use it; a value we cannot use (another type, or a cached "not
                    // found" this caller does not accept) is replaced by loading without a lease.
                    // Gone again (a value invalidated by its namespace or tags is removed when
                    // read), or kept past its expiry: take the lease after all. Loading without
                    // one could store a value older than a write made during the load.
                    match self.read_l2::<T>(key, ns, accept_negative).await {
                        Ok(L2Read::Value(v)) => return Coordinated::Found(Arc::new(Some(v))),
                        Ok(L2Read::Negative) => return Coordinated::Found(Arc::new(None::<T>)),
                        Ok(found @ (L2Read::Miss | L2Read::Stale(..))) if attempt < PRESENT_RETRIES => {
                            if matches!(found, L2Read::Stale(..)) {
                                stale_flag = "1";
                            }
                            attempt += 1;
                            continue;
                        }
                        Ok(_) => return Coordinated::LoadAlone { redis_failed: false },
                        Err(err) => {
                            return Coordinated::LoadAlone {
                                redis_failed: err.is_unhealthy() || err.is_circuit_open(),
                            };
                        }
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    return Coordinated::LoadAlone { redis_failed: err.is_unhealthy() || err.is_circuit_open() };
                }
            }
            // Held by another process: wait for its value (or for the lease to go).
            if attempt == 0 {
                NsCounters::inc(&ns.lease_waits);
            }
            if started.elapsed() >= self.inner.leases.max_wait {
                tracing::warn!(key = %key, waited = ?started.elapsed(), "gave up waiting for another process's load");
                return Coordinated::LoadAlone { redis_failed: false };
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
            match self.read_l2::<T>(key, ns, accept_negative).await {
                Ok(L2Read::Value(v)) => return Coordinated::Found(Arc::new(Some(v))),
                Ok(L2Read::Negative) => return Coordinated::Found(Arc::new(None::<T>)),
                // Still the old value: the holder has not stored yet.
                Ok(L2Read::Miss | L2Read::Stale(..)) => {}
                Ok(L2Read::Unusable) => return Coordinated::LoadAlone { redis_failed: false },
                Err(err) => {
                    return Coordinated::LoadAlone { redis_failed: err.is_unhealthy() || err.is_circuit_open() };
                }
            }
        }
    }

    /// Gives the lease back without storing anything (the load failed or its value cannot be
    /// cached), so other processes need not wait for it to expire. Best effort.
    pub(crate) async fn release_lease(&self, key: &Key, token: &str) {
        let lease = &lease_key(key.as_str());
        let script = &redis::Script::new(RELEASE_IF_HELD);
        let released = self
            .l2_call_for(key.as_str(), "lease release", |mut c| async move {
                script.key(lease).arg(token).invoke_async::<i64>(&mut c).await
            })
            .await;
        if let Err(err) = released {
            tracing::debug!(key = %key, error = %err, "could not release lease; it will expire");
        }
    }

    /// Stores a value if the holder's token still holds the key's lease (see [`Holder`]); returns
    /// whether it was stored. A lease lost meanwhile (an invalidation revoked it, or it expired
    /// and another caller took over) refuses the write: the value may be stale. It is still
    /// returned to the caller, but cached nowhere.
    pub(crate) async fn fill_leased(
        &self,
        key: &Key,
        encoded: Encoded,
        ttl: Duration,
        slot: Slot,
        holder: Holder<'_>,
        stamp: Stamp,
    ) -> Result<bool> {
        let (k, lease) = (key.as_str(), lease_key(key.as_str()));
        let echo = self.inner.coherence.expect_echo(k);
        let ticket = self.inner.coherence.ticket(k);
        let (raw_len, marks) = (encoded.raw_len, encoded.marks);
        let bytes = encoded.bytes.as_slice();
        let ttl = self.physical_ttl(ttl);
        let px = ttl_millis(ttl);
        let (script, token, contended) = match holder {
            Holder::Load(token) => (FILL_IF_LEASED, token, None),
            Holder::Through { token, contended } => (FILL_THROUGH, token, Some(if contended { "1" } else { "0" })),
        };
        let (script, lease) = (&redis::Script::new(script), &lease);
        let stored: Result<i64> = self
            .l2_call_for(k, "lease fill", |mut c| async move {
                let mut invocation = script.key(k);
                invocation.key(lease).arg(token).arg(bytes).arg(px);
                if let Some(contended) = contended {
                    invocation.arg(contended);
                }
                invocation.invoke_async(&mut c).await
            })
            .await;
        let stored = match stored {
            Ok(stored) => stored,
            Err(err) => {
                if let Some(echo) = echo {
                    self.inner.coherence.forget(echo);
                }
                return Err(err);
            }
        };
        let ns = self.inner.metrics.ns(key.namespace());
        if stored == 1 {
            NsCounters::inc(&ns.sets);
            let checks = Checks { stamp, marks };
            self.fill_l1_after_write(key, slot, checks, raw_len, ttl, echo, ticket, bytes).await;
        } else {
            if let Some(echo) = echo {
                self.inner.coherence.forget(echo);
            }
            NsCounters::inc(&ns.stale_writes_refused);
            tracing::debug!(key = %key, "lease lost during the load, or writes overlapped: value not cached");
            if let Some(l1) = &self.inner.l1 {
                l1.remove(key.as_str());
            }
        }
        Ok(stored == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_share_the_slot_of_their_key() {
        use redis::cluster_routing::Slot;
        for key in ["app:v1:user:1", "app:v1:user:2:full", "x"] {
            assert_eq!(Slot::for_key(lease_key(key)), Slot::for_key(key), "{key}");
            assert_eq!(lease_target(&lease_key(key)), Some(key.as_bytes()));
        }
        assert_eq!(lease_key("a:b"), b"{a:b}:lease");
        assert_eq!(lease_target(b"{a:b}:leases"), None);
        assert_eq!(lease_target(b"{}:lease"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(7));
        assert!((0..100).all(|_| backoff(20) <= Duration::from_micros(62_500)));
        assert_ne!(token(), token());
    }
}
