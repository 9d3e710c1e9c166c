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
    let mut stopped = Vec::new();
    // The pid file is gone once a cluster was stopped; its data may remain (for --purge). A pid
    // file that exists but cannot be read is an error: never purge data under nodes we could
    // not stop.
    if args.dir.join(strata_cluster::PID_FILE).exists() {
        let detached = Detached::load(&args.dir).with_context(|| {
            format!("cannot read the pid file in {}; stop its nodes by hand before --purge", args.dir.display())
        })?;
        stopped = detached.running_pids();
        detached.stop()?;
    }
    if args.purge {
        purge(&args.dir)?;
    }
    let report = DownReport { dir: args.dir.clone(), stopped, purged: args.purge };
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

/// Removes what `strata up` created in `dir` (node directories, logs, pid and marker files), then
/// the directory itself if nothing else is left in it.
fn purge(dir: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let ours = name.starts_with("node-")
            || (name.starts_with("cluster-") && name.ends_with(".log"))
            || name == strata_cluster::PID_FILE
            || name == strata_cluster::SECURE_DIR
            || name == super::up::MARKER;
        if !ours {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }
            .with_context(|| format!("removing {}", path.display()))?;
    }
    if std::fs::remove_dir(dir).is_err() {
        eprintln!("kept {}: it holds files `strata up` did not create", dir.display());
    }
    Ok(())
}
