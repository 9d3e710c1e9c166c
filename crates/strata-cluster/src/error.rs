//! The crate's single error type.

use std::fmt;

/// Shorthand for `std::result::Result<T, ClusterError>`.
pub type Result<T> = std::result::Result<T, ClusterError>;

/// The shell command that installs the Redis binaries on Debian / Ubuntu.
pub const INSTALL_HINT: &str = "apt-get install -y redis-server redis-tools";

/// What went wrong, as a coarse category. Use the `is_*` helpers on
/// [`ClusterError`] for the common checks.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `redis-server` or `redis-cli` could not be found.
    NotInstalled,
    /// A port that was explicitly requested is already taken.
    PortInUse,
    /// A node or the cluster did not become ready in time.
    Timeout,
    /// A Redis process exited unexpectedly (the message holds its log tail).
    ProcessFailed,
    /// A helper command (such as `redis-cli --cluster create`) failed.
    CommandFailed,
    /// The requested setup is invalid (for example fewer than 3 cluster masters).
    InvalidConfig,
    /// A Redis probe (PING, INFO, CLUSTER ...) returned an error or an unexpected reply.
    Redis,
    /// A file-system or process-level I/O error.
    Io,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::NotInstalled => "not installed",
            ErrorKind::PortInUse => "port in use",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ProcessFailed => "process failed",
            ErrorKind::CommandFailed => "command failed",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::Redis => "redis error",
            ErrorKind::Io => "i/o error",
        };
        f.write_str(s)
    }
}

/// The error returned by every fallible function in this crate.
///
/// `Display` gives a one-line message (a process failure appends the tail of
/// the node's log on the following lines).
#[non_exhaustive]
#[derive(Debug)]
pub struct ClusterError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ClusterError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ClusterError { kind, message: message.into(), source: None }
    }

    pub(crate) fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub(crate) fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        ClusterError::new(ErrorKind::Io, format!("{context}: {err}")).with_source(err)
    }

    pub(crate) fn redis(context: impl fmt::Display, err: redis::RedisError) -> Self {
        ClusterError::new(ErrorKind::Redis, format!("{context}: {err}")).with_source(err)
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        ClusterError::new(ErrorKind::Timeout, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ClusterError::new(ErrorKind::InvalidConfig, message)
    }

    pub(crate) fn port_in_use(port: u16) -> Self {
        ClusterError::new(ErrorKind::PortInUse, format!("port 127.0.0.1:{port} is already in use"))
    }

    pub(crate) fn not_installed(message: impl Into<String>) -> Self {
        ClusterError::new(ErrorKind::NotInstalled, format!("{} (install with: {INSTALL_HINT})", message.into()))
    }

    pub(crate) fn process_failed(what: impl fmt::Display, tail: &str) -> Self {
        ClusterError::new(ErrorKind::ProcessFailed, format!("{what}; recent log:\n{}", tail.trim_end()))
    }

    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message (same as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `redis-server` or `redis-cli` was not found (the message says how to install them).
    pub fn is_not_installed(&self) -> bool {
        self.kind == ErrorKind::NotInstalled
    }

    /// A port that was explicitly requested (fixed port or base port) is already taken.
    pub fn is_port_in_use(&self) -> bool {
        self.kind == ErrorKind::PortInUse
    }

    /// A node or the cluster was not ready in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// A Redis process exited early; the message includes the tail of its log file.
    pub fn is_process_failed(&self) -> bool {
        self.kind == ErrorKind::ProcessFailed
    }
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
