//! `strata backup`: an RDB snapshot of every master, with a manifest.
//!
//! For every master, `redis-cli --rdb FILE` makes the server produce a fresh RDB snapshot (a
//! BGSAVE streamed over the replication protocol, so it works on remote nodes whose filesystem
//! we cannot see) and writes it locally. The password travels in the `REDISCLI_AUTH`
//! environment variable, never on the command line. Each file is downloaded as `*.part` and
//! renamed when complete; `manifest.json` is written last (through a temporary file), so a
//! directory with a manifest always holds a complete backup. On failure the files of this run
//! are removed and no manifest is left. [`restore`](crate::restore) replays a backup.
//!
//! A backup holds every value of the cache, so it is private: a directory created here gets
//! mode 0700, and every file (`*.part`, `*.rdb`, `manifest.json`) is created 0600 before any byte
//! is written to it (an existing directory keeps its mode: choose where backups go).
//!
//! Each snapshot has a deadline ([`BackupOptions::timeout`], `--timeout-secs`): a master that
//! stops answering (paused, overloaded, partitioned) fails the backup with one clear line
//! instead of hanging it; `redis-cli` is killed and its partial file removed.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{OpsError, OpsErrorKind, Result};
use crate::target::{Deployment, Node};

/// Name of the manifest written into a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the manifest format written by this crate.
pub const MANIFEST_FORMAT: u32 = 1;

/// Masters backed up at the same time by default.
pub const DEFAULT_PARALLELISM: usize = 2;

/// Keys moved per pipelined batch by default.
pub const DEFAULT_BATCH: usize = 500;

/// Default deadline of one master's snapshot (10 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Mode of a backup directory created by [`backup`].
pub const DIR_MODE: u32 = 0o700;

/// Mode of every file written into a backup directory.
pub const FILE_MODE: u32 = 0o600;

/// The manifest of a backup directory (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// When the backup started (RFC 3339, UTC).
    pub created_at: String,
    /// When the backup started (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// Whether the source was a Redis Cluster.
    pub cluster: bool,
    /// One entry per master, sorted by node address.
    pub files: Vec<BackupFile>,
}

/// One RDB file of a backup: which node it came from and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// File name inside the backup directory (no directory part).
    pub file: String,
    /// `host:port` of the master it was taken from.
    pub node_addr: String,
    /// Cluster node id (None for a standalone server).
    pub node_id: Option<String>,
    /// Slot ranges (inclusive) the node served; empty for a standalone server.
    pub slots: Vec<(u16, u16)>,
    /// `DBSIZE` just before the snapshot (writes during the snapshot may make the file differ).
    pub keys: u64,
    /// File size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// `redis_version` of the node.
    pub redis_version: String,
    /// When the snapshot was requested (RFC 3339, UTC).
    pub taken_at: String,
    /// When the snapshot was requested (milliseconds since the Unix epoch).
    pub taken_unix_ms: u64,
}

/// Options of [`backup`].
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Directory receiving the RDB files and the manifest (created if missing).
    pub out: PathBuf,
    /// Overwrite a backup already in `out` (otherwise an error).
    pub force: bool,
    /// Masters snapshotted at the same time (at least 1).
    pub parallelism: usize,
    /// Longest one master's snapshot may take (connecting, INFO, and the RDB transfer); past it
    /// `redis-cli` is killed and the backup fails.
    pub timeout: Duration,
}

impl BackupOptions {
    /// Options writing into `out`, refusing an existing backup, [`DEFAULT_PARALLELISM`] at a time.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self { out: out.into(), force: false, parallelism: DEFAULT_PARALLELISM, timeout: DEFAULT_TIMEOUT }
    }
}

/// Takes an RDB snapshot of every master of `deployment` into `options.out` and writes the
/// manifest (returned). `progress` counts masters (its length is set here).
pub fn backup(deployment: &Deployment, options: &BackupOptions, progress: &ProgressBar) -> Result<Manifest> {
    let out = &options.out;
    let manifest_path = out.join(MANIFEST_FILE);
    if manifest_path.exists() && !options.force {
        return Err(OpsError::invalid(format!(
            "{} already holds a backup ({MANIFEST_FILE}); choose another directory or pass --force",
            out.display()
        )));
    }
    if options.timeout.is_zero() {
        return Err(OpsError::invalid("the snapshot timeout must be positive"));
    }
    let masters = deployment.masters_checked("backup")?;
    // Only the directories created here get 0700; an existing one keeps its owner's choice.
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(out)
        .map_err(|e| local(format!("creating {}", out.display()), &e))?;
    if manifest_path.exists() {
        // --force: the old manifest would describe files about to be overwritten.
        fs::remove_file(&manifest_path).map_err(|e| local(format!("removing {}", manifest_path.display()), &e))?;
    }
    let cli = strata_cluster::redis_cli()?;
    let created_unix_ms = now_ms();
    progress.set_length(masters.len() as u64);
    progress.set_position(0);

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<BackupFile>>>> = Mutex::new((0..masters.len()).map(|_| None).collect());
    let workers = options.parallelism.clamp(1, masters.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(node) = masters.get(i) else { break };
                    progress.set_message(format!("snapshot of {}", node.addr));
                    let result = backup_node(deployment, node, out, &cli, options.timeout);
                    let failed = result.is_err();
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(result);
                    }
                    progress.inc(1);
                    if failed {
                        // Stop handing out work: the backup fails anyway.
                        next.store(masters.len(), Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let results = results.into_inner().map_err(|_| local_msg("a backup worker panicked"))?;

    let mut files = Vec::new();
    let mut first_error = None;
    for result in results.into_iter().flatten() {
        match result {
            Ok(file) => files.push(file),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    if let Some(err) = first_error {
        for f in &files {
            let _ = fs::remove_file(out.join(&f.file));
        }
        return Err(err);
    }
    files.sort_by(|a, b| a.node_addr.cmp(&b.node_addr));
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        created_at: rfc3339(created_unix_ms),
        created_unix_ms,
        cluster: deployment.cluster,
        files,
    };
    write_manifest(out, &manifest)?;
    progress.finish_and_clear();
    Ok(manifest)
}

/// Snapshots one master into `out` with `redis-cli --rdb`, within `timeout`.
fn backup_node(deployment: &Deployment, node: &Node, out: &Path, cli: &Path, timeout: Duration) -> Result<BackupFile> {
    let addr = &node.addr;
    let deadline = Instant::now() + timeout;
    let mut con = deployment.connect(addr)?;
    // A paused master accepts the connection and never answers: bound INFO and DBSIZE too.
    let io_timeout = Some(timeout.min(Duration::from_secs(30)));
    con.set_read_timeout(io_timeout)
        .and_then(|()| con.set_write_timeout(io_timeout))
        .map_err(|e| OpsError::redis(addr, &e))?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).map_err(|e| OpsError::redis(addr, &e))?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let keys: u64 = redis::cmd("DBSIZE").query(&mut con).map_err(|e| OpsError::redis(addr, &e))?;
    drop(con);

    let (host, port) = split_addr(addr)?;
    let file = format!("{}-{port}.rdb", sanitize(host));
    let part = out.join(format!("{file}.part"));
    // Created 0600 before redis-cli writes a byte into it (redis-cli opens it with O_TRUNC,
    // which keeps the mode).
    create_private(&part)?;
    let taken_unix_ms = now_ms();
    let mut command = Command::new(cli);
    command.arg("-h").arg(host).arg("-p").arg(port.to_string());
    let credentials = deployment.credentials();
    if let Some(user) = &credentials.user {
        command.arg("--user").arg(user);
    }
    match &credentials.password {
        Some(password) => command.env("REDISCLI_AUTH", password),
        None => command.env_remove("REDISCLI_AUTH"),
    };
    command.arg("--rdb").arg(&part).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = match run_with_deadline(&mut command, cli, deadline) {
        Ok(Some(output)) => output,
        Ok(None) => {
            let _ = fs::remove_file(&part);
            return Err(OpsError::new(
                OpsErrorKind::Unreachable,
                format!(
                    "snapshot of {addr} did not finish within {} s (redis-cli --rdb killed); is the node \
                     paused or overloaded? raise --timeout-secs for very large datasets",
                    timeout.as_secs_f64()
                ),
            ));
        }
        Err(e) => {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
    };
    if !output.status.success() || !part.is_file() {
        let _ = fs::remove_file(&part);
        let text = format!("{}\n{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
        return Err(cli_failure(addr, &text, output.status));
    }
    let (size_bytes, sha256) = hash_file(&part)?;
    let dest = out.join(&file);
    fs::rename(&part, &dest).map_err(|e| local(format!("renaming {} to {}", part.display(), dest.display()), &e))?;
    Ok(BackupFile {
        file,
        node_addr: addr.clone(),
        node_id: node.id.clone(),
        slots: node.slots.clone(),
        keys,
        size_bytes,
        sha256,
        redis_version,
        taken_at: rfc3339(taken_unix_ms),
        taken_unix_ms,
    })
}

/// Creates (or truncates) `path` with mode [`FILE_MODE`], setting the mode of an existing file too.
fn create_private(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| local(format!("creating {}", path.display()), &e))?;
    // `mode` only applies to a new file: a leftover one keeps its bits otherwise.
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(|e| local(format!("setting the permissions of {}", path.display()), &e))?;
    Ok(file)
}

/// Runs `command` until it exits or `deadline` passes; then it is killed and `None` returned.
/// Its stdout and stderr are drained by threads, so a chatty child cannot block on a full pipe.
fn run_with_deadline(command: &mut Command, program: &Path, deadline: Instant) -> Result<Option<std::process::Output>> {
    let mut child = command.spawn().map_err(|e| local(format!("running {}", program.display()), &e))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(local(format!("waiting for {}", program.display()), &e));
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(status.map(|status| std::process::Output { status, stdout, stderr }))
}

/// One clear error from a failed `redis-cli --rdb`.
fn cli_failure(addr: &str, output: &str, status: std::process::ExitStatus) -> OpsError {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("sending REPLCONF") && !l.starts_with("SYNC sent"))
        .collect();
    let reason = if lines.is_empty() { format!("redis-cli exited with {status}") } else { lines.join("; ") };
    // redis-cli's output is the only trace of the failure (no `RedisError` to classify), so its
    // text is searched for the codes of a refusal.
    let upper = reason.to_uppercase();
    let kind = if ["NOAUTH", "WRONGPASS", "AUTH FAILED", "NOPERM"].iter().any(|c| upper.contains(c)) {
        OpsErrorKind::Auth
    } else if upper.contains("COULD NOT CONNECT") {
        OpsErrorKind::Unreachable
    } else {
        OpsErrorKind::Redis
    };
    OpsError::new(kind, format!("snapshot of {addr} failed (redis-cli --rdb): {reason}"))
}

/// Writes `manifest.json` atomically (temporary file, then rename).
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let text = serde_json::to_string_pretty(manifest).map_err(|e| local_msg(format!("encoding the manifest: {e}")))?;
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(FILE_MODE))?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        local(format!("writing {}", path.display()), &e)
    })
}

/// Reads and checks the manifest of the backup in `dir` (file names must be plain names).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    if !path.is_file() {
        return Err(OpsError::invalid(format!(
            "{} holds no backup ({MANIFEST_FILE} is missing); point --from at a directory written by `strata backup`",
            dir.display()
        )));
    }
    let text = fs::read_to_string(&path).map_err(|e| local(format!("reading {}", path.display()), &e))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| OpsError::invalid(format!("{} is not a valid backup manifest: {e}", path.display())))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(OpsError::invalid(format!(
            "{} has format {}, this version reads format {MANIFEST_FORMAT}",
            path.display(),
            manifest.format
        )));
    }
    for f in &manifest.files {
        let plain = Path::new(&f.file).file_name().is_some_and(|n| n == f.file.as_str());
        if !plain || f.file.starts_with('.') {
            return Err(OpsError::invalid(format!("{} names an invalid file {:?}", path.display(), f.file)));
        }
    }
    Ok(manifest)
}

/// Checks that every file of `manifest` in `dir` exists with the recorded size and SHA-256.
pub fn verify(dir: &Path, manifest: &Manifest) -> Result<()> {
    for f in &manifest.files {
        let path = dir.join(&f.file);
        if !path.is_file() {
            return Err(OpsError::invalid(format!("backup file {} is missing", path.display())));
        }
        let (size, sha) = hash_file(&path)?;
        if size != f.size_bytes || sha != f.sha256 {
            return Err(OpsError::invalid(format!(
                "backup file {} is corrupt or was modified (SHA-256 {sha}, manifest says {}); restore refused",
                path.display(),
                f.sha256
            )));
        }
    }
    Ok(())
}

/// Size and SHA-256 (lowercase hex) of a file, read in chunks.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| local(format!("opening {}", path.display()), &e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| local(format!("reading {}", path.display()), &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, format!("{:x}", hasher.finalize())))
}

pub(crate) fn split_addr(addr: &str) -> Result<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| OpsError::invalid(format!("invalid address {addr:?}")))?;
    let port = port.parse().map_err(|_| OpsError::invalid(format!("invalid port in {addr:?}")))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// A host name usable in a file name.
pub(crate) fn sanitize(host: &str) -> String {
    host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

pub(crate) fn now_ms() -> u64 {
    strata::unix_ms_now()
}

pub(crate) use strata::rfc3339;

pub(crate) fn local(what: String, err: &std::io::Error) -> OpsError {
    OpsError::new(OpsErrorKind::Local, format!("{what}: {err}"))
}

pub(crate) fn local_msg(what: impl Into<String>) -> OpsError {
    OpsError::new(OpsErrorKind::Local, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(sanitize("10.0.0.1"), "10.0.0.1");
        assert_eq!(sanitize("::1"), "__1");
        assert_eq!(split_addr("[::1]:7000").ok(), Some(("::1", 7000)));
        assert!(split_addr("nohost").is_err());
    }

    #[test]
    fn manifest_rejects_paths_and_missing_files() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("strata-manifest-test-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| local("mkdir".into(), &e))?;
        assert!(read_manifest(&dir).is_err_and(|e| e.is_invalid_input()));
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT,
            created_at: rfc3339(0),
            created_unix_ms: 0,
            cluster: false,
            files: vec![BackupFile {
                file: "../etc/passwd".into(),
                node_addr: "127.0.0.1:1".into(),
                node_id: None,
                slots: vec![],
                keys: 0,
                size_bytes: 0,
                sha256: String::new(),
                redis_version: "7.0".into(),
                taken_at: rfc3339(0),
                taken_unix_ms: 0,
            }],
        };
        write_manifest(&dir, &manifest)?;
        assert!(read_manifest(&dir).is_err_and(|e| e.is_invalid_input()));
        manifest.files[0].file = "a.rdb".into();
        write_manifest(&dir, &manifest)?;
        let read = read_manifest(&dir)?;
        assert_eq!(read, manifest);
        assert!(verify(&dir, &read).is_err_and(|e| e.is_invalid_input()));
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
