//! `strata drill`: fault and load drills against a deployment.

use std::path::PathBuf;
use std::time::Duration;

use strata_bench::consistency::{self, Fault as ConsistencyFault, Setup};
use strata_bench::{drill_coherence, drill_stampede};

use strata_bench::fault_inject::Fault;

use super::common::{OutputArgs, Style, TargetArgs, paint, parse_duration, runtime};
use super::drill_faults::{self, FaultArgs};

/// Arguments of `strata drill`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    drill: Drill,
}

#[derive(clap::Subcommand, Debug)]
enum Drill {
    /// Many callers in several processes miss one hot key at once: the source must be asked once.
    Stampede(StampedeArgs),
    /// Writes through one instance and with a plain client, reads through the others: how long
    /// until every instance's L1 serves the new value, and does any serve the old one later?
    Coherence(CoherenceArgs),
    /// A history checker: several processes read and write a versioned source through their own
    /// caches (L1 on) while one fault is injected; any read older than a write completed more
    /// than the bound before it is a stale read (exit status 1).
    Consistency(ConsistencyArgs),
    /// SIGKILL one master of a `strata up` cluster under load; its replica takes over.
    Failover(FaultArgs),
    /// SIGKILL one master of a `strata up --persistence aof` cluster and start it again at once:
    /// keys acknowledged more than 1 s before the kill must survive.
    Restart(FaultArgs),
    /// Stop every node of a `strata up` cluster for a while under load, then start them again.
    Outage(FaultArgs),
    /// Add a master to a `strata up` cluster and move a quarter of the slots to it under load:
    /// no key written before the move may be lost.
    Reshard(FaultArgs),
    /// A long fixed-rate run with every feature on (4 processes): worker RSS and Redis memory
    /// must stay flat after warm-up, with 0 caller errors and 0 stale reads (exit status 1
    /// otherwise). Writes a JSON and an HTML report like `strata bench`.
    Soak(SoakArgs),
    /// On the lab (`strata lab`, 8 hosts, the cluster of deploy/ansible): isolate one master with
    /// its own clients past the node timeout, then heal, under the history checker's load;
    /// reports stale reads, caller errors, the failover and the acknowledged writes lost. Root.
    Partition(super::drill_partition::Args),
    /// One worker process of `drill stampede` (started by it).
    #[command(hide = true)]
    StampedeWorker(WorkerArgs),
    /// One worker process of `drill consistency` (started by it).
    #[command(hide = true)]
    ConsistencyWorker(ConsistencyWorkerArgs),
}

#[derive(clap::Args, Debug)]
struct ConsistencyArgs {
    /// The fault injected a third of the way in: none, failover, hang, restart, reshard,
    /// kill-tracking or flushall.
    #[arg(long, default_value = "none", value_parser = ConsistencyFault::parse)]
    fault: ConsistencyFault,
    /// The Redis the drill starts for itself and stops afterwards: standalone or cluster (3
    /// masters + 3 replicas, cluster-node-timeout 1 s).
    #[arg(long, default_value = "cluster", value_parser = ["standalone", "cluster"])]
    topology: String,
    /// Run on this deployment instead (any node; a cluster is discovered). Only the faults
    /// none, kill-tracking and flushall, which need no process control.
    #[arg(long, conflicts_with = "topology")]
    url: Option<String>,
    /// Worker processes, each with its own cache.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    processes: u16,
    /// Reader tasks per process.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=256))]
    readers: u16,
    /// Writer tasks per process.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=256))]
    writers: u16,
    /// The load, before, during and after the fault (it runs on at least 4 s past recovery).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// The staleness bound: the cache's heartbeat interval plus its timeout (200 + 500 ms by
    /// default), the longest an instance may miss an invalidation before it drops its L1.
    #[arg(long, default_value = "700ms", value_parser = parse_duration)]
    bound: Duration,
    /// Turn invalidation off in the workers (shows the stale reads it prevents; the drill then
    /// fails).
    #[arg(long)]
    without_invalidation: bool,
    /// The plain client (another team's service) deletes the key alone, not its lease and version keys as
    /// the contract asks (`strata::coordination_keys`): shows the stale sets that contract prevents.
    #[arg(long)]
    plain_key_only: bool,
    /// Keep every worker's history (`history-N.jsonl`, one JSON line per key touched) and the
    /// source (SQLite) in this directory, for a closer look at a stale read.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct SoakArgs {
    /// How long the load runs.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured run, sampled but not judged (allocators, L1 and the
    /// write-behind dedup records reach their size).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    warm_up: Duration,
    /// How often the resources are sampled.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    sample_every: Duration,
    /// The Redis the drill starts for itself and stops afterwards: standalone or cluster (3
    /// masters + 3 replicas).
    #[arg(long, default_value = "cluster", value_parser = ["standalone", "cluster"])]
    topology: String,
    /// Run on this deployment instead (any node; a cluster is discovered; unauthenticated).
    #[arg(long, conflicts_with_all = ["topology", "dir"])]
    url: Option<String>,
    /// Run on the cluster of this `strata up` directory instead (not `--secure`).
    #[arg(long, conflicts_with = "topology")]
    dir: Option<PathBuf>,
    /// Worker processes, each with its own cache.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    processes: u16,
    /// The staleness bound of the consistency checker.
    #[arg(long, default_value = "700ms", value_parser = parse_duration)]
    bound: Duration,
    /// The largest growth accepted for the workers' RSS and Redis memory, in % of their value
    /// after warm-up per minute.
    #[arg(long, default_value_t = strata_bench::soak::MAX_SLOPE_PCT_PER_MIN)]
    max_slope_pct_per_min: f64,
    /// Where the JSON and HTML reports go.
    #[arg(long, default_value = strata_bench::report::DEFAULT_DIR)]
    out: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct ConsistencyWorkerArgs {
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    process: u16,
    #[arg(long)]
    readers: usize,
    #[arg(long)]
    writers: usize,
    #[arg(long)]
    max_secs: u64,
    #[arg(long)]
    without_invalidation: bool,
    #[arg(long)]
    plain_key_only: bool,
    #[arg(long)]
    soak: bool,
}

#[derive(clap::Args, Debug)]
struct StampedeArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Worker processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    processes: u16,
    /// Callers in total, spread over the processes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    callers: u32,
    /// How long one load of the simulated source takes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    load_ms: u64,
    /// Upper bound on the drill, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct CoherenceArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Cache instances: one writer, the others readers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=32))]
    instances: u16,
    /// Writes in total (half through Strata, half with a plain client).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    writes: u32,
    /// A read this long after a write must return the new value, in milliseconds.
    #[arg(long, default_value_t = 100)]
    bound_ms: u64,
    /// Upper bound on the drill, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Turn invalidation off (shows the staleness it prevents; the drill then fails).
    #[arg(long)]
    without_invalidation: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    key: String,
    #[arg(long)]
    id: String,
    #[arg(long)]
    callers: usize,
    #[arg(long)]
    load_ms: u64,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    match args.drill {
        Drill::Stampede(a) => stampede(a),
        Drill::Coherence(a) => coherence(a),
        Drill::Consistency(a) => consistency_drill(a),
        Drill::ConsistencyWorker(w) => runtime()?.block_on(consistency::worker(consistency::WorkerOptions {
            urls: w.urls,
            dir: w.dir,
            process: w.process,
            readers: w.readers,
            writers: w.writers,
            max_duration: Duration::from_secs(w.max_secs),
            without_invalidation: w.without_invalidation,
            plain_key_only: w.plain_key_only,
            soak: w.soak,
        })),
        Drill::Soak(a) => soak(a),
        Drill::Partition(a) => super::drill_partition::run(a),
        Drill::Failover(a) => drill_faults::run(Fault::Failover, a),
        Drill::Restart(a) => drill_faults::run(Fault::Restart, a),
        Drill::Outage(a) => drill_faults::run(Fault::Outage, a),
        Drill::Reshard(a) => drill_faults::run(Fault::Reshard, a),
        Drill::StampedeWorker(w) => runtime()?.block_on(drill_stampede::worker(
            w.urls,
            &w.dir,
            &w.key,
            &w.id,
            w.callers,
            Duration::from_millis(w.load_ms),
        )),
    }
}

fn stampede(args: StampedeArgs) -> anyhow::Result<()> {
    let deployment = args.target.deployment()?;
    if deployment.credentials().password.is_some() || deployment.db() != 0 {
        anyhow::bail!("drill stampede supports unauthenticated database 0 only for now");
    }
    let urls = deployment.urls();
    let exe = std::env::current_exe()?.to_string_lossy().to_string();
    let worker = vec![exe, "drill".into(), "stampede-worker".into()];
    let options = drill_stampede::Options {
        processes: usize::from(args.processes),
        callers: args.callers as usize,
        load: Duration::from_millis(args.load_ms),
        timeout: Duration::from_secs(args.timeout_secs),
    };
    let report = drill_stampede::run(&urls, &options, &worker)?;
    args.output.print(&report, || {
        let verdict = if report.loader_calls == 1 && report.caller_errors == 0 {
            paint("PASS", Style::Good)
        } else {
            paint("FAIL", Style::Bad)
        };
        format!(
            "{verdict}: {} callers in {} processes, {} loader call(s), {} served, {} errors, longest wait {} ms\n",
            args.callers,
            report.processes,
            report.loader_calls,
            report.callers_served,
            report.caller_errors,
            report.max_wait_ms
        )
    })?;
    anyhow::ensure!(report.caller_errors == 0, "{} callers got an error", report.caller_errors);
    anyhow::ensure!(report.loader_calls == 1, "the source was asked {} times, not once", report.loader_calls);
    Ok(())
}

fn consistency_drill(args: ConsistencyArgs) -> anyhow::Result<()> {
    let mut setup = match &args.url {
        Some(url) => Setup::External(external_urls(Some(url), None)?),
        None => Setup::start(&args.topology, args.fault)?,
    };
    let exe = std::env::current_exe()?.to_string_lossy().to_string();
    let worker = vec![exe, "drill".into(), "consistency-worker".into()];
    let options = consistency::Options {
        fault: args.fault,
        processes: usize::from(args.processes),
        readers: usize::from(args.readers),
        writers: usize::from(args.writers),
        duration: args.duration,
        bound: args.bound,
        progress: !args.output.json,
        without_invalidation: args.without_invalidation,
        plain_key_only: args.plain_key_only,
        keep: args.keep,
        soak: None,
    };
    let report = consistency::run(&mut setup, &options, &worker)?;
    args.output.print(&report, || {
        let verdict = if report.stale_reads == 0 && report.caller_errors == 0 {
            paint("PASS", Style::Good)
        } else {
            paint("FAIL", Style::Bad)
        };
        let mut text = format!(
            "{verdict}: fault {} on {}, {} processes, {:.1} s: {} ops ({} reads, {} writes judged)\n  stale reads {} (bound {:.0} ms), max staleness {:.3} ms; new version visible everywhere after p50 {:.3} / p99 {:.3} / max {:.3} ms\n  caller errors {}, write errors {}, L1 hits {}\n",
            report.fault,
            report.topology,
            report.processes,
            report.load_s,
            report.ops,
            report.reads,
            report.writes,
            report.stale_reads,
            report.bound_ms,
            report.max_staleness_ms,
            report.visible_after_write_ms.p50,
            report.visible_after_write_ms.p99,
            report.visible_after_write_ms.max,
            report.caller_errors,
            report.write_errors,
            report.l1_hits,
        );
        for (op, n) in &report.stale_by_op {
            text.push_str(&format!("  stale via {op}: {n}\n"));
        }
        for s in &report.stale_examples {
            text.push_str(&format!(
                "  e.g. process {} {} {} returned v{} {:.1} ms after v{} was written\n",
                s.read.process,
                s.read.op,
                s.read.key,
                s.read.version.unwrap_or(0),
                s.staleness_ms,
                s.newest_version
            ));
        }
        text
    })?;
    anyhow::ensure!(report.caller_errors == 0, "{} reads returned an error", report.caller_errors);
    anyhow::ensure!(report.stale_reads == 0, "{} stale reads", report.stale_reads);
    Ok(())
}

fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let mut setup = match (&args.url, &args.dir) {
        (Some(url), _) => Setup::External(external_urls(Some(url), None)?),
        (None, Some(dir)) => Setup::External(external_urls(None, Some(dir))?),
        (None, None) => Setup::start(&args.topology, ConsistencyFault::None)?,
    };
    let exe = std::env::current_exe()?.to_string_lossy().to_string();
    let worker = vec![exe, "drill".into(), "consistency-worker".into()];
    let options = consistency::Options {
        fault: ConsistencyFault::None,
        processes: usize::from(args.processes),
        readers: 4,
        writers: 2,
        duration: args.warm_up + args.duration,
        bound: args.bound,
        progress: !args.output.json,
        without_invalidation: false,
        plain_key_only: false,
        keep: None,
        soak: Some(args.sample_every),
    };
    let run = consistency::run(&mut setup, &options, &worker)?;
    let verdict = strata_bench::soak::verdict(&run, args.warm_up, args.max_slope_pct_per_min)?;
    let command: Vec<String> = std::env::args().collect();
    let written = strata_bench::soak::report(&verdict, &command)?.write(&args.out)?;
    let files = format!("report: {}\n        {}\n", written.html.display(), written.json.display());
    if args.output.json {
        eprint!("{files}");
    }
    args.output.print(&verdict, || {
        let text = strata_bench::soak::render(&verdict);
        let text =
            text.replacen("PASS", &paint("PASS", Style::Good), 1).replacen("FAIL", &paint("FAIL", Style::Bad), 1);
        format!("{text}{files}")
    })?;
    anyhow::ensure!(verdict.pass, "the soak failed (see the report)");
    Ok(())
}

/// The URLs of a deployment given by `--url` or a `strata up` directory (unauthenticated,
/// database 0).
fn external_urls(url: Option<&str>, dir: Option<&std::path::Path>) -> anyhow::Result<Vec<String>> {
    let target = TargetArgs {
        url: url.map(str::to_owned),
        dir: dir.map(std::path::Path::to_path_buf),
        user: None,
        password: None,
        password_file: None,
        tls_dir: None,
    };
    let deployment = target.deployment()?;
    anyhow::ensure!(
        deployment.credentials().password.is_none() && deployment.db() == 0,
        "this drill supports unauthenticated database 0 only for now"
    );
    Ok(deployment.urls())
}

fn coherence(args: CoherenceArgs) -> anyhow::Result<()> {
    let deployment = args.target.deployment()?;
    if deployment.credentials().password.is_some() || deployment.db() != 0 {
        anyhow::bail!("drill coherence supports unauthenticated database 0 only for now");
    }
    let urls = deployment.urls();
    let options = drill_coherence::Options {
        instances: usize::from(args.instances),
        writes: args.writes as usize,
        bound: Duration::from_millis(args.bound_ms),
        timeout: Duration::from_secs(args.timeout_secs),
        without_invalidation: args.without_invalidation,
    };
    let progress = !args.output.json;
    let report = runtime()?.block_on(drill_coherence::run(&urls, &options, progress))?;
    args.output.print(&report, || {
        let verdict = if report.stale_reads_after_delay == 0 {
            paint("PASS", Style::Good)
        } else {
            paint("FAIL", Style::Bad)
        };
        format!(
            "{verdict}: {} writes ({} with a plain client), {} readers; invalidation delay p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {} stale reads after {} ms\n",
            report.writes,
            report.plain_client_writes,
            report.instances - 1,
            report.invalidation_delay_ms_p50,
            report.invalidation_delay_ms_p99,
            report.invalidation_delay_ms_max,
            report.stale_reads_after_delay,
            report.bound_ms
        )
    })?;
    anyhow::ensure!(
        report.stale_reads_after_delay == 0,
        "{} reads returned an old value more than {} ms after the write",
        report.stale_reads_after_delay,
        report.bound_ms
    );
    Ok(())
}
