//! Picking free loopback ports.
//!
//! A free port is one below the kernel's ephemeral range that binds now (else,
//! where that range cannot be read, the port the kernel picks for
//! `127.0.0.1:0`). The listener is closed before Redis binds the port, so
//! the pick is inherently racy; callers retry on "Address already in use".
//! Ports handed out by this process are remembered so two nodes started in
//! parallel (for example by concurrent tests) never receive the same one.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::{Mutex, OnceLock};

use crate::error::{ClusterError, Result};

/// The only address nodes bind to.
pub(crate) const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Pick a currently free TCP port on 127.0.0.1 that this process has not
/// handed out before, outside the kernel's ephemeral range when it can: a port
/// from that range can be taken, while its node is down (a restart drill), as
/// the source port of any outgoing connection, and the node then cannot bind
/// it again (a drill's restart failed that way under the full suite).
pub fn free_port() -> Result<u16> {
    if let Some(port) = free_port_outside_ephemeral() {
        return Ok(port);
    }
    // Retry a few times in case the kernel repeats a port we already gave out.
    for _ in 0..64 {
        let listener = TcpListener::bind(SocketAddrV4::new(LOOPBACK, 0))
            .map_err(|e| ClusterError::io("binding 127.0.0.1:0 to pick a free port", e))?;
        let port = listener.local_addr().map_err(|e| ClusterError::io("reading the picked port", e))?.port();
        let mut seen = handed_out().lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(port) {
            return Ok(port);
        }
    }
    Err(ClusterError::new(crate::ErrorKind::Io, "could not find a free port on 127.0.0.1"))
}

/// A free port in [10000, the ephemeral range's start), tried from a random
/// point; `None` if the range cannot be read or holds no free port.
fn free_port_outside_ephemeral() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = text.split_whitespace().next()?.parse().ok()?;
    let (first, end) = (10_000u16, low);
    if end <= first + 1000 {
        return None;
    }
    let span = end - first;
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.subsec_nanos() as u16 % span;
    let mut seen = handed_out().lock().unwrap_or_else(|p| p.into_inner());
    for k in 0..span {
        let port = first + (start + k) % span;
        if !seen.contains(&port) && TcpListener::bind(SocketAddrV4::new(LOOPBACK, port)).is_ok() {
            seen.insert(port);
            return Some(port);
        }
    }
    None
}

/// `true` if `127.0.0.1:port` can be bound right now.
pub fn is_port_free(port: u16) -> bool {
    check_port_free(port).is_ok()
}

/// Fail with [`ClusterError::is_port_in_use`] if `127.0.0.1:port` is taken.
pub fn check_port_free(port: u16) -> Result<()> {
    if port == 0 {
        return Err(ClusterError::invalid("port 0 is not a valid fixed port"));
    }
    match TcpListener::bind(SocketAddrV4::new(LOOPBACK, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ClusterError::port_in_use(port)),
        Err(e) => Err(ClusterError::io(format!("binding 127.0.0.1:{port}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let a = free_port().expect("port");
        let b = free_port().expect("port");
        assert_ne!(a, b);
        assert!(is_port_free(a));
    }

    #[test]
    fn bound_port_is_reported_in_use() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let err = check_port_free(port).expect_err("in use");
        assert!(err.is_port_in_use());
    }
}
