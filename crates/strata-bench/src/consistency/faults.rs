//! The faults of `strata drill consistency`, injected into a setup the drill started itself
//! (standalone server or 3+3 cluster, through the test-support processes of `strata-cluster`),
//! or, for the faults that need no process control, into any deployment given by URL.
//! Each blocks until the setup is healthy again.

use std::time::{Duration, Instant};

use anyhow::Context;
use strata_cluster::{RedisCluster, RedisNode, RedisServer};

/// Which fault a consistency run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault.
    None,
    /// SIGKILL of the master of slot 0; its replica takes over; the old master rejoins.
    Failover,
    /// SIGSTOP of the master of slot 0 until its replica is promoted, then SIGCONT
    /// (standalone: stopped for 3 s).
    Hang,
    /// SIGKILL of the master of slot 0 (the server) and a restart from its append-only file.
    Restart,
    /// Move 2,000 hash slots from one master to another under load.
    Reshard,
    /// `CLIENT KILL` of every tracking connection (three times, 1 s apart).
    KillTracking,
    /// `FLUSHALL` on every master (twice, 2 s apart).
    Flushall,
}

impl Fault {
    /// Every fault, in the order the acceptance runs them.
    pub const ALL: [Fault; 7] = [
        Fault::None,
        Fault::Failover,
        Fault::Hang,
        Fault::Restart,
        Fault::Reshard,
        Fault::KillTracking,
        Fault::Flushall,
    ];

    /// The `--fault` name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Failover => "failover",
            Fault::Hang => "hang",
            Fault::Restart => "restart",
            Fault::Reshard => "reshard",
            Fault::KillTracking => "kill-tracking",
            Fault::Flushall => "flushall",
        }
    }

    /// The fault named `name`.
    pub fn parse(name: &str) -> anyhow::Result<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name).with_context(|| {
            let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault {name:?}: one of {}", names.join(", "))
        })
    }

    /// Whether the fault needs a cluster.
    pub fn needs_cluster(self) -> bool {
        matches!(self, Fault::Failover | Fault::Reshard)
    }

    /// Whether the fault stops or starts processes (so the drill must own them).
    pub fn needs_processes(self) -> bool {
        matches!(self, Fault::Failover | Fault::Hang | Fault::Restart | Fault::Reshard)
    }
}

/// The Redis the drill runs on.
#[derive(Debug)]
pub enum Setup {
    /// A standalone server the drill started.
    Standalone(RedisServer),
    /// A cluster the drill started.
    Cluster(RedisCluster),
    /// A deployment given by URL (one URL: standalone; more: cluster seeds).
    External(Vec<String>),
}

impl Setup {
    /// Starts a setup of `topology` (`standalone` or `cluster`, 3 masters + 3 replicas, node
    /// timeout 1 s), with AOF when `fault` restarts a node.
    pub fn start(topology: &str, fault: Fault) -> anyhow::Result<Setup> {
        let aof = fault == Fault::Restart;
        Ok(match topology {
            "standalone" => {
                anyhow::ensure!(!fault.needs_cluster(), "fault {} needs --topology cluster", fault.name());
                Setup::Standalone(RedisServer::builder().appendonly(aof).start()?)
            }
            "cluster" => Setup::Cluster(
                RedisCluster::builder().masters(3).replicas(1).node_timeout_ms(1000).appendonly(aof).start()?,
            ),
            other => anyhow::bail!("unknown topology {other:?}: standalone or cluster"),
        })
    }

    /// `standalone` or `cluster`.
    pub fn topology(&self) -> &'static str {
        match self {
            Setup::Standalone(_) => "standalone",
            Setup::Cluster(_) => "cluster",
            Setup::External(urls) if urls.len() == 1 => "standalone",
            Setup::External(_) => "cluster",
        }
    }

    /// The URLs a client is given.
    pub fn urls(&self) -> Vec<String> {
        match self {
            Setup::Standalone(s) => vec![s.url()],
            Setup::Cluster(c) => c.seed_urls(),
            Setup::External(urls) => urls.clone(),
        }
    }

    /// Injects `fault` and waits until the setup is healthy again. On a deployment given by URL
    /// only loopback nodes are touched: a fault drill never flushes or disconnects anything
    /// beyond this machine.
    pub fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        if fault != Fault::None {
            for url in self.master_urls()? {
                anyhow::ensure!(
                    is_loopback(&url)?,
                    "fault {} touches only nodes on this machine (loopback); {} is not",
                    fault.name(),
                    split_userinfo(&url).0
                );
            }
        }
        match fault {
            Fault::None => Ok(()),
            Fault::KillTracking => {
                for round in 0..3 {
                    if round > 0 {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    let killed = self.kill_tracking()?;
                    anyhow::ensure!(killed > 0, "no tracking connection found to kill");
                }
                Ok(())
            }
            Fault::Flushall => {
                for round in 0..2 {
                    if round > 0 {
                        std::thread::sleep(Duration::from_secs(2));
                    }
                    for url in self.master_urls()? {
                        let mut con = connect(&url)?;
                        redis::cmd("FLUSHALL").query::<()>(&mut con)?;
                    }
                }
                Ok(())
            }
            _ => match self {
                Setup::Standalone(server) => standalone_fault(server.node_mut(), fault),
                Setup::Cluster(cluster) => cluster_fault(cluster, fault),
                Setup::External(_) => {
                    anyhow::bail!("fault {} needs a setup the drill starts itself (--topology)", fault.name())
                }
            },
        }
    }

    /// The URLs of the masters now (cluster: from CLUSTER NODES, failed ones left out).
    pub(crate) fn master_urls(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Setup::Standalone(s) => Ok(vec![s.url()]),
            Setup::Cluster(c) => Ok(c.master_indices()?.into_iter().map(|i| c.nodes()[i].url()).collect()),
            Setup::External(urls) if urls.len() == 1 => Ok(urls.clone()),
            Setup::External(urls) => {
                let mut con = connect(&urls[0])?;
                let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con)?;
                // The credentials of the URL given (an ACL user) for every master.
                let userinfo = split_userinfo(&urls[0]).1.map(|info| format!("{info}@")).unwrap_or_default();
                Ok(text
                    .lines()
                    .filter(|l| {
                        l.split_whitespace().nth(2).is_some_and(|f| f.contains("master") && !f.contains("fail"))
                    })
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .map(|addr| format!("redis://{userinfo}{}", addr.split('@').next().unwrap_or_default()))
                    .collect())
            }
        }
    }

    /// `CLIENT KILL` of every connection with tracking on (flag `t`), on every master.
    fn kill_tracking(&self) -> anyhow::Result<usize> {
        let mut killed = 0;
        for url in self.master_urls()? {
            let mut con = connect(&url)?;
            let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con)?;
            for line in list.lines() {
                let field = |name: &str| {
                    line.split_whitespace().find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                };
                if field("flags").is_some_and(|f| f.contains('t'))
                    && let Some(id) = field("id")
                {
                    let _: redis::RedisResult<i64> = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query(&mut con);
                    killed += 1;
                }
            }
        }
        Ok(killed)
    }
}

/// How long a hung standalone server stays stopped: longer than the heartbeat timeout.
const STANDALONE_HANG: Duration = Duration::from_secs(3);

fn standalone_fault(node: &mut RedisNode, fault: Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Hang => {
            node.pause()?;
            std::thread::sleep(STANDALONE_HANG);
            node.resume()?;
        }
        Fault::Restart => {
            node.kill()?;
            node.restart()?;
        }
        other => anyhow::bail!("fault {} needs a cluster", other.name()),
    }
    Ok(())
}

/// Slots moved by the reshard fault.
const MOVED_SLOTS: usize = 2000;

fn cluster_fault(cluster: &mut RedisCluster, fault: Fault) -> anyhow::Result<()> {
    let healthy = Duration::from_secs(60);
    let victim = cluster.node_for_slot(0)?;
    match fault {
        Fault::Failover => {
            cluster.node_mut(victim).kill()?;
            cluster.wait_healthy(healthy).context("the replica did not take over")?;
            cluster.node_mut(victim).restart()?;
        }
        Fault::Hang => {
            cluster.node_mut(victim).pause()?;
            let paused = Instant::now();
            let promoted = cluster.wait_healthy(healthy);
            // Whatever happened, the node must not stay stopped.
            cluster.node_mut(victim).resume()?;
            promoted.with_context(|| format!("no replica took over within {:?} of the hang", paused.elapsed()))?;
        }
        Fault::Restart => {
            cluster.node_mut(victim).kill()?;
            cluster.node_mut(victim).restart()?;
        }
        Fault::Reshard => {
            let to = cluster.master_indices()?.into_iter().find(|&i| i != victim).context("a second master")?;
            cluster.reshard(victim, to, MOVED_SLOTS)?;
        }
        other => anyhow::bail!("fault {} is not a process fault", other.name()),
    }
    cluster.wait_healthy(healthy).context("the cluster did not recover")?;
    Ok(())
}

/// `url` without its `user:password@`, and that `user:password` (if any).
pub(crate) fn split_userinfo(url: &str) -> (String, Option<&str>) {
    match url
        .split_once("://")
        .and_then(|(scheme, rest)| rest.rsplit_once('@').map(|(info, host)| (scheme, info, host)))
    {
        Some((scheme, info, host)) => (format!("{scheme}://{host}"), Some(info)),
        None => (url.to_owned(), None),
    }
}

/// Whether `url` names a node on this machine.
fn is_loopback(url: &str) -> anyhow::Result<bool> {
    Ok(match redis::Client::open(url)?.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
            host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => true,
    })
}

fn connect(url: &str) -> anyhow::Result<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(con)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_stay_on_this_machine() -> anyhow::Result<()> {
        for url in ["redis://127.0.0.1:7000", "redis://localhost:6379", "redis://[::1]:6379", "rediss://127.0.0.2:1"] {
            assert!(is_loopback(url)?, "{url}");
        }
        for url in ["redis://10.0.0.5:6379", "redis://cache.internal:6379", "redis://192.168.1.2:7000"] {
            assert!(!is_loopback(url)?, "{url}");
        }
        assert_eq!(Fault::parse("kill-tracking")?, Fault::KillTracking);
        assert!(Fault::parse("meteor").is_err());
        Ok(())
    }
}
