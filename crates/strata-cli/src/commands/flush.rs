//! `strata flush --bump-version`: retire an app's whole key schema by bumping its version.

use indicatif::{ProgressBar, ProgressStyle};
use strata_ops::invalidate::{BumpReport, DEFAULT_BATCH, MAX_BATCH, bump_version};

use super::common::{AuditArgs, OutputArgs, Style, TargetArgs, paint};

/// Arguments of `strata flush`.
#[derive(clap::Args, Debug)]
#[command(after_help = "The schema version of APP lives in the Redis key strata:schema:APP (absent means 1). \
                        Apps read it at start (and may poll it) and build their keys as APP:v{N}:...; a rolling \
                        deploy serves the new version as instances restart. Old keys expire by their TTL, or \
                        at once with --purge-old. See docs/operations/inspect-invalidate.md.")]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// The app whose key schema to retire (the first segment of its keys).
    #[arg(long, value_name = "APP")]
    app: String,
    /// Raise the schema version of APP by one (the only flush mode).
    #[arg(long)]
    bump_version: bool,
    /// Also remove every key of the old version (APP:v{old}:*) now, instead of letting them expire.
    #[arg(long, requires = "bump_version")]
    purge_old: bool,
    /// Keys per UNLINK round trip when purging.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH as u64))]
    batch: u64,
    #[command(flatten)]
    audit: AuditArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if !args.bump_version {
        anyhow::bail!(
            "flush needs --bump-version, its only mode for now (it retires the key schema of APP); \
             to remove keys now, use `strata invalidate --namespace NS` or `--pattern GLOB`"
        );
    }
    strata_ops::invalidate::validate_app(&args.app)?;
    let report = args.audit.on_deployment(&args.target, "flush", &args.app, |deployment| {
        let purge = args.purge_old.then(|| usize::try_from(args.batch).unwrap_or(MAX_BATCH));
        let progress = if purge.is_some() {
            let bar = ProgressBar::no_length()
                .with_style(ProgressStyle::with_template("{spinner} {human_pos} old keys removed ({elapsed})")?);
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            bar
        } else {
            ProgressBar::hidden()
        };
        let report = bump_version(deployment, &args.app, purge, &progress);
        progress.finish_and_clear();
        Ok(report?)
    })?;
    args.output.print(&report, || human(&report))
}

fn human(report: &BumpReport) -> String {
    let purged = match report.purged {
        Some(n) => format!("{n} keys of v{} removed", report.old_version),
        None => format!("keys of v{} expire by their TTL (--purge-old removes them now)", report.old_version),
    };
    format!(
        "{}: schema version {} -> {} ({} = {}); {purged}\n\
         Apps pick it up when they read {} (at start or when polling).\n",
        report.app,
        report.old_version,
        paint(&report.new_version.to_string(), Style::Good),
        report.schema_key,
        report.new_version,
        report.schema_key,
    )
}
