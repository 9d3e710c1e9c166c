//! `strata up --secure` end to end through the real binary: secrets only in owner-only files
//! (never in the output or a process's argv), TLS only, and `status` / `down` still working.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).args(args).output().expect("run strata")
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "strata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is exactly one JSON document")
}

/// Stops and removes a `strata up` directory even when the test panics.
struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = strata(&["down", "--dir", &self.0.to_string_lossy(), "--purge"]);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn up_secure_keeps_secrets_in_private_files_and_serves_tls_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let d = dir.to_string_lossy().to_string();
    let _guard = Down(dir.clone());

    let up = strata(&["up", "--secure", "--dir", &d, "--node-timeout-ms", "1500", "--json"]);
    let report = json(&up);
    let secure = dir.join("secure");
    assert_eq!(mode(&secure), 0o700);
    let mut passwords = Vec::new();
    for entry in std::fs::read_dir(&secure).expect("ls secure") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        if path.extension().is_some_and(|e| e == "password") {
            passwords.push(std::fs::read_to_string(&path).expect("read").trim().to_string());
        }
    }
    assert_eq!(passwords.len(), 5, "admin, app, readonly, metrics, replication");
    let acl = std::fs::read_to_string(secure.join("users.acl")).expect("acl file");
    let pids_file = std::fs::read_to_string(dir.join("strata-redis.pids")).expect("pid file");
    let stdout = String::from_utf8_lossy(&up.stdout);
    let stderr = String::from_utf8_lossy(&up.stderr);
    for pw in &passwords {
        assert_eq!(pw.len(), 64, "32 random bytes, hex");
        assert!(!stdout.contains(pw.as_str()) && !stderr.contains(pw.as_str()), "a password was printed");
        assert!(!acl.contains(pw.as_str()), "the ACL file holds hashes only");
        assert!(!pids_file.contains(pw.as_str()), "the pid file holds no password");
    }
    // No running process has a secret on its command line.
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline);
            assert!(!passwords.iter().any(|pw| cmdline.contains(pw.as_str())), "secret in argv: {cmdline}");
        }
    }

    let urls: Vec<&str> = report["urls"].as_array().expect("urls").iter().filter_map(Value::as_str).collect();
    assert_eq!(urls.len(), 6);
    assert!(urls.iter().all(|u| u.starts_with("rediss://127.0.0.1:")), "{urls:?}");
    assert_eq!(report["secure"]["ca_cert"], secure.join("ca.crt").to_string_lossy().as_ref());

    // Plaintext to a node's (TLS) port gets no answer.
    let port = urls[0].rsplit(':').next().expect("port");
    let plain = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let answered = plain.get_connection_with_timeout(Duration::from_secs(2)).and_then(|mut c| {
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        redis::cmd("PING").query::<String>(&mut c)
    });
    assert!(answered.is_err(), "plaintext answered: {answered:?}");

    // status reads the admin credentials and the CA from the directory.
    let status = json(&strata(&["status", "--dir", &d, "--json"]));
    assert_eq!(status["cluster_state"], "ok", "{status}");

    let down = json(&strata(&["down", "--dir", &d, "--purge", "--json"]));
    assert_eq!(down["stopped"].as_array().map(Vec::len), Some(6));
    assert!(!dir.exists(), "purged, secrets included");
}
