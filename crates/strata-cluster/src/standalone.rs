//! A single standalone Redis server.

use crate::config::Mode;
use crate::detached::{Detached, DetachedProcess};
use crate::error::Result;
use crate::launch::{NodeRequest, Workdir, launch_all};
use crate::node::RedisNode;
use crate::options::{CommonOptions, common_builder_methods};

/// A standalone `redis-server` process. Dropping it kills the process and
/// removes its temporary directory.
#[derive(Debug)]
pub struct RedisServer {
    // Field order matters: the node is dropped (killed) before the directory is removed.
    node: RedisNode,
    workdir: Workdir,
}

impl RedisServer {
    /// Start a server with defaults: temporary directory, free port, no persistence.
    pub fn start() -> Result<RedisServer> {
        ServerBuilder::default().start()
    }

    /// Configure a server before starting it.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The server process.
    pub fn node(&self) -> &RedisNode {
        &self.node
    }

    /// The server process (mutable, for kill / stop / restart).
    pub fn node_mut(&mut self) -> &mut RedisNode {
        &mut self.node
    }

    /// `redis://[user:password@]127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// A synchronous connection (see [`RedisNode::connection`]).
    pub fn connection(&self) -> Result<redis::Connection> {
        self.node.connection()
    }

    /// Leave the process running after this value is dropped; its directory is
    /// kept and a pid file is written into it.
    pub fn detach(mut self) -> Result<Detached> {
        let dir = self.workdir.keep();
        let url = if self.node.is_tls() { self.node.public_url() } else { self.node.url() };
        let port = self.node.port();
        let processes = self.node.release().map(|pid| DetachedProcess { pid, port, url }).into_iter().collect();
        Detached::record(dir, processes)
    }
}

/// Builder for [`RedisServer`].
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `.start()` is called"]
pub struct ServerBuilder {
    common: CommonOptions,
    port: Option<u16>,
}

impl ServerBuilder {
    common_builder_methods!();

    /// Listen on this port (fails with `is_port_in_use` if taken). Default: a free port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Start the server and wait until it answers PING. Data already in a
    /// caller-chosen directory (RDB / AOF) is loaded.
    pub fn start(self) -> Result<RedisServer> {
        let binary = self.common.server_binary()?;
        self.common.prepare()?;
        let workdir = Workdir::new(self.common.dir.as_deref(), "strata-redis-")?;
        let dir = workdir.path().to_path_buf();
        let launch =
            self.common.data_launch(&binary, dir, self.port.unwrap_or(0), Mode::Standalone { replica_of: None });
        let mut nodes = launch_all(vec![NodeRequest { launch, fixed: self.port.is_some() }])?;
        let node = nodes.pop().ok_or_else(|| crate::ClusterError::invalid("no node was started"))?;
        Ok(RedisServer { node, workdir })
    }
}
