//! `--web-config` and `--insecure-listen` of `strata serve` and `strata edge`, through the real
//! binary: TLS and basic auth checked by a Rust TLS client, a real Prometheus scraping
//! `strata edge`'s `/_strata/metrics` over TLS with basic auth, the refusal of a non-loopback
//! address without protection, and clear startup errors for broken configs.

#[path = "../../strata-web/tests/client/mod.rs"]
mod client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use client::{client_config, http_get, https_get};
use serde_json::Value;
use strata_cluster::{RedisServer, TlsMaterial};

const USER: &str = "prometheus";
const PASSWORD: &str = "a scrape password";
/// Longest a wait in these tests may take.
const WAIT: Duration = Duration::from_secs(30);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Kills the process even when the test panics.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory with a CA, a server certificate for localhost, and `web.yml` using them with
/// one basic-auth user (bcrypt cost 4: the test build is unoptimised).
fn web_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    TlsMaterial::generate(&dir.path().join("tls")).expect("certificates");
    let hash = bcrypt::hash(PASSWORD, 4).expect("hash");
    let yml = dir.path().join("web.yml");
    std::fs::write(
        &yml,
        format!(
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n\
             basic_auth_users:\n  {USER}: '{hash}'\n"
        ),
    )
    .expect("web.yml");
    (dir, yml)
}

fn tls_client(dir: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    client_config(&std::fs::read(dir.join("tls").join("ca.crt")).expect("CA"), None)
}

/// Starts `strata ARGS...` and returns it with its stdout.
fn start(args: &[&str]) -> (Killed, BufReader<ChildStdout>) {
    let child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run strata");
    let mut child = Killed(child);
    let stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
    (child, stdout)
}

/// The address of the next `PREFIX://ADDR` line.
fn address(stdout: &mut BufReader<ChildStdout>, prefix: &str) -> SocketAddr {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a line");
    line.trim()
        .strip_prefix(prefix)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("expected {prefix}ADDR, got {line:?}"))
}

/// `strata ARGS...` that must fail: its stderr.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_strata")).args(args).stdin(Stdio::null()).output().expect("run strata");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "strata {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// An origin that answers every request with a cacheable `origin` (one thread, until the test ends).
fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nCache-Control: max-age=60\r\nConnection: close\r\n\r\norigin",
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_web_config_answers_over_tls_with_basic_auth_only() -> TestResult {
    let redis = RedisServer::start()?;
    let (dir, yml) = web_dir();
    let (_serve, mut stdout) = start(&[
        "serve",
        "--url",
        &redis.url(),
        "--listen",
        "localhost:0",
        "--interval",
        "200ms",
        "--web-config",
        &yml.to_string_lossy(),
    ]);
    let addr = address(&mut stdout, "listening on https://");
    assert!(addr.ip().is_loopback(), "{addr}");
    let tls = tls_client(dir.path());
    let ok = https_get(tls.clone(), addr, "/healthz", Some((USER, PASSWORD))).await?;
    assert_eq!(ok.status, 200, "{ok:?}");
    let metrics = https_get(tls.clone(), addr, "/metrics", Some((USER, PASSWORD))).await?;
    assert!(metrics.status == 200 && metrics.body.contains("redis_up 1"), "{metrics:?}");
    for basic in [None, Some((USER, "wrong"))] {
        let denied = https_get(tls.clone(), addr, "/metrics", basic).await?;
        assert_eq!(denied.status, 401, "{basic:?}");
        assert_eq!(denied.header("www-authenticate"), Some("Basic realm=\"strata\""));
    }
    assert!(http_get(addr, "/metrics", Some((USER, PASSWORD))).await.is_err(), "plain HTTP answered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_protects_its_admin_endpoints_on_its_listener() -> TestResult {
    let redis = RedisServer::start()?;
    let (dir, yml) = web_dir();
    let origin = format!("http://{}", origin());
    let (_edge, mut stdout) = start(&[
        "edge",
        "--url",
        &redis.url(),
        "--origin",
        &origin,
        "--listen",
        "127.0.0.1:0",
        "--web-config",
        &yml.to_string_lossy(),
    ]);
    let addr = address(&mut stdout, "listening on https://");
    let tls = tls_client(dir.path());
    // Proxied traffic: over TLS, no basic auth.
    let page = https_get(tls.clone(), addr, "/page", None).await?;
    assert_eq!((page.status, page.body.as_str()), (200, "origin"), "{page:?}");
    // The metrics: basic auth.
    let metrics = https_get(tls.clone(), addr, "/_strata/metrics", Some((USER, PASSWORD))).await?;
    assert!(metrics.status == 200 && metrics.body.contains("strata_"), "{metrics:?}");
    for basic in [None, Some((USER, "wrong")), Some(("nobody", PASSWORD))] {
        let denied = https_get(tls.clone(), addr, "/_strata/metrics", basic).await?;
        assert_eq!(denied.status, 401, "{basic:?}");
        assert_eq!(denied.header("www-authenticate"), Some("Basic realm=\"strata\""));
        assert!(!denied.body.contains("strata_"));
    }
    assert!(http_get(addr, "/page", None).await.is_err(), "plain HTTP answered");
    Ok(())
}

/// A real Prometheus scraping `strata edge`'s admin listener over TLS with basic auth.
struct Prometheus {
    addr: SocketAddr,
    _process: Killed,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(scrape_configs: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{scrape_configs}");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("prometheus.yml");
        let port = strata_cluster::free_port().expect("free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus not found: install it with `apt-get install -y prometheus` (./run test does)");
        Self { addr, _process: Killed(child), dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Option<Value> {
        let reply = http_get(self.addr, path, None).await.ok()?;
        serde_json::from_str::<Value>(&reply.body).ok().filter(|_| reply.status == 200)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_edge_admin_listener_over_tls_with_basic_auth() -> TestResult {
    let redis = RedisServer::start()?;
    let (dir, yml) = web_dir();
    let origin = format!("http://{}", origin());
    let (_edge, mut stdout) = start(&[
        "edge",
        "--url",
        &redis.url(),
        "--origin",
        &origin,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--web-config",
        &yml.to_string_lossy(),
    ]);
    let addr = address(&mut stdout, "listening on http://");
    let admin = address(&mut stdout, "admin on https://");
    // The main listener only proxies, in plain HTTP; the admin endpoints are not there.
    let page = http_get(addr, "/page", None).await?;
    assert_eq!((page.status, page.body.as_str()), (200, "origin"), "{page:?}");
    assert_eq!(http_get(addr, "/_strata/metrics", Some((USER, PASSWORD))).await?.status, 404);
    let tls = tls_client(dir.path());
    assert_eq!(https_get(tls.clone(), admin, "/_strata/metrics", None).await?.status, 401);
    assert_eq!(https_get(tls, admin, "/_strata/metrics", Some((USER, PASSWORD))).await?.status, 200);

    let ca = dir.path().join("tls").join("ca.crt");
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    metrics_path: /_strata/metrics\n    tls_config:\n      \
             ca_file: {}\n      server_name: localhost\n    basic_auth:\n      username: {USER}\n      \
             password: {password}\n    static_configs:\n      - targets: ['{admin}']\n",
            ca.display()
        )
    };
    let prometheus = Prometheus::start(&format!("{}{}", job("edge", PASSWORD), job("edge-wrong-password", "nope")));
    let started = Instant::now();
    loop {
        let targets = prometheus.api("/api/v1/targets").await;
        let health = |job: &str| {
            targets.as_ref().and_then(|t| t["data"]["activeTargets"].as_array()).and_then(|all| {
                all.iter().find(|t| t["labels"]["job"] == job).map(|t| {
                    (t["health"].as_str().unwrap_or("").to_owned(), t["lastError"].as_str().unwrap_or("").to_owned())
                })
            })
        };
        let (good, bad) = (health("edge"), health("edge-wrong-password"));
        if good.as_ref().is_some_and(|(h, _)| h == "up")
            && bad.as_ref().is_some_and(|(h, e)| h == "down" && e.contains("401"))
        {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the targets did not settle in {WAIT:?}: edge {good:?}, wrong password {bad:?}; Prometheus' log:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A strata metric of the edge, scraped over TLS.
    let query =
        prometheus.api("/api/v1/query?query=count%28%7B__name__%3D~%22strata_.%2B%22%2Cjob%3D%22edge%22%7D%29").await;
    let count =
        query.as_ref().and_then(|q| q["data"]["result"][0]["value"][1].as_str()).and_then(|v| v.parse::<f64>().ok());
    assert!(count.is_some_and(|n| n >= 1.0), "{query:?}");
    Ok(())
}

#[test]
fn non_loopback_addresses_are_refused_without_protection() {
    // Refused before Redis is reached: nothing listens on port 1.
    let redis = ["--url", "redis://127.0.0.1:1"];
    let origin = ["--origin", "http://127.0.0.1:1"];
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.1:9460"] {
        let err = fails(&[&["serve"][..], &redis, &["--listen", listen]].concat());
        assert!(err.contains(&format!("refusing to listen on {listen}")), "{err}");
        assert!(err.contains("--web-config") && err.contains("--insecure-listen"), "{err}");
        let err = fails(&[&["edge"][..], &redis, &origin, &["--listen", listen]].concat());
        assert!(err.contains(&format!("refusing to listen on {listen}")), "{err}");
    }
    // The admin listener is what counts for the edge.
    let err =
        fails(&[&["edge"][..], &redis, &origin, &["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"]].concat());
    assert!(err.contains("refusing to listen on 0.0.0.0:0"), "{err}");
    // --insecure-listen gets past the check (and then fails on the absent Redis, before binding).
    let err = fails(&[&["serve"][..], &redis, &["--listen", "0.0.0.0:0", "--insecure-listen"]].concat());
    assert!(!err.contains("refusing"), "{err}");
    // A web config that authenticates no one protects nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.yml");
    std::fs::write(&empty, "# nothing\n").expect("write");
    let err =
        fails(&[&["serve"][..], &redis, &["--listen", "0.0.0.0:0", "--web-config", &empty.to_string_lossy()]].concat());
    assert!(err.contains("the web config authenticates no one"), "{err}");
}

#[test]
fn broken_web_configs_stop_startup_with_a_clear_error() {
    let (dir, _) = web_dir();
    let hash = bcrypt::hash("pw", 4).expect("hash");
    let cases = [
        ("malformed.yml", "tls_server_config: [\n".to_owned(), "not a valid web config"),
        ("unknown.yml", "tls_server_config:\n  certfile: x\n".to_owned(), "certfile"),
        (
            "missing-cert.yml",
            "tls_server_config:\n  cert_file: tls/absent.crt\n  key_file: tls/server.key\n".to_owned(),
            "absent.crt",
        ),
        (
            "wrong-key.yml",
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/client.key\n".to_owned(),
            "cannot be used together",
        ),
        ("bad-hash.yml", "basic_auth_users:\n  prometheus: not-a-hash\n".to_owned(), "not a bcrypt hash"),
        ("unsupported.yml", format!("basic_auth_users:\n  u: '{hash}'\nhttp_server_config:\n  http2: true\n"), "http2"),
    ];
    for (name, yaml, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).expect("write");
        let path = path.to_string_lossy().to_string();
        let serve = ["serve", "--url", "redis://127.0.0.1:1", "--web-config", &path];
        let edge = ["edge", "--url", "redis://127.0.0.1:1", "--origin", "http://127.0.0.1:1", "--web-config", &path];
        for args in [&serve[..], &edge[..]] {
            let err = fails(args);
            assert!(err.contains(name) && err.contains(expected), "{args:?}: {err}");
        }
    }
    let absent = fails(&["serve", "--url", "redis://127.0.0.1:1", "--web-config", "/nonexistent/web.yml"]);
    assert!(absent.contains("/nonexistent/web.yml"), "{absent}");
}
