//! The cached service layer: what the HTTP handlers call, usable without HTTP (benchmarks).
//!
//! | service | Strata / Redis feature |
//! | --- | --- |
//! | [`Users`] | cache-aside ([`Cache::get_or_set_optional`]) with negative caching; a write is written through ([`Cache::update_through_versioned`]: the row the `UPDATE ... RETURNING` gave is cached over an older version of it, one round trip after the update; every other instance's L1 follows through client tracking) |
//! | [`Products`] | cached items and per-category listings in one namespace; a bulk update raises it with one [`Cache::invalidate_namespace`] |
//! | [`Sessions`] | values set with an absolute lifetime; a raw `PEXPIRE` on each read slides the idle timeout |
//! | [`RateLimiter`] | fixed-window counter: `INCR` + `PEXPIRE` in one pipeline |
//! | [`Leaderboard`] | sorted set: `ZINCRBY`, `ZREVRANGE ... WITHSCORES` |
//! | [`Visitors`] | HyperLogLog: `PFADD`, `PFCOUNT` |
//!
//! Every key, cached or raw, is built by one [`KeySchema`] (`{app}:v1:...`), so raw keys get the
//! same validation as cached ones and live under the same prefix (ACLs, inspection).
//! Each raw command addresses one key: valid under a Redis Cluster.

mod counters;
mod products;
mod sessions;
mod users;

use std::time::Duration;

use strata::{Cache, CacheBuilder, KeySchema, LeaseConfig};

pub use counters::{Decision, Leaderboard, MAX_MEMBER_LEN, RateLimiter, Visitors};
pub use products::Products;
pub use sessions::{Session, Sessions};
pub use users::Users;

use crate::db::Db;
use crate::error::Result;
use crate::raw::RawRedis;

/// Settings of the service layer.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The app segment of every key (default `example`).
    pub app: String,
    /// Requests allowed per client and window (default 100).
    pub rate_limit: u64,
    /// Length of a rate-limiting window (default 1 s).
    pub rate_window: Duration,
    /// A session not read for this long ends (default 30 minutes).
    pub session_idle: Duration,
    /// A session ends this long after its creation, however often it is read (default 24 h).
    pub session_max: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            app: "example".into(),
            rate_limit: 100,
            rate_window: Duration::from_secs(1),
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(24 * 3600),
        }
    }
}

/// Every service, sharing one database, one cache and one raw Redis connection. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    /// User profiles.
    pub users: Users,
    /// Products and listings.
    pub products: Products,
    /// Sessions.
    pub sessions: Sessions,
    /// Per-client rate limiting.
    pub limiter: RateLimiter,
    /// The leaderboard.
    pub leaderboard: Leaderboard,
    /// Unique visitors per page.
    pub visitors: Visitors,
    /// The HTTP response cache of the read endpoints that allow it (the product pages).
    pub http: strata_http::HttpCache,
    db: Db,
    cache: Cache,
}

impl Services {
    /// Assembles the services. Fails on an invalid app name or a zero window / limit.
    pub fn new(db: Db, cache: Cache, redis: RawRedis, config: &ServiceConfig) -> Result<Services> {
        let schema = KeySchema::new(&config.app, 1)?;
        Ok(Services {
            users: Users::new(db.clone(), cache.clone(), schema.clone()),
            products: Products::new(db.clone(), cache.clone(), schema.clone()),
            sessions: Sessions::new(cache.clone(), redis.clone(), schema.clone(), config)?,
            limiter: RateLimiter::new(redis.clone(), schema.clone(), config.rate_limit, config.rate_window)?,
            leaderboard: Leaderboard::new(redis.clone(), &schema)?,
            visitors: Visitors::new(redis, schema.clone()),
            http: strata_http::HttpCache::new(cache.clone(), schema, "pages", strata_http::Config::default())
                .map_err(|e| crate::error::Error::new(crate::error::ErrorKind::Config, e.to_string()))?,
            db,
            cache,
        })
    }

    /// The database (uncached).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

/// Connects a Strata cache: one URL is a standalone server, several are cluster seeds.
pub async fn connect_cache(urls: &[String]) -> Result<Cache> {
    let builder = match urls {
        [] => return Err(crate::error::Error::config("at least one redis URL")),
        [url] => Cache::builder().redis_url(url.clone()),
        seeds => Cache::builder().cluster(seeds.to_vec()),
    };
    Ok(configure(builder).build().await?)
}

/// The service's Strata settings on top of a connection: profiles are written with
/// [`Cache::update_through_versioned`], so loads start a profile's write version
/// ([`LeaseConfig::versioned_writes`]) and its next update stores the row it wrote instead of
/// emptying the key.
pub fn configure(builder: CacheBuilder) -> CacheBuilder {
    builder.leases(LeaseConfig::default().versioned_writes(true))
}
