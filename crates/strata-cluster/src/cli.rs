//! Running `redis-cli` (for `--cluster create`, `reshard`, ...).

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Credentials;
use crate::error::{ClusterError, ErrorKind, Result};
use crate::tls::TlsMaterial;

/// Run `redis-cli <args>` with output appended to `log`, killing it after
/// `timeout`. A password is passed through `REDISCLI_AUTH`, never on the
/// command line.
pub(crate) fn run(
    cli: &Path,
    args: &[String],
    auth: Option<&Credentials>,
    tls: Option<&TlsMaterial>,
    log: &Path,
    timeout: Duration,
) -> Result<()> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| ClusterError::io(format!("opening {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| ClusterError::io("duplicating the redis-cli log handle", e))?;
    let offset = out.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(cli);
    if let Some(c) = auth {
        if let Some(user) = &c.user {
            cmd.arg("--user").arg(user);
        }
        cmd.env("REDISCLI_AUTH", &c.password);
    }
    if let Some(tls) = tls {
        cmd.args(tls.cli_args());
    }
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    let shown = format!("redis-cli {}", args.join(" "));
    tracing::debug!("running {shown}");
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ClusterError::not_installed(format!("could not run `{}`: {e}", cli.display()))
        } else {
            ClusterError::io(format!("spawning {shown}"), e)
        }
    })?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ClusterError::timeout(format!(
                    "`{shown}` did not finish within {timeout:?}; output:\n{}",
                    output_since(log, offset)
                )));
            }
            Err(e) => return Err(ClusterError::io(format!("waiting for {shown}"), e)),
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(ClusterError::new(
            ErrorKind::CommandFailed,
            format!("`{shown}` failed ({status}); output:\n{}", output_since(log, offset)),
        ))
    }
}

fn output_since(log: &Path, offset: u64) -> String {
    let bytes = fs::read(log).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
