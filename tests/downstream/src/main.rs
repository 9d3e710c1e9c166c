use std::sync::Arc;

use strata::Cache;
use strata_downstream::{Database, app};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let cache = Cache::builder().redis_url(redis_url).build().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(cache, Arc::new(Database::default()))).await?;
    Ok(())
}
