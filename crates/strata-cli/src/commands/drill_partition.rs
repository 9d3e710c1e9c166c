//! `strata drill partition --lab DIR`: a network partition on the lab (issue 18).
//!
//! The lab holds a Redis Cluster deployed by `deploy/ansible` (3 masters on h1-h3, 3 replicas
//! on h4-h6, its passwords in `DIR/redis-config/credentials`) and two client hosts, h7 and h8.
//! Issue 9's consistency workers run on both client hosts (history checker, L1 on). A third of
//! the way in, the master of slot 0 and h7 are cut off from every other host and from the
//! machine (a minority side: the master with its own clients) for `--isolate-for`, past the
//! cluster's node timeout, so the majority promotes the master's replica; then the partition
//! heals and the old master rejoins as a replica.
//!
//! Meanwhile a writer on h7 writes numbered keys to the isolated master directly: half with a
//! plain `SET`, half followed by `WAIT 1 200`, each counted as acknowledged only when the reply
//! (and, for the second half, a replica) confirmed it. After the heal every acknowledged key is
//! read back: **acked writes lost** are those gone, the window of Redis Cluster's asynchronous
//! replication that a partition exposes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use strata_bench::consistency::{self, Fault as ConsistencyFault, Injected, Setup};
use strata_lab::Lab;

use super::common::{OutputArgs, Style, paint, parse_duration};

/// Arguments of `strata drill partition`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The lab's directory (`strata lab up --hosts 8`, then the playbook with
    /// `-e strata_config_dir=LAB/redis-config`).
    #[arg(long, default_value = ".strata/lab")]
    lab: PathBuf,
    /// The load before, during and after the partition.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    duration: Duration,
    /// How long the master and its client stay cut off (past the node timeout: 5 s in the
    /// playbook's configuration).
    #[arg(long, default_value = "12s", value_parser = parse_duration)]
    isolate_for: Duration,
    /// The staleness bound of the history checker: the caches' heartbeat interval plus its
    /// timeout (200 + 500 ms by default), as for `drill consistency`.
    #[arg(long, default_value = "700ms", value_parser = parse_duration)]
    bound: Duration,
    /// `minority`: the master of slot 0 and h7 cut off from everything else; `client`: h7 cut
    /// off from that master only (its L1 must close for the master's slots within the bound).
    #[arg(long, value_enum, default_value_t = Scenario::Minority)]
    scenario: Scenario,
    /// Worker processes, alternately on h7 (the minority side) and h8.
    #[arg(long, default_value_t = 4)]
    processes: u16,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Minority,
    Client,
}

/// What the drill found.
#[derive(Debug, Serialize)]
struct Report {
    /// The history checker's report (its `stale_reads`, `caller_errors`, ...).
    consistency: consistency::Report,
    /// The isolated master (and its host).
    isolated_master: String,
    /// The client host on its side.
    minority_client: String,
    /// Seconds from the cut until the majority served the isolated master's slots from another
    /// node (its replica promoted): how long those slots were unavailable on the majority side.
    failover_s: Option<f64>,
    /// Seconds from the heal until every node reported `cluster_state:ok`.
    healed_s: f64,
    /// Writes to the isolated master acknowledged by a plain `SET`.
    acked_writes: usize,
    /// Of them, gone after the heal.
    acked_writes_lost: usize,
    /// Writes acknowledged by `SET` and then `WAIT 1 200` reaching a replica.
    acked_with_wait: usize,
    /// Of them, gone after the heal.
    acked_with_wait_lost: usize,
    /// Writes refused or failed (not acknowledged).
    writer_errors: usize,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    strata_lab::require_root()?;
    let mut lab = Lab::load(&args.lab)?;
    anyhow::ensure!(
        lab.hosts.len() >= 8,
        "the partition drill needs 8 hosts (6 for Redis, 2 for clients): strata lab up --hosts 8"
    );
    let credentials = lab.dir.join("redis-config/credentials");
    let text = std::fs::read_to_string(&credentials).with_context(|| {
        format!("reading {} (deploy the cluster first: docs/operations/multi-host.md)", credentials.display())
    })?;
    let password = text.lines().find_map(|l| l.strip_prefix("admin ")).context("no admin password")?.trim().to_owned();
    let seeds: Vec<String> =
        lab.hosts[..6].iter().map(|h| format!("redis://admin:{password}@{}:6379", h.addr)).collect();
    let master = master_of_slot_0(&seeds[0])?;
    let isolated = lab.hosts.iter().find(|h| h.addr.to_string() == master.split(':').next().unwrap_or_default());
    let isolated = isolated.with_context(|| format!("the master of slot 0, {master}, is not a lab host"))?.name.clone();
    let (minority, majority) = (lab.hosts[6].name.clone(), lab.hosts[7].name.clone());

    let exe = std::env::current_exe()?;
    let worker_on = |host: &str| -> anyhow::Result<Vec<String>> {
        let mut cmd = lab.command(host, &exe)?;
        cmd.args(["drill", "consistency-worker"]);
        Ok(std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect())
    };
    let commands = vec![worker_on(&minority)?, worker_on(&majority)?];
    let options = consistency::Options {
        fault: ConsistencyFault::None,
        processes: usize::from(args.processes),
        readers: 4,
        writers: 2,
        duration: args.duration,
        bound: args.bound,
        progress: !args.output.json,
        without_invalidation: false,
        plain_key_only: false,
        keep: None,
        soak: None,
    };

    // The writer on the minority side, writing to the isolated master from the start (in the
    // client scenario it loses that master: nothing it could acknowledge is at stake).
    let stop = Arc::new(AtomicBool::new(args.scenario == Scenario::Client));
    let writer = {
        let (stop, netns) = (stop.clone(), lab.host(&minority)?.netns.clone());
        let url = format!("redis://admin:{password}@{master}");
        let tag = tag_on(&seeds[0], &master)?;
        std::thread::spawn(move || acked_writer(&netns, &url, &tag, &stop))
    };

    let (mut failover_s, mut healed_s) = (None, 0.0);
    let mut inject = |_: &mut Setup| -> anyhow::Result<()> {
        let cut = Instant::now();
        match args.scenario {
            Scenario::Minority => lab.isolate(&[&isolated, &minority])?,
            Scenario::Client => lab.partition(&minority, &isolated)?,
        }
        // Watch the majority's view (a replica host) until another node serves slot 0.
        let watcher = format!("redis://admin:{password}@{}:6379", lab.hosts[3].addr);
        while cut.elapsed() < args.isolate_for {
            if failover_s.is_none() && master_of_slot_0(&watcher).is_ok_and(|m| m != master) {
                failover_s = Some(cut.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        lab.heal()?;
        let healed = Instant::now();
        wait_healthy(&seeds, Duration::from_secs(60))?;
        healed_s = healed.elapsed().as_secs_f64();
        Ok(())
    };
    let mut setup = Setup::External(seeds.clone());
    let name = match args.scenario {
        Scenario::Minority => format!("partition of {isolated} (master) + {minority} (client) from the rest"),
        Scenario::Client => format!("partition of {minority} (client) from {isolated} (master) only"),
    };
    let result = consistency::run_with(&mut setup, &options, &commands, Injected { name: &name, inject: &mut inject });
    stop.store(true, Ordering::SeqCst);
    let written = writer.join();
    // Whatever happened, the lab is whole again before any error is returned.
    let mut lab = Lab::load(&args.lab)?;
    lab.heal()?;
    let written = written.map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    let consistency = result?;

    wait_healthy(&seeds, Duration::from_secs(60))?;
    let (lost_plain, lost_wait) = lost(&seeds, &written)?;
    let report = Report {
        consistency,
        isolated_master: format!("{master} ({isolated})"),
        minority_client: minority,
        failover_s,
        healed_s,
        acked_writes: written.plain.len(),
        acked_writes_lost: lost_plain,
        acked_with_wait: written.waited.len(),
        acked_with_wait_lost: lost_wait,
        writer_errors: written.errors,
    };
    let c = &report.consistency;
    args.output.print(&report, || {
        let verdict = if c.stale_reads == 0 && c.caller_errors == 0 { paint("PASS", Style::Good) } else { paint("FAIL", Style::Bad) };
        format!(
            "{verdict}: {}, {} processes, {:.1} s: {} ops ({} reads, {} writes judged)\n  stale reads {} (bound {:.0} ms), max staleness {:.1} ms; caller errors {}, write errors {}\n  slots of the isolated master served by the majority after {}; cluster ok {:.1} s after the heal\n  acknowledged writes lost: {} of {} (SET), {} of {} (SET + WAIT 1); {} writes refused\n",
            c.fault,
            c.processes,
            c.load_s,
            c.ops,
            c.reads,
            c.writes,
            c.stale_reads,
            c.bound_ms,
            c.max_staleness_ms,
            c.caller_errors,
            c.write_errors,
            report.failover_s.map_or("no failover".to_owned(), |s| format!("{s:.1} s")),
            report.healed_s,
            report.acked_writes_lost,
            report.acked_writes,
            report.acked_with_wait_lost,
            report.acked_with_wait,
            report.writer_errors,
        )
    })?;
    anyhow::ensure!(c.caller_errors == 0, "{} reads returned an error", c.caller_errors);
    anyhow::ensure!(c.stale_reads == 0, "{} stale reads", c.stale_reads);
    Ok(())
}

fn connect(url: &str) -> anyhow::Result<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(1))?;
    con.set_read_timeout(Some(Duration::from_secs(2)))?;
    con.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(con)
}

/// `host:port` of the master serving slot 0, in `url`'s node's view.
fn master_of_slot_0(url: &str) -> anyhow::Result<String> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut connect(url)?)?;
    nodes
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 8
                && f[2].contains("master")
                && !f[2].contains("fail")
                && f[8..].iter().any(|r| r.starts_with("0-") || *r == "0")
        })
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|a| a.split('@').next().unwrap_or(a).to_owned())
        .context("no master serves slot 0")
}

/// A hash tag whose slot `master` serves.
fn tag_on(url: &str, master: &str) -> anyhow::Result<String> {
    let mut con = connect(url)?;
    for i in 0..10_000 {
        let tag = format!("strata-partition-{i}");
        let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&tag).query(&mut con)?;
        if master_of_slot(&mut con, slot)? == master {
            return Ok(tag);
        }
    }
    anyhow::bail!("no hash tag found on {master}")
}

fn master_of_slot(con: &mut redis::Connection, slot: u16) -> anyhow::Result<String> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(con)?;
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() <= 8 || !f[2].contains("master") {
            continue;
        }
        for range in &f[8..] {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                && (a..=b).contains(&slot)
            {
                return Ok(f[1].split('@').next().unwrap_or(f[1]).to_owned());
            }
        }
    }
    anyhow::bail!("no master serves slot {slot}")
}

/// Every node answers `cluster_state:ok`.
fn wait_healthy(seeds: &[String], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let ok = seeds.iter().all(|url| {
            connect(url)
                .and_then(|mut c| Ok(redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c)?))
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        });
        if ok {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the cluster was not ok {within:?} after the heal");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the writer had acknowledged.
struct Written {
    tag: String,
    plain: Vec<u64>,
    waited: Vec<u64>,
    errors: usize,
}

/// On `netns` (this thread only), writes `{tag}:n` to the master of `url` until `stop`, at most
/// 200 writes a second and 100,000 in all.
fn acked_writer(netns: &str, url: &str, tag: &str, stop: &AtomicBool) -> anyhow::Result<Written> {
    let ns =
        std::fs::File::open(Path::new("/run/netns").join(netns)).with_context(|| format!("opening netns {netns}"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the client host's network")?;
    let mut written = Written { tag: tag.to_owned(), plain: Vec::new(), waited: Vec::new(), errors: 0 };
    let mut con = None;
    for n in 0..100_000u64 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        if con.is_none() {
            con = connect(url).ok();
        }
        let Some(c) = con.as_mut() else {
            written.errors += 1;
            continue;
        };
        let key = format!("{{{tag}}}:{n}");
        let acked = if n % 2 == 0 {
            redis::cmd("SET").arg(&key).arg(n).query::<()>(c).map(|()| true)
        } else {
            redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(n)
                .ignore()
                .cmd("WAIT")
                .arg(1)
                .arg(200)
                .query::<(i64,)>(c)
                .map(|(r,)| r >= 1)
        };
        match acked {
            Ok(true) if n % 2 == 0 => written.plain.push(n),
            Ok(true) => written.waited.push(n),
            Ok(false) => written.errors += 1,
            Err(_) => {
                written.errors += 1;
                con = None;
            }
        }
    }
    Ok(written)
}

/// How many acknowledged keys (plain, waited) are gone; deletes them all.
fn lost(seeds: &[String], written: &Written) -> anyhow::Result<(usize, usize)> {
    let master = master_of_slot_0(&seeds[0])?;
    // The tag's slot may not be slot 0: ask the node that serves it now.
    let mut con = connect(&seeds[0])?;
    let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&written.tag).query(&mut con)?;
    let owner = master_of_slot(&mut con, slot).unwrap_or(master);
    let userinfo =
        seeds[0].split_once("://").and_then(|(_, r)| r.rsplit_once('@')).map(|(u, _)| u.to_owned()).unwrap_or_default();
    let mut con = connect(&format!("redis://{userinfo}@{owner}"))?;
    let mut missing = |ns: &[u64]| -> anyhow::Result<usize> {
        let mut gone = 0;
        for chunk in ns.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|n| format!("{{{}}}:{n}", written.tag)).collect();
            let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query(&mut con)?;
            gone += values.iter().filter(|v| v.is_none()).count();
            redis::cmd("DEL").arg(&keys).query::<()>(&mut con)?;
        }
        Ok(gone)
    };
    let plain = missing(&written.plain)?;
    let waited = missing(&written.waited)?;
    Ok((plain, waited))
}
