//! `strata invalidate` and `strata flush --bump-version`.
//!
//! Invalidation removes every key of a namespace, or matching a glob pattern, on every master:
//! `SCAN MATCH ... COUNT 1000` (one thread per master) and `UNLINK` in batches, one pipeline
//! (one round trip) per batch. On a cluster the keys of one node's batch may lie in different
//! slots, and a multi-key `UNLINK` needs them in one slot, so a batch is grouped by slot
//! (computed locally, no `CLUSTER KEYSLOT` round trip) into one `UNLINK` per slot. Replicas are
//! not scanned: they follow their masters.
//!
//! Each removed key's Strata coordination keys (`{KEY}:lease`, `{KEY}:version`, same slot,
//! [`strata::coordination_keys`]) are unlinked with it, as the library's own `delete` does: a
//! load or a versioned write that started before the invalidation must not store its value
//! after it. They are not counted in the report.
//!
//! No set of the keys seen is kept (memory stays flat on any keyspace): `UNLINK` is idempotent
//! and `removed` counts its replies, so a key SCAN returns twice is removed and counted once.
//! `matched` counts SCAN's replies and may count such a key twice (rare: only while the hash
//! table is resized); in a dry run it is therefore an upper bound.
//!
//! Flushing retires a whole key schema: the schema version of an app lives in the Redis key
//! `strata:schema:APP` (an integer; absent means 1). [`bump_version`] raises it by one; apps
//! that read it build their keys with the new `v{N}` prefix, and the old keys expire by their
//! TTL (or are removed at once with `purge_old`). See `docs/operations/inspect-invalidate.md`.

use std::collections::HashMap;

use indicatif::ProgressBar;
use redis::cluster_routing::Slot;
use serde::Serialize;

use crate::error::{OpsError, Result};
use crate::inspect::{SCAN_COUNT, namespace_of};
use crate::target::{Deployment, Node};

/// Default number of keys per `UNLINK` round trip.
pub const DEFAULT_BATCH: usize = 500;
/// Largest batch accepted.
pub const MAX_BATCH: usize = 100_000;
/// Prefix of the key holding an app's schema version: `strata:schema:APP`.
pub const SCHEMA_KEY_PREFIX: &str = "strata:schema:";

/// Glob metacharacters of Redis patterns (`SCAN MATCH`, `KEYS`).
const GLOB_CHARS: &[char] = &['*', '?', '[', ']', '\\'];

/// Which keys to invalidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Exactly the keys of one namespace, as [`namespace_of`] defines it: a Strata namespace
    /// (`app:v{N}:entity`) or a first-segment name (`session`).
    Namespace(String),
    /// Every key matching a Redis glob pattern (given as is: the caller escapes).
    Pattern(String),
}

impl Selector {
    /// Checks the selector and returns the `SCAN MATCH` pattern.
    pub fn pattern(&self) -> Result<String> {
        match self {
            Selector::Namespace(ns) => namespace_pattern(ns),
            Selector::Pattern(p) if p.is_empty() => Err(OpsError::invalid("the pattern is empty")),
            Selector::Pattern(p) if p.chars().any(char::is_control) => {
                Err(OpsError::invalid(format!("the pattern {p:?} contains a control character")))
            }
            Selector::Pattern(p) => Ok(p.clone()),
        }
    }
}

/// Escapes every glob metacharacter (`* ? [ ] \`) of `text` with a backslash, so that it
/// matches only itself in a Redis pattern.
pub fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if GLOB_CHARS.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Checks that `namespace` names a namespace [`namespace_of`] can produce: `app:v{N}:entity`
/// or a single segment, each segment non-empty and free of whitespace, control and glob
/// characters.
pub fn validate_namespace(namespace: &str) -> Result<()> {
    let hint = "a namespace is app:vN:entity (e.g. shop:v1:user) or a first segment (e.g. session); \
                use --pattern for other key shapes";
    if namespace.is_empty() {
        return Err(OpsError::invalid(format!("the namespace is empty; {hint}")));
    }
    if let Some(c) = namespace.chars().find(|c| c.is_whitespace() || c.is_control() || GLOB_CHARS.contains(c)) {
        return Err(OpsError::invalid(format!(
            "namespace {namespace:?} contains {c:?} (whitespace, control and glob characters * ? [ ] \\ are not \
             allowed); {hint}"
        )));
    }
    let segments: Vec<&str> = namespace.split(':').collect();
    let versioned =
        |s: &str| s.strip_prefix('v').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    match segments.as_slice() {
        [_] => Ok(()),
        [app, version, entity] if !app.is_empty() && versioned(version) && !entity.is_empty() => Ok(()),
        _ => Err(OpsError::invalid(format!("{namespace:?} is not a namespace: {hint}"))),
    }
}

/// The `SCAN MATCH` pattern of a namespace: the namespace with glob characters escaped,
/// followed by `:*`. Validates the namespace first.
pub fn namespace_pattern(namespace: &str) -> Result<String> {
    validate_namespace(namespace)?;
    Ok(format!("{}:*", escape_glob(namespace)))
}

/// Options of [`invalidate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidateOptions {
    /// Which keys.
    pub selector: Selector,
    /// Count the keys, remove nothing.
    pub dry_run: bool,
    /// Keys per `UNLINK` round trip.
    pub batch: usize,
}

impl InvalidateOptions {
    /// Removes the keys of a namespace, in batches of [`DEFAULT_BATCH`].
    pub fn namespace(namespace: impl Into<String>) -> Self {
        Self { selector: Selector::Namespace(namespace.into()), dry_run: false, batch: DEFAULT_BATCH }
    }

    /// Removes the keys matching a pattern, in batches of [`DEFAULT_BATCH`].
    pub fn pattern(pattern: impl Into<String>) -> Self {
        Self { selector: Selector::Pattern(pattern.into()), dry_run: false, batch: DEFAULT_BATCH }
    }

    /// Validates the options; returns the `SCAN MATCH` pattern.
    pub fn check(&self) -> Result<String> {
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(OpsError::invalid(format!("the batch size must be 1 to {MAX_BATCH}, got {}", self.batch)));
        }
        self.selector.pattern()
    }
}

/// The result of [`invalidate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvalidateReport {
    /// The `SCAN MATCH` pattern used.
    pub pattern: String,
    /// The namespace, when invalidating one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Keys found (SCAN replies: a key returned twice while the table resizes counts twice).
    pub matched: u64,
    /// Keys removed (`UNLINK` replies: a key that expired in between is matched, not removed).
    pub removed: u64,
    /// Nothing was removed: `matched` is what would have been.
    pub dry_run: bool,
    /// Masters scanned.
    pub masters: usize,
}

/// Removes (or with `dry_run`, counts) the selected keys on every master. `progress` advances
/// by the keys removed (matched, in a dry run); pass [`ProgressBar::hidden`] for none.
pub fn invalidate(
    deployment: &Deployment,
    options: &InvalidateOptions,
    progress: &ProgressBar,
) -> Result<InvalidateReport> {
    let pattern = options.check()?;
    let namespace = match &options.selector {
        Selector::Namespace(ns) => Some(ns.clone()),
        Selector::Pattern(_) => None,
    };
    let masters = deployment.masters_checked("invalidate")?;
    let results: Vec<Result<(u64, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = masters
            .iter()
            .map(|node| {
                let (pattern, namespace) = (&pattern, namespace.as_deref());
                scope.spawn(move || invalidate_node(deployment, node, pattern, namespace, options, progress))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(OpsError::invalid("an invalidation thread panicked"))))
            .collect()
    });
    let mut report = InvalidateReport {
        pattern,
        namespace,
        matched: 0,
        removed: 0,
        dry_run: options.dry_run,
        masters: masters.len(),
    };
    for result in results {
        let (matched, removed) = result?;
        report.matched += matched;
        report.removed += removed;
    }
    Ok(report)
}

fn invalidate_node(
    deployment: &Deployment,
    node: &Node,
    pattern: &str,
    namespace: Option<&str>,
    options: &InvalidateOptions,
    progress: &ProgressBar,
) -> Result<(u64, u64)> {
    let mut con = deployment.connect(&node.addr)?;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let (mut matched, mut removed) = (0u64, 0u64);
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(&mut con)
            .map_err(|e| OpsError::redis(&node.addr, &e))?;
        for key in keys {
            // The pattern `NS:*` of a first-segment namespace also matches schema keys
            // (`NS:v1:entity:id`), which belong to their own namespace.
            if namespace.is_some_and(|ns| namespace_of(&key) != ns) {
                continue;
            }
            matched += 1;
            if options.dry_run {
                progress.inc(1);
                continue;
            }
            pending.push(key);
            if pending.len() >= options.batch {
                removed += unlink(&mut con, node, deployment.cluster, &mut pending, progress)?;
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if !pending.is_empty() {
        removed += unlink(&mut con, node, deployment.cluster, &mut pending, progress)?;
    }
    Ok((matched, removed))
}

/// UNLINKs `keys` (emptied) and their coordination keys (lease, write version) in one round
/// trip: one command per slot on a cluster. Returns the keys removed (coordination keys not
/// counted).
fn unlink(
    con: &mut redis::Connection,
    node: &Node,
    cluster: bool,
    keys: &mut Vec<Vec<u8>>,
    progress: &ProgressBar,
) -> Result<u64> {
    // On a cluster, a key with its own hash tag (`{tenant}:x`) has its coordination keys in
    // another slot, maybe on another node: they are left to expire (the library cannot script
    // them together with their key either).
    let coordination: Vec<Vec<u8>> = keys
        .iter()
        .filter(|k| strata::coordination_target(k).is_none())
        .flat_map(|k| strata::coordination_keys(k).map(|c| (k, c)))
        .filter(|(k, c)| !cluster || Slot::for_key(k) == Slot::for_key(c))
        .map(|(_, c)| c)
        .collect();
    let mut pipe = redis::pipe();
    if cluster {
        let group = |keys: Vec<Vec<u8>>| {
            let mut by_slot: HashMap<Slot, Vec<Vec<u8>>> = HashMap::new();
            for key in keys {
                by_slot.entry(Slot::for_key(&key)).or_default().push(key);
            }
            by_slot
        };
        for group in group(std::mem::take(keys)).values() {
            pipe.cmd("UNLINK").arg(group);
        }
        for group in group(coordination).values() {
            pipe.cmd("UNLINK").arg(group).ignore();
        }
    } else {
        pipe.cmd("UNLINK").arg(&*keys);
        if !coordination.is_empty() {
            pipe.cmd("UNLINK").arg(&coordination).ignore();
        }
        keys.clear();
    }
    let counts: Vec<u64> = pipe.query(con).map_err(|e| OpsError::redis(&node.addr, &e))?;
    let removed = counts.iter().sum();
    progress.inc(removed);
    Ok(removed)
}

/// The key holding `app`'s schema version.
pub fn schema_key(app: &str) -> String {
    format!("{SCHEMA_KEY_PREFIX}{app}")
}

/// Checks an app name (the first segment of its keys: `[A-Za-z0-9_-]{1,64}`, as
/// [`strata::KeySchema::new`] requires).
pub fn validate_app(app: &str) -> Result<()> {
    strata::KeySchema::new(app, 1).map(|_| ()).map_err(|e| OpsError::invalid(format!("invalid app name: {e}")))
}

/// The current schema version of `app` (1 when `strata:schema:APP` is absent).
pub fn schema_version(deployment: &Deployment, app: &str) -> Result<u32> {
    validate_app(app)?;
    let key = schema_key(app);
    let (addr, mut con) = connection_for_key(deployment, &key)?;
    let value: Option<String> = redis::cmd("GET").arg(&key).query(&mut con).map_err(|e| OpsError::redis(&addr, &e))?;
    match value {
        None => Ok(1),
        Some(v) => v.trim().parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            OpsError::invalid(format!("{key} holds {v:?}, which is not a schema version (an integer from 1)"))
        }),
    }
}

/// The result of [`bump_version`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BumpReport {
    /// The app.
    pub app: String,
    /// The key holding its schema version.
    pub schema_key: String,
    /// The version before.
    pub old_version: u32,
    /// The version now.
    pub new_version: u32,
    /// Keys of the old version removed (None: not purged; they expire by their TTL).
    pub purged: Option<u64>,
}

/// Raises `app`'s schema version by one, atomically (absent counts as 1, so the first bump
/// sets 2). With `purge` (batch size), also removes every key of the old version
/// (`APP:v{old}:*`) on every master; `progress` advances by the keys removed.
pub fn bump_version(
    deployment: &Deployment,
    app: &str,
    purge: Option<usize>,
    progress: &ProgressBar,
) -> Result<BumpReport> {
    validate_app(app)?;
    if let Some(batch) = purge {
        // Check the purge options before changing anything.
        InvalidateOptions { batch, ..InvalidateOptions::pattern("x") }.check()?;
    }
    let key = schema_key(app);
    let (addr, mut con) = connection_for_key(deployment, &key)?;
    let script = redis::Script::new(BUMP_SCRIPT);
    let old: i64 = script.key(&key).invoke(&mut con).map_err(|e| OpsError::redis(&addr, &e))?;
    let old = u32::try_from(old).map_err(|_| OpsError::invalid(format!("{key}: unexpected version {old}")))?;
    let new_version = old + 1; // the script refuses u32::MAX
    let purged = match purge {
        None => None,
        Some(batch) => {
            let options = InvalidateOptions { batch, ..InvalidateOptions::pattern(format!("{app}:v{old}:*")) };
            Some(invalidate(deployment, &options, progress)?.removed)
        }
    };
    Ok(BumpReport { app: app.to_owned(), schema_key: key, old_version: old, new_version, purged })
}

/// Reads the version (absent: 1), refuses anything but an integer from 1 to 2^32 - 2, stores
/// version + 1 and returns the old one. Atomic: concurrent bumps each get their own version.
const BUMP_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
local old = 1
if v then
  old = tonumber(v)
  if old == nil or old < 1 or old >= 4294967295 or old % 1 ~= 0 then
    return redis.error_reply('ERR ' .. KEYS[1] .. ' holds ' .. v .. ', not a schema version (1 to 4294967294)')
  end
end
redis.call('SET', KEYS[1], string.format('%d', old + 1))
return old
";

/// A connection to the master serving `key` (the one master of a standalone server).
pub(crate) fn connection_for_key(deployment: &Deployment, key: &str) -> Result<(String, redis::Connection)> {
    let masters = deployment.masters_checked("flush")?;
    let first = *masters.first().ok_or_else(|| OpsError::invalid("the deployment has no master"))?;
    let mut con = deployment.connect(&first.addr)?;
    if !deployment.cluster {
        return Ok((first.addr.clone(), con));
    }
    let slot: u16 =
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(&mut con).map_err(|e| OpsError::redis(&first.addr, &e))?;
    let owner =
        masters.iter().copied().find(|n| n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))).ok_or_else(|| {
            OpsError::invalid(format!("no master serves slot {slot} (of {key}); is the cluster healthy?"))
        })?;
    if owner.addr == first.addr {
        return Ok((first.addr.clone(), con));
    }
    Ok((owner.addr.clone(), deployment.connect(&owner.addr)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_glob_characters() {
        assert_eq!(escape_glob("shop:v1:user"), "shop:v1:user");
        assert_eq!(escape_glob(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
    }

    #[test]
    fn builds_namespace_patterns() -> Result<()> {
        assert_eq!(namespace_pattern("shop:v1:user")?, "shop:v1:user:*");
        assert_eq!(namespace_pattern("session")?, "session:*");
        assert_eq!(namespace_pattern("{tenant}")?, "{tenant}:*");
        for bad in ["", "a b", "shop:v1:us*r", "se?sion", "a[b]", r"a\b", "shop:v1", "shop:vx:user", "a::b", "a:v1:b:c"]
        {
            let err = namespace_pattern(bad).expect_err(bad);
            assert!(err.is_invalid_input(), "{bad:?}: {err}");
        }
        // Every namespace the inspection reports for a well-formed key is accepted.
        for key in ["shop:v1:user:1", "session:abc", "shop:v1:user"] {
            validate_namespace(&namespace_of(key.as_bytes()))?;
        }
        Ok(())
    }

    #[test]
    fn checks_options() {
        assert!(InvalidateOptions::pattern("").check().is_err());
        assert!(InvalidateOptions { batch: 0, ..InvalidateOptions::pattern("a*") }.check().is_err());
        assert_eq!(InvalidateOptions::pattern("a*").check().ok().as_deref(), Some("a*"));
        assert!(validate_app("shop").is_ok());
        assert!(validate_app("sh op").is_err());
        assert!(validate_app("shop:v1").is_err());
    }
}
