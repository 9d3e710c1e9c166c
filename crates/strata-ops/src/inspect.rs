//! `strata inspect`: the keyspace by namespace (keys, memory, keys without TTL), a TTL histogram,
//! the biggest keys, and per node memory, hit ratio, evictions and expirations.
//!
//! Every master is scanned (`SCAN ... COUNT 1000`, one thread per master); for each batch the
//! scan returns, `PTTL` and `MEMORY USAGE` of its keys go in one pipeline (one round trip per
//! batch, never per key). Replicas are not scanned (they hold copies), but their INFO figures
//! (hit ratio, memory) are reported.
//!
//! Without sampling, counts are exact for a keyspace that does not change during the scan
//! (keys returned twice by SCAN are counted once). Counting each key once needs a set of key
//! hashes (8 bytes each, about 16 with the table's overhead); it is capped at [`MAX_DEDUP_KEYS`]
//! over the whole inspection (about 80 MB). Past the cap, further keys are counted without
//! de-duplication (SCAN rarely returns a key twice: only while the table is resized) and the
//! report says `exact: false`. With [`InspectOptions::sample`], only the
//! first N keys SCAN returns on each master are measured (SCAN walks the hash table, so this is
//! a sample uncorrelated with key names) and every figure is extrapolated by the node's key
//! count: the report is marked `sampled`.
//!
//! Memory is `MEMORY USAGE key SAMPLES 0`: exact for aggregates (hashes, lists, sets ...) too,
//! where the default samples only 5 elements. It costs time proportional to the key's elements.
//!
//! Strata's coordination keys (leases `{app:vN:entity:id}:lease` and write versions
//! `{app:vN:entity:id}:version`) are counted in a bucket of their own,
//! `app:vN:entity (coordination)` (see [`namespace_of`]): a namespace's figures stay those of
//! its values, and a large bucket points at loads that are slow or stuck.
//!
//! `PTTL` counts as a keyspace lookup in Redis (`MEMORY USAGE` does not): an inspection adds
//! one hit per key measured to the node's `keyspace_hits`. The hit ratios reported are read
//! before the scan; [`NodeStats::inspect_lookups`] says how many lookups were added.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::ProgressBar;
use serde::Serialize;

use crate::error::{OpsError, Result};
use crate::target::{Deployment, Node, Role};

/// `COUNT` hint of every SCAN.
pub const SCAN_COUNT: usize = 1000;
/// Distinct namespaces reported; further ones are counted under [`OTHER_NAMESPACE`], so a
/// keyspace of unstructured keys cannot grow the report without bound.
pub const MAX_NAMESPACES: usize = 1000;
/// The bucket for namespaces past [`MAX_NAMESPACES`].
pub const OTHER_NAMESPACE: &str = "(other)";
/// The bucket for keys without any `:` (they have no prefix to group by).
pub const NO_NAMESPACE: &str = "(no namespace)";
/// Default number of biggest keys reported.
pub const DEFAULT_BIG_KEYS: usize = 10;
/// Keys remembered (as 64-bit hashes) to count each key once, over the whole inspection; past
/// it, counts are approximate (`exact: false`).
pub const MAX_DEDUP_KEYS: u64 = 5_000_000;
/// Appended to a namespace for the bucket of its coordination keys (leases and write
/// versions, [`strata::coordination_keys`]): `shop:v1:user (coordination)`.
pub const COORDINATION_BUCKET_SUFFIX: &str = " (coordination)";
/// Names of the TTL histogram buckets, in order.
pub const TTL_BUCKETS: [&str; 6] = ["none", "<1m", "<10m", "<1h", "<1d", ">=1d"];

/// The namespace a key is counted under.
///
/// A key following the Strata schema (`app:v{N}:entity:rest`, at least four `:`-separated
/// segments with a second segment `v` + digits) belongs to `app:v{N}:entity`; any other key
/// to its first `:`-separated segment (`session:abc` → `session`, `shop:v1:user` →
/// `shop`); a key without `:` to [`NO_NAMESPACE`]. Non-UTF-8 bytes are replaced (lossy).
/// A Strata coordination key (`{KEY}:lease`, `{KEY}:version`) belongs to the namespace of
/// `KEY` followed by [`COORDINATION_BUCKET_SUFFIX`] (`{shop:v1:user:42}:lease` →
/// `shop:v1:user (coordination)`).
///
/// `strata invalidate --namespace NS` removes exactly the keys for which this returns `NS`
/// (and the coordination keys of those keys).
pub fn namespace_of(key: &[u8]) -> Cow<'_, str> {
    if let Some(inner) = strata::coordination_target(key) {
        return Cow::Owned(format!("{}{COORDINATION_BUCKET_SUFFIX}", namespace_of_value(inner)));
    }
    namespace_of_value(key)
}

/// [`namespace_of`] without the coordination rule: the library's rule, plus a bucket for keys with no
/// `:` at all.
fn namespace_of_value(key: &[u8]) -> Cow<'_, str> {
    if !key.contains(&b':') {
        return Cow::Borrowed(NO_NAMESPACE);
    }
    String::from_utf8_lossy(strata::namespace_of(key))
}

/// Options of [`inspect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectOptions {
    /// Measure only this many keys per master and extrapolate (None: every key, exact).
    pub sample: Option<usize>,
    /// How many of the biggest keys to report.
    pub big_keys: usize,
}

impl Default for InspectOptions {
    fn default() -> Self {
        Self { sample: None, big_keys: DEFAULT_BIG_KEYS }
    }
}

/// Figures for one namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NamespaceStats {
    /// Number of keys.
    pub keys: u64,
    /// Sum of `MEMORY USAGE` of its keys, in bytes.
    pub memory_bytes: u64,
    /// Keys without a TTL.
    pub no_ttl_keys: u64,
}

impl NamespaceStats {
    fn add(&mut self, other: &NamespaceStats, factor: f64) {
        self.keys += scale(other.keys, factor);
        self.memory_bytes += scale(other.memory_bytes, factor);
        self.no_ttl_keys += scale(other.no_ttl_keys, factor);
    }
}

/// Keys by remaining time to live. Serialized with the bucket names of [`TTL_BUCKETS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TtlHistogram {
    /// Keys without a TTL.
    #[serde(rename = "none")]
    pub none: u64,
    /// Less than a minute left.
    #[serde(rename = "<1m")]
    pub under_1m: u64,
    /// One to ten minutes left.
    #[serde(rename = "<10m")]
    pub under_10m: u64,
    /// Ten minutes to an hour left.
    #[serde(rename = "<1h")]
    pub under_1h: u64,
    /// An hour to a day left.
    #[serde(rename = "<1d")]
    pub under_1d: u64,
    /// A day or more left.
    #[serde(rename = ">=1d")]
    pub day_or_more: u64,
}

impl TtlHistogram {
    /// Counts one key with this `PTTL` reply (-1: no TTL; other negatives are ignored).
    pub fn record(&mut self, pttl_ms: i64) {
        const MINUTE: i64 = 60_000;
        match pttl_ms {
            -1 => self.none += 1,
            ..-1 => {}
            ms if ms < MINUTE => self.under_1m += 1,
            ms if ms < 10 * MINUTE => self.under_10m += 1,
            ms if ms < 60 * MINUTE => self.under_1h += 1,
            ms if ms < 24 * 60 * MINUTE => self.under_1d += 1,
            _ => self.day_or_more += 1,
        }
    }

    /// `(bucket name, count)` in the order of [`TTL_BUCKETS`].
    pub fn buckets(&self) -> [(&'static str, u64); 6] {
        let counts = [self.none, self.under_1m, self.under_10m, self.under_1h, self.under_1d, self.day_or_more];
        let mut out = [("", 0); 6];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = (TTL_BUCKETS[i], counts[i]);
        }
        out
    }

    /// Keys counted.
    pub fn total(&self) -> u64 {
        self.buckets().iter().map(|(_, n)| n).sum()
    }

    fn add(&mut self, other: &TtlHistogram, factor: f64) {
        self.none += scale(other.none, factor);
        self.under_1m += scale(other.under_1m, factor);
        self.under_10m += scale(other.under_10m, factor);
        self.under_1h += scale(other.under_1h, factor);
        self.under_1d += scale(other.under_1d, factor);
        self.day_or_more += scale(other.day_or_more, factor);
    }
}

/// One of the biggest keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BigKey {
    /// The key (non-UTF-8 bytes replaced).
    pub key: String,
    /// Its namespace.
    pub namespace: String,
    /// `MEMORY USAGE`, in bytes.
    pub memory_bytes: u64,
    /// Remaining TTL in milliseconds (None: no TTL).
    pub ttl_ms: Option<u64>,
    /// The master holding it.
    pub node: String,
}

/// Figures for one node, from its `INFO`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStats {
    /// `host:port`.
    pub addr: String,
    /// Master or replica.
    pub role: Role,
    /// Keys in database 0.
    pub keys: u64,
    /// `used_memory`, in bytes.
    pub used_memory_bytes: u64,
    /// `maxmemory`, in bytes (0: no limit).
    pub maxmemory_bytes: u64,
    /// `maxmemory-policy`.
    pub maxmemory_policy: String,
    /// `keyspace_hits / (keyspace_hits + keyspace_misses)`; None before any lookup.
    pub hit_ratio: Option<f64>,
    /// `keyspace_hits`.
    pub keyspace_hits: u64,
    /// `keyspace_misses`.
    pub keyspace_misses: u64,
    /// `evicted_keys`.
    pub evicted_keys: u64,
    /// `expired_keys`.
    pub expired_keys: u64,
    /// Keys scanned and measured on this node (0 on replicas).
    pub scanned_keys: u64,
    /// Keyspace lookups this inspection made on the node (one `PTTL` per key measured). Redis
    /// counts them in `keyspace_hits` / `keyspace_misses`: the figures above were read before
    /// them, but later readings (and dashboards) include them.
    pub inspect_lookups: u64,
    /// Why the node's figures are missing (an unreachable replica or failed node); the scan of
    /// the masters never skips a node silently: an unreachable master fails the inspection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeStats {
    /// `used_memory / maxmemory`, None without a limit.
    pub fn memory_ratio(&self) -> Option<f64> {
        (self.maxmemory_bytes > 0).then(|| self.used_memory_bytes as f64 / self.maxmemory_bytes as f64)
    }
}

/// The result of [`inspect`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InspectReport {
    /// Figures per namespace (see [`namespace_of`]).
    pub namespaces: BTreeMap<String, NamespaceStats>,
    /// Keys by remaining TTL, over every master.
    pub ttl_histogram: TtlHistogram,
    /// Every node of the deployment (masters and replicas), in address order.
    pub nodes: Vec<NodeStats>,
    /// Whether the figures are extrapolated from a sample (estimates) rather than exact.
    pub sampled: bool,
    /// Keys measured per master when sampled.
    pub sample_size: Option<usize>,
    /// Keys over every namespace.
    pub total_keys: u64,
    /// Memory over every namespace, in bytes.
    pub total_memory_bytes: u64,
    /// Keys without TTL over every namespace.
    pub no_ttl_keys: u64,
    /// The biggest keys seen (among the sampled ones when sampled), biggest first.
    pub big_keys: Vec<BigKey>,
    /// Whether the counts are exact: no sample, and every key counted once (false when the
    /// keyspace was larger than [`MAX_DEDUP_KEYS`]: a key SCAN returned twice past that point
    /// is counted twice).
    pub exact: bool,
}

/// Inspects every master of `deployment` (see the module documentation). `progress` gets the
/// number of keys to measure as its length and advances by each batch measured; pass
/// [`ProgressBar::hidden`] for none.
pub fn inspect(deployment: &Deployment, options: &InspectOptions, progress: &ProgressBar) -> Result<InspectReport> {
    if options.sample == Some(0) {
        return Err(OpsError::invalid("--sample must be at least 1"));
    }
    let scanned: Vec<&str> = deployment.masters_checked("inspect")?.into_iter().map(|n| n.addr.as_str()).collect();
    let state = RandomState::new();
    let dedup = Dedup { state, budget: AtomicU64::new(MAX_DEDUP_KEYS), overflowed: AtomicU64::new(0) };
    let results: Vec<Result<(NodeStats, Option<NodeScan>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = deployment
            .nodes
            .iter()
            .map(|node| {
                let scan = scanned.contains(&node.addr.as_str());
                let dedup = &dedup;
                scope.spawn(move || inspect_node(deployment, node, scan, options, progress, dedup))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(OpsError::invalid("an inspection thread panicked"))))
            .collect()
    });
    let mut report = InspectReport {
        namespaces: BTreeMap::new(),
        ttl_histogram: TtlHistogram::default(),
        nodes: Vec::new(),
        sampled: options.sample.is_some(),
        sample_size: options.sample,
        total_keys: 0,
        total_memory_bytes: 0,
        no_ttl_keys: 0,
        big_keys: Vec::new(),
        exact: options.sample.is_none() && dedup.overflowed.load(Ordering::Relaxed) == 0,
    };
    for result in results {
        let (stats, scan) = result?;
        if let Some(scan) = scan {
            let factor = if scan.complete || scan.scanned == 0 {
                1.0
            } else {
                // A node's key count may have grown past what INFO said; never scale down.
                (stats.keys as f64 / scan.scanned as f64).max(1.0)
            };
            for (name, ns) in &scan.namespaces {
                let name = if report.namespaces.len() >= MAX_NAMESPACES && !report.namespaces.contains_key(name) {
                    OTHER_NAMESPACE
                } else {
                    name
                };
                report.namespaces.entry(name.to_owned()).or_default().add(ns, factor);
            }
            report.ttl_histogram.add(&scan.histogram, factor);
            report.big_keys.extend(scan.big_keys);
        }
        report.nodes.push(stats);
    }
    report.nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
    report.big_keys.sort_by(|a, b| b.memory_bytes.cmp(&a.memory_bytes).then_with(|| a.key.cmp(&b.key)));
    report.big_keys.truncate(options.big_keys);
    for ns in report.namespaces.values() {
        report.total_keys += ns.keys;
        report.total_memory_bytes += ns.memory_bytes;
        report.no_ttl_keys += ns.no_ttl_keys;
    }
    Ok(report)
}

/// The key hashes remembered to count each key once, shared by the masters' threads.
struct Dedup {
    state: RandomState,
    /// Hashes that may still be remembered.
    budget: AtomicU64,
    /// Keys counted without de-duplication because the budget was spent.
    overflowed: AtomicU64,
}

impl Dedup {
    /// Whether `key` is new on this node (always true once the budget is spent).
    fn first_time(&self, seen: &mut HashSet<u64>, key: &[u8]) -> bool {
        let hash = self.state.hash_one(key);
        if seen.contains(&hash) {
            return false;
        }
        let take = self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
        if take.is_ok() {
            seen.insert(hash);
        } else {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

/// What the scan of one master found (before extrapolation).
#[derive(Debug, Default)]
struct NodeScan {
    namespaces: HashMap<String, NamespaceStats>,
    histogram: TtlHistogram,
    big_keys: Vec<BigKey>,
    scanned: u64,
    /// `PTTL` commands sent.
    lookups: u64,
    /// SCAN went through the whole keyspace (exact figures).
    complete: bool,
}

fn inspect_node(
    deployment: &Deployment,
    node: &Node,
    scan: bool,
    options: &InspectOptions,
    progress: &ProgressBar,
    dedup: &Dedup,
) -> Result<(NodeStats, Option<NodeScan>)> {
    let connected = deployment.connect(&node.addr).and_then(|mut con| {
        let stats = node_stats(&mut con, node)?;
        Ok((con, stats))
    });
    let (mut con, mut stats) = match connected {
        Ok(found) => found,
        // Only a node that is not scanned may be missing: its figures are informative.
        Err(err) if !scan => return Ok((unavailable(node, &err), None)),
        Err(err) => return Err(err),
    };
    if !scan {
        return Ok((stats, None));
    }
    progress.inc_length(options.sample.map_or(stats.keys, |n| stats.keys.min(n as u64)));
    let found = scan_node(&mut con, node, options, progress, dedup)?;
    stats.scanned_keys = found.scanned;
    stats.inspect_lookups = found.lookups;
    Ok((stats, Some(found)))
}

fn unavailable(node: &Node, err: &OpsError) -> NodeStats {
    NodeStats {
        addr: node.addr.clone(),
        role: node.role,
        keys: 0,
        used_memory_bytes: 0,
        maxmemory_bytes: 0,
        maxmemory_policy: String::new(),
        hit_ratio: None,
        keyspace_hits: 0,
        keyspace_misses: 0,
        evicted_keys: 0,
        expired_keys: 0,
        scanned_keys: 0,
        inspect_lookups: 0,
        error: Some(err.to_string()),
    }
}

/// Reads a node's figures from `INFO` (default sections: memory, stats, keyspace).
fn node_stats(con: &mut redis::Connection, node: &Node) -> Result<NodeStats> {
    let info: String = redis::cmd("INFO").query(con).map_err(|e| OpsError::redis(&node.addr, &e))?;
    let field =
        |name: &str| info.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(str::trim));
    let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let keys = field("db0")
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("keys=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (hits, misses) = (number("keyspace_hits"), number("keyspace_misses"));
    Ok(NodeStats {
        addr: node.addr.clone(),
        // The node's own word: right after a cluster forms, others may still list a replica as master.
        role: match field("role") {
            Some("slave") => Role::Replica,
            Some("master") => Role::Master,
            _ => node.role,
        },
        keys,
        used_memory_bytes: number("used_memory"),
        maxmemory_bytes: number("maxmemory"),
        maxmemory_policy: field("maxmemory_policy").unwrap_or_default().to_owned(),
        hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        keyspace_hits: hits,
        keyspace_misses: misses,
        evicted_keys: number("evicted_keys"),
        expired_keys: number("expired_keys"),
        scanned_keys: 0,
        inspect_lookups: 0,
        error: None,
    })
}

fn scan_node(
    con: &mut redis::Connection,
    node: &Node,
    options: &InspectOptions,
    progress: &ProgressBar,
    dedup: &Dedup,
) -> Result<NodeScan> {
    let err = |e: redis::RedisError| OpsError::redis(&node.addr, &e);
    let limit = options.sample.unwrap_or(usize::MAX) as u64;
    let mut out = NodeScan::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(SCAN_COUNT).query(con).map_err(err)?;
        // SCAN may return a key twice (when the table shrinks between calls): count it once.
        let mut keys: Vec<Vec<u8>> = keys.into_iter().filter(|k| dedup.first_time(&mut seen, k)).collect();
        let room = usize::try_from(limit - out.scanned).unwrap_or(usize::MAX);
        let truncated = keys.len() > room;
        keys.truncate(room);
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                // SAMPLES 0: every element of an aggregate is measured (the default samples 5).
                pipe.cmd("PTTL").arg(key).cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0);
            }
            let replies: Vec<Option<i64>> = pipe.query(con).map_err(err)?;
            out.lookups += keys.len() as u64;
            for (key, pair) in keys.iter().zip(replies.chunks(2)) {
                let (Some(pttl), memory) = (pair[0], pair.get(1).copied().flatten()) else { continue };
                if pttl == -2 {
                    continue; // expired or deleted since SCAN returned it
                }
                let memory = u64::try_from(memory.unwrap_or(0)).unwrap_or(0);
                out.scanned += 1;
                out.histogram.record(pttl);
                let namespace = namespace_of(key);
                let name = if out.namespaces.len() >= MAX_NAMESPACES && !out.namespaces.contains_key(&*namespace) {
                    Cow::Borrowed(OTHER_NAMESPACE)
                } else {
                    namespace
                };
                let ns = out.namespaces.entry(name.as_ref().to_owned()).or_default();
                ns.keys += 1;
                ns.memory_bytes += memory;
                if pttl == -1 {
                    ns.no_ttl_keys += 1;
                }
                keep_big(&mut out.big_keys, options.big_keys, key, &name, memory, pttl, &node.addr);
            }
            progress.inc(keys.len() as u64);
        }
        cursor = next;
        if cursor == 0 && !truncated {
            out.complete = true;
            break;
        }
        if cursor == 0 || out.scanned >= limit {
            break;
        }
    }
    Ok(out)
}

/// Keeps the `max` biggest keys in `big` (a short list: a linear scan is cheaper than a heap).
fn keep_big(big: &mut Vec<BigKey>, max: usize, key: &[u8], namespace: &str, memory: u64, pttl: i64, node: &str) {
    if max == 0 {
        return;
    }
    if big.len() >= max {
        let Some((smallest, entry)) = big.iter().enumerate().min_by_key(|(_, b)| b.memory_bytes) else { return };
        if entry.memory_bytes >= memory {
            return;
        }
        big.swap_remove(smallest);
    }
    big.push(BigKey {
        key: String::from_utf8_lossy(key).into_owned(),
        namespace: namespace.to_owned(),
        memory_bytes: memory,
        ttl_ms: u64::try_from(pttl).ok(),
        node: node.to_owned(),
    });
}

fn scale(value: u64, factor: f64) -> u64 {
    if factor == 1.0 { value } else { (value as f64 * factor).round() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keys_by_namespace() {
        assert_eq!(namespace_of(b"shop:v1:user:42"), "shop:v1:user");
        assert_eq!(namespace_of(b"shop:v1:user:42:full"), "shop:v1:user");
        assert_eq!(namespace_of(b"shop:v12:user:"), "shop:v12:user");
        assert_eq!(namespace_of(b"shop:v1:user"), "shop");
        assert_eq!(namespace_of(b"shop:v1:users:1"), "shop:v1:users");
        assert_eq!(namespace_of(b"shop:vx:user:1"), "shop");
        assert_eq!(namespace_of(b"shop:v:user:1"), "shop");
        assert_eq!(namespace_of(b"session:abc"), "session");
        assert_eq!(namespace_of(b"plain"), NO_NAMESPACE);
        assert_eq!(namespace_of(b":x"), "");
        assert_eq!(namespace_of(b"\xff:v1:e:1"), "\u{fffd}:v1:e");
        // Coordination keys: their own bucket, named after their key's namespace.
        assert_eq!(namespace_of(b"{shop:v1:user:42}:lease"), "shop:v1:user (coordination)");
        assert_eq!(namespace_of(b"{session:abc}:lease"), "session (coordination)");
        assert_eq!(namespace_of(b"{plain}:lease"), "(no namespace) (coordination)");
        assert_eq!(namespace_of(b"{}:lease"), "{}");
        assert_eq!(namespace_of(b"{shop:v1:user:42}:leases"), "{shop:v1:user", "not a lease key");
        assert_eq!(namespace_of(b"{shop:v1:user:42}:version"), "shop:v1:user (coordination)");
    }

    #[test]
    fn dedup_turns_approximate_past_its_budget() {
        let dedup = Dedup { state: RandomState::new(), budget: AtomicU64::new(2), overflowed: AtomicU64::new(0) };
        let mut seen = HashSet::new();
        assert!(dedup.first_time(&mut seen, b"a"));
        assert!(!dedup.first_time(&mut seen, b"a"), "remembered");
        assert!(dedup.first_time(&mut seen, b"b"));
        assert_eq!(dedup.overflowed.load(Ordering::Relaxed), 0);
        assert!(dedup.first_time(&mut seen, b"c"));
        assert!(dedup.first_time(&mut seen, b"c"), "past the budget, a repeat counts again");
        assert!(!dedup.first_time(&mut seen, b"b"), "keys remembered before stay remembered");
        assert_eq!(dedup.overflowed.load(Ordering::Relaxed), 2);
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn buckets_ttls() {
        let mut h = TtlHistogram::default();
        for pttl in [-2, -1, 0, 59_999, 60_000, 599_999, 600_000, 3_599_999, 3_600_000, 86_399_999, 86_400_000] {
            h.record(pttl);
        }
        assert_eq!(h.buckets().map(|(_, n)| n), [1, 2, 2, 2, 2, 1]);
        assert_eq!(h.total(), 10);
        let json = serde_json::to_value(h).expect("serializes");
        for name in TTL_BUCKETS {
            assert!(json.get(name).is_some(), "{name} missing in {json}");
        }
    }

    #[test]
    fn keeps_the_biggest_keys() {
        let mut big = Vec::new();
        for (i, size) in [5u64, 1, 9, 3, 7].into_iter().enumerate() {
            keep_big(&mut big, 3, format!("k{i}").as_bytes(), "ns", size, -1, "n");
        }
        let mut sizes: Vec<u64> = big.iter().map(|b| b.memory_bytes).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [5, 7, 9]);
    }
}
