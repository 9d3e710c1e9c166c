//! `strata bench --scenario stampede|hot-key|cold-start|eviction|scale|invalidation-scale|http` through the real binary,
//! short runs against one local cluster, checking the JSON figures and the report files.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// The scenarios load the machine: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs a scenario with `--json --out <out>`; returns the document printed on stdout after
/// checking the files it names.
fn bench(out: &Path, args: &[&str]) -> Value {
    let o = out.to_str().expect("utf-8 path");
    let output = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([&["bench", "--json", "--out", o], args].concat())
        .env("STRATA_LOG", "off")
        .output()
        .expect("run strata");
    assert!(output.status.success(), "strata bench {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let doc: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout is one JSON document: {}", String::from_utf8_lossy(&output.stdout)));
    let json = doc["files"]["json"].as_str().expect("files.json");
    let html = doc["files"]["html"].as_str().expect("files.html");
    assert!(json.starts_with(o) && html.starts_with(o), "{json} {html}");
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(json).expect("the JSON file")).expect("JSON");
    assert_eq!(on_disk, doc, "the file holds what stdout printed");
    let page = std::fs::read_to_string(html).expect("the HTML file");
    assert!(page.contains("<svg") && !page.contains("<script"), "a self-contained page with charts");
    assert_eq!(doc["scenario"], args[1]);
    assert!(doc["cores"].as_u64().expect("cores") >= 1);
    doc
}

fn ratio(v: &Value) -> f64 {
    let r = v.as_f64().unwrap_or_else(|| panic!("a number: {v}"));
    assert!((0.0..=1.0).contains(&r), "a ratio: {r}");
    r
}

#[test]
fn every_scenario_runs_and_reports() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = strata_cluster::RedisCluster::start(3, 1).expect("cluster");
    let out = tempfile::tempdir().expect("tempdir");
    let seeds = cluster.seed_urls();
    let urls: Vec<&str> = seeds.iter().flat_map(|u| ["--url", u.as_str()]).collect();
    let run = |scenario: &str, extra: &[&str]| {
        bench(out.path(), &[&["--scenario", scenario, "--duration", "3s"], &urls[..], extra].concat())
    };

    let s = run("stampede", &["--concurrency", "500"]);
    assert_eq!(s["callers"], 500);
    assert!(s["strata"]["rounds"].as_u64().expect("rounds") >= 1);
    assert_eq!(s["strata"]["loader_calls_per_expiry"], 1.0, "one load per expiry with Strata: {s}");
    assert_eq!(s["strata"]["max_loader_calls_per_expiry"], 1, "{s}");
    assert_eq!(s["strata"]["errors"], 0, "{s}");
    assert!(s["naive"]["max_loader_calls_per_expiry"].as_u64().expect("naive") > 1, "naive cache-aside stampedes: {s}");
    assert!(
        s["strata"]["p99_ms"].as_f64().expect("p99") >= s["load_ms"].as_f64().expect("load"),
        "callers waited for the load"
    );

    // One worker: with more, in-process single-flight coalesces concurrent reads of the hot
    // key, which blurs the per-node picture this checks.
    let h = run("hot-key", &["--concurrency", "1"]);
    let variants = h["variants"].as_array().expect("variants");
    assert_eq!(variants.len(), 3, "{h}");
    assert!(ratio(&h["hot_key_share"]) > 0.4, "one key takes most reads: {h}");
    for v in variants {
        assert!(v["ops"].as_u64().expect("ops") > 0 && v["errors"] == 0, "{v}");
        let shares = v["node_share"].as_array().expect("shares");
        assert_eq!(shares.len(), 3, "one share per master: {v}");
        let sum: f64 = shares.iter().map(ratio).sum();
        assert!((sum - 1.0).abs() < 0.01, "{v}");
    }
    let share = |name: &str| ratio(&variants.iter().find(|v| v["name"] == name).expect(name)["max_node_share"]);
    assert!(share("no-l1") > 0.5, "without L1 the hot key's node takes most commands: {h}");
    assert!(share("no-l1-copies") < share("no-l1"), "hot-key copies spread the load: {h}");

    let c = run("cold-start", &["--concurrency", "8"]);
    let variants = c["variants"].as_array().expect("variants");
    let (cold, warmed) = (&variants[0], &variants[1]);
    assert_eq!((cold["name"].as_str(), warmed["name"].as_str()), (Some("cold"), Some("warmed")));
    assert_eq!(cold["warm_queries"], 0);
    assert_eq!(warmed["warm_queries"], 10, "5000 keys in batches of 500: {c}");
    assert!(ratio(&warmed["hit_ratio"]) > ratio(&cold["hit_ratio"]), "warming pays: {c}");
    assert!(
        cold["source_queries_in_window"].as_u64().expect("queries")
            > warmed["source_queries_in_window"].as_u64().expect("queries"),
        "{c}"
    );

    let e = run("eviction", &["--allow-flush"]);
    let policies = e["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 2);
    assert_eq!(policies[0]["policy"], "allkeys-lru");
    assert_eq!(policies[1]["policy"], "allkeys-lfu");
    assert_eq!(policies[0]["requests"], policies[1]["requests"], "the same trace for both: {e}");
    for p in policies {
        ratio(&p["hit_ratio"]);
        assert!(p["evicted_keys"].as_u64().expect("evicted") > 0, "the working set exceeds memory: {p}");
        assert_eq!(p["errors"], 0, "{p}");
    }
    // The memory settings are restored.
    let mut con = cluster.nodes()[cluster.master_indices().expect("masters")[0]].connection().expect("connect");
    let policy: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query(&mut con).expect("config");
    let maxmemory: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory").query(&mut con).expect("config");
    assert_eq!((policy[1].as_str(), maxmemory[1].as_str()), ("noeviction", "0"));

    let r = run("scale", &["--rate", "200", "--concurrency", "8"]);
    let (base, doubled) = (&r["base"], &r["doubled"]);
    assert_eq!(base["offered_rate"], 200.0);
    assert_eq!(doubled["offered_rate"], 400.0);
    let (b, d) = (base["ops"].as_u64().expect("ops"), doubled["ops"].as_u64().expect("ops"));
    assert!(b > 0 && d > b, "twice the offered load, same time: {r}");
    assert!(base["errors"] == 0 && doubled["errors"] == 0, "{r}");
    assert!(r["p99_ratio"].as_f64().expect("ratio") > 0.0);

    // Each of 3 cache processes hears of the deletes of its own keys only (a third of them), and
    // of no internal key; without tracking, of nothing.
    let i = run("invalidation-scale", &["--processes", "3", "--write-rate", "150"]);
    let (on, off) = (&i["tracking"], &i["without_tracking"]);
    assert_eq!(i["share_per_s"], 50.0, "{i}");
    let heard: Vec<f64> =
        on["messages_per_s"].as_array().expect("per process").iter().map(|m| m.as_f64().expect("rate")).collect();
    assert_eq!(heard.len(), 3, "{i}");
    assert!(heard.iter().all(|&m| m > 0.0), "every process heard of its keys: {i}");
    assert!(on["max_over_share"].as_f64().expect("ratio") <= 1.2, "no process heard of others' keys: {i}");
    assert_eq!(on["internal_messages"], 0, "{i}");
    assert!(off["messages_per_s"].as_array().expect("per process").iter().all(|m| m == 0.0), "{i}");
    for phase in [on, off] {
        assert_eq!(phase["caller_errors"], 0, "{i}");
        assert!(phase["writes_per_s"].as_f64().expect("writes") > 100.0, "the writer kept its rate: {i}");
        assert!(phase["redis_cpu_us_per_write"].as_f64().expect("cpu") > 0.0, "{i}");
    }

    // The origin alone, then behind strata edge: the edge answers most requests from the
    // cache, and the origin sees each page about once.
    let h = run("http", &["--concurrency", "8"]);
    let variants = h["variants"].as_array().expect("variants");
    assert_eq!(variants.len(), 2, "{h}");
    let (alone, edge) = (&variants[0], &variants[1]);
    assert_eq!((alone["name"].as_str(), edge["name"].as_str()), (Some("origin alone"), Some("strata edge")));
    for v in variants {
        assert!(v["requests"].as_u64().expect("requests") > 0 && v["errors"] == 0, "{v}");
    }
    assert_eq!(alone["hit_ratio"], 0.0, "{h}");
    assert!(ratio(&edge["hit_ratio"]) > 0.5, "{h}");
    // About once per page of the 1000 (a follower whose lookup failed under load asks again).
    assert!(edge["origin_requests"].as_u64().expect("origin") <= 1050, "{h}");
    assert_eq!(alone["origin_requests"], alone["requests"], "{h}");
}

#[test]
fn without_url_a_local_cluster_is_started_and_eviction_refuses_url_without_consent() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().expect("tempdir");
    let s = bench(out.path(), &["--scenario", "stampede", "--duration", "1s", "--concurrency", "50"]);
    assert_eq!(s["layout"], "cluster", "the new scenarios default to a cluster");
    assert_eq!(s["strata"]["max_loader_calls_per_expiry"], 1, "{s}");

    // One URL of a cluster node is enough: the rest is discovered.
    let cluster = strata_cluster::RedisCluster::start(3, 1).expect("cluster");
    let seed = cluster.seed_urls()[0].clone();
    let s = bench(out.path(), &["--scenario", "stampede", "--duration", "1s", "--concurrency", "50", "--url", &seed]);
    assert_eq!(s["layout"], "cluster", "{s}");
    assert_eq!(s["strata"]["errors"], 0, "{s}");

    let refused = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["bench", "--scenario", "eviction", "--url", "redis://127.0.0.1:1"])
        .output()
        .expect("run strata");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--allow-flush"));
}

/// `invalidation-wait`: both variants delete every key without an error, and the figures say
/// what one replica's confirmation costs.
#[test]
fn invalidation_wait_reports_both_variants() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = strata_cluster::RedisCluster::start(3, 1).expect("cluster");
    let out = tempfile::tempdir().expect("tempdir");
    let o = out.path().to_str().expect("utf-8 path");
    let seeds = cluster.seed_urls();
    let urls: Vec<&str> = seeds.iter().flat_map(|u| ["--url", u.as_str()]).collect();
    let output = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(
            [&["bench", "--json", "--out", o, "--scenario", "invalidation-wait", "--rounds", "1"], &urls[..]].concat(),
        )
        .env("STRATA_LOG", "off")
        .output()
        .expect("run strata");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let doc: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(doc["scenario"], "invalidation-wait");
    let variants = doc["variants"].as_array().expect("variants");
    assert_eq!(variants.iter().map(|v| v["replicas"].as_u64().expect("replicas")).collect::<Vec<_>>(), [0, 1]);
    for v in variants {
        assert_eq!(v["errors"], 0, "{v}");
        assert_eq!(v["latency"]["samples"], 2_000, "{v}");
        assert!(v["per_second"][0].as_f64().expect("rate") > 0.0, "{v}");
    }
}
