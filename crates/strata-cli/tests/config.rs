//! `strata config` as a user runs it: files, JSON, exit codes, and a server started from them.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).args(args).env_remove("STRATA_LOG").output().expect("run strata")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// The `user password` lines of a credentials file.
fn credentials(dir: &Path) -> Vec<(String, String)> {
    fs::read_to_string(dir.join("credentials"))
        .expect("credentials")
        .lines()
        .map(|l| {
            let (u, p) = l.split_once(' ').expect("user password");
            (u.to_owned(), p.to_owned())
        })
        .collect()
}

#[test]
fn json_run_writes_the_files_and_refuses_to_overwrite_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("redis");
    let out_s = out.to_str().expect("UTF-8 path");

    let first = strata(&["config", "--role", "app", "--out", out_s, "--json"]);
    assert_eq!(first.status.code(), Some(0), "stderr: {}", text(&first.stderr));
    let stdout = text(&first.stdout);
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(doc["role"], "app");
    assert_eq!(doc["maxmemory_policy"], "allkeys-lfu");
    let files: Vec<&str> = doc["files"].as_array().expect("files").iter().filter_map(|f| f.as_str()).collect();
    assert_eq!(files.len(), 4, "{files:?}");
    for name in ["redis.conf", "users.acl", "replication.conf", "credentials"] {
        let path = out.join(name);
        assert!(files.contains(&path.to_str().expect("path")), "{name} not listed in {files:?}");
        assert!(path.exists(), "{name} not written");
    }
    let mode = fs::metadata(out.join("credentials")).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let users = credentials(&out);
    assert_eq!(users.len(), 5);
    for (_, password) in &users {
        assert!(!stdout.contains(password.as_str()) && !text(&first.stderr).contains(password.as_str()));
    }

    // Again without --force: exit 1, one line on stderr, nothing changed.
    let second = strata(&["config", "--role", "app", "--out", out_s, "--json"]);
    assert_eq!(second.status.code(), Some(1));
    let stderr = text(&second.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("strata: "), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(second.stdout.is_empty());
    assert_eq!(credentials(&out), users);

    // With --force: new passwords.
    let third = strata(&["config", "--role", "session", "--out", out_s, "--force"]);
    assert_eq!(third.status.code(), Some(0), "stderr: {}", text(&third.stderr));
    assert_ne!(credentials(&out), users);
    assert!(fs::read_to_string(out.join("redis.conf")).expect("conf").contains("maxmemory-policy volatile-ttl"));
}

#[test]
fn bad_arguments_exit_2_and_bad_values_exit_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().to_str().expect("path");

    let role = strata(&["config", "--role", "database", "--out", out]);
    assert_eq!(role.status.code(), Some(2), "{}", text(&role.stderr));
    let json = strata(&["config", "--role", "app", "--json"]);
    assert_eq!(json.status.code(), Some(2), "--json without --out: {}", text(&json.stderr));

    let memory = strata(&["config", "--role", "app", "--maxmemory", "lots", "--out", out]);
    assert_eq!(memory.status.code(), Some(1));
    let stderr = text(&memory.stderr);
    assert!(stderr.starts_with("strata: ") && stderr.contains("--maxmemory"), "{stderr}");
    assert_eq!(fs::read_dir(tmp.path()).expect("read_dir").count(), 0, "files written despite the error");
}

#[test]
fn without_out_every_file_goes_to_stdout_with_a_warning() {
    let run = strata(&["config", "--role", "cache-only", "--cluster"]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    for name in ["redis.conf", "users.acl", "replication.conf", "credentials"] {
        assert!(stdout.contains(&format!("==> {name} ")), "{name} missing");
    }
    assert!(stdout.contains("maxmemory-policy allkeys-lru\n"));
    assert!(stdout.contains("cluster-enabled yes\n"));
    let stderr = text(&run.stderr);
    assert!(stderr.contains("warning") && stderr.contains("passwords"), "{stderr}");
}

/// A redis-server from the generated files; killed and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Generates an `app` config for `--key-prefix shop` with `strata config`, starts a
/// redis-server from it and returns it with the credentials and its port once `app` can log in.
fn start_generated_server(tmp: &Path) -> (Server, Vec<(String, String)>, u16) {
    let conf = tmp.join("conf");
    let data = tmp.join("data");
    fs::create_dir_all(&data).expect("data dir");
    let run = strata(&[
        "config",
        "--role",
        "app",
        "--key-prefix",
        "shop",
        "--maxmemory",
        "32mb",
        "--out",
        conf.to_str().expect("path"),
        "--conf-dir",
        conf.to_str().expect("path"),
        "--data-dir",
        data.to_str().expect("path"),
    ]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));

    let port = strata_cluster::free_port().expect("port");
    let child = Command::new(strata_cluster::redis_server().expect("redis-server"))
        .arg(conf.join("redis.conf"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--logfile")
        .arg(data.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let mut server = Server(child);

    let users = credentials(&conf);
    let password = &users.iter().find(|(u, _)| u == "app").expect("app user").1;
    let url = format!("redis://app:{password}@127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.0.try_wait().expect("try_wait") {
            panic!("redis-server exited: {status}: {}", fs::read_to_string(data.join("redis.log")).unwrap_or_default());
        }
        match redis::Client::open(url.as_str()).expect("url").get_connection() {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "cannot log in as app: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, users, port)
}

fn password<'a>(users: &'a [(String, String)], user: &str) -> &'a str {
    &users.iter().find(|(u, _)| u == user).unwrap_or_else(|| panic!("{user} in credentials")).1
}

#[test]
fn generated_files_run_a_real_server_and_the_credentials_log_in() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, users, port) = start_generated_server(tmp.path());
    let url = format!("redis://app:{}@127.0.0.1:{port}/", password(&users, "app"));
    let mut con = redis::Client::open(url.as_str()).expect("url").get_connection().expect("log in as app");
    let _: () = redis::cmd("SET").arg("shop:x").arg("1").query(&mut con).expect("SET on the prefix");
    let denied: redis::RedisResult<()> = redis::cmd("SET").arg("app:x").arg("1").query(&mut con);
    assert!(denied.is_err(), "a key outside --key-prefix was writable");
    let config: redis::RedisResult<Vec<String>> =
        redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query(&mut con);
    assert!(config.is_err(), "the app user may not read the config");
    // The server runs with the generated limit on normal clients' output buffers (Redis's
    // default is none): a client that stops reading cannot grow its memory without bound.
    let admin = format!("redis://admin:{}@127.0.0.1:{port}/", password(&users, "admin"));
    let mut admin = redis::Client::open(admin.as_str()).expect("url").get_connection().expect("log in as admin");
    let limit: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("client-output-buffer-limit").query(&mut admin).expect("CONFIG GET");
    assert!(limit[1].starts_with("normal 67108864 16777216 60 "), "{limit:?}");
}

/// The ACL entries logged for the `app` user so far (`ACL LOG`, read as admin).
fn acl_denials(admin: &mut redis::Connection) -> Vec<String> {
    let entries: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL").arg("LOG").query(admin).expect("ACL LOG");
    entries
        .iter()
        .filter(|e| matches!(e.get("username"), Some(v) if redis::from_redis_value_ref::<String>(v).is_ok_and(|u| u == "app")))
        .map(|e| format!("{e:?}"))
        .collect()
}

/// The real library, logged in as the generated `app` user, does everything it needs: writes
/// (which also delete the key's lease), reads, deletes, `get_or_set` through a lease and the
/// fill script, batches; and it is refused keys outside the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_works_as_the_generated_app_user() {
    use strata::{Cache, KeySchema, Ttl};

    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, users, port) = start_generated_server(tmp.path());
    let admin_url = format!("redis://admin:{}@127.0.0.1:{port}/", password(&users, "admin"));
    let mut admin = redis::Client::open(admin_url.as_str()).expect("url").get_connection().expect("admin");
    let _: () = redis::cmd("ACL").arg("LOG").arg("RESET").query(&mut admin).expect("ACL LOG RESET");

    let cache = Cache::builder()
        .redis_url(format!("redis://127.0.0.1:{port}/"))
        .username("app")
        .password(password(&users, "app"))
        .op_timeout(Duration::from_secs(2))
        .require_redis(true)
        .build()
        .await
        .expect("the library logs in as app");
    let schema = KeySchema::new("shop", 1).expect("schema");
    let user = |id: &str| schema.key("user", id).expect("key");

    cache.set(&user("1"), &"ada".to_owned(), Ttl::Medium).await.expect("set (DEL lease + SET)");
    cache.clear_l1();
    assert_eq!(cache.get::<String>(&user("1")).await.expect("get").as_deref(), Some("ada"));
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg("shop:v1:user:1").query(&mut admin).expect("GET");
    assert!(stored.is_some(), "set did not reach Redis");

    // get_or_set on a cold key: lease taken with a script, value stored by the fill script.
    let loaded = cache
        .get_or_set(&user("2"), Ttl::Medium, || async { Ok::<_, std::io::Error>("grace".to_owned()) })
        .await
        .expect("get_or_set");
    assert_eq!(loaded, "grace");
    cache.settled().await; // the store follows the caller
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg("shop:v1:user:2").query(&mut admin).expect("GET");
    assert!(stored.is_some(), "get_or_set did not store its value through the lease");
    let lease: bool = redis::cmd("EXISTS").arg("{shop:v1:user:2}:lease").query(&mut admin).expect("EXISTS");
    assert!(!lease, "the lease was not released");
    // A second process-local load is served from Redis (no loader call).
    cache.clear_l1();
    let again = cache
        .get_or_set(&user("2"), Ttl::Medium, || async { Err::<String, _>(std::io::Error::other("loader called")) })
        .await
        .expect("served from Redis");
    assert_eq!(again, "grace");

    cache.clear_l1();
    let many = cache.get_many::<String>(&[user("1"), user("2"), user("3")]).await.expect("get_many");
    assert_eq!(many, vec![Some("ada".to_owned()), Some("grace".to_owned()), None]);

    assert!(cache.delete(&user("1")).await.expect("delete (key + lease)"));
    cache.clear_l1();
    assert_eq!(cache.get::<String>(&user("1")).await.expect("get"), None);

    // The schema version key is readable by the app user.
    let _: () = redis::cmd("SET").arg("strata:schema:shop").arg("1").query(&mut admin).expect("SET schema");
    let app_url = format!("redis://app:{}@127.0.0.1:{port}/", password(&users, "app"));
    let mut app = redis::Client::open(app_url.as_str()).expect("url").get_connection().expect("app");
    let version: String = redis::cmd("GET").arg("strata:schema:shop").query(&mut app).expect("GET schema");
    assert_eq!(version, "1");

    assert_eq!(acl_denials(&mut admin), Vec::<String>::new(), "the library was refused something");

    // Outside the prefix: refused by the ACL.
    let other = KeySchema::new("billing", 1).expect("schema").key("invoice", "1").expect("key");
    let err = cache.set(&other, &"x".to_owned(), Ttl::Short).await.expect_err("a key outside the prefix");
    assert!(err.is_unavailable() || err.is_redis(), "{err}");
    let exists: bool = redis::cmd("EXISTS").arg("billing:v1:invoice:1").query(&mut admin).expect("EXISTS");
    assert!(!exists);
    assert!(!acl_denials(&mut admin).is_empty(), "the denial shows in ACL LOG");
}
