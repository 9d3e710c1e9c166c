//! [`Edge`]: the `strata edge` reverse proxy, [`HttpCacheLayer`](crate::HttpCacheLayer) over
//! an [`Origin`], plus its own endpoints under `/_strata/`:
//!
//! - `POST /_strata/purge` with `Authorization: Bearer <token>` and one of `{"url": "http://…"}`,
//!   `{"key": "<surrogate key>"}` or `{"all": true}`; 204 when done, 401 without the token,
//!   404 when no token was configured (purging is then off), 400 on a bad body, 503 when the
//!   cache could not do it;
//! - `GET /_strata/metrics`: the cache's Prometheus metrics.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

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
}

impl EdgeConfig {
    /// An edge on `listen` in front of `origin`, without a purge API.
    pub fn new(listen: SocketAddr, origin: &str) -> Self {
        Self { listen, origin: origin.to_owned(), purge_token: None, connect_timeout: Duration::from_secs(5) }
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
        let origin = Origin::new(&config.origin, config.connect_timeout)?;
        let admin = Admin { http: http.clone(), token: config.purge_token };
        let router = Router::new()
            .route("/_strata/purge", post(purge))
            .route("/_strata/metrics", get(metrics))
            .with_state(admin)
            .fallback_service(http.layer().layer_origin(origin));
        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(Error::io)?;
        Ok(Self { listener, router })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener.local_addr().map_err(Error::io)
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown).await.map_err(Error::io)
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

async fn metrics(State(admin): State<Admin>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], admin.http.cache().prometheus_text())
        .into_response()
}
