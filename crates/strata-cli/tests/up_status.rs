//! `strata up`, `status`, `check`, `down` end to end through the real binary, and the bad-input
//! cases of the operator CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).args(args).output().expect("run strata")
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "strata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is exactly one JSON document")
}

/// A failure: exit code 1 and exactly one line on stderr, starting with `strata:`.
fn one_line_error(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("strata: "), "{err}");
    err
}

/// Processes working in `dir` (the nodes `strata up` started there run in their node
/// directories; Redis rewrites its command line, so the working directory is what identifies them).
fn processes_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .collect()
}

/// Stops and removes a `strata up` directory even when the test panics.
struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = strata(&["down", "--dir", &self.0.to_string_lossy(), "--purge"]);
    }
}

#[test]
fn up_status_check_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let d = dir.to_string_lossy().to_string();
    let _guard = Down(dir.clone());

    let up = json(&strata(&["up", "--dir", &d, "--node-timeout-ms", "1500", "--json"]));
    let urls: Vec<&str> = up["urls"].as_array().expect("urls").iter().filter_map(Value::as_str).collect();
    assert_eq!(urls.len(), 6);
    assert_eq!(up["already_running"], false);
    assert!(dir.join("node-0").join("redis.conf").exists(), "one generated redis.conf per node");

    // redis-cli's own check agrees.
    let seed = urls[0].trim_start_matches("redis://");
    let (host, port) = seed.rsplit_once(':').expect("host:port");
    let check = Command::new("redis-cli")
        .args(["--cluster", "check", &format!("{host}:{port}")])
        .output()
        .expect("redis-cli --cluster check");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("[OK] All 16384 slots covered."), "{text}");
    assert!(!text.contains("[ERR]"), "{text}");

    let status = json(&strata(&["status", "--dir", &d, "--json"]));
    assert_eq!(status["cluster_state"], "ok");
    let nodes = status["nodes"].as_array().expect("nodes");
    let masters: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "master").collect();
    let replicas: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "replica").collect();
    assert_eq!((masters.len(), replicas.len()), (3, 3), "{status}");
    let slots: u64 = masters
        .iter()
        .flat_map(|m| m["slots"].as_array().expect("slots").clone())
        .map(|r| r[1].as_u64().expect("end") - r[0].as_u64().expect("start") + 1)
        .sum();
    assert_eq!(slots, 16384);
    for n in nodes {
        assert!(n["addr"].is_string() && n["keys"].is_u64() && n["used_memory_bytes"].as_u64().expect("memory") > 0);
    }
    assert!(replicas.iter().all(|r| masters.iter().any(|m| m["addr"] == r["master_addr"])));
    // Also by URL, and in the human format.
    let by_url = strata(&["status", "--url", urls[3]]);
    assert!(by_url.status.success() && String::from_utf8_lossy(&by_url.stdout).contains("cluster state: ok"));
    assert!(strata(&["check", "--dir", &d]).status.success());

    // A second `up` on the same directory starts nothing.
    let again = json(&strata(&["up", "--dir", &d, "--json"]));
    assert_eq!(again["already_running"], true);
    assert_eq!(again["pids"], up["pids"]);
    assert_eq!(processes_in(&dir).len(), 6);

    let down = json(&strata(&["down", "--dir", &d, "--json"]));
    assert_eq!(down["stopped"].as_array().map(Vec::len), Some(6));
    assert!(processes_in(&dir).is_empty(), "every node stopped");
    assert!(dir.exists(), "data is kept without --purge");
    let err = one_line_error(&strata(&["up", "--dir", &d]));
    assert!(err.contains("--purge"), "{err}");
    assert!(strata(&["down", "--dir", &d, "--purge"]).status.success());
    assert!(!dir.exists());
}

#[test]
fn bad_input_gives_one_clear_line_and_leaves_nothing_running() {
    let tmp = tempfile::tempdir().expect("tempdir");

    // Port taken: nothing half-started stays up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = listener.local_addr().expect("addr").port().to_string();
    let dir = tmp.path().join("taken");
    let err = one_line_error(&strata(&["up", "--dir", &dir.to_string_lossy(), "--base-port", &taken]));
    assert!(err.contains(&taken) && err.to_lowercase().contains("in use"), "{err}");
    assert!(processes_in(&dir).is_empty(), "no node left running after a failed up");

    // A port taken in the middle of the range: the first nodes start, then the failure must
    // take them down again.
    let (base, blocker) = (20_000u16..60_000)
        .step_by(97)
        .find_map(|base| {
            let free = (0..6).filter(|i| *i != 3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
            let blocker = std::net::TcpListener::bind(("127.0.0.1", base + 3)).ok()?;
            free.then_some((base, blocker))
        })
        .expect("a usable port range");
    let dir = tmp.path().join("midway");
    let err = one_line_error(&strata(&["up", "--dir", &dir.to_string_lossy(), "--base-port", &base.to_string()]));
    assert!(err.contains(&(base + 3).to_string()), "{err}");
    assert!(processes_in(&dir).is_empty(), "nodes started before the failure are stopped");
    drop(blocker);

    // redis-server missing.
    let dir = tmp.path().join("missing");
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["up", "--dir", &dir.to_string_lossy()])
        .env("STRATA_REDIS_SERVER", "/nonexistent/redis-server")
        .output()
        .expect("run");
    let err = one_line_error(&out);
    assert!(err.contains("apt-get install -y redis-server"), "{err}");

    // Unreachable URL.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let err = one_line_error(&strata(&["status", "--url", &format!("redis://127.0.0.1:{free}")]));
    assert!(err.contains("cannot reach"), "{err}");

    // Wrong password, no password.
    let server = strata_cluster::RedisServer::builder().password("right-pw").start().expect("redis");
    let url = format!("redis://127.0.0.1:{}", server.port());
    let err = one_line_error(&strata(&["status", "--url", &url, "--password", "wrong-pw"]));
    assert!(err.contains("authentication"), "{err}");
    assert!(!err.contains("wrong-pw"), "the password must not be echoed: {err}");
    one_line_error(&strata(&["status", "--url", &url]));
    let ok = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["status", "--url", &url, "--json"])
        .env("STRATA_REDIS_PASSWORD", "right-pw")
        .output()
        .expect("run");
    assert_eq!(json(&ok)["cluster_state"], "standalone");

    // A cluster command on a standalone server.
    let plain = strata_cluster::RedisServer::start().expect("redis");
    let err = one_line_error(&strata(&["check", "--url", &plain.url()]));
    assert!(err.contains("needs a Redis Cluster"), "{err}");

    // Invalid arguments: exit code 2 (clap), and --help everywhere.
    assert_eq!(strata(&["up", "--maxmemory", "lots"]).status.code(), Some(2));
    assert_eq!(strata(&["up", "--policy", "sometimes"]).status.code(), Some(2));
    for cmd in [
        "up",
        "down",
        "status",
        "check",
        "inspect",
        "invalidate",
        "flush",
        "config",
        "backup",
        "restore",
        "bench",
        "demo",
        "drill",
    ] {
        let help = strata(&[cmd, "--help"]);
        assert!(help.status.success() && !help.stdout.is_empty(), "{cmd} --help");
    }
}

#[test]
fn up_and_down_never_touch_what_is_not_theirs() {
    let tmp = tempfile::tempdir().expect("tempdir");

    // `up` refuses a non-empty directory it did not make.
    let foreign = tmp.path().join("project");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("precious.txt"), "important").expect("write");
    let err = one_line_error(&strata(&["up", "--dir", &foreign.to_string_lossy()]));
    assert!(err.contains("not empty"), "{err}");
    let err = one_line_error(&strata(&["down", "--dir", &foreign.to_string_lossy(), "--purge"]));
    assert!(err.contains("no cluster"), "{err}");
    assert!(foreign.join("precious.txt").exists());

    let dir = tmp.path().join("cluster");
    let d = dir.to_string_lossy().to_string();
    let _guard = Down(dir.clone());
    assert!(strata(&["up", "--dir", &d]).status.success());
    // A file added later by someone else survives `down --purge`, and so does the directory.
    std::fs::write(dir.join("notes.txt"), "mine").expect("write");
    // A stdout reader that goes away is not a crash.
    let mut piped = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["status", "--dir", &d])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(piped.stdout.take());
    let out = piped.wait_with_output().expect("wait");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(out.status.code(), Some(101));

    // A damaged pid file: `down` refuses, stops nothing blindly, purges nothing.
    let pid_file = dir.join(strata_cluster::PID_FILE);
    let good = std::fs::read_to_string(&pid_file).expect("pid file");
    std::fs::write(&pid_file, format!("{good}garbage line\n")).expect("write");
    let err = one_line_error(&strata(&["down", "--dir", &d, "--purge"]));
    assert!(err.contains("pid file"), "{err}");
    assert_eq!(processes_in(&dir).len(), 6, "nodes still running, data still there");
    std::fs::write(&pid_file, good).expect("restore");

    assert!(strata(&["down", "--dir", &d, "--purge"]).status.success());
    assert!(processes_in(&dir).is_empty());
    assert!(dir.join("notes.txt").exists(), "a file `up` did not create is kept");
    assert!(!dir.join("node-0").exists(), "the nodes' files are gone");

    // A stale pid file naming another process (pid 1): neither "running" nor signalled.
    let stale = tmp.path().join("stale");
    std::fs::create_dir_all(&stale).expect("mkdir");
    std::fs::write(stale.join(strata_cluster::PID_FILE), "# pid port url\n1 6379 redis://127.0.0.1:6379\n")
        .expect("write");
    let err = one_line_error(&strata(&["up", "--dir", &stale.to_string_lossy()]));
    assert!(err.contains("stopped cluster"), "{err}");
    let down = json(&strata(&["down", "--dir", &stale.to_string_lossy(), "--json"]));
    assert_eq!(down["stopped"], serde_json::json!([]), "pid 1 is not ours");
}

#[test]
fn the_database_in_the_url_is_the_one_used() {
    let server = strata_cluster::RedisServer::start().expect("redis");
    let mut con = server.connection().expect("connect");
    for db in [0, 3] {
        let () = redis::cmd("SELECT").arg(db).query(&mut con).expect("select");
        let () = redis::cmd("SET").arg("x:1").arg(db).query(&mut con).expect("set");
    }
    let out = json(&strata(&["invalidate", "--url", &format!("{}/3", server.url()), "--pattern", "x:*", "--json"]));
    assert_eq!(out["removed"], 1);
    let () = redis::cmd("SELECT").arg(0).query(&mut con).expect("select");
    let kept: Option<i64> = redis::cmd("GET").arg("x:1").query(&mut con).expect("get");
    assert_eq!(kept, Some(0), "database 0 untouched");
    let () = redis::cmd("SELECT").arg(3).query(&mut con).expect("select");
    let gone: Option<i64> = redis::cmd("GET").arg("x:1").query(&mut con).expect("get");
    assert_eq!(gone, None, "database 3 invalidated");

    let cluster = strata_cluster::RedisCluster::builder().masters(3).replicas(0).start().expect("cluster");
    let err = one_line_error(&strata(&["status", "--url", &format!("{}/2", cluster.seed_urls()[0])]));
    assert!(err.contains("database 0"), "{err}");
}

#[test]
fn a_hung_node_is_reported_not_waited_for() {
    let mut cluster = strata_cluster::RedisCluster::start(3, 1).expect("cluster");
    let replica = cluster.replica_indices().expect("replicas")[0];
    let addr = cluster.nodes()[replica].addr();
    cluster.node_mut(replica).pause().expect("pause");
    let seed = cluster.seed_urls()[cluster.master_indices().expect("masters")[0]].clone();
    let out = strata(&["status", "--url", &seed, "--json"]);
    cluster.node_mut(replica).resume().expect("resume");
    let status = json(&out);
    let node = status["nodes"].as_array().expect("nodes").iter().find(|n| n["addr"] == addr.as_str()).cloned();
    let node = node.expect("the paused node is listed");
    assert_eq!(node["reachable"], false, "{node}");
    assert!(node["error"].is_string());
}
