//! The crate's one public error type.

use std::fmt;
use std::sync::Arc;

use redis::ServerErrorKind;

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
    /// The removal of the value this call meant to replace was queued for replay.
    queued: bool,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into().into(), source: None, unhealthy: false, queued: false }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            message: message.into().into(),
            source: Some(Arc::from(source.into())),
            unhealthy: false,
            queued: false,
        }
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

    /// An invalidation Redis took but fewer replicas than asked confirmed (`WAIT`): a failover
    /// could still lose it, so it counts as one Redis could not take.
    pub(crate) fn unconfirmed(context: &str, reached: i64, wanted: u32, within: u64) -> Self {
        let mut e = Self::new(
            ErrorKind::Timeout,
            format!("redis {context}: {reached} of {wanted} replicas confirmed within {within} ms"),
        );
        e.unhealthy = true;
        e
    }

    /// A read of a key whose removal is queued for replay (auto-recovery): Redis is skipped for
    /// it, as for a key behind an open breaker.
    pub(crate) fn held_back() -> Self {
        Self::new(ErrorKind::CircuitOpen, "a removal of this key is queued for replay; redis skipped for it")
    }

    /// This error, noting that the removal of the value the call meant to replace was queued
    /// for replay ([`is_queued`](Self::is_queued)).
    pub(crate) fn queued(mut self) -> Self {
        if !self.queued {
            self.queued = true;
            self.message = format!("{}; the key's removal is queued for replay (auto-recovery)", self.message).into();
        }
        self
    }

    pub(crate) fn loader_timeout(after: std::time::Duration) -> Self {
        Self::new(ErrorKind::LoaderTimeout, format!("loader did not finish within {after:?}"))
    }

    pub(crate) fn loader(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let source = source.into();
        Self::with_source(ErrorKind::Loader, format!("loader failed: {source}"), source)
    }

    /// The Redis error code (`WRONGTYPE`, `NOAUTH`, `MOVED`, ...) when Redis replied with one.
    /// For a pipeline, redis-rs gives the code of its first failing reply only when that reply
    /// has a [`redis::ServerErrorKind`] (`MOVED`, `NOPERM`, ...; not `WRONGTYPE` or `NOAUTH`).
    pub fn redis_code(&self) -> Option<&str> {
        self.source.as_deref()?.downcast_ref::<redis::RedisError>()?.code()
    }

    /// Whether Redis answered `WRONGTYPE` (the key holds a list, a set...: nothing this cache
    /// wrote), also inside a pipeline, where redis-rs gives no code for it.
    pub(crate) fn is_wrong_type(&self) -> bool {
        let Some(e) = self.redis_error() else { return false };
        e.code() == Some("WRONGTYPE") || server_errors(e).iter().any(|s| s.code() == "WRONGTYPE")
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
    /// Redis could not take this write, and the removal of the value it meant to replace is
    /// queued in this instance for replay when Redis is back
    /// ([`AutoRecovery`](crate::AutoRecovery)): nothing stale outlives the outage. Until the
    /// replay, this instance reads the key from neither tier.
    pub fn is_queued(&self) -> bool {
        self.queued
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
                || server_errors(e).iter().any(|s| AUTH_CODES.contains(&s.code()))
                || flattened_cause(e).is_some_and(|cause| AUTH_CODES.iter().any(|c| cause.contains(c)))
        })
    }
    /// The ACL user may not run this command or touch this key (`NOPERM`).
    pub fn is_permission_denied(&self) -> bool {
        self.redis_error().is_some_and(|e| {
            e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoPerm)
                || server_errors(e).iter().any(|s| s.kind() == Some(ServerErrorKind::NoPerm))
        })
    }
    fn redis_error(&self) -> Option<&redis::RedisError> {
        self.source.as_deref()?.downcast_ref::<redis::RedisError>()
    }
    /// The loader's own error, when this is a loader failure.
    pub fn loader_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        if self.kind == ErrorKind::Loader { self.source.as_deref() } else { None }
    }
}

/// Codes of the replies that refuse our credentials. redis-rs has no [`ServerErrorKind`] for
/// them (it parses them as extension errors), so they are compared as codes, exactly.
const AUTH_CODES: [&str; 2] = ["NOAUTH", "WRONGPASS"];

/// Codes of replies without a [`ServerErrorKind`] in redis-rs that mean the node cannot serve
/// now: `BUSY` (a script or function runs too long), `NOREPLICAS` (`min-replicas-to-write`
/// unmet), `MISCONF` (writes stopped after a failed RDB save) and the refused credentials.
const UNHEALTHY_CODES: [&str; 5] = ["BUSY", "NOREPLICAS", "MISCONF", "NOAUTH", "WRONGPASS"];

/// The server errors a reply carried: the one error of a command, or every failing reply of a
/// pipeline or aborted transaction (redis-rs's own [`RedisError::kind`](redis::RedisError::kind)
/// and `code` only look at a pipeline's first one, and give no code when that one has no
/// [`ServerErrorKind`]). Empty when the error is not a server reply (I/O, handshake, parse...).
fn server_errors(err: &redis::RedisError) -> Vec<redis::ServerError> {
    err.clone().into_server_errors().map(|errors| errors.iter().map(|(_, e)| e.clone()).collect()).unwrap_or_default()
}

/// The text of a cause redis-rs kept only as text: the Cluster client reports a failed initial
/// connection as an `Io` error whose detail is the failing node's error, formatted (redis-rs
/// 1.8, `create_initial_connections`). An I/O error of the socket itself has no detail.
fn flattened_cause(err: &redis::RedisError) -> Option<&str> {
    if err.kind() == redis::ErrorKind::Io { err.detail() } else { None }
}

/// Connection-level failures, timeouts, and the replies of a node that cannot serve now.
fn redis_unhealthy(err: &redis::RedisError) -> bool {
    if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() || err.is_connection_refusal() {
        return true;
    }
    let replies = server_errors(err);
    if !replies.is_empty() {
        return replies.iter().any(|reply| match reply.kind() {
            Some(kind) => unhealthy_kind(kind),
            None => UNHEALTHY_CODES.contains(&reply.code()),
        });
    }
    match err.kind() {
        // Made by redis-rs from a reply it checked itself (e.g. an unexpected AUTH answer).
        redis::ErrorKind::Server(kind) => unhealthy_kind(kind),
        // Not a reply to a command: the handshake, the protocol, the cluster client or the
        // connection failed.
        _ => true,
    }
}

/// `LOADING`, `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`, `READONLY`: the node cannot serve now.
/// Every other reply (`ERR`, `NOPERM`, `MOVED`, `NOSCRIPT`, ...) rejects one request.
fn unhealthy_kind(kind: ServerErrorKind) -> bool {
    matches!(
        kind,
        ServerErrorKind::BusyLoading
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
    )
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

/// The error redis-rs makes of a reply `-{line}\r\n`, parsed the way it parses a server's: for
/// the classifiers' tests (here and in `retry.rs`).
#[cfg(test)]
pub(crate) fn reply(line: &str) -> redis::RedisError {
    let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).expect("a RESP error reply");
    value.extract_error().expect_err("an error reply")
}

/// A connection whose every pipeline gets `replies`.
#[cfg(test)]
struct Replies(Vec<&'static str>);

#[cfg(test)]
impl redis::ConnectionLike for Replies {
    fn req_packed_command(&mut self, _cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        Ok(redis::Value::Okay)
    }
    fn req_packed_commands(&mut self, _: &[u8], _: usize, _: usize) -> redis::RedisResult<Vec<redis::Value>> {
        self.0
            .iter()
            .map(|r| redis::parse_redis_value(format!("{r}\r\n").as_bytes()))
            .collect::<redis::RedisResult<Vec<_>>>()
    }
    fn get_db(&self) -> i64 {
        0
    }
    fn check_connection(&mut self) -> bool {
        true
    }
    fn is_open(&self) -> bool {
        true
    }
}

/// The error of a two-command pipeline answered with `replies` (RESP lines): for the
/// classifiers' tests (here and in `l2.rs`).
#[cfg(test)]
pub(crate) fn pipeline(replies: [&'static str; 2]) -> redis::RedisError {
    let mut pipe = redis::pipe();
    pipe.cmd("GET").arg("k").cmd("PTTL").arg("k");
    pipe.query::<()>(&mut Replies(replies.to_vec())).expect_err("a failing reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> redis::RedisError {
        redis::RedisError::from(std::io::Error::new(kind, "socket"))
    }

    fn wrap(err: redis::RedisError) -> Error {
        Error::redis("GET", err)
    }

    #[test]
    fn replies_parse_into_the_kinds_the_classifiers_use() {
        assert_eq!(reply("NOPERM no permissions").kind(), redis::ErrorKind::Server(ServerErrorKind::NoPerm));
        assert_eq!(reply("LOADING loading").kind(), redis::ErrorKind::Server(ServerErrorKind::BusyLoading));
        assert_eq!(reply("MOVED 3999 127.0.0.1:6381").kind(), redis::ErrorKind::Server(ServerErrorKind::Moved));
        // No typed kind for these: extension errors, with their code.
        for code in ["NOAUTH", "WRONGPASS", "WRONGTYPE", "BUSY", "OOM"] {
            let err = reply(&format!("{code} detail"));
            assert_eq!((err.kind(), err.code()), (redis::ErrorKind::Extension, Some(code)));
        }
        // A pipeline whose first failing reply has no typed kind has no code either.
        assert_eq!(pipeline(["-WRONGTYPE Operation against a key", ":-1"]).code(), None);
    }

    #[test]
    fn wrongtype_is_seen_alone_and_inside_a_pipeline() {
        assert!(wrap(reply("WRONGTYPE Operation against a key")).is_wrong_type());
        let piped = wrap(pipeline(["-WRONGTYPE Operation against a key holding the wrong kind of value", ":-1"]));
        assert!(piped.is_wrong_type() && !piped.is_unhealthy());
        assert!(!wrap(reply("OOM command not allowed")).is_wrong_type());
        assert!(!wrap(io(std::io::ErrorKind::ConnectionReset)).is_wrong_type());
    }

    #[test]
    fn refused_credentials_are_auth_errors() {
        for line in ["NOAUTH Authentication required.", "WRONGPASS invalid username-password pair or user is disabled."]
        {
            let err = wrap(reply(line));
            assert!(err.is_auth() && err.is_unhealthy() && err.is_redis(), "{line}");
            assert!(!err.is_permission_denied(), "{line}");
        }
        let handshake =
            redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "Password authentication failed"));
        assert!(wrap(handshake).is_auth());
        // The Cluster client keeps only the text of a node's refusal.
        let cluster = redis::RedisError::from((
            redis::ErrorKind::Io,
            "Failed to create initial connections",
            reply("WRONGPASS invalid username-password pair").to_string(),
        ));
        assert!(wrap(cluster).is_auth());
        assert!(wrap(pipeline(["-NOAUTH Authentication required.", "-NOAUTH Authentication required."])).is_auth());
        // The word in another error's message is not a refusal.
        assert!(!wrap(reply("ERR unknown command 'NOAUTH', with args beginning with:")).is_auth());
        assert!(!wrap(reply("NOPERM User app has no permissions to run the 'auth' command")).is_auth());
        assert!(!wrap(io(std::io::ErrorKind::ConnectionRefused)).is_auth());
    }

    #[test]
    fn noperm_is_permission_denied_and_not_unhealthy() {
        let err = wrap(reply("NOPERM User app has no permissions to run the 'flushall' command"));
        assert!(err.is_permission_denied() && !err.is_unhealthy() && !err.is_auth());
        assert_eq!(err.redis_code(), Some("NOPERM"));
        let denied_second = wrap(pipeline(["+OK", "-NOPERM User app has no permissions to access the 'k' key"]));
        assert!(denied_second.is_permission_denied() && !denied_second.is_unhealthy());
        assert!(!wrap(reply("ERR NOPERM is not a command")).is_permission_denied());
        assert!(!wrap(reply("WRONGPASS invalid username-password pair")).is_permission_denied());
    }

    #[test]
    fn only_a_node_that_cannot_serve_is_unhealthy() {
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "CLUSTERDOWN The cluster is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "READONLY You can't write against a read only replica.",
            "BUSY Redis is busy running a script.",
            "NOREPLICAS Not enough good replicas to write.",
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
            "NOAUTH Authentication required.",
        ] {
            assert!(wrap(reply(line)).is_unhealthy(), "{line}");
        }
        for line in [
            "ERR syntax error",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
            "CROSSSLOT Keys in request don't hash to the same slot",
            "NOSCRIPT No matching script. Please use EVAL.",
            "EXECABORT Transaction discarded because of previous errors.",
            "BUSYGROUP Consumer Group name already exists",
        ] {
            assert!(!wrap(reply(line)).is_unhealthy(), "{line}");
        }
        // A pipeline is classified by its replies, whatever their position and kind.
        assert!(!wrap(pipeline(["-WRONGTYPE Operation against a key", ":-1"])).is_unhealthy());
        assert!(wrap(pipeline(["-LOADING Redis is loading", "-LOADING Redis is loading"])).is_unhealthy());
        assert!(wrap(pipeline(["+OK", "-MISCONF unable to persist"])).is_unhealthy());
        // Failures that are not replies.
        for kind in [std::io::ErrorKind::ConnectionRefused, std::io::ErrorKind::ConnectionReset] {
            let err = wrap(io(kind));
            assert!(err.is_unhealthy() && err.is_redis() && !err.is_timeout(), "{kind:?}");
        }
        let timed_out = wrap(io(std::io::ErrorKind::TimedOut));
        assert!(timed_out.is_unhealthy() && timed_out.is_timeout() && timed_out.is_unavailable());
        let parse = redis::RedisError::from((redis::ErrorKind::Parse, "invalid reply"));
        assert!(wrap(parse).is_unhealthy());
    }

    #[test]
    fn redis_code_is_the_reply_code() {
        assert_eq!(wrap(reply("WRONGTYPE Operation against a key")).redis_code(), Some("WRONGTYPE"));
        assert_eq!(wrap(reply("BUSYGROUP Consumer Group name already exists")).redis_code(), Some("BUSYGROUP"));
        assert_eq!(wrap(reply("MOVED 3999 127.0.0.1:6381")).redis_code(), Some("MOVED"));
        assert_eq!(wrap(io(std::io::ErrorKind::ConnectionReset)).redis_code(), None);
        assert_eq!(Error::config("x").redis_code(), None);
    }
}
