//! One `redis-server` process spawned by this crate.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::config::{BIND_ADDR, Credentials, NodeConfig};
use crate::error::{ClusterError, ErrorKind, Result};
use crate::probe::{self, ProbeTls};

/// Default time a node gets to answer PING after being spawned.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RedisNode::stop`] waits after SIGTERM before sending SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

const LOG_FILE: &str = "redis.log";
const STDIO_FILE: &str = "stdio.log";
const ADDR_IN_USE: &str = "Address already in use";
const LOG_TAIL_LINES: usize = 20;

/// Whether a node is a data node or a Sentinel.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A `redis-server` data node (standalone, replica or cluster node).
    Server,
    /// A `redis-server --sentinel` process.
    Sentinel,
}

/// Everything needed to spawn a node.
#[derive(Debug, Clone)]
pub(crate) struct NodeLaunch {
    pub(crate) binary: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) config: NodeConfig,
    pub(crate) own_process_group: bool,
    pub(crate) start_timeout: Duration,
}

/// Why a freshly spawned node did not become ready.
#[derive(Debug)]
pub(crate) enum StartFailure {
    /// The process exited because its port (or bus port) was taken.
    AddrInUse(ClusterError),
    /// Any other failure.
    Other(ClusterError),
}

impl StartFailure {
    pub(crate) fn into_error(self) -> ClusterError {
        match self {
            StartFailure::AddrInUse(e) | StartFailure::Other(e) => e,
        }
    }
}

/// One `redis-server` process that this crate spawned.
///
/// Dropping a `RedisNode` kills (SIGKILL) and reaps the process if it is
/// still owned. The node's directory is not removed by the node itself; the
/// owning [`RedisServer`](crate::RedisServer) / [`RedisCluster`](crate::RedisCluster) /
/// [`SentinelSetup`](crate::SentinelSetup) removes its temporary directory.
#[derive(Debug)]
pub struct RedisNode {
    kind: NodeKind,
    binary: PathBuf,
    dir: PathBuf,
    conf_path: PathBuf,
    port: u16,
    bus_port: Option<u16>,
    auth: Option<Credentials>,
    tls: Option<ProbeTls>,
    own_process_group: bool,
    start_timeout: Duration,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
    /// Length of the log file when the current process was spawned, so an
    /// old "Address already in use" line is not mistaken for a new one.
    log_offset: u64,
}

impl RedisNode {
    /// Write the config file and spawn the process (does not wait for readiness).
    pub(crate) fn spawn(launch: NodeLaunch) -> Result<RedisNode> {
        fs::create_dir_all(&launch.dir)
            .map_err(|e| ClusterError::io(format!("creating {}", launch.dir.display()), e))?;
        let conf_path = launch.dir.join(launch.config.file_name());
        fs::write(&conf_path, launch.config.render(&launch.dir))
            .map_err(|e| ClusterError::io(format!("writing {}", conf_path.display()), e))?;
        // The file may hold a password: owner-only (Redis / Sentinel rewrite it in place).
        fs::set_permissions(&conf_path, fs::Permissions::from_mode(0o600))
            .map_err(|e| ClusterError::io(format!("restricting {}", conf_path.display()), e))?;
        let mut node = RedisNode {
            kind: if launch.config.is_sentinel() { NodeKind::Sentinel } else { NodeKind::Server },
            binary: launch.binary,
            dir: launch.dir,
            conf_path,
            port: launch.config.port,
            bus_port: launch.config.bus_port(),
            auth: if launch.config.is_sentinel() { None } else { launch.config.auth.clone() },
            tls: match &launch.config.tls {
                Some(t) if !launch.config.is_sentinel() => Some(ProbeTls(t.client_certificates()?)),
                _ => None,
            },
            own_process_group: launch.own_process_group,
            start_timeout: launch.start_timeout,
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
            log_offset: 0,
        };
        node.spawn_process()?;
        Ok(node)
    }

    fn spawn_process(&mut self) -> Result<()> {
        let log_path = self.log_path();
        self.log_offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let stdio_path = self.dir.join(STDIO_FILE);
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stdio_path)
            .map_err(|e| ClusterError::io(format!("opening {}", stdio_path.display()), e))?;
        let stderr = stdio.try_clone().map_err(|e| ClusterError::io("duplicating the stdio log handle", e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg(&self.conf_path).current_dir(&self.dir).stdin(Stdio::null()).stdout(stdio).stderr(stderr);
        if self.kind == NodeKind::Sentinel {
            cmd.arg("--sentinel");
        }
        if self.own_process_group {
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ClusterError::not_installed(format!("could not run `{}`: {e}", self.binary.display()))
            } else {
                ClusterError::io(format!("spawning `{}`", self.binary.display()), e)
            }
        })?;
        tracing::debug!(port = self.port, pid = child.id(), dir = %self.dir.display(), "spawned redis node");
        *self.child.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(child);
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Poll until the process answers PING (and is really *our* process),
    /// detecting an early exit.
    pub(crate) fn wait_ready(&mut self) -> std::result::Result<(), StartFailure> {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            let (pid, exited) = {
                let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
                let Some(child) = guard.as_mut() else {
                    return Err(StartFailure::Other(ClusterError::new(
                        ErrorKind::ProcessFailed,
                        format!("node {} is not running", self.addr()),
                    )));
                };
                let exited =
                    child.try_wait().map_err(|e| StartFailure::Other(ClusterError::io("waiting for redis", e)))?;
                if exited.is_some() {
                    *guard = None;
                }
                (child_id_or_zero(guard.as_ref()), exited)
            };
            if let Some(status) = exited {
                return Err(self.exit_failure(status));
            }
            if self.answers_as(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = self.recent_log();
                let _ = self.kill();
                return Err(StartFailure::Other(ClusterError::new(
                    ErrorKind::Timeout,
                    format!(
                        "redis node {} did not answer PING within {:?}; recent log:\n{}",
                        self.addr(),
                        self.start_timeout,
                        tail.trim_end()
                    ),
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn exit_failure(&self, status: ExitStatus) -> StartFailure {
        let tail = self.recent_log();
        let what = format!("redis node on port {} exited during start-up ({status})", self.port);
        let err = ClusterError::process_failed(what, &tail);
        if tail.contains(ADDR_IN_USE) { StartFailure::AddrInUse(err) } else { StartFailure::Other(err) }
    }

    /// `true` when the server on our port answers PING and reports our pid.
    fn answers_as(&self, pid: u32) -> bool {
        let Ok(mut con) = probe::connect(
            self.port,
            self.auth.as_ref(),
            self.tls.as_ref(),
            Duration::from_millis(250),
            Some(Duration::from_millis(1000)),
        ) else {
            return false;
        };
        let Ok(info) = probe::info(&mut con, "server") else {
            return false;
        };
        if info.get("process_id").and_then(|p| p.parse::<u32>().ok()) != Some(pid) {
            return false;
        }
        matches!(redis::cmd("PING").query::<String>(&mut con), Ok(ref s) if s == "PONG")
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster bus port, for Redis Cluster nodes.
    pub fn bus_port(&self) -> Option<u16> {
        self.bus_port
    }

    /// Whether this is a data node or a Sentinel.
    pub fn kind(&self) -> NodeKind {
        self.kind
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("{BIND_ADDR}:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT"` (`rediss://` with TLS), with `user:password@`
    /// (percent-encoded) when the node requires authentication.
    pub fn url(&self) -> String {
        probe::url(self.port, self.auth.as_ref(), self.tls.is_some())
    }

    /// `"redis[s]://127.0.0.1:PORT"` without credentials (safe to print or record).
    pub fn public_url(&self) -> String {
        probe::url(self.port, None, self.tls.is_some())
    }

    /// Whether the node serves TLS only.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The credentials clients must present, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.auth.as_ref()
    }

    /// This node's working directory (config file, log, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generated config file (`redis.conf` or `sentinel.conf`).
    pub fn config_path(&self) -> &Path {
        &self.conf_path
    }

    /// The node's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// The last `lines` lines of the node's log file (empty if there is none).
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log_path(), 0, lines)
    }

    /// The process id, or `None` when the process is not running (never
    /// started, killed, stopped, or exited on its own).
    pub fn pid(&self) -> Option<u32> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let running = match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        };
        if running {
            guard.as_ref().map(Child::id)
        } else {
            *guard = None;
            None
        }
    }

    /// `true` while the process is alive (a paused process counts as running).
    pub fn is_running(&mut self) -> bool {
        self.pid().is_some()
    }

    /// `true` between [`pause`](Self::pause) and [`resume`](Self::resume).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Kill the process with SIGKILL and reap it. Idempotent.
    pub fn kill(&mut self) -> Result<()> {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        self.paused.store(false, Ordering::SeqCst);
        let Some(mut child) = child else {
            return Ok(());
        };
        if matches!(child.try_wait(), Ok(None)) {
            send(child.id(), Signal::SIGKILL)?;
        }
        child.wait().map_err(|e| ClusterError::io(format!("reaping redis on port {}", self.port), e))?;
        Ok(())
    }

    /// Graceful shutdown: SIGTERM (and SIGCONT in case it is paused), wait up
    /// to 10 s, then SIGKILL. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let port = self.port;
        let deadline = Instant::now() + STOP_GRACE;
        {
            let guard = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
            let Some(child) = guard.as_mut() else {
                return Ok(());
            };
            if matches!(child.try_wait(), Ok(None)) {
                send(child.id(), Signal::SIGTERM)?;
                send(child.id(), Signal::SIGCONT)?;
            }
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => {
                        *guard = None;
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Ok(None) => {
                        tracing::warn!(port, "redis did not exit within {STOP_GRACE:?} of SIGTERM; killing");
                        break;
                    }
                    Err(e) => {
                        return Err(ClusterError::io(format!("waiting for redis on port {port}"), e));
                    }
                }
            }
        }
        self.paused.store(false, Ordering::SeqCst);
        self.kill()
    }

    /// Freeze the process with SIGSTOP (simulates a hung node). Its sockets
    /// stay open; clients time out instead of getting "connection refused".
    pub fn pause(&self) -> Result<()> {
        let pid = self.require_pid("pause")?;
        send(pid, Signal::SIGSTOP)?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Continue a paused process with SIGCONT.
    pub fn resume(&self) -> Result<()> {
        let pid = self.require_pid("resume")?;
        send(pid, Signal::SIGCONT)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn require_pid(&self, what: &str) -> Result<u32> {
        self.pid().ok_or_else(|| {
            ClusterError::new(
                ErrorKind::ProcessFailed,
                format!("cannot {what} redis on port {}: it is not running", self.port),
            )
        })
    }

    /// Start the process again on the same port(s), from the same directory
    /// and config file (a running process is stopped gracefully first), and
    /// wait until it answers PING.
    ///
    /// Fails with [`ClusterError::is_port_in_use`] if something else took the
    /// port in the meantime.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn_process()?;
        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(StartFailure::AddrInUse(_)) => Err(ClusterError::new(
                ErrorKind::PortInUse,
                format!(
                    "cannot restart redis on 127.0.0.1:{}: the port{} is in use (see {})",
                    self.port,
                    self.bus_port.map(|b| format!(" or bus port {b}")).unwrap_or_default(),
                    self.log_path().display()
                ),
            )),
            Err(StartFailure::Other(e)) => Err(e),
        }
    }

    /// A synchronous connection (2 s connect timeout, 10 s read/write timeout).
    pub fn connection(&self) -> Result<redis::Connection> {
        self.connection_with_timeout(Duration::from_secs(2), Some(Duration::from_secs(10)))
    }

    /// A synchronous connection with explicit connect and read/write timeouts
    /// (`None` = block forever).
    pub fn connection_with_timeout(&self, connect: Duration, io: Option<Duration>) -> Result<redis::Connection> {
        probe::connect(self.port, self.auth.as_ref(), self.tls.as_ref(), connect, io)
            .map_err(|e| ClusterError::redis(format!("connecting to {}", self.addr()), e))
    }

    /// A probe connection with short timeouts, or `None` if the node is not
    /// running, paused, or does not answer.
    pub(crate) fn probe(&self) -> Option<redis::Connection> {
        if self.is_paused() || self.pid().is_none() {
            return None;
        }
        probe::probe_connection(self.port, self.auth.as_ref(), self.tls.as_ref()).ok()
    }

    /// Give up ownership of the process without killing it; returns its pid.
    pub(crate) fn release(&mut self) -> Option<u32> {
        let pid = self.pid();
        // Dropping a `Child` neither kills nor waits for it.
        drop(self.child.get_mut().unwrap_or_else(|p| p.into_inner()).take());
        pid
    }

    /// The log lines written since the current process was spawned (plus
    /// its stdout/stderr, where fatal config errors go), labelled by file.
    fn recent_log(&self) -> String {
        let mut text = String::new();
        let log = tail_of(&self.log_path(), self.log_offset, LOG_TAIL_LINES);
        if !log.trim().is_empty() {
            text.push_str(&format!("--- {} ---\n{log}\n", self.log_path().display()));
        }
        let stdio_path = self.dir.join(STDIO_FILE);
        let stdio = tail_of(&stdio_path, 0, 10);
        if !stdio.trim().is_empty() {
            text.push_str(&format!("--- {} ---\n{stdio}\n", stdio_path.display()));
        }
        if text.is_empty() {
            text.push_str("(no log output)");
        }
        text
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(port = self.port, "failed to kill redis node on drop: {e}");
        }
    }
}

fn child_id_or_zero(child: Option<&Child>) -> u32 {
    child.map(Child::id).unwrap_or(0)
}

/// Send a signal to a pid we own (and have not reaped, so it cannot be reused).
fn send(pid: u32, sig: Signal) -> Result<()> {
    let raw = i32::try_from(pid).map_err(|_| ClusterError::invalid(format!("bad pid {pid}")))?;
    match signal::kill(Pid::from_raw(raw), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(ClusterError::new(ErrorKind::Io, format!("sending {sig} to pid {pid}: {e}"))),
    }
}

/// The last `lines` lines of `path` starting at byte `offset`.
fn tail_of(path: &Path, offset: u64, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // Read at most the last 64 KiB after the offset.
    let start = offset.max(len.saturating_sub(64 * 1024));
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
