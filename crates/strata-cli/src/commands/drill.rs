//! `strata drill`: fault and load drills against a deployment.

use std::path::PathBuf;
use std::time::Duration;

use strata_bench::{drill_coherence, drill_stampede};

use strata_bench::fault_inject::Fault;

use super::common::{OutputArgs, Style, TargetArgs, paint, runtime};
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
    /// One worker process of `drill stampede` (started by it).
    #[command(hide = true)]
    StampedeWorker(WorkerArgs),
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
