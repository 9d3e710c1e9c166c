//! A Sentinel setup: one master, its replicas, and Sentinels monitoring them.

use std::collections::HashMap;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::{Mode, NodeConfig, SentinelMonitor};
use crate::detached::{Detached, DetachedProcess};
use crate::error::{ClusterError, ErrorKind, Result};
use crate::launch::{NodeRequest, Workdir, launch_all};
use crate::node::{NodeLaunch, RedisNode};
use crate::options::{CommonOptions, common_builder_methods};
use crate::probe;

/// Default master name.
pub const DEFAULT_MASTER_NAME: &str = "mymaster";

/// A master, `replicas` replicas and `sentinels` Sentinels. Dropping it
/// kills every process and removes its temporary directory.
#[derive(Debug)]
pub struct SentinelSetup {
    // Field order matters: processes are dropped (killed) before the directory is removed.
    sentinels: Vec<RedisNode>,
    /// `data[0]` is the initial master, the rest are its replicas.
    data: Vec<RedisNode>,
    master_name: String,
    workdir: Workdir,
}

impl SentinelSetup {
    /// Start a master with `replicas` replicas and `sentinels` Sentinels
    /// monitoring it as `master_name`; waits until every Sentinel knows the
    /// master, all replicas and the other Sentinels.
    pub fn start(replicas: usize, sentinels: usize, master_name: &str) -> Result<SentinelSetup> {
        SentinelBuilder::default().replicas(replicas).sentinels(sentinels).master_name(master_name).start()
    }

    /// Configure a setup before starting it.
    pub fn builder() -> SentinelBuilder {
        SentinelBuilder::default()
    }

    /// The node started as master. After a failover it may have become a
    /// replica (or be dead); ask [`current_master`](Self::current_master).
    pub fn master(&mut self) -> &mut RedisNode {
        &mut self.data[0]
    }

    /// The nodes started as replicas.
    pub fn replicas(&self) -> &[RedisNode] {
        &self.data[1..]
    }

    /// Replica `i` (mutable).
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn replica_mut(&mut self, i: usize) -> &mut RedisNode {
        &mut self.data[1 + i]
    }

    /// All data nodes: index 0 is the initial master, then the replicas.
    pub fn data_nodes(&self) -> &[RedisNode] {
        &self.data
    }

    /// Data node `i` (mutable; 0 = the initial master).
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn data_node_mut(&mut self, i: usize) -> &mut RedisNode {
        &mut self.data[i]
    }

    /// The Sentinel processes.
    pub fn sentinels(&self) -> &[RedisNode] {
        &self.sentinels
    }

    /// Sentinel `i` (mutable).
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn sentinel_mut(&mut self, i: usize) -> &mut RedisNode {
        &mut self.sentinels[i]
    }

    /// `redis://127.0.0.1:PORT` of every Sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisNode::url).collect()
    }

    /// The name the Sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The base directory (`master`, `replica-N`, `sentinel-N`).
    pub fn dir(&self) -> &Path {
        self.workdir.path()
    }

    /// The master address (`127.0.0.1:PORT`) according to the first Sentinel
    /// that answers (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub fn master_addr(&self) -> Result<String> {
        let mut last = None;
        for s in &self.sentinels {
            let Some(mut con) = s.probe() else { continue };
            match master_addr_from(&mut con, &self.master_name) {
                Ok(addr) => return Ok(addr),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClusterError::new(ErrorKind::Redis, "no sentinel answered")))
    }

    /// Index (into [`data_nodes`](Self::data_nodes)) of the current master
    /// according to the Sentinels.
    pub fn current_master(&self) -> Result<usize> {
        let addr = self.master_addr()?;
        self.data
            .iter()
            .position(|n| n.addr() == addr)
            .ok_or_else(|| ClusterError::new(ErrorKind::Redis, format!("sentinels report unknown master {addr}")))
    }

    /// Wait until every running Sentinel reports the same master, that node
    /// answers with `role:master`, and (when `not` is given) it is not data
    /// node `not`: use `Some(0)` to wait for a failover away from the
    /// initial master.
    /// Returns the master's index into [`data_nodes`](Self::data_nodes).
    pub fn wait_for_master(&self, not: Option<usize>, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let problem = match self.agreed_master() {
                Ok(i) if Some(i) != not => return Ok(i),
                Ok(i) => format!("master is still data node {i}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(ClusterError::timeout(format!(
                    "sentinels did not agree on a master within {timeout:?}: {problem}"
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn agreed_master(&self) -> std::result::Result<usize, String> {
        let mut agreed: Option<String> = None;
        for s in self.sentinels.iter().filter(|s| !s.is_paused() && s.pid().is_some()) {
            let mut con = s.probe().ok_or_else(|| format!("sentinel {} does not answer", s.addr()))?;
            let addr = master_addr_from(&mut con, &self.master_name).map_err(|e| e.to_string())?;
            match &agreed {
                None => agreed = Some(addr),
                Some(a) if *a != addr => return Err(format!("sentinels disagree: {a} vs {addr}")),
                Some(_) => {}
            }
        }
        let addr = agreed.ok_or("no sentinel is running")?;
        let i = self.data.iter().position(|n| n.addr() == addr).ok_or_else(|| format!("unknown master {addr}"))?;
        let mut con = self.data[i].probe().ok_or_else(|| format!("master {addr} does not answer"))?;
        match probe::role(&mut con) {
            Ok(r) if r == "master" => Ok(i),
            Ok(r) => Err(format!("{addr} reports role {r}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Leave every process running after this value is gone; the directory is
    /// kept and a pid file is written into it.
    pub fn detach(mut self) -> Result<Detached> {
        let dir = self.workdir.keep();
        let mut processes = Vec::new();
        for node in self.data.iter_mut().chain(self.sentinels.iter_mut()) {
            let (port, url) = (node.port(), node.url());
            if let Some(pid) = node.release() {
                processes.push(DetachedProcess { pid, port, url });
            }
        }
        Detached::record(dir, processes)
    }

    /// Wait until every Sentinel sees the master as `master`, knows all
    /// replicas and all other Sentinels.
    fn wait_discovery(&self, replicas: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let problem = self.discovery_problem(replicas);
            let Some(problem) = problem else { return Ok(()) };
            if Instant::now() >= deadline {
                return Err(ClusterError::timeout(format!("sentinels not ready after {timeout:?}: {problem}")));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn discovery_problem(&self, replicas: usize) -> Option<String> {
        let others = self.sentinels.len().saturating_sub(1).to_string();
        let replicas = replicas.to_string();
        for s in &self.sentinels {
            let Some(mut con) = s.probe() else {
                return Some(format!("sentinel {} does not answer", s.addr()));
            };
            let fields = match sentinel_master(&mut con, &self.master_name) {
                Ok(f) => f,
                Err(e) => return Some(format!("sentinel {}: {e}", s.addr())),
            };
            let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("?");
            if get("flags") != "master" || get("num-slaves") != replicas || get("num-other-sentinels") != others {
                return Some(format!(
                    "sentinel {}: flags={} num-slaves={} num-other-sentinels={}",
                    s.addr(),
                    get("flags"),
                    get("num-slaves"),
                    get("num-other-sentinels")
                ));
            }
        }
        None
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` as `127.0.0.1:PORT`.
fn master_addr_from(con: &mut redis::Connection, name: &str) -> Result<String> {
    let reply: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query(con)
        .map_err(|e| ClusterError::redis("SENTINEL GET-MASTER-ADDR-BY-NAME", e))?;
    let (ip, port) =
        reply.ok_or_else(|| ClusterError::new(ErrorKind::Redis, format!("sentinel does not know master {name:?}")))?;
    Ok(format!("{ip}:{port}"))
}

/// `SENTINEL MASTER <name>` as a field map.
fn sentinel_master(con: &mut redis::Connection, name: &str) -> Result<HashMap<String, String>> {
    let v: redis::Value = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(name)
        .query(con)
        .map_err(|e| ClusterError::redis("SENTINEL MASTER", e))?;
    let mut out = HashMap::new();
    match v {
        redis::Value::Array(items) => {
            for pair in items.chunks(2) {
                if let [k, val] = pair
                    && let (Some(k), Some(val)) = (probe::as_string(k), probe::as_string(val))
                {
                    out.insert(k, val);
                }
            }
        }
        redis::Value::Map(pairs) => {
            for (k, val) in pairs {
                if let (Some(k), Some(val)) = (probe::as_string(&k), probe::as_string(&val)) {
                    out.insert(k, val);
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

/// Builder for [`SentinelSetup`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.start()` is called"]
pub struct SentinelBuilder {
    common: CommonOptions,
    replicas: usize,
    sentinels: usize,
    master_name: String,
    quorum: Option<usize>,
    down_after_ms: u64,
    failover_timeout_ms: u64,
    ready_timeout: Duration,
}

impl Default for SentinelBuilder {
    fn default() -> Self {
        SentinelBuilder {
            common: CommonOptions::default(),
            replicas: 1,
            sentinels: 3,
            master_name: DEFAULT_MASTER_NAME.into(),
            quorum: None,
            down_after_ms: 2000,
            failover_timeout_ms: 10_000,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl SentinelBuilder {
    common_builder_methods!();

    /// Number of replicas (default 1).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// Number of Sentinels (default 3, at least 1).
    pub fn sentinels(mut self, n: usize) -> Self {
        self.sentinels = n;
        self
    }

    /// The monitored master's name (default `mymaster`).
    pub fn master_name(mut self, name: impl Into<String>) -> Self {
        self.master_name = name.into();
        self
    }

    /// Sentinels that must agree the master is down (default: a majority).
    pub fn quorum(mut self, q: usize) -> Self {
        self.quorum = Some(q);
        self
    }

    /// `sentinel down-after-milliseconds` (default 2000).
    pub fn down_after_ms(mut self, ms: u64) -> Self {
        self.down_after_ms = ms;
        self
    }

    /// `sentinel failover-timeout` (default 10000).
    pub fn failover_timeout_ms(mut self, ms: u64) -> Self {
        self.failover_timeout_ms = ms;
        self
    }

    /// How long to wait for replication and Sentinel discovery (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Start master, replicas and Sentinels, and wait until replication is up
    /// and every Sentinel has discovered the whole setup.
    pub fn start(self) -> Result<SentinelSetup> {
        if self.sentinels == 0 {
            return Err(ClusterError::invalid("a Sentinel setup needs at least one sentinel"));
        }
        let name = &self.master_name;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ClusterError::invalid(format!("invalid master name {name:?}")));
        }
        if self.common.tls.is_some() || self.common.acl.is_some() {
            return Err(ClusterError::invalid("TLS and ACL files are not supported for Sentinel setups yet"));
        }
        let server = self.common.server_binary()?;
        let workdir = Workdir::new(self.common.dir.as_deref(), "strata-sentinel-")?;
        let base = workdir.path().to_path_buf();

        let master_req = NodeRequest {
            launch: self.common.data_launch(&server, base.join("master"), 0, Mode::Standalone { replica_of: None }),
            fixed: false,
        };
        let mut data = launch_all(vec![master_req])?;
        let master_port = data[0].port();
        let replica_reqs = (0..self.replicas)
            .map(|i| NodeRequest {
                launch: self.common.data_launch(
                    &server,
                    base.join(format!("replica-{i}")),
                    0,
                    Mode::Standalone { replica_of: Some(master_port) },
                ),
                fixed: false,
            })
            .collect();
        data.extend(launch_all(replica_reqs)?);
        wait_replication(&data[1..], self.ready_timeout)?;

        let quorum = self.quorum.unwrap_or(self.sentinels / 2 + 1);
        let sentinel_reqs = (0..self.sentinels)
            .map(|i| NodeRequest {
                launch: NodeLaunch {
                    binary: server.clone(),
                    dir: base.join(format!("sentinel-{i}")),
                    config: NodeConfig {
                        port: 0,
                        mode: Mode::Sentinel(SentinelMonitor {
                            master_name: self.master_name.clone(),
                            master_port,
                            quorum,
                            down_after_ms: self.down_after_ms,
                            failover_timeout_ms: self.failover_timeout_ms,
                            auth: self.common.auth.clone(),
                        }),
                        auth: None,
                        appendonly: false,
                        extra_lines: Vec::new(),
                        tls: None,
                        acl: None,
                    },
                    own_process_group: self.common.own_process_group,
                    start_timeout: self.common.start_timeout,
                },
                fixed: false,
            })
            .collect();
        // On error `data` is dropped (killed) before `workdir` is removed.
        let sentinels = launch_all(sentinel_reqs)?;
        let setup = SentinelSetup { sentinels, data, master_name: self.master_name.clone(), workdir };
        setup.wait_discovery(self.replicas, self.ready_timeout)?;
        Ok(setup)
    }
}

/// Wait until every replica reports `master_link_status:up` and no sync in progress.
fn wait_replication(replicas: &[RedisNode], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for r in replicas {
        loop {
            let status = r.probe().and_then(|mut con| probe::info(&mut con, "replication").ok());
            let ok = status.as_ref().is_some_and(|m| {
                m.get("master_link_status").map(String::as_str) == Some("up")
                    && m.get("master_sync_in_progress").map(String::as_str) == Some("0")
            });
            if ok {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::timeout(format!(
                    "replica {} did not finish syncing within {timeout:?}",
                    r.addr()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}
