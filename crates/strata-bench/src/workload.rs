//! What the workloads share: where Redis is, and the value they cache.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use strata_cluster::{RedisCluster, RedisServer};

/// Which kind of local deployment to start when no URL is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One redis-server.
    Standalone,
    /// 3 masters + 3 replicas.
    Cluster,
}

/// Redis for one run: either started here (and stopped when this is dropped) or given.
#[derive(Debug)]
pub struct Target {
    /// How the cache and the raw client reach it.
    pub topology: strata::Topology,
    /// What kind of deployment it is.
    pub layout: Layout,
    _owned: Option<Owned>,
}

/// Held only for its `Drop`, which stops the processes.
#[expect(dead_code, reason = "held for its Drop")]
#[derive(Debug)]
enum Owned {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Target {
    /// Uses an existing deployment: several URLs are cluster seeds; one URL is a standalone
    /// server, or the seed of a cluster when the node says it runs in cluster mode.
    pub fn external(urls: Vec<String>) -> anyhow::Result<Self> {
        let (topology, layout) = match urls.len() {
            0 => anyhow::bail!("no Redis URL given"),
            1 if cluster_enabled(&urls[0]) => (strata::Topology::Cluster(urls), Layout::Cluster),
            1 => (strata::Topology::Standalone(urls[0].clone()), Layout::Standalone),
            _ => (strata::Topology::Cluster(urls), Layout::Cluster),
        };
        Ok(Self { topology, layout, _owned: None })
    }

    /// Starts a local deployment on free loopback ports (stopped on drop), with a spinner.
    pub fn start_local(layout: Layout) -> anyhow::Result<Self> {
        let spinner = spinner(match layout {
            Layout::Standalone => "starting redis-server",
            Layout::Cluster => "starting a local Redis Cluster (3 masters + 3 replicas)",
        });
        let target = match layout {
            Layout::Standalone => {
                let server = RedisServer::start().context("starting redis-server")?;
                let topology = strata::Topology::Standalone(server.url());
                Self { topology, layout, _owned: Some(Owned::Server(server)) }
            }
            Layout::Cluster => {
                let cluster = RedisCluster::start(3, 1).context("starting a local Redis Cluster")?;
                let topology = strata::Topology::Cluster(cluster.seed_urls());
                Self { topology, layout, _owned: Some(Owned::Cluster(cluster)) }
            }
        };
        spinner.finish_and_clear();
        Ok(target)
    }

    /// A cache builder pointed at this deployment.
    pub fn cache_builder(&self) -> strata::CacheBuilder {
        strata::Cache::builder().topology(self.topology.clone())
    }

    /// The URLs of this deployment.
    pub fn urls(&self) -> Vec<String> {
        match &self.topology {
            strata::Topology::Standalone(url) => vec![url.clone()],
            strata::Topology::Cluster(seeds) => seeds.clone(),
            _ => Vec::new(),
        }
    }
}

/// Whether the node at `url` runs in cluster mode (false when it cannot be asked: connecting
/// later reports the real problem).
fn cluster_enabled(url: &str) -> bool {
    let probe = || -> redis::RedisResult<bool> {
        let client = redis::Client::open(url)?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
        con.set_read_timeout(Some(Duration::from_secs(2)))?;
        let info: String = redis::cmd("INFO").arg("cluster").query(&mut con)?;
        Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
    };
    probe().unwrap_or(false)
}

/// A spinner on stderr (hidden when stderr is not a terminal).
pub fn spinner(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A progress bar on stderr for `len` steps.
pub fn progress(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(message);
    if let Ok(style) = ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A user profile, the value of the seed workload (about 200 bytes as MessagePack).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// User id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Contact address.
    pub email: String,
    /// Country code.
    pub country: String,
    /// Account creation, Unix seconds.
    pub created_at: u64,
    /// Feature flags.
    pub flags: Vec<String>,
    /// Number of profile edits (changes on every write).
    pub version: u64,
}

impl Profile {
    /// A deterministic profile for `id`.
    pub fn sample(id: u64) -> Self {
        Self {
            id,
            name: format!("User Number {id}"),
            email: format!("user{id}@example.com"),
            country: ["FR", "DE", "US", "JP", "BR"][(id % 5) as usize].to_owned(),
            created_at: 1_600_000_000 + id * 37,
            flags: vec!["beta".into(), "newsletter".into(), format!("cohort-{}", id % 17)],
            version: 0,
        }
    }
}
