//! What the subcommands share: how to name a deployment, and how to print results.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use strata_ops::{Credentials, Deployment};

/// Default directory of `strata up` (relative to the working directory).
pub(crate) const DEFAULT_DIR: &str = ".strata/cluster";

/// Which deployment a command works on: a URL of any node, or the directory of `strata up`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct TargetArgs {
    /// URL of any node (`redis://[user:password@]host:port`); the rest of a cluster is discovered.
    #[arg(long, conflicts_with = "dir")]
    pub(crate) url: Option<String>,
    /// Directory of a cluster started by `strata up` (default: .strata/cluster when no --url).
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// ACL user name.
    #[arg(long, env = "STRATA_REDIS_USER")]
    pub(crate) user: Option<String>,
    /// Password; prefer the environment variable or --password-file (arguments show in `ps`).
    #[arg(long, env = "STRATA_REDIS_PASSWORD", hide_env_values = true)]
    pub(crate) password: Option<String>,
    /// File holding the password (first line).
    #[arg(long, conflicts_with = "password")]
    pub(crate) password_file: Option<PathBuf>,
    /// For `rediss://` URLs: directory with `ca.crt`, and `client.crt` / `client.key` when the
    /// servers want a client certificate (the --out directory of `strata config --secure`).
    #[arg(long, value_name = "DIR", conflicts_with = "dir")]
    pub(crate) tls_dir: Option<PathBuf>,
}

impl TargetArgs {
    /// The credentials given on the command line, environment or file.
    pub(crate) fn credentials(&self) -> anyhow::Result<Credentials> {
        let password = match &self.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the password file {}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            None => self.password.clone(),
        };
        let tls = self.tls_dir.as_deref().map(|dir| {
            let mut material = strata_cluster::TlsMaterial::in_dir(dir);
            if material.client.as_ref().is_some_and(|(cert, key)| !cert.exists() || !key.exists()) {
                material.client = None;
            }
            material
        });
        Ok(Credentials { user: self.user.clone(), password, tls })
    }

    /// Discovers the deployment.
    pub(crate) fn deployment(&self) -> anyhow::Result<Deployment> {
        let credentials = self.credentials()?;
        Ok(match (&self.url, &self.dir) {
            (Some(url), _) => Deployment::discover(url, &credentials)?,
            (None, Some(dir)) => Deployment::from_dir(dir, &credentials)?,
            (None, None) => Deployment::from_dir(std::path::Path::new(DEFAULT_DIR), &credentials)?,
        })
    }
}

/// `--audit-log PATH`: administrative actions append an audit record (the library's format).
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct AuditArgs {
    /// Append a JSON audit record of this action to PATH (created 0600): time, principal (the
    /// ACL user, `default` without one), action, target, result, and the error when it failed.
    #[arg(long, env = "STRATA_AUDIT_LOG", value_name = "PATH")]
    pub(crate) audit_log: Option<PathBuf>,
}

impl AuditArgs {
    /// Runs `f` on the deployment `target` names and records `action` on `object` with its
    /// outcome. A discovery failure (wrong password, unreachable node) is recorded too.
    pub(crate) fn on_deployment<T>(
        &self,
        target: &TargetArgs,
        action: &str,
        object: &str,
        f: impl FnOnce(&Deployment) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.check()?;
        let (principal, outcome) = match target.deployment() {
            Ok(d) => (d.credentials().user.clone(), f(&d)),
            Err(e) => (target.user.clone(), Err(e)),
        };
        self.record(principal.as_deref().unwrap_or("default"), action, object, &outcome)?;
        outcome
    }

    /// Runs `f`, an action without a deployment (`strata config`), and records it as `default`.
    pub(crate) fn local<T>(
        &self,
        action: &str,
        object: &str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.check()?;
        let outcome = f();
        self.record("default", action, object, &outcome)?;
        outcome
    }

    /// Fails before anything is done when the log cannot be written: an action that cannot be
    /// recorded must not run.
    fn check(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.audit_log {
            let mut options = std::fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(options.append(true).create(true), 0o600);
            options.open(path).with_context(|| format!("opening the audit log {}", path.display()))?;
        }
        Ok(())
    }

    fn record<T>(
        &self,
        principal: &str,
        action: &str,
        object: &str,
        outcome: &anyhow::Result<T>,
    ) -> anyhow::Result<()> {
        let Some(path) = &self.audit_log else { return Ok(()) };
        let mut record =
            strata::AuditRecord::new(principal, action, object, if outcome.is_ok() { "ok" } else { "error" });
        if let Err(err) = outcome {
            record.reason = Some(format!("{err:#}"));
        }
        record.append_to(path).with_context(|| "the action ran, but its audit record could not be written")
    }
}

/// `--json` or a human-readable rendering.
#[derive(clap::Args, Debug, Clone, Copy)]
pub(crate) struct OutputArgs {
    /// Print the result as JSON on stdout (and nothing else there).
    #[arg(long)]
    pub(crate) json: bool,
}

impl OutputArgs {
    /// Prints `value` as pretty JSON, or `human()` otherwise. A reader that closed the pipe
    /// (`strata inspect | head`) is not an error.
    pub(crate) fn print<T: serde::Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> anyhow::Result<()> {
        let text = if self.json { format!("{}\n", serde_json::to_string_pretty(value)?) } else { human() };
        let mut out = std::io::stdout().lock();
        match std::io::Write::write_all(&mut out, text.as_bytes()).and_then(|()| std::io::Write::flush(&mut out)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Wraps `text` in an ANSI style when stdout is a terminal (and NO_COLOR is unset).
pub(crate) fn paint(text: &str, style: Style) -> String {
    if !std::io::stdout().is_terminal() || std::env::var_os("NO_COLOR").is_some() {
        return text.to_owned();
    }
    let code = match style {
        Style::Good => "32",
        Style::Bad => "31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// Styles for [`paint`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Style {
    Good,
    Bad,
}

/// A tokio runtime for the commands that drive async library code.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// Parses a duration like `30s`, `2m` or `500ms` (a bare number is seconds), 1 ms to 1 hour.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration like 30s, 2m or 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{s:?} is not a duration like 30s, 2m or 500ms")),
    };
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err("the duration must be between 1 ms and 1 hour".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_units_the_help_shows() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        for bad in ["", "s", "0s", "3h", "1.5s", "-1s", "2 hours", "99999999999999999m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}

/// The user-profiles options `strata bench` and `strata demo` share.
#[derive(clap::Args, Debug)]
pub(crate) struct ProfilesArgs {
    /// Database of user-profiles: `postgres://...` or `sqlite:PATH` (default: made for the run,
    /// see --database).
    #[arg(long)]
    database_url: Option<String>,
    /// The database made for the run when --database-url is absent: a SQLite file, or a
    /// throwaway PostgreSQL server (Debian's postgresql-15) started and stopped by strata.
    #[arg(long, value_enum, default_value_t = DatabaseArg::Sqlite)]
    database: DatabaseArg,
    /// Unmeasured warm-up of each user-profiles variant before its measured share (0s:
    /// measure from an empty cache).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Users seeded by user-profiles.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    users: u64,
    /// Artificial latency before every database statement in user-profiles, milliseconds (a
    /// remote or loaded database; 0, the default, adds nothing; reports say when it is set).
    #[arg(long, default_value_t = 0.0)]
    db_latency_ms: f64,
}

impl ProfilesArgs {
    /// The scenario's options with these set (the rest at their defaults).
    pub(crate) fn options(&self) -> anyhow::Result<strata_bench::user_profiles::Options> {
        anyhow::ensure!(
            self.db_latency_ms.is_finite() && (0.0..=10_000.0).contains(&self.db_latency_ms),
            "--db-latency-ms must be between 0 and 10000"
        );
        Ok(strata_bench::user_profiles::Options {
            users: self.users,
            warmup: self.warmup,
            database_url: self.database_url.clone(),
            database: self.database.into(),
            db_latency: Duration::from_secs_f64(self.db_latency_ms / 1000.0),
            ..strata_bench::user_profiles::Options::default()
        })
    }
}

/// `--database` of user-profiles and the demo: what to create when no URL is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DatabaseArg {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A throwaway PostgreSQL 15 server, started and stopped by strata.
    Postgres,
}

impl From<DatabaseArg> for strata_bench::user_profiles::Database {
    fn from(arg: DatabaseArg) -> Self {
        match arg {
            DatabaseArg::Sqlite => Self::Sqlite,
            DatabaseArg::Postgres => Self::Postgres,
        }
    }
}
