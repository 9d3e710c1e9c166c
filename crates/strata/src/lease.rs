//! Leases: distributed single-flight and protection against stale sets, in the spirit of
//! memcache leases (Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013).
//!
//! On an L2 miss, the single-flight leader of each process tries to take the key's lease:
//! `SET {key}:lease <token> NX PX <lease_ttl> GET`, a plain command (no script: a script run
//! costs Redis about ten GETs), sent before the read of the key in the same pipeline, so that a
//! holder that stores and releases in between is seen as a value, not as a free lease (a lease
//! taken while the read found a value is handed back). The braces make the lease hash to the
//! same cluster slot as the key. A miss costs its caller at most two round trips (the GET, then
//! the lease), one when misses dominate (the lease attempt then rides with the GET); the store
//! follows in the background (`cache/load.rs`). Needs Redis 7.0 or later (`NX` with `GET`).
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

use std::sync::LazyLock;
use std::time::Duration;

use rand::Rng;
use redis::Script;

/// Adds a lease attempt to `pipe`: `SET lease token NX PX px GET`, which takes the lease when
/// it is free and answers the token that held it before (nil when free). A plain command, not a
/// script: a script run costs Redis about ten GETs (docs/benchmarks.md). Redis 7.0 or later (NX
/// with GET). Sent BEFORE the command that reads the key: a holder that stores its value and
/// releases the lease between the two is then seen by the read (present), never as a free lease
/// taken while its value is already there.
pub(crate) fn attempt(pipe: &mut redis::Pipeline, lease: &[u8], token: &str, px: u64) {
    pipe.cmd("SET").arg(lease).arg(token).arg("NX").arg("PX").arg(px).arg("GET");
}

/// Whether the lease attempt's reply (the previous holder's token) means `token` holds it now.
pub(crate) fn is_ours(previous: Option<&str>, token: &str) -> bool {
    previous.is_none_or(|held| held == token)
}

/// What a fill script answers when it did not store the value (the lease was lost, or
/// write-throughs overlapped). When it stored, it answers the key's PTTL (never below -1).
pub(crate) const NOT_STORED: i64 = -3;

/// The write version's record, in one place for the scripts that write it ([`FILL_IF_LEASED`],
/// [`FILL_VERSIONED`]; the latter also reads it): a version of 20 digits ([`version_arg`]),
/// then, while the key is quarantined, `q` and the Redis time (ms) the quarantine ends.
/// `quarantine` records `version` quarantined for two windows from `now`, living at least as
/// long as the quarantine.
macro_rules! write_version_lua {
    () => {
        r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function quarantine(version_key, version, px, window, now)
  redis.call('SET', version_key, version .. 'q' .. (now + 2 * window), 'PX', math.max(px, 2 * window))
end
"
    };
}

/// Stores the value only while the caller's token still holds the lease, releases it, and
/// answers the key's PTTL read right after the write (or [`NOT_STORED`]).
/// KEYS: key. ARGV: lease, token, value, px[, version key, window ms].
///
/// The lease is named in ARGV, not KEYS (same hash slot, so Redis Cluster allows it): a
/// tracking connection that sends `CLIENT CACHING YES` before the script has Redis 7.0 track the
/// script's declared keys when the script reads (`trackingRememberKeys`, checked on 7.0.15), so
/// only the key is tracked, never the lease. The final PTTL is such a read, after the write: the
/// key is tracked from the value this script stored, and the answer says which value that is
/// and how long it lives, without a read-back. Redis 7.2 and later are reported to track the
/// keys each read command touches instead: the key is still tracked by the final PTTL, but the
/// `GET` of the lease would be tracked too, which costs messages about lease keys (counted in
/// `invalidation_messages_internal`), never a stale read.
///
/// With [`LeaseConfig::versioned_writes`] (`ARGV[5]`: the key's version key, `ARGV[6]`: the
/// versioned window in ms), a store that finds no write version starts one: version 0,
/// quarantined for two windows, as a versioned store that finds none does (see
/// [`FILL_VERSIONED`]), so that the key's versioned writes store once the quarantine is over
/// instead of the first of them emptying the key.
pub(crate) const FILL_IF_LEASED: &str = concat!(
    write_version_lua!(),
    r"
if redis.call('GET', ARGV[1]) ~= ARGV[2] then return -3 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', ARGV[1])
if ARGV[5] and redis.call('EXISTS', ARGV[5]) == 0 then
  quarantine(ARGV[5], string.rep('0', 20), tonumber(ARGV[4]), tonumber(ARGV[6]), now_ms())
end
return redis.call('PTTL', KEYS[1])"
);

/// A write-through's store, after its source write: the value goes in only while the caller's
/// token still holds the lease and no other write-through overlapped it (`ARGV[5]` = '0');
/// otherwise the key and the lease are both deleted, whoever holds the lease, so that readers
/// load from the source (see `cache/write_through.rs`). Either way the key's write version
/// goes: this write carries none, so a versioned write older than it must not store after it.
/// Answers like [`FILL_IF_LEASED`].
/// KEYS: key. ARGV: lease, token, value, px, contended ('1' / '0'), version key.
pub(crate) const FILL_THROUGH: &str = r"
redis.call('DEL', ARGV[6])
if ARGV[5] == '0' and redis.call('GET', ARGV[1]) == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  redis.call('DEL', ARGV[1])
  return redis.call('PTTL', KEYS[1])
end
redis.call('DEL', KEYS[1], ARGV[1])
return -3";

/// A versioned write-through's store, after its source write
/// ([`Cache::update_through_versioned`](crate::Cache::update_through_versioned)), one round
/// trip and no lease taken before. The key's write version `{KEY}:version` holds the newest
/// source version any versioned store has seen, and, while the key is quarantined, `q` and the
/// Redis time (ms) the quarantine ends. Always: the key's lease goes (a load that read the
/// source before this write's commit holds it, or an older one: its store is refused). Then:
///
/// - **no write version** (never written, or lost: a flush, an eviction, an expiry, or removed
///   by a `delete`, a plain `set` or a lease-protocol write-through, each a change of unknown
///   version): a write newer than this one may have been stored and lost, and writes older
///   than it may still be running. The key is emptied and quarantined for two windows;
/// - **quarantined**: the key is emptied, the version raised; a write that started before the
///   loss and stores after the quarantine took more than two windows, so it is past its own
///   even with the client's clock up to one window ahead of Redis's;
/// - **this version not newer**: nothing (the newer write's store did the rest);
/// - **this write past its window** (it started more than the window ago, by Redis's clock):
///   the key is emptied and the version raised, since a loss it cannot see may have happened;
/// - otherwise the value is stored and its version recorded.
///
/// Versions compare as strings of one width ([`version_arg`]). Answers like [`FILL_IF_LEASED`].
/// KEYS: key. ARGV: version key, value, px, version, lease, start of the write (ms since the
/// epoch, the client's clock), window (ms, [`VERSIONED_WINDOW`]).
pub(crate) const FILL_VERSIONED: &str = concat!(
    write_version_lua!(),
    r"
redis.call('DEL', ARGV[5])
local now = now_ms()
local window = tonumber(ARGV[7])
local seen = redis.call('GET', ARGV[1])
if not seen then
  quarantine(ARGV[1], ARGV[4], tonumber(ARGV[3]), window, now)
  redis.call('DEL', KEYS[1])
  return -3
end
local recorded = string.sub(seen, 1, 20)
local ends = tonumber(string.sub(seen, 22)) or 0
if now < ends then
  if ARGV[4] > recorded then recorded = ARGV[4] end
  redis.call('SET', ARGV[1], recorded .. 'q' .. ends, 'KEEPTTL')
  redis.call('DEL', KEYS[1])
  return -3
end
if ARGV[4] <= recorded then return -3 end
redis.call('SET', ARGV[1], ARGV[4], 'PX', ARGV[3])
if now - tonumber(ARGV[6]) > window then
  redis.call('DEL', KEYS[1])
  return -3
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return redis.call('PTTL', KEYS[1])"
);

/// The time a versioned write-through ([`Cache::update_through_versioned`](crate::Cache::update_through_versioned))
/// has from its start (the client's clock) to its store (Redis's clock): one that stores later
/// empties the key instead. A key whose write version was lost is quarantined for twice this
/// (design: `cache/write_through.rs`, "Versioned"), so that a client clock up to one window ahead of Redis's cannot
/// let a write older than the loss store after the quarantine. A protocol constant, not a
/// setting: every instance writing a key must use the same one. A source write slower than it
/// costs the next read a miss; a client clock behind Redis's by `d` leaves writes `window - d`.
pub const VERSIONED_WINDOW: Duration = Duration::from_secs(1);

/// A source version as [`FILL_VERSIONED`] compares it: 20 decimal digits, so that the string
/// order is the numeric order for every `u64`.
pub(crate) fn version_arg(version: u64) -> String {
    format!("{version:020}")
}

/// Takes the lease for a background refresh ([`Cache::get_or_refresh`](crate::Cache::get_or_refresh)) unless the key was
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

/// Deletes a key only if it still holds the bytes we found corrupt or invalidated, so a good
/// value written meanwhile by someone else survives. KEYS: key. ARGV: the bytes seen.
pub(crate) const DELETE_IF_EQUAL: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// The scripts above, each hashed once: a [`Script`] computes its SHA1 when it is made, which
/// is not work for every call.
pub(crate) struct Scripts {
    pub(crate) fill_if_leased: Script,
    pub(crate) fill_through: Script,
    pub(crate) fill_versioned: Script,
    pub(crate) acquire_for_refresh: Script,
    pub(crate) release_if_held: Script,
    pub(crate) delete_if_equal: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    fill_if_leased: Script::new(FILL_IF_LEASED),
    fill_through: Script::new(FILL_THROUGH),
    fill_versioned: Script::new(FILL_VERSIONED),
    acquire_for_refresh: Script::new(ACQUIRE_FOR_REFRESH),
    release_if_held: Script::new(RELEASE_IF_HELD),
    delete_if_equal: Script::new(DELETE_IF_EQUAL),
});

/// Lease settings ([`CacheBuilder::leases`](crate::CacheBuilder::leases)).
///
/// ```
/// use std::time::Duration;
/// use strata::LeaseConfig;
///
/// let leases = LeaseConfig::default().ttl(Duration::from_secs(30)).max_wait(Duration::from_secs(5));
/// assert!(leases.enabled);
/// assert!(!LeaseConfig::disabled().enabled);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// Whether processes coordinate loads through Redis (default on). Off: each process loads
    /// on its own miss (in-process single-flight still applies).
    pub enabled: bool,
    /// How long a lease lives: a holder that dies is replaced after this (default 10 s). Keep it
    /// above the slowest normal load.
    pub ttl: Duration,
    /// Longest a caller waits for another process's load before loading itself (default 10 s).
    pub max_wait: Duration,
    /// What a write-through ([`Cache::set_through`](crate::Cache::set_through),
    /// [`Cache::update_through`](crate::Cache::update_through)) leaves readers while its source
    /// write runs. Off (the default): it deletes the cached value first, so readers wait for
    /// the write, and a writer that dies after its source write leaves the key uncached: the
    /// cache is never older than the source. On: the cached value keeps serving until the write
    /// stores the new one (a hit never waits), and a writer that dies between its source write
    /// and its store leaves the previous value until its TTL, as update-then-delete does. Either
    /// way the write revokes every reader's lease first, overlapping writes leave the key
    /// uncached, and a failing source write removes the key.
    pub keep_serving_during_writes: bool,
    /// Whether this cache's keys are written with
    /// [`Cache::update_through_versioned`](crate::Cache::update_through_versioned) (default
    /// off). On, a load that stores a key with no write version on record starts one (version
    /// 0, quarantined for two [`VERSIONED_WINDOW`]s), so that the key's next versioned write
    /// after that stores its row, where it would otherwise find no version and empty the key.
    /// Costs every load's store an `EXISTS` of the version key, and a small key per loaded key.
    pub versioned_writes: bool,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(10),
            max_wait: Duration::from_secs(10),
            keep_serving_during_writes: false,
            versioned_writes: false,
        }
    }
}

impl LeaseConfig {
    /// Leases off: each process loads on its own miss.
    pub fn disabled() -> Self {
        Self { enabled: false, ..Self::default() }
    }

    /// Turns leases on or off.
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// How long a lease lives (at least 10 ms; checked by [`build`](crate::CacheBuilder::build)).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Longest a caller waits for another process's load before loading itself.
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Whether a write-through keeps the cached value serving during its source write (see
    /// [`keep_serving_during_writes`](Self::keep_serving_during_writes)).
    #[must_use]
    pub fn keep_serving_during_writes(mut self, keep: bool) -> Self {
        self.keep_serving_during_writes = keep;
        self
    }

    /// Whether this cache's keys are written with `update_through_versioned` (see
    /// [`versioned_writes`](Self::versioned_writes)).
    #[must_use]
    pub fn versioned_writes(mut self, versioned: bool) -> Self {
        self.versioned_writes = versioned;
        self
    }
}

const COORDINATION_PREFIX: &[u8] = b"{";
const LEASE_SUFFIX: &[u8] = b"}:lease";
const VERSION_SUFFIX: &[u8] = b"}:version";

/// The lease key of `key`: `{KEY}:lease`. The hash tag puts it in the key's cluster slot, and it
/// falls outside the key's own namespace.
pub fn lease_key(key: impl AsRef<[u8]>) -> Vec<u8> {
    [COORDINATION_PREFIX, key.as_ref(), LEASE_SUFFIX].concat()
}

/// The write-version key of `key`: `{KEY}:version`, the source version of the last value a
/// versioned write-through ([`Cache::update_through_versioned`](crate::Cache::update_through_versioned))
/// stored, which an older one must not overwrite. Same slot as the key, like the lease.
pub fn version_key(key: impl AsRef<[u8]>) -> Vec<u8> {
    [COORDINATION_PREFIX, key.as_ref(), VERSION_SUFFIX].concat()
}

/// The coordination keys Strata keeps beside `key`: its lease and its write version, both in
/// the key's slot. Tools that delete `key` behind Strata's back should delete these too, in the
/// same `DEL`: a load (or a versioned write) in flight could otherwise store a value older than
/// their write.
pub fn coordination_keys(key: impl AsRef<[u8]>) -> [Vec<u8>; 2] {
    [lease_key(&key), version_key(&key)]
}

/// The key a coordination key ([`coordination_keys`]) belongs to; `None` for any other key.
pub fn coordination_target(key: &[u8]) -> Option<&[u8]> {
    let inner = key.strip_prefix(COORDINATION_PREFIX)?;
    inner.strip_suffix(LEASE_SUFFIX).or_else(|| inner.strip_suffix(VERSION_SUFFIX)).filter(|k| !k.is_empty())
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

/// How a lease holder stores its value (see `Via::Lease` in `cache/tiers.rs`).
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
pub(crate) const PRESENT_RETRIES: u32 = 3;

/// Backoff between polls of a waiting caller: 5 ms doubling to 50 ms, ±25 % jitter so waiters
/// in different processes do not poll in lockstep.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 5u64.saturating_mul(1 << attempt.min(4)).min(50);
    let jitter = rand::rng().random_range(0.75..1.25);
    Duration::from_millis(base).mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordination_keys_share_the_slot_of_their_key() {
        use crate::breaker::redis_slot;
        for key in ["app:v1:user:1", "app:v1:user:2:full", "x"] {
            assert_eq!(redis_slot(&lease_key(key)), redis_slot(key.as_bytes()), "{key}");
            assert_eq!(redis_slot(&version_key(key)), redis_slot(key.as_bytes()), "{key}");
            for companion in coordination_keys(key) {
                assert_eq!(coordination_target(&companion), Some(key.as_bytes()));
            }
        }
        assert_eq!(lease_key("a:b"), b"{a:b}:lease");
        assert_eq!(version_key("a:b"), b"{a:b}:version");
        assert_eq!(coordination_target(b"{a:b}:leases"), None);
        assert_eq!(coordination_target(b"{a:b}:versions"), None);
        assert_eq!(coordination_target(b"{}:lease"), None);
        assert_eq!(coordination_target(b"a:b"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_millis(7));
        assert!((0..100).all(|_| backoff(20) <= Duration::from_micros(62_500)));
        assert_ne!(token(), token());
    }
}
