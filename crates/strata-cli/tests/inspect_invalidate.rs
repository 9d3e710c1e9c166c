//! The real `strata` binary: `inspect`, `invalidate` and `flush` with `--url` and `--json`
//! against a real Redis server; bad input gives exit code 1 and one `strata:` line on stderr.

use std::process::{Command, Output};

use serde_json::Value;
use strata_cluster::RedisServer;

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env_remove("STRATA_LOG")
        .env_remove("STRATA_REDIS_USER")
        .env_remove("STRATA_REDIS_PASSWORD")
        .output()
        .expect("run strata")
}

/// Exit code 0 and stdout holding exactly one JSON document.
fn json(args: &[&str]) -> Value {
    let out = strata(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "strata {args:?} failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout of {args:?} is not one JSON document ({e}): {stdout}"))
}

/// Exit code 1 and a single `strata: ...` line on stderr (nothing on stdout); returns it.
fn fails(args: &[&str]) -> String {
    let out = strata(args);
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 stderr");
    assert_eq!(out.status.code(), Some(1), "strata {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "stdout of a failure: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("strata: "), "{stderr}");
    stderr
}

#[test]
fn inspect_invalidate_and_flush_through_the_binary() {
    let server = RedisServer::start().expect("server");
    let mut con = server.connection().expect("connection");
    let mut pipe = redis::pipe();
    for i in 0..120 {
        pipe.cmd("SET").arg(format!("shop:v1:user:{i}")).arg("x").arg("EX").arg(30).ignore();
    }
    for i in 0..30 {
        pipe.cmd("SET").arg(format!("session:{i}")).arg("x").ignore();
    }
    pipe.cmd("SET").arg("shop:v1:users:1").arg("x").arg("EX").arg(7200).ignore();
    pipe.exec(&mut con).expect("seed");
    let url = server.url();

    let report = json(&["inspect", "--url", &url, "--json"]);
    assert_eq!(report["sampled"], false);
    assert_eq!(report["namespaces"]["shop:v1:user"]["keys"], 120);
    assert_eq!(report["namespaces"]["shop:v1:users"]["keys"], 1);
    assert_eq!(report["namespaces"]["session"]["no_ttl_keys"], 30);
    assert!(report["namespaces"]["session"]["memory_bytes"].as_u64().is_some_and(|m| m > 0));
    assert_eq!(report["ttl_histogram"]["none"], 30);
    assert_eq!(report["ttl_histogram"]["<1m"], 120);
    assert_eq!(report["ttl_histogram"]["<1d"], 1);
    let node = &report["nodes"][0];
    for field in ["addr", "used_memory_bytes", "maxmemory_bytes", "hit_ratio", "evicted_keys", "expired_keys", "keys"] {
        assert!(node.get(field).is_some(), "nodes[0].{field} missing: {node}");
    }
    assert_eq!(node["keys"], 151);

    assert_eq!(report["exact"], true);
    let exact_memory = report["total_memory_bytes"].as_u64().expect("total_memory_bytes");

    // 10 of 151 keys measured, every figure scaled by 151 / 10: the estimates must land near
    // the exact figures (the keys are all about the same size).
    let sampled = json(&["inspect", "--url", &url, "--json", "--sample", "10"]);
    assert_eq!(sampled["sampled"], true);
    assert_eq!(sampled["exact"], false);
    assert_eq!(sampled["nodes"][0]["scanned_keys"], 10);
    let total = sampled["total_keys"].as_u64().expect("total_keys");
    assert!((140..=165).contains(&total), "estimated {total} keys, exactly 151");
    let histogram: u64 =
        sampled["ttl_histogram"].as_object().expect("histogram").values().filter_map(Value::as_u64).sum();
    assert!((140..=165).contains(&histogram), "estimated histogram total {histogram}, exactly 151");
    let memory = sampled["total_memory_bytes"].as_u64().expect("total_memory_bytes");
    assert!(
        memory * 10 >= exact_memory * 7 && memory * 10 <= exact_memory * 13,
        "estimated {memory} B, exactly {exact_memory} B"
    );
    let namespaces: u64 =
        sampled["namespaces"].as_object().expect("namespaces").values().filter_map(|ns| ns["keys"].as_u64()).sum();
    assert_eq!(namespaces, total);

    let dry = json(&["invalidate", "--url", &url, "--namespace", "shop:v1:user", "--dry-run", "--json"]);
    assert_eq!(
        (dry["matched"].as_u64(), dry["removed"].as_u64(), dry["dry_run"].as_bool()),
        (Some(120), Some(0), Some(true))
    );
    let done = json(&["invalidate", "--url", &url, "--namespace", "shop:v1:user", "--batch", "50", "--json"]);
    assert_eq!(
        (done["matched"].as_u64(), done["removed"].as_u64(), done["dry_run"].as_bool()),
        (Some(120), Some(120), Some(false))
    );
    let size: u64 = redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE");
    assert_eq!(size, 31, "only the namespace is gone");
    let done = json(&["invalidate", "--url", &url, "--pattern", "session:1*", "--json"]);
    assert_eq!(done["removed"], 11); // session:1 and session:10..19

    // Version 1 keys (and a lease of one) to purge, version 2 keys that must stay.
    let mut pipe = redis::pipe();
    for i in 0..25 {
        pipe.cmd("SET").arg(format!("shop:v1:cart:{i}")).arg("x").arg("EX").arg(600).ignore();
    }
    for i in 0..10 {
        pipe.cmd("SET").arg(format!("shop:v2:user:{i}")).arg("x").arg("EX").arg(600).ignore();
    }
    pipe.cmd("SET").arg("{shop:v1:cart:3}:lease").arg("token").arg("PX").arg(60_000).ignore();
    pipe.exec(&mut con).expect("seed versions");
    let flushed = json(&["flush", "--url", &url, "--app", "shop", "--bump-version", "--purge-old", "--json"]);
    assert_eq!(
        (flushed["app"].as_str(), flushed["old_version"].as_u64(), flushed["new_version"].as_u64()),
        (Some("shop"), Some(1), Some(2))
    );
    assert_eq!(flushed["purged"].as_u64(), Some(26), "25 carts and shop:v1:users:1: {flushed}");
    let left: Vec<String> = redis::cmd("KEYS").arg("shop:v1:*").query(&mut con).expect("KEYS");
    assert!(left.is_empty(), "v1 keys survived the purge: {left:?}");
    let lease: bool = redis::cmd("EXISTS").arg("{shop:v1:cart:3}:lease").query(&mut con).expect("EXISTS");
    assert!(!lease, "the lease of a purged key survived");
    let v2: Vec<String> = redis::cmd("KEYS").arg("shop:v2:*").query(&mut con).expect("KEYS");
    assert_eq!(v2.len(), 10, "v2 keys must be untouched");
    let flushed = json(&["flush", "--url", &url, "--app", "shop", "--bump-version", "--json"]);
    assert_eq!((flushed["old_version"].as_u64(), flushed["new_version"].as_u64()), (Some(2), Some(3)));
    assert!(flushed["purged"].is_null());
    let v2: Vec<String> = redis::cmd("KEYS").arg("shop:v2:*").query(&mut con).expect("KEYS");
    assert_eq!(v2.len(), 10, "a bump without --purge-old removes nothing");

    // Human output goes to stdout too, without colours when it is not a terminal.
    let out = strata(&["inspect", "--url", &url]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(text.contains("NAMESPACE") && text.contains("session") && !text.contains('\x1b'), "{text}");

    // Bad input: checked before anything is touched.
    let line = fails(&["invalidate", "--url", &url, "--namespace", "shop:v1:us*r", "--json"]);
    assert!(line.contains("glob"), "{line}");
    fails(&["invalidate", "--url", &url, "--namespace", "has space"]);
    let line = fails(&["flush", "--url", &url, "--app", "shop", "--json"]);
    assert!(line.contains("--bump-version"), "{line}");
    fails(&["flush", "--url", &url, "--app", "bad:app", "--bump-version"]);
    let size_after: u64 = redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE");
    assert_eq!(size_after, 19 + 10 + 1, "sessions left, the v2 keys, the schema key");
}

/// Key names are data: control characters in them are escaped in the table, kept in the JSON.
#[test]
fn control_characters_in_key_names_are_escaped_in_the_table() {
    let server = RedisServer::start().expect("server");
    let mut con = server.connection().expect("connection");
    redis::cmd("SET").arg("evil\x1b[2J:1").arg("x".repeat(5000)).exec(&mut con).expect("SET");
    redis::cmd("SET").arg("shop:v1:user:\x1b]0;pwned\x07").arg("x".repeat(4000)).exec(&mut con).expect("SET");
    let url = server.url();
    let out = strata(&["inspect", "--url", &url]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "raw control characters: {text:?}");
    assert!(text.contains("evil\\x1b[2J"), "{text}");
    assert!(text.contains("shop:v1:user:\\x1b]0;pwned\\x07"), "{text}");
    let report = json(&["inspect", "--url", &url, "--json"]);
    assert_eq!(report["namespaces"]["evil\x1b[2J"]["keys"], 1, "JSON keeps the real name");
}

/// `--url` naming a standalone replica: refused, not a silent no-op.
#[test]
fn a_replica_url_is_refused() {
    let master = RedisServer::start().expect("master");
    let replica =
        RedisServer::builder().config_line(format!("replicaof 127.0.0.1 {}", master.port())).start().expect("replica");
    let url = replica.url();
    for args in [
        vec!["inspect", "--url", &url, "--json"],
        vec!["invalidate", "--url", &url, "--pattern", "a*", "--json"],
        vec!["flush", "--url", &url, "--app", "shop", "--bump-version"],
    ] {
        let line = fails(&args);
        assert!(line.contains("replica") && line.contains("master"), "{line}");
    }
}

#[test]
fn unreachable_url_is_one_line_and_exit_1() {
    let port = strata_cluster::free_port().expect("free port");
    let url = format!("redis://127.0.0.1:{port}");
    for args in [
        vec!["inspect", "--url", &url, "--json"],
        vec!["invalidate", "--url", &url, "--pattern", "a*", "--json"],
        vec!["flush", "--url", &url, "--app", "shop", "--bump-version"],
    ] {
        let line = fails(&args);
        assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    }
}

#[test]
fn selector_is_required() {
    let out = strata(&["invalidate", "--url", "redis://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}
