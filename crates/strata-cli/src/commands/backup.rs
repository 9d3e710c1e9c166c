//! `strata backup`: an RDB snapshot of every master, copied into a directory with a manifest.

use std::path::PathBuf;
use std::time::Duration;

use strata_ops::backup::{self, BackupOptions, Manifest};

use super::common::{AuditArgs, OutputArgs, Style, TargetArgs, paint};

/// Arguments of `strata backup`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Each master streams a fresh RDB snapshot (as `redis-cli --rdb` does), so remote \
nodes work too. DIR receives one .rdb file per master and manifest.json (node, slots, keys, size, SHA-256, \
Redis version, time), written last: a directory with a manifest holds a complete backup. A new DIR is \
created 0700 and every file 0600 (a backup holds every cached value).")]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Directory receiving the RDB files and manifest.json (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Overwrite a backup already in DIR.
    #[arg(long)]
    force: bool,
    /// Masters snapshotted at the same time.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    parallel: u16,
    /// Deadline of one master's snapshot, in seconds: past it `redis-cli --rdb` is killed and
    /// the backup fails (a paused or overloaded master must not hang it).
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    audit: AuditArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let manifest = args.audit.on_deployment(&args.target, "backup", &args.out.display().to_string(), |deployment| {
        snapshot(&args, deployment)
    })?;
    args.output.print(&manifest, || render(&manifest, &args.out))
}

fn snapshot(args: &Args, deployment: &strata_ops::Deployment) -> anyhow::Result<Manifest> {
    let options = BackupOptions {
        out: args.out.clone(),
        force: args.force,
        parallelism: usize::from(args.parallel),
        timeout: Duration::from_secs(args.timeout_secs),
    };
    let bar = progress_bar("snapshots", "requesting snapshots");
    let result = backup::backup(deployment, &options, &bar);
    bar.finish_and_clear();
    Ok(result?)
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub(crate) fn progress_bar(unit: &str, message: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0).with_message(message);
    let template = format!("{{spinner}} {{msg:<36}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}})");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn render(m: &Manifest, out: &std::path::Path) -> String {
    let mut text =
        format!("{} backup of {} master(s) in {}\n\n", paint("OK", Style::Good), m.files.len(), out.display());
    text += &format!("{:<22} {:<26} {:>9} {:>12}  {}\n", "node", "file", "keys", "bytes", "slots");
    for f in &m.files {
        let slots = if f.slots.is_empty() {
            "-".to_owned()
        } else {
            f.slots
                .iter()
                .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                .collect::<Vec<_>>()
                .join(",")
        };
        text += &format!("{:<22} {:<26} {:>9} {:>12}  {slots}\n", f.node_addr, f.file, f.keys, f.size_bytes);
    }
    let keys: u64 = m.files.iter().map(|f| f.keys).sum();
    text +=
        &format!("\n{keys} keys, taken at {}; restore with `strata restore --from {}`\n", m.created_at, out.display());
    text
}
