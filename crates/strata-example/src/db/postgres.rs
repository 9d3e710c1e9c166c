//! PostgreSQL through tokio-postgres: a few connections, statements prepared once per connection.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::{Client, NoTls, Row, Statement};

use super::{BIO, MAX_LISTING, Product, User, UserUpdate};
use crate::error::{Error, Result};

/// A server process runs one connection's statements one at a time: a few connections let
/// concurrent requests overlap. tokio-postgres also pipelines requests on each of them.
const POOL: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id    BIGINT PRIMARY KEY,
    name  TEXT NOT NULL,
    email TEXT NOT NULL,
    bio   TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS products (
    id          BIGINT PRIMARY KEY,
    category    TEXT NOT NULL,
    name        TEXT NOT NULL,
    price_cents BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS products_by_category ON products (category, id);
-- A database made before the column existed (every row at version 1).
ALTER TABLE users ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 1;
";

struct Conn {
    client: Client,
    get_user: Statement,
    update_user: Statement,
    get_product: Statement,
    list_products: Statement,
    reprice: Statement,
}

pub(super) struct Postgres {
    conns: Vec<Conn>,
    next: AtomicUsize,
}

impl Postgres {
    pub(super) async fn connect(url: &str) -> Result<Self> {
        let mut conns = Vec::with_capacity(POOL);
        for i in 0..POOL {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
            // The connection object does the I/O; it ends when the client is dropped.
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!("postgres connection ended: {e}");
                }
            });
            if i == 0 {
                client.batch_execute(SCHEMA).await?;
            }
            conns.push(Conn {
                get_user: client.prepare("SELECT id, name, email, bio FROM users WHERE id = $1").await?,
                update_user: client
                    .prepare(
                        "UPDATE users SET name = COALESCE($2, name), email = COALESCE($3, email),
                         bio = COALESCE($4, bio), version = version + 1 WHERE id = $1
                         RETURNING id, name, email, bio, version",
                    )
                    .await?,
                get_product: client
                    .prepare("SELECT id, category, name, price_cents FROM products WHERE id = $1")
                    .await?,
                list_products: client
                    .prepare(
                        "SELECT id, category, name, price_cents FROM products WHERE category = $1
                         ORDER BY id LIMIT $2",
                    )
                    .await?,
                reprice: client
                    .prepare(
                        "UPDATE products SET price_cents = GREATEST(0, (price_cents * (100 + $2::BIGINT) + 50) / 100)
                         WHERE category = $1",
                    )
                    .await?,
                client,
            });
        }
        Ok(Self { conns, next: AtomicUsize::new(0) })
    }

    fn conn(&self) -> &Conn {
        &self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()]
    }

    pub(super) async fn seed_users(&self, n: u64) -> Result<()> {
        let n = i64::try_from(n).map_err(|_| Error::invalid("too many users"))?;
        self.conn()
            .client
            .execute(
                "INSERT INTO users (id, name, email, bio)
                 SELECT i, 'user-' || i, 'user' || i || '@example.com', $2 FROM generate_series(1, $1::BIGINT) AS i
                 ON CONFLICT (id) DO NOTHING",
                &[&n, &BIO],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn seed_products(&self, n: u64, categories: u64) -> Result<()> {
        let n = i64::try_from(n).map_err(|_| Error::invalid("too many products"))?;
        let k = i64::try_from(categories).map_err(|_| Error::invalid("too many categories"))?;
        self.conn()
            .client
            .execute(
                "INSERT INTO products (id, category, name, price_cents)
                 SELECT i, 'cat-' || (i % $2::BIGINT), 'product-' || i, 100 + (i * 37) % 10000
                 FROM generate_series(1, $1::BIGINT) AS i
                 ON CONFLICT (id) DO NOTHING",
                &[&n, &k],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn get_user(&self, id: i64) -> Result<Option<User>> {
        let c = self.conn();
        Ok(c.client.query_opt(&c.get_user, &[&id]).await?.map(|r| user_row(&r)).transpose()?)
    }

    pub(super) async fn update_user(&self, id: i64, u: &UserUpdate) -> Result<Option<(User, u64)>> {
        let c = self.conn();
        let row = c.client.query_opt(&c.update_user, &[&id, &u.name, &u.email, &u.bio]).await?;
        let versioned = |r: &Row| Ok::<_, tokio_postgres::Error>((user_row(r)?, r.try_get::<_, i64>(4)? as u64));
        Ok(row.map(|r| versioned(&r)).transpose()?)
    }

    pub(super) async fn get_product(&self, id: i64) -> Result<Option<Product>> {
        let c = self.conn();
        Ok(c.client.query_opt(&c.get_product, &[&id]).await?.map(|r| product_row(&r)).transpose()?)
    }

    pub(super) async fn list_products(&self, category: &str) -> Result<Vec<Product>> {
        let c = self.conn();
        let rows = c.client.query(&c.list_products, &[&category, &(MAX_LISTING as i64)]).await?;
        Ok(rows.iter().map(product_row).collect::<std::result::Result<_, _>>()?)
    }

    pub(super) async fn reprice_category(&self, category: &str, percent: i64) -> Result<u64> {
        let c = self.conn();
        Ok(c.client.execute(&c.reprice, &[&category, &percent]).await?)
    }
}

fn user_row(r: &Row) -> std::result::Result<User, tokio_postgres::Error> {
    Ok(User { id: r.try_get(0)?, name: r.try_get(1)?, email: r.try_get(2)?, bio: r.try_get(3)? })
}

fn product_row(r: &Row) -> std::result::Result<Product, tokio_postgres::Error> {
    Ok(Product { id: r.try_get(0)?, category: r.try_get(1)?, name: r.try_get(2)?, price_cents: r.try_get(3)? })
}
