//! The JSON API, /healthz and /metrics against a seeded 3+3 cluster, then with a node killed.

use std::collections::BTreeSet;

use redis::Commands;
use serde_json::Value;

use crate::common::{TestResult, cluster, config, get, get_json, serve, wait_for};
use crate::prom_text::{deploy_queries, exporter_metrics, families, promql_metrics, promtool, sample};

fn audit_line(i: usize) -> String {
    format!(r#"{{"time":"t{i}","principal":"app","action":"set","target":"app:v1:user:{i}","result":"ok"}}"#)
}

/// The hit ratios of the history samples that saw reads.
async fn ratios(addr: std::net::SocketAddr) -> Vec<f64> {
    let history = get_json(addr, "/api/history", 200).await;
    history["samples"].as_array().expect("samples").iter().filter_map(|s| s["hit_ratio"].as_f64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_report_the_seeded_cluster_and_a_dead_node() -> TestResult {
    let mut cluster = cluster();
    let mut raw = redis::cluster::ClusterClient::new(cluster.seed_urls())?.get_connection()?;
    for i in 0..20 {
        let _: () = raw.set_ex(format!("app:v1:user:{i}"), "x", 30)?;
    }
    for i in 0..10 {
        let _: () = raw.set(format!("app:v1:order:{i}"), "y")?;
    }
    let dir = tempfile::tempdir()?;
    let audit = dir.path().join("audit.log");
    std::fs::write(&audit, (0..5).map(|i| audit_line(i) + "\n").collect::<String>())?;
    let mut config = config(&cluster);
    config.audit_log = Some(audit);
    let server = serve(config).await;
    let addr = server.addr;

    let (status, page) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");

    let health = get_json(addr, "/healthz", 200).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!((health["nodes_up"].as_u64(), health["nodes_total"].as_u64()), (Some(6), Some(6)), "{health}");
    assert_eq!(health["cluster_state"], "ok");

    // Every node's view of the roles converges shortly after the cluster is created.
    let topology = wait_for("3 masters and 3 replicas in /api/topology", || async move {
        let t = get_json(addr, "/api/topology", 200).await;
        let roles: Vec<&str> = t["nodes"].as_array()?.iter().filter_map(|n| n["role"].as_str()).collect();
        let masters = roles.iter().filter(|r| **r == "master").count();
        (masters == 3 && roles.len() == 6).then_some(t.clone())
    })
    .await;
    assert_eq!(topology["mode"], "cluster");
    assert_eq!(topology["cluster_state"], "ok");
    let nodes = topology["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 6, "{topology}");
    let masters: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "master").collect();
    assert_eq!(masters.len(), 3, "{topology}");
    let slots: u64 = masters
        .iter()
        .flat_map(|m| m["slots"].as_array().expect("slots").iter())
        .map(|r| r[1].as_u64().expect("end") - r[0].as_u64().expect("start") + 1)
        .sum();
    assert_eq!(slots, 16384);
    let master_ids: BTreeSet<&str> = masters.iter().filter_map(|m| m["id"].as_str()).collect();
    for replica in nodes.iter().filter(|n| n["role"] == "replica") {
        assert!(master_ids.contains(replica["master_id"].as_str().expect("master_id")), "{replica}");
        assert!(replica["slots"].as_array().is_some_and(Vec::is_empty));
    }
    for node in nodes {
        assert_eq!(node["up"], true, "{node}");
        assert!(node["memory_used_bytes"].as_u64().is_some_and(|m| m > 0), "{node}");
        assert!(node["maxmemory_bytes"].is_u64() && node["connected_clients"].is_u64() && node["ops_per_sec"].is_u64());
    }
    assert_eq!(masters.iter().filter_map(|m| m["keys"].as_u64()).sum::<u64>(), 30);

    let ns = get_json(addr, "/api/namespaces", 200).await;
    assert_eq!(ns["scanned_keys"], 30, "{ns}");
    assert_eq!(ns["sampled"], false, "every master scanned in full: {ns}");
    let row =
        |name: &str| ns["namespaces"].as_array().expect("namespaces").iter().find(|r| r["namespace"] == name).cloned();
    let user = row("app:v1:user").expect("app:v1:user");
    assert_eq!((user["keys"].as_u64(), user["no_ttl_keys"].as_u64()), (Some(20), Some(0)), "{ns}");
    assert!(user["memory_bytes"].as_u64().is_some_and(|m| m > 0));
    let order = row("app:v1:order").expect("app:v1:order");
    assert_eq!((order["keys"].as_u64(), order["no_ttl_keys"].as_u64()), (Some(10), Some(10)), "{ns}");
    let bucket = |name: &str| {
        ns["ttl_histogram"]
            .as_array()
            .expect("histogram")
            .iter()
            .find(|b| b["bucket"] == name)
            .map(|b| b["count"].clone())
    };
    assert_eq!((bucket("<1m"), bucket("none")), (Some(20.into()), Some(10.into())), "{ns}");

    let events = get_json(addr, "/api/audit?limit=3", 200).await;
    let targets: Vec<&str> =
        events["events"].as_array().expect("events").iter().filter_map(|e| e["target"].as_str()).collect();
    assert_eq!(targets, ["app:v1:user:4", "app:v1:user:3", "app:v1:user:2"], "newest first");

    // Only hits so far (the namespace scan's PTTLs are hits too), then only misses.
    for i in 0..20 {
        let _: Option<String> = raw.get(format!("app:v1:user:{i}"))?;
    }
    wait_for("a history sample with hit ratio 1", || async move { ratios(addr).await.contains(&1.0).then_some(()) })
        .await;
    assert!(ratios(addr).await.iter().all(|r| *r == 1.0), "no miss happened yet");
    for i in 0..20 {
        let _: Option<String> = raw.get(format!("app:v1:absent:{i}"))?;
    }
    wait_for("a history sample with hit ratio 0", || async move { ratios(addr).await.contains(&0.0).then_some(()) })
        .await;
    let history = get_json(addr, "/api/history", 200).await;
    assert_eq!(history["interval_s"], 0.2);
    let last = history["samples"].as_array().and_then(|s| s.last().cloned()).expect("a sample");
    assert_eq!(last["memory_used_bytes"].as_object().map(|m| m.len()), Some(6), "{last}");
    assert!(last["t_unix_ms"].as_u64().is_some_and(|t| t > 1_700_000_000_000));

    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics rejected /metrics:\n{out}\n{text}");
    std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("strata-serve-metrics.prom"), &text)?;
    let found: BTreeSet<String> = families(&text).into_iter().collect();
    let has_sample =
        |name: &str| text.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
    for name in exporter_metrics() {
        assert!(
            found.contains(&name) && has_sample(&name),
            "/metrics lacks {name} (deploy/prometheus/exporter-metrics.txt)"
        );
    }
    for (source, expr) in deploy_queries() {
        for name in promql_metrics(&expr).into_iter().filter(|n| n.starts_with("redis_")) {
            assert!(has_sample(&name), "{source} queries {name}, absent from a real /metrics scrape");
        }
    }
    for name in &found {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
    }
    for node in cluster.nodes() {
        assert_eq!(sample(&text, &format!("redis_up{{addr=\"{}\"}}", node.addr())), Some(1.0), "{text}");
    }
    assert_eq!(sample(&text, r#"strata_namespace_keys{namespace="app:v1:user"}"#), Some(20.0), "{text}");
    assert_eq!(sample(&text, r#"strata_ttl_keys{bucket="none"}"#), Some(10.0));
    let masters_keys: f64 = masters
        .iter()
        .filter_map(|m| sample(&text, &format!("redis_db_keys{{addr=\"{}\",db=\"db0\"}}", m["addr"].as_str()?)))
        .sum();
    assert_eq!(masters_keys, 30.0);

    // A dead replica: degraded, reported as down, and /metrics still answers.
    let victim = cluster.replica_indices()?[0];
    let dead = cluster.nodes()[victim].addr();
    cluster.node_mut(victim).kill()?;
    let body = wait_for("/healthz to answer 503", || async move {
        let (status, body) = get(addr, "/healthz").await;
        (status == 503).then_some(body)
    })
    .await;
    let health: Value = serde_json::from_str(&body)?;
    assert_eq!(health["status"], "degraded");
    assert_eq!((health["nodes_up"].as_u64(), health["nodes_total"].as_u64()), (Some(5), Some(6)), "{health}");
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&text, &format!("redis_up{{addr=\"{dead}\"}}")), Some(0.0), "{text}");
    let topology = get_json(addr, "/api/topology", 200).await;
    let node = topology["nodes"].as_array().and_then(|n| n.iter().find(|n| n["addr"] == dead.as_str()).cloned());
    assert_eq!(node.map(|n| n["up"].clone()), Some(Value::Bool(false)), "{topology}");
    Ok(())
}
