//! SQLite through rusqlite. rusqlite is synchronous: each query runs on tokio's blocking pool,
//! on one of a few connections (WAL mode lets readers proceed while one writer writes).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{BIO, MAX_LISTING, Product, User, UserUpdate};
use crate::error::{Error, ErrorKind, Result};

/// Connections kept open on a file database: enough for the blocking pool to overlap reads on
/// a small machine without holding many file handles.
const POOL: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id    INTEGER PRIMARY KEY,
    name  TEXT NOT NULL,
    email TEXT NOT NULL,
    bio   TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS products (
    id          INTEGER PRIMARY KEY,
    category    TEXT NOT NULL,
    name        TEXT NOT NULL,
    price_cents INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS products_by_category ON products (category, id);
";

pub(super) struct Sqlite {
    conns: Arc<Vec<Mutex<Connection>>>,
    next: AtomicUsize,
}

impl Sqlite {
    pub(super) async fn open(path: &str) -> Result<Self> {
        let path = path.to_owned();
        let conns = tokio::task::spawn_blocking(move || -> Result<Vec<Mutex<Connection>>> {
            // Every connection to ":memory:" would be its own empty database.
            let n = if path == ":memory:" { 1 } else { POOL };
            let mut conns = Vec::with_capacity(n);
            for i in 0..n {
                let conn = Connection::open(&path)?;
                // Writers wait for each other instead of failing with SQLITE_BUSY.
                conn.busy_timeout(Duration::from_secs(5))?;
                if i == 0 {
                    conn.pragma_update(None, "journal_mode", "WAL")?;
                    conn.execute_batch(SCHEMA)?;
                    add_version_column(&conn)?;
                }
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                conns.push(Mutex::new(conn));
            }
            Ok(conns)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("sqlite open task failed: {e}")))??;
        Ok(Self { conns: Arc::new(conns), next: AtomicUsize::new(0) })
    }

    /// Runs `f` on the next connection, on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conns = self.conns.clone();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a rusqlite connection half-changed in
            // a way later statements would see (each statement is atomic), so a poisoned lock
            // is still usable.
            let mut conn = conns[i].lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn).map_err(Error::from)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Database, format!("sqlite task failed: {e}")))?
    }

    pub(super) async fn seed_users(&self, n: u64) -> Result<()> {
        let n = i64::try_from(n).map_err(|_| Error::invalid("too many users"))?;
        self.with(move |c| {
            c.execute(
                "WITH RECURSIVE s(i) AS (SELECT 1 WHERE ?1 >= 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?1)
                 INSERT OR IGNORE INTO users (id, name, email, bio)
                 SELECT i, 'user-' || i, 'user' || i || '@example.com', ?2 FROM s",
                params![n, BIO],
            )
        })
        .await
        .map(drop)
    }

    pub(super) async fn seed_products(&self, n: u64, categories: u64) -> Result<()> {
        let n = i64::try_from(n).map_err(|_| Error::invalid("too many products"))?;
        let k = i64::try_from(categories).map_err(|_| Error::invalid("too many categories"))?;
        self.with(move |c| {
            c.execute(
                "WITH RECURSIVE s(i) AS (SELECT 1 WHERE ?1 >= 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?1)
                 INSERT OR IGNORE INTO products (id, category, name, price_cents)
                 SELECT i, 'cat-' || (i % ?2), 'product-' || i, 100 + (i * 37) % 10000 FROM s",
                params![n, k],
            )
        })
        .await
        .map(drop)
    }

    pub(super) async fn get_user(&self, id: i64) -> Result<Option<User>> {
        self.with(move |c| {
            c.prepare_cached("SELECT id, name, email, bio FROM users WHERE id = ?1")?
                .query_row(params![id], user_row)
                .optional()
        })
        .await
    }

    pub(super) async fn update_user(&self, id: i64, u: &UserUpdate) -> Result<Option<(User, u64)>> {
        let u = u.clone();
        self.with(move |c| {
            c.prepare_cached(
                "UPDATE users SET name = COALESCE(?2, name), email = COALESCE(?3, email), bio = COALESCE(?4, bio),
                 version = version + 1 WHERE id = ?1 RETURNING id, name, email, bio, version",
            )?
            .query_row(params![id, u.name, u.email, u.bio], |r| Ok((user_row(r)?, r.get::<_, i64>(4)? as u64)))
            .optional()
        })
        .await
    }

    pub(super) async fn get_product(&self, id: i64) -> Result<Option<Product>> {
        self.with(move |c| {
            c.prepare_cached("SELECT id, category, name, price_cents FROM products WHERE id = ?1")?
                .query_row(params![id], product_row)
                .optional()
        })
        .await
    }

    pub(super) async fn list_products(&self, category: &str) -> Result<Vec<Product>> {
        let category = category.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, category, name, price_cents FROM products WHERE category = ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![category, MAX_LISTING as i64], product_row)?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn reprice_category(&self, category: &str, percent: i64) -> Result<u64> {
        let category = category.to_owned();
        self.with(move |c| {
            c.prepare_cached(
                "UPDATE products SET price_cents = MAX(0, (price_cents * (100 + ?2) + 50) / 100) WHERE category = ?1",
            )?
            .execute(params![category, percent])
        })
        .await
        .map(|n| n as u64)
    }
}

/// A database made before `users.version` existed gets the column (every row at version 1).
fn add_version_column(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool =
        conn.query_row("SELECT EXISTS (SELECT 1 FROM pragma_table_info('users') WHERE name = 'version')", [], |r| {
            r.get(0)
        })?;
    if !has {
        conn.execute_batch("ALTER TABLE users ADD COLUMN version INTEGER NOT NULL DEFAULT 1")?;
    }
    Ok(())
}

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User { id: r.get(0)?, name: r.get(1)?, email: r.get(2)?, bio: r.get(3)? })
}

fn product_row(r: &Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product { id: r.get(0)?, category: r.get(1)?, name: r.get(2)?, price_cents: r.get(3)? })
}
