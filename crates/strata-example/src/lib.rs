//! # strata-example: an HTTP service over a real database, cached with Strata
//!
//! An axum API over SQLite (embedded, the default) or PostgreSQL, showing each use of the
//! [`strata`] cache and of plain Redis structures next to it:
//!
//! | endpoint | what it shows |
//! | --- | --- |
//! | `GET /users/{id}`, `PUT /users/{id}` | cache-aside with negative caching (a missing user is a cached 404); a write deletes the cached profile on every instance |
//! | `GET /products?category=C`, `GET /products/{id}`, `POST /products/bulk-update` | cached listings; a bulk update is one SQL statement and one namespace invalidation |
//! | `POST /sessions`, `GET /sessions/{token}`, `DELETE /sessions/{token}` | sessions with a sliding idle TTL and an absolute lifetime |
//! | `GET /limited` | fixed-window rate limiting per `X-Client-Id` (`INCR` + `PEXPIRE`), 429 past the limit |
//! | `POST /scores`, `GET /leaderboard?top=N` | a leaderboard in a sorted set |
//! | `POST /visits`, `GET /visits/{page}` | unique visitors in a HyperLogLog |
//! | `GET /healthz`, `GET /stats` | Redis reachability; database queries and cache hit ratio |
//!
//! The layers are usable on their own:
//!
//! - [`db`]: the SQL layer alone ([`db::Db`]), counting its queries: a benchmark runs the same
//!   queries with and without the cache.
//! - [`service`]: the cached services ([`service::Users`], [`service::Products`], ...), for
//!   calling "get a profile through Strata" without HTTP.
//! - [`app`]: the axum [`Router`](axum::Router) over [`service::Services`], for serving on any
//!   listener (tests use `127.0.0.1:0`) or calling in-process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use strata_example::{db::Db, raw::RawRedis, service};
//!
//! let urls = vec!["redis://127.0.0.1:6379".to_owned()];
//! let db = Db::open("sqlite:/tmp/example.sqlite3").await?;
//! db.seed_users(1_000).await?;
//! let cache = service::connect_cache(&urls).await?;
//! let redis = RawRedis::connect(&urls, Duration::from_secs(1)).await?;
//! let services = service::Services::new(db, cache, redis, &service::ServiceConfig::default())?;
//!
//! let profile = services.users.get(42).await?; // the database once, then the cache
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, strata_example::app(services)).await?;
//! # Ok(()) }
//! ```

pub mod db;
mod error;
mod http;
pub mod raw;
pub mod service;

pub use error::{Error, ErrorKind, Result};
pub use http::{MAX_TOP, app};
