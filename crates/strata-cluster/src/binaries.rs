//! Locating the `redis-server` and `redis-cli` executables.
//!
//! Lookup order for each binary: the environment override
//! (`STRATA_REDIS_SERVER` / `STRATA_REDIS_CLI`), then every directory on
//! `PATH`. A missing binary is reported as
//! [`ClusterError::is_not_installed`](crate::ClusterError::is_not_installed)
//! with the install command in the message.

use std::env;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{ClusterError, Result};

/// Environment variable overriding the `redis-server` executable.
pub const REDIS_SERVER_ENV: &str = "STRATA_REDIS_SERVER";
/// Environment variable overriding the `redis-cli` executable.
pub const REDIS_CLI_ENV: &str = "STRATA_REDIS_CLI";

/// Paths of the two Redis executables this crate runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBinaries {
    /// `redis-server` (also used for Sentinel, with `--sentinel`).
    pub server: PathBuf,
    /// `redis-cli` (used for `--cluster create`).
    pub cli: PathBuf,
}

impl RedisBinaries {
    /// Find both binaries (environment overrides first, then `PATH`).
    pub fn locate() -> Result<RedisBinaries> {
        Ok(RedisBinaries { server: redis_server()?, cli: redis_cli()? })
    }
}

/// Find `redis-server`: `$STRATA_REDIS_SERVER` if set, else `PATH`.
pub fn redis_server() -> Result<PathBuf> {
    locate(REDIS_SERVER_ENV, "redis-server")
}

/// Find `redis-cli`: `$STRATA_REDIS_CLI` if set, else `PATH`.
pub fn redis_cli() -> Result<PathBuf> {
    locate(REDIS_CLI_ENV, "redis-cli")
}

/// `true` when both `redis-server` and `redis-cli` can be found. Handy for
/// skipping integration tests on machines without Redis.
pub fn redis_available() -> bool {
    RedisBinaries::locate().is_ok()
}

/// Resolve one binary: an explicit override (from the environment) or a PATH search.
fn locate(env_var: &str, name: &str) -> Result<PathBuf> {
    match env::var_os(env_var) {
        Some(value) if !value.is_empty() => resolve_override(env_var, value),
        _ => search_path(name, env::var_os("PATH")).ok_or_else(|| {
            ClusterError::not_installed(format!("`{name}` was not found on PATH (or set {env_var} to its location)"))
        }),
    }
}

fn resolve_override(env_var: &str, value: OsString) -> Result<PathBuf> {
    let path = PathBuf::from(&value);
    // A bare name ("redis-server-7") is looked up on PATH; anything with a
    // slash is taken as a path.
    let found = if path.components().count() == 1 && !path.is_absolute() {
        search_path(&path.to_string_lossy(), env::var_os("PATH"))
    } else if is_executable(&path) {
        Some(path.clone())
    } else {
        None
    };
    found.ok_or_else(|| {
        ClusterError::not_installed(format!("{env_var}={} does not name an executable file", path.display()))
    })
}

/// Check that an explicitly given binary path exists and is executable.
pub(crate) fn check_explicit(path: &Path, what: &str) -> Result<PathBuf> {
    if path.components().count() == 1 && !path.is_absolute() {
        return search_path(&path.to_string_lossy(), env::var_os("PATH"))
            .ok_or_else(|| ClusterError::not_installed(format!("{what} `{}` was not found on PATH", path.display())));
    }
    if is_executable(path) {
        Ok(path.to_path_buf())
    } else {
        Err(ClusterError::not_installed(format!("{what} `{}` does not exist or is not executable", path.display())))
    }
}

fn search_path(name: &str, path_var: Option<OsString>) -> Option<PathBuf> {
    let path_var = path_var?;
    env::split_paths(&path_var).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_finds_sh_and_misses_garbage() {
        let path = Some(OsString::from("/nonexistent-dir:/bin:/usr/bin"));
        assert!(search_path("sh", path.clone()).is_some());
        assert!(search_path("definitely-not-a-binary-xyz", path).is_none());
        assert!(search_path("sh", None).is_none());
    }

    #[test]
    fn explicit_missing_binary_is_not_installed() {
        let err = check_explicit(Path::new("/nonexistent/redis-server"), "redis-server").expect_err("must fail");
        assert!(err.is_not_installed());
        assert!(err.to_string().contains(crate::error::INSTALL_HINT));
    }
}
