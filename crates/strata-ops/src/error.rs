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
        let kind = if err.is_io_error() || err.is_connection_refusal() || err.is_timeout() {
            OpsErrorKind::Unreachable
        } else if refuses_access(err) {
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

/// Whether Redis refused our credentials or the ACL user's rights: the handshake's
/// authentication failure, or a reply (of a command, or any reply of a pipeline) `NOPERM`,
/// `NOAUTH` or `WRONGPASS`. redis-rs has a [`redis::ServerErrorKind`] for `NOPERM` only; the
/// other two are extension errors, recognised by their exact code.
fn refuses_access(err: &redis::RedisError) -> bool {
    let refusal = |e: &redis::ServerError| {
        e.kind() == Some(redis::ServerErrorKind::NoPerm) || matches!(e.code(), "NOAUTH" | "WRONGPASS")
    };
    matches!(
        err.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) || err.clone().into_server_errors().is_some_and(|replies| replies.iter().any(|(_, e)| refusal(e)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The error redis-rs makes of the reply `-{line}`, parsed as it parses a server's.
    fn reply(line: &str) -> redis::RedisError {
        let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).expect("a RESP error reply");
        value.extract_error().expect_err("an error reply")
    }

    #[test]
    fn redis_errors_are_classified_by_kind_and_code() {
        for line in [
            "NOAUTH Authentication required.",
            "WRONGPASS invalid username-password pair or user is disabled.",
            "NOPERM User ops has no permissions to run the 'flushall' command",
        ] {
            assert!(OpsError::redis("n1:6379", &reply(line)).is_auth(), "{line}");
        }
        let handshake =
            redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "Password authentication failed"));
        assert!(OpsError::redis("n1:6379", &handshake).is_auth());
        for line in ["ERR unknown command 'NOAUTH'", "WRONGTYPE Operation against a key", "LOADING Redis is loading"] {
            let err = OpsError::redis("n1:6379", &reply(line));
            assert_eq!(err.kind(), OpsErrorKind::Redis, "{line}");
        }
        let refused = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(OpsError::redis("n1:6379", &refused).is_unreachable());
    }
}
