//! `strata audit`: access Redis denied (ACL LOG of every node) as audit records.

use std::io::Write as _;
use std::time::Duration;

use strata::AuditRecord;
use strata_ops::audit_log::Cursor;

use super::common::{OutputArgs, TargetArgs};

/// How often `--follow` polls the nodes.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Arguments of `strata audit`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each denial is one record in the audit log format of the library: time, principal (ACL user), \
                        action (command, or `auth` for a failed login), target (command, key or channel), \
                        result `denied`, reason (command/key/channel/auth), node, client, count (Redis groups \
                        repeats within 60 s). --json prints one JSON object per line."
)]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Only denials at or after this instant (RFC 3339, e.g. 2026-12-02T05:00:00Z).
    #[arg(long, value_parser = parse_since)]
    since: Option<u64>,
    /// Keep polling every second and print new denials as they appear (stop with Ctrl-C).
    #[arg(long)]
    follow: bool,
}

fn parse_since(s: &str) -> Result<u64, String> {
    strata::parse_rfc3339(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 time like 2026-12-02T05:00:00Z"))
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut deployment = args.target.deployment()?;
    let mut cursor = Cursor::new(args.since);
    let records = cursor.poll(&deployment)?;
    if !args.follow && !args.output.json && records.is_empty() {
        return print_lines("no denied access in the ACL LOG of any node\n");
    }
    print_lines(&render(&records, args.output.json))?;
    if !args.follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(FOLLOW_INTERVAL);
        let records = match cursor.poll(&deployment) {
            Ok(records) => records,
            Err(err) => {
                // A failover or a restarted node: find the deployment again and carry on.
                tracing::warn!(error = %err, "polling the ACL LOG failed; discovering the deployment again");
                if let Ok(d) = args.target.deployment() {
                    deployment = d;
                }
                continue;
            }
        };
        print_lines(&render(&records, args.output.json))?;
    }
}

fn render(records: &[AuditRecord], json: bool) -> String {
    let mut out = String::new();
    for r in records {
        if json {
            out.push_str(&r.to_line());
        } else {
            out.push_str(&format!(
                "{} {:<10} {:<8} {:<14} {:<24} {} x{}",
                r.time,
                r.principal,
                r.reason.as_deref().unwrap_or("-"),
                r.action,
                r.target,
                r.node.as_deref().unwrap_or("-"),
                r.count.unwrap_or(1)
            ));
        }
        out.push('\n');
    }
    out
}

/// Writes to stdout and flushes (a `--follow` reader sees lines at once); a closed pipe ends
/// the command quietly.
fn print_lines(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(e.into()),
    }
}
