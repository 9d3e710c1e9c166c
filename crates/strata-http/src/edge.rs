//! [`Edge`]: the `strata edge` reverse proxy, [`HttpCacheLayer`](crate::HttpCacheLayer) over
//! an [`Origin`], plus its own endpoints under `/_strata/`:
//!
//! - `POST /_strata/purge` with `Authorization: Bearer <token>` and one of `{"url": "http://…"}`,
//!   `{"key": "<surrogate key>"}` or `{"all": true}`; 204 when done, 401 without the token,
//!   404 when no token was configured (purging is then off), 400 on a bad body, 503 when the
//!   cache could not do it;
//! - `GET /_strata/metrics`: the cache's Prometheus metrics, behind the basic auth of the web
//!   config if it has users.
//!
//! A web config ([`strata_web::WebConfig`], `--web-config`) protects these endpoints: its TLS
//! covers the listener that serves them, its basic auth `/_strata/metrics` (the purge API keeps
//! its own bearer token: a request has one `Authorization` header, and a scraper's password
//! should not purge). With [`EdgeConfig::admin_listen`] they move to a listener of their own,
//! and the main one only proxies (it answers them 404, they never reach the origin) and
//! stays plain HTTP. The listener that serves them must be on loopback unless the
//! web config protects it or [`EdgeConfig::insecure_listen`] says so.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::FutureExt as _;
use serde::Deserialize;
use strata_web::WebConfig;

use crate::{Error, HttpCache, Origin};

/// The shortest purge token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Settings of an [`Edge`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EdgeConfig {
    /// Where it listens (port 0: a free one).
    pub listen: SocketAddr,
    /// The origin, `http://host:port`.
    pub origin: String,
    /// The bearer token of the purge API (none: no purge API).
    pub purge_token: Option<String>,
    /// How long a connection to the origin may take.
    pub connect_timeout: Duration,
    /// A listener of their own for the `/_strata/*` endpoints (none: they share `listen`).
    pub admin_listen: Option<SocketAddr>,
    /// TLS and basic auth for the `/_strata/*` endpoints (`--web-config`).
    pub web: Option<WebConfig>,
    /// Serve the `/_strata/*` endpoints on a non-loopback address without a web config that
    /// protects them (`--insecure-listen`); otherwise [`Edge::bind`] refuses to.
    pub insecure_listen: bool,
}

impl EdgeConfig {
    /// An edge on `listen` in front of `origin`, without a purge API.
    pub fn new(listen: SocketAddr, origin: &str) -> Self {
        Self {
            listen,
            origin: origin.to_owned(),
            purge_token: None,
            connect_timeout: Duration::from_secs(5),
            admin_listen: None,
            web: None,
            insecure_listen: false,
        }
    }

    /// With the `/_strata/*` endpoints on a listener of their own.
    pub fn admin_listen(mut self, addr: SocketAddr) -> Self {
        self.admin_listen = Some(addr);
        self
    }

    /// With the `/_strata/*` endpoints behind `web` (TLS, basic auth).
    pub fn web_config(mut self, web: WebConfig) -> Self {
        self.web = Some(web);
        self
    }

    /// Whether the `/_strata/*` endpoints may be served unprotected on a non-loopback address.
    pub fn insecure_listen(mut self, insecure: bool) -> Self {
        self.insecure_listen = insecure;
        self
    }

    /// With the purge API behind `token`.
    pub fn purge_token(mut self, token: impl Into<String>) -> Self {
        self.purge_token = Some(token.into());
        self
    }
}

/// A bound `strata edge`: [`run`](Self::run) serves until the shutdown future completes.
#[derive(Debug)]
pub struct Edge {
    listener: tokio::net::TcpListener,
    router: Router,
    /// The admin listener and its routes, when apart from the main one.
    admin: Option<(tokio::net::TcpListener, Router)>,
    web: Option<WebConfig>,
}

#[derive(Clone)]
struct Admin {
    http: HttpCache,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    url: Option<String>,
    key: Option<String>,
    #[serde(default)]
    all: bool,
}

impl Edge {
    /// Binds the listener and connects nothing yet (the origin is reached per request).
    pub async fn bind(http: HttpCache, config: EdgeConfig) -> Result<Self, Error> {
        if config.purge_token.as_ref().is_some_and(|t| t.len() < MIN_TOKEN_LEN) {
            return Err(Error::config(format!("the purge token must have at least {MIN_TOKEN_LEN} characters")));
        }
        let admin_addr = config.admin_listen.unwrap_or(config.listen);
        strata_web::check_listen(admin_addr, config.web.as_ref(), config.insecure_listen).map_err(Error::config)?;
        if let Some(warning) = strata_web::listen_warning(admin_addr, config.web.as_ref()) {
            tracing::warn!("{warning}");
        }
        let origin = Origin::new(&config.origin, config.connect_timeout)?;
        let admin = Admin { http: http.clone(), token: config.purge_token };
        let metrics = Router::new().route("/_strata/metrics", get(metrics)).with_state(admin.clone());
        let metrics = match &config.web {
            Some(web) => web.protect(metrics),
            None => metrics,
        };
        let admin_routes = Router::new().route("/_strata/purge", post(purge)).with_state(admin).merge(metrics);
        let proxy = http.layer().layer_origin(origin);
        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(Error::io)?;
        let (router, admin) = match config.admin_listen {
            None => (admin_routes.fallback_service(proxy), None),
            Some(addr) => {
                let admin_listener = tokio::net::TcpListener::bind(addr).await.map_err(Error::io)?;
                let main = Router::new()
                    .route("/_strata/purge", any(elsewhere))
                    .route("/_strata/metrics", any(elsewhere))
                    .fallback_service(proxy);
                (main, Some((admin_listener, admin_routes)))
            }
        };
        Ok(Self { listener, router, admin, web: config.web })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener.local_addr().map_err(Error::io)
    }

    /// The address of the `/_strata/*` endpoints' own listener, if they have one.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, Error> {
        self.admin.as_ref().map(|(listener, _)| listener.local_addr()).transpose().map_err(Error::io)
    }

    /// `https` when the main listener is TLS (a web config with TLS and no admin listener).
    pub fn scheme(&self) -> &'static str {
        match (&self.web, &self.admin) {
            (Some(web), None) => web.scheme(),
            _ => "http",
        }
    }

    /// `https` when the `/_strata/*` endpoints are served over TLS.
    pub fn admin_scheme(&self) -> &'static str {
        self.web.as_ref().map_or("http", WebConfig::scheme)
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let shutdown = shutdown.boxed().shared();
        match self.admin {
            None => strata_web::serve(self.listener, self.router, self.web.as_ref(), shutdown).await.map_err(Error::io),
            Some((admin_listener, admin_router)) => {
                let main = axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown.clone());
                let admin = strata_web::serve(admin_listener, admin_router, self.web.as_ref(), shutdown);
                tokio::try_join!(async { main.await }, admin).map(|_| ()).map_err(Error::io)
            }
        }
    }
}

impl crate::HttpCacheLayer {
    fn layer_origin(&self, origin: Origin) -> crate::HttpCacheService<Origin> {
        tower::Layer::layer(self, origin)
    }
}

/// Compares in time that depends on the lengths only.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn purge(State(admin): State<Admin>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some(token) = admin.token.as_deref() else {
        return (StatusCode::NOT_FOUND, "the purge API is off: start strata edge with --purge-token\n").into_response();
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| same_secret(g.trim().as_bytes(), token.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required\n",
        )
            .into_response();
    }
    let purge: Purge = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(err) => {
            return (StatusCode::BAD_REQUEST, format!("expected {{\"url\"|\"key\"|\"all\"}}: {err}\n")).into_response();
        }
    };
    let outcome = match (purge.url, purge.key, purge.all) {
        (Some(url), None, false) => admin.http.purge_url(&url).await,
        (None, Some(key), false) => admin.http.purge_key(&key).await,
        (None, None, true) => admin.http.purge_all().await,
        _ => return (StatusCode::BAD_REQUEST, "give exactly one of url, key, all\n").into_response(),
    };
    match outcome {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) if err.is_config() => (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, format!("{err}\n")).into_response(),
    }
}

/// `/_strata/*` on the main listener when they have one of their own: they never reach the origin.
async fn elsewhere() -> Response {
    (StatusCode::NOT_FOUND, "this endpoint is on strata edge's admin listener (--admin-listen)\n").into_response()
}

async fn metrics(State(admin): State<Admin>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], admin.http.cache().prometheus_text())
        .into_response()
}
