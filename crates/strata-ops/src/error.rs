//! The crate's error type: one line a person can act on.

use std::fmt;

/// Result alias for this crate.
pub type Result<T, E = OpsError> = std::result::Result<T, E>;

/// What went wrong, coarsely. Use the `is_*` classifiers on [`OpsError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpsErrorKind {
    /// A node could not be reached (refused, timed out, DNS).
    Unreachable,
    /// Authentication failed (no password, wrong password, unknown user).
    Auth,
    /// A cluster command was pointed at a server that is not in cluster mode.
    NotCluster,
    /// Arguments or files given by the user are invalid.
    InvalidInput,
    /// Redis answered with an error.
    Redis,
    /// Local processes or files (starting nodes, reading and writing files).
    Local,
}

/// The error returned by every `strata-ops` operation.
#[derive(Debug)]
#[non_exhaustive]
pub struct OpsError {
    kind: OpsErrorKind,
    message: String,
}

impl OpsError {
    /// A new error of `kind`.
    pub fn new(kind: OpsErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// An invalid-input error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(OpsErrorKind::InvalidInput, message)
    }

    /// Classifies a Redis error met while talking to `addr`.
    pub fn redis(addr: &str, err: &redis::RedisError) -> Self {
        let text = err.to_string();
        let upper = text.to_uppercase();
        let kind = if err.is_io_error() || err.is_connection_refusal() || err.is_timeout() {
            OpsErrorKind::Unreachable
        } else if ["NOAUTH", "WRONGPASS", "AUTHENTICATION", "NOPERM"].iter().any(|c| upper.contains(c)) {
            OpsErrorKind::Auth
        } else {
            OpsErrorKind::Redis
        };
        let message = match kind {
            OpsErrorKind::Unreachable => format!("cannot reach Redis at {addr}: {text}"),
            OpsErrorKind::Auth => format!("authentication to {addr} failed ({text}); check --user / --password"),
            _ => format!("{addr}: {text}"),
        };
        Self { kind, message }
    }

    /// The coarse kind.
    pub fn kind(&self) -> OpsErrorKind {
        self.kind
    }
    /// A node could not be reached.
    pub fn is_unreachable(&self) -> bool {
        self.kind == OpsErrorKind::Unreachable
    }
    /// Authentication failed.
    pub fn is_auth(&self) -> bool {
        self.kind == OpsErrorKind::Auth
    }
    /// A cluster command met a non-cluster server.
    pub fn is_not_cluster(&self) -> bool {
        self.kind == OpsErrorKind::NotCluster
    }
    /// The user's input was invalid.
    pub fn is_invalid_input(&self) -> bool {
        self.kind == OpsErrorKind::InvalidInput
    }
}

impl fmt::Display for OpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line: multi-line causes (log tails) are folded.
        let mut first = true;
        for line in self.message.lines().filter(|l| !l.trim().is_empty()) {
            if !first {
                f.write_str(" | ")?;
            }
            f.write_str(line.trim())?;
            first = false;
        }
        Ok(())
    }
}

impl std::error::Error for OpsError {}

impl From<strata_cluster::ClusterError> for OpsError {
    fn from(err: strata_cluster::ClusterError) -> Self {
        let kind = if err.is_not_installed() || err.is_port_in_use() || err.is_process_failed() {
            OpsErrorKind::Local
        } else {
            OpsErrorKind::Redis
        };
        Self::new(kind, err.to_string())
    }
}
