//! `strata config`: a production `redis.conf` and `users.acl` per workload.
//!
//! Three workloads ([`Workload`]) differ in what may be lost and what should be evicted first:
//!
//! | role | data | `maxmemory-policy` | persistence |
//! | --- | --- | --- | --- |
//! | `app` | a cache in front of a database, re-loadable | `allkeys-lfu` | none |
//! | `cache-only` | a pure cache where recency matters (page fragments) | `allkeys-lru` | none |
//! | `session` | must expire on time and survive restarts | `volatile-ttl` | AOF + RDB |
//!
//! [`render`] returns every file as a string (tests load them into a real `redis-server`);
//! [`RenderedConfig::write_to`] writes them with the right permissions. The files are:
//!
//! * `redis.conf`: commented section by section (why each setting, for this workload);
//! * `users.acl`: the ACL roles (`admin`, `app`, `readonly`, `metrics`, `replica`; the `default`
//!   user is disabled). Redis does not accept comments in ACL files, so the roles are explained
//!   in `redis.conf` next to `aclfile`. Passwords are stored only as SHA-256 hashes;
//! * `replication.conf` (0600): `masteruser` / `masterauth`, included by `redis.conf`, so
//!   `redis.conf` holds no secret as generated. It is still written 0640: `CONFIG REWRITE` (which
//!   Sentinel runs on every failover) copies `masterauth` from the included file into it;
//! * `credentials` (0600): `user password` per line, the plaintext passwords.
//!
//! With [`Secrets::Placeholder`] the hashes are all zeros (no password matches them) and no
//! credentials file is produced: that is how the committed examples in `deploy/redis/` are made.

use std::fmt::{self, Write as _};
use std::fs::{self, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config_conf::{comment, directive, render_redis_conf};
use crate::error::{OpsError, OpsErrorKind, Result};

/// Name of the generated server configuration.
pub const REDIS_CONF: &str = "redis.conf";
/// Name of the generated ACL file.
pub const USERS_ACL: &str = "users.acl";
/// Name of the generated file with the replication credentials (included by `redis.conf`).
pub const REPLICATION_CONF: &str = "replication.conf";
/// Name of the generated file with the plaintext passwords.
pub const CREDENTIALS: &str = "credentials";

/// Default directory `redis.conf` expects `users.acl` and `replication.conf` in.
pub const DEFAULT_CONF_DIR: &str = "/etc/redis";
/// Default data directory (`dir`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/redis";
/// Default listen addresses (`-` marks an address that may be missing, here IPv6 loopback).
pub const DEFAULT_BIND: &str = "127.0.0.1 -::1";
/// Default `maxmemory`.
pub const DEFAULT_MAXMEMORY: &str = "2gb";
/// Default port.
pub const DEFAULT_PORT: u16 = 6379;
/// Default key prefix of the `app` and `readonly` users (the Strata key schema's app name).
pub const DEFAULT_KEY_PREFIX: &str = "app";
/// The pub/sub channels the `app` user may use (Strata's invalidation channels).
pub const CHANNEL_PATTERN: &str = "strata:*";
/// The ACL users written to `users.acl`, besides the disabled `default` user.
pub const ACL_USERS: [&str; 5] = ["admin", "app", "readonly", "metrics", "replica"];
/// The user replicas authenticate to their master as.
pub const REPLICATION_USER: &str = "replica";

/// The hash written for every user with [`Secrets::Placeholder`]: no password hashes to it.
const PLACEHOLDER_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The replication password written with [`Secrets::Placeholder`].
const PLACEHOLDER_PASSWORD: &str = "PLACEHOLDER-regenerate-with-strata-config";

/// The workload a configuration is made for (`strata config --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// A Strata cache in front of a database: values are re-loadable, popularity is skewed.
    App,
    /// A pure cache where recency matters more than frequency (page fragments, feeds).
    CacheOnly,
    /// Data that must expire on time and should survive restarts (sessions).
    Session,
}

impl Workload {
    /// Every workload, in the order of the documentation.
    pub const ALL: [Workload; 3] = [Workload::App, Workload::CacheOnly, Workload::Session];

    /// The name used on the command line (`app`, `cache-only`, `session`).
    pub fn name(self) -> &'static str {
        match self {
            Workload::App => "app",
            Workload::CacheOnly => "cache-only",
            Workload::Session => "session",
        }
    }

    /// The `maxmemory-policy` chosen for this workload.
    pub fn maxmemory_policy(self) -> &'static str {
        match self {
            Workload::App => "allkeys-lfu",
            Workload::CacheOnly => "allkeys-lru",
            Workload::Session => "volatile-ttl",
        }
    }

    /// Whether the data is persisted (AOF + RDB) across restarts.
    pub fn persistent(self) -> bool {
        self == Workload::Session
    }

    /// One line describing the workload.
    pub fn description(self) -> &'static str {
        match self {
            Workload::App => "a Strata cache in front of a database (values re-loadable, skewed popularity)",
            Workload::CacheOnly => "a pure cache where recency matters more than frequency (e.g. page fragments)",
            Workload::Session => "data that must expire on time and should survive restarts (e.g. sessions)",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = OpsError;

    fn from_str(s: &str) -> Result<Self> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| OpsError::invalid(format!("unknown role {s:?}; expected one of: app, cache-only, session")))
    }
}

/// How passwords are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Secrets {
    /// A random 32-byte password per user (hex); only its SHA-256 goes into `users.acl`.
    #[default]
    Generate,
    /// All-zero hashes and a placeholder replication password, no credentials file: for
    /// committed examples. Nobody can log in with such a `users.acl`.
    Placeholder,
}

/// Everything `strata config` needs to render the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigOptions {
    /// The workload.
    pub workload: Workload,
    /// `maxmemory`, as Redis writes it (`2gb`, `512mb`, `1073741824`).
    pub maxmemory: String,
    /// The client port.
    pub port: u16,
    /// Redis Cluster mode.
    pub cluster: bool,
    /// Key prefix the `app` and `readonly` users may access (`<prefix>:*`).
    pub key_prefix: String,
    /// Directory `redis.conf` finds `users.acl` and `replication.conf` in (absolute).
    pub conf_dir: PathBuf,
    /// Data directory (`dir`; absolute).
    pub data_dir: PathBuf,
    /// Listen addresses (`bind`), space separated.
    pub bind: String,
    /// Turn on active defragmentation (needs a Redis built with its bundled jemalloc).
    pub active_defrag: bool,
    /// Generated or placeholder passwords.
    pub secrets: Secrets,
    /// TLS only (`port 0`, `tls-port`, replication and cluster bus over TLS) with generated
    /// certificates, and the ACL roles of `strata up --secure` ([`strata_cluster::AclRoles`]).
    pub secure: bool,
}

impl ConfigOptions {
    /// The defaults for `workload`.
    pub fn new(workload: Workload) -> Self {
        Self {
            workload,
            maxmemory: DEFAULT_MAXMEMORY.to_owned(),
            port: DEFAULT_PORT,
            cluster: false,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            bind: DEFAULT_BIND.to_owned(),
            active_defrag: false,
            secrets: Secrets::Generate,
            secure: false,
        }
    }

    /// The `strata config` command line that renders these options (defaults left out).
    pub fn command_line(&self) -> String {
        let mut cmd = format!("strata config --role {}", self.workload);
        if self.maxmemory != DEFAULT_MAXMEMORY {
            let _ = write!(cmd, " --maxmemory {}", self.maxmemory);
        }
        if self.port != DEFAULT_PORT {
            let _ = write!(cmd, " --port {}", self.port);
        }
        if self.cluster {
            cmd.push_str(" --cluster");
        }
        if self.key_prefix != DEFAULT_KEY_PREFIX {
            let _ = write!(cmd, " --key-prefix {}", self.key_prefix);
        }
        if self.conf_dir != Path::new(DEFAULT_CONF_DIR) {
            let _ = write!(cmd, " --conf-dir {}", shell_word(&self.conf_dir.display().to_string()));
        }
        if self.data_dir != Path::new(DEFAULT_DATA_DIR) {
            let _ = write!(cmd, " --data-dir {}", shell_word(&self.data_dir.display().to_string()));
        }
        if self.bind != DEFAULT_BIND {
            let _ = write!(cmd, " --bind {}", shell_word(&self.bind));
        }
        if self.active_defrag {
            cmd.push_str(" --active-defrag");
        }
        if self.secure {
            cmd.push_str(" --secure");
        }
        if self.secrets == Secrets::Placeholder {
            cmd.push_str(" --placeholder-secrets");
        }
        cmd.push_str(" --out DIR");
        cmd
    }

    /// Checks the options; returns `maxmemory` in bytes.
    fn validate(&self) -> Result<u64> {
        let bytes = parse_memory(&self.maxmemory)?;
        if bytes < 1024 * 1024 {
            return Err(OpsError::invalid(format!(
                "--maxmemory {} is too small (at least 1mb; 0 would mean no limit, and a cache must have one)",
                self.maxmemory
            )));
        }
        if self.port == 0 {
            return Err(OpsError::invalid("--port must be between 1 and 65535"));
        }
        if self.cluster && self.port > 65535 - 10000 {
            return Err(OpsError::invalid(format!(
                "--port {} leaves no room for the cluster bus port (port + 10000); use a port <= 55535",
                self.port
            )));
        }
        let prefix = &self.key_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(OpsError::invalid(format!(
                "invalid --key-prefix {prefix:?}: use 1 to 64 letters, digits, '_', '-' or '.' (the `:*` is added)"
            )));
        }
        for (flag, dir) in [("--conf-dir", &self.conf_dir), ("--data-dir", &self.data_dir)] {
            if !dir.is_absolute() {
                return Err(OpsError::invalid(format!(
                    "{flag} {} must be an absolute path (Redis resolves relative paths against its working directory)",
                    dir.display()
                )));
            }
            if dir.to_str().is_none_or(|s| s.chars().any(char::is_control)) {
                return Err(OpsError::invalid(format!("{flag} {} is not a printable UTF-8 path", dir.display())));
            }
        }
        let bind_ok = !self.bind.trim().is_empty()
            && self.bind.split_whitespace().all(|a| {
                let a = a.strip_prefix('-').unwrap_or(a);
                !a.is_empty() && a.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '*'))
            });
        if !bind_ok {
            return Err(OpsError::invalid(format!(
                "invalid --bind {:?}: space-separated IP addresses (prefix `-` for optional ones)",
                self.bind
            )));
        }
        Ok(bytes)
    }
}

/// One generated file.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// File name inside the output directory.
    pub name: &'static str,
    /// The file's text.
    pub contents: String,
    /// Unix permission bits the file is written with.
    pub mode: u32,
    /// Whether the file holds a plaintext password.
    pub secret: bool,
}

impl fmt::Debug for GeneratedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let contents: &dyn fmt::Debug = if self.secret { &"<redacted>" } else { &self.contents };
        f.debug_struct("GeneratedFile")
            .field("name", &self.name)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("secret", &self.secret)
            .field("contents", contents)
            .finish()
    }
}

/// The rendered files of one configuration.
#[derive(Clone)]
pub struct RenderedConfig {
    pub(crate) workload: Workload,
    pub(crate) files: Vec<GeneratedFile>,
    pub(crate) passwords: Vec<(&'static str, String)>,
}

impl fmt::Debug for RenderedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Passwords never appear in Debug output (secret files are redacted by GeneratedFile).
        f.debug_struct("RenderedConfig")
            .field("workload", &self.workload)
            .field("files", &self.files)
            .field("passwords", &self.passwords.iter().map(|(u, _)| (*u, "<redacted>")).collect::<Vec<_>>())
            .finish()
    }
}

impl RenderedConfig {
    /// The workload.
    pub fn workload(&self) -> Workload {
        self.workload
    }

    /// The chosen `maxmemory-policy`.
    pub fn maxmemory_policy(&self) -> &'static str {
        self.workload.maxmemory_policy()
    }

    /// Every file, in the order they are written and printed.
    pub fn files(&self) -> &[GeneratedFile] {
        &self.files
    }

    /// The contents of the file called `name`.
    pub fn file(&self, name: &str) -> Option<&str> {
        self.files.iter().find(|f| f.name == name).map(|f| f.contents.as_str())
    }

    /// The rendered `redis.conf`.
    pub fn redis_conf(&self) -> &str {
        self.file(REDIS_CONF).unwrap_or_default()
    }

    /// The rendered `users.acl`.
    pub fn users_acl(&self) -> &str {
        self.file(USERS_ACL).unwrap_or_default()
    }

    /// The ACL users of `users.acl` besides the disabled `default` user.
    pub fn users(&self) -> Vec<&'static str> {
        if self.files.iter().any(|f| f.name == strata_cluster::CA_CERT_FILE) {
            crate::config_secure::users().to_vec()
        } else {
            ACL_USERS.to_vec()
        }
    }

    /// The generated password of `user` (None with [`Secrets::Placeholder`] or an unknown user).
    pub fn password(&self, user: &str) -> Option<&str> {
        self.passwords.iter().find(|(u, _)| *u == user).map(|(_, p)| p.as_str())
    }

    /// Writes every file into `dir` (created if missing). Existing files are an error unless
    /// `force`; then nothing is written. Secret files get mode 0600 (also when overwritten).
    /// Returns the paths written.
    pub fn write_to(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>> {
        let local = |what: String, e: std::io::Error| OpsError::new(OpsErrorKind::Local, format!("{what}: {e}"));
        if !force {
            let existing: Vec<&str> =
                self.files.iter().map(|f| f.name).filter(|name| dir.join(name).symlink_metadata().is_ok()).collect();
            if !existing.is_empty() {
                return Err(OpsError::invalid(format!(
                    "{} already exist{} in {}; pass --force to overwrite",
                    existing.join(", "),
                    if existing.len() == 1 { "s" } else { "" },
                    dir.display()
                )));
            }
        }
        fs::create_dir_all(dir).map_err(|e| local(format!("creating {}", dir.display()), e))?;
        let mut written = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let path = dir.join(file.name);
            let mut options = OpenOptions::new();
            options.write(true).mode(file.mode);
            if force {
                options.create(true).truncate(true);
            } else {
                options.create_new(true);
            }
            let mut handle = options.open(&path).map_err(|e| local(format!("creating {}", path.display()), e))?;
            // `mode` only applies to new files: an overwritten file keeps its old bits otherwise.
            handle
                .set_permissions(Permissions::from_mode(file.mode))
                .map_err(|e| local(format!("setting the permissions of {}", path.display()), e))?;
            handle
                .write_all(file.contents.as_bytes())
                .and_then(|()| handle.sync_all())
                .map_err(|e| local(format!("writing {}", path.display()), e))?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Renders the files for `options`, generating passwords unless [`Secrets::Placeholder`].
pub fn render(options: &ConfigOptions) -> Result<RenderedConfig> {
    let maxmemory_bytes = options.validate()?;
    if options.secure {
        return crate::config_secure::render(options, maxmemory_bytes);
    }
    let passwords: Vec<(&'static str, String)> = match options.secrets {
        Secrets::Generate => ACL_USERS.iter().map(|u| (*u, random_password())).collect(),
        Secrets::Placeholder => Vec::new(),
    };
    let hash_of = |user: &str| -> String {
        passwords
            .iter()
            .find(|(u, _)| *u == user)
            .map_or_else(|| PLACEHOLDER_HASH.to_owned(), |(_, p)| sha256_hex(p.as_bytes()))
    };
    let replication_password =
        passwords.iter().find(|(u, _)| *u == REPLICATION_USER).map_or(PLACEHOLDER_PASSWORD, |(_, p)| p.as_str());

    let mut files = vec![
        GeneratedFile {
            name: REDIS_CONF,
            contents: render_redis_conf(options, maxmemory_bytes),
            // Not 0644: CONFIG REWRITE (Sentinel runs it on failover) copies masterauth into it.
            mode: 0o640,
            secret: false,
        },
        GeneratedFile { name: USERS_ACL, contents: render_users_acl(options, hash_of), mode: 0o600, secret: false },
        GeneratedFile {
            name: REPLICATION_CONF,
            contents: render_replication_conf(options, REPLICATION_USER, replication_password),
            mode: 0o600,
            secret: options.secrets == Secrets::Generate,
        },
    ];
    if options.secrets == Secrets::Generate {
        let mut credentials = String::new();
        for (user, password) in &passwords {
            let _ = writeln!(credentials, "{user} {password}");
        }
        files.push(GeneratedFile { name: CREDENTIALS, contents: credentials, mode: 0o600, secret: true });
    }
    Ok(RenderedConfig { workload: options.workload, files, passwords })
}

/// The schema key apps read (`flush --bump-version` writes it): `strata:schema:<prefix>`.
pub fn schema_key(key_prefix: &str) -> String {
    format!("strata:schema:{key_prefix}")
}

/// The key patterns of the `app` and `readonly` users: the prefix's keys (`<prefix>:*`) and their
/// coordination keys (`{<prefix>:...}:lease`, `{<prefix>:...}:version`: the key in hash-tag braces, so a pattern starting with a
/// literal `{`; Redis globs treat braces as plain characters).
pub fn key_patterns(key_prefix: &str) -> [String; 2] {
    [format!("{key_prefix}:*"), format!("{{{key_prefix}:*")]
}

/// The ACL rules of one user (after `user <name> on #<hash>`).
pub(crate) fn acl_rules(user: &str, key_prefix: &str) -> String {
    let [keys, leases] = key_patterns(key_prefix);
    let schema = schema_key(key_prefix);
    match user {
        "admin" => "~* &* +@all".to_owned(),
        // Everything but dangerous and administrative commands (FLUSHALL, KEYS, CONFIG, DEBUG,
        // SHUTDOWN, MONITOR, ...), on the prefix's keys, their coordination keys and Strata's channels
        // only, plus read access to the schema key. ROLE is @dangerous but harmless, and Sentinel
        // clients need it to check who is master. The library's commands (GET, SET, DEL, EXISTS,
        // PTTL, MGET, EVAL, EVALSHA, SCRIPT LOAD) are all in +@all minus those categories.
        "app" => format!(
            "resetkeys ~{keys} ~{leases} %R~{schema} resetchannels &{CHANNEL_PATTERN} +@all -@dangerous -@admin +role"
        ),
        "readonly" => format!(
            "resetkeys %R~{keys} %R~{leases} %R~{schema} resetchannels -@all +@read +@connection -@dangerous -@admin \
             +role +cluster|slots +cluster|shards +cluster|nodes +cluster|info"
        ),
        "metrics" => "resetkeys resetchannels -@all +ping +info +cluster|info +cluster|nodes +latency|latest \
                      +latency|history +latency|histogram +latency|doctor +latency|graph +slowlog|get +slowlog|len"
            .to_owned(),
        REPLICATION_USER => "resetkeys resetchannels -@all +psync +sync +replconf +ping".to_owned(),
        _ => "resetkeys resetchannels -@all".to_owned(),
    }
}

pub(crate) fn render_users_acl(options: &ConfigOptions, hash_of: impl Fn(&str) -> String) -> String {
    // Redis refuses comments in ACL files: the roles are explained in redis.conf (`aclfile`).
    let mut out = String::from("user default off resetpass resetkeys resetchannels -@all\n");
    for user in ACL_USERS {
        let _ = writeln!(out, "user {user} on #{} {}", hash_of(user), acl_rules(user, &options.key_prefix));
    }
    out
}

pub(crate) fn render_replication_conf(options: &ConfigOptions, user: &str, password: &str) -> String {
    let mut out = String::new();
    comment(&mut out, &format!("Replication credentials, included by redis.conf ({}).", options.command_line()));
    comment(&mut out, "Mode 0600: this file holds a plaintext password; keep it readable by the redis user only.");
    comment(&mut out, "A replica (or a cluster node that becomes one) logs in to its master as this ACL user.");
    directive(&mut out, "masteruser", user);
    directive(&mut out, "masterauth", &quote(password));
    out
}

/// Parses a Redis memory amount (`2gb`, `512mb`, `100k`, `1073741824`) into bytes.
pub(crate) fn parse_memory(s: &str) -> Result<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(digits_end);
    let multiplier: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => 0,
    };
    let invalid = || {
        OpsError::invalid(format!("invalid --maxmemory {s:?}: a number with an optional unit (kb, mb, gb), e.g. 2gb"))
    };
    if digits.is_empty() || multiplier == 0 || s.trim() != s || s.is_empty() {
        return Err(invalid());
    }
    digits.parse::<u64>().ok().and_then(|n| n.checked_mul(multiplier)).ok_or_else(invalid)
}

/// `bytes * factor`, rounded up to a tenth of a GiB (or a MiB below 1 GiB), for comments.
pub(crate) fn human_bytes(bytes: u64, factor: f64) -> String {
    let total = bytes as f64 * factor;
    let gib = total / (1024.0 * 1024.0 * 1024.0);
    if gib >= 1.0 {
        format!("{:.1} GiB", (gib * 10.0).ceil() / 10.0)
    } else {
        format!("{:.0} MiB", (total / (1024.0 * 1024.0)).ceil())
    }
}

pub(crate) fn random_password() -> String {
    hex(&rand::rng().random::<[u8; 32]>())
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A word for a shell command line, single-quoted when needed.
pub(crate) fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Quotes a value for a Redis config file: the same rules as the local test nodes' configs.
pub(crate) fn quote(s: &str) -> String {
    strata_cluster::quote_config_value(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directives(conf: &str) -> Vec<(String, String)> {
        conf.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once(' ').expect("key value");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    fn value<'a>(d: &'a [(String, String)], key: &str) -> Option<&'a str> {
        d.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn policies_and_persistence_per_workload() {
        for w in Workload::ALL {
            let r = render(&ConfigOptions::new(w)).expect("render");
            let d = directives(r.redis_conf());
            assert_eq!(value(&d, "maxmemory-policy"), Some(w.maxmemory_policy()));
            assert_eq!(value(&d, "appendonly"), Some(if w.persistent() { "yes" } else { "no" }));
            assert_eq!(value(&d, "maxmemory"), Some("2gb"));
            assert_eq!(value(&d, "aclfile"), Some("\"/etc/redis/users.acl\""));
            assert_eq!(value(&d, "cluster-enabled"), None);
            for k in ["lazyfree-lazy-eviction", "lazyfree-lazy-expire", "lazyfree-lazy-user-del", "protected-mode"] {
                assert_eq!(value(&d, k), Some("yes"), "{k}");
            }
            // Every workload explains its choice against the alternatives.
            let conf = r.redis_conf();
            for other in ["noeviction", "volatile-lru", "allkeys-lru", "allkeys-lfu", "volatile-ttl"] {
                assert!(conf.contains(other), "{w}: {other} not discussed");
            }
            assert!(!conf.contains("rename-command "));
            assert_eq!(r.files().len(), 4);
        }
    }

    #[test]
    fn cluster_section() {
        let mut o = ConfigOptions::new(Workload::App);
        o.cluster = true;
        o.port = 7000;
        let r = render(&o).expect("render");
        let d = directives(r.redis_conf());
        assert_eq!(value(&d, "cluster-enabled"), Some("yes"));
        assert_eq!(value(&d, "cluster-node-timeout"), Some("5000"));
        assert_eq!(value(&d, "cluster-require-full-coverage"), Some("no"));
        assert_eq!(value(&d, "cluster-allow-reads-when-down"), Some("no"));
        assert_eq!(value(&d, "cluster-config-file"), Some("nodes-7000.conf"));
        assert!(r.redis_conf().contains("# Generated by: strata config --role app --port 7000 --cluster --out DIR"));
    }

    #[test]
    fn acl_holds_hashes_only() {
        let mut o = ConfigOptions::new(Workload::Session);
        o.key_prefix = "shop".into();
        let r = render(&o).expect("render");
        let acl = r.users_acl();
        assert!(acl.starts_with("user default off "));
        for user in ACL_USERS {
            let password = r.password(user).expect("password");
            assert_eq!(password.len(), 64);
            assert!(!acl.contains(password), "plaintext of {user} in users.acl");
            assert!(!r.redis_conf().contains(password));
            assert!(acl.contains(&format!("user {user} on #{} ", sha256_hex(password.as_bytes()))));
            assert!(r.file(CREDENTIALS).expect("credentials").contains(&format!("{user} {password}\n")));
        }
        assert!(acl.contains(" ~shop:* ~{shop:* %R~strata:schema:shop "), "{acl}");
        assert!(acl.contains(" %R~shop:* %R~{shop:* %R~strata:schema:shop "), "{acl}");
        assert!(acl.lines().all(|l| l.starts_with("user ")), "ACL files take no comments");
        assert_ne!(r.password("app"), r.password("admin"));
        let debug = format!("{r:?}");
        assert!(!debug.contains(r.password("app").expect("app")), "Debug leaks a password");
    }

    #[test]
    fn placeholder_is_deterministic_and_secret_free() {
        let mut o = ConfigOptions::new(Workload::App);
        o.secrets = Secrets::Placeholder;
        let a = render(&o).expect("render");
        let b = render(&o).expect("render");
        assert_eq!(a.files(), b.files());
        assert!(a.file(CREDENTIALS).is_none());
        assert!(a.password("app").is_none());
        assert!(a.users_acl().contains(&format!("user app on #{PLACEHOLDER_HASH} ")));
        assert!(a.redis_conf().contains("--placeholder-secrets"));
    }

    #[test]
    fn invalid_options_are_refused() {
        let cases: [fn(&mut ConfigOptions); 10] = [
            |o| o.maxmemory = "lots".into(),
            |o| o.maxmemory = "0".into(),
            |o| o.maxmemory = "2tb".into(),
            |o| o.key_prefix = "app:*".into(),
            |o| o.key_prefix = String::new(),
            |o| o.key_prefix = "a b".into(),
            |o| o.port = 0,
            |o| {
                o.cluster = true;
                o.port = 60000;
            },
            |o| o.conf_dir = "relative".into(),
            |o| o.bind = "0.0.0.0; rm".into(),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut o = ConfigOptions::new(Workload::App);
            mutate(&mut o);
            let err = render(&o).expect_err(&format!("case {i} accepted"));
            assert!(err.is_invalid_input(), "case {i}: {err}");
        }
    }

    #[test]
    fn memory_amounts() {
        assert_eq!(parse_memory("2gb").expect("2gb"), 2 << 30);
        assert_eq!(parse_memory("512MB").expect("512mb"), 512 << 20);
        assert_eq!(parse_memory("1000k").expect("k"), 1_000_000);
        assert_eq!(parse_memory("1048576").expect("bytes"), 1 << 20);
        assert!(parse_memory(" 1gb").is_err());
        assert!(parse_memory("gb").is_err());
        assert_eq!(human_bytes(2 << 30, 2.0), "4.0 GiB");
        assert_eq!(human_bytes(512 << 20, 4.0 / 3.0), "683 MiB");
    }

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>().expect("parse"), w);
        }
        assert!("db".parse::<Workload>().is_err());
    }
}
