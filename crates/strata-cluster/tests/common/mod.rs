//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// `true` if a process with this pid exists (zombies included).
pub fn pid_exists(pid: u32) -> bool {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    !matches!(kill(pid, None), Err(Errno::ESRCH))
}

/// `true` if the process exists and is not a zombie.
pub fn pid_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// PING over a fresh connection with short timeouts.
pub fn ping(node: &strata_cluster::RedisNode, timeout: Duration) -> Result<String, String> {
    let mut con = node.connection_with_timeout(timeout, Some(timeout)).map_err(|e| e.to_string())?;
    redis::cmd("PING").query::<String>(&mut con).map_err(|e| e.to_string())
}
