//! `invalidation-wait`: the cost of `WAIT`-confirmed invalidations
//! ([`strata::AutoRecovery::wait_replicas`]). The same deletes through Strata without a
//! confirmation and with one replica's, in alternating rounds: latency from one task, and
//! throughput from several tasks at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use strata::{AutoRecovery, Cache, Key, KeySchema, Ttl};

use crate::stats::{Summary, histogram, human_ns};
use crate::workload::{Target, progress};

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Alternating rounds per variant.
    pub rounds: usize,
    /// Deletes per round from one task (the latency figure).
    pub sequential: usize,
    /// Deletes per round from `tasks` tasks at once (the throughput figure).
    pub concurrent: usize,
    /// Tasks of the throughput phase.
    pub tasks: usize,
    /// The confirmation timeout.
    pub wait_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { rounds: 4, sequential: 2_000, concurrent: 20_000, tasks: 32, wait_timeout: Duration::from_millis(50) }
    }
}

/// One variant's figures over all its rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// `no WAIT` or `WAIT 1`.
    pub name: String,
    /// Replicas each delete waited for.
    pub replicas: u32,
    /// Latency of a delete from one task.
    pub latency: Summary,
    /// Deletes per second from `tasks` tasks, per round.
    pub per_second: Vec<f64>,
    /// Deletes that failed (unconfirmed or otherwise).
    pub errors: u64,
}

/// The run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Without, then with the confirmation.
    pub variants: Vec<Variant>,
    /// Tasks of the throughput phase.
    pub tasks: usize,
}

/// Runs the scenario on `target` (which needs a replica per master for `WAIT 1`).
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Figures> {
    let schema = KeySchema::new("bench-wait", 1)?;
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..options.concurrent.max(options.sequential))
            .map(|i| schema.key("item", &i.to_string()))
            .collect::<Result<_, _>>()?,
    );
    let mut variants = Vec::new();
    let mut caches = Vec::new();
    for replicas in [0_u32, 1] {
        let recovery = AutoRecovery::default().wait_for_replicas(replicas, options.wait_timeout);
        caches.push(target.cache_builder().l1_capacity_bytes(0).auto_recovery(recovery).build().await?);
        let name = if replicas == 0 { "no WAIT".to_owned() } else { format!("WAIT {replicas}") };
        variants.push((
            Variant { name, replicas, latency: Summary::of(&histogram()), per_second: Vec::new(), errors: 0 },
            histogram(),
        ));
    }
    let bar = progress((options.rounds * variants.len()) as u64, "deletes with and without WAIT");
    for round in 0..options.rounds {
        // Alternating which goes first, so drift in the machine's load falls on both.
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for v in order {
            let cache = &caches[v];
            fill(cache, &keys).await?;
            let (variant, latency) = &mut variants[v];
            for key in keys.iter().take(options.sequential) {
                let started = Instant::now();
                let deleted = cache.delete(key).await;
                latency.record(started.elapsed().as_nanos().max(1) as u64)?;
                variant.errors += u64::from(deleted.is_err());
            }
            fill(cache, &keys).await?;
            let (per_second, errors) = concurrent(cache, &keys, options.concurrent, options.tasks).await;
            variant.per_second.push(per_second);
            variant.errors += errors;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let variants = variants
        .into_iter()
        .map(|(mut variant, latency)| {
            variant.latency = Summary::of(&latency);
            variant
        })
        .collect();
    Ok(Figures { variants, tasks: options.tasks })
}

/// Sets every key (so that each delete removes something).
async fn fill(cache: &Cache, keys: &[Key]) -> anyhow::Result<()> {
    for chunk in keys.chunks(500) {
        let items: Vec<(Key, u64)> = chunk.iter().map(|k| (k.clone(), 1)).collect();
        cache.set_many(&items, Ttl::Long).await?;
    }
    Ok(())
}

/// Deletes the first `n` keys from `tasks` tasks; deletes per second, and errors.
async fn concurrent(cache: &Cache, keys: &Arc<Vec<Key>>, n: usize, tasks: usize) -> (f64, u64) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (cache, keys, next) = (cache.clone(), keys.clone(), next.clone());
            tokio::spawn(async move {
                let mut errors = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return errors;
                    }
                    errors += u64::from(cache.delete(&keys[i]).await.is_err());
                }
            })
        })
        .collect();
    let mut errors = 0;
    for worker in workers {
        errors += worker.await.unwrap_or(1);
    }
    (n as f64 / started.elapsed().as_secs_f64(), errors)
}

/// The figures as text.
pub fn render(f: &Figures) -> String {
    let mut out = format!(
        "delete through Strata (L1 off), without and with a WAIT for one replica\n\n{:<10} {:>10} {:>10} {:>10} {:>12} {:>8}\n",
        "variant",
        "p50",
        "p99",
        "mean",
        format!("ops/s ({}t)", f.tasks),
        "errors"
    );
    let median = |v: &Variant| {
        let mut r = v.per_second.clone();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(0.0)
    };
    for v in &f.variants {
        out.push_str(&format!(
            "{:<10} {:>10} {:>10} {:>10} {:>12.0} {:>8}\n",
            v.name,
            human_ns(v.latency.p50_ns as f64),
            human_ns(v.latency.p99_ns as f64),
            human_ns(v.latency.mean_ns),
            median(v),
            v.errors
        ));
    }
    if let [plain, waited] = f.variants.as_slice() {
        out.push_str(&format!(
            "\nWAIT 1 / no WAIT: p50 x{:.2}, p99 x{:.2}, throughput x{:.2} (median of rounds)\n",
            waited.latency.p50_ns as f64 / plain.latency.p50_ns.max(1) as f64,
            waited.latency.p99_ns as f64 / plain.latency.p99_ns.max(1) as f64,
            median(waited) / median(plain).max(1e-9),
        ));
    }
    out
}
