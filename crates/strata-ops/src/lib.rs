//! Operations on the Redis side of Strata, used by the `strata` CLI: discovering a deployment
//! from one URL, node status, keyspace inspection, invalidation, production configs, backups,
//! and the access Redis denied (`ACL LOG`, [`audit_log`]).
//!
//! Everything here is synchronous (the redis crate's blocking client, with connect and read
//! timeouts on every connection): these are operator commands, run one at a time.
//!
//! The entry point is [`Deployment::discover`]: given any node's URL (or the directory of a
//! cluster started by `strata up`), it finds every node, its role and slots, so each command
//! can work "on every master" without the operator listing them.

pub mod audit_log;
pub mod backup;
pub mod config;
mod config_conf;
mod config_secure;
mod error;
pub mod inspect;
pub mod invalidate;
pub mod restore;
pub mod stamp;
pub mod status;
mod target;

pub use error::{OpsError, OpsErrorKind, Result};
pub use target::{Credentials, Deployment, Node, Role};
