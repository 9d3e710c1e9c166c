//! `strata`: the operator CLI. Thin: it parses arguments and calls the library crates.
//!
//! Exit codes: 0 success, 1 the command failed (the message says why), 2 invalid arguments.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use strata_bench::workload::{Layout, Target};
use strata_bench::{demo, hit_latency};

#[derive(Parser)]
#[command(name = "strata", version, about = "Operate Strata caches and the Redis beneath them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local Redis Cluster, run a cache-aside workload over a slow source with and
    /// without Strata, and print latencies, hits and source load.
    Demo {
        /// Operations per pass.
        #[arg(long, default_value_t = 40_000)]
        operations: u64,
        /// Concurrent workers.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Latency of one source query, in milliseconds.
        #[arg(long, default_value_t = 2)]
        source_delay_ms: u64,
        /// Print the results as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run a benchmark scenario. Without --url it starts its own local Redis and stops it after.
    Bench {
        /// The scenario to run.
        #[arg(long, value_enum, default_value_t = Scenario::HitLatency)]
        scenario: Scenario,
        /// Redis URL(s): one for a standalone server, several for cluster seeds.
        #[arg(long = "url")]
        urls: Vec<String>,
        /// Local deployment to start when no --url is given.
        #[arg(long, value_enum, default_value_t = LayoutArg::Standalone)]
        topology: LayoutArg,
        /// Interleaved rounds.
        #[arg(long, default_value_t = 30)]
        rounds: usize,
        /// Timed Redis reads per variant per round.
        #[arg(long, default_value_t = 1000)]
        ops_per_round: usize,
        /// Upper bound on the run, in seconds.
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
        /// Print the results as JSON on stdout (progress stays on stderr).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// L1 hit, L2 hit and a raw redis-rs GET of the same value, interleaved.
    HitLatency,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    Standalone,
    Cluster,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("STRATA_LOG"))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("strata: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("strata: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo { operations, concurrency, source_delay_ms, json } => {
            let target = Target::start_local(Layout::Cluster)?;
            let options = demo::Options {
                operations,
                concurrency,
                source_delay: Duration::from_millis(source_delay_ms),
                ..demo::Options::default()
            };
            if !json {
                eprintln!(
                    "local cluster: {}\nworkload: {} users, {} ops, 80 % reads, Zipf(0.99), {} workers, source delay {} ms",
                    target.urls().join(" "),
                    options.users,
                    options.operations,
                    options.concurrency,
                    source_delay_ms
                );
            }
            let report = demo::run(&target, &options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", demo::render(&report));
            }
        }
        Command::Bench { scenario: Scenario::HitLatency, urls, topology, rounds, ops_per_round, max_seconds, json } => {
            let target = if urls.is_empty() {
                Target::start_local(match topology {
                    LayoutArg::Standalone => Layout::Standalone,
                    LayoutArg::Cluster => Layout::Cluster,
                })?
            } else {
                Target::external(urls)?
            };
            let options = hit_latency::Options {
                rounds,
                ops_per_round,
                max_duration: Duration::from_secs(max_seconds),
                ..hit_latency::Options::default()
            };
            let report = hit_latency::run(&target, &options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", hit_latency::render(&report));
            }
        }
    }
    Ok(())
}
