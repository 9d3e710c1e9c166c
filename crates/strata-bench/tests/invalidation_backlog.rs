//! Issue 17: L1 must not flush itself under a heavy write load. An instance whose keys are
//! written 20,000 times a second receives that many invalidation messages on its tracking
//! connection, and its heartbeat PONG queues behind them: that is not a lost connection. For
//! 30 s, one writer instance rewrites the keys a reader instance keeps reading; the reader's
//! history goes through issue 9's checker (`strata_bench::consistency::history::check`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::{Cache, KeySchema, Ttl};
use strata_bench::consistency::history::{Entry, Kind, check};
use strata_cluster::RedisServer;

const KEYS: usize = 1_000;
/// Writes per batch, and batches per second: 20,000 writes/s.
const BATCH: usize = 200;
const BATCHES_PER_S: u64 = 100;
const RUN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_invalidating_writes_a_second_flush_nothing_and_serve_nothing_stale()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let redis = RedisServer::start()?;
    // The reader has the default invalidation settings (heartbeat 200 ms, timeout 500 ms): the
    // ones whose PONG could queue behind the messages.
    let reader = Cache::builder().redis_url(redis.url()).build().await?;
    let writer = Cache::builder().redis_url(redis.url()).l1_capacity_bytes(0).build().await?;
    let schema = KeySchema::new("backlog", 1)?;
    let keys: Arc<Vec<_>> = Arc::new((0..KEYS).map(|i| schema.key("item", &i.to_string())).collect::<Result<_, _>>()?);
    let items: Vec<_> = keys.iter().map(|k| (k.clone(), 0_u64)).collect();
    writer.set_many(&items, Ttl::Long).await?;
    for key in keys.iter() {
        assert_eq!(reader.get::<u64>(key).await?, Some(0));
    }
    let epoch = Instant::now();
    let now_ns = move || epoch.elapsed().as_nanos() as u64;
    let before = reader.metrics();
    let history: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    // Two readers re-read random keys as fast as they can (each read of a key Redis has
    // invalidated tracks it again, so the writes keep producing messages).
    let readers: Vec<_> = (0..2u16)
        .map(|process| {
            let (reader, keys, history, stop) = (reader.clone(), keys.clone(), history.clone(), stop.clone());
            tokio::spawn(async move {
                let mut local = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[rand::random_range(0..KEYS)];
                    let start = now_ns();
                    let got = reader.get::<u64>(key).await;
                    let end = now_ns();
                    let ok = got.is_ok();
                    local.push(Entry {
                        kind: Kind::Read,
                        op: "get".into(),
                        process,
                        key: key.as_str().into(),
                        start,
                        end,
                        version: got.ok().flatten(),
                        ok,
                    });
                    if local.len() % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                history.lock().expect("history").extend(local);
            })
        })
        .collect();

    // The writer: a batch of 200 keys every 10 ms, version = batch number.
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / BATCHES_PER_S));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut round, mut writes, mut failed) = (0_u64, 0_usize, 0_usize);
    let mut written = Vec::new();
    while epoch.elapsed() < RUN {
        ticks.tick().await;
        round += 1;
        let first = (round as usize * BATCH) % KEYS;
        let batch: Vec<_> = (0..BATCH).map(|i| (keys[(first + i) % KEYS].clone(), round)).collect();
        let start = now_ns();
        let ok = writer.set_many(&batch, Ttl::Long).await.is_ok();
        let end = now_ns();
        failed += usize::from(!ok);
        writes += batch.len();
        for (key, version) in &batch {
            written.push(Entry {
                kind: Kind::Write,
                op: "set_many".into(),
                process: 9,
                key: key.as_str().into(),
                start,
                end,
                version: Some(*version),
                ok,
            });
        }
    }
    let elapsed = epoch.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in readers {
        task.await?;
    }

    let after = reader.metrics();
    let messages = after.invalidation_messages - before.invalidation_messages;
    let mut entries = std::mem::take(&mut *history.lock().expect("history"));
    let reads = entries.len();
    entries.extend(written);
    // The bound the cache promises: heartbeat + its timeout.
    let verdict = check(&entries, Duration::from_millis(700).as_nanos() as u64);
    eprintln!(
        "backlog: {writes} writes in {:.1} s ({:.0}/s, {failed} batches failed), {messages} invalidation messages \
         ({:.0}/s), {reads} reads, {} L1 hits, l1_flushes {} -> {}, stale reads {}, max staleness {:.3} ms",
        elapsed.as_secs_f64(),
        writes as f64 / elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        after.total().l1_hits - before.total().l1_hits,
        before.l1_flushes,
        after.l1_flushes,
        verdict.stale_reads,
        verdict.max_staleness_ms,
    );
    assert_eq!(failed, 0, "every write batch succeeded");
    assert!(writes as f64 / elapsed.as_secs_f64() > 19_000.0, "the writer kept 20,000 writes/s");
    assert!(messages > 100_000, "the reader's tracking connection carried the load: {messages} messages");
    assert_eq!(after.l1_flushes, before.l1_flushes, "no self-flush under the backlog");
    assert_eq!((verdict.stale_reads, verdict.caller_errors), (0, 0), "{:?}", verdict.examples);
    Ok(())
}
