//! Running the system's tools (`ip`, `nft`, `nsenter`, ...) and stopping processes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, ErrorKind, Result};

/// Fails with the Debian package to install when `tool` is not on the PATH.
pub(crate) fn require(tool: &str) -> Result<()> {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).any(|d| d.join(tool).is_file())
    });
    if found {
        return Ok(());
    }
    let package = match tool {
        "ip" => "iproute2",
        "nft" => "nftables",
        "sshd" | "ssh-keygen" => "openssh-server",
        "nsenter" | "unshare" => "util-linux",
        other => other,
    };
    Err(Error::new(ErrorKind::MissingTool, format!("{tool} not found: apt-get install -y {package}")))
}

/// Runs `program args`; its stderr is the error when it fails.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    run_command(Command::new(program).args(args))
}

/// Runs `cmd` to completion; its stderr is the error when it fails.
pub(crate) fn run_command(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(ErrorKind::Command, format!("{}: {e}", describe(cmd))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Command,
            format!("{} failed ({}): {}", describe(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }
}

/// Runs `program args` with `input` on its stdin.
pub(crate) fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::new(ErrorKind::Command, format!("{}: {e}", describe(&cmd))))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| Error::new(ErrorKind::Command, format!("{}: {e}", describe(&cmd))))?;
    }
    let out =
        child.wait_with_output().map_err(|e| Error::new(ErrorKind::Command, format!("{}: {e}", describe(&cmd))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Command,
            format!("{} failed ({}): {}", describe(&cmd), out.status, String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }
}

/// The stdout of `program args`.
pub(crate) fn output(program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(ErrorKind::Command, format!("{}: {e}", describe(&cmd))))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Command,
            format!("{} failed ({}): {}", describe(&cmd), out.status, String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The processes in network namespace `netns`.
pub(crate) fn pids_in_netns(netns: &str) -> Vec<u32> {
    output("ip", &["netns", "pids", netns])
        .map(|out| out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether `pid` runs in the named network namespace `netns` (`/run/netns/NAME`).
pub(crate) fn in_netns(pid: u32, netns: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(theirs), Ok(named)) =
        (std::fs::metadata(format!("/proc/{pid}/ns/net")), std::fs::metadata(format!("/run/netns/{netns}")))
    else {
        return false;
    };
    theirs.dev() == named.dev() && theirs.ino() == named.ino()
}

/// Stops `pid` (TERM, then KILL after 3 s); whether it was running.
pub(crate) fn stop(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    let pid = Pid::from_raw(raw);
    if kill(pid, Signal::SIGTERM).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !alive(raw) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(pid, Signal::SIGKILL);
    true
}

/// Running (a zombie is not: its parent, if any, has yet to reap it).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}
