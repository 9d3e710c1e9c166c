//! `strata drill stampede`: many callers in several processes miss one hot key at the same
//! moment; the source must be asked once. Proves distributed single-flight (leases) on the
//! operator's own deployment.
//!
//! The coordinator starts `processes` copies of the `strata` binary as workers
//! (`strata drill stampede-worker`). They meet at a start barrier (files in a temporary
//! directory), then each fires `callers / processes` concurrent `get_or_set` calls on one cold
//! key. The loader stands in for a slow source: it appends a line to a shared file (the count
//! the coordinator reports) and sleeps. Everything is bounded in time, and the drill's key is
//! deleted at the end.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use strata::{Cache, KeySchema, LeaseConfig, Ttl};

use crate::worker_process::{RemoveDir, WorkerProcess, count_files, unique};

/// Settings of the drill.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker processes.
    pub processes: usize,
    /// Callers in total, spread over the processes.
    pub callers: usize,
    /// How long one load takes (the source's latency).
    pub load: Duration,
    /// Upper bound on the whole drill.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { processes: 4, callers: 1000, load: Duration::from_millis(500), timeout: Duration::from_secs(60) }
    }
}

/// What the drill observed (the field names are a contract).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Times the source was asked (1 is the goal).
    pub loader_calls: usize,
    /// Callers that got the value.
    pub callers_served: usize,
    /// Callers that got an error.
    pub caller_errors: usize,
    /// Longest time a caller waited, in milliseconds.
    pub max_wait_ms: u64,
    /// Worker processes.
    pub processes: usize,
}

/// What one worker prints on its last stdout line.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerResult {
    served: usize,
    errors: usize,
    max_wait_ms: u64,
}

/// Runs the drill against `urls` (one URL: standalone; several: cluster seeds), starting workers
/// with `worker_command` (the `strata` binary and the arguments before the worker's own).
pub fn run(urls: &[String], options: &Options, worker_command: &[String]) -> anyhow::Result<Report> {
    anyhow::ensure!(
        options.processes >= 1 && options.callers >= options.processes,
        "need at least one caller per process"
    );
    let (program, base_args) = worker_command.split_first().context("no worker command")?;
    let dir = std::env::temp_dir().join(format!("strata-drill-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let key = KeySchema::new("strata-drill", 1)?.key("stampede", &unique())?;
    let per_process = options.callers / options.processes;
    let mut workers = Vec::new();
    for i in 0..options.processes {
        let callers = per_process + usize::from(i < options.callers % options.processes);
        let child = Command::new(program)
            .args(base_args)
            .args(["--dir", &dir.to_string_lossy(), "--key", key.as_str(), "--id", &i.to_string()])
            .args(["--callers", &callers.to_string(), "--load-ms", &options.load.as_millis().to_string()])
            .args(urls.iter().flat_map(|u| ["--url".to_owned(), u.clone()]))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {i}"))?;
        workers.push(WorkerProcess::new(child));
    }
    let deadline = Instant::now() + options.timeout;
    while count_files(&dir, "ready-") < options.processes {
        anyhow::ensure!(Instant::now() < deadline, "workers did not start in time");
        anyhow::ensure!(!workers.iter_mut().any(WorkerProcess::exited_badly), "a worker failed to start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(dir.join("go"), b"")?;
    let mut report =
        Report { loader_calls: 0, callers_served: 0, caller_errors: 0, max_wait_ms: 0, processes: options.processes };
    for mut worker in workers {
        let text = worker.wait(deadline)?;
        let line = text.lines().rev().find(|l| l.starts_with('{')).context("a worker printed no result")?;
        let result: WorkerResult = serde_json::from_str(line)?;
        report.callers_served += result.served;
        report.caller_errors += result.errors;
        report.max_wait_ms = report.max_wait_ms.max(result.max_wait_ms);
    }
    report.loader_calls = std::fs::read_to_string(dir.join("source")).map(|s| s.lines().count()).unwrap_or(0);
    remove_key(urls, key.as_str())?;
    Ok(report)
}

/// Deletes the drill's key and its lease (same slot, so one DEL) once every worker is done.
fn remove_key(urls: &[String], key: &str) -> anyhow::Result<()> {
    let mut del = redis::cmd("DEL");
    del.arg(key).arg(strata::lease_key(key));
    // The namespace stamp the workers' reads created (another slot: its own command).
    let mut del_stamp = redis::cmd("DEL");
    del_stamp.arg(strata::namespace_stamp_key(strata::Key::parse(key)?.namespace())?);
    let mut con: Box<dyn redis::ConnectionLike> = if urls.len() > 1 {
        Box::new(redis::cluster::ClusterClient::new(urls.to_vec())?.get_connection()?)
    } else {
        Box::new(redis::Client::open(urls[0].as_str())?.get_connection_with_timeout(Duration::from_secs(2))?)
    };
    del.query::<i64>(con.as_mut())?;
    del_stamp.query::<i64>(con.as_mut())?;
    Ok(())
}

/// The worker side (`strata drill stampede-worker`): waits for the start signal, runs its
/// callers, prints one JSON line. It leaves the key alone: a delete is an invalidation, and
/// would make the workers still waiting load again. The coordinator removes it at the end.
pub async fn worker(
    urls: Vec<String>,
    dir: &Path,
    key: &str,
    id: &str,
    callers: usize,
    load: Duration,
) -> anyhow::Result<()> {
    let builder =
        if urls.len() > 1 { Cache::builder().cluster(urls) } else { Cache::builder().redis_url(urls[0].clone()) };
    let cache = builder
        .leases(LeaseConfig::default().ttl(load * 4 + Duration::from_secs(1)).max_wait(Duration::from_secs(30)))
        .require_redis(true)
        .build()
        .await?;
    let key = strata::Key::parse(key)?;
    std::fs::write(dir.join(format!("ready-{id}")), b"")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("go").exists() {
        anyhow::ensure!(Instant::now() < deadline, "no start signal");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let calls = (0..callers).map(|_| {
        let (cache, key, source) = (cache.clone(), key.clone(), dir.join("source"));
        tokio::spawn(async move {
            let started = Instant::now();
            let got = cache
                .get_or_set(&key, Ttl::Short, || async move {
                    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(source)?;
                    f.write_all(b"load\n")?;
                    tokio::time::sleep(load).await;
                    Ok::<_, std::io::Error>("drill value".to_owned())
                })
                .await;
            (got.is_ok_and(|v| v == "drill value"), started.elapsed())
        })
    });
    let (mut served, mut errors, mut max_wait) = (0, 0, Duration::ZERO);
    for call in futures_util::future::join_all(calls).await {
        match call {
            Ok((true, waited)) => {
                served += 1;
                max_wait = max_wait.max(waited);
            }
            _ => errors += 1,
        }
    }
    // The leader's store runs after its callers have the value: let it land before exiting.
    cache.settled().await;
    let result = WorkerResult { served, errors, max_wait_ms: max_wait.as_millis() as u64 };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
