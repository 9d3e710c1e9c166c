//! The source of truth: users and products in SQLite (embedded, the default) or PostgreSQL.
//!
//! [`Db`] is the SQL layer alone, with no cache in front, so that a benchmark can run the same
//! queries with and without Strata. Every statement sent to the database is counted
//! ([`Db::queries`]): that is how tests show that a cached read did not reach the database.
//!
//! ```no_run
//! # async fn demo() -> strata_example::Result<()> {
//! use strata_example::db::{Db, UserUpdate};
//!
//! let db = Db::open("sqlite:/tmp/example.sqlite3").await?;
//! db.seed_users(1_000).await?;
//! let user = db.get_user(42).await?.expect("seeded");
//! let update = UserUpdate { name: Some("Ada".into()), ..UserUpdate::default() };
//! let (user, version) = db.update_user(user.id, &update).await?.expect("exists");
//! assert_eq!((user.name.as_str(), version), ("Ada", 2));
//! # Ok(()) }
//! ```

mod local_pg;
mod postgres;
mod sqlite;

pub use local_pg::{LocalPostgres, PG_BIN};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A user profile row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Free text, a few hundred bytes when seeded (a realistic profile size).
    pub bio: String,
}

/// Fields to change on a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUpdate {
    /// New display name.
    #[serde(default)]
    pub name: Option<String>,
    /// New e-mail address.
    #[serde(default)]
    pub email: Option<String>,
    /// New bio.
    #[serde(default)]
    pub bio: Option<String>,
}

/// A product row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Primary key.
    pub id: i64,
    /// Category name (`cat-0`, `cat-1`... when seeded).
    pub category: String,
    /// Product name.
    pub name: String,
    /// Price in cents.
    pub price_cents: i64,
}

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (rusqlite, bundled).
    Sqlite,
    /// PostgreSQL (tokio-postgres).
    Postgres,
}

/// A handle on the database. Cheap to clone; clones share connections and the query counter.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    queries: AtomicU64,
    extra_latency_ns: AtomicU64,
    /// Nanoseconds spent in `update_user` (added latency included), summed over calls.
    update_ns: AtomicU64,
}

enum Conn {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("backend", &self.backend()).field("queries", &self.queries()).finish()
    }
}

/// Bounds a listing so that one request cannot ask for a whole table.
pub const MAX_LISTING: usize = 1_000;

impl Db {
    /// Opens (and creates the tables of) a database:
    ///
    /// - `postgres://user@host:port/db` or `postgresql://...`: PostgreSQL (no TLS: a loopback or
    ///   private-network database; add TLS before pointing it elsewhere);
    /// - `sqlite:PATH`, `sqlite://PATH` or a plain file path: SQLite, created if missing;
    /// - `sqlite::memory:`: a private in-memory SQLite database (one connection).
    pub async fn open(url: &str) -> Result<Db> {
        let conn = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Conn::Postgres(postgres::Postgres::connect(url).await?)
        } else {
            let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
            if path.is_empty() {
                return Err(Error::config("empty sqlite path"));
            }
            Conn::Sqlite(sqlite::Sqlite::open(path).await?)
        };
        let (queries, extra_latency_ns, update_ns) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        Ok(Db { inner: Arc::new(Inner { conn, queries, extra_latency_ns, update_ns }) })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self.inner.conn {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Statements sent to the database since it was opened (seeding included).
    pub fn queries(&self) -> u64 {
        self.inner.queries.load(Ordering::Relaxed)
    }

    /// Time spent in [`update_user`](Self::update_user) since the database was opened, summed
    /// over calls (concurrent calls each count): a benchmark splits a write's time between
    /// the database and what the cache did around it.
    pub fn update_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.inner.update_ns.load(Ordering::Relaxed))
    }

    /// Adds `latency` before every statement from now on (zero, the default, adds nothing).
    ///
    /// For benchmarks only, and labelled as such in their reports: it stands in for a database
    /// on another host or under load, where a point query costs a network round trip or more.
    pub fn set_extra_latency(&self, latency: std::time::Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.inner.extra_latency_ns.store(ns, Ordering::Relaxed);
    }

    async fn count(&self) {
        self.inner.queries.fetch_add(1, Ordering::Relaxed);
        let ns = self.inner.extra_latency_ns.load(Ordering::Relaxed);
        if ns > 0 {
            tokio::time::sleep(std::time::Duration::from_nanos(ns)).await;
        }
    }

    /// Makes sure users `1..=n` exist (existing rows are left alone). One statement.
    pub async fn seed_users(&self, n: u64) -> Result<()> {
        self.count().await;
        match &self.inner.conn {
            Conn::Sqlite(c) => c.seed_users(n).await,
            Conn::Postgres(c) => c.seed_users(n).await,
        }
    }

    /// Makes sure products `1..=n` exist, spread over `categories` categories `cat-0`...
    pub async fn seed_products(&self, n: u64, categories: u64) -> Result<()> {
        if categories == 0 {
            return Err(Error::invalid("at least one category"));
        }
        self.count().await;
        match &self.inner.conn {
            Conn::Sqlite(c) => c.seed_products(n, categories).await,
            Conn::Postgres(c) => c.seed_products(n, categories).await,
        }
    }

    /// One user by id.
    pub async fn get_user(&self, id: i64) -> Result<Option<User>> {
        self.count().await;
        match &self.inner.conn {
            Conn::Sqlite(c) => c.get_user(id).await,
            Conn::Postgres(c) => c.get_user(id).await,
        }
    }

    /// Changes the given fields of a user; returns the row as stored and its version (a column
    /// every update raises by one, which orders writes for
    /// [`Cache::update_through_versioned`](strata::Cache::update_through_versioned)), or `None`
    /// when there is no such user.
    pub async fn update_user(&self, id: i64, update: &UserUpdate) -> Result<Option<(User, u64)>> {
        let started = std::time::Instant::now();
        self.count().await;
        let row = match &self.inner.conn {
            Conn::Sqlite(c) => c.update_user(id, update).await,
            Conn::Postgres(c) => c.update_user(id, update).await,
        };
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.inner.update_ns.fetch_add(ns, Ordering::Relaxed);
        row
    }

    /// One product by id.
    pub async fn get_product(&self, id: i64) -> Result<Option<Product>> {
        self.count().await;
        match &self.inner.conn {
            Conn::Sqlite(c) => c.get_product(id).await,
            Conn::Postgres(c) => c.get_product(id).await,
        }
    }

    /// The products of a category, by id, at most [`MAX_LISTING`].
    pub async fn list_products(&self, category: &str) -> Result<Vec<Product>> {
        self.count().await;
        match &self.inner.conn {
            Conn::Sqlite(c) => c.list_products(category).await,
            Conn::Postgres(c) => c.list_products(category).await,
        }
    }

    /// Changes the price of every product of `category` by `percent` (rounded to the cent, at
    /// least 0); returns how many rows changed. One statement.
    pub async fn reprice_category(&self, category: &str, percent: i64) -> Result<u64> {
        if !(-100..=1000).contains(&percent) {
            return Err(Error::invalid(format!("percent must be in [-100, 1000], got {percent}")));
        }
        self.count().await;
        match &self.inner.conn {
            Conn::Sqlite(c) => c.reprice_category(category, percent).await,
            Conn::Postgres(c) => c.reprice_category(category, percent).await,
        }
    }
}

/// The seeded bio: about 300 bytes, so a cached profile weighs what a real one would.
pub(crate) const BIO: &str = "Enjoys distributed systems, long walks between data centres and \
    short TTLs. Has opinions on cache invalidation, naming things and off-by-one errors. Writes \
    Rust by day and reads Redis source code by night. Believes every read can be made faster, \
    and that a cache that lies is worse than no cache at all.";
