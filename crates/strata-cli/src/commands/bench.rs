//! `strata bench`: benchmark scenarios. Every run writes `<out>/<scenario>-<unix time>.json` and
//! `.html` and names them; `--json` prints the JSON document alone on stdout.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use strata_bench::report::{DEFAULT_DIR, Report};
use strata_bench::runner::Load;
use strata_bench::workload::{Layout, Target};
use strata_bench::{
    cold_start, eviction, expiry, hit_latency, hot_key, http, invalidation_scale, invalidation_wait, l1_store, scale,
    stampede, user_profiles, user_profiles_report,
};

use super::common::{OutputArgs, ProfilesArgs, parse_duration, runtime};

/// Arguments of `strata bench`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::HitLatency)]
    scenario: Scenario,
    /// Redis URL(s): a standalone server, or one or more nodes of a cluster. Without it a local
    /// deployment is started and stopped afterwards.
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Local deployment to start when no --url is given (default: standalone for hit-latency
    /// and expiry, cluster for the others).
    #[arg(long, value_enum)]
    topology: Option<LayoutArg>,
    /// Length of the run (stampede, hot-key, cold-start, eviction, scale): 30s, 2m, 500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent workers (stampede: callers per expiry, default 1000; hit-latency: tasks of the
    /// throughput variant, default 64; the others 16 to 32).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: Option<u32>,
    /// Upper bound on calls in the whole run (per scenario default when absent).
    #[arg(long)]
    max_ops: Option<u64>,
    /// Base offered rate R of the scale scenario, calls per second (it also runs 2R). The
    /// default doubles within the headroom of a release build on a 2-core local 3+3 cluster
    /// (docs/benchmarks.md, "scale").
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Let the eviction scenario empty (FLUSHALL) and reconfigure a deployment given by --url.
    #[arg(long)]
    allow_flush: bool,
    /// Deletes per second over all keys in the invalidation-scale scenario (W).
    #[arg(long, default_value_t = 2_000.0)]
    write_rate: f64,
    /// Cache processes of the invalidation-scale scenario, each reading its own share of the keys.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    processes: u16,
    /// Directory of the JSON and HTML reports.
    #[arg(long, default_value = DEFAULT_DIR)]
    out: PathBuf,
    /// Interleaved rounds of hit-latency (default 30), expiry (default 6) and l1-store (default 40).
    #[arg(long)]
    rounds: Option<usize>,
    /// Timed Redis reads per variant per round (hit-latency).
    #[arg(long, default_value_t = 1000)]
    ops_per_round: usize,
    /// Upper bound on hit-latency, expiry and l1-store's latency rounds, in seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Rounds of hit-latency's throughput variant, each one phase of Strata L2 hits and one of
    /// raw GETs (0: skip it and redis-benchmark).
    #[arg(long, default_value_t = 4)]
    throughput_rounds: usize,
    /// Length of one phase of the throughput variant: 3s, 500ms.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    throughput_phase: Duration,
    #[command(flatten)]
    profiles: ProfilesArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// L1 hit, L2 hit and a raw redis-rs GET of the same value, interleaved.
    HitLatency,
    /// A hot key read by several tasks across its expiry with a slow loader: plain get_or_set
    /// against get_or_refresh with XFetch and stale-while-revalidate, interleaved.
    Expiry,
    /// 1000 callers on one expired key with a slow source: Strata (single-flight, leases)
    /// against naive redis-rs cache-aside; loader calls and latency CDF.
    Stampede,
    /// Zipf-skewed reads dominated by one key: Strata with L1, without, and without L1 but
    /// with hot-key copies; throughput, p99, per-node share of commands.
    HotKey,
    /// An empty cache under load, with and without warming the top keys first: hit ratio over
    /// time, time to 90 %, source queries.
    ColdStart,
    /// Small maxmemory, one key trace replayed under allkeys-lru and allkeys-lfu: hit ratios and
    /// evictions (empties the deployment).
    Eviction,
    /// Open-loop load at R and 2R: does latency hold when the offered load doubles?
    Scale,
    /// The seed workload over the example service's database (80 % reads, Zipf(0.99) ids): the
    /// database alone, Strata, naive redis-rs cache-aside, the `cached` crate, redis-rs's own
    /// client-side cache (cache-aio) and a hand-rolled moka + redis-rs two-tier, back to back on
    /// one operation sequence, with their stale reads; each warms up for --warmup, then
    /// --duration is shared by the six.
    UserProfiles,
    /// Cache processes each reading their own share of the keys while a writer deletes keys
    /// over all of them at --write-rate: invalidation messages each process receives against its
    /// share of the writes, messages naming internal keys, and Redis CPU per write with and
    /// without tracking; each phase warms up 3 s, then runs --duration.
    InvalidationScale,
    /// Deletes through Strata without and with a WAIT for one replica
    /// (`AutoRecovery::wait_replicas`), in alternating rounds: latency from one task,
    /// throughput from 32 (needs a replica per master: the default cluster).
    InvalidationWait,
    /// An origin answering after 5 ms, alone and behind `strata edge` (strata-http), back to
    /// back: requests/s, p50 and p99, the edge's hit ratio (--duration per variant).
    Http,
    /// The crates that could hold L1 (moka, quick_cache, mini-moka), no Redis: hit latency with
    /// 1, 2 and 8 reader threads for an owned and an `Arc` value, and hit ratio of Zipf traces
    /// with a budget smaller than the keys (docs/decisions/0011-l1-store.md).
    L1Store,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LayoutArg {
    Standalone,
    Cluster,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.scenario == Scenario::Eviction && !args.urls.is_empty() && !args.allow_flush {
        anyhow::bail!(
            "the eviction scenario empties every master (FLUSHALL) and changes maxmemory for the run: add --allow-flush to run it against --url"
        );
    }
    let command: Vec<String> = std::env::args().collect();
    if args.scenario == Scenario::L1Store {
        // In-process only: no Redis to start.
        let defaults = l1_store::Options::default();
        let options = l1_store::Options {
            rounds: args.rounds.unwrap_or(defaults.rounds),
            max_duration: Duration::from_secs(args.max_seconds),
            ..defaults
        };
        let figures = l1_store::run(&options)?;
        let text = l1_store::render(&figures);
        let written = l1_store::report(&figures, &command)?.write(&args.out)?;
        let files = format!("report: {}\n        {}\n", written.html.display(), written.json.display());
        if args.output.json {
            eprint!("{files}");
        }
        return args.output.print(&written.document, || format!("{text}\n{files}"));
    }
    runtime()?.block_on(async {
        let target = if args.urls.is_empty() {
            let old = matches!(args.scenario, Scenario::HitLatency | Scenario::Expiry);
            Target::start_local(match args.topology {
                Some(LayoutArg::Standalone) => Layout::Standalone,
                Some(LayoutArg::Cluster) => Layout::Cluster,
                None if old => Layout::Standalone,
                None => Layout::Cluster,
            })?
        } else {
            Target::external(args.urls.clone())?
        };
        let (report, text) = scenario(&args, &target, &command).await?;
        let written = report.write(&args.out)?;
        let files = format!("report: {}\n        {}\n", written.html.display(), written.json.display());
        if args.output.json {
            eprint!("{files}");
        }
        args.output.print(&written.document, || format!("{text}\n{files}"))
    })
}

/// Runs the chosen scenario: its report, and its figures as text.
async fn scenario(args: &Args, target: &Target, command: &[String]) -> anyhow::Result<(Report, String)> {
    let load = |concurrency: usize, max_ops: u64| Load {
        duration: args.duration,
        max_ops: args.max_ops.unwrap_or(max_ops),
        concurrency: args.concurrency.map_or(concurrency, |c| c as usize),
    };
    Ok(match args.scenario {
        Scenario::HitLatency => {
            let options = hit_latency::Options {
                rounds: args.rounds.unwrap_or(30),
                ops_per_round: args.ops_per_round,
                max_duration: Duration::from_secs(args.max_seconds),
                throughput: hit_latency::ThroughputOptions {
                    rounds: args.throughput_rounds,
                    phase: args.throughput_phase,
                    tasks: args.concurrency.map_or(64, |c| c as usize),
                    ..hit_latency::ThroughputOptions::default()
                },
                ..hit_latency::Options::default()
            };
            let figures = hit_latency::run(target, &options).await?;
            let text = hit_latency::render(&figures);
            (plain("hit-latency", command, &figures, &text)?, text)
        }
        Scenario::Expiry => {
            let defaults = expiry::Options::default();
            let options = expiry::Options {
                rounds: args.rounds.unwrap_or(defaults.rounds),
                max_duration: Duration::from_secs(args.max_seconds),
                ..defaults
            };
            let figures = expiry::run(target, &options).await?;
            let text = expiry::render(&figures);
            (plain("expiry", command, &figures, &text)?, text)
        }
        Scenario::Stampede => {
            let defaults = stampede::Options::default();
            let options = stampede::Options {
                callers: args.concurrency.map_or(defaults.callers, |c| c as usize),
                duration: args.duration,
                max_rounds: args.max_ops.map_or(defaults.max_rounds, |n| n as usize),
                ..defaults
            };
            let run = stampede::run(target, &options).await?;
            (stampede::report(&run, command)?, stampede::render(&run.figures))
        }
        Scenario::HotKey => {
            let options = hot_key::Options { load: load(32, 10_000_000), ..hot_key::Options::default() };
            let run = hot_key::run(target, &options).await?;
            (hot_key::report(&run, command)?, hot_key::render(&run.figures))
        }
        Scenario::ColdStart => {
            let options = cold_start::Options { load: load(32, 10_000_000), ..cold_start::Options::default() };
            let run = cold_start::run(target, &options).await?;
            (cold_start::report(&run, command)?, cold_start::render(&run.figures))
        }
        Scenario::Eviction => {
            let options = eviction::Options { load: load(16, 2_000_000), ..eviction::Options::default() };
            let run = eviction::run(target, &options).await?;
            (eviction::report(&run, command)?, eviction::render(&run.figures))
        }
        Scenario::Scale => {
            let options = scale::Options { rate: args.rate, load: load(32, 10_000_000), ..scale::Options::default() };
            let run = scale::run(target, &options).await?;
            (scale::report(&run, command)?, scale::render(&run.figures))
        }
        Scenario::UserProfiles => {
            let defaults = args.profiles.options()?;
            let options = user_profiles::Options {
                duration: args.duration,
                max_ops: args.max_ops.unwrap_or(defaults.max_ops),
                concurrency: args.concurrency.map_or(defaults.concurrency, |c| c as usize),
                ..defaults
            };
            // Boxed: keeps the (large) future of this scenario off the stack of `scenario`.
            let run = Box::pin(user_profiles::run(target, &options)).await?;
            let figures = user_profiles_report::figures(&run)?;
            (user_profiles_report::report(&run, &figures, command)?, user_profiles_report::render(&figures))
        }
        Scenario::InvalidationScale => {
            let defaults = invalidation_scale::Options::default();
            let options = invalidation_scale::Options {
                processes: usize::from(args.processes),
                write_rate: args.write_rate,
                measured: args.duration,
                ..defaults
            };
            let exe = std::env::current_exe()?.to_string_lossy().to_string();
            let worker = vec![exe, "bench-worker".into()];
            let figures = invalidation_scale::run(target, &options, &worker).await?;
            (invalidation_scale::report(&figures, command)?, invalidation_scale::render(&figures))
        }
        Scenario::InvalidationWait => {
            let defaults = invalidation_wait::Options::default();
            let options = invalidation_wait::Options {
                rounds: args.rounds.unwrap_or(defaults.rounds),
                tasks: args.concurrency.map_or(defaults.tasks, |c| c as usize),
                ..defaults
            };
            let figures = invalidation_wait::run(target, &options).await?;
            let text = invalidation_wait::render(&figures);
            (plain("invalidation-wait", command, &figures, &text)?, text)
        }
        Scenario::Http => {
            let options = http::Options { load: load(32, 5_000_000), ..http::Options::default() };
            let run = http::run(target, &options).await?;
            (http::report(&run, command)?, http::render(&run.figures))
        }
        Scenario::L1Store => anyhow::bail!("l1-store needs no Redis and runs before any is started"),
    })
}

/// The report of a scenario that has figures and a text table but no charts of its own.
fn plain<T: serde::Serialize>(scenario: &str, command: &[String], figures: &T, text: &str) -> anyhow::Result<Report> {
    let mut report = Report::new(scenario, command);
    report.figures(figures)?.preformatted(text);
    Ok(report)
}

/// Arguments of `strata bench-worker`: one cache process of the invalidation-scale scenario,
/// started by it.
#[derive(clap::Args, Debug)]
pub(crate) struct WorkerArgs {
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    app: String,
    #[arg(long)]
    id: usize,
    #[arg(long)]
    processes: usize,
    #[arg(long)]
    keys: usize,
    #[arg(long)]
    read_rate: f64,
    #[arg(long)]
    without_invalidation: bool,
}

pub(crate) fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    runtime()?.block_on(invalidation_scale::worker(invalidation_scale::WorkerOptions {
        urls: args.urls,
        dir: args.dir,
        app: args.app,
        id: args.id,
        processes: args.processes,
        keys: args.keys,
        read_rate: args.read_rate,
        invalidation: !args.without_invalidation,
    }))
}
