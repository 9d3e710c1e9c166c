//! `strata drill consistency` through the real binary: a short run of every fault on a
//! standalone server and on a 3+3 cluster (the drill starts both itself), and a run that must
//! fail because invalidation is off.

use std::process::{Command, Output};
use std::sync::Mutex;

/// One drill at a time: each starts its own Redis and three worker processes, and the machine
/// may have two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn drill(args: &[&str]) -> (Output, serde_json::Value) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["drill", "consistency", "--duration", "4s", "--processes", "3", "--json"])
        .args(args)
        .output()
        .expect("run strata");
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON document ({e}); stderr:\n{}", String::from_utf8_lossy(&out.stderr)));
    (out, report)
}

fn assert_coherent(topology: &str, fault: &str) {
    let (out, r) = drill(&["--topology", topology, "--fault", fault]);
    assert!(out.status.success(), "{topology} {fault}: {r}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r["fault"], fault, "{r}");
    assert_eq!(r["topology"], topology, "{r}");
    assert_eq!(r["stale_reads"], 0, "{topology} {fault}: {r}");
    assert_eq!(r["caller_errors"], 0, "{topology} {fault}: {r}");
    for field in ["ops", "reads", "writes", "l1_hits"] {
        assert!(r[field].as_u64().is_some_and(|n| n > 100), "{topology} {fault}: {field}: {r}");
    }
    assert!(r["visible_after_write_ms"]["p50"].is_number(), "{r}");
}

#[test]
fn standalone_every_fault_reads_nothing_stale() {
    for fault in ["none", "hang", "restart", "kill-tracking", "flushall"] {
        assert_coherent("standalone", fault);
    }
}

#[test]
fn cluster_without_process_faults_reads_nothing_stale() {
    for fault in ["none", "kill-tracking", "flushall"] {
        assert_coherent("cluster", fault);
    }
}

#[test]
fn cluster_failover_and_hang_read_nothing_stale() {
    for fault in ["failover", "hang"] {
        assert_coherent("cluster", fault);
    }
}

#[test]
fn cluster_restart_and_reshard_read_nothing_stale() {
    for fault in ["restart", "reshard"] {
        assert_coherent("cluster", fault);
    }
}

/// The checker must be able to fail: without invalidation the other processes keep their L1
/// copies after writes.
#[test]
fn the_drill_fails_when_invalidation_is_off() {
    let (out, r) = drill(&["--topology", "standalone", "--without-invalidation"]);
    assert!(!out.status.success(), "the drill must fail: {r}");
    assert!(r["stale_reads"].as_u64().is_some_and(|n| n > 0), "{r}");
    assert!(r["max_staleness_ms"].as_f64().is_some_and(|ms| ms > r["bound_ms"].as_f64().unwrap_or(0.0)), "{r}");
}

#[test]
fn process_faults_need_a_setup_the_drill_starts() {
    let server = strata_cluster::RedisServer::start().expect("redis");
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["drill", "consistency", "--url", &server.url(), "--fault", "hang", "--json"])
        .output()
        .expect("run strata");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--topology"), "{err}");
}
