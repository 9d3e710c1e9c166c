//! `strata drill coherence` through the real binary, on a standalone server and a cluster.

use std::process::{Command, Output};

fn drill(url: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["drill", "coherence", "--url", url, "--instances", "3", "--writes", "200", "--json"])
        .args(extra)
        .output()
        .expect("run strata")
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn every_reader_sees_every_write_and_the_drill_cleans_up() {
    let server = strata_cluster::RedisServer::start().expect("redis");
    let cluster = strata_cluster::RedisCluster::start(3, 1).expect("cluster");
    for url in [server.url(), cluster.seed_urls()[0].clone()] {
        let out = drill(&url, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r = report(&out);
        assert_eq!(r["writes"], 200, "{r}");
        assert_eq!(r["plain_client_writes"], 100, "{r}");
        assert_eq!(r["stale_reads_after_delay"], 0, "{r}");
        assert!(r["reader_l1_hits"].as_u64().expect("hits") > 0, "readers served from L1: {r}");
        for field in ["invalidation_delay_ms_p50", "invalidation_delay_ms_p99"] {
            assert!(r[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {r}");
        }
    }
    let mut con = server.connection().expect("connect");
    let left: Vec<String> = redis::cmd("KEYS").arg("*drill*").query(&mut con).expect("keys");
    assert!(left.is_empty(), "{left:?}");
}

/// Without invalidation the readers keep their L1 copies: the drill must notice and fail.
#[test]
fn the_drill_fails_when_invalidation_is_off() {
    let server = strata_cluster::RedisServer::start().expect("redis");
    let out = drill(&server.url(), &["--without-invalidation"]);
    assert!(!out.status.success(), "the drill must fail");
    let r = report(&out);
    assert_eq!(r["stale_reads_after_delay"], 400, "2 readers x 200 writes, all stale: {r}");
}
