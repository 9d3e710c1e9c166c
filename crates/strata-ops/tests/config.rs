//! `strata config` against a real `redis-server`: every generated file is loaded by Redis 7,
//! the `maxmemory-policy` is the workload's, and the ACL roles allow and deny what they say.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};
use strata_ops::config::{
    self, ACL_USERS, CREDENTIALS, ConfigOptions, REDIS_CONF, REPLICATION_CONF, RenderedConfig, Secrets, USERS_ACL,
    Workload,
};
use tempfile::TempDir;

/// A `redis-server` started from a generated config; SIGKILLed and reaped on drop (also on panic).
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    /// Starts `redis-server <conf_dir>/redis.conf` with command-line overrides for the port, bind
    /// address, data directory and log file, and waits until it answers.
    fn start(conf_dir: &Path, data_dir: &Path, cluster: bool, extra: &[&str]) -> Server {
        let binary = strata_cluster::redis_server().expect("redis-server is installed");
        let port = strata_cluster::free_port().expect("free port");
        let log = data_dir.join("redis.log");
        let mut cmd = Command::new(binary);
        cmd.arg(conf_dir.join(REDIS_CONF))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(data_dir)
            .arg("--logfile")
            .arg(&log);
        if cluster {
            // The default bus port (port + 10000) may not exist for a high free port.
            let bus = strata_cluster::free_port().expect("free bus port");
            cmd.args(["--cluster-port", &bus.to_string()]);
        }
        cmd.args(extra);
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        let mut server = Server { child, port, log };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("redis-server exited ({status}): {}", self.log_tail());
            }
            // Without credentials, an answer (NOAUTH) proves the server is up and serving.
            if let Ok(mut con) = self.connect_raw(None) {
                let reply: RedisResult<String> = redis::cmd("PING").query(&mut con);
                match reply {
                    Ok(_) => return,
                    Err(e) if !e.is_io_error() && !e.to_string().contains("LOADING") => return,
                    Err(_) => {}
                }
            }
            assert!(Instant::now() < deadline, "redis-server not ready in time: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn connect_raw(&self, auth: Option<(&str, &str)>) -> RedisResult<Connection> {
        let url = match auth {
            Some((user, password)) => format!("redis://{user}:{password}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        };
        redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))
    }

    fn connect(&self, rendered: &RenderedConfig, user: &str) -> Connection {
        let password = rendered.password(user).expect("generated password");
        self.connect_raw(Some((user, password))).unwrap_or_else(|e| panic!("log in as {user}: {e}"))
    }

    /// Waits for the process to exit by itself (after SHUTDOWN).
    fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "redis-server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renders and writes a config whose paths point into a temporary directory.
fn generate(workload: Workload, cluster: bool) -> (TempDir, PathBuf, PathBuf, RenderedConfig) {
    let root = tempfile::tempdir().expect("tempdir");
    let conf_dir = root.path().join("conf");
    let data_dir = root.path().join("data");
    fs::create_dir_all(&data_dir).expect("data dir");
    let mut options = ConfigOptions::new(workload);
    options.cluster = cluster;
    options.conf_dir = conf_dir.clone();
    options.data_dir = data_dir.clone();
    options.maxmemory = "64mb".into();
    let rendered = config::render(&options).expect("render");
    rendered.write_to(&conf_dir, false).expect("write");
    (root, conf_dir, data_dir, rendered)
}

fn query<T: redis::FromRedisValue>(con: &mut Connection, args: &[&str]) -> RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con)
}

fn ok(con: &mut Connection, args: &[&str]) {
    if let Err(e) = query::<redis::Value>(con, args) {
        panic!("{args:?} should be allowed: {e}");
    }
}

/// The command must fail with `code` (NOPERM, NOAUTH ...) in its error.
fn denied(con: &mut Connection, args: &[&str], code: &str) {
    match query::<redis::Value>(con, args) {
        Ok(v) => panic!("{args:?} should be denied, got {v:?}"),
        Err(e) => assert!(has_code(&e, code), "{args:?}: expected {code}, got {e}"),
    }
}

/// Whether `err` carries `code` (redis-rs renders codes in its own case: `NoPerm: ...`).
fn has_code(err: &redis::RedisError, code: &str) -> bool {
    err.to_string().to_uppercase().contains(&code.to_uppercase())
}

fn config_get(con: &mut Connection, name: &str) -> String {
    let pair: Vec<String> = query(con, &["CONFIG", "GET", name]).expect("CONFIG GET");
    pair.get(1).cloned().unwrap_or_default()
}

/// Starts a server for `workload` and checks the policy and every ACL role.
fn check_workload(workload: Workload) {
    let (_root, conf_dir, data_dir, rendered) = generate(workload, false);
    let server = Server::start(&conf_dir, &data_dir, false, &[]);

    let mut admin = server.connect(&rendered, "admin");
    assert_eq!(config_get(&mut admin, "maxmemory-policy"), workload.maxmemory_policy());
    assert_eq!(config_get(&mut admin, "maxmemory"), (64u64 << 20).to_string());
    assert_eq!(config_get(&mut admin, "appendonly"), if workload.persistent() { "yes" } else { "no" });
    assert_eq!(config_get(&mut admin, "save").is_empty(), !workload.persistent());
    assert_eq!(config_get(&mut admin, "lazyfree-lazy-eviction"), "yes");
    assert_eq!(config_get(&mut admin, "maxmemory-samples"), "10");
    let users: Vec<String> = query(&mut admin, &["ACL", "USERS"]).expect("ACL USERS");
    for user in ACL_USERS.iter().chain(&["default"]) {
        assert!(users.iter().any(|u| u == user), "{user} missing from {users:?}");
    }
    // replication.conf was included.
    assert_eq!(config_get(&mut admin, "masteruser"), config::REPLICATION_USER);

    // The default user is off: a client that does not log in can run nothing.
    let mut anonymous = server.connect_raw(None).expect("connect");
    denied(&mut anonymous, &["GET", "app:x"], "NOAUTH");
    denied(&mut anonymous, &["PING"], "NOAUTH");
    // A wrong password is refused.
    match server.connect_raw(Some(("app", "not-the-password"))) {
        Ok(_) => panic!("a wrong password was accepted"),
        Err(e) => assert_eq!(e.kind(), redis::ErrorKind::AuthenticationFailed, "{e}"),
    }

    let mut app = server.connect(&rendered, "app");
    ok(&mut app, &["SET", "app:x", "1", "EX", "60"]);
    let got: String = query(&mut app, &["GET", "app:x"]).expect("GET");
    assert_eq!(got, "1");
    ok(&mut app, &["UNLINK", "app:y"]);
    ok(&mut app, &["PUBLISH", "strata:invalidate", "app:x"]);
    ok(&mut app, &["EVAL", "return redis.call('GET', KEYS[1])", "1", "app:x"]);
    // Lease keys (`{key}:lease`, hash-tagged) and the scripts that touch a key and its lease.
    ok(&mut app, &["SET", "{app:v1:user:1}:lease", "token", "NX", "PX", "10000"]);
    ok(
        &mut app,
        &["EVAL", "return redis.call('DEL', KEYS[1], KEYS[2])", "2", "app:v1:user:1", "{app:v1:user:1}:lease"],
    );
    ok(&mut app, &["SCRIPT", "LOAD", "return 1"]);
    ok(&mut app, &["EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"]);
    // The schema key: readable, not writable (only operators bump it).
    ok(&mut admin, &["SET", "strata:schema:app", "2"]);
    let version: String = query(&mut app, &["GET", "strata:schema:app"]).expect("GET schema");
    assert_eq!(version, "2");
    denied(&mut app, &["SET", "strata:schema:app", "3"], "NOPERM");
    denied(&mut app, &["GET", "strata:schema:other"], "NOPERM");
    denied(&mut app, &["SET", "{other:v1:user:1}:lease", "token"], "NOPERM");
    denied(&mut app, &["SET", "other:x", "1"], "NOPERM");
    denied(&mut app, &["GET", "other:x"], "NOPERM");
    denied(&mut app, &["EVAL", "return redis.call('GET', KEYS[1])", "1", "other:x"], "NOPERM");
    denied(&mut app, &["PUBLISH", "other", "x"], "NOPERM");
    denied(&mut app, &["FLUSHALL"], "NOPERM");
    denied(&mut app, &["FLUSHDB"], "NOPERM");
    denied(&mut app, &["CONFIG", "SET", "maxmemory", "1"], "NOPERM");
    denied(&mut app, &["CONFIG", "GET", "maxmemory"], "NOPERM");
    denied(&mut app, &["KEYS", "*"], "NOPERM");
    denied(&mut app, &["SHUTDOWN"], "NOPERM");
    denied(&mut app, &["ACL", "SETUSER", "evil", "on", ">x", "+@all", "~*"], "NOPERM");
    denied(&mut app, &["MONITOR"], "NOPERM");
    // DEBUG is refused before the ACL check: `enable-debug-command no` disables it for everyone.
    denied(&mut app, &["DEBUG", "SLEEP", "0"], "DEBUG command not allowed");
    denied(&mut admin, &["DEBUG", "SLEEP", "0"], "DEBUG command not allowed");

    let mut readonly = server.connect(&rendered, "readonly");
    let got: String = query(&mut readonly, &["GET", "app:x"]).expect("readonly GET");
    assert_eq!(got, "1");
    ok(&mut readonly, &["TTL", "app:x"]);
    ok(&mut readonly, &["PTTL", "{app:v1:user:1}:lease"]);
    ok(&mut readonly, &["GET", "strata:schema:app"]);
    denied(&mut readonly, &["SET", "{app:v1:user:1}:lease", "2"], "NOPERM");
    denied(&mut readonly, &["SET", "app:x", "2"], "NOPERM");
    denied(&mut readonly, &["DEL", "app:x"], "NOPERM");
    denied(&mut readonly, &["GET", "other:x"], "NOPERM");
    denied(&mut readonly, &["KEYS", "*"], "NOPERM");

    let mut metrics = server.connect(&rendered, "metrics");
    let info: String = query(&mut metrics, &["INFO", "memory"]).expect("metrics INFO");
    assert!(info.contains("used_memory:"));
    ok(&mut metrics, &["PING"]);
    ok(&mut metrics, &["SLOWLOG", "GET", "10"]);
    ok(&mut metrics, &["LATENCY", "LATEST"]);
    denied(&mut metrics, &["GET", "app:x"], "NOPERM");
    denied(&mut metrics, &["SET", "app:x", "2"], "NOPERM");
    denied(&mut metrics, &["CONFIG", "GET", "masterauth"], "NOPERM");
    denied(&mut metrics, &["SLOWLOG", "RESET"], "NOPERM");

    let mut replica = server.connect(&rendered, "replica");
    denied(&mut replica, &["GET", "app:x"], "NOPERM");
    denied(&mut replica, &["INFO"], "NOPERM");

    ok(&mut admin, &["CONFIG", "GET", "maxmemory-policy"]);
    ok(&mut admin, &["SET", "other:x", "1"]);
}

#[test]
fn app_role_runs_on_real_redis_with_its_acl() {
    check_workload(Workload::App);
}

#[test]
fn cache_only_role_runs_on_real_redis_with_its_acl() {
    check_workload(Workload::CacheOnly);
}

#[test]
fn session_role_runs_on_real_redis_with_its_acl() {
    check_workload(Workload::Session);
}

#[test]
fn session_data_survives_a_restart() {
    let (_root, conf_dir, data_dir, rendered) = generate(Workload::Session, false);
    let mut server = Server::start(&conf_dir, &data_dir, false, &[]);
    let mut app = server.connect(&rendered, "app");
    ok(&mut app, &["SET", "app:session:1", "alice", "EX", "3600"]);
    ok(&mut app, &["SET", "app:session:2", "bob", "PX", "1"]);
    std::thread::sleep(Duration::from_millis(5));
    let mut admin = server.connect(&rendered, "admin");
    // SHUTDOWN closes the connection; the answer (if any) does not matter.
    let _ = query::<redis::Value>(&mut admin, &["SHUTDOWN"]);
    server.wait_exit();
    drop(server);

    let server = Server::start(&conf_dir, &data_dir, false, &[]);
    let mut app = server.connect(&rendered, "app");
    let value: Option<String> = query(&mut app, &["GET", "app:session:1"]).expect("GET");
    assert_eq!(value.as_deref(), Some("alice"), "the AOF did not bring the session back");
    let ttl: i64 = query(&mut app, &["TTL", "app:session:1"]).expect("TTL");
    assert!((3500..=3600).contains(&ttl), "TTL {ttl}");
    let expired: Option<String> = query(&mut app, &["GET", "app:session:2"]).expect("GET");
    assert_eq!(expired, None, "an expired session came back");
}

#[test]
fn a_replica_syncs_as_the_replica_user() {
    let (root, conf_dir, data_dir, rendered) = generate(Workload::App, false);
    // No 5 s wait for more replicas to share the diskless transfer (the production default).
    let master = Server::start(&conf_dir, &data_dir, false, &["--repl-diskless-sync-delay", "0"]);
    let mut app = master.connect(&rendered, "app");
    ok(&mut app, &["SET", "app:replicated", "yes", "EX", "60"]);

    // Same files, its own data directory, replicating from the master: it logs in with
    // masteruser/masterauth from replication.conf while the default user is disabled.
    let replica_dir = root.path().join("replica");
    fs::create_dir_all(&replica_dir).expect("replica dir");
    let master_port = master.port.to_string();
    let replica = Server::start(&conf_dir, &replica_dir, false, &["--replicaof", "127.0.0.1", &master_port]);
    let mut readonly = replica.connect(&rendered, "readonly");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value: Option<String> = query(&mut readonly, &["GET", "app:replicated"]).expect("GET on the replica");
        if value.as_deref() == Some("yes") {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never synced: {}", replica.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut metrics = replica.connect(&rendered, "metrics");
    let info: String = query(&mut metrics, &["INFO", "replication"]).expect("INFO");
    assert!(info.contains("master_link_status:up"), "{info}");
}

#[test]
fn cluster_config_starts_in_cluster_mode() {
    let (_root, conf_dir, data_dir, rendered) = generate(Workload::App, true);
    let server = Server::start(&conf_dir, &data_dir, true, &[]);
    let mut metrics = server.connect(&rendered, "metrics");
    let info: String = query(&mut metrics, &["CLUSTER", "INFO"]).expect("CLUSTER INFO");
    assert!(info.contains("cluster_state:"), "{info}");
    let nodes: String = query(&mut metrics, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
    assert!(nodes.contains("myself,master"), "{nodes}");
    let mut admin = server.connect(&rendered, "admin");
    assert_eq!(config_get(&mut admin, "cluster-require-full-coverage"), "no");
    assert_eq!(config_get(&mut admin, "cluster-allow-reads-when-down"), "no");
    assert_eq!(config_get(&mut admin, "cluster-node-timeout"), "5000");
    // The app user can discover the topology (cluster clients need it) but not change it.
    ok(&mut server.connect(&rendered, "app"), &["CLUSTER", "SLOTS"]);
    denied(&mut server.connect(&rendered, "app"), &["CLUSTER", "RESET"], "NOPERM");
    assert!(data_dir.join("nodes-6379.conf").exists(), "cluster state file not in the data directory");
}

#[test]
fn secret_files_are_0600_and_never_overwritten_silently() {
    let (_root, conf_dir, _data_dir, rendered) = generate(Workload::App, false);
    let mode = |name: &str| fs::metadata(conf_dir.join(name)).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(CREDENTIALS), 0o600);
    assert_eq!(mode(REPLICATION_CONF), 0o600);
    assert_eq!(mode(USERS_ACL), 0o600);
    assert_eq!(mode(REDIS_CONF), 0o640, "CONFIG REWRITE copies masterauth into redis.conf");
    let credentials = fs::read_to_string(conf_dir.join(CREDENTIALS)).expect("credentials");
    for user in ACL_USERS {
        let password = rendered.password(user).expect("password");
        assert!(credentials.contains(&format!("{user} {password}\n")));
        for name in [REDIS_CONF, USERS_ACL] {
            let text = fs::read_to_string(conf_dir.join(name)).expect("read");
            assert!(!text.contains(password), "{user}'s password in {name}");
        }
    }

    // A second run without force changes nothing.
    let again = config::render(&ConfigOptions {
        conf_dir: conf_dir.clone(),
        data_dir: conf_dir.clone(),
        ..ConfigOptions::new(Workload::Session)
    })
    .expect("render");
    let err = again.write_to(&conf_dir, false).expect_err("overwrote without force");
    assert!(err.is_invalid_input(), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(fs::read_to_string(conf_dir.join(CREDENTIALS)).expect("credentials"), credentials);

    // With force: overwritten, and a loosened mode is tightened again.
    fs::set_permissions(conf_dir.join(CREDENTIALS), fs::Permissions::from_mode(0o644)).expect("chmod");
    again.write_to(&conf_dir, true).expect("forced write");
    assert_eq!(mode(CREDENTIALS), 0o600);
    assert_ne!(fs::read_to_string(conf_dir.join(CREDENTIALS)).expect("credentials"), credentials);
    assert!(fs::read_to_string(conf_dir.join(REDIS_CONF)).expect("conf").contains("maxmemory-policy volatile-ttl"));
}

/// The examples committed in deploy/redis/ are what the command generates today.
#[test]
fn committed_examples_are_up_to_date() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/redis");
    let examples = [
        ("app", Workload::App, false),
        ("app-cluster", Workload::App, true),
        ("cache-only", Workload::CacheOnly, false),
        ("session", Workload::Session, false),
    ];
    for (dir, workload, cluster) in examples {
        let options = ConfigOptions { cluster, secrets: Secrets::Placeholder, ..ConfigOptions::new(workload) };
        let rendered = config::render(&options).expect("render");
        assert!(rendered.file(CREDENTIALS).is_none(), "placeholder examples hold no credentials");
        for file in rendered.files() {
            let path = deploy.join(dir).join(file.name);
            let committed = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                committed == file.contents,
                "{} is out of date; regenerate it with: {} (--out deploy/redis/{dir} --force)",
                path.display(),
                options.command_line()
            );
        }
    }
}
