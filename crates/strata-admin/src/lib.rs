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
//! ```no_run
//! # async fn run(deployment: strata_ops::Deployment) -> strata_admin::Result<()> {
//! let config = strata_admin::ServeConfig::new(deployment, "127.0.0.1:0".parse().expect("address"));
//! let server = strata_admin::Server::bind(config).await?;
//! println!("listening on http://{}", server.local_addr()?);
//! server.run(std::future::pending()).await
//! # }
//! ```

mod api;
mod dashboard;
mod error;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use strata_ops::Deployment;

pub use error::{AdminError, Result};

/// Default sampling interval of the background sampler and of the namespace cache.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Default bound on the keys one namespace scan measures per master.
pub const DEFAULT_MAX_SCAN_KEYS: usize = 100_000;

/// What `strata serve` serves, and how.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The deployment watched.
    pub deployment: Deployment,
    /// Where to listen (port 0: any free port, see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// How often the sampler asks every node, and how long a namespace scan is reused.
    pub interval: Duration,
    /// The audit log (JSON lines) served by `/api/audit`; none: an empty list.
    pub audit_log: Option<PathBuf>,
    /// Keys measured per master by a namespace scan; past it, figures are extrapolated.
    pub max_scan_keys: usize,
}

impl ServeConfig {
    /// A configuration with the default interval and scan bound, and no audit log.
    pub fn new(deployment: Deployment, listen: SocketAddr) -> Self {
        Self { deployment, listen, interval: DEFAULT_INTERVAL, audit_log: None, max_scan_keys: DEFAULT_MAX_SCAN_KEYS }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServeConfig,
}

impl AppState {
    /// The state for `config` (the sampler is started by [`Server::run`]).
    pub fn new(config: ServeConfig) -> Self {
        Self { inner: Arc::new(Inner { config }) }
    }

    pub(crate) fn config(&self) -> &ServeConfig {
        &self.inner.config
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("listen", &self.inner.config.listen).finish_non_exhaustive()
    }
}

/// Every route: the API, `/metrics`, `/healthz` and the dashboard.
pub fn router(state: AppState) -> Router {
    api::routes().merge(dashboard::routes()).with_state(state)
}

/// A bound admin server, not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
}

impl Server {
    /// Binds `config.listen`.
    pub async fn bind(config: ServeConfig) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| AdminError::new(format!("cannot listen on {}: {e}", config.listen)))?;
        Ok(Self { listener, state: AppState::new(config) })
    }

    /// The address bound (the actual port when asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| AdminError::new(format!("reading the bound address: {e}")))
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| AdminError::new(format!("serving HTTP: {e}")))
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
