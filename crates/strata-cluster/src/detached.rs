//! Processes left running after [`RedisCluster::detach`](crate::RedisCluster::detach)
//! (and the standalone / Sentinel equivalents), recorded in a pid file so a
//! later process (for example `strata down`) can stop them.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::{ClusterError, ErrorKind, Result};

/// Name of the pid file written into the setup's base directory.
pub const PID_FILE: &str = "strata-redis.pids";

/// One detached process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedProcess {
    /// Process id.
    pub pid: u32,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// Connection URL (may contain credentials).
    pub url: String,
}

/// Redis processes that keep running without an owner. Dropping this value
/// does nothing; call [`Detached::stop`] to shut them down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    dir: PathBuf,
    processes: Vec<DetachedProcess>,
}

/// The value returned by [`RedisCluster::detach`](crate::RedisCluster::detach).
pub type DetachedCluster = Detached;

impl Detached {
    /// Record `processes` and write the pid file into `dir`.
    pub(crate) fn record(dir: PathBuf, processes: Vec<DetachedProcess>) -> Result<Detached> {
        let d = Detached { dir, processes };
        let mut text = String::from("# pid port url (written by strata-cluster)\n");
        for p in &d.processes {
            text.push_str(&format!("{} {} {}\n", p.pid, p.port, p.url));
        }
        let path = d.pid_file();
        fs::write(&path, text).map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))?;
        Ok(d)
    }

    /// Read the pid file of a previously detached setup in `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Detached> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(PID_FILE);
        let text = fs::read_to_string(&path).map_err(|e| ClusterError::io(format!("reading {}", path.display()), e))?;
        let mut processes = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let parsed = (|| {
                Some(DetachedProcess {
                    pid: parts.next()?.parse().ok()?,
                    port: parts.next()?.parse().ok()?,
                    url: parts.next()?.to_string(),
                })
            })();
            processes.push(
                parsed
                    .ok_or_else(|| ClusterError::invalid(format!("malformed line in {}: {line:?}", path.display())))?,
            );
        }
        Ok(Detached { dir, processes })
    }

    /// The base directory (node directories and the pid file live here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join(PID_FILE)
    }

    /// The detached processes.
    pub fn processes(&self) -> &[DetachedProcess] {
        &self.processes
    }

    /// Process ids of the detached processes.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    /// Connection URLs of the detached processes.
    pub fn urls(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.url.clone()).collect()
    }

    /// The recorded processes that are still ours: alive, a `redis-server`, and working inside
    /// this setup's directory (a pid reused after a reboot by another program, or by another
    /// Redis, is not ours).
    pub fn running_pids(&self) -> Vec<u32> {
        self.pids().into_iter().filter(|&p| is_alive(p) && is_ours(p, &self.dir)).collect()
    }

    /// SIGTERM every process that is still ours (see [`running_pids`](Self::running_pids)),
    /// wait up to 10 s, then SIGKILL the rest, and remove the pid file. The directory is kept.
    pub fn stop(&self) -> Result<()> {
        let live = self.running_pids();
        for &pid in &live {
            signal_pid(pid, Signal::SIGTERM)?;
            signal_pid(pid, Signal::SIGCONT)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while live.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        for &pid in live.iter().filter(|&&p| is_alive(p) && is_ours(p, &self.dir)) {
            signal_pid(pid, Signal::SIGKILL)?;
        }
        match fs::remove_file(self.pid_file()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ClusterError::io("removing the pid file", e)),
        }
    }
}

/// Guard against pid reuse: a redis-server (by command line, which Redis rewrites to
/// `redis-server ADDR`) whose working directory is inside `dir` (nodes run in their node
/// directories).
fn is_ours(pid: u32, dir: &Path) -> bool {
    let redis = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("redis-server"))
        .unwrap_or(false);
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    redis && fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
}

/// Alive and not a zombie.
fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

fn signal_pid(pid: u32, sig: Signal) -> Result<()> {
    let raw = i32::try_from(pid).map_err(|_| ClusterError::invalid(format!("bad pid {pid}")))?;
    match signal::kill(Pid::from_raw(raw), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(ClusterError::new(ErrorKind::Io, format!("sending {sig} to pid {pid}: {e}"))),
    }
}
