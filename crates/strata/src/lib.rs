//! # Strata: a two-tier cache on real Redis
//!
//! Application code asks the [`Cache`] for typed values by [`Key`]. Each read goes through two
//! tiers:
//!
//! ```text
//!            get / get_or_set / get_many
//!                        │
//!        ┌───────────────▼───────────────┐   hit: a clone of the decoded value,
//!        │ L1: in-process (moka)         │   no I/O, no decoding (~100 ns)
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
//!        │ API...) — its value is written│   the caller still gets a value
//!        │ to L2 (SET PX, jittered TTL)  │
//!        │ and L1                        │
//!        └───────────────────────────────┘
//! ```
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
//!   share its value or its error. Across processes, leases in Redis ([`LeaseConfig`]) make N
//!   processes missing one key run the loader once in total; the lease expires if its holder
//!   dies, and another process takes over.
//! - **No stale sets**: a value loaded before an invalidation (`delete`, `set`) can never be
//!   stored after it — the holder stores with a compare-and-set on its lease, and every write
//!   through Strata revokes the lease.
//! - **Resilience**: every Redis call has a timeout; a circuit breaker stops calling Redis after
//!   consecutive failures and probes it again later. While Redis is unhealthy, `get_or_set`
//!   serves from the loader and callers see no error.
//! - **Namespaces and tags**: [`Cache::invalidate_namespace`] and [`Cache::invalidate_tag`]
//!   invalidate any number of keys with one Redis command, in O(1): they raise a stamp
//!   (`{app:v1:user}:stamp`, `{app:tag:NAME}:stamp`), and values produced before it are misses,
//!   checked lazily on every read of either tier — at once on the invalidating instance, within
//!   [`CacheBuilder::stamp_refresh`] on the others. Tags ([`Tag`]) are attached with
//!   [`Cache::set_tagged`] / [`Cache::get_or_set_tagged`]. A deploy that retires a whole schema
//!   bumps the key version instead ([`KeySchema::bumped`]).
//! - **Batches**: [`Cache::get_many`] / [`Cache::set_many`] group keys by cluster slot.
//! - **Metrics**: [`Cache::metrics`] returns hits and misses per tier and namespace, loader
//!   calls, errors and the breaker state.
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

mod batch;
mod breaker;
mod builder;
mod cache;
mod codec;
mod error;
mod flight;
mod key;
mod l1;
mod l2;
mod lease;
mod metrics;
mod namespace;
mod stamps;
mod tags;
mod tiers;
mod ttl;

pub use breaker::{BreakerConfig, BreakerState};
pub use builder::CacheBuilder;
pub use cache::{Cache, CacheValue};
pub use codec::Format;
pub use error::{Error, ErrorKind, Result};
pub use key::{Key, KeySchema, MAX_ID_LEN, MAX_KEY_LEN, MAX_NAME_LEN, MAX_VARIANT_LEN, namespace_of};
pub use l1::L1Policy;
pub use l2::{TlsOptions, Topology};
pub use lease::{LeaseConfig, lease_key, lease_target};
pub use metrics::{MAX_NAMESPACES, MetricsSnapshot, NamespaceStats, OTHER_NAMESPACE};
pub use namespace::bump_stamp;
pub use tags::{MAX_TAG_LEN, MAX_TAGS, Tag, is_stamp_key, namespace_stamp_key};
pub use ttl::{MAX_TTL, Ttl, TtlPolicy};
