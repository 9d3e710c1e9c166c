//! `strata restore`: replay a backup into any running deployment.
//!
//! RDB files are never parsed here. Each file (SHA-256 checked first) is loaded by a temporary
//! standalone `redis-server` (persistence off, password-protected, killed on drop); its keys are
//! then moved with `PTTL` + `DUMP` and `RESTORE key ttl payload [REPLACE]`, pipelined in batches.
//! On a cluster the RESTOREs go through the cluster client, which routes each key to the master
//! serving its slot, so the target's slot layout does not matter.
//!
//! TTLs are preserved as absolute expiry times, approximately: a key that had one hour left at
//! backup time and is restored two hours later is gone (counted in `skipped_expired`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::ProgressBar;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::backup::{DEFAULT_BATCH, local, read_manifest, verify};
use crate::error::{OpsError, OpsErrorKind, Result};
use crate::target::{Deployment, Node};

/// How long a temporary server may take to load one RDB file.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Options of [`restore`].
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Backup directory (with its manifest).
    pub from: PathBuf,
    /// Overwrite keys that already exist in the target (`RESTORE ... REPLACE`).
    pub replace: bool,
    /// Keys per pipelined batch (at least 1).
    pub batch: usize,
}

impl RestoreOptions {
    /// Options restoring from `from`, keeping existing keys, [`DEFAULT_BATCH`] keys per batch.
    pub fn new(from: impl Into<PathBuf>) -> Self {
        Self { from: from.into(), replace: false, batch: DEFAULT_BATCH }
    }
}

/// What [`restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// RDB files replayed.
    pub files: u64,
    /// Keys written into the target.
    pub keys_restored: u64,
    /// Keys left alone because they already existed in the target (without `replace`).
    pub skipped_existing: u64,
    /// Keys of the backup whose TTL had run out (at load or during the transfer).
    pub skipped_expired: u64,
}

/// Restores every key, value and TTL of the backup in `options.from` into `deployment`.
/// Every file's SHA-256 is verified before anything is written. `progress` counts keys.
pub fn restore(deployment: &Deployment, options: &RestoreOptions, progress: &ProgressBar) -> Result<RestoreReport> {
    let manifest = read_manifest(&options.from)?;
    progress.set_message("verifying checksums");
    verify(&options.from, &manifest)?;
    let mut target = Target::connect(deployment)?;
    let mut total: u64 = manifest.files.iter().map(|f| f.keys).sum();
    progress.set_length(total);
    progress.set_position(0);
    let mut report = RestoreReport::default();
    for f in &manifest.files {
        progress.set_message(format!("loading {}", f.file));
        let source = TempServer::load(&options.from.join(&f.file))?;
        let loaded: u64 = source.databases.iter().map(|(_, n)| n).sum();
        total = total.saturating_sub(f.keys).saturating_add(loaded);
        progress.set_length(total);
        report.skipped_expired += source.expired_at_load;
        progress.set_message(format!("restoring {}", f.file));
        restore_file(&source, &mut target, options, progress, &mut report)?;
        report.files += 1;
    }
    progress.finish_and_clear();
    Ok(report)
}

/// Moves every key of a loaded temporary server into the target.
fn restore_file(
    source: &TempServer,
    target: &mut Target,
    options: &RestoreOptions,
    progress: &ProgressBar,
    report: &mut RestoreReport,
) -> Result<()> {
    let addr = source.server.node().addr();
    let mut con = source
        .server
        .node()
        .connection_with_timeout(Duration::from_secs(2), Some(Duration::from_secs(120)))
        .map_err(OpsError::from)?;
    let batch = options.batch.max(1);
    // Refuse a file the target cannot hold before moving any of its keys.
    for &(db, _) in &source.databases {
        target.check_db(db)?;
    }
    for &(db, _) in &source.databases {
        redis::cmd("SELECT").arg(db).exec(&mut con).map_err(|e| OpsError::redis(&addr, &e))?;
        target.select(db)?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(batch)
                .query(&mut con)
                .map_err(|e| OpsError::redis(&addr, &e))?;
            for chunk in keys.chunks(batch) {
                restore_batch(&mut con, &addr, chunk, target, options.replace, report)?;
                progress.inc(chunk.len() as u64);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(())
}

/// `PTTL` + `DUMP` a batch from the temporary server, then `RESTORE` it into the target.
fn restore_batch(
    con: &mut redis::Connection,
    addr: &str,
    keys: &[Vec<u8>],
    target: &mut Target,
    replace: bool,
    report: &mut RestoreReport,
) -> Result<()> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("PTTL").arg(key).cmd("DUMP").arg(key);
    }
    let values: Vec<redis::Value> = pipe.query(con).map_err(|e| OpsError::redis(addr, &e))?;
    let mut restores: Vec<(&[u8], i64, Vec<u8>)> = Vec::with_capacity(keys.len());
    for (key, pair) in keys.iter().zip(values.chunks(2)) {
        let pttl = match pair.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => -2,
        };
        let payload = match pair.get(1) {
            Some(redis::Value::BulkString(bytes)) => Some(bytes.clone()),
            _ => None,
        };
        match payload {
            // Gone between SCAN and DUMP (expired), or about to expire.
            None => report.skipped_expired += 1,
            Some(_) if pttl == -2 || pttl == 0 => report.skipped_expired += 1,
            Some(payload) => restores.push((key.as_slice(), pttl.max(0), payload)),
        }
    }
    if restores.is_empty() {
        return Ok(());
    }
    let results = target.restore(&restores, replace)?;
    for ((key, _, _), result) in restores.iter().zip(results) {
        match result {
            None => report.keys_restored += 1,
            // The key exists (no `--replace`). redis-rs has no `ServerErrorKind` for `BUSYKEY`:
            // the reply's code is compared, exactly.
            Some(e) if e.code() == "BUSYKEY" => report.skipped_existing += 1,
            Some(e) => {
                return Err(OpsError::new(
                    OpsErrorKind::Redis,
                    format!("RESTORE of key {:?} failed: {e}", String::from_utf8_lossy(key)),
                ));
            }
        }
    }
    Ok(())
}

/// Where restored keys go: a cluster (routed per key) or one standalone server.
enum Target {
    Cluster(Box<redis::cluster::ClusterConnection>),
    Single { con: redis::Connection, addr: String, db: i64 },
}

impl Target {
    fn connect(deployment: &Deployment) -> Result<Self> {
        let masters: Vec<&Node> = deployment.masters_checked("restore")?;
        let first = masters
            .first()
            .ok_or_else(|| OpsError::new(OpsErrorKind::Redis, "the target reports no master serving slots"))?;
        if !deployment.cluster {
            let addr = first.addr.clone();
            let con = deployment.connect(&addr)?;
            return Ok(Self::Single { con, addr, db: 0 });
        }
        let seeds: Vec<String> = masters.iter().map(|n| format!("redis://{}", n.addr)).collect();
        let credentials = deployment.credentials();
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(60));
        if let Some(user) = &credentials.user {
            builder = builder.username(user);
        }
        if let Some(password) = &credentials.password {
            builder = builder.password(password);
        }
        let client = builder.build().map_err(|e| OpsError::redis(&first.addr, &e))?;
        let con = client.get_connection().map_err(|e| OpsError::redis(&first.addr, &e))?;
        Ok(Self::Cluster(Box::new(con)))
    }

    /// An error when the target cannot hold keys of database `db` (a cluster only has 0).
    fn check_db(&self, db: i64) -> Result<()> {
        match self {
            Self::Cluster(_) if db != 0 => Err(OpsError::invalid(format!(
                "the backup holds keys in database {db}, but a Redis Cluster only has database 0"
            ))),
            _ => Ok(()),
        }
    }

    /// Switches to database `db`.
    fn select(&mut self, db: i64) -> Result<()> {
        self.check_db(db)?;
        match self {
            Self::Cluster(_) => Ok(()),
            Self::Single { con, addr, db: current } => {
                if *current != db {
                    redis::cmd("SELECT").arg(db).exec(con).map_err(|e| OpsError::redis(addr, &e))?;
                    *current = db;
                }
                Ok(())
            }
        }
    }

    /// Sends one pipelined batch of RESTOREs; per key, `None` on success or the server's error.
    fn restore(&mut self, items: &[(&[u8], i64, Vec<u8>)], replace: bool) -> Result<Vec<Option<redis::ServerError>>> {
        let command = |key: &[u8], ttl: i64, payload: &[u8]| {
            let mut cmd = redis::cmd("RESTORE");
            cmd.arg(key).arg(ttl).arg(payload);
            if replace {
                cmd.arg("REPLACE");
            }
            cmd
        };
        let (result, addr) = match self {
            Self::Cluster(con) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for (key, ttl, payload) in items {
                    pipe.add_command(command(key, *ttl, payload));
                }
                (pipe.exec(con), "the cluster".to_owned())
            }
            Self::Single { con, addr, .. } => {
                let mut pipe = redis::pipe();
                for (key, ttl, payload) in items {
                    pipe.add_command(command(key, *ttl, payload));
                }
                (pipe.exec(con), addr.clone())
            }
        };
        let mut outcome: Vec<Option<redis::ServerError>> = vec![None; items.len()];
        match result {
            Ok(()) => {}
            // Per-command errors (BUSYKEY ...) come back together; the other commands succeeded.
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                return Err(OpsError::redis(&addr, &e));
            }
            Err(e) => {
                let text = e.to_string();
                let Some(errors) = e.into_server_errors() else {
                    return Err(OpsError::new(OpsErrorKind::Redis, format!("{addr}: {text}")));
                };
                for (i, err) in errors.iter() {
                    if let Some(slot) = outcome.get_mut(*i) {
                        *slot = Some(err.clone());
                    }
                }
            }
        }
        Ok(outcome)
    }
}

/// A temporary standalone `redis-server` that has loaded one RDB file. Dropping it kills the
/// server, then removes its directory.
struct TempServer {
    // Field order matters: the server is killed before its directory is removed.
    server: strata_cluster::RedisServer,
    _dir: TempDir,
    /// `(db, keys)` for every database holding keys.
    databases: Vec<(i64, u64)>,
    /// Keys of the file dropped at load because their TTL had run out.
    expired_at_load: u64,
}

impl TempServer {
    fn load(rdb: &Path) -> Result<Self> {
        let dir = TempDir::new("strata-restore-")?;
        let rdb = rdb.canonicalize().map_err(|e| local(format!("resolving {}", rdb.display()), &e))?;
        let link = dir.path.join("dump.rdb");
        // A symlink avoids copying the file; Redis only reads it (persistence is off, and a
        // save would replace the link by rename, never write through it).
        if std::os::unix::fs::symlink(&rdb, &link).is_err() {
            fs::copy(&rdb, &link).map_err(|e| local(format!("copying {}", rdb.display()), &e))?;
        }
        let password = format!("{:032x}", rand::rng().random::<u128>());
        let server = strata_cluster::RedisServer::builder()
            .dir(&dir.path)
            .password(password)
            .config_line("dbfilename dump.rdb")
            .config_line("save \"\"")
            .config_line("appendonly no")
            .config_line("maxmemory 0")
            .start_timeout(LOAD_TIMEOUT)
            .start()
            .map_err(|e| {
                OpsError::new(
                    OpsErrorKind::Local,
                    format!("loading {} in a temporary redis-server: {e}", rdb.display()),
                )
            })?;
        let addr = server.node().addr();
        let mut con = server.connection()?;
        let keyspace: String =
            redis::cmd("INFO").arg("keyspace").query(&mut con).map_err(|e| OpsError::redis(&addr, &e))?;
        let persistence: String =
            redis::cmd("INFO").arg("persistence").query(&mut con).map_err(|e| OpsError::redis(&addr, &e))?;
        let expired_at_load = persistence
            .lines()
            .find_map(|l| l.strip_prefix("rdb_last_load_keys_expired:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self { server, _dir: dir, databases: parse_keyspace(&keyspace), expired_at_load })
    }
}

/// `(db, keys)` from `INFO keyspace` (`db0:keys=2,expires=1,avg_ttl=0`).
fn parse_keyspace(info: &str) -> Vec<(i64, u64)> {
    let mut dbs: Vec<(i64, u64)> = info
        .lines()
        .filter_map(|l| {
            let (db, rest) = l.trim().split_once(':')?;
            let db = db.strip_prefix("db")?.parse().ok()?;
            let keys = rest.split(',').find_map(|kv| kv.strip_prefix("keys="))?.parse().ok()?;
            Some((db, keys))
        })
        .filter(|&(_, keys)| keys > 0)
        .collect();
    dbs.sort_unstable();
    dbs
}

/// A private temporary directory removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(prefix: &str) -> Result<Self> {
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..16 {
            let path = base.join(format!("{prefix}{}-{:016x}", std::process::id(), rand::rng().random::<u64>()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) => last = Some(e),
            }
        }
        let err = last.unwrap_or_else(|| std::io::Error::other("no attempt made"));
        Err(local(format!("creating a temporary directory in {}", base.display()), &err))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyspace() {
        let info = "# Keyspace\r\ndb0:keys=12,expires=3,avg_ttl=100\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n";
        assert_eq!(parse_keyspace(info), vec![(0, 12), (3, 1)]);
        assert!(parse_keyspace("# Keyspace\r\n").is_empty());
    }
}
