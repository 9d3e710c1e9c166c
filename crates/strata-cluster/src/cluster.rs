//! An N-master / R-replica Redis Cluster created with `redis-cli --cluster create`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::SLOT_COUNT;
use crate::cli;
use crate::config::{Credentials, Mode};
use crate::detached::{Detached, DetachedCluster, DetachedProcess};
use crate::error::{ClusterError, ErrorKind, Result};
use crate::launch::{NodeRequest, Workdir, ensure_fresh_node_dir, launch_all};
use crate::node::RedisNode;
use crate::options::{CommonOptions, common_builder_methods};
use crate::probe::{self, SlotRange};
use crate::tls::TlsMaterial;

/// Default `cluster-node-timeout`.
pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 2000;
/// Default time [`ClusterBuilder::start`] waits for the new cluster to become healthy.
pub const DEFAULT_HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// Redis aborts a manual failover after 5 s (`CLUSTER_MF_TIMEOUT`).
const MANUAL_FAILOVER_ATTEMPT: Duration = Duration::from_secs(6);

/// A local Redis Cluster: `masters * (1 + replicas)` `redis-server`
/// processes. Dropping it kills every process and removes its temporary
/// directory.
#[derive(Debug)]
pub struct RedisCluster {
    // Field order matters: nodes are dropped (killed) before the directory is removed.
    nodes: Vec<RedisNode>,
    cli: PathBuf,
    auth: Option<Credentials>,
    tls: Option<TlsMaterial>,
    workdir: Workdir,
}

impl RedisCluster {
    /// Start `masters` masters with `replicas_per_master` replicas each
    /// (for example `start(3, 1)` = 6 nodes) and wait until healthy.
    pub fn start(masters: usize, replicas_per_master: usize) -> Result<RedisCluster> {
        ClusterBuilder::default().masters(masters).replicas(replicas_per_master).start()
    }

    /// Configure a cluster before starting it.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Every node, in creation order (redis-cli decides which are masters;
    /// ask [`master_indices`](Self::master_indices)).
    pub fn nodes(&self) -> &[RedisNode] {
        &self.nodes
    }

    /// Node `i` (mutable, for kill / stop / restart).
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisNode {
        &mut self.nodes[i]
    }

    /// The base directory holding `node-0`, `node-1`, ... and `cluster-create.log`.
    pub fn dir(&self) -> &Path {
        self.workdir.path()
    }

    /// Every node's URL (clients should be seeded with all of them).
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::url).collect()
    }

    /// Every node's `127.0.0.1:PORT`.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::addr).collect()
    }

    /// Indices of the nodes that currently report `role:master` (asked live;
    /// killed, paused and unresponsive nodes are skipped).
    pub fn master_indices(&self) -> Result<Vec<usize>> {
        Ok(self.roles()?.into_iter().filter(|(_, r)| r == "master").map(|(i, _)| i).collect())
    }

    /// Indices of the nodes that currently report `role:slave` (asked live).
    pub fn replica_indices(&self) -> Result<Vec<usize>> {
        Ok(self.roles()?.into_iter().filter(|(_, r)| r == "slave").map(|(i, _)| i).collect())
    }

    fn roles(&self) -> Result<Vec<(usize, String)>> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(mut con) = node.probe()
                && let Ok(role) = probe::role(&mut con)
            {
                out.push((i, role));
            }
        }
        if out.is_empty() {
            return Err(ClusterError::new(ErrorKind::Redis, "no cluster node answered ROLE"));
        }
        Ok(out)
    }

    /// Index of the master currently serving `slot`, from `CLUSTER SLOTS` of the
    /// first live node that answers.
    pub fn node_for_slot(&self, slot: u16) -> Result<usize> {
        if slot >= SLOT_COUNT {
            return Err(ClusterError::invalid(format!("slot {slot} is out of range 0..16384")));
        }
        let ranges = self.live_slots()?;
        let range = ranges
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .ok_or_else(|| ClusterError::new(ErrorKind::Redis, format!("slot {slot} is not assigned")))?;
        self.index_of_port(range.master_port)
    }

    /// Index of the master currently serving `key`.
    pub fn node_for_key(&self, key: &[u8]) -> Result<usize> {
        self.node_for_slot(self.key_slot(key)?)
    }

    /// The hash slot of `key`, as Redis computes it (`CLUSTER KEYSLOT` on the first live node).
    pub fn key_slot(&self, key: &[u8]) -> Result<u16> {
        let mut last_err = None;
        for node in &self.nodes {
            let Some(mut con) = node.probe() else { continue };
            match redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query::<u16>(&mut con) {
                Ok(slot) => return Ok(slot),
                Err(e) => last_err = Some(e),
            }
        }
        Err(match last_err {
            Some(e) => ClusterError::new(ErrorKind::Redis, format!("CLUSTER KEYSLOT failed: {e}")),
            None => ClusterError::new(ErrorKind::Redis, "no cluster node answered CLUSTER KEYSLOT"),
        })
    }

    fn live_slots(&self) -> Result<Vec<SlotRange>> {
        let mut last_err = None;
        for node in &self.nodes {
            if let Some(mut con) = node.probe() {
                match probe::cluster_slots(&mut con) {
                    Ok(r) => return Ok(r),
                    Err(e) => last_err = Some(e),
                }
            }
        }
        Err(last_err.unwrap_or_else(|| ClusterError::new(ErrorKind::Redis, "no cluster node answered")))
    }

    fn index_of_port(&self, port: u16) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .ok_or_else(|| ClusterError::new(ErrorKind::Redis, format!("port {port} is not a node of this cluster")))
    }

    /// The cluster node id of node `i` (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> Result<String> {
        let node = self.node_checked(i)?;
        let mut con = node.connection()?;
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut con)
            .map_err(|e| ClusterError::redis(format!("CLUSTER MYID on {}", node.addr()), e))
    }

    fn node_checked(&self, i: usize) -> Result<&RedisNode> {
        self.nodes
            .get(i)
            .ok_or_else(|| ClusterError::invalid(format!("no node {i} (cluster has {})", self.nodes.len())))
    }

    /// Wait until the cluster is healthy: every running (not paused) node
    /// answers and reports `cluster_state:ok` with all 16384 slots ok, all
    /// of them agree on `CLUSTER SLOTS` (masters *and* replica lists, so
    /// every node knows every master/replica relationship), every slot is
    /// served by a live node, and every running replica has
    /// `master_link_status:up` and `master_sync_in_progress:0`.
    ///
    /// Right after a master dies the survivors still report `ok` until
    /// they notice (`cluster-node-timeout`); the live-owner check makes this
    /// wait for the failover instead of returning at once.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let problem = match self.health_problem() {
                None => return Ok(()),
                Some(p) => p,
            };
            if Instant::now() >= deadline {
                return Err(ClusterError::timeout(format!("cluster not healthy after {timeout:?}: {problem}")));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `None` when healthy, else a description of the first problem found.
    pub fn health_problem(&self) -> Option<String> {
        let mut live = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_paused() || node.pid().is_none() {
                continue;
            }
            match node.probe() {
                Some(con) => live.push((i, con)),
                None => return Some(format!("node {i} ({}) does not answer", node.addr())),
            }
        }
        if live.is_empty() {
            return Some("no node is running".into());
        }
        let live_ports: HashSet<u16> = live.iter().map(|(i, _)| self.nodes[*i].port()).collect();
        let mut reference: Option<(usize, Vec<SlotRange>)> = None;
        for (i, con) in &mut live {
            let addr = self.nodes[*i].addr();
            let info = match redis::cmd("CLUSTER").arg("INFO").query::<String>(con) {
                Ok(text) => probe::parse_info(&text),
                Err(e) => return Some(format!("CLUSTER INFO on {addr}: {e}")),
            };
            let field = |k: &str| info.get(k).map(String::as_str).unwrap_or("?");
            if field("cluster_state") != "ok"
                || field("cluster_slots_assigned") != "16384"
                || field("cluster_slots_ok") != "16384"
            {
                return Some(format!(
                    "{addr}: cluster_state:{} slots_assigned:{} slots_ok:{}",
                    field("cluster_state"),
                    field("cluster_slots_assigned"),
                    field("cluster_slots_ok")
                ));
            }
            let slots = match probe::cluster_slots(con) {
                Ok(s) => s,
                Err(e) => return Some(format!("{addr}: {e}")),
            };
            if let Some(p) = coverage_problem(&slots) {
                return Some(format!("{addr}: {p}"));
            }
            if let Some(r) = slots.iter().find(|r| !live_ports.contains(&r.master_port)) {
                return Some(format!(
                    "{addr}: slots {}-{} are served by 127.0.0.1:{}, which is down or paused",
                    r.start, r.end, r.master_port
                ));
            }
            match &reference {
                None => reference = Some((*i, slots)),
                Some((j, refslots)) if *refslots != slots => {
                    return Some(format!("{addr} and {} disagree about the slot map", self.nodes[*j].addr()));
                }
                Some(_) => {}
            }
            let repl = match probe::info(con, "replication") {
                Ok(r) => r,
                Err(e) => return Some(format!("INFO replication on {addr}: {e}")),
            };
            if repl.get("role").map(String::as_str) == Some("slave") {
                let link = repl.get("master_link_status").map(String::as_str).unwrap_or("?");
                let sync = repl.get("master_sync_in_progress").map(String::as_str).unwrap_or("?");
                if link != "up" || sync != "0" {
                    return Some(format!("replica {addr}: master_link_status:{link} master_sync_in_progress:{sync}"));
                }
            }
        }
        None
    }

    /// Promote replica `replica` with `CLUSTER FAILOVER` (a coordinated,
    /// lossless manual failover) and wait until it reports `role:master`.
    ///
    /// Redis gives a manual failover 5 s; shortly after cluster creation the
    /// master sometimes ignores the request (observed with Redis 7.0), so
    /// the command is re-sent every 6 s until `timeout`.
    pub fn manual_failover(&self, replica: usize, timeout: Duration) -> Result<()> {
        let node = self.node_checked(replica)?;
        let mut con = node.connection()?;
        let deadline = Instant::now() + timeout;
        loop {
            redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query::<()>(&mut con)
                .map_err(|e| ClusterError::redis(format!("CLUSTER FAILOVER on {}", node.addr()), e))?;
            let attempt_end = (Instant::now() + MANUAL_FAILOVER_ATTEMPT).min(deadline);
            while Instant::now() < attempt_end {
                if probe::role(&mut con).is_ok_and(|r| r == "master") {
                    return Ok(());
                }
                thread::sleep(Duration::from_millis(50));
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::timeout(format!(
                    "{} did not become master within {timeout:?}; recent log:\n{}",
                    node.addr(),
                    node.log_tail(15)
                )));
            }
            tracing::debug!(addr = %node.addr(), "manual failover timed out; retrying");
        }
    }

    /// Move `slots` hash slots from master `from` to master `to` with
    /// `redis-cli --cluster reshard` (keys are migrated online). Returns when
    /// redis-cli finishes.
    pub fn reshard(&self, from: usize, to: usize, slots: usize) -> Result<()> {
        let from_id = self.node_id(from)?;
        let to_id = self.node_id(to)?;
        let args: Vec<String> = vec![
            "--cluster".into(),
            "reshard".into(),
            self.node_checked(to)?.addr(),
            "--cluster-from".into(),
            from_id,
            "--cluster-to".into(),
            to_id,
            "--cluster-slots".into(),
            slots.to_string(),
            "--cluster-yes".into(),
        ];
        cli::run(
            &self.cli,
            &args,
            self.auth.as_ref(),
            self.tls.as_ref(),
            &self.dir().join("cluster-cli.log"),
            CLI_TIMEOUT,
        )
    }

    /// Leave every process running after this value is gone (for the CLI):
    /// the directory is kept and a pid file is written into it.
    pub fn detach(mut self) -> Result<DetachedCluster> {
        let dir = self.workdir.keep();
        let mut processes = Vec::new();
        for node in &mut self.nodes {
            // A secure (TLS) setup keeps its secrets in files of their own, not in the pid file.
            let (port, url) = (node.port(), if node.is_tls() { node.public_url() } else { node.url() });
            if let Some(pid) = node.release() {
                processes.push(DetachedProcess { pid, port, url });
            }
        }
        Detached::record(dir, processes)
    }

    fn create(&self, replicas: usize) -> Result<()> {
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.addrs());
        args.extend(["--cluster-replicas".into(), replicas.to_string(), "--cluster-yes".into()]);
        cli::run(
            &self.cli,
            &args,
            self.auth.as_ref(),
            self.tls.as_ref(),
            &self.dir().join("cluster-create.log"),
            CLI_TIMEOUT,
        )
    }
}

/// Checks that the sorted ranges cover 0..16384 exactly once.
fn coverage_problem(ranges: &[SlotRange]) -> Option<String> {
    let mut next: u32 = 0;
    for r in ranges {
        if u32::from(r.start) != next {
            return Some(format!("slot map has a gap or overlap at slot {next}"));
        }
        next = u32::from(r.end) + 1;
    }
    (next != u32::from(SLOT_COUNT)).then(|| format!("slots {next}..16383 are not assigned"))
}

/// Builder for [`RedisCluster`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.start()` is called"]
pub struct ClusterBuilder {
    common: CommonOptions,
    masters: usize,
    replicas: usize,
    base_port: Option<u16>,
    node_timeout_ms: u64,
    healthy_timeout: Duration,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            common: CommonOptions::default(),
            masters: 3,
            replicas: 1,
            base_port: None,
            node_timeout_ms: DEFAULT_NODE_TIMEOUT_MS,
            healthy_timeout: DEFAULT_HEALTHY_TIMEOUT,
        }
    }
}

impl ClusterBuilder {
    common_builder_methods!();

    /// Number of masters (at least 3, as redis-cli requires; default 3).
    pub fn masters(mut self, n: usize) -> Self {
        self.masters = n;
        self
    }

    /// Replicas per master (default 1).
    pub fn replicas(mut self, r: usize) -> Self {
        self.replicas = r;
        self
    }

    /// Node `i` listens on `port + i` with its bus on `port + i + 10000`
    /// (fails with `is_port_in_use` if any is taken). Default: free ports.
    pub fn base_port(mut self, port: u16) -> Self {
        self.base_port = Some(port);
        self
    }

    /// `cluster-node-timeout` in milliseconds (default 2000); failover starts
    /// roughly this long after a master dies.
    pub fn node_timeout_ms(mut self, ms: u64) -> Self {
        self.node_timeout_ms = ms;
        self
    }

    /// How long `start` waits for the new cluster to be healthy (default 30 s).
    pub fn healthy_timeout(mut self, timeout: Duration) -> Self {
        self.healthy_timeout = timeout;
        self
    }

    /// Start the nodes, run `redis-cli --cluster create`, and wait until healthy.
    pub fn start(self) -> Result<RedisCluster> {
        if self.masters < 3 {
            return Err(ClusterError::invalid(format!(
                "Redis Cluster needs at least 3 masters (redis-cli refuses fewer), got {}",
                self.masters
            )));
        }
        let total = self.masters * (1 + self.replicas);
        let ports: Vec<(u16, u16)> = match self.base_port {
            Some(base) => (0..total)
                .map(|i| {
                    let port = u32::from(base) + i as u32;
                    let bus = port + 10000;
                    match (u16::try_from(port), u16::try_from(bus)) {
                        (Ok(p), Ok(b)) if p != 0 => Ok((p, b)),
                        _ => Err(ClusterError::invalid(format!(
                            "base port {base} is too high for {total} nodes (bus ports are port+10000)"
                        ))),
                    }
                })
                .collect::<Result<_>>()?,
            None => vec![(0, 0); total],
        };
        let server = self.common.server_binary()?;
        let cli = self.common.cli_binary()?;
        self.common.prepare()?;
        let workdir = Workdir::new(self.common.dir.as_deref(), "strata-cluster-")?;
        let mut requests = Vec::with_capacity(total);
        for (i, (port, bus_port)) in ports.into_iter().enumerate() {
            let dir = workdir.path().join(format!("node-{i}"));
            ensure_fresh_node_dir(&dir)?;
            let mode = Mode::Cluster { bus_port, node_timeout_ms: self.node_timeout_ms };
            requests.push(NodeRequest {
                launch: self.common.data_launch(&server, dir, port, mode),
                fixed: self.base_port.is_some(),
            });
        }
        let nodes = launch_all(requests)?;
        let cluster =
            RedisCluster { nodes, cli, auth: self.common.auth.clone(), tls: self.common.tls.clone(), workdir };
        let started = Instant::now();
        cluster.create(self.replicas)?;
        tracing::debug!(elapsed = ?started.elapsed(), "redis-cli --cluster create finished");
        cluster.wait_healthy(self.healthy_timeout)?;
        tracing::debug!(elapsed = ?started.elapsed(), "cluster healthy");
        Ok(cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage() {
        let r = |start, end| SlotRange { start, end, master_port: 1, replica_ports: vec![] };
        assert!(coverage_problem(&[r(0, 5460), r(5461, 10922), r(10923, 16383)]).is_none());
        assert!(coverage_problem(&[r(0, 5460), r(5462, 16383)]).is_some());
        assert!(coverage_problem(&[r(0, 100)]).is_some());
        assert!(coverage_problem(&[]).is_some());
    }

    #[test]
    fn too_few_masters_is_invalid() {
        let err = RedisCluster::builder().masters(2).start().expect_err("must fail");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    }
}
