//! `strata bench`: benchmark scenarios.

use std::time::Duration;

use clap::ValueEnum;
use strata_bench::workload::{Layout, Target};
use strata_bench::{expiry, hit_latency};

use super::common::{OutputArgs, runtime};

/// Arguments of `strata bench`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::HitLatency)]
    scenario: Scenario,
    /// Redis URL(s): one for a standalone server, several for cluster seeds. Without it a local
    /// deployment is started and stopped afterwards.
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Local deployment to start when no --url is given.
    #[arg(long, value_enum, default_value_t = LayoutArg::Standalone)]
    topology: LayoutArg,
    /// Interleaved rounds (default: 30 for hit-latency, 6 for expiry).
    #[arg(long)]
    rounds: Option<usize>,
    /// Timed Redis reads per variant per round.
    #[arg(long, default_value_t = 1000)]
    ops_per_round: usize,
    /// Upper bound on the run, in seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    /// L1 hit, L2 hit and a raw redis-rs GET of the same value, interleaved.
    HitLatency,
    /// A hot key read by several tasks across its expiry with a slow loader: plain get_or_set
    /// against get_or_refresh with XFetch and stale-while-revalidate, interleaved.
    Expiry,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LayoutArg {
    Standalone,
    Cluster,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let target = if args.urls.is_empty() {
            Target::start_local(match args.topology {
                LayoutArg::Standalone => Layout::Standalone,
                LayoutArg::Cluster => Layout::Cluster,
            })?
        } else {
            Target::external(args.urls)?
        };
        if let Scenario::Expiry = args.scenario {
            let defaults = expiry::Options::default();
            let options = expiry::Options {
                rounds: args.rounds.unwrap_or(defaults.rounds),
                max_duration: Duration::from_secs(args.max_seconds),
                ..defaults
            };
            let report = expiry::run(&target, &options).await?;
            return args.output.print(&report, || expiry::render(&report));
        }
        let options = hit_latency::Options {
            rounds: args.rounds.unwrap_or(30),
            ops_per_round: args.ops_per_round,
            max_duration: Duration::from_secs(args.max_seconds),
            ..hit_latency::Options::default()
        };
        let report = hit_latency::run(&target, &options).await?;
        args.output.print(&report, || hit_latency::render(&report))
    })
}
