//! The web dashboard in headless Chromium (issue 8): a 3+3 cluster with known keys in three
//! namespaces, the admin server in-process on a free port, then Chromium loads the page, and the
//! DOM it renders must show the topology and the seeded namespace figures. A screenshot is kept
//! as a test artifact: `target/test-artifacts/dashboard.png`.
//!
//! Chromium is the Debian package (`/usr/bin/chromium`, or `STRATA_CHROMIUM`); `./run test`
//! installs it. `--virtual-time-budget` lets the page run its timers and fetches before the DOM
//! is dumped, so no DevTools protocol is needed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_admin::{ServeConfig, Server};
use strata_cluster::RedisCluster;
use strata_ops::{Credentials, Deployment};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One Chromium run (start, render, exit) takes a few seconds; a loaded machine may need more.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the page runs (virtual time) before the DOM is dumped or the screenshot taken:
/// several 2 s refreshes.
const VIRTUAL_TIME_MS: u32 = 10_000;

const USERS: usize = 40;
const PRODUCTS: usize = 25;
const SESSIONS: usize = 10;

const AUDIT_LINES: [&str; 2] = [
    r#"{"time":"2026-12-02T03:30:00.123Z","principal":"app","action":"set","target":"app:v1:user:7","result":"ok"}"#,
    r#"{"time":"2026-12-02T03:30:01.456Z","principal":"app","action":"invalidate_namespace","target":"app:v1:product","result":"ok"}"#,
];

#[test]
fn dashboard_renders_topology_and_namespaces_in_chromium() -> TestResult {
    let chromium = chromium_path()?;
    let cluster = RedisCluster::start(3, 1)?;
    seed(&cluster)?;
    let tmp = tempfile::tempdir()?;
    let audit = tmp.path().join("audit.jsonl");
    std::fs::write(&audit, AUDIT_LINES.join("\n") + "\n")?;

    let deployment = Deployment::discover(&cluster.seed_urls()[0], &Credentials::default())?;
    let server = AdminServer::start(deployment, audit)?;
    // A few sampler rounds with reads in between, so the charts have points (hits and misses).
    wait_for_history(&cluster, server.addr, 3)?;

    let url = format!("http://{}/", server.addr);
    let dom = chromium_run(&chromium, tmp.path(), &["--dump-dom", &url])?;
    // Chromium escapes `<` and `>` in attribute values (bucket names such as `<1d`).
    let dom = dom.replace("&lt;", "<").replace("&gt;", ">");
    check_dom(&dom, &cluster)?;

    let artifact = artifact_dir()?.join("dashboard.png");
    let _ = std::fs::remove_file(&artifact);
    let shot = format!("--screenshot={}", artifact.display());
    chromium_run(&chromium, tmp.path(), &["--window-size=1400,1000", "--hide-scrollbars", &shot, &url])?;
    let png = std::fs::read(&artifact).map_err(|e| format!("no screenshot at {}: {e}", artifact.display()))?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", artifact.display());
    // A blank 1400x1000 page compresses to a few kilobytes; tables and charts take far more.
    assert!(png.len() > 30_000, "the screenshot is only {} bytes: did the page render?", png.len());
    Ok(())
}

fn check_dom(dom: &str, cluster: &RedisCluster) -> TestResult {
    let page = |what: &str| format!("{what}\n--- dumped DOM ---\n{dom}");
    assert!(dom.contains(r#"<body data-state="live">"#), "{}", page("the page is not live"));
    assert!(dom.contains(r#"id="health" class="badge" data-status="ok""#), "{}", page("health badge not ok"));

    // Topology: 6 nodes, 3 masters with their slots, 3 replicas, every node up.
    assert!(
        dom.contains(r#"data-nodes="6" data-masters="3" data-up="6""#),
        "{}",
        page("topology summary is not 6 nodes / 3 masters / 6 up")
    );
    let topology = section(dom, r#"<table id="topology">"#, "</table>").ok_or_else(|| page("no topology table"))?;
    let rows: Vec<&str> = topology.split("<tr ").skip(1).collect();
    assert_eq!(rows.len(), 6, "{}", page("topology rows"));
    assert_eq!(rows.iter().filter(|r| r.contains(r#"data-role="master""#)).count(), 3, "{}", page("masters"));
    assert_eq!(rows.iter().filter(|r| r.contains(r#"data-role="replica""#)).count(), 3, "{}", page("replicas"));
    assert!(rows.iter().all(|r| r.contains(r#"data-up="true""#)), "{}", page("a node is shown down"));
    for addr in cluster.addrs() {
        assert!(topology.contains(&format!(r#"data-node-addr="{addr}""#)), "{}", page(&format!("node {addr} missing")));
    }
    // The masters' slot ranges cover all 16384 slots.
    let slots: u32 = rows
        .iter()
        .filter_map(|r| section(r, r#"data-field="slots">"#, "</td>"))
        .filter_map(|s| s.rsplit_once('(').and_then(|(_, n)| n.trim_end_matches(')').parse::<u32>().ok()))
        .sum();
    assert_eq!(slots, 16384, "{}", page("slot ranges"));

    // Namespaces: one row each with the seeded counts.
    let namespaces =
        section(dom, r#"<table id="namespaces">"#, "</table>").ok_or_else(|| page("no namespace table"))?;
    for (namespace, keys, no_ttl) in
        [("app:v1:user", USERS, 0), ("app:v1:product", PRODUCTS, 0), ("app:v1:session", SESSIONS, SESSIONS)]
    {
        let row = section(namespaces, &format!(r#"<tr data-namespace="{namespace}">"#), "</tr>")
            .ok_or_else(|| page(&format!("no row for {namespace}")))?;
        assert!(
            row.contains(&format!(r#"data-field="keys" data-value="{keys}""#)),
            "{}",
            page(&format!("{namespace} keys"))
        );
        assert!(
            row.contains(&format!(r#"data-field="no_ttl_keys" data-value="{no_ttl}""#)),
            "{}",
            page(&format!("{namespace} keys without TTL"))
        );
        assert!(
            !row.contains(r#"data-field="memory_bytes" data-value="0""#),
            "{}",
            page(&format!("{namespace} memory"))
        );
    }
    assert_eq!(namespaces.matches("<tr data-namespace=").count(), 3, "{}", page("namespace rows"));

    // TTL distribution: sessions have none, products 5 minutes, users 2 hours.
    for (bucket, count) in [("none", SESSIONS), ("<10m", PRODUCTS), ("<1d", USERS), ("<1m", 0)] {
        assert!(
            dom.contains(&format!(r#"data-bucket="{bucket}" data-count="{count}""#)),
            "{}",
            page(&format!("TTL bucket {bucket} should count {count}"))
        );
    }

    // Charts drew points, memory has a bar per node, the audit table shows the log newest first.
    for chart in ["chart-ops", "chart-hit-ratio"] {
        let points = section(dom, &format!(r#"id="{chart}""#), ">")
            .and_then(|attrs| section(attrs, r#"data-points=""#, "\""))
            .and_then(|n| n.parse::<u32>().ok());
        assert!(points.is_some_and(|n| n >= 1), "{}", page(&format!("{chart} has no points")));
    }
    let memory = section(dom, r#"<div id="memory""#, "</section>").ok_or_else(|| page("no memory bars"))?;
    assert_eq!(memory.matches(r#"class="bar-row" data-node-addr="#).count(), 6, "{}", page("memory bars"));
    let audit = section(dom, r#"<table id="audit">"#, "</table>").ok_or_else(|| page("no audit table"))?;
    let newest = audit.find("invalidate_namespace").ok_or_else(|| page("audit: newest event missing"))?;
    let oldest = audit.find("app:v1:user:7").ok_or_else(|| page("audit: oldest event missing"))?;
    assert!(newest < oldest, "{}", page("audit events are not newest first"));
    Ok(())
}

/// The text between `start` (excluded) and the next `end`.
fn section<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// 40 users (TTL 2 h), 25 products (TTL 5 min), 10 sessions without TTL.
fn seed(cluster: &RedisCluster) -> TestResult {
    let client = redis::cluster::ClusterClient::new(cluster.seed_urls())?;
    let mut con = client.get_connection()?;
    for i in 0..USERS {
        let _: () = redis::cmd("SET")
            .arg(format!("app:v1:user:{i}"))
            .arg(format!("user {i}"))
            .arg("EX")
            .arg(7200)
            .query(&mut con)?;
    }
    for i in 0..PRODUCTS {
        let _: () = redis::cmd("SET")
            .arg(format!("app:v1:product:{i}"))
            .arg(format!("product {i}"))
            .arg("EX")
            .arg(300)
            .query(&mut con)?;
    }
    for i in 0..SESSIONS {
        let _: () = redis::cmd("SET").arg(format!("app:v1:session:{i}")).arg(format!("session {i}")).query(&mut con)?;
    }
    Ok(())
}

/// Reads (3 hits to 1 miss) until `/api/history` holds `samples` samples; bounded in time and count.
fn wait_for_history(cluster: &RedisCluster, addr: SocketAddr, samples: usize) -> TestResult {
    let client = redis::cluster::ClusterClient::new(cluster.seed_urls())?;
    let mut con = client.get_connection()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0..600 {
        for i in 0..20 {
            let key = if i % 4 == 3 { format!("app:v1:user:missing-{i}") } else { format!("app:v1:user:{i}") };
            let _: Option<String> = redis::cmd("GET").arg(key).query(&mut con)?;
        }
        let (status, body) = http_get(addr, "/api/history")?;
        if status == 200 && body.matches("\"t_unix_ms\"").count() >= samples {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(
                format!("/api/history had fewer than {samples} samples after 60 s ({round} rounds): {body}").into()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("/api/history had fewer than {samples} samples after 600 rounds").into())
}

/// A minimal HTTP/1.1 GET (the server's own tests cover the API; this only waits for data).
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status line")?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The admin server on a free port, on its own runtime; shut down on drop.
struct AdminServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl AdminServer {
    fn start(deployment: Deployment, audit_log: PathBuf) -> Result<Self, Box<dyn std::error::Error>> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let mut config = ServeConfig::new(deployment, "127.0.0.1:0".parse()?);
        config.audit_log = Some(audit_log);
        let server = runtime.block_on(Server::bind(config))?;
        let addr = server.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            if let Err(err) = server.run(async move { drop(stopped.await) }).await {
                eprintln!("admin server failed: {err}");
            }
        });
        Ok(Self { addr, stop: Some(stop), runtime: Some(runtime) })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn chromium_path() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let path = PathBuf::from(std::env::var("STRATA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if !path.exists() {
        return Err(format!(
            "{} not found: the dashboard test needs headless Chromium (`apt-get install -y chromium`; `./run test` installs it)",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// Runs headless Chromium with `args` and returns its stdout; killed (with its whole process
/// group: renderer, GPU and zygote processes) after [`CHROMIUM_TIMEOUT`] or if the test panics.
fn chromium_run(chromium: &Path, tmp: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out_path = tmp.join("chromium.out");
    let err_path = tmp.join("chromium.err");
    let mut cmd = Command::new(chromium);
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", tmp.join("chromium-profile").display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .process_group(0);
    let mut child = KillGroupOnDrop(cmd.spawn().map_err(|e| format!("cannot start {}: {e}", chromium.display()))?);
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(
                format!("chromium {args:?} did not finish within {CHROMIUM_TIMEOUT:?}; stderr:\n{stderr}").into()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(format!("chromium {args:?} failed ({status}); stderr:\n{stderr}").into());
    }
    Ok(std::fs::read_to_string(&out_path)?)
}

struct KillGroupOnDrop(Child);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // A negative pid names the process group that process_group(0) created.
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `target/test-artifacts` of this workspace (CARGO_TARGET_DIR when set).
fn artifact_dir() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    };
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
