//! The HTTP layer of Strata: a shared HTTP response cache (RFC 9111, with RFC 5861's
//! `stale-if-error`) on a [`strata::Cache`], so every instance of a service, or every edge
//! proxy in front of it, shares one response cache that a purge reaches at once.
//!
//! # Layout
//!
//! - [`HttpCache`] (this file): the settings and the store, cheap to clone; purges.
//! - `layer.rs`: [`HttpCacheLayer`] / [`HttpCacheService`], a tower layer for axum or hyper
//!   services. A request goes: lookup (URL entry, then the variant its `Vary` selects) → the
//!   stored policy's verdict (`http-cache-semantics`) → fresh: served; stale: revalidated with
//!   the origin (a 304 refreshes it), or served stale when the origin fails and the response
//!   allows it → miss: the origin's response, stored when it may be.
//! - `rules.rs`: what RFC 9111 asks beyond `http-cache-semantics`: strict `Age`, `Vary: *`,
//!   invalidation by unsafe methods (the URL, `Location`, `Content-Location`), stale on
//!   failure, the client's own conditional requests.
//! - `store.rs`: how responses sit in Strata (keys, variants, TTLs, surrogate keys as tags).
//! - `flight.rs`: one background revalidation per URL per process. Concurrent misses of one URL,
//!   in every process on the same Redis, send the origin one request: Strata's own single-flight
//!   and lease, on a short-lived fetch marker (`layer.rs`).
//! - `origin.rs`: [`Origin`], a hyper client service that forwards to one origin: the inner
//!   service of `strata edge`.
//! - `edge.rs`: [`Edge`], the `strata edge` reverse proxy: the layer over [`Origin`], plus
//!   `/_strata/purge` (token) and `/_strata/metrics`, behind a web config (`strata-web`: TLS,
//!   basic auth) and on a listener of their own if asked.
//!
//! Purge by URL, by surrogate key (the `Surrogate-Key` response header; each name becomes a
//! Strata tag) and by namespace are [`HttpCache::purge_url`], [`HttpCache::purge_key`] and
//! [`HttpCache::purge_all`]. Each goes through Strata's coherent invalidation: every instance
//! stops serving the purged responses within the cache's invalidation bound.

// The background revalidation's future nests the origin's and the store's; proving it `Send`
// takes more than the default depth.
#![recursion_limit = "256"]

mod edge;
mod error;
mod flight;
mod layer;
mod origin;
mod rules;
mod store;

use std::sync::Arc;
use std::time::Duration;

use strata::{Cache, KeySchema};

pub use edge::{Edge, EdgeConfig, MIN_TOKEN_LEN};
pub use error::{BoxError, Error};
pub use layer::{HttpCacheLayer, HttpCacheService, ResponseBody, X_CACHE};
pub use origin::Origin;

use store::Store;

/// Settings of an [`HttpCache`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The scheme of the URLs requests are cached under (`http` behind a TLS terminator too,
    /// unless the service is reached over both).
    pub scheme: String,
    /// Largest body stored (bytes); a larger one is passed through. At most Strata's value limit.
    pub max_body: usize,
    /// How long a stale response with a validator is kept for revalidation (and a response
    /// without one for serving stale when the origin is down), beyond its freshness.
    pub keep: Duration,
    /// How long the origin has to answer (its headers, then a body to store) before the request
    /// fails with a 504, or a stale response stands in.
    pub origin_timeout: Duration,
    /// Store responses that set a cookie (`Set-Cookie`) and are not `public`, as RFC 9111 §7.3
    /// allows. Off by default: a stored cookie is handed to every client that gets the response.
    pub store_set_cookie: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheme: "http".to_owned(),
            max_body: 512 * 1024,
            keep: Duration::from_secs(3600),
            origin_timeout: Duration::from_secs(30),
            store_set_cookie: false,
        }
    }
}

/// A shared HTTP response cache on a Strata [`Cache`]. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct HttpCache {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    config: Config,
    flights: flight::Flights,
}

impl std::fmt::Debug for HttpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCache").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl HttpCache {
    /// Responses of `cache` under `schema`'s entity `namespace` (e.g. `KeySchema::new("edge",
    /// 1)` and `"site"`: keys `edge:v1:site:…`).
    pub fn new(cache: Cache, schema: KeySchema, namespace: &str, config: Config) -> Result<Self, Error> {
        if config.max_body == 0 {
            return Err(Error::config("max_body must be at least 1 byte"));
        }
        let store = Store::new(cache, schema, namespace)?;
        Ok(Self { shared: Arc::new(Shared { store, config, flights: Default::default() }) })
    }

    /// The layer that caches a service's responses here.
    pub fn layer(&self) -> HttpCacheLayer {
        HttpCacheLayer::new(self.clone())
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The Strata cache underneath.
    pub fn cache(&self) -> &Cache {
        self.shared.store.cache()
    }

    /// Removes what is stored for an absolute URL (`http://host/path?query`), every variant.
    /// Responses are stored under [`Config::scheme`], so the URL must use it.
    pub async fn purge_url(&self, url: &str) -> Result<(), Error> {
        let uri: http::Uri = url.parse().map_err(Error::config)?;
        let scheme = self.config().scheme.as_str();
        if uri.scheme_str() != Some(scheme) {
            return Err(Error::config(format!("responses are stored under {scheme}:// URLs, not {url}")));
        }
        let url = rules::effective_url(scheme, &uri, &http::HeaderMap::new())
            .ok_or_else(|| Error::config("the URL has no host"))?;
        self.shared.store.bump_url_epoch(&url).await?;
        self.shared.store.invalidate(&url).await
    }

    /// Removes every response whose `Surrogate-Key` header named `key`.
    pub async fn purge_key(&self, key: &str) -> Result<(), Error> {
        let tag = self.shared.store.tag(key)?;
        self.shared.store.bump_epoch().await?;
        Ok(self.cache().invalidate_tag(&tag).await?)
    }

    /// Removes every response of this cache's namespace.
    pub async fn purge_all(&self) -> Result<(), Error> {
        let namespace = self.shared.store.namespace()?;
        self.shared.store.bump_epoch().await?;
        Ok(self.cache().invalidate_namespace(&namespace).await?)
    }
}
