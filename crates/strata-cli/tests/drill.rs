//! `strata drill stampede` through the real binary, on a standalone server and a cluster.

use std::process::Command;

fn drill(url: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "drill",
            "stampede",
            "--url",
            url,
            "--processes",
            "4",
            "--callers",
            "1000",
            "--load-ms",
            "300",
            "--json",
        ])
        .output()
        .expect("run strata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn a_stampede_across_four_processes_loads_once() {
    let server = strata_cluster::RedisServer::start().expect("redis");
    let cluster = strata_cluster::RedisCluster::start(3, 1).expect("cluster");
    for url in [server.url(), cluster.seed_urls()[0].clone()] {
        let report = drill(&url);
        assert_eq!(report["loader_calls"], 1, "{report}");
        assert_eq!(report["callers_served"], 1000, "{report}");
        assert_eq!(report["caller_errors"], 0, "{report}");
        assert!(
            report["max_wait_ms"].as_u64().expect("max_wait_ms") >= 300,
            "callers waited for the one load: {report}"
        );
    }
    // The drill cleans up after itself.
    let mut con = server.connection().expect("connect");
    let left: Vec<String> = redis::cmd("KEYS").arg("*drill*").query(&mut con).expect("keys");
    assert!(left.is_empty(), "{left:?}");
}
