//! Cross-instance L1 invalidation: RESP3 client-side caching in Redis's default mode
//! (`CLIENT TRACKING ON OPTIN NOLOOP`), on one connection per Redis master.
//!
//! Each cache opens one connection per master (standalone: the server) with tracking on, and
//! every read whose answer may enter L1 goes over the connection of the key's master, preceded
//! by `CLIENT CACHING YES` (`Inner::call_tracked` in `cache/tiers.rs`). Redis then remembers
//! that this connection read the key, and the next time anyone changes it — any client,
//! Strata or `redis-cli` — pushes an `invalidate` message naming it on that same connection,
//! after the read's reply: the message removes the key from this instance's L1 only, and no
//! instance re-reads anything until one of its own callers asks again (no invalidation
//! storm). Because the read and the message share one ordered connection, a value read can
//! never miss the invalidation of a change made after it. Why tracking rather than a pub/sub
//! backplane is in `docs/decisions/0004-l1-invalidation.md`; why this mode rather than
//! broadcast tracking in `docs/decisions/0013-default-mode-tracking.md`.
//!
//! What this instance receives is therefore one message per change of a key it read since that
//! key's previous change: it grows with the keys it holds, not with the cluster's write rate,
//! and internal keys (leases, write-behind entries) that it never reads this
//! way cause none. The writes whose value this instance keeps in L1 (its stores and `set`) go
//! over the same connections and, with `NOLOOP`, cause no message back to it; a tracked read
//! right after the write (a read-back in the same pipeline, or the lease fill script's own
//! PTTL) tracks the key again (see [`crate::l1`]). Deletes go over them too.
//!
//! A message can be missed only when its connection is lost, so L1 serves only while every
//! tracking connection is up ([`Coherence`](crate::l1::Coherence)):
//!
//! - a lost connection (the driver's disconnection notice, or no PONG to the heartbeat within
//!   its timeout) flushes L1 at once, and nothing enters L1 until tracking is on again (a
//!   reply that comes over a connection marked lost fills nothing);
//! - a cluster topology change (failover, slot move, node added or removed), polled with
//!   `CLUSTER NODES`, flushes L1 and connects to the new masters first;
//! - a `MOVED` or `ASK` reply on the data path (see [`L2::run`](crate::l2::L2)) that names a
//!   node without a tracking connection flushes and closes L1 at once (the read it redirects
//!   cannot fill it), and L1 reopens only once that node is tracked too (a master without
//!   slots yet, receiving migrating keys, included); any redirect also makes the supervisor
//!   read the topology at once instead of at its next poll. A tracked read that meets one is
//!   sent again the usual way and fills nothing.
//!
//! The worst case — a node dies silently — bounds staleness by the heartbeat interval plus its
//! timeout. With Sentinel, the tracked node is the master the sentinels name, asked again at
//! every topology check: a failover is a topology change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use crate::cache::Inner;
use crate::error::{Error, Result};
use crate::l2::{L2Config, Topology, node_client};
use crate::slots::Routes;
#[cfg(feature = "cluster")]
use crate::slots::parse_masters;

/// How long `build` waits at most for tracking to be up on every node.
const STARTUP_WAIT: Duration = Duration::from_secs(3);

/// Settings of cross-instance L1 invalidation ([`CacheBuilder::invalidation`](crate::CacheBuilder::invalidation)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Invalidation {
    /// Track at all. Off: L1 copies may be stale for up to `l1_max_ttl` after a write elsewhere.
    pub enabled: bool,
    /// Key prefixes L1 keeps (empty: every key); keys outside them are read from Redis every
    /// time (see [`prefixes`](Self::prefixes)).
    pub prefixes: Vec<String>,
    /// How often each tracking connection is pinged.
    pub heartbeat: Duration,
    /// A PING unanswered for this long counts as a lost connection.
    pub heartbeat_timeout: Duration,
    /// How often the cluster topology is checked for changes (and at once when a call meets a
    /// `MOVED` or `ASK` reply).
    pub topology_interval: Duration,
}

impl Default for Invalidation {
    fn default() -> Self {
        Self {
            enabled: true,
            prefixes: Vec::new(),
            heartbeat: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_millis(500),
            topology_interval: Duration::from_secs(1),
        }
    }
}

impl Invalidation {
    /// No tracking: each instance's L1 is bounded only by its TTLs.
    pub fn disabled() -> Self {
        Self { enabled: false, ..Self::default() }
    }

    /// Keep in L1 only keys starting with one of `prefixes` (e.g. your
    /// [`KeySchema`](crate::KeySchema) apps, `"shop:"`); the others are read from Redis every
    /// time. Redis tracks only the keys an instance reads for its L1, so this is not needed to
    /// limit invalidation traffic; it keeps L1 to the data that earns it.
    pub fn prefixes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, prefixes: I) -> Self {
        self.prefixes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the heartbeat interval and timeout (their sum bounds staleness when a node vanishes
    /// silently).
    pub fn heartbeat(mut self, every: Duration, timeout: Duration) -> Self {
        self.heartbeat = every;
        self.heartbeat_timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.heartbeat.is_zero() || self.heartbeat_timeout.is_zero() || self.topology_interval.is_zero() {
            return Err(Error::config("invalidation heartbeat, timeout and topology interval must be positive"));
        }
        if self.prefixes.iter().any(String::is_empty) {
            return Err(Error::config("an invalidation prefix must not be empty (leave the list empty instead)"));
        }
        Ok(())
    }
}

/// What the data path and the supervisor share: which tracking connection answers for a key,
/// and the nodes that `MOVED` / `ASK` replies named.
#[derive(Default)]
pub(crate) struct Tracking {
    /// The tracking connection of each hash slot's master, as of the supervisor's last round.
    routes: RwLock<Routes<Route>>,
    /// `host:port` of every node with a tracking connection, as of the supervisor's last round.
    tracked: std::sync::RwLock<Vec<String>>,
    /// Redirect targets that were not tracked: tracked from then on whatever the topology
    /// says, until it lists them as masters (then it decides) or a connection to one fails.
    pinned: std::sync::Mutex<Vec<String>>,
    /// Wakes the supervisor for a topology check now.
    wake: Arc<tokio::sync::Notify>,
}

impl Tracking {
    /// The tracking connection of `key`'s master, if it has one.
    pub(crate) fn route(&self, key: &[u8]) -> Option<Route> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).find(key)
    }

    fn publish(&self, routes: Routes<Route>) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    }
}

/// A tracking connection, and whether it is still up: a reply that comes over one marked lost
/// fills nothing (its invalidations may have stopped).
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) alive: Arc<AtomicBool>,
}

/// The data path met a `MOVED` or `ASK` reply naming `node` (`host:port`): a slot moved, or is
/// moving. Without a tracking connection to that node, what is read from it could miss its
/// invalidations, so L1 is flushed and closed now (fills whose reads started before are
/// refused), until the supervisor tracks it. Either way the topology is read again at once.
pub(crate) fn redirected(cache: &Inner, node: &str) {
    let redirects = &cache.l1().coherence().tracking;
    if !cache.l1().coherence().is_tracking() {
        return;
    }
    let tracked = redirects.tracked.read().unwrap_or_else(|p| p.into_inner()).iter().any(|n| n == node);
    if !tracked {
        let mut pinned = redirects.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if !pinned.iter().any(|n| n == node) {
            pinned.push(node.to_owned());
        }
        drop(pinned);
        tracing::info!(node, "redis redirected a call to a node without invalidation tracking; flushing L1");
        close_l1(cache);
    }
    redirects.wake.notify_one();
}

/// One tracking connection, and whether the driver still reports it alive.
struct Node {
    conn: MultiplexedConnection,
    alive: Arc<AtomicBool>,
}

/// Owns the tracking connections; runs until its cache is dropped.
pub(crate) struct Supervisor {
    cache: Weak<Inner>,
    config: Invalidation,
    l2: L2Config,
    nodes: HashMap<String, Node>,
    /// With Sentinel: a connection to each sentinel that answered, kept for the next topology
    /// check (made on first use, and again after it failed), so that a check costs one command,
    /// not a new connection.
    #[cfg(feature = "sentinel")]
    sentinels: HashMap<String, MultiplexedConnection>,
    /// The masters (and their slots) last seen; a change flushes L1.
    topology: Option<String>,
    masters: Vec<(String, String)>,
    /// When the topology was last read.
    checked: Option<tokio::time::Instant>,
    lost: mpsc::UnboundedSender<()>,
}

impl Supervisor {
    /// Connects to every node (bounded by the connect timeout, so a cache can start while Redis
    /// is down) and keeps the connections up from a background task.
    pub(crate) async fn start(
        cache: &Arc<Inner>,
        config: Invalidation,
        l2: L2Config,
    ) -> Option<tokio::task::AbortHandle> {
        let (lost, mut lost_rx) = mpsc::unbounded_channel();
        let connect_timeout = l2.connect_timeout;
        let mut supervisor = Supervisor {
            cache: Arc::downgrade(cache),
            config,
            l2,
            nodes: HashMap::new(),
            #[cfg(feature = "sentinel")]
            sentinels: HashMap::new(),
            topology: None,
            masters: Vec::new(),
            checked: None,
            lost,
        };
        let first_round = Arc::new(AtomicBool::new(false));
        let first_done = first_round.clone();
        let wake = cache.l1().coherence().tracking.wake.clone();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(supervisor.config.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = lost_rx.recv() => {}
                    // A redirect on the data path: the topology changed under us.
                    _ = wake.notified() => supervisor.checked = None,
                }
                let Some(cache) = supervisor.cache.upgrade() else { return };
                supervisor.round(&cache).await;
                first_done.store(true, Ordering::SeqCst);
            }
        });
        // Let the first round finish (L1 stays closed until tracking is up); a cache that starts
        // while Redis is down goes on as soon as that round has failed.
        let deadline = tokio::time::Instant::now() + STARTUP_WAIT.max(connect_timeout * 2);
        while !first_round.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !cache.l1().coherence().is_healthy() {
            tracing::warn!("L1 invalidation not established yet; L1 stays empty until it is");
        }
        Some(handle.abort_handle())
    }

    /// Checks the topology, (re)connects, pings, and sets the health: L1 serves only when every
    /// master has a live tracking connection.
    async fn round(&mut self, cache: &Inner) {
        // The topology is read every `topology_interval`, and at every round while L1 is closed
        // (so that it reopens as soon as possible).
        let due = self.checked.is_none_or(|at| at.elapsed() >= self.config.topology_interval)
            || !cache.l1().coherence().is_healthy();
        if due {
            let masters = match self.masters().await {
                Ok(masters) => masters,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot read the topology");
                    if cache.l1().coherence().is_healthy() {
                        close_l1(cache);
                    }
                    return;
                }
            };
            self.checked = Some(tokio::time::Instant::now());
            let fingerprint =
                masters.iter().map(|(addr, slots)| format!("{addr} {slots}")).collect::<Vec<_>>().join("\n");
            if self.topology.as_ref().is_some_and(|seen| *seen != fingerprint) {
                tracing::info!("redis topology changed; flushing L1");
                close_l1(cache);
            }
            self.topology = Some(fingerprint);
            self.masters = masters;
        }
        // The masters, and the nodes redirects named that the topology does not list yet (see
        // `redirected`).
        let scheme = self.l2.cluster_scheme();
        let pinned: Vec<String> = {
            let mut pinned = cache.l1().coherence().tracking.pinned.lock().unwrap_or_else(|p| p.into_inner());
            pinned.retain(|n| !self.masters.iter().any(|(a, _)| *a == format!("{scheme}://{n}")));
            pinned.iter().map(|n| format!("{scheme}://{n}")).collect()
        };
        let mut wanted: Vec<String> = self.masters.iter().map(|(a, _)| a.clone()).collect();
        wanted.extend(pinned.iter().filter(|p| !wanted.contains(p)).cloned().collect::<Vec<_>>());
        self.nodes.retain(|addr, node| wanted.contains(addr) && node.alive.load(Ordering::SeqCst));
        let missing: Vec<String> = wanted.iter().filter(|a| !self.nodes.contains_key(*a)).cloned().collect();
        let connected = futures_util::future::join_all(missing.iter().map(|addr| self.connect(addr))).await;
        for (addr, node) in missing.into_iter().zip(connected) {
            match node {
                Ok(node) => {
                    self.nodes.insert(addr, node);
                }
                Err(err) => {
                    tracing::debug!(node = %addr, error = %err, "tracking connection failed");
                    if pinned.contains(&addr) {
                        // Gone: reads cannot reach it either. The topology decides again.
                        let mut pinned =
                            cache.l1().coherence().tracking.pinned.lock().unwrap_or_else(|p| p.into_inner());
                        pinned.retain(|n| !addr.ends_with(&format!("://{n}")));
                        wanted.retain(|a| *a != addr);
                    }
                }
            }
        }
        self.heartbeat().await;
        self.publish_routes(cache);
        *cache.l1().coherence().tracking.tracked.write().unwrap_or_else(|p| p.into_inner()) =
            self.nodes.keys().map(|a| a.split_once("://").map_or(a.as_str(), |(_, n)| n).to_owned()).collect();
        let all_up = !self.masters.is_empty() && wanted.iter().all(|a| self.nodes.contains_key(a));
        if all_up != cache.l1().coherence().is_healthy() {
            cache.l1().reset(all_up);
            // A connection lost between the check and the switch has already flushed; make sure
            // it is not overruled.
            if all_up && self.nodes.values().any(|n| !n.alive.load(Ordering::SeqCst)) {
                close_l1(cache);
            }
        }
    }

    /// Tells the data path which tracking connection answers for each slot: that of the slot's
    /// master, when there is one.
    fn publish_routes(&self, cache: &Inner) {
        let routes = Routes::of_masters(&self.masters, |addr| {
            self.nodes.get(addr).map(|node| Route { conn: node.conn.clone(), alive: node.alive.clone() })
        });
        cache.l1().coherence().tracking.publish(routes);
    }

    /// PINGs every tracking connection; one that does not answer in time is dropped.
    async fn heartbeat(&mut self) {
        let timeout = self.config.heartbeat_timeout;
        let pings = self.nodes.iter_mut().map(|(addr, node)| async move {
            let pong = tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut node.conn)).await;
            (addr.clone(), matches!(pong, Ok(Ok(_))))
        });
        let dead: Vec<String> =
            futures_util::future::join_all(pings).await.into_iter().filter(|(_, ok)| !ok).map(|(a, _)| a).collect();
        for addr in dead {
            tracing::warn!(node = %addr, "tracking connection missed its heartbeat; flushing L1");
            if let Some(node) = self.nodes.remove(&addr) {
                node.alive.store(false, Ordering::SeqCst);
            }
            if let Some(cache) = self.cache.upgrade() {
                close_l1(&cache);
            }
        }
    }

    /// The masters to track, with their slot ranges (empty for a standalone server).
    async fn masters(&mut self) -> Result<Vec<(String, String)>> {
        match &self.l2.topology {
            Topology::Standalone(url) => Ok(vec![(url.clone(), String::new())]),
            #[cfg(feature = "cluster")]
            Topology::Cluster(seeds) => {
                let seeds = seeds.clone();
                self.cluster_masters(&seeds).await
            }
            #[cfg(feature = "sentinel")]
            Topology::Sentinel { sentinels, master_name } => {
                let (sentinels, master_name) = (sentinels.clone(), master_name.clone());
                let master = self.sentinel_master(&sentinels, &master_name).await?;
                Ok(vec![(master, String::new())])
            }
        }
    }

    /// A cluster's masters, from `CLUSTER NODES`.
    #[cfg(feature = "cluster")]
    async fn cluster_masters(&mut self, seeds: &[String]) -> Result<Vec<(String, String)>> {
        let scheme = self.l2.cluster_scheme();
        // Ask a node we already talk to, else the seeds, in turn.
        let mut last_err = Error::config("no cluster seed answered");
        let mut asked: Vec<_> = self.nodes.iter_mut().collect();
        asked.sort_by(|a, b| a.0.cmp(b.0));
        for (_, node) in asked {
            let cmd = redis::cmd("CLUSTER").arg("NODES").clone();
            let fut = cmd.query_async::<String>(&mut node.conn);
            if let Ok(Ok(text)) = tokio::time::timeout(self.config.heartbeat_timeout, fut).await {
                return Ok(parse_masters(&text, scheme));
            }
        }
        for seed in seeds {
            match self.cluster_nodes_from(seed).await {
                Ok(text) => return Ok(parse_masters(&text, scheme)),
                Err(err) => last_err = err,
            }
        }
        Err(last_err)
    }

    /// The master's URL as the sentinels see it now (the first that answers). A failover
    /// changes it, which the caller treats as a topology change.
    /// Each sentinel is asked over the connection kept from the last check ([`Self::sentinels`]);
    /// when there is none, or it fails (the sentinel restarted, or closed it), over a new one,
    /// within the same timeout. A connection that fails is dropped.
    #[cfg(feature = "sentinel")]
    async fn sentinel_master(&mut self, sentinels: &[String], name: &str) -> Result<String> {
        let scheme = if self.l2.has_tls() { "rediss" } else { "redis" };
        let mut last_err = Error::config("no sentinel configured");
        for sentinel in sentinels {
            // The sentinel URLs carry the sentinels' own credentials, if any.
            let client = redis::Client::open(sentinel.as_str())
                .map_err(|e| Error::config(format!("invalid sentinel url {sentinel:?}: {e}")))?;
            let kept = self.sentinels.remove(sentinel);
            let ask = async {
                if let Some(mut conn) = kept {
                    match master_by_name(&mut conn, name).await {
                        Ok(master) => return Ok((conn, master)),
                        Err(err) => {
                            tracing::debug!(sentinel = %sentinel, error = %err, "kept sentinel connection failed; connecting again")
                        }
                    }
                }
                let mut conn = client.get_multiplexed_async_connection().await?;
                let master = master_by_name(&mut conn, name).await?;
                Ok::<_, redis::RedisError>((conn, master))
            };
            match tokio::time::timeout(self.l2.connect_timeout, ask).await {
                Ok(Ok((conn, master))) => {
                    self.sentinels.insert(sentinel.clone(), conn);
                    match master {
                        Some((host, port)) => return Ok(format!("{scheme}://{host}:{port}")),
                        None => last_err = Error::config(format!("sentinel knows no master named {name:?}")),
                    }
                }
                Ok(Err(err)) => last_err = Error::redis("SENTINEL get-master-addr-by-name", err),
                Err(_) => last_err = Error::timeout("SENTINEL get-master-addr-by-name", self.l2.connect_timeout),
            }
        }
        Err(last_err)
    }

    #[cfg(feature = "cluster")]
    async fn cluster_nodes_from(&self, seed: &str) -> Result<String> {
        let client = self.client(seed, ProtocolVersion::RESP2)?;
        let fetch = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(self.l2.connect_timeout, fetch).await {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(err)) => Err(Error::redis("CLUSTER NODES", err)),
            Err(_) => Err(Error::timeout("CLUSTER NODES", self.l2.connect_timeout)),
        }
    }

    fn client(&self, url: &str, protocol: ProtocolVersion) -> Result<redis::Client> {
        node_client(url, &self.l2, protocol)
    }

    /// Opens a RESP3 connection whose push messages evict from L1, and turns tracking on. The
    /// data path sends the reads (and writes) whose answers may enter L1 over it.
    async fn connect(&self, url: &str) -> Result<Node> {
        let client = self.client(url, ProtocolVersion::RESP3)?;
        let alive = Arc::new(AtomicBool::new(true));
        let (cache, flag, lost) = (self.cache.clone(), alive.clone(), self.lost.clone());
        // Runs in the driver's task: evictions are applied before the next message is read.
        let on_push = move |push: PushInfo| -> std::result::Result<(), ()> {
            let Some(cache) = cache.upgrade() else { return Err(()) };
            on_push(&cache, push, &flag, &lost);
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.l2.connect_timeout))
            // Every call on it has its own timer (the heartbeat's, the data path's): a second
            // one inside the driver would only add cost to each request.
            .set_response_timeout(None)
            .set_push_sender(on_push);
        let setup = async {
            let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
            redis::cmd("CLIENT").arg("SETNAME").arg("strata-invalidation").exec_async(&mut conn).await?;
            // Default mode: Redis remembers the keys this connection reads after `CLIENT CACHING
            // YES` (OPTIN), and does not tell it of its own writes (NOLOOP).
            redis::cmd("CLIENT").arg("TRACKING").arg("ON").arg("OPTIN").arg("NOLOOP").exec_async(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        match tokio::time::timeout(self.l2.connect_timeout * 2, setup).await {
            Ok(Ok(conn)) => Ok(Node { conn, alive }),
            Ok(Err(err)) => Err(Error::redis("CLIENT TRACKING", err)),
            Err(_) => Err(Error::timeout("CLIENT TRACKING", self.l2.connect_timeout * 2)),
        }
    }
}

/// Something may have been missed: flush and close L1, and read namespace stamps again.
pub(crate) fn close_l1(cache: &Inner) {
    cache.l1().reset(false);
    cache.stamps().forget(None);
}

/// Applies one push message from a tracking connection.
fn on_push(cache: &Inner, push: PushInfo, alive: &AtomicBool, lost: &mpsc::UnboundedSender<()>) {
    match push.kind {
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    if let Value::BulkString(bytes) = key {
                        if is_internal(bytes) {
                            cache.l1().coherence().internal_keys.fetch_add(1, Ordering::Relaxed);
                        }
                        cache.l1().invalidate(bytes);
                        // A namespace or tag stamp moved: read it again rather than wait for
                        // the stamp cache to expire.
                        if let Some(id) = std::str::from_utf8(bytes).ok().and_then(crate::tags::stamp_id) {
                            cache.stamps().forget(Some(id));
                        }
                    }
                }
            }
            // A nil key list: the node was flushed (FLUSHALL / FLUSHDB).
            _ => cache.l1().reset(cache.l1().coherence().is_healthy()),
        },
        PushKind::Disconnection if alive.swap(false, Ordering::SeqCst) => {
            tracing::warn!("tracking connection lost; flushing L1 until it is back");
            close_l1(cache);
            // Wake the supervisor to reconnect now rather than at its next tick.
            let _ = lost.send(());
        }
        _ => {}
    }
}

/// Whether `key` is one Strata keeps for coordination rather than a cached value, a stamp or a
/// hot key's copy (those are read for L1 on purpose): a lease, a write version or a write-behind entry. Reads
/// for L1 never track them, so no message should name one
/// ([`MetricsSnapshot::invalidation_messages_internal`](crate::MetricsSnapshot)).
fn is_internal(key: &[u8]) -> bool {
    crate::lease::coordination_target(key).is_some() || key.starts_with(b"{wb:")
}

/// Counters of the invalidation machinery, for [`MetricsSnapshot`](crate::MetricsSnapshot):
/// keys named by messages, those of them that are internal keys, L1 flushes, L1 serving.
pub(crate) fn counters(cache: &Inner) -> (u64, u64, u64, bool) {
    let c = cache.l1().coherence();
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    (load(&c.invalidated_keys), load(&c.internal_keys), load(&c.flushes), c.is_healthy())
}

/// `SENTINEL get-master-addr-by-name NAME`: the master's host and port, `None` for a name the
/// sentinel does not monitor.
#[cfg(feature = "sentinel")]
async fn master_by_name(conn: &mut MultiplexedConnection, name: &str) -> redis::RedisResult<Option<(String, u16)>> {
    redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(name).query_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prefixes_are_rejected() {
        assert!(Invalidation::default().prefixes(["shop:", "shop:v1"]).validate().is_ok());
        assert!(Invalidation::default().prefixes([""]).validate().is_err());
    }
}
