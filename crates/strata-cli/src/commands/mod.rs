//! One module per subcommand; `common` holds what they share.

pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod common;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod down;
pub(crate) mod drill;
pub(crate) mod drill_faults;
pub(crate) mod drill_partition;
pub(crate) mod edge;
pub(crate) mod flush;
pub(crate) mod inspect;
pub(crate) mod invalidate;
pub(crate) mod lab;
pub(crate) mod restore;
pub(crate) mod serve;
pub(crate) mod status;
pub(crate) mod up;
