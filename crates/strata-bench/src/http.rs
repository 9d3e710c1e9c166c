//! `strata bench --scenario http`: an origin that answers after a fixed delay, read directly
//! and through `strata edge` (strata-http on the target Redis), back to back with the same
//! request sequence: p50, p99 and requests/s of each, the edge's hit ratio.
//!
//! The origin (an axum app in this process) serves `--keys` pages of 2 KiB with
//! `Cache-Control: max-age=600`; pages are drawn from Zipf(0.99). The edge listens on a free
//! loopback port in this process too, in front of the origin; each run uses its own namespace,
//! so the edge starts empty. The client is hyper's, with pooled connections, one task per
//! worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::SeedableRng;
use serde::Serialize;

use crate::report::{Report, ms, round4};
use crate::runner::{Clock, Load, Outcome, Zipf, closed_loop};
use crate::stats::Summary;
use crate::workload::{Layout, Target};

/// Settings of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct pages.
    pub keys: u64,
    /// The origin's delay before each response.
    pub origin_delay: Duration,
    /// Each variant's load (duration, calls bound and workers).
    pub load: Load,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            keys: 1000,
            origin_delay: Duration::from_millis(5),
            load: Load { duration: Duration::from_secs(10), max_ops: 5_000_000, concurrency: 32 },
        }
    }
}

/// What one variant measured.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// `origin alone` or `strata edge`.
    pub name: &'static str,
    /// Requests answered.
    pub requests: u64,
    /// Requests that failed (connection errors or a status other than 200).
    pub errors: u64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Share of requests the edge answered from the cache (`X-Cache: HIT`).
    pub hit_ratio: f64,
    /// Latency p50, ms.
    pub p50_ms: f64,
    /// Latency p99, ms.
    pub p99_ms: f64,
    /// Requests that reached the origin.
    pub origin_requests: u64,
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Redis behind the edge.
    pub layout: Layout,
    /// Distinct pages.
    pub keys: u64,
    /// The origin's delay, ms.
    pub origin_delay_ms: f64,
    /// Concurrent client tasks.
    pub concurrency: usize,
    /// The two variants, the origin alone first.
    pub variants: Vec<Variant>,
    /// The edge's throughput over the origin's alone.
    pub throughput_ratio: f64,
    /// The edge's p99 over the origin's alone.
    pub p99_ratio: f64,
}

/// A run: its figures and latency histograms.
#[derive(Debug)]
pub struct Run {
    /// The figures.
    pub figures: Figures,
    latencies: Vec<(&'static str, Histogram<u64>)>,
}

async fn origin(delay: Duration, calls: Arc<AtomicU64>) -> anyhow::Result<SocketAddr> {
    let page: Bytes = Bytes::from(vec![b'x'; 2048]);
    let app = axum::Router::new().route(
        "/page/{id}",
        axum::routing::get(move || {
            let (page, calls) = (page.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                ([("cache-control", "max-age=600")], page)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Runs both variants.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Run> {
    let calls = Arc::new(AtomicU64::new(0));
    let origin_addr = origin(options.origin_delay, calls.clone()).await?;
    let cache = target.cache_builder().require_redis(true).build().await.context("connecting the cache")?;
    let run_id = rand::random::<u32>();
    let http = strata_http::HttpCache::new(
        cache,
        strata::KeySchema::new("bench", 1)?,
        &format!("http-{run_id:08x}"),
        strata_http::Config::default(),
    )?;
    let edge = strata_http::Edge::bind(
        http,
        strata_http::EdgeConfig::new("127.0.0.1:0".parse()?, &format!("http://{origin_addr}")),
    )
    .await?;
    let edge_addr = edge.local_addr()?;
    let server = tokio::spawn(edge.run(std::future::pending()));

    let zipf = Zipf::new(options.keys, 0.99)?;
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let clock = Clock::start(options.load.duration * 2);
    let mut variants = Vec::new();
    let mut latencies = Vec::new();
    for (name, addr) in [("origin alone", origin_addr), ("strata edge", edge_addr)] {
        clock.phase(format!("http {name}"));
        let before = calls.load(Ordering::Relaxed);
        let client = client.clone();
        let out: Outcome = closed_loop(options.load, Duration::from_millis(500), move |worker, seq| {
            let client = client.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seq ^ ((worker as u64) << 40));
            let page = zipf.sample(&mut rng);
            async move {
                let uri: http::Uri = format!("http://{addr}/page/{page}").parse()?;
                let response = client.get(uri).await?;
                anyhow::ensure!(response.status() == http::StatusCode::OK, "status {}", response.status());
                let hit = response.headers().get("x-cache").is_some_and(|v| v == "HIT");
                let body = response.into_body().collect().await?.to_bytes();
                anyhow::ensure!(body.len() == 2048, "a {}-byte body", body.len());
                Ok(hit)
            }
        })
        .await;
        let s = Summary::of(&out.latency);
        variants.push(Variant {
            name,
            requests: out.ops,
            errors: out.errors,
            requests_per_sec: round4(out.throughput()),
            hit_ratio: round4(out.hit_ratio()),
            p50_ms: ms(s.p50_ns),
            p99_ms: ms(s.p99_ns),
            origin_requests: calls.load(Ordering::Relaxed) - before,
        });
        if let Some(err) = &out.first_error {
            anyhow::ensure!(
                out.errors * 100 < out.ops.max(1),
                "{name}: {} of {} requests failed: {err}",
                out.errors,
                out.ops
            );
        }
        latencies.push((name, out.latency));
    }
    drop(clock);
    server.abort();
    let (alone, edge) = (&variants[0], &variants[1]);
    let figures = Figures {
        layout: target.layout,
        keys: options.keys,
        origin_delay_ms: ms(options.origin_delay.as_nanos() as u64),
        concurrency: options.load.concurrency,
        throughput_ratio: round4(edge.requests_per_sec / alone.requests_per_sec.max(1e-9)),
        p99_ratio: round4(edge.p99_ms / alone.p99_ms.max(1e-9)),
        variants,
    };
    Ok(Run { figures, latencies })
}

/// The report: figures and latency CDFs.
pub fn report(run: &Run, command: &[String]) -> anyhow::Result<Report> {
    let f = &run.figures;
    let mut report = Report::new("http", command);
    report.figures(f)?.text(&format!(
        "{} pages of 2 KiB, Zipf(0.99), origin delay {} ms, {} client tasks; strata edge on {:?} Redis.",
        f.keys, f.origin_delay_ms, f.concurrency, f.layout
    ));
    let rows = f
        .variants
        .iter()
        .map(|v| {
            vec![
                v.name.to_owned(),
                format!("{:.0}", v.requests_per_sec),
                format!("{:.3} ms", v.p50_ms),
                format!("{:.3} ms", v.p99_ms),
                format!("{:.1} %", v.hit_ratio * 100.0),
                v.origin_requests.to_string(),
                v.errors.to_string(),
            ]
        })
        .collect();
    report.table("Figures", &["variant", "requests/s", "p50", "p99", "hit ratio", "origin requests", "errors"], rows);
    let hists: Vec<(&str, &Histogram<u64>)> = run.latencies.iter().map(|(n, h)| (*n, h)).collect();
    report.cdf("Request latency", &hists);
    Ok(report)
}

/// The figures as text.
pub fn render(f: &Figures) -> String {
    let mut out = format!(
        "http: {} pages, origin delay {} ms, {} client tasks, strata edge on {:?} Redis\n\n{:<14} {:>12} {:>10} {:>10} {:>10} {:>16} {:>7}\n",
        f.keys,
        f.origin_delay_ms,
        f.concurrency,
        f.layout,
        "variant",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "hit ratio",
        "origin requests",
        "errors"
    );
    for v in &f.variants {
        out += &format!(
            "{:<14} {:>12.0} {:>10.3} {:>10.3} {:>9.1}% {:>16} {:>7}\n",
            v.name,
            v.requests_per_sec,
            v.p50_ms,
            v.p99_ms,
            v.hit_ratio * 100.0,
            v.origin_requests,
            v.errors
        );
    }
    out += &format!("strata edge / origin alone: throughput x{:.2}, p99 x{:.2}\n", f.throughput_ratio, f.p99_ratio);
    out
}
