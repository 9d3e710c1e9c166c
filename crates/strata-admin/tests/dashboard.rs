//! The web dashboard in headless Chromium (issue 8): a 3+3 cluster with known keys in three
//! namespaces, the admin server in-process on a free port, then Chromium loads the page, and the
//! DOM it renders must show the topology and the seeded namespace figures. A screenshot is kept
//! as a test artifact: `target/test-artifacts/dashboard.png`. Then the same page with the server
//! gone after its first refresh (the "unreachable" state keeps the last data), and with a node
//! killed (health degraded, the node shown down).
//!
//! Chromium is the Debian package (`/usr/bin/chromium`, or `STRATA_CHROMIUM`); `./run test`
//! installs it. `--virtual-time-budget` lets the page run its timers and fetches before the DOM
//! is dumped, so no DevTools protocol is needed.

mod browser;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use browser::{AdminServer, Chromium, FirstRoundProxy, artifact_dir, http_get, section};
use strata_cluster::RedisCluster;
use strata_ops::{Credentials, Deployment};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const USERS: usize = 40;
const PRODUCTS: usize = 25;
const SESSIONS: usize = 10;

const AUDIT_LINES: [&str; 2] = [
    r#"{"time":"2026-12-02T03:30:00.123Z","principal":"app","action":"set","target":"app:v1:user:7","result":"ok"}"#,
    r#"{"time":"2026-12-02T03:30:01.456Z","principal":"app","action":"invalidate_namespace","target":"app:v1:product","result":"ok"}"#,
];

#[test]
fn dashboard_renders_topology_and_namespaces_in_chromium() -> TestResult {
    let chromium = Chromium::find()?;
    let mut cluster = RedisCluster::start(3, 1)?;
    seed(&cluster)?;
    let tmp = tempfile::tempdir()?;
    let audit = tmp.path().join("audit.jsonl");
    std::fs::write(&audit, AUDIT_LINES.join("\n") + "\n")?;

    let deployment = Deployment::discover(&cluster.seed_urls()[0], &Credentials::default())?;
    let server = AdminServer::start(deployment, audit)?;
    // A few sampler rounds with reads in between, so the charts have points (hits and misses).
    wait_for_history(&cluster, server.addr, 3)?;

    let url = format!("http://{}/", server.addr);
    let dom = chromium.dump_dom(tmp.path(), &url)?;
    check_dom(&dom, &cluster)?;

    let artifact = artifact_dir()?.join("dashboard.png");
    let _ = std::fs::remove_file(&artifact);
    chromium.screenshot(tmp.path(), &url, &artifact)?;
    let png = std::fs::read(&artifact).map_err(|e| format!("no screenshot at {}: {e}", artifact.display()))?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", artifact.display());
    // A blank 1400x1000 page compresses to a few kilobytes; tables and charts take far more.
    assert!(png.len() > 30_000, "the screenshot is only {} bytes: did the page render?", png.len());

    // The server answers the first refresh, then is gone: the page says so and keeps the data.
    let proxy = FirstRoundProxy::start(server.addr)?;
    let dom = chromium.dump_dom(tmp.path(), &format!("http://{}/", proxy.addr))?;
    drop(proxy);
    check_unreachable(&dom)?;

    // A replica killed: health degraded, its row down, the other five up.
    let replica = cluster.replica_indices()?[0];
    let addr = cluster.nodes()[replica].addr();
    cluster.node_mut(replica).kill()?;
    wait_for_status(server.addr, "/healthz", 503)?;
    let dom = chromium.dump_dom(tmp.path(), &url)?;
    check_node_down(&dom, &addr)?;
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

fn check_unreachable(dom: &str) -> TestResult {
    let page = |what: &str| format!("{what}\n--- dumped DOM ---\n{dom}");
    assert!(dom.contains(r#"<body data-state="unreachable">"#), "{}", page("the page is not marked unreachable"));
    assert!(dom.contains(r#"<div id="unreachable" class="banner">"#), "{}", page("the unreachable banner is hidden"));
    assert!(dom.contains(r#"id="health" class="badge" data-status="unreachable""#), "{}", page("health badge"));
    // The first refresh's data stays on the page.
    assert!(dom.contains(r#"data-nodes="6" data-masters="3" data-up="6""#), "{}", page("topology was dropped"));
    let rows = section(dom, r#"<table id="namespaces">"#, "</table>").map(|t| t.matches("<tr data-namespace=").count());
    assert_eq!(rows, Some(3), "{}", page("namespace rows were dropped"));
    Ok(())
}

fn check_node_down(dom: &str, addr: &str) -> TestResult {
    let page = |what: &str| format!("{what}\n--- dumped DOM ---\n{dom}");
    assert!(dom.contains(r#"<body data-state="live">"#), "{}", page("the page is not live"));
    assert!(dom.contains(r#"id="health" class="badge" data-status="degraded""#), "{}", page("health not degraded"));
    let topology = section(dom, r#"<table id="topology">"#, "</table>").ok_or_else(|| page("no topology table"))?;
    let row = section(topology, &format!(r#"data-node-addr="{addr}""#), "</tr>")
        .ok_or_else(|| page("killed node missing"))?;
    assert!(row.contains(r#"data-up="false""#), "{}", page(&format!("{addr} is not shown down")));
    assert!(dom.contains(r#"data-nodes="6" data-masters="3" data-up="5""#), "{}", page("summary is not 5 of 6 up"));
    Ok(())
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

/// Polls `path` until it answers `status`; bounded to 60 s.
fn wait_for_status(addr: SocketAddr, path: &str, status: u16) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (got, body) = http_get(addr, path)?;
        if got == status {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{path} still answers {got} (not {status}) after 60 s: {body}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
