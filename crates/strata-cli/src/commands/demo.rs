//! `strata demo`: a cache-aside workload on a local cluster, with and without Strata.

use std::time::Duration;

use strata_bench::demo;
use strata_bench::workload::{Layout, Target};

use super::common::{OutputArgs, runtime};

/// Arguments of `strata demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Operations per pass.
    #[arg(long, default_value_t = 40_000)]
    operations: u64,
    /// Concurrent workers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Latency of one source query, in milliseconds.
    #[arg(long, default_value_t = 2)]
    source_delay_ms: u64,
    #[command(flatten)]
    output: OutputArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let target = Target::start_local(Layout::Cluster)?;
        let options = demo::Options {
            operations: args.operations,
            concurrency: args.concurrency,
            source_delay: Duration::from_millis(args.source_delay_ms),
            ..demo::Options::default()
        };
        eprintln!(
            "local cluster: {}\nworkload: {} users, {} ops, 80 % reads, Zipf(0.99), {} workers, source delay {} ms",
            target.urls().join(" "),
            options.users,
            options.operations,
            options.concurrency,
            args.source_delay_ms
        );
        let report = demo::run(&target, &options).await?;
        args.output.print(&report, || demo::render(&report))
    })
}
