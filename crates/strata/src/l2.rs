//! L2: the Redis tier — standalone, Cluster or Sentinel — behind one connection type.
//!
//! Standalone uses redis-rs's `ConnectionManager` (multiplexed, reconnects by itself) created
//! lazily, so a cache can start while Redis is down. Cluster uses redis-rs's async cluster
//! connection seeded with every node given; it is created on first use and re-created after a
//! failed connect. The first attempt of a call on a key goes instead over a connection of the
//! cache's own to the key's master when the cache knows it ([`Masters`]: one per master, by hash
//! slot), which costs the client less CPU than the cluster connection's own routing. Sentinel
//! resolves the current master through the sentinels and re-resolves
//! after a connection-level error or a `READONLY` reply (the old master was demoted).
//!
//! Every call is bounded by the operation timeout here, whatever the driver's own settings.
//! Within it, replies that mean "not executed, try again shortly" (`LOADING`, `TRYAGAIN`,
//! `CLUSTERDOWN`, `MASTERDOWN`, and `READONLY` on Sentinel) are retried with exponential backoff
//! and full jitter on standalone and Sentinel connections (see [`crate::retry`]); the Cluster
//! client retries those, and follows `MOVED` / `ASK`, by itself — after a first attempt made
//! without its retries, so that a redirect is seen here: it means this instance may be reading
//! from a master its L1 invalidation does not track yet (see [`L2::run`]). Other errors are not
//! retried: the circuit breaker and the loader fallback deal with them.

#[cfg(feature = "cluster")]
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
#[cfg(any(feature = "cluster", feature = "sentinel"))]
use std::sync::RwLock;
#[cfg(feature = "cluster")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
#[cfg(feature = "cluster")]
use redis::cluster::ClusterClientBuilder;
#[cfg(feature = "cluster")]
use redis::cluster_async::ClusterConnection;
#[cfg(feature = "sentinel")]
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use tokio::time::Instant;

use crate::breaker::{BreakerConfig, Breakers, Permits};
use crate::error::{Error, Result};
use crate::metrics::Globals;
use crate::retry::{self, Backoff};
#[cfg(feature = "cluster")]
use crate::slots::{Routes, parse_masters};

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One server: `redis://host:port` or `rediss://host:port` for TLS.
    Standalone(String),
    /// A Redis Cluster; give every node you know (the client survives any one of them being down).
    /// Needs the `cluster` feature.
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
    /// A master found through Redis Sentinel. Needs the `sentinel` feature.
    #[cfg(feature = "sentinel")]
    Sentinel {
        /// Sentinel addresses (`redis://host:port`).
        sentinels: Vec<String>,
        /// The monitored master's name.
        master_name: String,
    },
}

/// TLS material for `rediss://` connections (PEM bytes). Without a CA, the system roots are used.
///
/// ```no_run
/// # fn demo() -> std::io::Result<()> {
/// let tls = strata::TlsOptions::new()
///     .ca_pem(std::fs::read("tls/ca.crt")?)
///     .client_cert_pem(std::fs::read("tls/client.crt")?)   // only for servers that ask
///     .client_key_pem(std::fs::read("tls/client.key")?);
/// let builder = strata::Cache::builder().redis_url("rediss://127.0.0.1:6380").tls(tls);
/// # let _ = builder;
/// # Ok(()) }
/// ```
///
/// `Debug` shows which parts are set, never their bytes. Needs the `tls` feature.
#[cfg(feature = "tls")]
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// CA certificate(s) that signed the server certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate, for servers that require client authentication.
    pub client_cert_pem: Option<Vec<u8>>,
    /// Key of the client certificate.
    pub client_key_pem: Option<Vec<u8>>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_cert_pem", &self.client_cert_pem.is_some())
            .field("client_key_pem", &self.client_key_pem.is_some())
            .finish()
    }
}

#[cfg(feature = "tls")]
impl TlsOptions {
    /// No CA (the system roots verify the servers) and no client certificate (same as `Default`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the CA certificate(s), PEM, that signed the server certificates.
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Sets the client certificate, PEM, for servers that require client authentication
    /// (used together with [`client_key_pem`](Self::client_key_pem)).
    #[must_use]
    pub fn client_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.client_cert_pem = Some(pem.into());
        self
    }

    /// Sets the key of the client certificate, PEM.
    #[must_use]
    pub fn client_key_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.client_key_pem = Some(pem.into());
        self
    }

    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        let client_tls = match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => {
                Some(redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() })
            }
            _ => None,
        };
        redis::TlsCertificates { client_tls, root_cert: self.ca_pem.clone() }
    }
}

/// Everything needed to reach Redis.
#[derive(Debug, Clone)]
pub(crate) struct L2Config {
    pub(crate) topology: Topology,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl L2Config {
    /// The URL scheme of a cluster's nodes: that of its seeds.
    pub(crate) fn cluster_scheme(&self) -> &'static str {
        match &self.topology {
            #[cfg(feature = "cluster")]
            Topology::Cluster(seeds) if seeds.iter().any(|s| s.starts_with("rediss://")) => "rediss",
            _ => "redis",
        }
    }

    /// Whether connections use TLS material given to the builder.
    #[cfg(feature = "sentinel")]
    pub(crate) fn has_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// A client for `info`, with the cache's TLS material when it has some.
    fn client(&self, info: redis::ConnectionInfo) -> RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return redis::Client::build_with_tls(info, tls.certificates());
        }
        redis::Client::open(info)
    }
}

/// A client for the one node at `url` (a master the cache found, a seed), with the cache's
/// credentials and TLS material, speaking `protocol`.
pub(crate) fn node_client(url: &str, config: &L2Config, protocol: redis::ProtocolVersion) -> Result<redis::Client> {
    let info = connection_info(url, config)?;
    let settings = info.redis_settings().clone().set_protocol(protocol);
    let info = info.set_redis_settings(settings);
    config.client(info).map_err(|e| Error::config(format!("invalid redis url {url:?}: {e}")))
}

/// A connection usable for any command; cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(ClusterConnection),
    /// A tracking connection to the key's master ([`L2::call_tracked`]): a read sent after
    /// `CLIENT CACHING YES` on it is remembered by Redis, which then tells this instance of the
    /// key's next change (see [`crate::invalidation`]).
    Tracked(MultiplexedConnection),
    /// This cache's own (untracked) connection to the key's master, for the first attempt of a
    /// call on a key ([`Masters`]).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Node(MultiplexedConnection),
}

/// Sends `pipe`, which invokes `script`: when the node does not have the script cached yet
/// (first use, a restart, a failover), loads it and sends the pipeline again, as
/// `ScriptInvocation::invoke_async` does for a script alone. The script did not run then, but
/// the pipeline's other commands did and run twice: only reads may share its pipeline.
pub(crate) async fn query_scripted<T: redis::FromRedisValue>(
    pipe: &Pipeline,
    script: &redis::ScriptInvocation<'_>,
    conn: &mut Conn,
) -> RedisResult<T> {
    match pipe.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            pipe.query_async(conn).await
        }
        other => other,
    }
}

impl Conn {
    /// Adds `CLIENT CACHING YES` to `pipe` on a tracking connection (nothing elsewhere): the
    /// next command's keys are then tracked. Its reply is ignored.
    pub(crate) fn track_next(&self, pipe: &mut Pipeline) {
        if matches!(self, Conn::Tracked(_)) {
            pipe.cmd("CLIENT").arg("CACHING").arg("YES").ignore();
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Tracked(c) | Conn::Node(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        p: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(p, offset, count),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_commands(p, offset, count),
            Conn::Tracked(c) | Conn::Node(c) => c.req_packed_commands(p, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.get_db(),
            Conn::Tracked(c) | Conn::Node(c) => c.get_db(),
        }
    }
}

/// One per cache: the size difference between its variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Single(ConnectionManager),
    /// `direct` makes the first attempt of every call, with no retries inside redis-rs, so that
    /// a `MOVED` or `ASK` reply (or a "try again") reaches [`L2::run`]; `managed` makes the
    /// attempt after such a reply, following redirects and retrying by itself.
    /// `masters` makes it instead when it knows the key's master.
    #[cfg(feature = "cluster")]
    Cluster {
        direct: ClusterConn,
        managed: Box<ClusterConn>,
        masters: Arc<Masters>,
    },
    #[cfg(feature = "sentinel")]
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        manager_config: ConnectionManagerConfig,
        conn: Slot,
    },
}

impl Backend {
    fn is_cluster(&self) -> bool {
        #[cfg(feature = "cluster")]
        return matches!(self, Backend::Cluster { .. });
        #[cfg(not(feature = "cluster"))]
        false
    }
}

/// A cluster client and its connection, made on demand.
#[cfg(feature = "cluster")]
struct ClusterConn {
    client: redis::cluster::ClusterClient,
    conn: Slot,
}

#[cfg(feature = "cluster")]
impl ClusterConn {
    fn new(client: redis::cluster::ClusterClient) -> Self {
        Self { client, conn: Slot::default() }
    }

    async fn get(&self) -> RedisResult<Conn> {
        self.conn.get(|| async { self.client.get_async_connection().await.map(Conn::Cluster) }).await
    }
}

/// The client name of [`Masters`]' connections (`CLIENT LIST`).
#[cfg(feature = "cluster")]
pub(crate) const MASTER_CONNECTION_NAME: &str = "strata-l2";

/// How soon after one refresh of [`Masters`] the next may start.
#[cfg(feature = "cluster")]
const REFRESH_SPACING: Duration = Duration::from_millis(200);

/// The same after a refresh that could not read the masters or reach one of them: a master this
/// cache cannot connect to (an address it cannot use, a node down) is asked for again at this
/// pace, not at every call on its slots.
#[cfg(feature = "cluster")]
const REFRESH_BACKOFF: Duration = Duration::from_secs(2);

/// This cache's own connection to each master of a cluster, by hash slot: the first attempt of
/// a call on a key goes straight to the key's master over it. redis-rs's cluster connection
/// hands every call to a task of its own, which routes it and hands it on to the node's
/// connection; with a client short of CPU, that relay cost more than the rest of an L2 hit
/// (docs/benchmarks.md, "Issue 16, tenth session"). The table is read from `CLUSTER NODES` when
/// a call's slot is not in it, and again after a call over it met a sign that the table is out
/// of date ([`stale_route`]), one refresh at a time and at most one per [`REFRESH_SPACING`]
/// ([`REFRESH_BACKOFF`] after one that failed or left a master out); meanwhile, and for slots it
/// does not know, calls go over the cluster connection as before. What is sent over it is
/// handled as a first attempt over the cluster connection would be (see [`L2::run`]).
#[cfg(feature = "cluster")]
struct Masters {
    routes: RwLock<Routes<MultiplexedConnection>>,
    /// The connections of `routes` by URL, kept across refreshes while they answer.
    conns: std::sync::Mutex<HashMap<String, MultiplexedConnection>>,
    /// A refresh is running, or waiting out its spacing.
    refreshing: AtomicBool,
    config: L2Config,
}

#[cfg(feature = "cluster")]
impl Masters {
    fn new(config: &L2Config) -> Self {
        Self {
            routes: RwLock::default(),
            conns: std::sync::Mutex::default(),
            refreshing: AtomicBool::new(false),
            config: config.clone(),
        }
    }

    /// The connection to `key`'s master, when known.
    fn find(&self, key: &[u8]) -> Option<MultiplexedConnection> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).find(key)
    }

    /// Reads the masters again in the background, asking over `via` (a cluster connection),
    /// unless a refresh is on its way already.
    fn refresh(self: &Arc<Self>, via: Conn) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        /// Lets the next refresh start, also when the task is dropped unfinished (its runtime
        /// shut down).
        struct Done(Arc<Masters>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.refreshing.store(false, Ordering::Release);
            }
        }
        let done = Done(Arc::clone(self));
        tokio::spawn(async move {
            let this = &done.0;
            let started = Instant::now();
            let complete = match this.read_masters(via).await {
                Ok(complete) => complete,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot read the cluster's masters; calls go over the cluster connection");
                    this.clear();
                    false
                }
            };
            tokio::time::sleep_until(started + if complete { REFRESH_SPACING } else { REFRESH_BACKOFF }).await;
        });
    }

    /// Forgets every route: calls go over the cluster connection, which routes every key.
    fn clear(&self) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Routes::default();
    }

    /// Reads the masters and connects to those without a live connection; whether every one
    /// of them has one now.
    async fn read_masters(&self, mut via: Conn) -> Result<bool> {
        let wait = self.config.connect_timeout;
        let text = tokio::time::timeout(wait, redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut via))
            .await
            .map_err(|_| Error::timeout("CLUSTER NODES", wait))?
            .map_err(|e| Error::redis("CLUSTER NODES", e))?;
        let masters = parse_masters(&text, self.config.cluster_scheme());
        let kept = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        let conns = futures_util::future::join_all(masters.iter().map(|(url, _)| {
            let kept = kept.get(url).cloned();
            async move {
                // A kept connection that still answers stays; any other is made again.
                if let Some(mut conn) = kept {
                    let ping = redis::cmd("PING");
                    if matches!(tokio::time::timeout(wait, ping.query_async::<String>(&mut conn)).await, Ok(Ok(_))) {
                        return Some(conn);
                    }
                }
                match tokio::time::timeout(wait, self.connect(url)).await {
                    Ok(Ok(conn)) => Some(conn),
                    Ok(Err(err)) => {
                        tracing::debug!(node = %url, error = %err, "cannot connect to a master; its slots go over the cluster connection");
                        None
                    }
                    Err(_) => None,
                }
            }
        }))
        .await;
        let by_url: HashMap<String, MultiplexedConnection> =
            masters.iter().zip(conns).filter_map(|((url, _), conn)| Some((url.clone(), conn?))).collect();
        let complete = by_url.len() == masters.len();
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) =
            Routes::of_masters(&masters, |url| by_url.get(url).cloned());
        *self.conns.lock().unwrap_or_else(|p| p.into_inner()) = by_url;
        Ok(complete)
    }

    async fn connect(&self, url: &str) -> Result<MultiplexedConnection> {
        let client = node_client(url, &self.config, redis::ProtocolVersion::RESP2)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            // Every call on it has its own timer (see `L2::run`).
            .set_response_timeout(None);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| Error::redis("connect", e))?;
        // Named for `CLIENT LIST`: an operator (and a test) can tell it from the others.
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(MASTER_CONNECTION_NAME)
            .exec_async(&mut conn)
            .await
            .map_err(|e| Error::redis("CLIENT SETNAME", e))?;
        Ok(conn)
    }
}

/// A connection made on demand and dropped to force a fresh one.
#[cfg(any(feature = "cluster", feature = "sentinel"))]
#[derive(Default)]
struct Slot {
    current: RwLock<Option<Conn>>,
    connecting: tokio::sync::Mutex<()>,
}

#[cfg(any(feature = "cluster", feature = "sentinel"))]
impl Slot {
    async fn get<F, Fut>(&self, connect: F) -> RedisResult<Conn>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = RedisResult<Conn>>,
    {
        if let Some(conn) = self.read() {
            return Ok(conn);
        }
        let _gate = self.connecting.lock().await;
        if let Some(conn) = self.read() {
            return Ok(conn);
        }
        let conn = connect().await?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn read(&self) -> Option<Conn> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn reset(&self) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

pub(crate) struct L2 {
    backend: Backend,
    pub(crate) op_timeout: Duration,
    connect_timeout: Duration,
    /// The cache's global counters: calls, errors, timeouts, retries, breaker rejections.
    globals: Arc<Globals>,
    /// Circuit breakers in front of Redis: one for all of it, and one per slot range on a cluster.
    breakers: Breakers,
}

impl L2 {
    /// Validates the configuration and prepares the client. Does not wait for Redis. Calls,
    /// errors and the retries made by [`run`](Self::run) are counted in `globals`.
    ///
    /// The Cluster client retries by itself (redis-rs 1.8, `cluster_async` request handling,
    /// checked in its source): `MOVED` and `ASK` are followed at once (`MOVED` also refreshes
    /// the slot map); `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN` and `LOADING` are retried after a
    /// wait drawn uniformly from `[min_retry_wait, min(max_retry_wait, 10 ms * 2^n))` before
    /// retry n = 1, 2, ...; `READONLY` refreshes the slot map and retries; a lost connection
    /// reconnects and retries. A pipeline is retried whole when any of its replies is one of
    /// these. It gives up after `retries` (3) retries, none of them counted in `l2_retries`.
    /// Two such clients are built: one with those retries, one with none for first attempts
    /// (even with no retries left, a `MOVED` still makes redis-rs refresh its slot map).
    pub(crate) fn new(config: &L2Config, globals: Arc<Globals>, breaker: BreakerConfig) -> Result<Self> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            // Our own timer bounds every call (see `run`); a second one inside the driver would
            // only add cost to each request.
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let backend = match &config.topology {
            Topology::Standalone(url) => {
                let info = connection_info(url, config)?;
                let client =
                    config.client(info).map_err(|e| Error::config(format!("invalid redis url {url:?}: {e}")))?;
                let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
                    .map_err(|e| Error::config(format!("cannot create connection manager: {e}")))?;
                Backend::Single(manager)
            }
            #[cfg(feature = "cluster")]
            Topology::Cluster(seeds) => {
                if seeds.is_empty() {
                    return Err(Error::config("a cluster topology needs at least one seed node"));
                }
                let infos = seeds.iter().map(|u| connection_info(u, config)).collect::<Result<Vec<_>>>()?;
                let client = |retries: u32| {
                    let mut builder = ClusterClientBuilder::new(infos.clone())
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(config.op_timeout)
                        .retries(retries)
                        .min_retry_wait(10)
                        .max_retry_wait(200)
                        .tcp_settings(tcp_settings());
                    if let Some(u) = &config.username {
                        builder = builder.username(u);
                    }
                    if let Some(p) = &config.password {
                        builder = builder.password(p);
                    }
                    #[cfg(feature = "tls")]
                    if let Some(tls) = &config.tls {
                        builder = builder.certs(tls.certificates());
                    }
                    builder.build().map_err(|e| Error::config(format!("invalid cluster configuration: {e}")))
                };
                Backend::Cluster {
                    direct: ClusterConn::new(client(0)?),
                    managed: Box::new(ClusterConn::new(client(3)?)),
                    masters: Arc::new(Masters::new(config)),
                }
            }
            #[cfg(feature = "sentinel")]
            Topology::Sentinel { sentinels, master_name } => {
                let infos = sentinels
                    .iter()
                    .map(|u| {
                        u.as_str()
                            .into_connection_info()
                            .map_err(|e| Error::config(format!("invalid sentinel url {u:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let addrs = infos.iter().map(|i| i.addr().clone());
                let mut builder = SentinelClientBuilder::new(addrs, master_name, SentinelServerType::Master)
                    .map_err(|e| Error::config(format!("invalid sentinel configuration: {e}")))?
                    .set_client_to_redis_tcp_settings(tcp_settings())
                    .set_client_to_sentinel_tcp_settings(tcp_settings());
                // Sentinels may require their own credentials: take them from the sentinel URLs.
                if let Some(settings) = infos.iter().map(|i| i.redis_settings()).find(|s| s.password().is_some()) {
                    if let Some(u) = settings.username() {
                        builder = builder.set_client_to_sentinel_username(u);
                    }
                    if let Some(p) = settings.password() {
                        builder = builder.set_client_to_sentinel_password(p);
                    }
                }
                if let Some(u) = &config.username {
                    builder = builder.set_client_to_redis_username(u);
                }
                if let Some(p) = &config.password {
                    builder = builder.set_client_to_redis_password(p);
                }
                #[cfg(feature = "tls")]
                if let Some(tls) = &config.tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_redis_certificates(tls.certificates());
                }
                let client =
                    builder.build().map_err(|e| Error::config(format!("invalid sentinel configuration: {e}")))?;
                Backend::Sentinel { client: tokio::sync::Mutex::new(client), manager_config, conn: Slot::default() }
            }
        };
        let breakers = Breakers::new(breaker, backend.is_cluster());
        Ok(Self { backend, op_timeout: config.op_timeout, connect_timeout: config.connect_timeout, globals, breakers })
    }

    /// The connection when one is ready without waiting (always, for a standalone server).
    fn ready_conn(&self) -> Option<Conn> {
        match &self.backend {
            Backend::Single(m) => Some(Conn::Single(m.clone())),
            #[cfg(feature = "cluster")]
            Backend::Cluster { direct, .. } => direct.conn.read(),
            #[cfg(feature = "sentinel")]
            Backend::Sentinel { conn, .. } => conn.read(),
        }
    }

    /// The connection of a call's first attempt: on a cluster, for a call on a key, this cache's
    /// own connection to the key's master when it knows it ([`Masters`], which it asks to
    /// learn the key's slot otherwise); else the usual connection when one is ready.
    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    fn first_conn(&self, key: Option<&[u8]>) -> Option<Conn> {
        #[cfg(feature = "cluster")]
        if let (Backend::Cluster { direct, masters, .. }, Some(key)) = (&self.backend, key) {
            if let Some(conn) = masters.find(key) {
                return Some(Conn::Node(conn));
            }
            let ready = direct.conn.read();
            if let Some(via) = &ready {
                masters.refresh(via.clone());
            }
            return ready;
        }
        self.ready_conn()
    }

    /// After a call over one of [`Masters`]' connections met a sign that the table is out of
    /// date: the table is read again (in the background), or, when there is no cluster
    /// connection to read it over (it was reset after every node was lost), forgotten, so that
    /// calls make that connection again and the table is read once it is up.
    fn masters_moved(&self) {
        #[cfg(feature = "cluster")]
        if let Backend::Cluster { direct, masters, .. } = &self.backend {
            match direct.conn.read() {
                Some(via) => masters.refresh(via),
                None => masters.clear(),
            }
        }
    }

    /// Makes (or waits for another caller to make) the connection.
    async fn connect(&self) -> RedisResult<Conn> {
        match &self.backend {
            Backend::Single(m) => Ok(Conn::Single(m.clone())),
            #[cfg(feature = "cluster")]
            Backend::Cluster { direct, .. } => direct.get().await,
            #[cfg(feature = "sentinel")]
            Backend::Sentinel { client, manager_config, conn } => {
                conn.get(|| async {
                    let master = client.lock().await.async_get_client().await?;
                    ConnectionManager::new_lazy_with_config(master, manager_config.clone()).map(Conn::Single)
                })
                .await
            }
        }
    }

    /// The cluster connection that follows redirects and retries by itself (`None` elsewhere).
    async fn managed(&self) -> Option<RedisResult<Conn>> {
        #[cfg(feature = "cluster")]
        if let Backend::Cluster { managed, .. } = &self.backend {
            return Some(managed.get().await);
        }
        None
    }

    /// Runs `op` on a connection, bounded by the operation timeout, plus the connect timeout
    /// when a connection has to be made first. On the hot path (connection ready, first attempt
    /// answered) exactly one timer is armed.
    ///
    /// On a standalone server or through Sentinel, a reply that means "not executed, try again
    /// shortly" (see [`crate::retry`]) runs `op` again after a jittered backoff, as long as the
    /// wait ends before the deadline set by the operation timeout when the first attempt
    /// started; a connection made again for a retry (Sentinel, after a demotion) counts against
    /// that same deadline. On a Cluster, the first attempt of a call on `key` goes over this
    /// cache's own connection to the key's master when it knows it ([`Masters`]; a failure or a
    /// redirect there has the masters read again), else over the cluster connection; either
    /// way it runs without redis-rs's retries: a
    /// `MOVED` or `ASK` reply is reported to `redirected` (with the node it names) before
    /// anything is read from that node, and whatever redis-rs would have retried (a redirect,
    /// "try again", a lost connection) gets one more attempt, on the connection that follows
    /// redirects and retries by itself (see [`L2::new`]) — no further layer, which would only
    /// hold callers longer during a failover.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        key: Option<&[u8]>,
        context: &str,
        op: F,
        redirected: &(dyn Fn(&str) + Sync),
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = async {
            let mut conn = match self.first_conn(key) {
                Some(conn) => conn,
                None => {
                    tokio::time::timeout(self.connect_timeout, self.connect()).await.map_err(|_| timeout_error())??
                }
            };
            let deadline = Instant::now() + self.op_timeout;
            let mut backoff: Option<Backoff> = None;
            let mut first = true;
            loop {
                let over_master = matches!(conn, Conn::Node(_));
                let err = match tokio::time::timeout_at(deadline, op(conn)).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(err)) => err,
                    Err(_) => {
                        if over_master {
                            self.masters_moved();
                        }
                        return Err(timeout_error());
                    }
                };
                if over_master && stale_route(&err) {
                    self.masters_moved();
                }
                if self.is_cluster() {
                    if let Some(node) = redirect_target(&err) {
                        redirected(&node);
                    }
                    let retryable = !matches!(err.retry_method(), redis::RetryMethod::NoRetry) && !err.is_timeout();
                    if !(first && retryable) {
                        return Err(err);
                    }
                    first = false;
                    self.after_error(&err);
                    conn = match tokio::time::timeout_at(deadline, self.managed()).await {
                        Ok(Some(conn)) => conn?,
                        Ok(None) => return Err(err),
                        Err(_) => return Err(timeout_error()),
                    };
                    continue;
                }
                if !retry::is_retryable(&err, self.is_sentinel()) {
                    return Err(err);
                }
                let Some(delay) = backoff.get_or_insert_with(|| Backoff::new(deadline)).next_delay() else {
                    return Err(err);
                };
                self.after_error(&err);
                self.globals.l2_retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(context, error = %err, ?delay, "redis asked to try again; retrying");
                tokio::time::sleep(delay).await;
                conn = match self.ready_conn() {
                    Some(conn) => conn,
                    None => tokio::time::timeout_at(deadline, self.connect()).await.map_err(|_| timeout_error())??,
                };
            }
        }
        .await;
        result.map_err(|e| {
            self.after_error(&e);
            if e.is_timeout() { Error::timeout(context, self.op_timeout) } else { Error::redis(context, e) }
        })
    }

    /// One call of the cache: on `key` (and keys in its hash slot) through the breaker of its
    /// slot range, or naming no key (`None`) through the whole-Redis breaker only; then
    /// [`run`](Self::run), with timeout, retries and error accounting. Only errors that say
    /// Redis is unhealthy count against the breaker (see [`Error::is_unhealthy`]).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        key: Option<&[u8]>,
        context: &str,
        op: F,
        redirected: impl Fn(&str) + Sync,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let globals = &self.globals;
        let Some(permit) = self.breakers.try_acquire(key) else {
            globals.breaker_rejections.fetch_add(1, Ordering::Relaxed);
            return Err(Error::circuit_open());
        };
        // Boxed: it keeps the layout of callers' futures shallow. Unboxed, the retry loop nested
        // inside every cache operation's state machine made code using the cache overflow the
        // compiler's query depth limit. One allocation next to a network round trip.
        let started = std::time::Instant::now();
        let result = Box::pin(self.run(key, context, op, &redirected)).await;
        self.account(permit, started, context, &result);
        result
    }

    /// Counts a call's outcome (latency, errors, timeouts) and reports it to its breaker: only
    /// errors that say Redis is unhealthy count against it.
    fn account<T>(&self, permit: Permits<'_>, started: std::time::Instant, context: &str, result: &Result<T>) {
        let globals = &self.globals;
        globals.l2_latency.0.record(started.elapsed());
        match result {
            Ok(_) => self.breakers.record(permit, true),
            Err(err) => {
                let counter = if err.is_timeout() { &globals.l2_timeouts } else { &globals.l2_errors };
                counter.fetch_add(1, Ordering::Relaxed);
                // Bounded by the breaker: after a few failures calls are skipped, not logged.
                tracing::warn!(command = context, error = %err, timeout = err.is_timeout(), "redis call failed");
                self.breakers.record(permit, !err.is_unhealthy());
            }
        }
    }

    /// [`call`](Self::call) on `key` over `conn`, the tracking connection of its master: one
    /// attempt, through the key's breaker, bounded by the operation timeout. `Ok(None)` when
    /// that node answered without running the call (see [`not_run`]) — a redirect (reported
    /// to `redirected`: the slot moved), a "try again", a demoted master: the caller then sends
    /// it the usual way, which retries and follows redirects. Anything else, a lost connection
    /// included (the call may have run), is the call's outcome.
    pub(crate) async fn call_tracked<T, F, Fut>(
        &self,
        key: &[u8],
        conn: MultiplexedConnection,
        context: &str,
        op: F,
        redirected: impl Fn(&str),
    ) -> Result<Option<T>>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(permit) = self.breakers.try_acquire(Some(key)) else {
            self.globals.breaker_rejections.fetch_add(1, Ordering::Relaxed);
            return Err(Error::circuit_open());
        };
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.op_timeout, op(Conn::Tracked(conn))).await {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(err)) if not_run(&err) => {
                if let Some(node) = redirect_target(&err) {
                    redirected(&node);
                }
                tracing::debug!(command = context, error = %err, "tracking connection could not answer; sending the usual way");
                // Neither a success nor a failure of Redis: the usual way decides.
                drop(permit);
                return Ok(None);
            }
            Ok(Err(err)) if err.is_timeout() => Err(Error::timeout(context, self.op_timeout)),
            Ok(Err(err)) => Err(Error::redis(context, err)),
            Err(_) => Err(Error::timeout(context, self.op_timeout)),
        };
        self.account(permit, started, context, &result);
        result
    }

    /// The circuit breakers.
    pub(crate) fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// Whether keys must be grouped by hash slot for multi-key commands and pipelines.
    pub(crate) fn is_cluster(&self) -> bool {
        self.backend.is_cluster()
    }

    fn is_sentinel(&self) -> bool {
        #[cfg(feature = "sentinel")]
        return matches!(self.backend, Backend::Sentinel { .. });
        #[cfg(not(feature = "sentinel"))]
        false
    }

    #[cfg_attr(not(any(feature = "cluster", feature = "sentinel")), allow(unused_variables))]
    fn after_error(&self, err: &redis::RedisError) {
        match &self.backend {
            #[cfg(feature = "sentinel")]
            Backend::Sentinel { conn, .. } => {
                // A slow master is not a reason to ask the sentinels again; a lost connection or a
                // demoted master is.
                let demoted = matches!(
                    err.kind(),
                    redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown)
                );
                let lost = !err.is_timeout() && (err.is_io_error() || err.is_connection_dropped());
                if demoted || lost || err.is_connection_refusal() {
                    conn.reset();
                }
            }
            // After every node has been down, redis-rs's cluster connection keeps refreshing its
            // slots through connections that no longer exist and never goes back to the seeds
            // (observed with 1.8.1: "No connections found" long after the cluster is healthy).
            // Start over from the seeds instead.
            #[cfg(feature = "cluster")]
            Backend::Cluster { direct, managed, .. } if err.kind() == redis::ErrorKind::ClusterConnectionNotFound => {
                direct.conn.reset();
                managed.conn.reset();
            }
            _ => {}
        }
    }
}

/// Whether an error of a call sent over [`Masters`]' connection to the key's master says the
/// table may be out of date: the slot moved for good (`MOVED`; an `ASK` is a migration under
/// way, which the table cannot express), the node is no longer a master or not serving
/// (`READONLY`, `CLUSTERDOWN`, `MASTERDOWN`), or the connection failed. A reply about the call
/// itself (`WRONGTYPE`, `NOPERM`, `OOM`, a script error, ...) is not.
fn stale_route(err: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as K;
    matches!(err.kind(), redis::ErrorKind::Server(K::Moved | K::ReadOnly | K::ClusterDown | K::MasterDown))
        || err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
}

/// Whether a node answered without running the call: it does not serve the slot (`MOVED`,
/// `ASK`), it cannot yet (`TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, `MASTERDOWN`), or it is no longer
/// a master (`READONLY`). Such a call may be sent again elsewhere; one whose connection broke
/// may have run, and must not.
fn not_run(err: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as K;
    matches!(
        err.kind(),
        redis::ErrorKind::Server(
            K::Moved | K::Ask | K::TryAgain | K::ClusterDown | K::BusyLoading | K::MasterDown | K::ReadOnly
        )
    )
}

/// The `host:port` a `MOVED` or `ASK` reply names, also inside a pipeline's errors (whose
/// `redirect_node` says nothing).
fn redirect_target(err: &redis::RedisError) -> Option<String> {
    if let Some((node, _slot)) = err.redirect_node() {
        return Some(node.to_owned());
    }
    use redis::ServerErrorKind as K;
    if !matches!(err.kind(), redis::ErrorKind::Server(K::Moved | K::Ask)) {
        return None;
    }
    let errors = err.clone().into_server_errors()?;
    let (_, first) = errors.first()?;
    // "<slot> <host:port>"
    first.details()?.split_ascii_whitespace().nth(1).map(str::to_owned)
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "operation timed out"))
}

/// TCP options for every connection: no Nagle delay (a request split over two segments would
/// otherwise wait for the peer's delayed ACK), and keepalive so a silently vanished peer is noticed.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    redis::io::tcp::TcpSettings::default().set_nodelay(true).set_keepalive(keepalive)
}

/// Why a first connection cannot be made, with one direct attempt (no retries, unlike the
/// connection manager, which keeps reconnecting after a refused AUTH until its caller times
/// out): lets `build` report `NOAUTH` / `WRONGPASS` instead of a bare timeout. Sentinel
/// setups are not probed (their data nodes are discovered, not configured).
// Without `cluster` and `sentinel`, one arm is left: still a `match`, for the features' arms.
#[allow(clippy::infallible_destructuring_match)]
pub(crate) async fn handshake_error(config: &L2Config) -> Option<Error> {
    let url = match &config.topology {
        Topology::Standalone(url) => url,
        #[cfg(feature = "cluster")]
        Topology::Cluster(seeds) => seeds.first()?,
        #[cfg(feature = "sentinel")]
        Topology::Sentinel { .. } => return None,
    };
    let info = connection_info(url, config).ok()?;
    let client = config.client(info).ok()?;
    match tokio::time::timeout(config.connect_timeout, client.get_multiplexed_async_connection()).await {
        Ok(Err(err)) => Some(Error::redis("connection handshake", err)),
        Ok(Ok(_)) | Err(_) => None,
    }
}

pub(crate) fn connection_info(url: &str, config: &L2Config) -> Result<redis::ConnectionInfo> {
    let info = url
        .into_connection_info()
        .map_err(|e| Error::config(format!("invalid redis url {url:?}: {e}")))?
        .set_tcp_settings(tcp_settings());
    let mut settings = info.redis_settings().clone();
    if let Some(u) = &config.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = &config.password {
        settings = settings.set_password(p);
    }
    Ok(info.set_redis_settings(settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{pipeline, reply};

    #[test]
    fn only_calls_a_node_did_not_run_go_elsewhere() {
        for line in [
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
            "TRYAGAIN x",
            "CLUSTERDOWN x",
            "LOADING x",
            "MASTERDOWN x",
            "READONLY x",
        ] {
            assert!(not_run(&reply(line)), "{line}");
        }
        assert!(not_run(&pipeline(["-MOVED 3999 127.0.0.1:6381", ":-1"])), "inside a pipeline too");
        assert!(!not_run(&reply("NOSCRIPT x")) && !not_run(&reply("OOM x")) && !not_run(&timeout_error()));
        let lost = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "socket"));
        assert!(!not_run(&lost), "a broken connection may have run the call");
    }

    #[test]
    fn redirects_name_their_node_also_inside_a_pipeline() {
        assert_eq!(redirect_target(&reply("MOVED 3999 127.0.0.1:6381")).as_deref(), Some("127.0.0.1:6381"));
        let piped = pipeline(["-ASK 3999 127.0.0.1:6382", ":-1"]);
        assert_eq!(piped.redirect_node(), None, "what redis-rs gives for a pipeline");
        assert_eq!(redirect_target(&piped).as_deref(), Some("127.0.0.1:6382"));
        assert_eq!(redirect_target(&reply("TRYAGAIN x")), None);
    }
}
