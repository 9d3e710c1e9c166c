//! `/metrics`: the Prometheus text format (0.0.4), written directly.
//!
//! Node families are named as redis_exporter names them, so its dashboards and alerts work;
//! every node series carries `addr` (`host:port`), and `redis_instance_info` carries `role`
//! (on that series only, so a failover does not start new series for every family). An
//! unreachable node has `redis_up 0` and no other node series.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use strata_ops::Role;
use strata_ops::inspect::{InspectReport, NamespaceStats};

use crate::poll::{NodeInfo, Snapshot};

/// `(name, type, help, INFO field)` of the families read straight from one INFO field.
const INFO_FAMILIES: &[(&str, &str, &str, &str)] = &[
    ("redis_uptime_in_seconds", "gauge", "Seconds since the node started.", "uptime_in_seconds"),
    ("redis_connected_clients", "gauge", "Client connections open.", "connected_clients"),
    ("redis_blocked_clients", "gauge", "Clients blocked on a blocking command.", "blocked_clients"),
    ("redis_memory_used_bytes", "gauge", "Memory allocated by Redis (used_memory).", "used_memory"),
    ("redis_memory_used_rss_bytes", "gauge", "Resident set size of the node process.", "used_memory_rss"),
    ("redis_memory_max_bytes", "gauge", "The maxmemory setting (0: no limit).", "maxmemory"),
    ("redis_mem_fragmentation_ratio", "gauge", "RSS divided by used memory.", "mem_fragmentation_ratio"),
    ("redis_keyspace_hits_total", "counter", "Key lookups that found the key.", "keyspace_hits"),
    ("redis_keyspace_misses_total", "counter", "Key lookups that found no key.", "keyspace_misses"),
    ("redis_evicted_keys_total", "counter", "Keys evicted because of maxmemory.", "evicted_keys"),
    ("redis_expired_keys_total", "counter", "Keys removed because their TTL ran out.", "expired_keys"),
    ("redis_commands_processed_total", "counter", "Commands processed.", "total_commands_processed"),
    ("redis_connections_received_total", "counter", "Connections accepted.", "total_connections_received"),
    ("redis_rejected_connections_total", "counter", "Connections refused (maxclients).", "rejected_connections"),
    ("redis_net_input_bytes_total", "counter", "Bytes read from the network.", "total_net_input_bytes"),
    ("redis_net_output_bytes_total", "counter", "Bytes written to the network.", "total_net_output_bytes"),
    ("redis_connected_slaves", "gauge", "Replicas connected to this node.", "connected_slaves"),
    ("redis_master_repl_offset", "gauge", "Replication offset of this node.", "master_repl_offset"),
];

/// `(name, type, help, CLUSTER INFO field)` of the cluster families.
const CLUSTER_FAMILIES: &[(&str, &str, &str, &str)] = &[
    (
        "redis_cluster_slots_assigned",
        "gauge",
        "Slots assigned, as this node sees the cluster.",
        "cluster_slots_assigned",
    ),
    ("redis_cluster_slots_fail", "gauge", "Slots served by failed nodes, as this node sees it.", "cluster_slots_fail"),
    ("redis_cluster_known_nodes", "gauge", "Nodes this node knows of.", "cluster_known_nodes"),
];

/// The families [`render`] writes.
#[cfg(test)]
pub(crate) fn family_names() -> Vec<&'static str> {
    let mut names = vec!["redis_up", "redis_instance_info"];
    names.extend(INFO_FAMILIES.iter().map(|f| f.0));
    names.extend(["redis_master_link_up", "redis_db_keys", "redis_db_keys_expiring", "redis_cluster_state"]);
    names.extend(CLUSTER_FAMILIES.iter().map(|f| f.0));
    names.extend(STRATA_FAMILIES.iter().map(|f| f.0));
    names
}

/// Strata's own families (the inspection of the keyspace and the exporter itself).
const STRATA_FAMILIES: &[(&str, &str, &str)] = &[
    ("strata_namespace_keys", "gauge", "Keys per namespace (last namespace scan)."),
    ("strata_namespace_memory_bytes", "gauge", "MEMORY USAGE summed per namespace (last namespace scan)."),
    ("strata_namespace_no_ttl_keys", "gauge", "Keys without a TTL per namespace (last namespace scan)."),
    ("strata_ttl_keys", "gauge", "Keys by remaining TTL bucket (last namespace scan)."),
    ("strata_namespace_scan_keys", "gauge", "Keys the last namespace scan measured."),
    (
        "strata_namespace_scan_exact",
        "gauge",
        "1 when the last namespace scan counted every key, 0 when it extrapolated.",
    ),
    ("strata_namespace_scan_success", "gauge", "1 when the last namespace scan succeeded."),
    (
        "strata_exporter_scan_lookups_total",
        "counter",
        "Keyspace lookups (PTTL) this exporter's scans added to a node's hits.",
    ),
    ("strata_exporter_scrape_duration_seconds", "gauge", "Time this scrape took to ask every node."),
];

/// What one scrape shows besides the snapshot.
#[derive(Debug, Default)]
pub(crate) struct Extras<'a> {
    /// The namespace scan (None: it failed or found no master).
    pub(crate) namespaces: Option<&'a InspectReport>,
    /// Lookups added by this exporter's scans, per node.
    pub(crate) scan_lookups: BTreeMap<String, u64>,
    pub(crate) scrape_seconds: f64,
}

/// The whole exposition.
pub(crate) fn render(snapshot: &Snapshot, extras: &Extras<'_>) -> String {
    let mut out = Text::default();
    out.family("redis_up", "gauge", "1 when the node answered this scrape, 0 otherwise.");
    for n in &snapshot.nodes {
        out.sample("redis_up", &[("addr", &n.node.addr)], if n.up() { 1.0 } else { 0.0 });
    }
    let up: Vec<(&str, Role, &NodeInfo)> = snapshot
        .nodes
        .iter()
        .filter_map(|n| Some((n.node.addr.as_str(), n.node.role, n.info.as_ref().ok()?)))
        .collect();

    out.family("redis_instance_info", "gauge", "Always 1; labels: role, version and mode of the node.");
    for (addr, role, info) in &up {
        let field = |name: &str| info.fields.get(name).cloned().unwrap_or_default();
        let role = match role {
            Role::Master => "master",
            Role::Replica => "replica",
        };
        let (version, mode) = (field("redis_version"), field("redis_mode"));
        out.sample(
            "redis_instance_info",
            &[("addr", addr), ("role", role), ("redis_version", &version), ("redis_mode", &mode)],
            1.0,
        );
    }
    for (name, kind, help, field) in INFO_FAMILIES {
        out.family(name, kind, help);
        for (addr, _, info) in &up {
            if let Some(v) = info.number(field) {
                out.sample(name, &[("addr", addr)], v);
            }
        }
    }
    // Replicas only, as redis_exporter: a master has no link to a master.
    out.family("redis_master_link_up", "gauge", "On a replica: 1 when its link to the master is up.");
    for (addr, _, info) in &up {
        if let Some(status) = info.fields.get("master_link_status") {
            out.sample("redis_master_link_up", &[("addr", addr)], if status == "up" { 1.0 } else { 0.0 });
        }
    }
    out.family("redis_db_keys", "gauge", "Keys per database.");
    for (addr, _, info) in &up {
        for db in &info.dbs {
            out.sample("redis_db_keys", &[("addr", addr), ("db", &db.db)], db.keys as f64);
        }
    }
    out.family("redis_db_keys_expiring", "gauge", "Keys with a TTL per database.");
    for (addr, _, info) in &up {
        for db in &info.dbs {
            out.sample("redis_db_keys_expiring", &[("addr", addr), ("db", &db.db)], db.expires as f64);
        }
    }
    out.family("redis_cluster_state", "gauge", "1 when the node says the cluster state is ok (cluster mode only).");
    for (addr, _, info) in &up {
        if let Some(state) = info.cluster.get("cluster_state") {
            out.sample("redis_cluster_state", &[("addr", addr)], if state == "ok" { 1.0 } else { 0.0 });
        }
    }
    for (name, kind, help, field) in CLUSTER_FAMILIES {
        out.family(name, kind, help);
        for (addr, _, info) in &up {
            if let Some(v) = info.cluster.get(*field).and_then(|v| v.parse::<f64>().ok()) {
                out.sample(name, &[("addr", addr)], v);
            }
        }
    }
    strata_families(&mut out, extras);
    out.0
}

fn strata_families(out: &mut Text, extras: &Extras<'_>) {
    let help = |name: &str| STRATA_FAMILIES.iter().find(|f| f.0 == name).map_or(("gauge", ""), |f| (f.1, f.2));
    let family = |out: &mut Text, name: &str| {
        let (kind, text) = help(name);
        out.family(name, kind, text);
    };
    let report = extras.namespaces;
    type Field = fn(&NamespaceStats) -> u64;
    let per_namespace: [(&str, Field); 3] = [
        ("strata_namespace_keys", |s| s.keys),
        ("strata_namespace_memory_bytes", |s| s.memory_bytes),
        ("strata_namespace_no_ttl_keys", |s| s.no_ttl_keys),
    ];
    for (name, value) in per_namespace {
        family(out, name);
        for (ns, stats) in report.iter().flat_map(|r| r.namespaces.iter()) {
            out.sample(name, &[("namespace", ns)], value(stats) as f64);
        }
    }
    family(out, "strata_ttl_keys");
    for (bucket, count) in report.iter().flat_map(|r| r.ttl_histogram.buckets()) {
        out.sample("strata_ttl_keys", &[("bucket", bucket)], count as f64);
    }
    family(out, "strata_namespace_scan_keys");
    if let Some(r) = report {
        out.sample("strata_namespace_scan_keys", &[], r.nodes.iter().map(|n| n.scanned_keys).sum::<u64>() as f64);
    }
    family(out, "strata_namespace_scan_exact");
    if let Some(r) = report {
        let exact = r.exact || r.nodes.iter().all(|n| n.scanned_keys >= n.keys);
        out.sample("strata_namespace_scan_exact", &[], if exact { 1.0 } else { 0.0 });
    }
    family(out, "strata_namespace_scan_success");
    out.sample("strata_namespace_scan_success", &[], if report.is_some() { 1.0 } else { 0.0 });
    family(out, "strata_exporter_scan_lookups_total");
    for (addr, n) in &extras.scan_lookups {
        out.sample("strata_exporter_scan_lookups_total", &[("addr", addr)], *n as f64);
    }
    family(out, "strata_exporter_scrape_duration_seconds");
    out.sample("strata_exporter_scrape_duration_seconds", &[], extras.scrape_seconds);
}

/// The text being written.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }
}

/// Label values come from the network (key names): `\`, `"` and newlines escaped as the format wants.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".to_owned() } else { "-Inf".to_owned() }
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_numbers_formatted() {
        let mut t = Text::default();
        t.sample("m", &[("namespace", "a\"b\\c\nd")], 1.5);
        t.sample("m", &[], f64::INFINITY);
        t.sample("m", &[("a", "x"), ("b", "y")], 3.0);
        assert_eq!(t.0, "m{namespace=\"a\\\"b\\\\c\\nd\"} 1.5\nm +Inf\nm{a=\"x\",b=\"y\"} 3\n");
    }

    #[test]
    fn family_names_are_unique() {
        let names = family_names();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }
}
