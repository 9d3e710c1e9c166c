//! The lab's one error type.

use std::fmt;

/// What went wrong, with the command or file concerned.
#[derive(Debug)]
#[non_exhaustive]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Classes of [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not running as root: namespaces, links and nftables need it.
    NotRoot,
    /// A lab is already up (its state file or its namespaces exist).
    AlreadyUp,
    /// No lab is up, or the host named is not one of its hosts.
    NotFound,
    /// A tool the lab runs (`ip`, `nft`, `sshd`, ...) is missing.
    MissingTool,
    /// A command the lab ran failed.
    Command,
    /// The state file could not be read or written.
    State,
    /// Invalid arguments (a host count, a delay).
    Invalid,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether it says the caller is not root.
    pub fn is_not_root(&self) -> bool {
        self.kind == ErrorKind::NotRoot
    }

    /// Whether it says no lab (or no such host) exists.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The lab's result type.
pub type Result<T> = std::result::Result<T, Error>;
