//! What one `get_or_set` miss costs, one call at a time (no concurrency, an instant loader),
//! against a raw redis-rs GET + SET, and with client tracking and/or leases turned off:
//!
//! ```sh
//! redis-server --port 6392 --save '' &      # a scratch server: this writes 45,000 keys (TTL 10 min)
//! cargo run --release -p strata-cache --example miss_cost -- redis://127.0.0.1:6392
//! ```
//!
//! Figures and their reading: docs/benchmarks.md, "user-profiles".
use std::time::{Duration, Instant};
use strata::{Cache, Invalidation, KeySchema, LeaseConfig, Ttl};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).ok_or("usage: miss_cost REDIS_URL")?;
    let schema = KeySchema::new("miss-cost", 1)?;
    let client = redis::Client::open(url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    for round in 0..2 {
        let mut lat = Vec::new();
        for i in 0..3000u32 {
            let key = format!("miss-cost:raw:{round}:{i}");
            let t = Instant::now();
            let got: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
            if got.is_none() {
                let () =
                    redis::cmd("SET").arg(&key).arg(vec![7u8; 40]).arg("EX").arg(600).query_async(&mut con).await?;
            }
            lat.push(t.elapsed());
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
        println!("{:12} p50 {:?} p90 {:?} p99 {:?}", "raw GET+SET", p(0.5), p(0.9), p(0.99));
        for (name, inv, lease) in
            [("full", true, true), ("no-tracking", false, true), ("no-lease", true, false), ("neither", false, false)]
        {
            let mut b = Cache::builder().redis_url(url.clone());
            if !inv {
                b = b.invalidation(Invalidation::disabled());
            }
            if !lease {
                b = b.leases(LeaseConfig::disabled());
            }
            let cache = b.build().await?;
            let n = 3000u32;
            let mut lat = Vec::with_capacity(n as usize);
            for i in 0..n {
                let key = schema.key("k", &format!("{round}-{name}-{i}"))?;
                let t = Instant::now();
                let v: u64 =
                    cache.get_or_set(&key, Ttl::Medium, || async move { Ok::<_, std::io::Error>(i as u64) }).await?;
                lat.push(t.elapsed());
                std::hint::black_box(v);
            }
            lat.sort();
            let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
            println!("{name:12} p50 {:?} p90 {:?} p99 {:?}", p(0.5), p(0.9), p(0.99));
            drop(cache);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
