//! Administrative actions of the CLI (`invalidate`, `flush`, `backup`, `restore`, `config`)
//! append a record to the audit log given by `--audit-log` or STRATA_AUDIT_LOG.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use strata_cluster::RedisServer;

fn strata(args: &[&str], log: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("STRATA_AUDIT_LOG", log)
        .env_remove("STRATA_REDIS_USER")
        .env_remove("STRATA_REDIS_PASSWORD")
        .output()
        .expect("run strata")
}

fn records(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn admin_actions_are_recorded_with_their_outcome() {
    let server = RedisServer::start().expect("redis");
    let url = server.url();
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("audit.jsonl");
    let backup_dir = tmp.path().join("backup");
    let config_dir = tmp.path().join("conf");
    let (b, c) = (backup_dir.to_string_lossy().to_string(), config_dir.to_string_lossy().to_string());
    let mut con = server.connection().expect("connection");
    let () = redis::cmd("SET").arg("shop:v1:user:1").arg("x").query(&mut con).expect("SET");

    let runs: [&[&str]; 7] = [
        &["invalidate", "--url", &url, "--namespace", "shop:v1:user"],
        &["invalidate", "--url", &url, "--pattern", "shop:*", "--dry-run"],
        &["invalidate", "--url", &url, "--tag", "shop:sale"],
        &["flush", "--url", &url, "--app", "shop", "--bump-version"],
        &["backup", "--url", &url, "--out", &b],
        &["restore", "--url", &url, "--from", &b],
        &["config", "--role", "app", "--out", &c],
    ];
    for args in runs {
        let out = strata(args, &log);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A failure is recorded too, with the user who tried and the reason.
    let refused = strata(
        &["invalidate", "--url", &url, "--namespace", "shop:v1:user", "--user", "mallory", "--password", "guess"],
        &log,
    );
    assert!(!refused.status.success());
    // An explicit --audit-log wins over the environment.
    let other = tmp.path().join("other.jsonl");
    let flag = strata(
        &["flush", "--url", &url, "--app", "shop", "--bump-version", "--audit-log", &other.to_string_lossy()],
        &log,
    );
    assert!(flag.status.success());

    let got: Vec<(String, String, String, String)> = records(&log)
        .iter()
        .map(|r| {
            let s = |f: &str| r[f].as_str().unwrap_or("").to_owned();
            assert!(r["time"].as_str().and_then(strata::parse_rfc3339).is_some(), "{r}");
            (s("principal"), s("action"), s("target"), s("result"))
        })
        .collect();
    let want = [
        ("default", "invalidate_namespace", "shop:v1:user", "ok"),
        ("default", "invalidate_tag", "shop:sale", "ok"),
        ("default", "flush", "shop", "ok"),
        ("default", "backup", b.as_str(), "ok"),
        ("default", "restore", b.as_str(), "ok"),
        ("default", "config", c.as_str(), "ok"),
        ("mallory", "invalidate_namespace", "shop:v1:user", "error"),
    ];
    let want: Vec<(String, String, String, String)> =
        want.iter().map(|(p, a, t, r)| ((*p).into(), (*a).into(), (*t).into(), (*r).into())).collect();
    assert_eq!(got, want, "the dry run is not an action; every other run is recorded once");
    assert!(records(&log)[6]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(records(&other).len(), 1);
    assert_eq!(std::fs::metadata(&log).expect("stat").permissions().mode() & 0o777, 0o600);

    // An audit log that cannot be written stops the action before it runs.
    let blocked = strata(&["flush", "--url", &url, "--app", "shop", "--bump-version"], tmp.path());
    assert_eq!(blocked.status.code(), Some(1));
    let version: Option<String> = redis::cmd("GET").arg("strata:schema:shop").query(&mut con).expect("GET");
    assert_eq!(version.as_deref(), Some("3"), "two flushes ran, the blocked one did not");
}
