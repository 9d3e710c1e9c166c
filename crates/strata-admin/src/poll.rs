//! Asking every node how it is: the topology (rediscovered on every poll, so failovers and
//! reshards show), `INFO` of each node and, in a cluster, `CLUSTER INFO`.
//!
//! Blocking (the redis crate's sync client, with strata-ops' connect and read timeouts): call it
//! from `spawn_blocking`. Nodes are asked in parallel, one thread each, so one hung node costs
//! one timeout, not one per node. Connections are kept between polls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use strata_ops::{Deployment, Node, Role};

/// One database line of `INFO keyspace` (`db0:keys=3,expires=1,avg_ttl=0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbKeys {
    /// `db0`, as redis_exporter labels it.
    pub(crate) db: String,
    pub(crate) keys: u64,
    pub(crate) expires: u64,
}

/// What a reachable node said.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeInfo {
    /// Every `field:value` line of `INFO`.
    pub(crate) fields: HashMap<String, String>,
    pub(crate) dbs: Vec<DbKeys>,
    /// `CLUSTER INFO` fields (cluster mode only).
    pub(crate) cluster: HashMap<String, String>,
}

impl NodeInfo {
    /// A numeric INFO field (Redis writes some as floats, e.g. `mem_fragmentation_ratio`).
    pub(crate) fn number(&self, field: &str) -> Option<f64> {
        self.fields.get(field)?.parse().ok()
    }

    /// An integer INFO field.
    pub(crate) fn integer(&self, field: &str) -> Option<u64> {
        self.fields.get(field)?.parse().ok()
    }

    /// Keys over every database.
    pub(crate) fn keys(&self) -> u64 {
        self.dbs.iter().map(|d| d.keys).sum()
    }
}

/// One node of the topology, and what it said (or why it could not be asked).
#[derive(Debug, Clone)]
pub(crate) struct NodeReport {
    pub(crate) node: Node,
    pub(crate) info: Result<NodeInfo, String>,
}

impl NodeReport {
    pub(crate) fn up(&self) -> bool {
        self.info.is_ok()
    }
}

/// The whole deployment at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) cluster: bool,
    /// `ok`, `fail` (a reachable node says so) or `unknown` (no node answered); None when standalone.
    pub(crate) cluster_state: Option<String>,
    pub(crate) nodes: Vec<NodeReport>,
    pub(crate) taken: SystemTime,
}

impl Snapshot {
    pub(crate) fn nodes_up(&self) -> usize {
        self.nodes.iter().filter(|n| n.up()).count()
    }

    /// Every node answered and, in a cluster, the cluster state is `ok`.
    pub(crate) fn healthy(&self) -> bool {
        self.nodes_up() == self.nodes.len() && self.cluster_state.as_deref().is_none_or(|s| s == "ok")
    }

    /// The cluster node id of the node at `addr`.
    pub(crate) fn id_of(&self, addr: &str) -> Option<&str> {
        self.nodes.iter().find(|n| n.node.addr == addr)?.node.id.as_deref()
    }

    /// Reachable masters (the nodes whose keyspace counters count the reads).
    pub(crate) fn masters(&self) -> impl Iterator<Item = (&Node, &NodeInfo)> {
        self.nodes.iter().filter(|n| n.node.role == Role::Master).filter_map(|n| Some((&n.node, n.info.as_ref().ok()?)))
    }
}

/// Polls a deployment; shared by the sampler and the handlers.
pub(crate) struct Poller {
    deployment: Mutex<Deployment>,
    connections: Mutex<HashMap<String, redis::Connection>>,
}

impl Poller {
    pub(crate) fn new(deployment: Deployment) -> Self {
        Self { deployment: Mutex::new(deployment), connections: Mutex::new(HashMap::new()) }
    }

    /// The topology as last discovered.
    pub(crate) fn deployment(&self) -> Deployment {
        self.deployment.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rediscovers the topology, then asks every node.
    pub(crate) fn poll(&self) -> Snapshot {
        let deployment = self.refresh();
        let infos: Vec<Result<NodeInfo, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = deployment
                .nodes
                .iter()
                .map(|node| {
                    let deployment = &deployment;
                    scope.spawn(move || self.node_info(deployment, &node.addr))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("the polling thread panicked".to_owned())))
                .collect()
        });
        let nodes: Vec<NodeReport> =
            deployment.nodes.iter().cloned().zip(infos).map(|(node, info)| NodeReport { node, info }).collect();
        let cluster_state = deployment.cluster.then(|| {
            let states: Vec<&str> = nodes
                .iter()
                .filter_map(|n| n.info.as_ref().ok()?.cluster.get("cluster_state").map(String::as_str))
                .collect();
            match states.iter().find(|s| **s != "ok") {
                Some(bad) => (*bad).to_owned(),
                None if states.is_empty() => "unknown".to_owned(),
                None => "ok".to_owned(),
            }
        });
        Snapshot { cluster: deployment.cluster, cluster_state, nodes, taken: SystemTime::now() }
    }

    /// The topology from the first node that answers, the last known one if none does.
    fn refresh(&self) -> Deployment {
        let current = self.deployment();
        for node in &current.nodes {
            let url = format!("redis://{}/{}", node.addr, current.db());
            if let Ok(found) = Deployment::discover(&url, current.credentials()) {
                *self.deployment.lock().unwrap_or_else(|p| p.into_inner()) = found.clone();
                return found;
            }
        }
        current
    }

    fn node_info(&self, deployment: &Deployment, addr: &str) -> Result<NodeInfo, String> {
        let kept = self.connections.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
        // A kept connection may have died with a restarted node: one retry on a fresh one.
        let (con, info) = match kept.map(|mut con| ask(&mut con, deployment.cluster).map(|info| (con, info))) {
            Some(Ok(found)) => found,
            _ => {
                let mut con = deployment.probe(addr).map_err(|e| e.to_string())?;
                let info = ask(&mut con, deployment.cluster).map_err(|e| format!("{addr}: {e}"))?;
                (con, info)
            }
        };
        // When two polls overlap, the last one back keeps its connection.
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_owned(), con);
        Ok(info)
    }
}

fn ask(con: &mut redis::Connection, cluster: bool) -> redis::RedisResult<NodeInfo> {
    let text: String = redis::cmd("INFO").query(con)?;
    let mut info = parse_info(&text);
    if cluster {
        let text: String = redis::cmd("CLUSTER").arg("INFO").query(con)?;
        info.cluster = parse_fields(&text);
    }
    Ok(info)
}

fn parse_fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// `INFO` text: its fields, and the keyspace lines as [`DbKeys`].
pub(crate) fn parse_info(text: &str) -> NodeInfo {
    let fields = parse_fields(text);
    let mut dbs: Vec<DbKeys> = fields
        .iter()
        .filter(|(k, _)| k.strip_prefix("db").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        .map(|(k, v)| {
            let part = |name: &str| {
                v.split(',').find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok()).unwrap_or(0)
            };
            DbKeys { db: k.clone(), keys: part("keys"), expires: part("expires") }
        })
        .collect();
    dbs.sort_by(|a, b| a.db.cmp(&b.db));
    NodeInfo { fields, dbs, cluster: HashMap::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_keyspace_are_parsed() {
        let text = "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:42\r\n\r\n# Memory\r\nused_memory:1048576\r\n\
                    mem_fragmentation_ratio:1.25\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\ndb12:keys=7,expires=0,avg_ttl=0\r\n";
        let info = parse_info(text);
        assert_eq!(info.integer("uptime_in_seconds"), Some(42));
        assert_eq!(info.number("mem_fragmentation_ratio"), Some(1.25));
        assert_eq!(info.fields.get("redis_version").map(String::as_str), Some("7.0.15"));
        assert_eq!(
            info.dbs,
            vec![DbKeys { db: "db0".into(), keys: 3, expires: 1 }, DbKeys { db: "db12".into(), keys: 7, expires: 0 }]
        );
        assert_eq!(info.keys(), 10);
        assert_eq!(info.integer("absent"), None);
    }
}
