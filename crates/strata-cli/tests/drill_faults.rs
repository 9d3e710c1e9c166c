//! `strata drill failover|outage|restart|reshard` through the real binary, each on a cluster the test
//! starts with `strata up`, asserting the acceptance conditions on the JSON report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

/// The drills load the machine and time recovery: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).args(args).env("STRATA_LOG", "off").output().expect("run strata")
}

/// A `strata up` cluster (1 s node timeout) in a fresh directory; `strata down --purge` on drop.
struct Up {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Up {
    fn start(extra: &[&str]) -> Up {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cluster");
        let d = dir.to_str().expect("utf-8 path");
        let out = strata(&[&["up", "--dir", d, "--node-timeout-ms", "1000", "--json"], extra].concat());
        assert!(out.status.success(), "strata up: {}", String::from_utf8_lossy(&out.stderr));
        Up { dir, _tmp: tmp }
    }

    fn drill(&self, args: &[&str]) -> (Output, Value) {
        let d = self.dir.to_str().expect("utf-8 path");
        let out = strata(&[&["drill"], args, &["--dir", d, "--json"]].concat());
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out, report)
    }

    /// Keys the drill left behind (it must remove its own).
    fn drill_keys(&self) -> Vec<String> {
        let pids = strata_cluster::Detached::load(&self.dir).expect("pid file");
        let mut left = Vec::new();
        for url in pids.urls() {
            let mut con = redis::Client::open(url).and_then(|c| c.get_connection()).expect("connect");
            let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).expect("ROLE");
            if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                left.extend(redis::cmd("KEYS").arg("strata-drill*").query::<Vec<String>>(&mut con).expect("KEYS"));
            }
        }
        left
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap_or_default();
        let _ = strata(&["down", "--dir", d, "--purge"]);
    }
}

/// Processes working inside `dir`: after `strata down` there must be none, so the drill must
/// have recorded the nodes it started again.
fn processes_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .collect()
}

fn f64_of(r: &Value, field: &str) -> f64 {
    r[field].as_f64().unwrap_or_else(|| panic!("{field} missing: {r}"))
}

fn u64_of(r: &Value, field: &str) -> u64 {
    r[field].as_u64().unwrap_or_else(|| panic!("{field} missing: {r}"))
}

/// The source kept moving (L1 on, a writer deleting through its own cache) and no read was
/// older than a write completed more than the bound before it.
fn assert_no_stale_read(r: &Value) {
    assert!(u64_of(r, "writes") > 100, "{r}");
    assert_eq!(u64_of(r, "stale_reads"), 0, "{r}");
    assert_eq!(f64_of(r, "bound_ms"), 700.0, "{r}");
}

#[test]
fn failover_no_caller_errors_and_l2_back_within_node_timeout_plus_2s() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let up = Up::start(&[]);
    let (out, r) = up.drill(&["failover", "--duration", "12s"]);
    assert!(out.status.success(), "{r} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(u64_of(&r, "caller_errors"), 0, "{r}");
    assert_no_stale_read(&r);
    assert!(u64_of(&r, "calls") > 1000, "{r}");
    assert!(u64_of(&r, "fallback_calls") > 0, "the kill must be felt: {r}");
    assert_eq!(f64_of(&r, "node_timeout_s"), 1.0, "{r}");
    let unavailable = f64_of(&r, "l2_unavailable_s");
    assert!(unavailable > 0.0 && unavailable <= 1.0 + 2.0, "{r}");
    for phase in ["before", "during", "after"] {
        assert!(f64_of(&r, &format!("p99_ms_{phase}")) > 0.0, "{phase}: {r}");
    }
    assert!(up.drill_keys().is_empty(), "{:?}", up.drill_keys());
    // The killed master was started again and recorded: `strata down` stops every process.
    let dir = up.dir.canonicalize().expect("dir");
    drop(up);
    assert!(processes_in(&dir).is_empty(), "left running: {:?}", processes_in(&dir));
}

#[test]
fn outage_every_call_served_by_the_loader_and_the_breaker_opens() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let up = Up::start(&[]);
    let (_, r) = up.drill(&["outage", "--duration", "12s", "--outage-for", "3s"]);
    assert_eq!(u64_of(&r, "caller_errors"), 0, "{r}");
    assert_no_stale_read(&r);
    assert!(u64_of(&r, "breaker_opens") > 0, "{r}");
    assert!(u64_of(&r, "fallback_calls") > 0, "{r}");
    assert!(f64_of(&r, "l2_unavailable_s") >= 3.0, "every node was down for 3 s: {r}");
    let dir = up.dir.canonicalize().expect("dir");
    drop(up);
    assert!(processes_in(&dir).is_empty(), "left running: {:?}", processes_in(&dir));
}

/// After every node was down, the breakers close again once the cluster is back (the library
/// drops a cluster connection that lost every node and starts over from the seeds).
#[test]
fn outage_breakers_close_after_the_restart() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let up = Up::start(&[]);
    let (out, r) = up.drill(&["outage", "--duration", "12s", "--outage-for", "3s"]);
    assert!(out.status.success(), "{r}");
    assert_eq!(r["breakers_closed_at_end"], true, "{r}");
    assert!(f64_of(&r, "p99_ms_after") > 0.0, "calls were made after recovery: {r}");
}

#[test]
fn restart_with_aof_keeps_every_key_acknowledged_a_second_before_the_kill() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let up = Up::start(&["--persistence", "aof"]);
    let (out, r) = up.drill(&["restart", "--duration", "12s"]);
    assert!(out.status.success(), "{r} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(u64_of(&r, "caller_errors"), 0, "{r}");
    assert_no_stale_read(&r);
    assert!(u64_of(&r, "keys_checked") > 100, "{r}");
    assert_eq!(u64_of(&r, "keys_lost"), 0, "{r}");
    assert!(up.drill_keys().is_empty(), "{:?}", up.drill_keys());
}

#[test]
fn restart_refuses_a_cluster_without_persistence() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let up = Up::start(&[]);
    let d = up.dir.to_str().expect("utf-8 path");
    let out = strata(&["drill", "restart", "--dir", d, "--duration", "3s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--persistence aof"), "{out:?}");
}

#[test]
fn reshard_to_a_new_master_loses_no_key_and_no_call() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let up = Up::start(&[]);
    let (out, r) = up.drill(&["reshard", "--duration", "10s", "--keys", "500"]);
    assert!(out.status.success(), "{r} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(u64_of(&r, "caller_errors"), 0, "{r}");
    assert_no_stale_read(&r);
    assert_eq!(u64_of(&r, "keys_checked"), 250, "the even keys (the writer deletes odd ones): {r}");
    assert_eq!(u64_of(&r, "keys_lost"), 0, "{r}");
    // The new master holds slots now, and it is recorded: `strata down` stops it too.
    let pids = strata_cluster::Detached::load(&up.dir).expect("pid file");
    assert_eq!(pids.processes().len(), 7, "{pids:?}");
    let new = pids.processes().last().expect("new node").url.clone();
    let mut con = redis::Client::open(new).and_then(|c| c.get_connection()).expect("connect");
    let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).expect("SLOTS");
    let port = pids.processes().last().expect("new node").port;
    let owned: i64 = slots
        .iter()
        .filter(
            |r| matches!(r.get(2), Some(redis::Value::Array(m)) if m.get(1) == Some(&redis::Value::Int(port.into()))),
        )
        .map(|r| match (&r[0], &r[1]) {
            (redis::Value::Int(a), redis::Value::Int(b)) => b - a + 1,
            _ => 0,
        })
        .sum();
    assert_eq!(owned, 4096, "{slots:?}");
    assert!(up.drill_keys().is_empty(), "{:?}", up.drill_keys());
    let dir = up.dir.canonicalize().expect("dir");
    drop(up);
    assert!(processes_in(&dir).is_empty(), "left running: {:?}", processes_in(&dir));
}

/// With --url the drill finds the nodes itself and may only kill: failover works, the
/// drills that start nodes again refuse.
#[test]
fn failover_by_url_on_a_cluster_this_test_owns() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cluster =
        strata_cluster::RedisCluster::builder().masters(3).replicas(1).node_timeout_ms(1000).start().expect("cluster");
    let url = cluster.seed_urls()[0].clone();
    let out = strata(&["drill", "outage", "--url", &url, "--duration", "3s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dir"), "{out:?}");
    let before = cluster.master_indices().expect("masters");
    let out = strata(&["drill", "failover", "--url", &url, "--duration", "9s", "--json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(out.status.success(), "{r}");
    assert_eq!(u64_of(&r, "caller_errors"), 0, "{r}");
    assert!(u64_of(&r, "fallback_calls") > 0, "{r}");
    let unavailable = f64_of(&r, "l2_unavailable_s");
    assert!(unavailable > 0.0 && unavailable <= 1.0 + 2.0, "{r}");
    // One master was killed and not started again: a former replica serves its slots.
    let after = cluster.master_indices().expect("masters");
    assert_eq!(after.len(), 3, "{after:?}");
    assert_ne!(before, after);
}
