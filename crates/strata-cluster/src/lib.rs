//! Real, local Redis processes on free loopback ports: a standalone server,
//! an N-master / R-replica **Redis Cluster**, or a **Sentinel** setup.
//!
//! `strata-cluster` is used by the integration tests of the `strata` library
//! and by the operator CLI (`strata up`). It spawns `redis-server` itself
//! (found on `PATH`, or via `STRATA_REDIS_SERVER` / `STRATA_REDIS_CLI`), gives
//! every node its own directory with a commented, generated `redis.conf`
//! and log file, waits until each node answers PING, and creates clusters
//! with `redis-cli --cluster create` rather than re-implementing it.
//!
//! * [`RedisServer`]: one standalone server ([`ServerBuilder`] for port,
//!   password, AOF, extra config lines).
//! * [`RedisCluster`]: a Redis Cluster ([`ClusterBuilder`]), with live
//!   topology queries ([`RedisCluster::master_indices`],
//!   [`RedisCluster::node_for_slot`]) and [`RedisCluster::wait_healthy`].
//! * [`SentinelSetup`]: a master, replicas and Sentinels ([`SentinelBuilder`]).
//! * [`RedisNode`]: one process, with fault injection: [`RedisNode::kill`]
//!   (SIGKILL), [`RedisNode::stop`] (SIGTERM), [`RedisNode::pause`] /
//!   [`RedisNode::resume`] (SIGSTOP / SIGCONT), [`RedisNode::restart`] on the
//!   same port.
//!
//! Everything is synchronous (std processes and the redis crate's blocking
//! client). Nodes bind only to 127.0.0.1. By default nothing is persisted
//! and the directories are temporary.
//!
//! **No orphans:** dropping a setup (also while a test panics) SIGKILLs and
//! reaps every process it still owns, then removes its temporary directory.
//! `detach()` hands the processes over instead (pid file in the directory,
//! see [`Detached`]). A test process killed with SIGKILL cannot clean up.
//!
//! A test that cannot run because something is not installed calls [`skip_test`]: under CI
//! (`CI=true`, set by `.ci/run`) that fails the test with the install command, elsewhere it
//! skips with the reason printed and counted in `./run test`'s summary.
//!
//! Errors are one type, [`ClusterError`], with checks such as
//! [`ClusterError::is_not_installed`] (the message tells how to install
//! Redis: `apt-get install -y redis-server redis-tools`),
//! [`ClusterError::is_port_in_use`], [`ClusterError::is_timeout`] and
//! [`ClusterError::is_process_failed`] (the message carries the log tail).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use strata_cluster::{RedisCluster, RedisServer};
//!
//! # fn main() -> strata_cluster::Result<()> {
//! // A standalone server on a free port, in a temporary directory.
//! let server = RedisServer::start()?;
//! let mut con = server.connection()?;
//! let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).expect("SET");
//!
//! // 3 masters with 1 replica each, fast failover.
//! let mut cluster = RedisCluster::builder()
//!     .masters(3)
//!     .replicas(1)
//!     .node_timeout_ms(1000)
//!     .start()?;
//! let seeds = cluster.seed_urls(); // hand these to a cluster client
//! # let _ = seeds;
//!
//! // Kill the master serving slot 0 and wait for its replica to take over.
//! let master = cluster.node_for_slot(0)?;
//! cluster.node_mut(master).kill()?;
//! cluster.wait_healthy(Duration::from_secs(30))?;
//! assert_ne!(cluster.node_for_slot(0)?, master);
//! # Ok(())
//! # }
//! ```

// The crate README's example is compiled with the doctests (crates.io shows the README).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod acl;
mod binaries;
mod cli;
mod cluster;
mod config;
mod detached;
mod error;
mod launch;
mod node;
mod options;
mod ports;
mod probe;
mod secure;
mod sentinel;
mod skip;
mod standalone;
mod tls;

pub use acl::{AclRoles, DEFAULT_KEY_PREFIX, Role, random_secret};
pub use binaries::{REDIS_CLI_ENV, REDIS_SERVER_ENV, RedisBinaries, redis_available, redis_cli, redis_server};
pub use cluster::{ClusterBuilder, DEFAULT_HEALTHY_TIMEOUT, DEFAULT_NODE_TIMEOUT_MS, RedisCluster};
pub use config::{CLIENT_OUTPUT_BUFFER_COMMENT, CLIENT_OUTPUT_BUFFER_LIMIT, Credentials, quote as quote_config_value};
pub use detached::{Detached, DetachedCluster, DetachedProcess, PID_FILE};
pub use error::{ClusterError, ErrorKind, INSTALL_HINT, Result};
pub use node::{DEFAULT_START_TIMEOUT, NodeKind, RedisNode, STOP_GRACE};
pub use ports::{check_port_free, free_port, is_port_free};
pub use sentinel::{DEFAULT_MASTER_NAME, SentinelBuilder, SentinelSetup};
pub use skip::{SKIP_LOG_ENV, skip_test};
/// Number of hash slots in a Redis Cluster.
pub const SLOT_COUNT: u16 = 16384;
pub use secure::{ACL_FILE, SECURE_DIR, SecureFiles};
pub use standalone::{RedisServer, ServerBuilder};
pub use tls::{
    CA_CERT_FILE, CA_KEY_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE, TlsAuthClients,
    TlsMaterial, TlsPems, create_private_dir, write_private,
};
