//! `strata audit` on a `strata up --secure` cluster: every denial issue 7 lists (the `app`,
//! `readonly` and `metrics` roles overstepping, a wrong password), made on masters and replicas
//! alike, appears in the output with its principal, action and object.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use strata_cluster::{Role, SecureFiles};

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).args(args).output().expect("run strata")
}

fn stdout_ok(out: &Output) -> String {
    assert!(out.status.success(), "strata failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

/// Stops and removes a `strata up` directory even when the test panics.
struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = strata(&["down", "--dir", &self.0.to_string_lossy(), "--purge"]);
    }
}

/// A TLS connection to `addr` as `user` (the CA and client certificate of the secure directory).
fn connect(secure: &SecureFiles, addr: &str, user: &str, password: &str) -> redis::RedisResult<redis::Connection> {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let settings = redis::RedisConnectionInfo::default().set_username(user).set_password(password);
    let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::TcpTls {
        host: host.to_owned(),
        port: port.parse().expect("port"),
        insecure: false,
        tls_params: None,
    })?
    .set_redis_settings(settings);
    let certs = secure.tls.client_certificates().expect("certificates");
    let client = redis::Client::build_with_tls(info, certs)?;
    client.get_connection_with_timeout(std::time::Duration::from_secs(5))
}

/// Runs `args` as `role` on `addr` and expects NOPERM.
fn denied(secure: &SecureFiles, addr: &str, role: Role, args: &[&str]) {
    let mut con = connect(secure, addr, role.user(), secure.roles.password(role)).expect("connect");
    let err = redis::cmd(args[0]).arg(&args[1..]).query::<redis::Value>(&mut con).expect_err("must be denied");
    assert!(err.to_string().to_uppercase().contains("NOPERM"), "{args:?} as {role:?}: {err}");
}

fn node_addrs(dir: &Path) -> (Vec<String>, Vec<String>) {
    let status: Value =
        serde_json::from_str(&stdout_ok(&strata(&["status", "--dir", &dir.to_string_lossy(), "--json"])))
            .expect("status JSON");
    let mut masters = Vec::new();
    let mut replicas = Vec::new();
    for node in status["nodes"].as_array().expect("nodes") {
        let addr = node["addr"].as_str().expect("addr").to_owned();
        if node["role"] == "master" { masters.push(addr) } else { replicas.push(addr) }
    }
    (masters, replicas)
}

#[test]
fn every_denial_appears_in_strata_audit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let d = dir.to_string_lossy().to_string();
    let _guard = Down(dir.clone());
    stdout_ok(&strata(&["up", "--secure", "--dir", &d, "--node-timeout-ms", "1500", "--json"]));
    let secure = SecureFiles::load(&dir.join("secure")).expect("secure files");
    let (masters, replicas) = node_addrs(&dir);
    assert_eq!((masters.len(), replicas.len()), (3, 3));
    // Spread the attempts over every node, replicas included: the ACL LOG is per node.
    let nodes: Vec<&String> = masters.iter().zip(&replicas).flat_map(|(m, r)| [m, r]).collect();
    let on = |i: usize| nodes[i % nodes.len()].as_str();

    // (role, command, expected action, expected target)
    let attempts: [(Role, &[&str], &str, &str); 8] = [
        (Role::App, &["FLUSHALL"], "flushall", "flushall"),
        (Role::App, &["CONFIG", "GET", "maxmemory"], "config|get", "config|get"),
        (Role::App, &["KEYS", "*"], "keys", "keys"),
        (Role::App, &["DEBUG", "SLEEP", "0"], "debug", "debug"),
        (Role::App, &["SHUTDOWN", "NOSAVE"], "shutdown", "shutdown"),
        (Role::App, &["SET", "other:1", "x"], "set", "other:1"),
        (Role::Readonly, &["SET", "app:1", "x"], "set", "set"),
        (Role::Metrics, &["GET", "app:1"], "get", "get"),
    ];
    let mut expected = Vec::new();
    for (i, (role, args, action, target)) in attempts.iter().enumerate() {
        denied(&secure, on(i), *role, args);
        expected.push((role.user(), *action, *target, on(i).to_owned()));
    }
    let wrong = connect(&secure, on(8), "app", "not-the-password");
    assert!(wrong.is_err(), "a wrong password must not log in");
    expected.push(("app", "auth", "AUTH", on(8).to_owned()));

    let out = stdout_ok(&strata(&["audit", "--dir", &d, "--json"]));
    let records: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    for (principal, action, target, node) in &expected {
        let found = records.iter().any(|r| {
            r["principal"] == *principal
                && r["action"] == *action
                && r["target"] == *target
                && r["node"] == node.as_str()
                && r["result"] == "denied"
        });
        assert!(found, "no record of {principal} {action} {target} on {node} in:\n{out}");
    }
    for r in &records {
        assert!(r["time"].as_str().is_some_and(|t| strata::parse_rfc3339(t).is_some()), "{r}");
        assert!(r["count"].as_u64().is_some_and(|c| c >= 1), "{r}");
        assert!(["command", "key", "channel", "auth"].contains(&r["reason"].as_str().unwrap_or("")), "{r}");
    }
    let times: Vec<&str> = records.iter().filter_map(|r| r["time"].as_str()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "sorted by time: {times:?}");
    for role in Role::ALL {
        assert!(!out.contains(secure.roles.password(role)), "a password in the audit output");
    }

    // The human rendering and --since.
    let human = stdout_ok(&strata(&["audit", "--dir", &d]));
    assert!(human.contains("flushall") && human.contains("other:1"), "{human}");
    let later = stdout_ok(&strata(&["audit", "--dir", &d, "--json", "--since", "2999-01-01T00:00:00Z"]));
    assert_eq!(later, "", "nothing happened after 2999");
    let bad = strata(&["audit", "--dir", &d, "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2), "an invalid --since is an argument error");

    // The CLI's own administrative actions name the ACL user they ran as: `admin` with --dir.
    let log = tmp.path().join("audit.jsonl");
    let log_s = log.to_string_lossy().to_string();
    stdout_ok(&strata(&["invalidate", "--dir", &d, "--namespace", "app:v1:user", "--audit-log", &log_s]));
    let line: Value = serde_json::from_str(std::fs::read_to_string(&log).expect("audit log").trim()).expect("JSON");
    assert_eq!(
        (&line["principal"], &line["action"], &line["result"]),
        (&"admin".into(), &"invalidate_namespace".into(), &"ok".into())
    );

    // --follow prints what is there, then each new denial as it appears.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["audit", "--dir", &d, "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn strata audit --follow");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap_or_else(|e| panic!("{what}: {e}"));
        serde_json::from_str(&line).expect("JSON line")
    };
    for _ in 0..records.len() {
        next("the records already there");
    }
    denied(&secure, on(3), Role::Readonly, &["DEL", "app:1"]);
    let fresh = next("the new denial");
    assert_eq!((&fresh["principal"], &fresh["action"]), (&"readonly".into(), &"del".into()), "{fresh}");
    let _ = follow.kill();
    let _ = follow.wait();
    drop(rx);
    let _ = reader.join();

    // A cursor reports each entry once, and again only when Redis counts more denials.
    let deployment = strata_ops::Deployment::from_dir(&dir, &strata_ops::Credentials::default()).expect("deployment");
    let mut cursor = strata_ops::audit_log::Cursor::new(None);
    assert!(cursor.poll(&deployment).expect("poll").len() >= expected.len());
    assert_eq!(cursor.poll(&deployment).expect("poll"), vec![], "nothing new");
    denied(&secure, on(0), Role::App, &["FLUSHALL"]);
    let again = cursor.poll(&deployment).expect("poll");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((again[0].action.as_str(), again[0].count), ("flushall", Some(2)));
}
