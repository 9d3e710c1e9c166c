//! `strata config --secure`: the generated TLS-only configuration runs a real redis-server, the
//! `app` user logs in over TLS with the generated CA and keeps to its keys, plaintext is refused,
//! and the Strata library works as `app` over TLS.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_cluster::TlsMaterial;

/// A redis-server from the generated files; killed and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn password(conf: &Path, user: &str) -> String {
    fs::read_to_string(conf.join("credentials"))
        .expect("credentials")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{user} ")).map(str::to_owned))
        .unwrap_or_else(|| panic!("{user} in credentials"))
}

fn connect(conf: &Path, port: u16, user: &str, password: &str) -> redis::RedisResult<redis::Connection> {
    let settings = redis::RedisConnectionInfo::default().set_username(user).set_password(password);
    let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::TcpTls {
        host: "127.0.0.1".into(),
        port,
        insecure: false,
        tls_params: None,
    })?
    .set_redis_settings(settings);
    let certs = TlsMaterial::in_dir(conf).client_certificates().expect("certificates");
    redis::Client::build_with_tls(info, certs)?.get_connection_with_timeout(Duration::from_secs(2))
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_config_runs_tls_only_with_the_shared_roles() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (conf, data) = (tmp.path().join("conf"), tmp.path().join("data"));
    fs::create_dir_all(&data).expect("data dir");
    let port = strata_cluster::free_port().expect("port");
    let (c, d) = (conf.to_string_lossy().to_string(), data.to_string_lossy().to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["config", "--role", "app", "--secure", "--key-prefix", "shop", "--maxmemory", "32mb"])
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--out", &c, "--conf-dir", &c, "--data-dir", &d])
        .arg("--json")
        .output()
        .expect("run strata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let users: Vec<&str> = report["users"].as_array().expect("users").iter().filter_map(Value::as_str).collect();
    assert_eq!(users, ["default", "admin", "app", "readonly", "metrics", "replication"]);
    for key in ["ca.key", "server.key", "client.key", "credentials", "users.acl", "replication.conf"] {
        assert_eq!(mode(&conf.join(key)), 0o600, "{key}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(&password(&conf, "app")), "a password was printed");

    let child = Command::new(strata_cluster::redis_server().expect("redis-server"))
        .arg(conf.join("redis.conf"))
        .arg("--logfile")
        .arg(data.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let mut server = Server(child);
    let app = password(&conf, "app");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut con = loop {
        if let Some(status) = server.0.try_wait().expect("try_wait") {
            panic!("redis-server exited: {status}: {}", fs::read_to_string(data.join("redis.log")).unwrap_or_default());
        }
        match connect(&conf, port, "app", &app) {
            Ok(con) => break con,
            Err(e) => assert!(Instant::now() < deadline, "cannot log in as app over TLS: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let () = redis::cmd("SET").arg("shop:x").arg("1").query(&mut con).expect("SET on the prefix");
    for args in [&["SET", "other:x", "1"][..], &["CONFIG", "GET", "maxmemory"], &["FLUSHALL"]] {
        let denied = redis::cmd(args[0]).arg(&args[1..]).query::<redis::Value>(&mut con);
        assert!(denied.is_err_and(|e| e.to_string().to_uppercase().contains("NOPERM")), "{args:?} allowed");
    }
    assert!(connect(&conf, port, "app", "wrong").is_err(), "a wrong password logged in");

    // strata audit over TLS with --tls-dir, as admin: the denials above, and the wrong password.
    let audit = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["audit", "--url", &format!("rediss://127.0.0.1:{port}"), "--tls-dir", &c, "--user", "admin", "--json"])
        .env("STRATA_REDIS_PASSWORD", password(&conf, "admin"))
        .output()
        .expect("run strata audit");
    assert!(audit.status.success(), "{}", String::from_utf8_lossy(&audit.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&audit.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    for (action, target) in
        [("set", "other:x"), ("config|get", "config|get"), ("flushall", "flushall"), ("auth", "AUTH")]
    {
        assert!(
            lines.iter().any(|r| r["principal"] == "app" && r["action"] == action && r["target"] == target),
            "{action} {target} missing: {lines:?}"
        );
    }

    // Plaintext on the TLS port gets no answer.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let answered = plain.get_connection_with_timeout(Duration::from_secs(2)).and_then(|mut c| {
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        redis::cmd("PING").query::<String>(&mut c)
    });
    assert!(answered.is_err(), "plaintext answered");
    let mut admin = connect(&conf, port, "admin", &password(&conf, "admin")).expect("admin over TLS");
    let tls_port: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("port").query(&mut admin).expect("CONFIG GET");
    assert_eq!(tls_port, ["port", "0"]);

    // The library, as app, over TLS with the generated CA.
    let cache = strata::Cache::builder()
        .redis_url(format!("rediss://127.0.0.1:{port}"))
        .username("app")
        .password(app)
        .tls(strata::TlsOptions::new().ca_pem(fs::read(conf.join("ca.crt")).expect("ca")))
        .require_redis(true)
        .build()
        .await
        .expect("the library connects as app over TLS");
    let key = strata::KeySchema::new("shop", 1).expect("schema").key("user", "1").expect("key");
    cache.set(&key, &"ada".to_owned(), strata::Ttl::Short).await.expect("set");
    cache.clear_l1();
    assert_eq!(cache.get::<String>(&key).await.expect("get").as_deref(), Some("ada"));
    assert_eq!(cache.metrics().l2_errors, 0);
}
