//! The crate's one public error type.

use std::fmt;
use std::sync::Arc;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely. Use the `is_*` classifiers on [`Error`] rather than matching
/// exhaustively: new kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A key segment was empty, too long, or contained a forbidden character.
    InvalidKey,
    /// An encoded value was larger than the configured maximum.
    ValueTooLarge,
    /// A value could not be serialized.
    Serialization,
    /// Bytes under a key were not a valid Strata envelope (treated as a miss by reads).
    Corrupt,
    /// A valid envelope whose value does not deserialize into the requested type (written by
    /// another version of the application, or read with the wrong type).
    TypeMismatch,
    /// Redis answered with an error or the connection failed.
    Redis,
    /// A Redis call did not finish within its timeout.
    Timeout,
    /// The circuit breaker is open: Redis is considered unhealthy and was not called.
    CircuitOpen,
    /// The caller's loader failed (shared with every caller waiting on the same load).
    Loader,
    /// The loader did not finish within the hard timeout of [`Freshness`](crate::Freshness)
    /// (and no stale value could be served instead).
    LoaderTimeout,
    /// The cache was configured wrongly (bad URL, impossible sizes, ...).
    Config,
    /// A value of a sensitive namespace did not decrypt: unknown key id, wrong key, tampered
    /// bytes, moved from another key, or stored unencrypted (treated as a miss by reads).
    Decrypt,
}

/// The error returned by every fallible `strata` operation.
///
/// It is cheap to clone (the source is reference-counted) so that one loader failure can be
/// handed to every caller that waited on the same single-flight load.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Arc<str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    unhealthy: bool,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into().into(), source: None, unhealthy: false }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self { kind, message: message.into().into(), source: Some(Arc::from(source.into())), unhealthy: false }
    }

    pub(crate) fn invalid_key(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidKey, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    pub(crate) fn decrypt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Decrypt, message)
    }

    pub(crate) fn type_mismatch(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TypeMismatch, message)
    }

    pub(crate) fn redis(context: &str, err: redis::RedisError) -> Self {
        let kind = if err.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Redis };
        let unhealthy = redis_unhealthy(&err);
        let mut e = Self::with_source(kind, format!("redis {context} failed: {err}"), err);
        e.unhealthy = unhealthy;
        e
    }

    pub(crate) fn timeout(context: &str, after: std::time::Duration) -> Self {
        let mut e = Self::new(ErrorKind::Timeout, format!("redis {context} timed out after {after:?}"));
        e.unhealthy = true;
        e
    }

    /// Whether this error says Redis itself is unhealthy (unreachable, slow, failing over,
    /// refusing us), as opposed to rejecting one request (OOM on a write, NOPERM on one key,
    /// WRONGTYPE): only the former should open the circuit breaker.
    pub(crate) fn is_unhealthy(&self) -> bool {
        self.unhealthy
    }

    pub(crate) fn circuit_open() -> Self {
        Self::new(ErrorKind::CircuitOpen, "redis circuit breaker is open; L2 skipped")
    }

    pub(crate) fn loader_timeout(after: std::time::Duration) -> Self {
        Self::new(ErrorKind::LoaderTimeout, format!("loader did not finish within {after:?}"))
    }

    pub(crate) fn loader(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let source = source.into();
        Self::with_source(ErrorKind::Loader, format!("loader failed: {source}"), source)
    }

    /// The Redis error code (`WRONGTYPE`, `NOAUTH`, `MOVED`, ...) when Redis replied with one.
    pub fn redis_code(&self) -> Option<&str> {
        self.source.as_deref()?.downcast_ref::<redis::RedisError>()?.code()
    }

    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// A key segment was invalid (empty, too long, whitespace, control or glob characters).
    pub fn is_invalid_key(&self) -> bool {
        self.kind == ErrorKind::InvalidKey
    }
    /// The encoded value exceeded the configured maximum size.
    pub fn is_value_too_large(&self) -> bool {
        self.kind == ErrorKind::ValueTooLarge
    }
    /// The value could not be serialized.
    pub fn is_serialization(&self) -> bool {
        self.kind == ErrorKind::Serialization
    }
    /// Cached bytes were not a valid Strata envelope.
    pub fn is_corrupt(&self) -> bool {
        self.kind == ErrorKind::Corrupt
    }
    /// A value of a sensitive namespace could not be decrypted and authenticated.
    pub fn is_decrypt_failure(&self) -> bool {
        self.kind == ErrorKind::Decrypt
    }
    /// A valid cached value could not be read as the requested type.
    pub fn is_type_mismatch(&self) -> bool {
        self.kind == ErrorKind::TypeMismatch
    }
    /// Redis returned an error or the connection failed.
    pub fn is_redis(&self) -> bool {
        self.kind == ErrorKind::Redis
    }
    /// A Redis call timed out, or a loader passed its hard timeout
    /// ([`ErrorKind::LoaderTimeout`]; not a sign of Redis trouble, see
    /// [`is_unavailable`](Self::is_unavailable)).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout | ErrorKind::LoaderTimeout)
    }
    /// The circuit breaker was open, so Redis was not called.
    pub fn is_circuit_open(&self) -> bool {
        self.kind == ErrorKind::CircuitOpen
    }
    /// Redis could not be used: an error, a timeout, or an open breaker.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, ErrorKind::Redis | ErrorKind::Timeout | ErrorKind::CircuitOpen)
    }
    /// The loader passed to `get_or_set` failed.
    pub fn is_loader(&self) -> bool {
        self.kind == ErrorKind::Loader
    }
    /// The cache configuration was invalid.
    pub fn is_config(&self) -> bool {
        self.kind == ErrorKind::Config
    }
    /// Redis refused our credentials: no password given where one is required (`NOAUTH`),
    /// or a wrong user name or password (`WRONGPASS`, or the handshake's authentication
    /// failure). The message never holds the password.
    pub fn is_auth(&self) -> bool {
        self.redis_error().is_some_and(|e| {
            e.kind() == redis::ErrorKind::AuthenticationFailed
                || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
                || e.to_string().contains("WRONGPASS")
                || e.to_string().contains("NOAUTH")
        })
    }
    /// The ACL user may not run this command or touch this key (`NOPERM`).
    pub fn is_permission_denied(&self) -> bool {
        self.redis_error().is_some_and(|e| e.code() == Some("NOPERM") || e.to_string().contains("NOPERM"))
    }
    fn redis_error(&self) -> Option<&redis::RedisError> {
        self.source.as_deref()?.downcast_ref::<redis::RedisError>()
    }
    /// The loader's own error, when this is a loader failure.
    pub fn loader_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        if self.kind == ErrorKind::Loader { self.source.as_deref() } else { None }
    }
}

/// Connection-level failures, timeouts, and the replies of a node that cannot serve now.
fn redis_unhealthy(err: &redis::RedisError) -> bool {
    if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() || err.is_connection_refusal() {
        return true;
    }
    matches!(
        err.code(),
        Some(
            "LOADING"
                | "CLUSTERDOWN"
                | "TRYAGAIN"
                | "MASTERDOWN"
                | "BUSY"
                | "READONLY"
                | "NOAUTH"
                | "WRONGPASS"
                | "NOREPLICAS"
                | "MISCONF"
        )
    ) || err.code().is_none()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error").field("kind", &self.kind).field("message", &self.message).finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
