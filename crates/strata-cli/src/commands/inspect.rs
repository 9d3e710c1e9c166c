//! `strata inspect`: the keyspace by namespace, the TTL histogram, big keys and node figures.

use std::fmt::Write as _;

use indicatif::{ProgressBar, ProgressStyle};
use strata_ops::inspect::{InspectOptions, InspectReport, inspect};

use super::common::{OutputArgs, Style, TargetArgs, paint};

/// Namespaces shown in the human table (the JSON has them all).
const HUMAN_NAMESPACES: usize = 50;

/// Arguments of `strata inspect`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Counts are exact without --sample (SCAN of every master, PTTL and MEMORY USAGE of every \
                        key, pipelined per batch). With --sample N, N keys per master are measured and every \
                        figure is extrapolated: the output says so (\"sampled\": true). Past 5 million keys, a key SCAN returns \
                        twice may be counted twice (\"exact\": false). Coordination keys ({KEY}:lease, {KEY}:version) are counted under \
                        \"NAMESPACE (coordination)\". Control characters in key names are shown escaped (\\n, \\x1b) in \
                        the table, as they are in the JSON.")]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Measure only N keys per master and extrapolate counts and memory (estimates).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    sample: Option<u64>,
    /// How many of the biggest keys to list.
    #[arg(long, value_name = "N", default_value_t = strata_ops::inspect::DEFAULT_BIG_KEYS)]
    big_keys: usize,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let deployment = args.target.deployment()?;
    let options = InspectOptions {
        sample: args.sample.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        big_keys: args.big_keys,
    };
    let progress = ProgressBar::new(0).with_style(ProgressStyle::with_template(
        "{spinner} inspecting {human_pos}/{human_len} keys [{bar:30}] {elapsed} eta {eta}",
    )?);
    progress.enable_steady_tick(std::time::Duration::from_millis(100));
    let report = inspect(&deployment, &options, &progress);
    progress.finish_and_clear();
    let report = report?;
    args.output.print(&report, || human(&report))
}

fn human(report: &InspectReport) -> String {
    let mut out = String::new();
    let estimate = if report.sampled {
        " (estimated from a sample)"
    } else if !report.exact {
        " (approximate: too many keys to count each once)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "Keyspace{estimate}: {} keys, {}, {} without TTL",
        report.total_keys,
        bytes(report.total_memory_bytes),
        report.no_ttl_keys
    );
    let mut rows: Vec<_> = report.namespaces.iter().collect();
    rows.sort_by(|a, b| b.1.memory_bytes.cmp(&a.1.memory_bytes).then_with(|| a.0.cmp(b.0)));
    let names: Vec<String> = rows.iter().take(HUMAN_NAMESPACES).map(|(n, _)| printable(n)).collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(9);
    let _ = writeln!(out, "\n{:<width$}  {:>10}  {:>10}  {:>10}", "NAMESPACE", "KEYS", "MEMORY", "NO TTL");
    for (name, (_, ns)) in names.iter().zip(rows.iter()) {
        let no_ttl = if ns.no_ttl_keys > 0 {
            paint(&format!("{:>10}", ns.no_ttl_keys), Style::Bad)
        } else {
            format!("{:>10}", 0)
        };
        let _ = writeln!(out, "{name:<width$}  {:>10}  {:>10}  {no_ttl}", ns.keys, bytes(ns.memory_bytes));
    }
    if rows.len() > HUMAN_NAMESPACES {
        let _ = writeln!(out, "… {} more namespaces (see --json)", rows.len() - HUMAN_NAMESPACES);
    }
    let _ = writeln!(out, "\nTTL histogram");
    let total = report.ttl_histogram.total().max(1);
    for (name, count) in report.ttl_histogram.buckets() {
        let bar = "#".repeat(usize::try_from(count * 40 / total).unwrap_or(40));
        let _ = writeln!(out, "  {name:>5}  {count:>10}  {bar}");
    }
    if !report.big_keys.is_empty() {
        let _ = writeln!(out, "\nBiggest keys");
        for key in &report.big_keys {
            let ttl = key.ttl_ms.map_or_else(|| "no TTL".to_owned(), |ms| format!("TTL {}s", ms / 1000));
            let _ = writeln!(out, "  {:>10}  {}  ({ttl}, {})", bytes(key.memory_bytes), printable(&key.key), key.node);
        }
    }
    let _ = writeln!(out, "\nNodes");
    for node in &report.nodes {
        if let Some(err) = &node.error {
            let _ = writeln!(out, "  {}  {:?}  {}", node.addr, node.role, paint(err, Style::Bad));
            continue;
        }
        let max = if node.maxmemory_bytes == 0 { "no limit".to_owned() } else { bytes(node.maxmemory_bytes) };
        let ratio = node.memory_ratio().map(|r| format!(" ({:.0}%)", r * 100.0)).unwrap_or_default();
        let ratio = if node.memory_ratio().is_some_and(|r| r > 0.8) { paint(&ratio, Style::Bad) } else { ratio };
        let hits = node.hit_ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
        let evicted = if node.evicted_keys > 0 {
            paint(&node.evicted_keys.to_string(), Style::Bad)
        } else {
            node.evicted_keys.to_string()
        };
        let _ = writeln!(
            out,
            "  {}  {:<7}  keys {:>9}  memory {} / {max}{ratio} {}  hit ratio {hits}  evicted {evicted}  expired {}",
            node.addr,
            format!("{:?}", node.role).to_lowercase(),
            node.keys,
            bytes(node.used_memory_bytes),
            node.maxmemory_policy,
            node.expired_keys
        );
    }
    out
}

/// `text` with control characters escaped (`\n`, `\t`, `\x1b`, `\u{9b}` ...) and backslashes
/// doubled, so a key name cannot move the cursor, recolour or rewrite the operator's terminal.
pub(crate) fn printable(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `1.5 MiB`-style sizes.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("shop:v1:user:42"), "shop:v1:user:42");
        assert_eq!(printable("a\x1b[2Jb\nc\td\\e\u{9b}"), "a\\x1b[2Jb\\nc\\td\\\\e\\x9b");
    }
}
