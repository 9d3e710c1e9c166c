//! `strata drill failover|restart|outage|reshard`: a fault injected into a `strata up` cluster under a
//! cache-aside load (see `strata_bench::drill_faults` for what each figure means).

use std::path::PathBuf;
use std::time::Duration;

use strata_bench::drill_faults::{self, Report, Target};
use strata_bench::fault_inject::Fault;

use super::common::{DEFAULT_DIR, OutputArgs, Style, paint, parse_duration, runtime};

/// Arguments shared by the fault drills.
#[derive(clap::Args, Debug)]
pub(crate) struct FaultArgs {
    /// Directory of a cluster started by `strata up` (the drill stops and starts its nodes;
    /// default .strata/cluster when no --url).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// URL of any node of a cluster on this machine, where killing is enough (failover only:
    /// the killed master is not started again).
    #[arg(long, conflicts_with = "dir")]
    url: Option<String>,
    /// Length of the whole drill (load before, during and after the fault): 30s, 1m, 500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent callers, each with its own cache instance.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Distinct keys in the load.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    keys: u32,
    /// Upper bound on calls in total.
    #[arg(long, default_value_t = 1_000_000)]
    max_calls: usize,
    /// How long every node stays down (outage only).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    outage_for: Duration,
    /// The staleness bound of the stale-read check (the caches' heartbeat plus its timeout).
    #[arg(long, default_value = "700ms", value_parser = parse_duration)]
    bound: Duration,
    #[command(flatten)]
    output: OutputArgs,
}

/// Runs one fault drill and fails (exit status) when an acceptance condition does not hold.
pub(crate) fn run(fault: Fault, args: FaultArgs) -> anyhow::Result<()> {
    let options = drill_faults::Options {
        fault,
        duration: args.duration,
        workers: usize::from(args.workers),
        keys: args.keys as usize,
        max_calls: args.max_calls,
        outage_for: args.outage_for,
        progress: !args.output.json,
        bound: args.bound,
    };
    let target = match (args.url, args.dir) {
        (Some(url), _) => Target::Url(url),
        (None, dir) => Target::Dir(dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))),
    };
    let report = runtime()?.block_on(drill_faults::run(&target, &options))?;
    let problems = problems(&report);
    args.output.print(&report, || render(&report, &problems))?;
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

/// The conditions every fault drill must meet, plus the fault's own.
fn problems(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if r.caller_errors > 0 {
        out.push(format!("{} calls failed", r.caller_errors));
    }
    if r.fault == "failover" && r.l2_unavailable_s > r.node_timeout_s + 2.0 {
        out.push(format!(
            "L2 was unavailable for {:.2} s, more than cluster-node-timeout ({:.1} s) + 2 s",
            r.l2_unavailable_s, r.node_timeout_s
        ));
    }
    if r.stale_reads > 0 {
        out.push(format!(
            "{} reads were older than a write completed more than {} ms before",
            r.stale_reads, r.bound_ms
        ));
    }
    if r.keys_lost > 0 {
        out.push(format!("{} of {} keys written before the fault were lost", r.keys_lost, r.keys_checked));
    }
    if r.fault == "outage" && r.breaker_opens == 0 {
        out.push("no breaker opened during the outage".to_owned());
    }
    if !r.breakers_closed_at_end {
        out.push("a breaker was still open at the end".to_owned());
    }
    out
}

fn render(r: &Report, problems: &[String]) -> String {
    let verdict = if problems.is_empty() { paint("PASS", Style::Good) } else { paint("FAIL", Style::Bad) };
    let mut text = format!(
        "{verdict}: {} ({:.1} s to recover)\n  calls {}, caller errors {}, served by fallback {}\n  L2 unavailable {:.2} s (failing or skipped by the breaker {:.2} s), breaker opened {} time(s)\n",
        r.fault,
        r.fault_s,
        r.calls,
        r.caller_errors,
        r.fallback_calls,
        r.l2_unavailable_s,
        r.l2_degraded_s,
        r.breaker_opens
    );
    text.push_str(&format!(
        "  p50 / p99 ms: before {:.2} / {:.2}, during {:.2} / {:.2}, after {:.2} / {:.2}\n",
        r.p50_ms_before, r.p99_ms_before, r.p50_ms_during, r.p99_ms_during, r.p50_ms_after, r.p99_ms_after
    ));
    if r.calls_over_1s > 0 {
        text.push_str(&format!(
            "  {} call(s) over 1 s; the slowest {:.0} ms, started {:+.2} s from the fault{}\n",
            r.calls_over_1s,
            r.slowest_call_ms,
            r.slowest_call_start_s,
            if r.slowest_call_loaded { ", then ran its loader" } else { "" }
        ));
    }
    if r.stray_l2_failures > 0 {
        text.push_str(&format!(
            "  {} call(s) saw L2 fail more than 1 s after the window closed (isolated, not part of it)\n",
            r.stray_l2_failures
        ));
    }
    text.push_str(&format!(
        "  source writes {}, stale reads {} (bound {:.0} ms), max staleness {:.3} ms\n",
        r.writes, r.stale_reads, r.bound_ms, r.max_staleness_ms
    ));
    if r.keys_checked > 0 {
        text.push_str(&format!("  keys written before the fault: {} checked, {} lost\n", r.keys_checked, r.keys_lost));
    }
    for p in problems {
        text.push_str(&format!("  problem: {p}\n"));
    }
    text
}
