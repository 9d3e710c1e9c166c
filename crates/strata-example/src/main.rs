//! `strata-example`: serves the example API (see the crate docs of `strata_example`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata_example::db::Db;
use strata_example::raw::RawRedis;
use strata_example::service::{self, ServiceConfig, Services};

/// An HTTP API over SQLite or PostgreSQL, cached with Strata on Redis.
#[derive(Parser, Debug)]
#[command(name = "strata-example", version)]
struct Args {
    /// Redis URL; give it several times for the seeds of a Redis Cluster.
    #[arg(long = "url", env = "STRATA_URL", default_value = "redis://127.0.0.1:6379")]
    urls: Vec<String>,
    /// `sqlite:PATH` (default), `sqlite::memory:` or `postgres://user@host:port/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:strata-example.sqlite3")]
    database_url: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Make sure users 1..=N exist at startup.
    #[arg(long, default_value_t = 100_000)]
    seed_users: u64,
    /// Make sure products 1..=N exist at startup, in `--categories` categories.
    #[arg(long, default_value_t = 10_000)]
    seed_products: u64,
    /// Number of product categories (cat-0, cat-1, ...).
    #[arg(long, default_value_t = 20)]
    categories: u64,
    /// Requests per client and window on GET /limited.
    #[arg(long, default_value_t = 100)]
    rate_limit: u64,
    /// Rate-limiting window in milliseconds.
    #[arg(long, default_value_t = 1000)]
    rate_window_ms: u64,
    /// Idle timeout of a session, in seconds.
    #[arg(long, default_value_t = 1800)]
    session_idle_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let db = Db::open(&args.database_url).await.with_context(|| format!("opening {}", args.database_url))?;
    db.seed_users(args.seed_users).await.context("seeding users")?;
    db.seed_products(args.seed_products, args.categories).await.context("seeding products")?;
    let cache = service::connect_cache(&args.urls).await.context("connecting the cache")?;
    let redis = RawRedis::connect(&args.urls, Duration::from_secs(1)).await.context("connecting to redis")?;
    let config = ServiceConfig {
        rate_limit: args.rate_limit,
        rate_window: Duration::from_millis(args.rate_window_ms),
        session_idle: Duration::from_secs(args.session_idle_secs),
        ..ServiceConfig::default()
    };
    let services = Services::new(db, cache.clone(), redis, &config)?;

    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    // Scripts (./run demo) read this line to learn the address, also when --listen asks for port 0.
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, strata_example::app(services)).with_graceful_shutdown(shutdown()).await?;
    // Values loaded by the last requests reach Redis after their responses: let them land.
    cache.settled().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (how `./run demo` and service managers stop the service), so
/// that requests in flight finish.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
