//! `strata demo`: the user-profiles workload (the seed's) over the example service's database,
//! with and without Strata and next to two peer caches, on a local cluster or the given one.
//! `./run demo` wraps it with `strata up` and the example service.

use std::path::PathBuf;
use std::time::Duration;

use strata_bench::report::DEFAULT_DIR;
use strata_bench::workload::{Layout, Target};
use strata_bench::{user_profiles, user_profiles_report};

use super::common::{OutputArgs, ProfilesArgs, parse_duration, runtime};

/// Arguments of `strata demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Redis URL(s) of a running deployment; without it a local 3+3 cluster is started and
    /// stopped afterwards.
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Measured time of the whole run, shared by the six variants (10 s each by default).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent workers per variant.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Directory of the JSON and HTML reports.
    #[arg(long, default_value = DEFAULT_DIR)]
    out: PathBuf,
    #[command(flatten)]
    profiles: ProfilesArgs,
    #[command(flatten)]
    output: OutputArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let command: Vec<String> = std::env::args().collect();
    runtime()?.block_on(async {
        let target = if args.urls.is_empty() {
            Target::start_local(Layout::Cluster)?
        } else {
            Target::external(args.urls.clone())?
        };
        let options = user_profiles::Options {
            duration: args.duration,
            concurrency: args.concurrency as usize,
            ..args.profiles.options()?
        };
        eprintln!(
            "redis: {}\nworkload: {} users, 80 % reads, Zipf(0.99), {} workers, {:?} warm-up per variant, {:?} measured over {} variants",
            target.urls().join(" "),
            options.users,
            options.concurrency,
            options.warmup,
            options.duration,
            user_profiles::Variant::ALL.len()
        );
        let run = Box::pin(user_profiles::run(&target, &options)).await?;
        let figures = user_profiles_report::figures(&run)?;
        let written = user_profiles_report::report(&run, &figures, &command)?.write(&args.out)?;
        let files = format!("report: {}\n        {}\n", written.html.display(), written.json.display());
        if args.output.json {
            eprint!("{files}");
        }
        args.output.print(&written.document, || format!("{}\n{files}", user_profiles_report::render(&figures)))
    })
}
