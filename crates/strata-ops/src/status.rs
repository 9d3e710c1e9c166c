//! `strata status` and `strata check`: every node's role, slots, keys, memory, load and links,
//! and whether the cluster as a whole is sound.

use serde::Serialize;

use crate::error::Result;
use crate::target::{Deployment, Role};

/// Number of hash slots in a Redis Cluster.
const SLOTS: u32 = 16384;

/// One node's status.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// `host:port`.
    pub addr: String,
    /// `master` or `replica`.
    pub role: Role,
    /// For a replica, its master's address.
    pub master_addr: Option<String>,
    /// Slot ranges served (inclusive).
    pub slots: Vec<(u16, u16)>,
    /// Keys in db 0 (None when the node did not answer).
    pub keys: Option<u64>,
    /// `used_memory` (None when the node did not answer).
    pub used_memory_bytes: Option<u64>,
    /// `maxmemory` (0: unlimited).
    pub maxmemory_bytes: Option<u64>,
    /// `instantaneous_ops_per_sec`.
    pub ops_per_sec: Option<u64>,
    /// Cluster bus link as seen by the node asked, or `up`/`down` for a standalone server.
    pub link_state: String,
    /// Whether this node answered.
    pub reachable: bool,
    /// The error when it did not.
    pub error: Option<String>,
}

/// The whole deployment's status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `ok` or `fail` from CLUSTER INFO; `standalone` for a non-cluster server.
    pub cluster_state: String,
    /// Every node, sorted by address.
    pub nodes: Vec<NodeStatus>,
}

/// Asks every node of `deployment` for its figures. Unreachable nodes are reported, not errors.
pub fn status(deployment: &Deployment) -> Result<Status> {
    let mut nodes = Vec::new();
    let mut cluster_state = if deployment.cluster { None } else { Some("standalone".to_owned()) };
    for node in &deployment.nodes {
        let mut row = NodeStatus {
            addr: node.addr.clone(),
            role: node.role,
            master_addr: node.master_addr.clone(),
            slots: node.slots.clone(),
            keys: None,
            used_memory_bytes: None,
            maxmemory_bytes: None,
            ops_per_sec: None,
            link_state: node.link_state.clone(),
            reachable: false,
            error: None,
        };
        match deployment.probe(&node.addr).and_then(|mut con| {
            let info: String =
                redis::cmd("INFO").arg("all").query(&mut con).map_err(|e| crate::OpsError::redis(&node.addr, &e))?;
            let cluster_info: Option<String> =
                if deployment.cluster { redis::cmd("CLUSTER").arg("INFO").query(&mut con).ok() } else { None };
            Ok((info, cluster_info))
        }) {
            Ok((info, cluster_info)) => {
                row.reachable = true;
                row.keys = Some(db0_keys(&info));
                row.used_memory_bytes = info_field(&info, "used_memory");
                row.maxmemory_bytes = info_field(&info, "maxmemory");
                row.ops_per_sec = info_field(&info, "instantaneous_ops_per_sec");
                if !deployment.cluster {
                    row.link_state = "up".into();
                }
                if cluster_state.is_none() {
                    cluster_state = cluster_info.as_deref().and_then(|i| info_text(i, "cluster_state"));
                }
            }
            Err(err) => {
                row.error = Some(err.to_string());
                if !deployment.cluster {
                    row.link_state = "down".into();
                }
            }
        }
        nodes.push(row);
    }
    Ok(Status { cluster_state: cluster_state.unwrap_or_else(|| "unknown".into()), nodes })
}

/// Problems found by [`check`]; empty when the cluster is sound.
pub fn check(deployment: &Deployment) -> Result<Vec<String>> {
    deployment.require_cluster("check")?;
    let mut problems = Vec::new();
    let mut covered = vec![false; SLOTS as usize];
    for node in deployment.masters() {
        for &(a, b) in &node.slots {
            for s in a..=b.min((SLOTS - 1) as u16) {
                if std::mem::replace(&mut covered[s as usize], true) {
                    problems.push(format!("slot {s} is claimed by more than one master"));
                }
            }
        }
    }
    let missing = covered.iter().filter(|c| !**c).count();
    if missing > 0 {
        problems.push(format!("{missing} of {SLOTS} slots are not served by any master"));
    }
    for node in &deployment.nodes {
        if !node.failure_flags.is_empty() {
            problems.push(format!("{} is flagged {}", node.addr, node.failure_flags.join(",")));
        }
        if node.link_state != "connected" {
            problems.push(format!("{} cluster bus link is {}", node.addr, node.link_state));
        }
    }
    let status = status(deployment)?;
    if status.cluster_state != "ok" {
        problems.push(format!("cluster_state is {}", status.cluster_state));
    }
    for node in status.nodes.iter().filter(|n| !n.reachable) {
        problems.push(format!("{} does not answer: {}", node.addr, node.error.as_deref().unwrap_or("?")));
    }
    for master in deployment.masters() {
        if !deployment.nodes.iter().any(|n| n.master_addr.as_deref() == Some(master.addr.as_str())) {
            problems.push(format!("master {} has no replica", master.addr));
        }
    }
    Ok(problems)
}

fn info_field(info: &str, name: &str) -> Option<u64> {
    info_text(info, name).and_then(|v| v.parse().ok())
}

fn info_text(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()))
}

/// `db0:keys=N,expires=..` → N (0 when db0 is empty and absent).
fn db0_keys(info: &str) -> u64 {
    info_text(info, "db0").and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("keys=")?.parse().ok())).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_info_fields() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1K\r\nmaxmemory:0\r\n# Keyspace\r\ndb0:keys=42,expires=3,avg_ttl=0\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1024));
        assert_eq!(info_field(info, "maxmemory"), Some(0));
        assert_eq!(db0_keys(info), 42);
        assert_eq!(db0_keys("# Keyspace\r\n"), 0);
    }
}
