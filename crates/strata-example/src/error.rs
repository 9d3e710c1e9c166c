//! The crate's one error type.

use std::fmt;

/// What failed. The HTTP layer maps each kind to a status code
/// ([`Error::status`]); library callers can match on [`Error::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request was malformed (bad id, key segment, body): HTTP 400.
    InvalidInput,
    /// The database failed or could not be reached: HTTP 500.
    Database,
    /// The cache (Strata) returned an error: HTTP 503.
    Cache,
    /// A raw Redis command (counters, sorted sets, HyperLogLog) failed: HTTP 503.
    Redis,
    /// The configuration (URLs, options) is unusable.
    Config,
}

/// An error of the example service.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// What failed.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::InvalidInput => 400,
            ErrorKind::Database | ErrorKind::Config => 500,
            ErrorKind::Cache | ErrorKind::Redis => 503,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Database => "database error",
            ErrorKind::Cache => "cache error",
            ErrorKind::Redis => "redis error",
            ErrorKind::Config => "configuration error",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for Error {}

impl From<strata::Error> for Error {
    fn from(e: strata::Error) -> Self {
        // A malformed key comes from request input (ids, categories, client ids).
        let kind = if e.is_invalid_key() { ErrorKind::InvalidInput } else { ErrorKind::Cache };
        Self::new(kind, e.to_string())
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Self::new(ErrorKind::Redis, e.to_string())
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::new(ErrorKind::Database, format!("sqlite: {e}"))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::new(ErrorKind::Database, format!("postgres: {e}"))
    }
}
