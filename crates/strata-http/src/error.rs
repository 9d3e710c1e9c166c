//! The crate's one error type.

use std::fmt;

/// Boxed error of an origin or a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error of the HTTP layer: a bad setting, the cache (Redis), or the network (binding or
/// serving a listener).
#[derive(Debug)]
#[non_exhaustive]
pub struct Error {
    kind: Kind,
    source: BoxError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Cache,
    Io,
}

impl Error {
    pub(crate) fn config(source: impl Into<BoxError>) -> Self {
        Self { kind: Kind::Config, source: source.into() }
    }

    pub(crate) fn io(source: std::io::Error) -> Self {
        Self { kind: Kind::Io, source: source.into() }
    }

    /// A setting was refused (a namespace or surrogate key Strata cannot name, a bad URL).
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The cache could not do it (see [`strata::Error`] for the classifiers of the cause).
    pub fn is_cache(&self) -> bool {
        self.kind == Kind::Cache
    }

    /// A listener could not be bound or served (address in use, no permission).
    pub fn is_io(&self) -> bool {
        self.kind == Kind::Io
    }
}

impl From<strata::Error> for Error {
    fn from(err: strata::Error) -> Self {
        Self { kind: Kind::Cache, source: Box::new(err) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Config => "invalid setting",
            Kind::Cache => "cache error",
            Kind::Io => "network error",
        };
        write!(f, "{what}: {}", self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
