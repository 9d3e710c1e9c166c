//! Options shared by every builder (directory, auth, extra config, ...).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::acl::{AclRoles, Role};
use crate::binaries;
use crate::config::{AclFile, Credentials, Mode, NodeConfig};
use crate::error::Result;
use crate::node::{DEFAULT_START_TIMEOUT, NodeLaunch};
use crate::tls::TlsMaterial;

/// Options common to [`ServerBuilder`](crate::ServerBuilder),
/// [`ClusterBuilder`](crate::ClusterBuilder) and
/// [`SentinelBuilder`](crate::SentinelBuilder).
#[derive(Debug, Clone)]
pub(crate) struct CommonOptions {
    pub(crate) dir: Option<PathBuf>,
    pub(crate) auth: Option<Credentials>,
    pub(crate) extra_lines: Vec<String>,
    pub(crate) appendonly: bool,
    pub(crate) server_binary: Option<PathBuf>,
    pub(crate) cli_binary: Option<PathBuf>,
    pub(crate) own_process_group: bool,
    pub(crate) start_timeout: Duration,
    pub(crate) tls: Option<TlsMaterial>,
    /// The ACL file to write at start, and the roles it holds.
    pub(crate) acl: Option<(PathBuf, AclRoles)>,
}

impl Default for CommonOptions {
    fn default() -> Self {
        CommonOptions {
            dir: None,
            auth: None,
            extra_lines: Vec::new(),
            appendonly: false,
            server_binary: None,
            cli_binary: None,
            own_process_group: false,
            start_timeout: DEFAULT_START_TIMEOUT,
            tls: None,
            acl: None,
        }
    }
}

impl CommonOptions {
    /// Write the ACL file, if any (before any node loads it).
    pub(crate) fn prepare(&self) -> Result<()> {
        if let Some((path, roles)) = &self.acl {
            roles.write_acl_file(path)?;
        }
        Ok(())
    }

    pub(crate) fn server_binary(&self) -> Result<PathBuf> {
        match &self.server_binary {
            Some(p) => binaries::check_explicit(p, "redis-server"),
            None => binaries::redis_server(),
        }
    }

    pub(crate) fn cli_binary(&self) -> Result<PathBuf> {
        match &self.cli_binary {
            Some(p) => binaries::check_explicit(p, "redis-cli"),
            None => binaries::redis_cli(),
        }
    }

    /// A data-node launch description (port filled in later if 0).
    pub(crate) fn data_launch(&self, binary: &Path, dir: PathBuf, port: u16, mode: Mode) -> NodeLaunch {
        NodeLaunch {
            binary: binary.to_path_buf(),
            dir,
            config: NodeConfig {
                port,
                mode,
                auth: self.auth.clone(),
                appendonly: self.appendonly,
                extra_lines: self.extra_lines.clone(),
                tls: self.tls.clone(),
                acl: self.acl.as_ref().map(|(path, roles)| AclFile {
                    path: path.clone(),
                    replication: roles.credentials(Role::Replication),
                }),
            },
            own_process_group: self.own_process_group,
            start_timeout: self.start_timeout,
        }
    }
}

/// Generates the documented setters for [`CommonOptions`] on a builder with
/// a `common: CommonOptions` field.
macro_rules! common_builder_methods {
    () => {
        /// Put the node directories under `path` (created if missing, never
        /// removed). Default: a temporary directory removed on drop.
        pub fn dir(mut self, path: impl Into<std::path::PathBuf>) -> Self {
            self.common.dir = Some(path.into());
            self
        }

        /// Require this password for the `default` user (`requirepass`, and
        /// `masterauth` for replication).
        pub fn password(mut self, password: impl Into<String>) -> Self {
            self.common.auth = Some($crate::config::Credentials { user: None, password: password.into() });
            self
        }

        /// Create an ACL user with full rights, disable the `default` user,
        /// and use these credentials everywhere (URLs, replication, redis-cli).
        pub fn acl_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
            self.common.auth = Some($crate::config::Credentials { user: Some(user.into()), password: password.into() });
            self
        }

        /// Serve TLS only (`port 0`, `tls-port`, `tls-replication yes`, `tls-cluster yes`):
        /// this crate's probes, `redis-cli` and [`url`](crate::RedisNode::url) (`rediss://`)
        /// follow. Not supported for Sentinel setups.
        pub fn tls(mut self, tls: $crate::TlsMaterial) -> Self {
            self.common.tls = Some(tls);
            self
        }

        /// Load users from an ACL file written to `path` at start (the roles of
        /// [`AclRoles`](crate::AclRoles), `default` off). This crate's own connections and
        /// `redis-cli` use `admin`; replicas use `replication`. Replaces
        /// [`password`](Self::password) / [`acl_user`](Self::acl_user).
        pub fn acl_file(mut self, path: impl Into<std::path::PathBuf>, roles: &$crate::AclRoles) -> Self {
            self.common.auth = Some(roles.credentials($crate::Role::Admin));
            self.common.acl = Some((path.into(), roles.clone()));
            self
        }

        /// Append a raw `key value` line to every data node's `redis.conf`
        /// (repeatable; later lines override earlier settings).
        pub fn config_line(mut self, line: impl Into<String>) -> Self {
            self.common.extra_lines.push(line.into());
            self
        }

        /// Turn on AOF persistence (`appendonly yes`, `appendfsync everysec`).
        /// Default: no persistence at all.
        pub fn appendonly(mut self, on: bool) -> Self {
            self.common.appendonly = on;
            self
        }

        /// Use this `redis-server` instead of `$STRATA_REDIS_SERVER` / `PATH`.
        pub fn server_binary(mut self, path: impl Into<std::path::PathBuf>) -> Self {
            self.common.server_binary = Some(path.into());
            self
        }

        /// Use this `redis-cli` instead of `$STRATA_REDIS_CLI` / `PATH`.
        pub fn cli_binary(mut self, path: impl Into<std::path::PathBuf>) -> Self {
            self.common.cli_binary = Some(path.into());
            self
        }

        /// Start each process in its own process group so a Ctrl-C sent to
        /// the parent's terminal does not reach it (useful before `detach`).
        /// Default: `false` (Ctrl-C on a test run also stops its nodes).
        pub fn own_process_group(mut self, on: bool) -> Self {
            self.common.own_process_group = on;
            self
        }

        /// How long each process gets to answer PING after spawning (default 10 s).
        pub fn start_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.common.start_timeout = timeout;
            self
        }
    };
}

pub(crate) use common_builder_methods;
