//! `strata config`: a production `redis.conf` and `users.acl` for a workload.

use std::path::PathBuf;

use serde::Serialize;
use strata_ops::config::{self, ConfigOptions, Secrets, Workload};

use super::common::{AuditArgs, OutputArgs};

/// Arguments of `strata config`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Roles and their maxmemory-policy:
  app         a cache in front of a database (re-loadable values)      allkeys-lfu, no persistence
  cache-only  a pure cache where recency matters (page fragments)      allkeys-lru, no persistence
  session     must expire on time and survive restarts                volatile-ttl, AOF + RDB

With --secure (needs --out): TLS only, certificates (ca.crt, server.crt/.key, client.crt/.key) and
the roles of `strata up --secure` (admin, app, readonly, metrics, replication).
With --out DIR: writes redis.conf, users.acl (SHA-256 hashes), replication.conf and credentials
(plaintext passwords; both 0600) into DIR, refusing to overwrite without --force.
Without --out: prints every file to stdout, passwords included (a warning goes to stderr).
--json (needs --out) prints {\"role\", \"files\": [paths], \"maxmemory_policy\", ...}.")]
pub(crate) struct Args {
    /// Workload the configuration is made for.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Directory to write the files into (created if missing); without it they go to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite files that already exist in --out.
    #[arg(long, requires = "out")]
    force: bool,
    /// Memory limit for the dataset (e.g. 512mb, 2gb); the comments size the host from it.
    #[arg(long, default_value = config::DEFAULT_MAXMEMORY)]
    maxmemory: String,
    /// Client port.
    #[arg(long, default_value_t = config::DEFAULT_PORT)]
    port: u16,
    /// Redis Cluster mode (cluster-enabled, node timeout, coverage settings).
    #[arg(long)]
    cluster: bool,
    /// Key prefix the `app` and `readonly` users may access (`PREFIX:*`): the Strata app name.
    #[arg(long, default_value = config::DEFAULT_KEY_PREFIX)]
    key_prefix: String,
    /// Directory where Redis will find users.acl and replication.conf (absolute).
    #[arg(long, default_value = config::DEFAULT_CONF_DIR)]
    conf_dir: PathBuf,
    /// Redis data directory, `dir` (absolute).
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Listen addresses, space separated (`-` prefix: optional address).
    #[arg(long, default_value = config::DEFAULT_BIND)]
    bind: String,
    /// Enable active defragmentation (only for Redis built with its bundled jemalloc).
    #[arg(long)]
    active_defrag: bool,
    /// All-zero password hashes and no credentials file, for committed example files.
    #[arg(long, conflicts_with = "secure")]
    placeholder_secrets: bool,
    /// TLS only (port 0, tls-port, TLS replication and cluster bus) with a generated CA,
    /// server and client certificates (keys 0600), and the ACL roles of `strata up --secure`.
    #[arg(long, requires = "out")]
    secure: bool,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    audit: AuditArgs,
}

/// `--role` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum RoleArg {
    /// A Strata cache in front of a database: allkeys-lfu, no persistence.
    App,
    /// A pure cache where recency matters: allkeys-lru, no persistence.
    CacheOnly,
    /// Sessions: volatile-ttl, AOF + RDB.
    Session,
}

impl From<RoleArg> for Workload {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::App => Workload::App,
            RoleArg::CacheOnly => Workload::CacheOnly,
            RoleArg::Session => Workload::Session,
        }
    }
}

/// The JSON document printed with `--json`.
#[derive(Serialize)]
struct Report {
    role: Workload,
    /// Paths written.
    files: Vec<String>,
    maxmemory_policy: &'static str,
    maxmemory: String,
    cluster: bool,
    key_prefix: String,
    users: Vec<&'static str>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.output.json && args.out.is_none() {
        // An argument error (exit 2): the JSON describes written files, so it needs --out.
        clap::Error::raw(
            clap::error::ErrorKind::MissingRequiredArgument,
            "--json needs --out DIR: the files are written there and the JSON lists them\n",
        )
        .exit();
    }
    let object = args.out.as_ref().map_or_else(|| "-".to_owned(), |d| d.display().to_string());
    let audit = args.audit.clone();
    audit.local("config", &object, || render_and_write(args))
}

fn render_and_write(args: Args) -> anyhow::Result<()> {
    let options = ConfigOptions {
        workload: args.role.into(),
        maxmemory: args.maxmemory,
        port: args.port,
        cluster: args.cluster,
        key_prefix: args.key_prefix,
        conf_dir: args.conf_dir,
        data_dir: args.data_dir,
        bind: args.bind,
        active_defrag: args.active_defrag,
        secrets: if args.placeholder_secrets { Secrets::Placeholder } else { Secrets::Generate },
        secure: args.secure,
    };
    let rendered = config::render(&options)?;
    let Some(dir) = args.out else {
        if rendered.files().iter().any(|f| f.secret) {
            eprintln!(
                "strata: warning: generated passwords are printed on stdout; use --out DIR to write them to 0600 files"
            );
        }
        for file in rendered.files() {
            print!("==> {} (mode {:o}) <==\n{}\n", file.name, file.mode, file.contents);
        }
        return Ok(());
    };

    // The errors name the files and the directory already.
    let written = rendered.write_to(&dir, args.force)?;
    let report = Report {
        role: options.workload,
        files: written.iter().map(|p| p.display().to_string()).collect(),
        maxmemory_policy: rendered.maxmemory_policy(),
        maxmemory: options.maxmemory.clone(),
        cluster: options.cluster,
        key_prefix: options.key_prefix.clone(),
        users: std::iter::once("default").chain(rendered.users()).collect(),
    };
    let conf_dir = options.conf_dir.display().to_string();
    let placeholder = options.secrets == Secrets::Placeholder;
    args.output.print(&report, || {
        let mut text = format!(
            "Wrote the `{}` configuration (maxmemory-policy {}) into {}:\n",
            options.workload,
            rendered.maxmemory_policy(),
            dir.display()
        );
        for (file, path) in rendered.files().iter().zip(&written) {
            let note = if file.secret { "  (plaintext password, keep secret)" } else { "" };
            text.push_str(&format!("  {:o}  {}{note}\n", file.mode, path.display()));
        }
        text.push_str(&format!(
            "Next: install users.acl and replication.conf in {conf_dir} (owned by the redis user, mode 0600)\n\
             and start `redis-server redis.conf`.\n"
        ));
        text.push_str(if placeholder {
            "These are examples with placeholder secrets: nobody can log in until they are regenerated.\n"
        } else {
            "Give the application the `app` password from `credentials`; store the others in your secret manager.\n"
        });
        text
    })
}
