//! `strata invalidate`: remove every key of a namespace or matching a pattern, on every master.

use indicatif::{ProgressBar, ProgressStyle};
use strata_ops::invalidate::{DEFAULT_BATCH, InvalidateOptions, InvalidateReport, MAX_BATCH, Selector, invalidate};
use strata_ops::stamp::{StampReport, StampTarget, invalidate_stamp};

use super::common::{AuditArgs, OutputArgs, Style, TargetArgs, paint};

/// Arguments of `strata invalidate`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("selector").required(true).args(["namespace", "pattern", "tag"])))]
#[command(after_help = "--namespace shop:v1:user removes exactly the keys `strata inspect` lists under that \
                        namespace (shop:v1:user:*, not shop:v1:users:*). --pattern takes a Redis glob as is \
                        (escape * ? [ ] \\ yourself). Each removed key's Strata coordination keys ({KEY}:lease, {KEY}:version) go \
                        with it, so a load or versioned write in flight cannot store a value read before the invalidation. Try --dry-run first. \
                        --stamp (with --namespace) and --tag invalidate in O(1) instead: one command raises \
                        the stamp key ({NS}:stamp, {APP:tag:NAME}:stamp); Strata caches treat older values as \
                        misses and the keys expire by their TTL.")]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// A namespace: app:vN:entity (e.g. shop:v1:user) or a first key segment (e.g. session).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// A Redis glob pattern (SCAN MATCH syntax), used as given.
    #[arg(long, value_name = "GLOB")]
    pattern: Option<String>,
    /// A Strata tag, APP:NAME (e.g. shop:tenant-7): raise its stamp (O(1), like --stamp).
    #[arg(long, value_name = "APP:NAME", conflicts_with_all = ["dry_run", "batch"])]
    tag: Option<String>,
    /// With --namespace: raise the namespace's stamp (one command, O(1)) instead of scanning
    /// and deleting; only Strata readers honour it.
    #[arg(long, requires = "namespace", conflicts_with_all = ["dry_run", "batch"])]
    stamp: bool,
    /// Count the matching keys; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keys per UNLINK round trip.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH as u64))]
    batch: u64,
    #[command(flatten)]
    audit: AuditArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.stamp && args.namespace.is_none() {
        anyhow::bail!("--stamp raises a namespace's stamp: give --namespace (or --tag for a tag)");
    }
    let target = match (&args.tag, &args.namespace) {
        (Some(tag), _) => Some(StampTarget::Tag(tag.clone())),
        (None, Some(ns)) if args.stamp => Some(StampTarget::Namespace(ns.clone())),
        _ => None,
    };
    if let Some(target) = target {
        // Bad input is reported before connecting to anything.
        target.stamp_key()?;
        let (action, object) = match &target {
            StampTarget::Tag(tag) => ("invalidate_tag", tag.as_str()),
            StampTarget::Namespace(ns) => ("invalidate_namespace_stamp", ns.as_str()),
        };
        let report = args.audit.on_deployment(&args.target, action, object, |d| Ok(invalidate_stamp(d, &target)?))?;
        return args.output.print(&report, || stamped(&report));
    }
    let (action, object) = match (&args.namespace, &args.pattern) {
        (Some(ns), _) => ("invalidate_namespace", ns.clone()),
        (None, Some(p)) => ("invalidate_pattern", p.clone()),
        (None, None) => ("invalidate", String::new()),
    };
    let selector = match (args.namespace, args.pattern) {
        (Some(ns), _) => Selector::Namespace(ns),
        (None, Some(p)) => Selector::Pattern(p),
        (None, None) => anyhow::bail!("give --namespace or --pattern"),
    };
    let options =
        InvalidateOptions { selector, dry_run: args.dry_run, batch: usize::try_from(args.batch).unwrap_or(MAX_BATCH) };
    // Bad input is reported before connecting to anything.
    options.check()?;
    // A dry run changes nothing: it is not an action to record.
    let audit = if args.dry_run { AuditArgs::default() } else { args.audit.clone() };
    let report = audit.on_deployment(&args.target, action, &object, |deployment| {
        let verb = if args.dry_run { "matched" } else { "removed" };
        let progress = ProgressBar::no_length()
            .with_style(ProgressStyle::with_template(&format!("{{spinner}} {{human_pos}} keys {verb} ({{elapsed}})"))?);
        progress.enable_steady_tick(std::time::Duration::from_millis(100));
        let report = invalidate(deployment, &options, &progress);
        progress.finish_and_clear();
        Ok(report?)
    })?;
    args.output.print(&report, || human(&report))
}

fn stamped(report: &StampReport) -> String {
    format!(
        "{} raised to {} on {}: Strata caches no longer serve older values\n",
        report.stamp_key, report.generation, report.node
    )
}

fn human(report: &InvalidateReport) -> String {
    let what = match &report.namespace {
        Some(ns) => format!("namespace {ns}"),
        None => format!("pattern {}", report.pattern),
    };
    if report.dry_run {
        format!(
            "{} keys match {what} on {} master(s) ({})\n",
            report.matched,
            report.masters,
            paint("dry run: nothing removed", Style::Good)
        )
    } else {
        format!(
            "{} keys removed ({} matched) for {what} on {} master(s)\n",
            report.removed, report.matched, report.masters
        )
    }
}
