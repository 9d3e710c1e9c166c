//! `strata drill`: fault and load drills against a deployment.

use std::path::PathBuf;
use std::time::Duration;

use strata_bench::drill_stampede;

use super::common::{OutputArgs, Style, TargetArgs, paint, runtime};

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
