//! # Strata: a two-tier cache on real Redis
//!
//! Application code asks the [`Cache`] for typed values by [`Key`]. Each read goes through two
//! tiers:
//!
//! ```text
//!            get / get_or_set / get_many
//!                        │
//!        ┌───────────────▼───────────────┐   hit: a clone of the decoded value,
//!        │ L1: in-process (quick_cache)  │   no I/O, no decoding (~200-300 ns)
//!        │ bounded in bytes, per-entry   │
//!        │ TTL ≤ the Redis copy's TTL    │
//!        └───────────────┬───────────────┘
//!                 miss   │  single-flight: one load per key per process,
//!                        │  one per key across processes (lease in Redis)
//!        ┌───────────────▼───────────────┐
//!        │ circuit breaker + timeouts    │── open / slow / down ──┐
//!        └───────────────┬───────────────┘                        │
//!        ┌───────────────▼───────────────┐                        │
//!        │ L2: Redis standalone,         │   GET / MGET per slot  │
//!        │ Sentinel or Cluster           │   envelope decode      │
//!        └───────────────┬───────────────┘                        │
//!                 miss   │                                        │
//!        ┌───────────────▼───────────────┐                        │
//!        │ loader (the source: database, │◄───────────────────────┘
//!        │ API...) — the caller has its  │   the caller still gets a value
//!        │ value; then, in a task, it is │
//!        │ written to L2 (SET PX,        │
//!        │ jittered TTL) and L1          │
//!        └───────────────────────────────┘
//! ```
//!
//! A miss costs its caller one or two round trips before the loader (one while the namespace's
//! L1 misses are mostly L2 misses: the lease attempt rides with the GET) and none after it; an
//! L1 miss that Redis serves costs a GET + PTTL. Later callers of the key in this process wait
//! for the background store, then read what it stored ([`Cache::settled`] waits for all of them,
//! e.g. before a process exits). See `cache/load.rs` and docs/decisions/0012-miss-path.md.
//!
//! - **Keys** follow `app:v{N}:entity:id[:variant]` ([`KeySchema`]); segments are validated and
//!   long variants hashed. The namespace (`app:vN:entity`) groups metrics.
//! - **Values** are serde types in a versioned, checksummed envelope: MessagePack by default,
//!   JSON selectable, LZ4 above a threshold ([`Format`]). Bytes that do not decode are a miss:
//!   the key is removed and counted, never a panic.
//! - **TTLs** come in classes ([`Ttl`], [`TtlPolicy`]) with ±jitter on every write; no key is
//!   written without one. A "not found" from the source can be cached with its own shorter TTL
//!   ([`Cache::get_or_set_optional`]).
//! - **Stampede protection** in-process: concurrent misses on one key run the loader once and
//!   share its value or its error — unless the key was written after that load began and before
//!   the caller came (then the caller gets a later load's value, never an older one). Across processes, leases in Redis ([`LeaseConfig`]) make N
//!   processes missing one key run the loader once in total; the lease expires if its holder
//!   dies, and another process takes over.
//! - **No stale sets**: a value loaded before an invalidation (`delete`, `set`) can never be
//!   stored after it — the holder stores with a compare-and-set on its lease, and every write
//!   through Strata revokes the lease.
//! - **Coherence across instances**: each cache keeps one RESP3 connection per Redis master
//!   with client tracking on in Redis's default mode (`CLIENT TRACKING ON OPTIN NOLOOP`,
//!   [`Invalidation`]), and every read whose answer may enter L1 goes over it. Redis then tells
//!   an instance of the next change to each key it read — through any instance or by another
//!   client — and of nothing else, on the same connection as the read: its L1 copy goes within
//!   about a millisecond (measured by `strata drill coherence`), and an instance's invalidation
//!   work grows with the keys it holds, not with the deployment's write rate. L1 is flushed and
//!   closed while a tracking connection is down or the cluster topology changes, so no instance
//!   serves a copy that could have missed an invalidation. A read that raced an invalidation is
//!   never inserted (each L1 fill carries a ticket from before its round trip); an instance
//!   keeps what it wrote itself when Redis held it right after the write (a tracked read in
//!   the same round trip says so).
//! - **Freshness** ([`Freshness`], off by default): XFetch probabilistic early refresh from the
//!   load time stored with each value, stale-while-revalidate, fail-safe (the last good value
//!   stands in, up to a maximum staleness, when the loader fails or passes its soft timeout) and
//!   a hard timeout on the wait. Background refreshes need a loader that can outlive the call:
//!   [`Cache::get_or_refresh`]; `get_or_set` gets the fail-safe and the timeouts.
//! - **Resilience**: every Redis call has a timeout; a circuit breaker stops calling Redis after
//!   consecutive failures and probes it again later; on a cluster there is one per range of 256
//!   hash slots as well, so a dead master's slots are skipped while the rest keep using Redis.
//!   While Redis is unhealthy, `get_or_set` serves from the loader and callers see no error.
//! - **Namespaces and tags**: [`Cache::invalidate_namespace`] and [`Cache::invalidate_tag`]
//!   invalidate any number of keys with one Redis command, in O(1): they raise a stamp
//!   (`{app:v1:user}:stamp`, `{app:tag:NAME}:stamp`), and values produced before it are misses,
//!   checked lazily on every read of either tier — at once on the invalidating instance, on the
//!   others as soon as client tracking reports the stamp's change, and within
//!   [`CacheBuilder::stamp_refresh`] at worst. Tags ([`Tag`]) are attached with
//!   [`Cache::set_tagged`] / [`Cache::get_or_set_tagged`]. A deploy that retires a whole schema
//!   bumps the key version instead ([`KeySchema::bumped`]).
//! - **Batches**: [`Cache::get_many`] / [`Cache::set_many`] group keys by cluster slot.
//!   [`Cache::get_or_set_many`] is batch cache-aside: one MGET round per slot group, then one
//!   loader call with every key still missing, written back per slot group under the same
//!   leases as `get_or_set` (no stale sets; a key another caller is loading is waited for).
//! - **Hot keys** ([`HotKeys`], [`Cache::mark_hot`]): a hot key is replicated over K copies in
//!   other cluster slots and each read picks one at random; `set` writes every copy, `delete`
//!   removes them, and either fails if a copy could not be changed. Copies live at most a short
//!   copy TTL, which bounds how long a write that skipped them (an instance unaware the key is
//!   hot) can go unseen.
//! - **Write-behind** ([`WriteBehind`]): writes acknowledged once in a Redis Stream (optionally
//!   confirmed by replicas), drained in per-key order by workers to a sink, with retries, a
//!   dead-letter stream and reclaim of a dead worker's entries.
//! - **Metrics**: [`Cache::metrics`] returns hits and misses per tier and namespace, loader
//!   calls, errors, stale serves and refreshes, and the breaker state.
//!   [`Cache::prometheus_text`] / [`Cache::register_metrics`] export them to Prometheus
//!   ([`METRIC_FAMILIES`]; see docs/observability.md), with loader and Redis call latency histograms.
//! - **OpenTelemetry** (feature `otel`): a `tracing` span per operation (`strata.get`,
//!   `strata.get_or_set`, ...; tier, loader, lease, size as attributes) under the caller's span,
//!   for `tracing-opentelemetry` to export, and `Cache::register_otel_metrics` on an
//!   OpenTelemetry `Meter` (docs/decisions/0020-opentelemetry.md).
//!
//! # Cached functions
//!
//! With the `macros` feature, `#[strata::cached]` (`strata::cached`) caches an `async fn`'s
//! results: its body becomes the loader of [`Cache::get_or_set`], under the key
//! `app:v{N}:{namespace}:{arguments}` ([`KeySchema::key_for_args`]), so a repeated call is served
//! by the cache, concurrent misses run the body once, and errors are returned, never cached.
//!
//! ```no_run
//! # #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! # struct User { id: u64 }
//! # #[derive(Debug)]
//! # struct AppError;
//! # impl std::fmt::Display for AppError {
//! #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("app error") }
//! # }
//! # impl From<strata::Error> for AppError {
//! #     fn from(_: strata::Error) -> Self { AppError }
//! # }
//! # async fn fetch_user(id: u64) -> Result<User, AppError> { Ok(User { id }) }
//! #[strata::cached(app = "shop", namespace = "user", ttl = "medium")]
//! async fn load_user(cache: &strata::Cache, id: u64) -> Result<User, AppError> {
//!     fetch_user(id).await // the database; runs on a miss only; the key is shop:v1:user:{id}
//! }
//! ```
//!
//! # Layout
//!
//! One cache miss of [`Cache::get_or_set`] reads top-down through `cache.rs` (the entry point),
//! `cache/load.rs` (the load path: L1 → hot copy → single-flight → L2 read + lease → loader →
//! store → L1 admission) and `cache/tiers.rs` (each tier's read and write, and the one store
//! step every write ends in), which call the tiers' own types: `L1` (`l1.rs`), the
//! stamps (`cache/stamps.rs`) and Redis (`l2.rs`). Each type owns its state and answers in small
//! methods.
//!
//! | module | owns |
//! |---|---|
//! | `cache` | [`Cache`] (the public API of single keys, hot marks, metrics) and `Inner`, the parts of one cache, private to `cache` and its children |
//! | `cache/load` | the read and load paths, in-process single-flight, fail-safe, `get_or_refresh`'s background refreshes |
//! | `cache/load_many` | the batch load path of `get_or_set_many` |
//! | `cache/tiers` | one read or write of each tier: L1 lookup, GET/MGET + decode, SET / lease compare-and-set, settling a write into L1, every Redis call through the breaker |
//! | `cache/stamps` | a **stamp** is the generation of a namespace or tag: the marks a value carries, the verdict on them at every read, what this instance knows |
//! | `cache/hot`, `cache/write_through`, `cache/builder` | hot keys' registry and copies; `set_through`, `update_through`, `update_through_versioned`; assembling a cache ([`CacheBuilder`]) |
//! | `batch`, `namespace`, `exposition` | the public API of batches; of namespaces and tags; of Prometheus exposition |
//! | `l1` | the L1 tier: its store (quick_cache behind `L1Store`), bounded in bytes, and its admission rule (`Coherence`: tickets taken before a round trip, a writer's own ticket, tracking health) |
//! | `invalidation` | the tracking connections (RESP3 `CLIENT TRACKING`, default mode), which carry the reads for L1; heartbeats, topology, redirects |
//! | `slots` | which master serves a key: `CLUSTER NODES` parsed, the slot table of per-master connections (tracking ones, and L2's own) |
//! | `lease` | lease scripts, tokens and settings ([`LeaseConfig`]) |
//! | `tags` | [`Tag`]s and the marks (stamp generations) a value records |
//! | `fresh` | [`Freshness`]: XFetch, stale-while-revalidate, fail-safe, timeouts |
//! | `l2`, `breaker`, `retry` | Redis connections (standalone, Cluster — a connection of its own to each master for the first attempt of a call on a key —, Sentinel, TLS) and retries inside one call; circuit breakers per slot range; what is retried |
//! | `codec`, `crypt` | the envelope (format, compression, checksum, `Meta`: logical expiry and load time); AES-GCM |
//! | `key`, `ttl` | [`Key`] / [`KeySchema`]; [`Ttl`] classes, jitter and expiry arithmetic |
//! | `hot` | [`HotKeys`], the configuration of hot keys, and their copies' names |
//! | `write_behind` | [`WriteBehind`] queues and their [`Worker`]s |
//! | `metrics`, `latency` | counters and histograms ([`MetricsSnapshot`]) |
//! | `audit`, `error`, `timefmt` | the audit log; [`Error`]; time formatting |
//! | `telemetry` | feature `otel`: a span per operation and the facts it records (tier, loader, lease, size), Redis client spans, metrics through the OpenTelemetry API; without the feature, empty hooks |
//!
//! # Features
//!
//! `default-features = false` is the core: L1 + L2 on a standalone server, single-flight,
//! leases, breakers, client-tracking invalidation, stamps and tags, freshness, batches, hot
//! keys and [`Cache::metrics`]. Features add the rest (docs/ecosystem.md has what each pulls in):
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `cluster` | yes | Redis Cluster: `Topology::Cluster`, `CacheBuilder::cluster` (redis-rs's cluster client) |
//! | `tls` | yes | `rediss://` with rustls on ring: `TlsOptions`, `CacheBuilder::tls` |
//! | `prometheus` | yes | `Cache::register_metrics`, `Cache::prometheus_text`, `METRIC_FAMILIES` (prometheus-client) |
//! | `sentinel` | no | Redis Sentinel: `Topology::Sentinel`, `CacheBuilder::sentinel` |
//! | `encryption` | no | AES-256-GCM for sensitive namespaces: `Encryption`, `Keyring` |
//! | `write-behind` | no | write-behind queues on Redis Streams: `WriteBehind`, `Worker` |
//!
//! ## Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use strata::{Cache, KeySchema, Ttl};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct User { id: u64, name: String }
//!
//! let cache = Cache::builder().redis_url("redis://127.0.0.1:6379").build().await?;
//! let users = KeySchema::new("shop", 1)?;
//! let user: User = cache
//!     .get_or_set(&users.key("user", "42")?, Ttl::Medium, || async {
//!         Ok::<_, std::io::Error>(User { id: 42, name: "Ada".into() }) // query the database here
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

// docs.rs (nightly, `--cfg docsrs`, Cargo.toml's [package.metadata.docs.rs]) marks each item with
// the cargo features it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

// The crate README's example is compiled with the doctests (crates.io shows the README).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __private;
mod audit;
mod batch;
mod breaker;
mod cache;
mod codec;
#[cfg(feature = "encryption")]
mod crypt;
/// Without the `encryption` feature: an encryption with no values, so no cache has one.
#[cfg(not(feature = "encryption"))]
mod crypt {
    use crate::{Key, Result};

    #[derive(Debug, Clone)]
    pub(crate) enum Encryption {}

    impl Encryption {
        pub(crate) fn validate(&self) -> Result<()> {
            match *self {}
        }
        pub(crate) fn sensitive(&self, _: &Key) -> bool {
            match *self {}
        }
        pub(crate) fn seal(&self, _: &[u8], _: &[u8]) -> Result<Vec<u8>> {
            match *self {}
        }
        pub(crate) fn open(&self, _: &[u8], _: &[u8]) -> Result<Vec<u8>> {
            match *self {}
        }
    }
}
mod error;
#[cfg(feature = "prometheus")]
mod exposition;
mod fresh;
#[cfg(all(test, feature = "encryption"))]
mod fuzz;
mod hot;
mod invalidation;
mod key;
mod l1;
mod l2;
mod latency;
mod lease;
mod metrics;
mod namespace;
mod retry;
mod slots;
mod tags;
mod telemetry;
mod timefmt;
mod ttl;
#[cfg(feature = "write-behind")]
mod write_behind;

pub use audit::{AUDIT_QUEUE, AuditRecord, AuditSink};
pub use breaker::{BreakerConfig, BreakerState};
pub use cache::{AutoRecovery, Cache, CacheBuilder, CacheValue};
pub use codec::Format;
#[cfg(feature = "encryption")]
pub use crypt::{Encryption, KEY_LEN, Keyring, MAX_KEY_ID_LEN};
pub use error::{Error, ErrorKind, Result};
#[cfg(feature = "prometheus")]
pub use exposition::{METRIC_FAMILIES, WRITE_BEHIND_METRIC_FAMILIES, openmetrics_to_prometheus};
pub use fresh::Freshness;
pub use hot::{HotKeys, MAX_HOT_COPIES, MAX_HOT_COPY_TTL, hot_copy_keys};
pub use invalidation::Invalidation;
pub use key::{Key, KeySchema, MAX_ID_LEN, MAX_KEY_LEN, MAX_NAME_LEN, MAX_VARIANT_LEN, namespace_of};
pub use l1::L1Policy;
#[cfg(feature = "tls")]
pub use l2::TlsOptions;
pub use l2::Topology;
pub use latency::{BUCKETS, L2_BUCKETS_MICROS, LOADER_BUCKETS_MICROS, LatencySnapshot};
pub use lease::{LeaseConfig, VERSIONED_WINDOW, coordination_keys, coordination_target, lease_key, version_key};
pub use metrics::{MAX_NAMESPACES, MetricsSnapshot, NamespaceStats, OTHER_NAMESPACE};
pub use namespace::bump_stamp;
/// The OpenTelemetry API whose [`Meter`](opentelemetry::metrics::Meter)
/// [`Cache::register_otel_metrics`] registers on (feature `otel`): re-exported so an
/// application uses the same version.
#[cfg(feature = "otel")]
pub use opentelemetry;
/// The Prometheus client library whose [`Registry`](prometheus_client::registry::Registry)
/// [`Cache::register_metrics`] fills: re-exported so an application uses the same version.
#[cfg(feature = "prometheus")]
pub use prometheus_client;
/// Caches an async function's results under a key built from its arguments (the `macros`
/// feature; [Cached functions](crate#cached-functions)).
///
/// A complete example (also a test of this crate):
///
/// ```no_run
/// use std::sync::LazyLock;
///
/// use strata::{Cache, KeySchema, cached};
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
/// struct User { id: u64, name: String }
///
/// #[derive(Debug)]
/// enum AppError { NotFound(u64), Cache(strata::Error) }
///
/// impl std::fmt::Display for AppError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         match self {
///             AppError::NotFound(id) => write!(f, "no user {id}"),
///             AppError::Cache(err) => write!(f, "cache: {err}"),
///         }
///     }
/// }
///
/// impl std::error::Error for AppError {}
///
/// // The cache's own failures reach the caller through this conversion.
/// impl From<strata::Error> for AppError {
///     fn from(err: strata::Error) -> Self { AppError::Cache(err) }
/// }
///
/// /// Key `shop:v1:user:{id}`, TTL class medium (10 minutes ± jitter by default).
/// #[cached(app = "shop", namespace = "user", ttl = "medium")]
/// async fn load_user(cache: &Cache, id: u64) -> Result<User, AppError> {
///     if id == 0 {
///         return Err(AppError::NotFound(id)); // returned as it is, not cached
///     }
///     Ok(User { id, name: "Ada".into() }) // query the database here
/// }
///
/// static SCHEMA: LazyLock<KeySchema> =
///     LazyLock::new(|| KeySchema::new("shop", 1).expect("a valid app name"));
///
/// /// A service that holds its cache: a method, with the tenant in the key.
/// struct Search { cache: Cache, tenant: String }
///
/// impl Search {
///     /// Key `shop:v1:search:{tenant},{query},{page}`: any text works (percent-encoded).
///     #[cached(schema = SCHEMA, namespace = "search", cache = self.cache,
///              args = [self.tenant, query, page], ttl = "90s")]
///     async fn run(&self, query: &str, page: u32) -> strata::Result<Vec<u64>> {
///         Ok(vec![u64::from(page)]) // the search engine here
///     }
/// }
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let cache = Cache::builder().redis_url("redis://127.0.0.1:6379").build().await?;
/// let user = load_user(&cache, 42).await?; // a miss: runs the body, stores the value
/// let again = load_user(&cache, 42).await?; // a hit: the body does not run
/// assert!(matches!(load_user(&cache, 0).await, Err(AppError::NotFound(0))));
///
/// // The same key, rebuilt to invalidate it.
/// cache.delete(&SCHEMA.key_for_args("user", &[&42])?).await?;
///
/// let search = Search { cache: cache.clone(), tenant: "acme".into() };
/// let hits = search.run("red shoes", 1).await?; // key shop:v1:search:acme,red%20shoes,1
/// # let _ = (user, again, hits);
/// # Ok(()) }
/// ```
#[cfg(feature = "macros")]
pub use strata_macros::cached;
pub use tags::{MAX_TAG_LEN, MAX_TAGS, Tag, is_stamp_key, namespace_stamp_key};
#[cfg(feature = "otel")]
pub use telemetry::OTEL_METRICS;
pub use timefmt::{parse_rfc3339, rfc3339, rfc3339_now, unix_ms_now};
pub use ttl::{MAX_TTL, Ttl, TtlPolicy};
#[cfg(feature = "write-behind")]
pub use write_behind::{Worker, WriteBehind, WriteBehindConfig, WriteBehindStats, WriteRecord};
