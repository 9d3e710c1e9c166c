//! `strata serve` through the real binary, on a standalone server: it prints where it listens,
//! answers, and its topology is the standalone one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use strata_cluster::RedisServer;

/// Kills the server even when the test panics.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
}

/// Starts `strata serve TARGET...` on a free port: the process and the address it printed.
fn serve(target: &[&str]) -> (Killed, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("serve")
        .args(target)
        .args(["--listen", "127.0.0.1:0", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run strata serve");
    let mut child = Killed(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
    let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{line:?}")).to_owned();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
    (child, addr)
}

/// Stops and removes a `strata up` directory even when the test panics.
struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["down", "--dir", &self.0.to_string_lossy(), "--purge"])
            .output();
    }
}

#[test]
fn serve_watches_a_secure_cluster_from_its_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let d = dir.to_string_lossy().to_string();
    let _down = Down(dir.clone());
    let up = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["up", "--secure", "--dir", &d, "--node-timeout-ms", "1500", "--json"])
        .output()
        .expect("run strata up");
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    // TLS and the admin user come from the directory.
    let (_server, addr) = serve(&["--dir", &d]);
    let (status, health) = get(&addr, "/healthz");
    assert_eq!((status, health["nodes_up"].as_u64()), (200, Some(6)), "{health}");
    let (status, namespaces) = get(&addr, "/api/namespaces");
    assert_eq!(status, 200, "{namespaces}");
    assert_eq!(namespaces["scanned_keys"], 0);
}

#[test]
fn serve_prints_its_address_and_answers() {
    let redis = RedisServer::start().expect("redis-server");
    let (_server, addr) = serve(&["--url", &redis.url()]);

    let (status, health) = get(&addr, "/healthz");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["nodes_up"], 1);
    assert_eq!(health["cluster_state"], Value::Null);
    let (_, topology) = get(&addr, "/api/topology");
    assert_eq!(topology["mode"], "standalone");
    assert_eq!(topology["nodes"][0]["addr"], redis.node().addr());
    assert_eq!(topology["nodes"][0]["role"], "master");
    let (_, events) = get(&addr, "/api/audit");
    assert_eq!(events["events"], Value::Array(Vec::new()), "no --audit-log: no events");
}
