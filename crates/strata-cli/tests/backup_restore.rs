//! `strata backup` and `strata restore` end to end, through the binary, against real Redis.

use std::path::Path;
use std::process::{Command, Output};

use strata_cluster::RedisCluster;

const PASSWORD: &str = "cli-backup-pw";

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("STRATA_REDIS_PASSWORD", PASSWORD)
        .env_remove("STRATA_LOG")
        .output()
        .expect("running strata")
}

/// Exit code 0 and exactly one JSON document on stdout.
fn json_ok(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .expect("stdout is JSON");
    assert_eq!(docs.len(), 1, "exactly one JSON document: {stdout}");
    docs.into_iter().next().expect("one document")
}

/// Exit code 1, nothing on stdout, one line on stderr starting with `strata:`.
fn one_line_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("strata: "), "{stderr:?}");
    stderr
}

fn url(cluster: &RedisCluster) -> String {
    format!("redis://{}", cluster.addrs()[0])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("ls") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn backup_then_restore_through_the_cli() {
    let source = RedisCluster::builder().masters(3).replicas(0).password(PASSWORD).start().expect("source cluster");
    let client = redis::cluster::ClusterClient::new(source.seed_urls()).expect("client");
    let mut con = client.get_connection().expect("connection");
    for i in 0..300 {
        let key = format!("app:v1:user:{i}");
        let _: () = redis::cmd("SET").arg(&key).arg(format!("profile-{i}")).query(&mut con).expect("SET");
        if i % 2 == 0 {
            let _: () = redis::cmd("EXPIRE").arg(&key).arg(3_600).query(&mut con).expect("EXPIRE");
        }
    }
    drop(con);

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("backup");
    let dir_s = dir.to_str().expect("utf-8 path");
    let manifest = json_ok(&strata(&["backup", "--url", &url(&source), "--out", dir_s, "--json"]));
    let files = manifest["files"].as_array().expect("files");
    assert_eq!(files.len(), 3);
    assert_eq!(files.iter().map(|f| f["keys"].as_u64().expect("keys")).sum::<u64>(), 300);
    for f in files {
        assert_eq!(f["sha256"].as_str().expect("sha256").len(), 64);
        assert!(dir.join(f["file"].as_str().expect("file")).is_file());
    }
    assert!(dir.join("manifest.json").is_file());
    // A backup holds every cached value: private directory and files.
    let mode =
        |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("stat").permissions()) & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("manifest.json")), 0o600);
    for f in files {
        assert_eq!(mode(&dir.join(f["file"].as_str().expect("file"))), 0o600);
    }

    // The same directory again: refused without --force.
    let err = one_line_failure(&strata(&["backup", "--url", &url(&source), "--out", dir_s, "--json"]));
    assert!(err.contains("--force"), "{err}");
    drop(source);

    let target = RedisCluster::builder().masters(3).replicas(0).password(PASSWORD).start().expect("target cluster");
    let report = json_ok(&strata(&["restore", "--url", &url(&target), "--from", dir_s, "--json"]));
    assert_eq!(report["files"], 3);
    assert_eq!(report["keys_restored"], 300);
    assert_eq!(report["skipped_existing"], 0);
    assert_eq!(report["skipped_expired"], 0);
    let client = redis::cluster::ClusterClient::new(target.seed_urls()).expect("client");
    let mut con = client.get_connection().expect("connection");
    let value: String = redis::cmd("GET").arg("app:v1:user:42").query(&mut con).expect("GET");
    assert_eq!(value, "profile-42");
    let ttl: i64 = redis::cmd("TTL").arg("app:v1:user:42").query(&mut con).expect("TTL");
    assert!((3_500..=3_600).contains(&ttl), "TTL {ttl}");
    let ttl: i64 = redis::cmd("TTL").arg("app:v1:user:43").query(&mut con).expect("TTL");
    assert_eq!(ttl, -1);

    // Human output (no --json) of a second restore: existing keys are kept.
    let out = strata(&["restore", "--url", &url(&target), "--from", dir_s]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("300 key(s) already existed"), "{text}");

    // Bad input: a directory without a manifest.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let err = one_line_failure(&strata(&[
        "restore",
        "--url",
        &url(&target),
        "--from",
        empty.to_str().expect("utf-8"),
        "--json",
    ]));
    assert!(err.contains("manifest.json"), "{err}");

    // Bad input: a tampered file (hash mismatch).
    let tampered = tmp.path().join("tampered");
    copy_dir(&dir, &tampered);
    let victim = tampered.join(files[1]["file"].as_str().expect("file"));
    let mut bytes = std::fs::read(&victim).expect("read");
    bytes[20] ^= 0x55;
    std::fs::write(&victim, bytes).expect("write");
    let err = one_line_failure(&strata(&[
        "restore",
        "--url",
        &url(&target),
        "--from",
        tampered.to_str().expect("utf-8"),
        "--replace",
        "--json",
    ]));
    assert!(err.contains("SHA-256"), "{err}");
}

/// A snapshot that never starts (the master holds the diskless transfer back for a minute):
/// `--timeout-secs` bounds the backup, which fails with one line and leaves nothing behind.
#[test]
fn backup_times_out_with_timeout_secs() {
    let server = strata_cluster::RedisServer::builder()
        .password(PASSWORD)
        .config_line("repl-diskless-sync yes")
        .config_line("repl-diskless-sync-delay 60")
        .start()
        .expect("server");
    let url = format!("redis://127.0.0.1:{}", server.port());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("backup");
    let dir_s = dir.to_str().expect("utf-8 path");
    let started = std::time::Instant::now();
    let out = strata(&["backup", "--url", &url, "--out", dir_s, "--timeout-secs", "2", "--json"]);
    let took = started.elapsed();
    let err = one_line_failure(&out);
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    assert!(err.contains("did not finish within 2 s"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{}", server.port())), "{err}");
    assert_eq!(std::fs::read_dir(&dir).expect("ls").count(), 0, "nothing left in {}", dir.display());

    let out = strata(&["backup", "--url", &url, "--out", dir_s, "--timeout-secs", "0"]);
    assert_eq!(out.status.code(), Some(2), "0 is refused by the parser");
}
