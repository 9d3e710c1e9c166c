//! `strata down`: stop what `strata up` started, by pid, and nothing else.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use strata_cluster::Detached;

use super::common::{DEFAULT_DIR, OutputArgs};

/// Arguments of `strata down`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Directory given to `strata up`.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Also delete the directory: configs, logs and data.
    #[arg(long)]
    purge: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Serialize)]
struct DownReport {
    dir: PathBuf,
    stopped: Vec<u32>,
    purged: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if !super::up::is_cluster_dir(&args.dir) {
        anyhow::bail!("no cluster started by `strata up` in {}", args.dir.display());
    }
    let mut alive = Vec::new();
    // The pid file is gone once a cluster was stopped; its data may remain (for --purge).
    if let Ok(detached) = Detached::load(&args.dir) {
        alive =
            detached.pids().into_iter().filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()).collect();
        // Only processes that are still the redis-servers we started are signalled (checked by
        // strata-cluster against /proc/PID/cmdline).
        detached.stop()?;
    }
    if args.purge {
        std::fs::remove_dir_all(&args.dir).with_context(|| format!("removing {}", args.dir.display()))?;
    }
    let report = DownReport { dir: args.dir.clone(), stopped: alive, purged: args.purge };
    args.output.print(&report, || {
        let mut out = if report.stopped.is_empty() {
            format!("nothing was running in {}\n", report.dir.display())
        } else {
            format!("stopped {} nodes\n", report.stopped.len())
        };
        if report.purged {
            out += &format!("removed {}\n", report.dir.display());
        }
        out
    })
}
