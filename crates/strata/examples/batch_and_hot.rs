//! Measures batch cache-aside and hot keys on a local Redis server and 3-master Redis Cluster
//! (started here, on free ports). Run: `cargo run --release -p strata-cache --example batch_and_hot`.
//!
//! 1. 1,000 keys through one `get_or_set_many` versus 1,000 concurrent `get_or_set`, cold (every
//!    key loaded from a source that takes 2 ms per call) and warm (every key in Redis; L1 off).
//! 2. 10,000 reads of one key, L1 off, without and with 8 hot copies: GETs served per master.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use strata::{Cache, HotKeys, Key, KeySchema, Ttl};
use strata_cluster::{RedisCluster, RedisServer};

const KEYS: usize = 1000;
/// What one call to the source (a database round trip) costs.
const SOURCE_LATENCY: Duration = Duration::from_millis(2);

type Loaded = Result<HashMap<Key, String>, std::io::Error>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = RedisServer::start()?;
    let cluster = RedisCluster::start(3, 0)?;
    // A generous timeout: on a busy machine a timed-out call would skew the figures.
    let standalone = Cache::builder().redis_url(server.url());
    let clustered = Cache::builder().cluster(cluster.seed_urls());
    let schema = KeySchema::new("bench", 1)?;
    println!("{KEYS} keys, source {SOURCE_LATENCY:?} per call, L1 off");
    for (name, builder) in [("standalone", &standalone), ("cluster", &clustered)] {
        let cache = builder.clone().l1_capacity_bytes(0).op_timeout(Duration::from_secs(2)).build().await?;
        for round in 0..3 {
            let batch: Vec<Key> =
                (0..KEYS).map(|i| schema.key("batch", &format!("{round}-{i}"))).collect::<strata::Result<_>>()?;
            let singles: Vec<Key> =
                (0..KEYS).map(|i| schema.key("single", &format!("{round}-{i}"))).collect::<strata::Result<_>>()?;
            let mut row = Vec::new();
            for _ in ["cold", "warm"] {
                let started = Instant::now();
                let got = cache.get_or_set_many(&batch, Ttl::Medium, load_many).await?;
                assert!(got.iter().all(Option::is_some));
                row.push(started.elapsed());
            }
            for _ in ["cold", "warm"] {
                let started = Instant::now();
                let calls = singles.iter().map(|k| {
                    cache.get_or_set(k, Ttl::Medium, move || async move {
                        tokio::time::sleep(SOURCE_LATENCY).await;
                        Ok::<_, std::io::Error>(k.to_string())
                    })
                });
                for got in join_all(calls).await {
                    got?;
                }
                row.push(started.elapsed());
            }
            println!(
                "{name} round {round}: get_or_set_many cold {:?} warm {:?} | {KEYS} x get_or_set cold {:?} warm {:?}",
                row[0], row[1], row[2], row[3]
            );
        }
        let m = cache.metrics();
        let (batch, single) = (m.namespace("bench:v1:batch"), m.namespace("bench:v1:single"));
        println!(
            "{name}: source calls batch {} single {}; redis timeouts {} errors {}",
            batch.loader_calls, single.loader_calls, m.l2_timeouts, m.l2_errors
        );
    }

    let key = schema.key("config", "flags")?;
    let plain = clustered.clone().l1_capacity_bytes(0).build().await?;
    let hot = clustered.l1_capacity_bytes(0).hot_keys(HotKeys::new().key(&key, 8)).build().await?;
    for (label, reader) in [("plain", &plain), ("8 hot copies", &hot)] {
        reader.set(&key, &"on".to_owned(), Ttl::Medium).await?;
        let before = gets_per_master(&cluster)?;
        for _ in 0..10_000 {
            reader.get::<String>(&key).await?;
        }
        let after = gets_per_master(&cluster)?;
        let served: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        println!("10000 reads of one key, {label}: GETs per master {served:?}");
    }
    Ok(())
}

async fn load_many(missing: Vec<Key>) -> Loaded {
    tokio::time::sleep(SOURCE_LATENCY).await;
    Ok(missing.into_iter().map(|k| (k.clone(), k.to_string())).collect())
}

/// `cmdstat_get` calls of each master, from `INFO commandstats`.
fn gets_per_master(cluster: &RedisCluster) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for i in cluster.master_indices()? {
        let mut conn = cluster.nodes()[i].connection()?;
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn)?;
        let calls = info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(Ok(0), str::parse)?;
        out.push(calls);
    }
    Ok(out)
}
