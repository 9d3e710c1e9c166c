//! A real Prometheus scrapes `strata serve`, and the hit-ratio PromQL of the Grafana dashboard
//! gives the ratio of a scripted workload.

use std::time::{Duration, Instant};

use redis::Commands;

use crate::common::{Prometheus, TestResult, WAIT, cluster, config, get_json, serve};

const HIT_RATIO: &str =
    "sum(redis_keyspace_hits_total) / (sum(redis_keyspace_hits_total) + sum(redis_keyspace_misses_total))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_computes_the_hit_ratio_of_a_scripted_workload() -> TestResult {
    let cluster = cluster();
    let mut raw = redis::cluster::ClusterClient::new(cluster.seed_urls())?.get_connection()?;
    for i in 0..30 {
        let _: () = raw.set(format!("work:v1:item:{i}"), i)?;
    }
    let mut config = config(&cluster);
    // One namespace scan for the whole test: its PTTLs count as keyspace hits.
    config.scan_interval = Some(Duration::from_secs(3600));
    let server = serve(config).await;
    get_json(server.addr, "/api/namespaces", 200).await;
    for node in cluster.nodes() {
        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut node.connection()?)?;
    }
    // 30 hits and 10 misses: 0.75.
    for i in 0..30 {
        let _: Option<i64> = raw.get(format!("work:v1:item:{i}"))?;
    }
    for i in 0..10 {
        let _: Option<i64> = raw.get(format!("work:v1:absent:{i}"))?;
    }

    let prometheus = Prometheus::start(server.addr);
    let started = Instant::now();
    loop {
        let scrapes = prometheus.query(r#"count_over_time(up{job="strata"}[5m])"#).await;
        let up = prometheus.query(r#"min_over_time(up{job="strata"}[5m])"#).await;
        if scrapes.is_some_and(|n| n >= 2.0) && up == Some(1.0) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "Prometheus did not scrape {} twice successfully in {WAIT:?} (scrapes {scrapes:?}, up {up:?}); its log:\n{}",
            server.addr,
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(prometheus.query("count(redis_up == 1)").await, Some(6.0));
    let ratio = prometheus.query(HIT_RATIO).await;
    assert!(ratio.is_some_and(|r| (r - 0.75).abs() < 1e-9), "hit ratio {ratio:?}, expected 0.75");
    Ok(())
}
