//! The admin HTTP server behind `strata serve`: a Prometheus exporter for every node of a
//! deployment, a health check, a JSON API and the web dashboard that reads it.
//!
//! | Path | What |
//! |------|------|
//! | `GET /healthz` | 200 when every node answers and the cluster state is `ok`, 503 otherwise |
//! | `GET /metrics` | Prometheus text: `redis_*` per node (named as redis_exporter does), `strata_*` |
//! | `GET /api/topology` | nodes, roles, slots, memory, keys, ops/s |
//! | `GET /api/history` | the last samples of the background sampler (hit ratio, ops/s, memory) |
//! | `GET /api/namespaces` | keys and memory by namespace, TTL histogram (cached SCAN) |
//! | `GET /api/audit?limit=N` | the newest lines of the audit log, newest first |
//! | `GET /` | the dashboard |
//!
//! With [`ServeConfig::web`] (`--web-config`, the Prometheus exporter toolkit's format, crate
//! `strata-web`) every path is behind its TLS and basic auth; [`Server::bind`] refuses a
//! non-loopback address that nothing protects unless [`ServeConfig::insecure_listen`].
//!
//! ```no_run
//! # async fn run(deployment: strata_ops::Deployment) -> strata_admin::Result<()> {
//! let config = strata_admin::ServeConfig::new(deployment, "127.0.0.1:0".parse().expect("address"));
//! let server = strata_admin::Server::bind(config).await?;
//! println!("listening on http://{}", server.local_addr()?);
//! server.run(std::future::pending()).await
//! # }
//! ```

mod api;
mod audit;
mod dashboard;
mod error;
mod history;
mod metrics;
mod poll;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use strata_ops::Deployment;
use strata_ops::inspect::{InspectOptions, InspectReport};

pub use error::{AdminError, Result};

use crate::history::History;
use crate::poll::{Poller, Snapshot};

/// Default sampling interval of the background sampler and of the namespace cache.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Longest a `/metrics` scrape waits for a namespace scan before answering with the previous one
/// (Prometheus' default scrape timeout is 10 s, and the node polls need their share).
const SCRAPE_SCAN_WAIT: Duration = Duration::from_secs(3);
/// Default bound on the keys one namespace scan measures per master.
pub const DEFAULT_MAX_SCAN_KEYS: usize = 100_000;

/// What `strata serve` serves, and how.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The deployment watched (its topology is rediscovered on every poll).
    pub deployment: Deployment,
    /// Where to listen (port 0: any free port, see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// How often the sampler asks every node.
    pub interval: Duration,
    /// How long a namespace scan is reused (None: [`interval`](Self::interval)). Scans send one
    /// `PTTL` per key measured, which Redis counts as a keyspace hit.
    pub scan_interval: Option<Duration>,
    /// The audit log (JSON lines) served by `/api/audit`; none: an empty list.
    pub audit_log: Option<PathBuf>,
    /// Keys measured per master by a namespace scan; past it, figures are extrapolated.
    pub max_scan_keys: usize,
    /// TLS and basic auth for every endpoint (`--web-config`); none: plain HTTP, no auth.
    pub web: Option<strata_web::WebConfig>,
    /// Serve on a non-loopback address without a web config that protects it
    /// (`--insecure-listen`); otherwise [`Server::bind`] refuses to.
    pub insecure_listen: bool,
}

impl ServeConfig {
    /// A configuration with the default interval and scan bound, and no audit log.
    pub fn new(deployment: Deployment, listen: SocketAddr) -> Self {
        Self {
            deployment,
            listen,
            interval: DEFAULT_INTERVAL,
            scan_interval: None,
            audit_log: None,
            max_scan_keys: DEFAULT_MAX_SCAN_KEYS,
            web: None,
            insecure_listen: false,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServeConfig,
    poller: Arc<Poller>,
    latest: Mutex<Option<(Instant, Arc<Snapshot>)>>,
    history: Mutex<History>,
    /// Held across a scan, so concurrent requests wait for one scan instead of starting several.
    namespaces: tokio::sync::Mutex<Option<(Instant, NamespaceScan)>>,
    /// The last scan's result, readable while the next one runs.
    last_scan: Mutex<Option<NamespaceScan>>,
    /// `PTTL` lookups our scans added, per node (they count as keyspace hits in Redis).
    scan_lookups: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The last namespace scan, or why it failed.
pub(crate) type NamespaceScan = std::result::Result<Arc<InspectReport>, String>;

impl AppState {
    /// The state for `config` (the sampler is started by [`Server::run`]).
    pub fn new(config: ServeConfig) -> Self {
        let poller = Arc::new(Poller::new(config.deployment.clone()));
        Self {
            inner: Arc::new(Inner {
                config,
                poller,
                latest: Mutex::new(None),
                history: Mutex::new(History::default()),
                namespaces: tokio::sync::Mutex::new(None),
                last_scan: Mutex::new(None),
                scan_lookups: Mutex::new(Default::default()),
            }),
        }
    }

    pub(crate) fn config(&self) -> &ServeConfig {
        &self.inner.config
    }

    /// A fresh poll of every node.
    pub(crate) async fn poll(&self) -> std::result::Result<Arc<Snapshot>, String> {
        let poller = self.inner.poller.clone();
        let snapshot = tokio::task::spawn_blocking(move || poller.poll())
            .await
            .map_err(|e| format!("the poll did not finish: {e}"))?;
        let snapshot = Arc::new(snapshot);
        *lock(&self.inner.latest) = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    /// The latest poll if younger than the sampling interval, a fresh one otherwise.
    pub(crate) async fn recent(&self) -> std::result::Result<Arc<Snapshot>, String> {
        let latest = lock(&self.inner.latest).clone();
        match latest {
            Some((at, snapshot)) if at.elapsed() < self.inner.config.interval => Ok(snapshot),
            _ => self.poll().await,
        }
    }

    /// Polls and records one history sample.
    async fn sample(&self) {
        match self.poll().await {
            Ok(snapshot) => lock(&self.inner.history).record(&snapshot, Instant::now()),
            Err(e) => tracing::warn!(error = %e, "sampling the deployment failed"),
        }
    }

    pub(crate) fn history(&self) -> Vec<history::Sample> {
        lock(&self.inner.history).samples()
    }

    pub(crate) fn scan_lookups(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.inner.scan_lookups).clone()
    }

    /// The namespace scan, reused for the scan interval (failures too: a failing deployment is
    /// not rescanned on every request).
    pub(crate) async fn namespaces(&self) -> NamespaceScan {
        let mut cached = self.inner.namespaces.lock().await;
        let reuse = self.inner.config.scan_interval.unwrap_or(self.inner.config.interval);
        if let Some((at, scan)) = cached.as_ref()
            && at.elapsed() < reuse
        {
            return scan.clone();
        }
        let deployment = self.inner.poller.deployment();
        let options = InspectOptions { sample: Some(self.inner.config.max_scan_keys.max(1)), big_keys: 0 };
        let scan = tokio::task::spawn_blocking(move || {
            strata_ops::inspect::inspect(&deployment, &options, &indicatif::ProgressBar::hidden())
        })
        .await
        .map_err(|e| format!("the namespace scan did not finish: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
        if let Ok(report) = &scan {
            let mut lookups = lock(&self.inner.scan_lookups);
            for node in &report.nodes {
                *lookups.entry(node.addr.clone()).or_default() += node.inspect_lookups;
            }
        }
        let scan = scan.map(Arc::new);
        if let Err(e) = &scan {
            tracing::warn!(error = %e, "namespace scan failed");
        }
        *cached = Some((Instant::now(), scan.clone()));
        *lock(&self.inner.last_scan) = Some(scan.clone());
        scan
    }

    /// The namespace scan for a Prometheus scrape: a scan that takes longer than
    /// [`SCRAPE_SCAN_WAIT`] goes on in the background, and this scrape gets the previous
    /// result (None before the first), so a large keyspace cannot make the whole scrape time out.
    pub(crate) async fn namespaces_for_scrape(&self) -> Option<NamespaceScan> {
        let state = self.clone();
        let scan = tokio::spawn(async move { state.namespaces().await });
        match tokio::time::timeout(SCRAPE_SCAN_WAIT, scan).await {
            Ok(Ok(scan)) => Some(scan),
            _ => lock(&self.inner.last_scan).clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("listen", &self.inner.config.listen).finish_non_exhaustive()
    }
}

/// Every route: the API, `/metrics`, `/healthz` and the dashboard, behind the basic auth of
/// the state's web config if it has users.
pub fn router(state: AppState) -> Router {
    let web = state.config().web.clone();
    let router = api::routes().merge(dashboard::routes()).with_state(state);
    match web {
        Some(web) => web.protect(router),
        None => router,
    }
}

/// A bound admin server, not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
}

impl Server {
    /// Binds `config.listen`. A non-loopback address needs a web config that protects it (TLS
    /// or basic auth) or [`ServeConfig::insecure_listen`].
    pub async fn bind(config: ServeConfig) -> Result<Self> {
        strata_web::check_listen(config.listen, config.web.as_ref(), config.insecure_listen)
            .map_err(|e| AdminError::new(e.to_string()))?;
        if let Some(warning) = strata_web::listen_warning(config.listen, config.web.as_ref()) {
            tracing::warn!("{warning}");
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| AdminError::new(format!("cannot listen on {}: {e}", config.listen)))?;
        Ok(Self { listener, state: AppState::new(config) })
    }

    /// The address bound (the actual port when asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| AdminError::new(format!("reading the bound address: {e}")))
    }

    /// `https` when served over TLS, `http` otherwise.
    pub fn scheme(&self) -> &'static str {
        self.state.config().web.as_ref().map_or("http", strata_web::WebConfig::scheme)
    }

    /// Samples the deployment every interval and serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let state = self.state.clone();
        let sampler = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(state.config().interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                state.sample().await;
            }
        });
        let web = self.state.config().web.clone();
        let served = strata_web::serve(self.listener, router(self.state), web.as_ref(), shutdown).await;
        sampler.abort();
        served.map_err(|e| AdminError::new(format!("serving HTTP: {e}")))
    }
}

/// Binds and serves until Ctrl-C.
pub async fn serve(config: ServeConfig) -> Result<()> {
    let server = Server::bind(config).await?;
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
