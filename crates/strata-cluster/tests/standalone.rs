//! Standalone server lifecycle against real `redis-server` processes.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{pid_exists, pid_running, ping};
use strata_cluster::{Detached, RedisServer};

fn set(con: &mut redis::Connection, k: &str, v: &str) {
    let () = redis::cmd("SET").arg(k).arg(v).query(con).expect("SET");
}

fn get(con: &mut redis::Connection, k: &str) -> Option<String> {
    redis::cmd("GET").arg(k).query(con).expect("GET")
}

#[test]
fn start_ping_kill_restart_loses_data_without_persistence() {
    let t = Instant::now();
    let mut server = RedisServer::start().expect("start");
    eprintln!("standalone start: {:?}", t.elapsed());
    let port = server.node().port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(server.node().addr(), format!("127.0.0.1:{port}"));
    assert!(server.node().dir().join("redis.conf").is_file());
    assert_eq!(ping(server.node(), Duration::from_secs(2)).as_deref(), Ok("PONG"));
    let mut con = server.connection().expect("connect");
    set(&mut con, "k", "v");
    assert_eq!(get(&mut con, "k").as_deref(), Some("v"));

    let node = server.node_mut();
    let pid = node.pid().expect("running");
    node.kill().expect("kill");
    assert!(!node.is_running());
    assert_eq!(node.pid(), None);
    assert!(!pid_exists(pid), "killed process must be reaped");
    node.kill().expect("kill is idempotent");
    assert!(ping(node, Duration::from_millis(300)).is_err());

    node.restart().expect("restart");
    assert_eq!(node.port(), port, "restart keeps the port");
    assert_ne!(node.pid(), Some(pid));
    let mut con = server.connection().expect("connect");
    assert_eq!(get(&mut con, "k"), None, "no persistence: data is gone");
}

#[test]
fn appendonly_key_survives_restart_and_stop_is_graceful() {
    let mut server = RedisServer::builder().appendonly(true).start().expect("start");
    let conf = std::fs::read_to_string(server.node().config_path()).expect("conf");
    assert!(conf.contains("\nappendonly yes\n") && conf.contains("\nappendfsync everysec\n"));
    let mut con = server.connection().expect("connect");
    set(&mut con, "durable", "yes");
    server.node_mut().restart().expect("restart");
    let mut con = server.connection().expect("connect");
    assert_eq!(get(&mut con, "durable").as_deref(), Some("yes"));

    server.node_mut().stop().expect("stop");
    assert!(!server.node_mut().is_running());
    assert!(server.node().log_tail(50).contains("ready to exit"), "graceful shutdown is logged");
    server.node_mut().stop().expect("stop is idempotent");
}

#[test]
fn pause_makes_pings_time_out_until_resume() {
    let server = RedisServer::start().expect("start");
    let node = server.node();
    node.pause().expect("pause");
    assert!(node.is_paused());
    let t = Instant::now();
    assert!(ping(node, Duration::from_millis(300)).is_err(), "paused node must not answer");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(node.pid().is_some(), "a paused node is still running");
    node.resume().expect("resume");
    assert!(!node.is_paused());
    assert_eq!(ping(node, Duration::from_secs(2)).as_deref(), Ok("PONG"));
}

#[test]
fn paused_node_is_killed_on_drop() {
    let server = RedisServer::start().expect("start");
    let pid = server.node().pid().expect("pid");
    server.node().pause().expect("pause");
    drop(server);
    assert!(!pid_exists(pid));
}

#[test]
fn drop_kills_process_and_removes_temp_dir() {
    let server = RedisServer::start().expect("start");
    let pid = server.node().pid().expect("pid");
    let dir = server.node().dir().to_path_buf();
    assert!(pid_exists(pid));
    drop(server);
    assert!(!pid_exists(pid), "no orphan after drop");
    assert!(!dir.exists(), "temp dir removed");
}

#[test]
fn drop_during_panic_kills_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let server = RedisServer::start().expect("start");
        tx.send(server.node().pid().expect("pid")).expect("send");
        panic!("test panics while owning a server");
    })
    .join();
    assert!(result.is_err());
    let pid = rx.recv().expect("pid");
    assert!(!pid_exists(pid), "unwinding must kill the node");
}

#[test]
fn fixed_port_in_use_is_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let err = RedisServer::builder().port(port).start().expect_err("port is taken");
    assert!(err.is_port_in_use(), "{err}");
    assert!(err.to_string().contains(&port.to_string()));
}

#[test]
fn fixed_port_works_and_restart_on_taken_port_is_port_in_use() {
    let port = strata_cluster::free_port().expect("port");
    let mut server = RedisServer::builder().port(port).start().expect("start");
    assert_eq!(server.node().port(), port);
    server.node_mut().kill().expect("kill");
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("grab the port");
    let err = server.node_mut().restart().expect_err("port is taken");
    eprintln!("{err}");
    assert!(err.is_port_in_use(), "{err}");
    drop(listener);
    server.node_mut().restart().expect("restart once the port is free");
}

#[test]
fn explicit_missing_binary_is_not_installed() {
    let err = RedisServer::builder().server_binary("/nonexistent/redis-server").start().expect_err("must fail");
    assert!(err.is_not_installed(), "{err}");
    assert!(err.to_string().contains("apt-get install -y redis-server redis-tools"));
}

/// Runs itself in a child process with the environment overrides set (the
/// environment is process-global, and `set_var` would need `unsafe`).
#[test]
fn env_override_to_missing_binary_is_not_installed() {
    if std::env::var_os("STRATA_CLUSTER_TEST_CHILD").is_some() {
        let err = RedisServer::start().expect_err("must fail");
        eprintln!("{err}");
        assert!(err.is_not_installed(), "{err}");
        assert!(err.to_string().contains("STRATA_REDIS_SERVER"), "{err}");
        assert!(err.to_string().contains("apt-get install -y redis-server redis-tools"));
        let err = strata_cluster::RedisCluster::start(3, 0).expect_err("must fail");
        assert!(err.is_not_installed(), "{err}");
        assert!(!strata_cluster::redis_available());
        return;
    }
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "env_override_to_missing_binary_is_not_installed"])
        .env("STRATA_CLUSTER_TEST_CHILD", "1")
        .env("STRATA_REDIS_SERVER", "/nonexistent/redis-server")
        .env("STRATA_REDIS_CLI", "/nonexistent/redis-cli")
        .output()
        .expect("run child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_config_is_process_failed_with_log_tail() {
    let err = RedisServer::builder().config_line("this-is-not-a-directive yes").start().expect_err("must fail");
    eprintln!("{err}");
    assert!(err.is_process_failed(), "{err}");
    assert!(err.to_string().contains("this-is-not-a-directive"), "{err}");
}

#[test]
fn password_is_required_and_in_the_url() {
    let server = RedisServer::builder().password("s3cr:t@x").start().expect("start");
    let port = server.node().port();
    assert_eq!(server.url(), format!("redis://default:s3cr%3At%40x@127.0.0.1:{port}"));
    let mut con = server.connection().expect("connect with password");
    set(&mut con, "a", "b");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
    let mut anon = client.get_connection().expect("tcp connect");
    let denied = redis::cmd("GET").arg("a").query::<Option<String>>(&mut anon);
    assert!(denied.is_err(), "unauthenticated access must fail");
}

#[test]
fn acl_user_replaces_default_user() {
    let server = RedisServer::builder().acl_user("admin", "pw").start().expect("start");
    assert!(server.url().starts_with("redis://admin:pw@127.0.0.1:"));
    let mut con = server.connection().expect("connect as admin");
    let who: String = redis::cmd("ACL").arg("WHOAMI").query(&mut con).expect("WHOAMI");
    assert_eq!(who, "admin");
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", server.port())).expect("client");
    let mut anon = client.get_connection().expect("tcp connect");
    assert!(redis::cmd("GET").arg("a").query::<Option<String>>(&mut anon).is_err());
}

#[test]
fn user_dir_is_kept_and_detach_leaves_process_running() {
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path().join("standalone");
    let server = RedisServer::builder().dir(&dir).start().expect("start");
    assert!(dir.join("redis.conf").is_file());
    assert!(dir.join("redis.log").is_file());
    let pid = server.node().pid().expect("pid");
    let detached = server.detach().expect("detach");
    assert_eq!(detached.pids(), vec![pid]);
    assert!(pid_running(pid), "detached process keeps running");
    assert!(dir.join(strata_cluster::PID_FILE).is_file());

    let loaded = Detached::load(&dir).expect("load pid file");
    assert_eq!(loaded, detached);
    loaded.stop().expect("stop detached");
    assert!(!pid_running(pid), "stopped");
    assert!(!dir.join(strata_cluster::PID_FILE).exists());
}

/// A client that stops reading is disconnected once its pending replies pass the output buffer
/// limit every generated redis.conf sets (`CLIENT_OUTPUT_BUFFER_LIMIT`), instead of growing the
/// server's memory without bound (Redis's default for normal clients is no limit).
#[test]
fn a_client_that_stops_reading_is_disconnected_at_the_output_buffer_limit() {
    use std::io::Write;

    let server = RedisServer::start().expect("start");
    let mut con = server.connection().expect("connect");
    let limit: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("client-output-buffer-limit").query(&mut con).expect("CONFIG GET");
    assert!(limit[1].starts_with("normal 67108864 16777216 60 "), "{limit:?}");
    let () = redis::cmd("SET").arg("big").arg(vec![b'x'; 1 << 20]).query(&mut con).expect("SET");
    let clients = |con: &mut redis::Connection| -> usize {
        let list: String = redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("normal").query(con).expect("CLIENT LIST");
        list.lines().count()
    };
    assert_eq!(clients(&mut con), 1);

    // 128 pipelined GETs of 1 MiB, never read: 128 MiB of replies, past the 64 MiB hard limit
    // even after the kernel's socket buffers took their share.
    let mut slow = std::net::TcpStream::connect(server.node().addr()).expect("connect the slow client");
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n";
    slow.write_all(&get.repeat(128)).expect("send GETs");
    let log = || std::fs::read_to_string(server.node().dir().join("redis.log")).expect("log");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Redis logs "Client id=... scheduled to be closed ASAP for overcoming of output buffer limits".
    while !log().contains("output buffer limits") || clients(&mut con) > 1 {
        assert!(
            Instant::now() < deadline,
            "the slow client was not disconnected; clients {}:\n{}",
            clients(&mut con),
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(slow);
}
