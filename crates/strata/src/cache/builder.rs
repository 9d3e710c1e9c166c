//! [`CacheBuilder`]: every setting of a [`Cache`], with defaults suited to a web service.

use std::sync::Arc;
use std::time::Duration;

use super::Stamps;
use super::hot::HotRegistry;
use super::load::Flights;
use super::recovery::{AutoRecovery, Recovery};
use super::{Cache, Inner};
use crate::breaker::BreakerConfig;
use crate::codec::{Codec, Format};
use crate::crypt::Encryption;
use crate::error::{Error, Result};
use crate::fresh::{Freshness, Refreshes};
use crate::hot::HotKeys;
use crate::invalidation::{Invalidation, Supervisor};
use crate::l1::Coherence;
use crate::l1::{L1, L1Policy};
#[cfg(feature = "tls")]
use crate::l2::TlsOptions;
use crate::l2::{L2, L2Config, Topology};
use crate::lease::LeaseConfig;
use crate::metrics::Metrics;
use crate::ttl::TtlPolicy;

/// Builds a [`Cache`]. Start from [`Cache::builder`].
///
/// ```no_run
/// # async fn demo() -> strata::Result<()> {
/// use std::time::Duration;
/// let cache = strata::Cache::builder()
///     .cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000", "redis://10.0.0.3:7000"])
///     .username("app")
///     .password(std::env::var("REDIS_PASSWORD").unwrap_or_default())
///     .l1_capacity_bytes(64 << 20)
///     .op_timeout(Duration::from_millis(100))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheBuilder {
    topology: Option<Topology>,
    username: Option<String>,
    password: Option<String>,
    #[cfg(feature = "tls")]
    tls: Option<TlsOptions>,
    op_timeout: Duration,
    connect_timeout: Duration,
    l1_bytes: u64,
    l1_max_entry_bytes: Option<u64>,
    l1_max_ttl: Duration,
    l1_policy: L1Policy,
    ttl: TtlPolicy,
    format: Format,
    compress_above: usize,
    max_value_bytes: usize,
    breaker: BreakerConfig,
    leases: LeaseConfig,
    invalidation: Invalidation,
    hot: HotKeys,
    freshness: Freshness,
    require_redis: bool,
    stamp_refresh: Duration,
    encryption: Option<Encryption>,
    audit: Option<crate::audit::AuditSink>,
    auto_recovery: AutoRecovery,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self {
            topology: None,
            username: None,
            password: None,
            #[cfg(feature = "tls")]
            tls: None,
            op_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            l1_bytes: 64 << 20,
            l1_max_entry_bytes: None,
            l1_max_ttl: Duration::from_secs(30),
            l1_policy: L1Policy::TinyLfu,
            ttl: TtlPolicy::default(),
            format: Format::MessagePack,
            compress_above: 1024,
            max_value_bytes: 1 << 20,
            breaker: BreakerConfig::default(),
            leases: LeaseConfig::default(),
            invalidation: Invalidation::default(),
            hot: HotKeys::default(),
            freshness: Freshness::default(),
            require_redis: false,
            stamp_refresh: Duration::from_secs(1),
            encryption: None,
            audit: None,
            auto_recovery: AutoRecovery::default(),
        }
    }
}

impl CacheBuilder {
    /// One Redis server (`redis://host:port/db`, `rediss://` for TLS).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.topology = Some(Topology::Standalone(url.into()));
        self
    }

    /// A Redis Cluster. Pass every node you know: the client must start even if some are down.
    /// Needs the `cluster` feature.
    #[cfg(feature = "cluster")]
    pub fn cluster<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topology = Some(Topology::Cluster(seeds.into_iter().map(Into::into).collect()));
        self
    }

    /// A master found through Redis Sentinel. Needs the `sentinel` feature.
    #[cfg(feature = "sentinel")]
    pub fn sentinel<I, S>(mut self, sentinels: I, master_name: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topology = Some(Topology::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master_name: master_name.into(),
        });
        self
    }

    /// Any [`Topology`].
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = Some(topology);
        self
    }

    /// ACL user name (overrides one in the URL).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Password (overrides one in the URL). Never logged.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// TLS material for `rediss://` URLs. Needs the `tls` feature (without it, `rediss://` URLs
    /// are refused).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Upper bound on each Redis call once connected (default 250 ms); a call that must first
    /// (re)connect can also take up to the connect timeout. When it passes, the call counts as a
    /// failure for the circuit breaker and `get_or_set` goes to the loader. A `get_or_set` miss
    /// makes at most two calls (read, then write-back), and skips the write-back when the read
    /// found Redis unhealthy.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Upper bound on making a connection (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Byte budget of the in-process tier (default 64 MiB); 0 disables it.
    pub fn l1_capacity_bytes(mut self, bytes: u64) -> Self {
        self.l1_bytes = bytes;
        self
    }

    /// Largest single entry the in-process tier keeps (default: 1/16 of its budget).
    pub fn l1_max_entry_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_entry_bytes = Some(bytes);
        self
    }

    /// Longest an entry stays in the in-process tier (default 30 s). It never outlives the
    /// Redis copy, whatever this says.
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l1_max_ttl = ttl;
        self
    }

    /// How L1 picks what to keep when full (default [`L1Policy::TinyLfu`]).
    pub fn l1_policy(mut self, policy: L1Policy) -> Self {
        self.l1_policy = policy;
        self
    }

    /// TTL classes, jitter and the negative-caching TTL.
    pub fn ttl_policy(mut self, policy: TtlPolicy) -> Self {
        self.ttl = policy;
        self
    }

    /// Serialization format for new writes (default MessagePack).
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Serialized values at least this large are LZ4-compressed (default 1 KiB).
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = bytes;
        self
    }

    /// Largest serialized value accepted (default 1 MiB). Larger writes are an error; larger
    /// loaded values are returned but not cached.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Circuit breaker tuning (default: open after 5 consecutive failures, probe after 1 s). On a
    /// cluster it applies to each range of 256 hash slots, and the breaker for the whole cluster
    /// opens after twice as many consecutive failures.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Distributed single-flight and stale-set protection (on by default; see [`LeaseConfig`]).
    pub fn leases(mut self, config: LeaseConfig) -> Self {
        self.leases = config;
        self
    }

    /// Cross-instance L1 invalidation through Redis client tracking (default: on, every key).
    /// With it, a write anywhere — through any instance or straight to Redis — evicts the key
    /// from every instance's L1 within milliseconds, and L1 stops serving while that cannot be
    /// guaranteed. See [`Invalidation`].
    pub fn invalidation(mut self, config: Invalidation) -> Self {
        self.invalidation = config;
        self
    }

    /// Hot keys replicated over several copies in Redis (none by default; see [`HotKeys`]).
    pub fn hot_keys(mut self, hot: HotKeys) -> Self {
        self.hot = hot;
        self
    }

    /// Early refresh, stale-while-revalidate, fail-safe and loader timeouts for every load of
    /// this cache (default: all off; see [`Freshness`]).
    pub fn freshness(mut self, freshness: Freshness) -> Self {
        self.freshness = freshness;
        self
    }

    /// How long this instance trusts what it read of a namespace's or tag's stamp (default 1 s):
    /// the longest another instance's [`invalidate_namespace`](Cache::invalidate_namespace) or
    /// [`invalidate_tag`](Cache::invalidate_tag) can go unnoticed here. Each instance reads each
    /// stamp it uses at most twice per interval (it trusts a read for half of it, and a
    /// background tick lets L1 hits skip the check in between); zero reads it on every cache
    /// read (one more round trip per read).
    pub fn stamp_refresh(mut self, interval: Duration) -> Self {
        self.stamp_refresh = interval;
        self
    }

    /// Client-side AES-256-GCM encryption of the namespaces and prefixes marked sensitive
    /// (default: none). See [`Encryption`] and [`Keyring`](crate::Keyring). Needs the
    /// `encryption` feature.
    #[cfg(feature = "encryption")]
    pub fn encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// Records every `set`, `delete` and invalidation made through the cache as a JSON line
    /// (default: off). See [`AuditSink`](crate::AuditSink).
    pub fn audit(mut self, sink: crate::audit::AuditSink) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Auto-recovery of invalidations Redis could not take (default: on, 10,000 entries): when
    /// a `delete`, a write or an `invalidate_namespace` / `invalidate_tag` fails because Redis
    /// is unhealthy, the removal of what it meant to replace is queued in this instance and
    /// replayed when Redis is back. The call still fails (other instances may serve the old
    /// value until the replay), with [`Error::is_queued`](crate::Error::is_queued). See
    /// [`AutoRecovery`].
    pub fn auto_recovery(mut self, config: AutoRecovery) -> Self {
        self.auto_recovery = config;
        self
    }

    /// Make [`build`](Self::build) fail when Redis does not answer a PING (default: start anyway
    /// and serve from the loader until Redis is reachable — a cache must not stop a service).
    pub fn require_redis(mut self, require: bool) -> Self {
        self.require_redis = require;
        self
    }

    /// Validates the settings, prepares the Redis client and sends one PING to warm the
    /// connection.
    pub async fn build(self) -> Result<Cache> {
        let topology =
            self.topology.ok_or_else(|| Error::config("no Redis configured: call redis_url, cluster or sentinel"))?;
        self.ttl.validate()?;
        if self.op_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config("timeouts must be positive"));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 512 << 20 {
            return Err(Error::config("max_value_bytes must be between 1 byte and 512 MiB (the Redis limit)"));
        }
        if self.leases.ttl < Duration::from_millis(10) {
            return Err(Error::config("lease ttl must be at least 10 ms"));
        }
        self.hot.validate()?;
        self.freshness.validate()?;
        if self.breaker.failure_threshold == 0 {
            return Err(Error::config("breaker failure_threshold must be at least 1"));
        }
        self.invalidation.validate()?;
        self.auto_recovery.validate()?;
        if self.auto_recovery.wait_replicas > 0 && self.auto_recovery.wait_timeout >= self.op_timeout {
            return Err(Error::config("auto_recovery wait_timeout must be shorter than op_timeout"));
        }
        if let Some(enc) = &self.encryption {
            enc.validate()?;
        }
        // Credentials given in the URLs only: every connection must use them, the ones to nodes
        // the cache discovers (tracking, pinned nodes) included, whose URLs carry none.
        let (url_user, url_password) = credentials_in(&topology)?;
        let (username, password) = (self.username.or(url_user), self.password.or(url_password));
        let audit = self
            .audit
            .map(|sink| crate::audit::Audit { sink, principal: username.as_deref().unwrap_or("default").into() });
        let l2_config = L2Config {
            topology,
            username,
            password,
            #[cfg(feature = "tls")]
            tls: self.tls,
            op_timeout: self.op_timeout,
            connect_timeout: self.connect_timeout,
        };
        let metrics = Metrics::default();
        let l2 = L2::new(&l2_config, metrics.globals.clone(), self.breaker)?;
        let budget = (self.l1_bytes > 0)
            .then(|| (self.l1_bytes, self.l1_max_entry_bytes.unwrap_or(self.l1_bytes / 16).max(1), self.l1_policy));
        let tracked = self.invalidation.enabled && budget.is_some();
        let coherence = Coherence::new(tracked, self.invalidation.prefixes.clone());
        let inner = Inner {
            // Without tracking, `l1_max_ttl` bounds every L1 copy's staleness already.
            l1: L1::new(
                budget,
                (self.l1_max_ttl, if tracked { self.invalidation.heartbeat } else { self.l1_max_ttl }),
                coherence,
            ),
            l2,
            flights: Flights::default(),
            refreshes: Arc::new(Refreshes::default()),
            stamps: Stamps::new(self.stamp_refresh),
            metrics,
            codec: Codec {
                format: self.format,
                compress_above: self.compress_above,
                max_value_bytes: self.max_value_bytes,
                encryption: self.encryption.map(Arc::new),
            },
            ttl: self.ttl,
            leases: self.leases,
            freshness: self.freshness,
            hot: HotRegistry::new(self.hot),
            audit,
            recovery: Arc::new(Recovery::new(self.auto_recovery)),
        };
        inner.stamps.start_ticker();
        let inner = Arc::new(inner);
        Recovery::start(&inner);
        let diagnosis_config = l2_config.clone();
        if tracked && let Some(task) = Supervisor::start(&inner, self.invalidation, l2_config).await {
            inner.l1.coherence().set_task(task);
        }
        let cache = Cache { inner };
        if let Err(mut err) = cache.ping().await {
            // The connection manager turns a refused AUTH into retries and then a timeout;
            // one direct attempt tells the operator the real cause.
            if let Some(cause) = Box::pin(crate::l2::handshake_error(&diagnosis_config)).await {
                err = cause;
            }
            if self.require_redis {
                return Err(err);
            }
            tracing::warn!(error = %err, "redis unreachable at start; serving from loaders until it is back");
        }
        Ok(cache)
    }
}

/// The user and password in the first URL of a standalone or cluster topology (a Sentinel's
/// URLs name the sentinels, not the data nodes).
// Without `cluster` and `sentinel`, one arm is left: still a `match`, for the features' arms.
#[allow(clippy::infallible_destructuring_match)]
fn credentials_in(topology: &Topology) -> Result<(Option<String>, Option<String>)> {
    let url = match topology {
        Topology::Standalone(url) => url,
        #[cfg(feature = "cluster")]
        Topology::Cluster(seeds) => match seeds.first() {
            Some(url) => url,
            None => return Ok((None, None)),
        },
        #[cfg(feature = "sentinel")]
        Topology::Sentinel { .. } => return Ok((None, None)),
    };
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|e| Error::config(format!("invalid redis url: {e}")))?;
    let settings = info.redis_settings();
    Ok((settings.username().map(str::to_owned), settings.password().map(str::to_owned)))
}
