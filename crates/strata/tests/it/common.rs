//! Test support: real Redis (standalone or a 3+3 cluster) and caches pointed at it.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use strata::{BreakerConfig, Cache, CacheBuilder, Invalidation};
use strata_cluster::{RedisCluster, RedisServer};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A running Redis deployment owned by one test; killed on drop.
pub enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    pub fn standalone() -> Self {
        Redis::Standalone(RedisServer::start().expect("start redis-server"))
    }

    pub fn cluster() -> Self {
        Redis::Cluster(RedisCluster::start(3, 1).expect("start a 3-master, 3-replica cluster"))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Redis::Standalone(_) => "standalone",
            Redis::Cluster(_) => "cluster",
        }
    }

    /// The URLs of every node, and whether this is a cluster.
    pub fn urls(&self) -> (Vec<String>, bool) {
        match self {
            Redis::Standalone(s) => (vec![s.url()], false),
            Redis::Cluster(c) => (c.seed_urls(), true),
        }
    }

    /// A cache builder for this deployment with test-friendly timeouts.
    pub fn builder(&self) -> CacheBuilder {
        let b = match self {
            Redis::Standalone(s) => Cache::builder().redis_url(s.url()),
            Redis::Cluster(c) => Cache::builder().cluster(c.seed_urls()),
        };
        // A PING unanswered for 500 ms (the default) would count as a lost tracking connection
        // and flush L1; a test machine running many clusters at once can be that slow.
        let invalidation = Invalidation::default().heartbeat(Duration::from_millis(200), Duration::from_secs(2));
        b.op_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(500))
            .invalidation(invalidation)
            .breaker(BreakerConfig::new().failure_threshold(3).open_for(Duration::from_millis(300)))
    }

    pub async fn cache(&self) -> Cache {
        self.builder().build().await.expect("build cache")
    }

    /// A plain client, as another application (or `redis-cli`) would use.
    pub fn raw(&self) -> Box<dyn redis::ConnectionLike> {
        match self {
            Redis::Standalone(s) => Box::new(s.node().connection().expect("connect")),
            Redis::Cluster(c) => {
                let client = redis::cluster::ClusterClient::new(c.seed_urls()).expect("cluster client");
                Box::new(client.get_connection().expect("cluster connection"))
            }
        }
    }

    /// A plain connection to every node, masters and replicas.
    pub fn node_connections(&self) -> Vec<redis::Connection> {
        match self {
            Redis::Standalone(s) => vec![s.node().connection().expect("connect")],
            Redis::Cluster(c) => c.nodes().iter().map(|n| n.connection().expect("connect")).collect(),
        }
    }

    /// Every key on every master (SCAN per node).
    pub fn all_keys(&self) -> Vec<String> {
        let mut conns = Vec::new();
        match self {
            Redis::Standalone(s) => conns.push(s.node().connection().expect("connect")),
            Redis::Cluster(c) => {
                for i in c.master_indices().expect("masters") {
                    conns.push(c.nodes()[i].connection().expect("connect"));
                }
            }
        }
        let mut keys = Vec::new();
        for mut conn in conns {
            let iter: redis::Iter<'_, String> =
                redis::cmd("SCAN").cursor_arg(0).arg("COUNT").arg(1000).clone().iter(&mut conn).expect("scan");
            keys.extend(iter.collect::<Result<Vec<_>, _>>().expect("scan"));
        }
        keys
    }

    /// Every key but Strata's stamp keys (one per namespace or tag in use, created by the cache).
    pub fn value_keys(&self) -> Vec<String> {
        self.all_keys().into_iter().filter(|k| !strata::is_stamp_key(k.as_bytes())).collect()
    }

    /// Kills every node.
    pub fn kill_all(&mut self) {
        match self {
            Redis::Standalone(s) => s.node_mut().kill().expect("kill"),
            Redis::Cluster(c) => {
                for i in 0..c.nodes().len() {
                    c.node_mut(i).kill().expect("kill");
                }
            }
        }
    }

    /// Restarts every node and waits until the deployment serves again.
    pub fn restart_all(&mut self) {
        match self {
            Redis::Standalone(s) => s.node_mut().restart().expect("restart"),
            Redis::Cluster(c) => {
                for i in 0..c.nodes().len() {
                    c.node_mut(i).restart().expect("restart");
                }
                c.wait_healthy(Duration::from_secs(60)).expect("cluster healthy after restart");
            }
        }
    }
}

/// Declares one `#[tokio::test]` per topology that runs `$check(Redis)`.
#[macro_export]
macro_rules! on_both {
    ($check:ident) => {
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() -> common::TestResult {
                super::$check(common::Redis::standalone()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() -> common::TestResult {
                super::$check(common::Redis::cluster()).await
            }
            use $crate::common;
        }
    };
}

/// A TCP proxy in front of a standalone server that holds back, by a fixed delay, what the
/// server sends on Strata's tracking connections (those that name themselves
/// `strata-invalidation`): invalidation messages, and the replies to the tracked reads that
/// share those connections, then arrive late, as on a loaded machine or a slow network, while
/// the other connections' replies do not. Stops when dropped.
pub struct LateInvalidations {
    url: String,
    accept: tokio::task::JoinHandle<()>,
}

impl LateInvalidations {
    pub async fn start(server: &RedisServer, delay: Duration) -> std::io::Result<Self> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let upstream = server.url().trim_start_matches("redis://").trim_end_matches('/').to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("redis://{}", listener.local_addr()?);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let tracking = Arc::new(AtomicBool::new(false));
                let seen = tracking.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_rx.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if buf[..n].windows(19).any(|w| w == b"strata-invalidation") {
                            seen.store(true, Ordering::SeqCst);
                        }
                        if server_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                // Chunks keep their order, each released `delay` after it arrived.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_rx.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let at = tokio::time::Instant::now()
                            + if tracking.load(Ordering::SeqCst) { delay } else { Duration::ZERO };
                        if tx.send((at, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some((at, chunk)) = rx.recv().await {
                        tokio::time::sleep_until(at).await;
                        if client_tx.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(Self { url, accept })
    }

    /// The proxy's URL, for a cache builder.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for LateInvalidations {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Polls `check` every 20 ms for at most `limit`.
pub async fn within<F: FnMut() -> Fut, Fut: Future<Output = bool>>(limit: Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}
