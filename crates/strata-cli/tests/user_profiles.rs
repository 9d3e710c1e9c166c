//! `strata bench --scenario user-profiles` through the real binary: short runs over SQLite (on a
//! 3+3 cluster) and PostgreSQL (on a standalone server, when `initdb` exists), checking the
//! figures issue 6 names, the peers and the report files.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// The runs load the machine: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs user-profiles briefly against `urls`; the JSON printed on stdout, after checking it.
fn user_profiles(out: &Path, urls: &[String], extra: &[&str]) -> Value {
    let o = out.to_str().expect("utf-8 path");
    let mut args = vec!["bench", "--json", "--out", o, "--scenario", "user-profiles"];
    args.extend(["--duration", "6s", "--warmup", "1s", "--users", "5000", "--concurrency", "4"]);
    for url in urls {
        args.extend(["--url", url.as_str()]);
    }
    args.extend(extra);
    let output = Command::new(env!("CARGO_BIN_EXE_strata")).args(&args).env("STRATA_LOG", "off").output().expect("run");
    assert!(output.status.success(), "strata {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let doc: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout is one JSON document: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(doc["scenario"], "user-profiles");

    for field in [
        "p50_ms_cached",
        "p99_ms_cached",
        "p50_ms_direct",
        "p99_ms_direct",
        "hit_ratio",
        "latency_reduction",
        "throughput_cached",
        "throughput_direct",
    ] {
        let v = doc[field].as_f64().unwrap_or_else(|| panic!("{field} is a number: {doc}"));
        assert!(v.is_finite() && v >= -1e12, "{field}: {v}");
    }
    let reduction = doc["latency_reduction"].as_f64().expect("number");
    assert!(reduction <= 1.0, "1 - p50 ratio is at most 1: {reduction}");
    let p50 = |name: &str| doc["variants"][name]["p50_ms"].as_f64().expect("p50");
    let expected = 1.0 - p50("strata") / p50("direct");
    // The JSON rounds p50s to the microsecond: compare with a relative tolerance.
    assert!(
        (reduction - expected).abs() <= 0.01 * expected.abs().max(1.0),
        "latency_reduction {reduction} is 1 - p50 strata / p50 direct ({expected})"
    );
    let hit = doc["hit_ratio"].as_f64().expect("number");
    assert!((0.0..=1.0).contains(&hit), "hit ratio {hit}");
    // 5,000 users under Zipf(0.99): the popular profiles repeat within a second.
    assert!(hit > 0.2, "Strata serves repeated reads from the cache: {hit}");
    assert_eq!(doc["variants"]["direct"]["hit_ratio"], 0.0, "the database alone has no hits");

    const PEERS: [&str; 4] = ["naive_redis_rs", "cached_crate", "redis_rs_cache_aio", "two_tier_moka"];
    for name in ["direct", "strata"].into_iter().chain(PEERS) {
        let v = &doc["variants"][name];
        assert!(v["reads"].as_u64().expect("reads") > 0 && v["writes"].as_u64().expect("writes") > 0, "{name}: {v}");
        assert_eq!(v["errors"], 0, "{name}: {v}");
        assert!(v["source_queries"].as_u64().expect("queries") > 0, "{name}: {v}");
        assert!(v["stale_reads"].is_u64(), "{name} counts stale reads: {v}");
    }
    assert_eq!(doc["variants"]["direct"]["stale_reads"], 0, "the database alone is never stale");
    for peer in PEERS {
        let p = &doc["peers"][peer];
        let hit = p["hit_ratio"].as_f64().expect("peer hit ratio");
        assert!(hit > 0.2 && hit <= 1.0, "{peer} caches too: {p}");
        assert!(p["strata_p50_ratio"].as_f64().expect("ratio") > 0.0, "{peer}: {p}");
        assert!(p["strata_throughput_ratio"].as_f64().expect("ratio") > 0.0, "{peer}: {p}");
        assert_eq!(p["stale_reads"], doc["variants"][peer]["stale_reads"], "{peer}: {p}");
    }
    // The fastest peer with no stale read, when there is one.
    let best = &doc["best_coherent_peer"];
    if !best.is_null() {
        let name = best["name"].as_str().expect("best peer name");
        assert_eq!(doc["peers"][name]["stale_reads"], 0, "{best}");
        assert!(best["strata_throughput_ratio"].as_f64().expect("ratio") > 0.0, "{best}");
    }

    let json = doc["files"]["json"].as_str().expect("files.json");
    let on_disk: Value = serde_json::from_str(&std::fs::read_to_string(json).expect("the JSON file")).expect("JSON");
    assert_eq!(on_disk, doc);
    let page = std::fs::read_to_string(doc["files"]["html"].as_str().expect("files.html")).expect("the HTML file");
    assert!(page.contains("Read latency") && page.contains("hit ratio over time"), "CDF and timeline");
    assert!(page.contains("cached crate AsyncRedisCache") && page.contains("<svg"), "every variant on the page");
    assert!(page.contains("redis-rs cache-aio") && page.contains("two-tier: moka"), "the new peers on the page");
    assert!(page.contains("stale reads"), "the stale-reads column");
    doc
}

#[test]
fn user_profiles_on_sqlite_and_a_cluster() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = strata_cluster::RedisCluster::start(3, 1).expect("cluster");
    let out = tempfile::tempdir().expect("tempdir");
    let doc = user_profiles(out.path(), &cluster.seed_urls(), &[]);
    assert!(doc["database"].as_str().expect("database").starts_with("SQLite file"), "{doc}");
    assert_eq!(doc["users"], 5000);
    assert_eq!(doc["db_latency_ms"], 0.0, "no artificial latency unless asked");
}

#[test]
fn user_profiles_on_postgres() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (url, ()) = match std::env::var("STRATA_TEST_POSTGRES_URL") {
        Ok(url) => (Some(url), ()),
        Err(_) if !Path::new(PG_BIN).join("initdb").exists() => {
            strata_cluster::skip_test(&format!(
                "user_profiles_on_postgres: no STRATA_TEST_POSTGRES_URL and no {PG_BIN}/initdb (apt-get install -y postgresql-15)"
            ));
            return;
        }
        // `--database postgres`: strata starts a throwaway server itself and stops it afterwards.
        Err(_) => (None, ()),
    };
    let redis = strata_cluster::RedisServer::start().expect("redis-server");
    let out = tempfile::tempdir().expect("tempdir");
    let database = match &url {
        Some(url) => ["--database-url", url.as_str()],
        None => ["--database", "postgres"],
    };
    let doc = user_profiles(out.path(), &[redis.url()], &[&database[..], &["--db-latency-ms", "0.5"]].concat());
    assert!(doc["database"].as_str().expect("database").starts_with("PostgreSQL "), "{doc}");
    assert_eq!(doc["db_latency_ms"], 0.5);
}
