//! `strata status` and `strata check`.

use strata_ops::status::{self, Status};

use super::common::{OutputArgs, Style, TargetArgs, paint};

/// Arguments of `strata status`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `strata check`.
#[derive(clap::Args, Debug)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    output: OutputArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let deployment = args.target.deployment()?;
    let report = status::status(&deployment)?;
    args.output.print(&report, || render(&report))
}

pub(crate) fn run_check(args: CheckArgs) -> anyhow::Result<()> {
    let deployment = args.target.deployment()?;
    let problems = status::check(&deployment)?;
    let report = serde_json::json!({ "ok": problems.is_empty(), "problems": problems });
    args.output.print(&report, || {
        if problems.is_empty() {
            format!(
                "{}: all 16384 slots served, every node up and linked, every master replicated\n",
                paint("OK", Style::Good)
            )
        } else {
            problems.iter().map(|p| format!("{} {p}\n", paint("problem:", Style::Bad))).collect()
        }
    })?;
    if problems.is_empty() { Ok(()) } else { anyhow::bail!("{} problem(s) found", problems.len()) }
}

fn render(s: &Status) -> String {
    let state = match s.cluster_state.as_str() {
        "ok" => paint("ok", Style::Good),
        "standalone" => "standalone".to_owned(),
        other => paint(other, Style::Bad),
    };
    let mut out = format!("cluster state: {state}\n\n");
    out += &format!(
        "{:<22} {:<8} {:<22} {:<24} {:>9} {:>11} {:>7} {:<12}\n",
        "address", "role", "master of / replica of", "slots", "keys", "memory", "ops/s", "link"
    );
    for n in &s.nodes {
        let slots = n
            .slots
            .iter()
            .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
            .collect::<Vec<_>>()
            .join(",");
        let relation = n.master_addr.as_deref().map(|m| format!("-> {m}")).unwrap_or_default();
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let memory = n.used_memory_bytes.map_or_else(|| "-".to_owned(), human_bytes);
        let link = if n.reachable { n.link_state.clone() } else { paint("unreachable", Style::Bad) };
        out += &format!(
            "{:<22} {:<8} {:<22} {:<24} {:>9} {:>11} {:>7} {:<12}\n",
            n.addr,
            format!("{:?}", n.role).to_lowercase(),
            relation,
            slots,
            num(n.keys),
            memory,
            num(n.ops_per_sec),
            link
        );
    }
    out
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
