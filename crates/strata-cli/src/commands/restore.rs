//! `strata restore`: replays a backup's keys, values and TTLs into a running deployment.

use std::path::PathBuf;

use strata_ops::backup;
use strata_ops::restore::{self, RestoreOptions, RestoreReport};

use super::common::{AuditArgs, OutputArgs, Style, TargetArgs, paint};

/// Arguments of `strata restore`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Every file's SHA-256 is checked before anything is written. Each RDB file is loaded \
by a temporary local redis-server, and its keys are copied with DUMP / RESTORE (TTLs included), so the \
target may have any slot layout, or be a standalone server. Keys whose TTL ran out since the backup are \
skipped. Without --replace, keys that already exist are left alone and counted as skipped_existing.")]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Backup directory written by `strata backup` (holds manifest.json).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Overwrite keys that already exist in the target.
    #[arg(long)]
    replace: bool,
    /// Keys per pipelined batch.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    audit: AuditArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    // A directory without a valid manifest fails before the target is contacted; the checksums
    // are verified by `restore` itself, before anything is written.
    backup::read_manifest(&args.from)?;
    let report = args.audit.on_deployment(&args.target, "restore", &args.from.display().to_string(), |deployment| {
        let options = RestoreOptions { from: args.from.clone(), replace: args.replace, batch: args.batch as usize };
        let bar = super::backup::progress_bar("keys", "connecting");
        let result = restore::restore(deployment, &options, &bar);
        bar.finish_and_clear();
        Ok(result?)
    })?;
    args.output.print(&report, || render(&report))
}

fn render(r: &RestoreReport) -> String {
    let mut text =
        format!("{} restored {} key(s) from {} file(s)\n", paint("OK", Style::Good), r.keys_restored, r.files);
    if r.skipped_existing > 0 {
        text += &format!("{} key(s) already existed and were kept (use --replace to overwrite)\n", r.skipped_existing);
    }
    if r.skipped_expired > 0 {
        text += &format!("{} key(s) had expired and were skipped\n", r.skipped_expired);
    }
    text
}
