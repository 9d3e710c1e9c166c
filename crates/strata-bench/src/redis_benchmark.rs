//! Runs Redis's own `redis-benchmark` (Debian package `redis-tools`) against a deployment: the
//! ceiling of GET throughput that deployment reaches from this machine, printed beside the
//! figures of a scenario. A missing or failing `redis-benchmark` is reported, never an error of
//! the scenario.
//!
//! The keys it reads exist: they are written first by `redis-benchmark` itself (a custom `SET`
//! with a 10-minute expiry and a value of the size the scenario reads), with the same key pattern
//! as `-t get` (`key:__rand_int__`, or `key:{tag}:__rand_int__` on a cluster, where each node's
//! clients use one hash tag of that node). The share of GETs that hit is measured from the
//! masters' `keyspace_hits` / `keyspace_misses`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo;
use serde::Serialize;

use crate::runner::{connect, info_field, masters};
use crate::workload::Target;

/// The program this module runs.
pub const PROGRAM: &str = "redis-benchmark";

/// How to run it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Parallel connections (`-c`).
    pub clients: usize,
    /// GET requests in total (`-n`).
    pub requests: u64,
    /// Distinct keys (`-r`).
    pub keys: u64,
    /// Size of each value, in bytes.
    pub value_bytes: usize,
    /// The GET run is killed (and reported as failed) after this long.
    pub timeout: Duration,
}

/// What it measured, or why it did not run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    /// The GET command line (without a password).
    pub command: String,
    /// GETs per second, as `redis-benchmark` reports them; `None` when it did not run.
    pub requests_per_sec: Option<f64>,
    /// Its p50 and p99 latency, in milliseconds.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
    /// Share of its GETs that found a key (masters' keyspace hits and misses during the run).
    pub hit_ratio: Option<f64>,
    /// Why it did not run (not installed, failed, timed out, TLS), when it did not.
    pub error: Option<String>,
}

impl Outcome {
    fn failed(command: String, error: impl Into<String>) -> Self {
        Self { command, requests_per_sec: None, p50_ms: None, p99_ms: None, hit_ratio: None, error: Some(error.into()) }
    }
}

/// Writes the keys, then runs `redis-benchmark -c <clients> -n <requests> -r <keys> -t get`
/// against `target`. Never fails: what went wrong is in [`Outcome::error`].
pub async fn run_get(target: &Target, options: &Options) -> Outcome {
    let cluster = matches!(target.topology, strata::Topology::Cluster(_));
    let base = match connection_args(target, cluster) {
        Ok(args) => args,
        Err(why) => return Outcome::failed(String::new(), why),
    };
    let shown = |args: &[String]| {
        let mut out = vec![PROGRAM.to_owned()];
        let mut hide = false;
        for a in args {
            out.push(if hide { "***".to_owned() } else { a.clone() });
            hide = a == "-a";
        }
        out.join(" ")
    };
    let mut get = base.clone();
    get.extend(
        ["-c", &options.clients.to_string(), "-n", &options.requests.to_string(), "-r", &options.keys.to_string()]
            .map(String::from),
    );
    get.extend(["-t", "get", "--csv"].map(String::from));
    let command = shown(&get);

    let key = if cluster { "key:{tag}:__rand_int__" } else { "key:__rand_int__" };
    let mut set = base;
    // Enough writes that every one of the `keys` keys of every node's tag is written.
    let writes = (options.keys * 30).max(1000);
    set.extend(
        ["-c", &options.clients.to_string(), "-n", &writes.to_string(), "-r", &options.keys.to_string(), "-q"]
            .map(String::from),
    );
    set.extend(["SET", key, &"x".repeat(options.value_bytes.max(1)), "PX", "600000"].map(String::from));
    match exec(PROGRAM, &set, options.timeout).await {
        Ok(_) => {}
        Err(why) => return Outcome::failed(command, format!("writing its keys: {why}")),
    }

    let before = keyspace(target).await;
    let csv = match exec(PROGRAM, &get, options.timeout).await {
        Ok(out) => out,
        Err(why) => return Outcome::failed(command, why),
    };
    let after = keyspace(target).await;
    let Some((rps, p50, p99)) = parse_csv(&csv, "GET") else {
        return Outcome::failed(command, format!("no GET line in its output: {}", csv.trim()));
    };
    let hit_ratio = match (before, after) {
        (Some((h0, m0)), Some((h1, m1))) => {
            let (h, m) = (h1.saturating_sub(h0), m1.saturating_sub(m0));
            (h + m > 0).then(|| h as f64 / (h + m) as f64)
        }
        _ => None,
    };
    Outcome { command, requests_per_sec: Some(rps), p50_ms: Some(p50), p99_ms: Some(p99), hit_ratio, error: None }
}

/// `-h host -p port [--cluster] [--user u] [-a password]` for the first URL of `target`.
fn connection_args(target: &Target, cluster: bool) -> Result<Vec<String>, String> {
    let url = target.urls().into_iter().next().ok_or("no Redis URL")?;
    let info = url.as_str().into_connection_info().map_err(|e| format!("bad Redis URL: {e}"))?;
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        redis::ConnectionAddr::TcpTls { .. } => {
            return Err("not run: TLS deployment (run redis-benchmark --tls with its certificates by hand)".into());
        }
        other => return Err(format!("not run: unsupported address {other:?}")),
    };
    let mut args = vec!["-h".to_owned(), host, "-p".to_owned(), port.to_string()];
    if cluster {
        args.push("--cluster".into());
    }
    let settings = info.redis_settings();
    if let Some(user) = settings.username() {
        args.extend(["--user".to_owned(), user.to_owned()]);
    }
    if let Some(password) = settings.password() {
        args.extend(["-a".to_owned(), password.to_owned(), "--no-auth-warning".to_owned()]);
    }
    Ok(args)
}

/// Runs `program` with `args`: its stdout, or why it failed.
async fn exec(program: &str, args: &[String], timeout: Duration) -> Result<String, String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("not run: {program} is not installed (Debian: apt install redis-tools)"));
        }
        Err(e) => return Err(format!("could not start {program}: {e}")),
    };
    let started = Instant::now();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!("{program} was stopped after {:.0} s", started.elapsed().as_secs_f64())),
        Ok(Err(e)) => Err(format!("{program} failed: {e}")),
        Ok(Ok(out)) if !out.status.success() => Err(format!(
            "{program} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim().chars().take(300).collect::<String>()
        )),
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

/// Keyspace hits and misses summed over the masters, `None` when they cannot be read.
async fn keyspace(target: &Target) -> Option<(u64, u64)> {
    let mut sum = (0, 0);
    for url in masters(target).await.ok()? {
        let mut con = connect(&url).await.ok()?;
        sum.0 += info_field(&mut con, "stats", "keyspace_hits").await.ok()?;
        sum.1 += info_field(&mut con, "stats", "keyspace_misses").await.ok()?;
    }
    Some(sum)
}

/// (requests/s, p50 ms, p99 ms) of `test` in `redis-benchmark --csv` output (Redis 7: the
/// columns test, rps, avg, min, p50, p95, p99, max, each quoted).
pub fn parse_csv(text: &str, test: &str) -> Option<(f64, f64, f64)> {
    // On a cluster, a description of the masters comes first.
    let mut lines = text
        .lines()
        .map(|l| l.split(',').map(|f| f.trim().trim_matches('"')).collect::<Vec<_>>())
        .skip_while(|f| f.first() != Some(&"test"));
    let header = lines.next()?;
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (rps, p50, p99) = (col("rps")?, col("p50_latency_ms")?, col("p99_latency_ms")?);
    let row = lines.find(|f| f.first() == Some(&test))?;
    let num = |i: usize| row.get(i)?.parse::<f64>().ok();
    Some((num(rps)?, num(p50)?, num(p99)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_get_line_of_its_csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"GET\",\"47755.49\",\"1.237\",\"0.024\",\"0.207\",\"5.727\",\"17.759\",\"136.191\"\n";
        assert_eq!(parse_csv(csv, "GET"), Some((47755.49, 0.207, 17.759)));
        assert_eq!(parse_csv(csv, "SET"), None);
        assert_eq!(parse_csv("", "GET"), None);
        let cluster = format!("Cluster has 3 master nodes:\n\nMaster 0: 0a0e 127.0.0.1:17101\n\n{csv}");
        assert_eq!(parse_csv(&cluster, "GET"), Some((47755.49, 0.207, 17.759)));
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_not_raised() {
        let why = exec("strata-no-such-benchmark", &[], Duration::from_secs(5)).await.expect_err("no such program");
        assert!(why.contains("not installed"), "{why}");
        let why = exec("sleep", &["10".to_owned()], Duration::from_millis(100)).await.expect_err("stopped");
        assert!(why.contains("stopped after"), "{why}");
    }
}
