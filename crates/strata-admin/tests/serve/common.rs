//! Test support: a 3+3 cluster, the admin server on port 0, a tiny HTTP client and a real
//! Prometheus. Every wait is bounded and fails with what it was waiting for.
#![allow(unreachable_pub)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_admin::{ServeConfig, Server};
use strata_cluster::RedisCluster;
use strata_ops::{Credentials, Deployment};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Longest any wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn cluster() -> RedisCluster {
    RedisCluster::start(3, 1).expect("start a 3-master, 3-replica cluster")
}

pub fn deployment(cluster: &RedisCluster) -> Deployment {
    Deployment::discover(&cluster.seed_urls()[0], &Credentials::default()).expect("discover the cluster")
}

/// The admin server, running on a free port until dropped.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn serve(config: ServeConfig) -> Running {
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addr().expect("bound address");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Running { addr, stop: Some(tx) }
}

/// `ServeConfig` for `cluster` on 127.0.0.1:0 sampling every 200 ms.
pub fn config(cluster: &RedisCluster) -> ServeConfig {
    let mut config = ServeConfig::new(deployment(cluster), "127.0.0.1:0".parse().expect("address"));
    config.interval = Duration::from_millis(200);
    config
}

/// `GET path` over HTTP/1.1: the status and the body (de-chunked).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(WAIT, fetch)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {addr} took over {WAIT:?}"))
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP header end in {text:?}"));
    let status: u16 =
        head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_owned() })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// `GET path`, expecting `status` and a JSON body.
pub async fn get_json(addr: SocketAddr, path: &str, status: u16) -> Value {
    let (got, body) = get(addr, path).await;
    assert_eq!(got, status, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

/// Polls `check` every 100 ms until it returns Some, for at most [`WAIT`].
pub async fn wait_for<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(started.elapsed() < WAIT, "gave up after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `%XX` for everything but letters and digits (query strings).
pub fn url_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// A real Prometheus (Debian package) scraping `target` every second, with its data in a
/// temporary directory; killed on drop.
pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Self {
        Self::start_with(&format!("  - job_name: strata\n    static_configs:\n      - targets: ['{target}']\n"))
    }

    /// Prometheus with these `scrape_configs` entries (YAML, indented by two spaces).
    pub fn start_with(scrape_configs: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n{scrape_configs}"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        let port = strata_cluster::free_port().expect("free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus not found: install it with `apt-get install -y prometheus` (./run test does)");
        Self { addr, child, dir }
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The scrape targets (`/api/v1/targets`'s `activeTargets`), None while it does not answer.
    pub async fn targets(&self) -> Option<Vec<Value>> {
        tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let (status, body) = get(self.addr, "/api/v1/targets").await;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["activeTargets"].as_array().cloned()
    }

    /// The value of an instant query's single result, None while there is none.
    pub async fn query(&self, promql: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let fetch = tokio::net::TcpStream::connect(self.addr).await;
        fetch.ok()?; // not listening yet
        let (status, body) = get(self.addr, &path).await;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{promql} has several series: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
