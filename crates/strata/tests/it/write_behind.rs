//! Write-behind: delivery in per-key order, WAIT, dedup, dead letters, and workers killed
//! mid-drain in separate processes.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use strata::{Cache, ErrorKind, WriteBehind, WriteBehindConfig, WriteRecord};
use tokio::sync::oneshot;

use crate::common::{Redis, TestResult};
use crate::on_both;

const PARTITIONS: u16 = 4;

fn config(stream: &str) -> WriteBehindConfig {
    WriteBehindConfig::new(stream)
        .partitions(PARTITIONS)
        .backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(10))
        .claim_idle(Duration::from_millis(300))
        .poll(Duration::from_millis(10))
        .batch(16)
}

/// Runs a worker in this process until `done` says the sink has everything (30 s at most).
async fn drain<F, Fut>(wb: &WriteBehind, sink: F, done: impl Fn() -> bool) -> TestResult
where
    F: Fn(WriteRecord) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let (tx, rx) = oneshot::channel::<()>();
    let worker = wb.worker();
    let run = worker.run(sink, async {
        let _ = rx.await;
    });
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = tx.send(());
    };
    let (result, ()) = tokio::join!(run, watch);
    result?;
    Ok(())
}

on_both!(delivers_in_key_order);
async fn delivers_in_key_order(redis: Redis) -> TestResult {
    let cache = redis.cache().await;
    let (_, cluster) = redis.urls();
    // The cluster has one replica per master: WAIT for it. A standalone server has none, so
    // WAIT falls short and the caller is told.
    let replicas = if cluster { 1 } else { 0 };
    // A loaded test machine can take a while to get the replica's ack; the bound stays below
    // the cache's 500 ms op timeout.
    let wait_timeout = Duration::from_millis(400);
    let wb = WriteBehind::new(&cache, config("order").replicas_to_wait(replicas).wait_timeout(wait_timeout))?;
    if !cluster {
        let strict =
            WriteBehind::new(&cache, config("strict").replicas_to_wait(1).wait_timeout(Duration::from_millis(20)))?;
        let err = strict.enqueue("k", b"v", "strict-1").await.expect_err("no replica can confirm");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    }
    let (keys, per_key) = (6, 15);
    let mut retries = 0;
    for seq in 0..per_key {
        for k in 0..keys {
            let (key, value, idem) = (format!("user:{k}"), seq.to_string(), format!("{k}#{seq}"));
            // A WAIT that falls short leaves the entry in the stream; the documented remedy is to
            // retry with the same idempotency key, which the worker then skips.
            let mut tries = 0;
            while let Err(e) = wb.enqueue(&key, value.as_bytes(), &idem).await {
                tries += 1;
                eprintln!("enqueue {idem} failed (try {tries}): {e}");
                if e.kind() != ErrorKind::Timeout || tries >= 5 {
                    return Err(e.into());
                }
            }
            retries += tries;
        }
    }
    let seen: Arc<Mutex<Vec<WriteRecord>>> = Arc::default();
    let sink = |r: WriteRecord| {
        let seen = seen.clone();
        async move {
            seen.lock().map_err(|e| e.to_string())?.push(r);
            Ok::<_, String>(())
        }
    };
    let total = keys * per_key;
    let all_settled = || seen.lock().map(|s| s.len() >= total).unwrap_or(true) && wb.stats().deduplicated >= retries;
    drain(&wb, sink, all_settled).await?;
    let seen = seen.lock().map_err(|e| e.to_string())?.clone();
    assert_eq!(seen.len(), total, "every acknowledged write delivered once");
    for k in 0..keys {
        let key = format!("user:{k}");
        let values: Vec<String> =
            seen.iter().filter(|r| r.key == key).map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
        let expected: Vec<String> = (0..per_key).map(|s| s.to_string()).collect();
        assert_eq!(values, expected, "writes to {key} in order");
    }
    let stats = wb.stats();
    assert_eq!((stats.enqueued, stats.delivered, stats.dead_lettered), (total as u64, total as u64, 0));
    assert_eq!(stats.deduplicated, retries, "every copy left by a short WAIT is skipped");

    // A client retrying an already delivered write (same idempotency key) does not reach the
    // sink again.
    wb.enqueue("user:0", b"again", "0#0").await?;
    let again: Arc<Mutex<Vec<WriteRecord>>> = Arc::default();
    let sink = |r: WriteRecord| {
        let again = again.clone();
        async move {
            again.lock().map_err(|e| e.to_string())?.push(r);
            Ok::<_, String>(())
        }
    };
    drain(&wb, sink, || wb.stats().deduplicated > retries).await?;
    assert_eq!(wb.stats().deduplicated, retries + 1);
    assert!(again.lock().map_err(|e| e.to_string())?.is_empty(), "a delivered idempotency key is skipped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_writes_are_dead_lettered() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.cache().await;
    let wb = WriteBehind::new(&cache, config("poison").max_attempts(3))?;
    let worker = wb.worker();
    let shown = format!("{wb:?} {worker:?}");
    assert!(shown.contains(r#"stream: "poison""#) && shown.contains(worker.consumer()), "{shown}");
    let mut poisoned = 0;
    for i in 0..40 {
        let value = if i % 7 == 3 { "poison" } else { "ok" };
        poisoned += usize::from(value == "poison");
        wb.enqueue(&format!("item:{}", i % 5), value.as_bytes(), &format!("p{i}")).await?;
    }
    let good = 40 - poisoned;
    let delivered: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = |r: WriteRecord| {
        let delivered = delivered.clone();
        async move {
            if r.value == b"poison" {
                return Err(format!("cannot store {}", r.idempotency_key));
            }
            delivered.lock().map_err(|e| e.to_string())?.push(r.idempotency_key);
            Ok(())
        }
    };
    drain(&wb, sink, || {
        let s = wb.stats();
        s.delivered + s.dead_lettered >= 40
    })
    .await?;
    assert_eq!(delivered.lock().map_err(|e| e.to_string())?.len(), good);

    let mut conn = cache_conn(&redis).await?;
    let mut dead = Vec::new();
    for p in 0..PARTITIONS {
        let reply: redis::streams::StreamRangeReply = conn.xrange_all(wb.dead_letter_key(p)).await?;
        dead.extend(reply.ids);
    }
    assert_eq!(dead.len(), poisoned, "every poisoned write is dead-lettered");
    for entry in &dead {
        assert_eq!(entry.get::<String>("value").as_deref(), Some("poison"));
        assert_eq!(entry.get::<u32>("attempts"), Some(3));
        let idem: String = entry.get("idem").ok_or("dead letter without idem")?;
        assert_eq!(entry.get::<String>("error"), Some(format!("cannot store {idem}")));
    }
    let stats = wb.stats();
    assert_eq!((stats.dead_lettered, stats.retried), (poisoned as u64, 2 * poisoned as u64));
    Ok(())
}

/// The dead-letter stream is capped: past `dead_letter_cap` the oldest entries go, and the
/// drops are counted and exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_stream_is_capped_and_its_drops_counted() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.cache().await;
    let wb = WriteBehind::new(&cache, config("capped").partitions(1).max_attempts(1).dead_letter_cap(3))?;
    for i in 0..5 {
        wb.enqueue(&format!("item:{i}"), b"poison", &format!("c{i}")).await?;
    }
    let sink = |_: WriteRecord| async { Err::<(), String>("refused".into()) };
    drain(&wb, sink, || wb.stats().dead_lettered >= 5).await?;
    let mut conn = cache_conn(&redis).await?;
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(wb.dead_letter_key(0)).await?;
    let kept: Vec<String> = reply.ids.iter().filter_map(|e| e.get::<String>("idem")).collect();
    assert_eq!(kept, ["c2", "c3", "c4"], "the newest 3 are kept");
    let stats = wb.stats();
    assert_eq!((stats.dead_lettered, stats.dead_letters_dropped, stats.dead_letter_len), (5, 2, 3));
    let text = wb.prometheus_text();
    for line in [
        r#"strata_write_behind_dead_letters_dropped_total{stream="capped"} 2"#,
        r#"strata_write_behind_dead_letter_entries{stream="capped"} 3"#,
        r#"strata_write_behind_dead_letter_cap{stream="capped"} 3"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
    Ok(())
}

/// Dedup records are one sorted set per partition holding its newest `dedup_capacity`
/// deliveries: a re-enqueued idempotency key among them is skipped, an older one is delivered
/// again (the documented bound), and no key is left per write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_records_are_bounded_per_partition() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.cache().await;
    let wb = WriteBehind::new(&cache, config("bounded").partitions(1).dedup_capacity(10))?;
    for i in 0..50 {
        wb.enqueue(&format!("item:{i}"), b"v", &format!("d{i}")).await?;
    }
    let delivered: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = |r: WriteRecord| {
        let delivered = delivered.clone();
        async move {
            delivered.lock().map_err(|e| e.to_string())?.push(r.idempotency_key);
            Ok::<(), String>(())
        }
    };
    drain(&wb, sink, || wb.stats().delivered >= 50).await?;
    let mut conn = cache_conn(&redis).await?;
    let records: Vec<String> = conn.zrange(wb.done_key(0), 0, -1).await?;
    let newest: Vec<String> = (40..50).map(|i| format!("d{i}")).collect();
    assert_eq!(records, newest, "the newest 10 deliveries");
    let keys: Vec<String> = conn.keys("{wb:bounded:*").await?;
    assert!(keys.len() <= 3, "no key per write: {keys:?}");

    // d49 again: skipped. d0 again: past the bound, delivered a second time.
    wb.enqueue("item:49", b"v", "d49").await?;
    wb.enqueue("item:0", b"v", "d0").await?;
    drain(&wb, sink, || wb.stats().deduplicated + wb.stats().delivered >= 52).await?;
    let stats = wb.stats();
    assert_eq!((stats.delivered, stats.deduplicated), (51, 1));
    assert_eq!(delivered.lock().map_err(|e| e.to_string())?.last().map(String::as_str), Some("d0"));
    Ok(())
}

/// Two workers compete for one partition while each sink call outlasts `claim_idle`: the
/// owner keeps its lease through the call, so no entry is taken over and delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_keeps_its_partition() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.cache().await;
    let wb = WriteBehind::new(&cache, config("slow").partitions(1).claim_idle(Duration::from_millis(150)))?;
    for i in 0..4 {
        wb.enqueue("slow", i.to_string().as_bytes(), &format!("s{i}")).await?;
    }
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = |r: WriteRecord| {
        let calls = calls.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            calls.lock().map_err(|e| e.to_string())?.push(r.idempotency_key);
            Ok::<_, String>(())
        }
    };
    let rival = wb.worker();
    let (stop_rival, stopped) = oneshot::channel::<()>();
    let rival_run = rival.run(sink, async {
        let _ = stopped.await;
    });
    let main_run = async {
        let result = drain(&wb, sink, || calls.lock().map(|c| c.len() >= 4).unwrap_or(true)).await;
        // Give a takeover the time to show up as a fifth call before stopping the rival.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = stop_rival.send(());
        result
    };
    let (rival_result, main_result) = tokio::join!(rival_run, main_run);
    rival_result?;
    main_result?;
    let calls = calls.lock().map_err(|e| e.to_string())?.clone();
    assert_eq!(calls, ["s0", "s1", "s2", "s3"], "each write delivered once, in order");
    Ok(())
}

async fn cache_conn(redis: &Redis) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let (urls, _) = redis.urls();
    redis::Client::open(urls[0].as_str())?.get_multiplexed_async_connection().await
}

/// The kill test's sink: applies a record once per idempotency key (HSETNX), appends the
/// applied value to the key's log (order), and counts every call (duplicates).
const SINK: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then redis.call('RPUSH', KEYS[2], ARGV[2]) end
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return redis.call('INCR', KEYS[4])";

async fn redis_sink(conn: redis::aio::MultiplexedConnection, r: WriteRecord) -> Result<(), String> {
    // Slow enough that a kill lands mid-drain.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut conn = conn;
    redis::Script::new(SINK)
        .key("sink:effect")
        .key(format!("sink:log:{}", r.key))
        .key("sink:calls")
        .key("sink:total")
        .arg(&r.idempotency_key)
        .arg(&r.value)
        .invoke_async::<i64>(&mut conn)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_mid_drain_lose_and_reorder_nothing() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.cache().await;
    let wb = WriteBehind::new(&cache, config("kill"))?;
    let (keys, per_key) = (40, 20);
    let total = keys * per_key;
    for seq in 0..per_key {
        for k in 0..keys {
            wb.enqueue(&format!("acct:{k}"), seq.to_string().as_bytes(), &format!("{k}#{seq}")).await?;
        }
    }
    let mut conn = cache_conn(&redis).await?;
    let kills = 10;
    for round in 0..kills {
        let before: i64 = conn.get::<_, Option<i64>>("sink:total").await?.unwrap_or(0);
        let mut child = spawn_worker(&redis)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now: i64 = conn.get::<_, Option<i64>>("sink:total").await?.unwrap_or(0);
            if now >= before + 15 {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("worker {round} delivered {} in 20 s", now - before).into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill()?;
        child.wait()?;
    }
    let applied: usize = conn.hlen("sink:effect").await?;
    assert!(applied < total, "the kills happened mid-drain ({applied} of {total} applied)");

    let sink = |r: WriteRecord| redis_sink(conn.clone(), r);
    let progress = Arc::new(Mutex::new(0usize));
    let mut watcher = conn.clone();
    let probe = progress.clone();
    let poll = tokio::spawn(async move {
        loop {
            let n: usize = watcher.hlen("sink:effect").await.unwrap_or(0);
            if let Ok(mut p) = probe.lock() {
                *p = n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    drain(&wb, sink, || progress.lock().map(|n| *n >= total).unwrap_or(true)).await?;
    poll.abort();

    let applied: usize = conn.hlen("sink:effect").await?;
    assert_eq!(applied, total, "every acknowledged write applied exactly once");
    for k in 0..keys {
        let log: Vec<String> = conn.lrange(format!("sink:log:acct:{k}"), 0, -1).await?;
        let expected: Vec<String> = (0..per_key).map(|s| s.to_string()).collect();
        assert_eq!(log, expected, "acct:{k} applied in order");
    }
    let calls: i64 = conn.get("sink:total").await?;
    let duplicates = calls - total as i64;
    // Each kill can interrupt at most one sink call per partition after it took effect.
    assert!(duplicates <= i64::from(kills * PARTITIONS), "{duplicates} redeliveries");
    for p in 0..PARTITIONS {
        let len: usize = conn.xlen(wb.stream_key(p)).await?;
        let dead: usize = conn.xlen(wb.dead_letter_key(p)).await?;
        assert_eq!((len, dead), (0, 0), "partition {p} drained, nothing dead-lettered");
    }
    assert!(wb.stats().claimed > 0, "the final worker reclaimed a killed worker's entries");
    // Bounded: the queue's keys are a few per partition (stream, owner, dedup records), not
    // one dedup record per write.
    let queue_keys: Vec<String> = conn.keys("{wb:kill:*").await?;
    assert!(queue_keys.len() <= 3 * PARTITIONS as usize, "{} keys: {queue_keys:?}", queue_keys.len());
    for p in 0..PARTITIONS {
        let records: usize = conn.zcard(wb.done_key(p)).await?;
        assert!(records > 0, "partition {p} has dedup records");
    }
    eprintln!("kill test: {calls} sink calls for {total} writes ({duplicates} redeliveries)");
    Ok(())
}

fn spawn_worker(redis: &Redis) -> std::io::Result<Child> {
    let (urls, _) = redis.urls();
    Command::new(std::env::current_exe()?)
        .args(["--ignored", "--exact", "write_behind::kill_worker", "--nocapture", "--test-threads=1", "--quiet"])
        .env("STRATA_IT_WB_URL", &urls[0])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
}

/// The worker process of the kill test (not a test on its own): drains the `kill` queue into
/// the Redis sink until killed (60 s at most).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker process started by workers_killed_mid_drain_lose_and_reorder_nothing"]
async fn kill_worker() -> TestResult {
    let url = std::env::var("STRATA_IT_WB_URL").map_err(|_| "STRATA_IT_WB_URL not set")?;
    let cache = Cache::builder().redis_url(url.clone()).build().await?;
    let wb = WriteBehind::new(&cache, config("kill"))?;
    let conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let sink = |r: WriteRecord| redis_sink(conn.clone(), r);
    wb.worker().run(sink, tokio::time::sleep(Duration::from_secs(60))).await?;
    Ok(())
}
