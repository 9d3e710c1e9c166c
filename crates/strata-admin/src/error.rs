//! The crate's error type.

use std::fmt;

/// Result alias for this crate.
pub type Result<T, E = AdminError> = std::result::Result<T, E>;

/// Why the admin server could not start or stopped: one line a person can act on.
#[derive(Debug)]
pub struct AdminError {
    message: String,
}

impl AdminError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AdminError {}

impl From<strata_ops::OpsError> for AdminError {
    fn from(err: strata_ops::OpsError) -> Self {
        Self::new(err.to_string())
    }
}
