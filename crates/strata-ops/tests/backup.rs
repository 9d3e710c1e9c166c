//! Backup and restore against real Redis: a 3+3 cluster (with an ACL user) is backed up, then
//! restored into a 4-master cluster with another slot layout and into a standalone server.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use strata_cluster::{RedisCluster, RedisServer};
use strata_ops::backup::{self, BackupOptions, MANIFEST_FILE, Manifest};
use strata_ops::restore::{self, RestoreOptions};
use strata_ops::{Credentials, Deployment};

const KEYS: usize = 2_000;

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Hash(HashMap<String, String>),
    List(Vec<String>),
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    value: Value,
    /// TTL set at write time, in ms (None: no TTL).
    ttl_ms: Option<i64>,
}

/// 2,000 keys spread over all slots: strings, hashes and lists; no TTL, minutes, or hours.
fn dataset() -> Vec<Entry> {
    (0..KEYS)
        .map(|i| {
            let value = match i % 3 {
                0 => Value::Str(format!("value-{i}-{}", "x".repeat(i % 50))),
                1 => Value::Hash((0..1 + i % 5).map(|f| (format!("f{f}"), format!("{i}:{f}"))).collect()),
                _ => Value::List((0..1 + i % 7).map(|n| format!("item-{i}-{n}")).collect()),
            };
            let ttl_ms = match i % 5 {
                0 | 1 => None,
                2 | 3 => Some((2 + (i % 30) as i64) * 60_000),
                _ => Some((2 + (i % 10) as i64) * 3_600_000),
            };
            Entry { key: format!("app:v1:item:{i}"), value, ttl_ms }
        })
        .collect()
}

fn write_cmds(e: &Entry) -> Vec<redis::Cmd> {
    let write = match &e.value {
        Value::Str(s) => {
            let mut c = redis::cmd("SET");
            c.arg(&e.key).arg(s);
            c
        }
        Value::Hash(h) => {
            let mut c = redis::cmd("HSET");
            c.arg(&e.key);
            for (f, v) in h {
                c.arg(f).arg(v);
            }
            c
        }
        Value::List(l) => {
            let mut c = redis::cmd("RPUSH");
            c.arg(&e.key).arg(l);
            c
        }
    };
    let mut cmds = vec![write];
    if let Some(ttl) = e.ttl_ms {
        let mut c = redis::cmd("PEXPIRE");
        c.arg(&e.key).arg(ttl);
        cmds.push(c);
    }
    cmds
}

fn cluster_connection(urls: Vec<String>) -> redis::cluster::ClusterConnection {
    redis::cluster::ClusterClient::new(urls).expect("cluster client").get_connection().expect("cluster connection")
}

fn seed_cluster(con: &mut redis::cluster::ClusterConnection, data: &[Entry]) {
    for chunk in data.chunks(200) {
        let mut pipe = redis::cluster::cluster_pipe();
        for e in chunk {
            for c in write_cmds(e) {
                pipe.add_command(c).ignore();
            }
        }
        pipe.exec(con).expect("seeding the source");
    }
}

/// Reads back every key's type, value and PTTL through any connection type.
trait Reader {
    fn read(&mut self, cmds: Vec<redis::Cmd>) -> Vec<redis::Value>;
}

impl Reader for redis::cluster::ClusterConnection {
    fn read(&mut self, cmds: Vec<redis::Cmd>) -> Vec<redis::Value> {
        let mut pipe = redis::cluster::cluster_pipe();
        for c in cmds {
            pipe.add_command(c);
        }
        pipe.query(self).expect("cluster read")
    }
}

impl Reader for redis::Connection {
    fn read(&mut self, cmds: Vec<redis::Cmd>) -> Vec<redis::Value> {
        let mut pipe = redis::pipe();
        for c in cmds {
            pipe.add_command(c);
        }
        pipe.query(self).expect("read")
    }
}

/// Asserts every key, its type, value and TTL (TTLs within `elapsed` + 3 s of the original).
fn assert_restored(con: &mut impl Reader, data: &[Entry], written: Instant) {
    for chunk in data.chunks(250) {
        let mut cmds = Vec::new();
        for e in chunk {
            let mut t = redis::cmd("TYPE");
            t.arg(&e.key);
            let mut p = redis::cmd("PTTL");
            p.arg(&e.key);
            let mut v = match e.value {
                Value::Str(_) => redis::cmd("GET"),
                Value::Hash(_) => redis::cmd("HGETALL"),
                Value::List(_) => redis::cmd("LRANGE"),
            };
            v.arg(&e.key);
            if matches!(e.value, Value::List(_)) {
                v.arg(0).arg(-1);
            }
            cmds.extend([t, p, v]);
        }
        let elapsed = written.elapsed().as_millis() as i64;
        let values = con.read(cmds);
        for (e, got) in chunk.iter().zip(values.chunks(3)) {
            let ty: String = redis::from_redis_value_ref(&got[0]).expect("TYPE");
            let pttl: i64 = redis::from_redis_value_ref(&got[1]).expect("PTTL");
            let want_type = match e.value {
                Value::Str(_) => "string",
                Value::Hash(_) => "hash",
                Value::List(_) => "list",
            };
            assert_eq!(ty, want_type, "type of {}", e.key);
            let value = match e.value {
                Value::Str(_) => Value::Str(redis::from_redis_value_ref(&got[2]).expect("GET")),
                Value::Hash(_) => Value::Hash(redis::from_redis_value_ref(&got[2]).expect("HGETALL")),
                Value::List(_) => Value::List(redis::from_redis_value_ref(&got[2]).expect("LRANGE")),
            };
            assert_eq!(value, e.value, "value of {}", e.key);
            match e.ttl_ms {
                None => assert_eq!(pttl, -1, "{} must have no TTL", e.key),
                Some(ttl) => assert!(
                    pttl <= ttl && pttl >= ttl - elapsed - 3_000,
                    "{}: PTTL {pttl} ms, written with {ttl} ms {elapsed} ms ago",
                    e.key
                ),
            }
        }
    }
}

fn sha256_hex(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).expect("read backup file")))
}

fn check_manifest(m: &Manifest, dir: &Path, masters: usize, keys: usize) {
    assert_eq!(m.format, backup::MANIFEST_FORMAT);
    assert!(m.cluster);
    assert_eq!(m.files.len(), masters);
    let mut ranges: Vec<(u16, u16)> = m.files.iter().flat_map(|f| f.slots.iter().copied()).collect();
    ranges.sort_unstable();
    let mut next = 0u32;
    for (a, b) in ranges {
        assert_eq!(u32::from(a), next, "slots must be contiguous and disjoint");
        next = u32::from(b) + 1;
    }
    assert_eq!(next, 16_384, "slots must cover 0..=16383");
    assert_eq!(m.files.iter().map(|f| f.keys).sum::<u64>(), keys as u64);
    for f in &m.files {
        let path = dir.join(&f.file);
        assert_eq!(sha256_hex(&path), f.sha256, "hash of {}", f.file);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), f.size_bytes);
        assert!(f.node_id.as_deref().is_some_and(|id| id.len() == 40), "node id {:?}", f.node_id);
        assert!(f.redis_version.starts_with(|c: char| c.is_ascii_digit()), "version {}", f.redis_version);
        assert!(f.taken_at.ends_with('Z'));
    }
    let on_disk: Manifest =
        serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST_FILE)).expect("manifest")).expect("json");
    assert_eq!(&on_disk, m);
}

#[test]
fn cluster_backup_restores_into_other_layouts() {
    let started = Instant::now();
    let data = dataset();
    // The source uses an ACL user: redis-cli gets it through --user and REDISCLI_AUTH.
    let source = RedisCluster::builder()
        .masters(3)
        .replicas(1)
        .acl_user("backup-admin", "s3cret-Pa55")
        .start()
        .expect("source cluster");
    let mut con = cluster_connection(source.seed_urls());
    seed_cluster(&mut con, &data);
    let written = Instant::now();
    let deployment = Deployment::discover(&source.seed_urls()[0], &Credentials::default()).expect("discover source");

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("backup");
    let manifest = backup::backup(&deployment, &BackupOptions::new(&dir), &ProgressBar::hidden()).expect("backup");
    check_manifest(&manifest, &dir, 3, KEYS);
    assert!(
        !std::fs::read_dir(&dir).expect("ls").any(|e| e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .ends_with(".part"))
    );

    // A second backup into the same directory is refused unless forced.
    let err = backup::backup(&deployment, &BackupOptions::new(&dir), &ProgressBar::hidden()).expect_err("refused");
    assert!(err.is_invalid_input() && err.to_string().contains("--force"), "{err}");
    let forced = BackupOptions { force: true, ..BackupOptions::new(&dir) };
    let again = backup::backup(&deployment, &forced, &ProgressBar::hidden()).expect("forced backup");
    check_manifest(&again, &dir, 3, KEYS);
    drop(con);
    drop(source);

    // A new cluster with another slot layout (4 masters).
    let target = RedisCluster::builder().masters(4).replicas(0).start().expect("target cluster");
    let target_dep = Deployment::discover(&target.seed_urls()[0], &Credentials::default()).expect("discover target");
    let report = restore::restore(&target_dep, &RestoreOptions::new(&dir), &ProgressBar::hidden()).expect("restore");
    assert_eq!(report.files, 3);
    assert_eq!(report.keys_restored, KEYS as u64);
    assert_eq!((report.skipped_existing, report.skipped_expired), (0, 0));
    let mut tcon = cluster_connection(target.seed_urls());
    assert_restored(&mut tcon, &data, written);

    // Again without --replace: everything exists already.
    let report = restore::restore(&target_dep, &RestoreOptions::new(&dir), &ProgressBar::hidden()).expect("restore 2");
    assert_eq!((report.keys_restored, report.skipped_existing), (0, KEYS as u64));

    // Damage some keys, then restore with --replace: they are overwritten.
    for e in data.iter().take(50) {
        let _: () = redis::cmd("SET").arg(&e.key).arg("changed").query(&mut tcon).expect("SET");
    }
    let replace = RestoreOptions { replace: true, ..RestoreOptions::new(&dir) };
    let report = restore::restore(&target_dep, &replace, &ProgressBar::hidden()).expect("restore --replace");
    assert_eq!((report.keys_restored, report.skipped_existing), (KEYS as u64, 0));
    assert_restored(&mut tcon, &data, written);
    drop(tcon);
    drop(target);

    // A standalone server works too.
    let server = RedisServer::start().expect("standalone target");
    let server_dep = Deployment::discover(&server.url(), &Credentials::default()).expect("discover standalone");
    let report = restore::restore(&server_dep, &RestoreOptions::new(&dir), &ProgressBar::hidden()).expect("restore");
    assert_eq!(report.keys_restored, KEYS as u64);
    assert_restored(&mut server.connection().expect("connection"), &data, written);
    eprintln!("cluster_backup_restores_into_other_layouts took {:?}", started.elapsed());
}

#[test]
fn expired_keys_are_skipped_and_tampering_is_refused() {
    let source = RedisServer::start().expect("source");
    let mut con = source.connection().expect("connection");
    for i in 0..5 {
        let _: () = redis::cmd("SET").arg(format!("keep:{i}")).arg(i).query(&mut con).expect("SET");
        let _: () =
            redis::cmd("SET").arg(format!("short:{i}")).arg(i).arg("PX").arg(1_500).query(&mut con).expect("SET");
    }
    let _: () = redis::cmd("SELECT").arg(2).query(&mut con).expect("SELECT");
    let _: () = redis::cmd("SET").arg("other-db").arg("x").query(&mut con).expect("SET");
    let deployment = Deployment::discover(&source.url(), &Credentials::default()).expect("discover");
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifest =
        backup::backup(&deployment, &BackupOptions::new(tmp.path()), &ProgressBar::hidden()).expect("backup");
    assert!(!manifest.cluster);
    assert_eq!(manifest.files.len(), 1);
    assert_eq!(manifest.files[0].keys, 10, "DBSIZE of db 0");
    assert!(manifest.files[0].slots.is_empty());
    std::thread::sleep(Duration::from_millis(1_700));

    let target = RedisServer::start().expect("target");
    let target_dep = Deployment::discover(&target.url(), &Credentials::default()).expect("discover");
    let report =
        restore::restore(&target_dep, &RestoreOptions::new(tmp.path()), &ProgressBar::hidden()).expect("restore");
    assert_eq!(report.keys_restored, 6, "{report:?}");
    assert_eq!(report.skipped_expired, 5, "{report:?}");
    let mut tcon = target.connection().expect("connection");
    let keep: Option<String> = redis::cmd("GET").arg("keep:3").query(&mut tcon).expect("GET");
    assert_eq!(keep.as_deref(), Some("3"));
    let _: () = redis::cmd("SELECT").arg(2).query(&mut tcon).expect("SELECT");
    let other: Option<String> = redis::cmd("GET").arg("other-db").query(&mut tcon).expect("GET");
    assert_eq!(other.as_deref(), Some("x"), "keys of other databases come back in the same database");

    // A cluster only has database 0: the file is refused before any of its keys is moved.
    let cluster = RedisCluster::builder().masters(3).replicas(0).start().expect("cluster");
    let cluster_dep = Deployment::discover(&cluster.seed_urls()[0], &Credentials::default()).expect("discover");
    let err = restore::restore(&cluster_dep, &RestoreOptions::new(tmp.path()), &ProgressBar::hidden())
        .expect_err("database 2 cannot go into a cluster");
    assert!(err.is_invalid_input() && err.to_string().contains("database 2"), "{err}");
    let mut ccon = cluster_connection(cluster.seed_urls());
    let exists: bool = redis::cmd("EXISTS").arg("keep:3").query(&mut ccon).expect("EXISTS");
    assert!(!exists, "nothing restored");
    drop(ccon);
    drop(cluster);

    // One flipped byte: the restore is refused before anything is written.
    let file = tmp.path().join(&manifest.files[0].file);
    let mut bytes = std::fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).expect("write");
    let empty = RedisServer::start().expect("empty target");
    let empty_dep = Deployment::discover(&empty.url(), &Credentials::default()).expect("discover");
    let err =
        restore::restore(&empty_dep, &RestoreOptions::new(tmp.path()), &ProgressBar::hidden()).expect_err("tampered");
    assert!(err.is_invalid_input() && err.to_string().contains("SHA-256"), "{err}");
    let size: u64 = redis::cmd("DBSIZE").query(&mut empty.connection().expect("connection")).expect("DBSIZE");
    assert_eq!(size, 0);
}

#[test]
fn failed_backup_leaves_no_manifest() {
    let mut server = RedisServer::start().expect("server");
    let deployment = Deployment::discover(&server.url(), &Credentials::default()).expect("discover");
    server.node_mut().kill().expect("kill");
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = backup::backup(&deployment, &BackupOptions::new(tmp.path()), &ProgressBar::hidden()).expect_err("fails");
    assert!(err.is_unreachable(), "{err}");
    assert!(!err.to_string().contains('\n'));
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0, "nothing left behind");

    let err = restore::restore(&deployment, &RestoreOptions::new(tmp.path()), &ProgressBar::hidden())
        .expect_err("no manifest");
    assert!(err.is_invalid_input() && err.to_string().contains(MANIFEST_FILE), "{err}");
}

#[test]
fn backups_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = RedisServer::start().expect("server");
    redis::cmd("SET").arg("app:v1:secret:1").arg("card").exec(&mut server.connection().expect("con")).expect("SET");
    let deployment = Deployment::discover(&server.url(), &Credentials::default()).expect("discover");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nested").join("backup");
    let manifest = backup::backup(&deployment, &BackupOptions::new(&dir), &ProgressBar::hidden()).expect("backup");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "a backup directory is private");
    assert_eq!(mode(&tmp.path().join("nested")), 0o700, "created parents too");
    assert_eq!(mode(&dir.join(MANIFEST_FILE)), 0o600);
    assert_eq!(mode(&dir.join(&manifest.files[0].file)), 0o600);

    // Forced over a loosened backup: the files are tightened again.
    for name in [MANIFEST_FILE.to_owned(), manifest.files[0].file.clone()] {
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let forced = BackupOptions { force: true, ..BackupOptions::new(&dir) };
    let manifest = backup::backup(&deployment, &forced, &ProgressBar::hidden()).expect("forced backup");
    assert_eq!(mode(&dir.join(MANIFEST_FILE)), 0o600);
    assert_eq!(mode(&dir.join(&manifest.files[0].file)), 0o600);
}

/// A paused (SIGSTOPped) master fails the backup within its deadline, with one clear line.
#[test]
fn a_hung_master_fails_the_backup_in_time() {
    let server = RedisServer::start().expect("server");
    let deployment = Deployment::discover(&server.url(), &Credentials::default()).expect("discover");
    server.node().pause().expect("SIGSTOP");
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = BackupOptions { timeout: Duration::from_secs(2), ..BackupOptions::new(tmp.path()) };
    let started = Instant::now();
    let result = backup::backup(&deployment, &options, &ProgressBar::hidden());
    let took = started.elapsed();
    server.node().resume().expect("SIGCONT");
    let err = result.expect_err("a paused master cannot be backed up");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.is_unreachable(), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0, "nothing left behind");
}

/// `redis-cli --rdb` itself hangs (the master holds the transfer back): it is killed at the
/// deadline, its partial file removed.
#[test]
fn a_stalled_snapshot_is_killed_at_the_deadline() {
    // Diskless sync waits this long for more replicas before it starts the transfer.
    let server = RedisServer::builder()
        .config_line("repl-diskless-sync yes")
        .config_line("repl-diskless-sync-delay 60")
        .start()
        .expect("server");
    let deployment = Deployment::discover(&server.url(), &Credentials::default()).expect("discover");
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = BackupOptions { timeout: Duration::from_secs(2), ..BackupOptions::new(tmp.path()) };
    let started = Instant::now();
    let err = backup::backup(&deployment, &options, &ProgressBar::hidden()).expect_err("stalled");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "took {took:?}");
    let text = err.to_string();
    assert!(text.contains("did not finish within 2 s") && text.contains("--timeout-secs"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0, "no .part left behind");
}
