//! Spawning groups of nodes with port assignment and "port taken" retries,
//! and the working directory (temporary or caller-chosen) they live in.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Mode;
use crate::error::{ClusterError, ErrorKind, Result};
use crate::node::{NodeLaunch, RedisNode, StartFailure};
use crate::ports;

/// How many times a node with auto-picked ports is respawned on new ports
/// after losing a port race.
const PORT_RETRIES: usize = 5;

/// One node to launch. `fixed` means the ports in `launch.config` were
/// requested by the caller and must not be changed.
#[derive(Debug, Clone)]
pub(crate) struct NodeRequest {
    pub(crate) launch: NodeLaunch,
    pub(crate) fixed: bool,
}

impl NodeRequest {
    fn ports(&self) -> Vec<u16> {
        let mut p = vec![self.launch.config.port];
        p.extend(self.launch.config.bus_port());
        p
    }

    /// Replace the client (and bus) port with fresh free ports.
    fn assign_free_ports(&mut self) -> Result<()> {
        self.launch.config.port = ports::free_port()?;
        if let Mode::Cluster { bus_port, .. } = &mut self.launch.config.mode {
            *bus_port = ports::free_port()?;
        }
        Ok(())
    }
}

/// Spawn every requested node (in parallel), then wait until each answers
/// PING. Auto-port nodes that lose a port race are respawned on new ports;
/// fixed ports are checked up-front and reported with `is_port_in_use`.
/// On error every node started so far is killed (by drop).
pub(crate) fn launch_all(mut requests: Vec<NodeRequest>) -> Result<Vec<RedisNode>> {
    for req in requests.iter().filter(|r| r.fixed) {
        for port in req.ports() {
            ports::check_port_free(port)?;
        }
    }
    let mut nodes = Vec::with_capacity(requests.len());
    for req in &mut requests {
        if !req.fixed {
            req.assign_free_ports()?;
        }
        nodes.push(RedisNode::spawn(req.launch.clone())?);
    }
    for (node, req) in nodes.iter_mut().zip(requests.iter_mut()) {
        ready_or_respawn(node, req)?;
    }
    Ok(nodes)
}

/// Wait until `node` is ready; if it lost a port race and its ports were
/// auto-picked, respawn it on fresh ports (up to [`PORT_RETRIES`] times).
fn ready_or_respawn(node: &mut RedisNode, req: &mut NodeRequest) -> Result<()> {
    let mut attempt = 0;
    loop {
        match node.wait_ready() {
            Ok(()) => return Ok(()),
            Err(StartFailure::AddrInUse(_)) if req.fixed => {
                let ports: Vec<String> = req.ports().iter().map(u16::to_string).collect();
                return Err(ClusterError::new(
                    ErrorKind::PortInUse,
                    format!(
                        "requested port(s) {} on 127.0.0.1 are in use (see {})",
                        ports.join(", "),
                        node.log_path().display()
                    ),
                ));
            }
            Err(StartFailure::AddrInUse(e)) if attempt < PORT_RETRIES => {
                attempt += 1;
                tracing::debug!(attempt, "port race lost, retrying on new ports: {e}");
                req.assign_free_ports()?;
                *node = RedisNode::spawn(req.launch.clone())?;
            }
            Err(failure) => return Err(failure.into_error()),
        }
    }
}

/// The base directory of a setup: a temporary directory removed on drop,
/// or a caller-chosen directory that is left in place.
#[derive(Debug)]
pub(crate) struct Workdir {
    path: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl Workdir {
    pub(crate) fn new(dir: Option<&Path>, prefix: &str) -> Result<Workdir> {
        match dir {
            Some(d) => {
                fs::create_dir_all(d).map_err(|e| ClusterError::io(format!("creating {}", d.display()), e))?;
                let path = d.canonicalize().map_err(|e| ClusterError::io(format!("resolving {}", d.display()), e))?;
                Ok(Workdir { path, temp: None })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .map_err(|e| ClusterError::io("creating a temporary directory", e))?;
                Ok(Workdir { path: temp.path().to_path_buf(), temp: Some(temp) })
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Stop removing the directory on drop.
    pub(crate) fn keep(&mut self) -> PathBuf {
        if let Some(t) = self.temp.take() {
            let _ = t.keep();
        }
        self.path.clone()
    }
}

/// Refuse to reuse a directory that already holds a node's cluster state or
/// data, which would make the new node resume an old identity.
pub(crate) fn ensure_fresh_node_dir(dir: &Path) -> Result<()> {
    for stale in ["nodes.conf", "dump.rdb", "appendonlydir"] {
        if dir.join(stale).exists() {
            return Err(ClusterError::invalid(format!(
                "{} already contains `{stale}` from an earlier run; remove the directory or choose another one",
                dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use crate::node::DEFAULT_START_TIMEOUT;
    use std::net::TcpListener;

    fn request(dir: &Path, port: u16, fixed: bool) -> Option<NodeRequest> {
        let binary = crate::binaries::redis_server().ok()?;
        Some(NodeRequest {
            launch: NodeLaunch {
                binary,
                dir: dir.to_path_buf(),
                config: NodeConfig {
                    port,
                    mode: Mode::Standalone { replica_of: None },
                    auth: None,
                    appendonly: false,
                    extra_lines: Vec::new(),
                    tls: None,
                    acl: None,
                },
                own_process_group: false,
                start_timeout: DEFAULT_START_TIMEOUT,
            },
            fixed,
        })
    }

    /// Simulates losing the free-port race: the auto-picked port gets taken
    /// between the pick and redis binding it.
    #[test]
    fn lost_port_race_is_retried_on_new_ports() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let Some(mut req) = request(tmp.path(), port, false) else {
            crate::skip_test("redis-server not installed (apt-get install -y redis-server redis-tools)");
            return;
        };
        let mut node = RedisNode::spawn(req.launch.clone()).expect("spawn");
        ready_or_respawn(&mut node, &mut req).expect("respawned on a new port");
        assert_ne!(node.port(), port);
        assert!(node.log_tail(200).contains("Address already in use"));
    }

    #[test]
    fn taken_fixed_port_is_port_in_use() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let Some(mut req) = request(tmp.path(), port, true) else {
            crate::skip_test("redis-server not installed (apt-get install -y redis-server redis-tools)");
            return;
        };
        // Skip the up-front check to exercise the log-based detection.
        let mut node = RedisNode::spawn(req.launch.clone()).expect("spawn");
        let err = ready_or_respawn(&mut node, &mut req).expect_err("port is taken");
        assert!(err.is_port_in_use(), "{err}");
    }
}
