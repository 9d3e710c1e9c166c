//! The secure deployment (TLS only + ACL roles, as `strata up --secure` sets up) holds:
//! plaintext and foreign certificates are refused, bad credentials are a clear error that
//! `get_or_set` survives, each role is held to its rights, and the cache API works fully as
//! the `app` user over TLS on a 3+3 cluster.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strata::{BreakerConfig, Cache, CacheBuilder, Invalidation, KeySchema, TlsOptions, Ttl};
use strata_cluster::{AclRoles, RedisCluster, RedisServer, Role, TlsMaterial};

use crate::common::TestResult;

/// TLS material and ACL roles in a temporary directory that outlives the nodes.
struct Secrets {
    dir: tempfile::TempDir,
    tls: TlsMaterial,
    roles: AclRoles,
}

impl Secrets {
    fn new() -> Secrets {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = TlsMaterial::generate(&dir.path().join("tls")).expect("generate certificates");
        let roles = AclRoles::generate("app:").expect("roles");
        Secrets { dir, tls, roles }
    }

    fn acl_path(&self) -> std::path::PathBuf {
        self.dir.path().join("users.acl")
    }

    /// What the library needs for TLS: the CA and the client certificate.
    fn tls_options(&self) -> TlsOptions {
        tls_options(&self.tls)
    }
}

fn tls_options(tls: &TlsMaterial) -> TlsOptions {
    let read = |p: &Path| std::fs::read(p).expect("read PEM");
    let (cert, key) = tls.client.as_ref().expect("client certificate");
    TlsOptions::new().ca_pem(read(&tls.ca_cert)).client_cert_pem(read(cert)).client_key_pem(read(key))
}

fn secure_server(s: &Secrets) -> RedisServer {
    RedisServer::builder().tls(s.tls.clone()).acl_file(s.acl_path(), &s.roles).start().expect("start a secure server")
}

/// A raw connection over TLS as `user` (or no AUTH at all with `None`).
fn connect(port: u16, tls: &TlsMaterial, auth: Option<(&str, &str)>) -> redis::RedisResult<redis::Connection> {
    let url = match auth {
        Some((user, pass)) => format!("rediss://{user}:{pass}@127.0.0.1:{port}"),
        None => format!("rediss://127.0.0.1:{port}"),
    };
    let client = redis::Client::build_with_tls(url, tls.client_certificates().expect("certificates"))?;
    let con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(con)
}

fn as_role(port: u16, s: &Secrets, role: Role) -> redis::Connection {
    connect(port, &s.tls, Some((role.user(), s.roles.password(role)))).expect("connect as role")
}

fn builder(urls: Vec<String>, cluster: bool, s: &Secrets, user: &str, password: &str) -> CacheBuilder {
    let b = if cluster { Cache::builder().cluster(urls) } else { Cache::builder().redis_url(urls[0].clone()) };
    b.username(user)
        .password(password)
        .tls(s.tls_options())
        .op_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .invalidation(Invalidation::default().heartbeat(Duration::from_millis(200), Duration::from_secs(2)))
        .breaker(BreakerConfig::new().failure_threshold(3).open_for(Duration::from_millis(300)))
}

fn assert_noperm<T: std::fmt::Debug>(what: &str, r: redis::RedisResult<T>) {
    match r {
        Err(e) => assert_eq!(e.code(), Some("NOPERM"), "{what}: {e}"),
        Ok(v) => panic!("{what} was allowed: {v:?}"),
    }
}

#[test]
fn plaintext_and_a_foreign_ca_are_refused() {
    let s = Secrets::new();
    let server = secure_server(&s);
    let port = server.port();
    let mut admin = as_role(port, &s, Role::Admin);
    let ports: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("port").query(&mut admin).expect("CONFIG GET");
    assert_eq!(ports, ["port", "0"], "the plaintext listener is closed");

    // A plaintext client on the TLS port gets no reply.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let refused = plain.get_connection_with_timeout(Duration::from_secs(2)).and_then(|mut c| {
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        redis::cmd("PING").query::<String>(&mut c)
    });
    assert!(refused.is_err(), "plaintext PING answered: {refused:?}");

    // A CA of another deployment does not verify this server's certificate.
    let other = TlsMaterial::generate(&s.dir.path().join("other")).expect("other CA");
    let foreign = connect(port, &other, Some(("admin", s.roles.password(Role::Admin))))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(foreign.is_err(), "a foreign CA was accepted: {foreign:?}");

    // With the right CA, PING works (so the refusals above are about TLS, not the server).
    let pong: String = redis::cmd("PING").query(&mut admin).expect("PING");
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_a_clear_error_and_get_or_set_falls_back() -> TestResult {
    let s = Secrets::new();
    let server = secure_server(&s);
    let port = server.port();
    let url = format!("rediss://127.0.0.1:{port}");

    // No AUTH at all: the default user is off.
    let mut anon = connect(port, &s.tls, None)?;
    let err = redis::cmd("GET").arg("app:x").query::<Option<String>>(&mut anon).expect_err("anonymous GET");
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");

    // The library with a wrong password: a clear auth error when Redis is required ...
    let wrong = "not-the-password";
    let Err(err) = builder(vec![url.clone()], false, &s, "app", wrong).require_redis(true).build().await else {
        panic!("a wrong password was accepted");
    };
    assert!(err.is_auth(), "{err} ({:?})", err.kind());
    assert!(!err.to_string().contains(wrong), "the password leaked into {err}");

    // ... and the service keeps working from the loader when it is not.
    let cache = builder(vec![url.clone()], false, &s, "app", wrong).build().await?;
    let key = KeySchema::new("app", 1)?.key("user", "1")?;
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let loads = loads.clone();
        let v: String = cache
            .get_or_set(&key, Ttl::Short, || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>("from the source".to_string())
            })
            .await?;
        assert_eq!(v, "from the source");
    }
    assert!(loads.load(Ordering::SeqCst) >= 1);
    // A plain read is a miss (fail-safe), counted as an L2 error rather than returned.
    let unseen = KeySchema::new("app", 1)?.key("user", "2")?;
    assert_eq!(cache.get::<String>(&unseen).await?, None);
    assert!(cache.metrics().l2_errors > 0, "{:?}", cache.metrics());
    Ok(())
}

#[test]
fn each_role_is_held_to_its_rights() {
    let s = Secrets::new();
    let server = secure_server(&s);
    let port = server.port();

    let mut app = as_role(port, &s, Role::App);
    let () = redis::cmd("SET").arg("app:v1:user:1").arg("x").query(&mut app).expect("app writes its keys");
    let () = redis::cmd("SET").arg("{app:v1:user:1}:lease").arg("t").query(&mut app).expect("and their leases");
    assert_noperm("FLUSHALL", redis::cmd("FLUSHALL").query::<()>(&mut app));
    assert_noperm("CONFIG GET", redis::cmd("CONFIG").arg("GET").arg("maxmemory").query::<Vec<String>>(&mut app));
    assert_noperm("CONFIG SET", redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1").query::<()>(&mut app));
    assert_noperm("KEYS", redis::cmd("KEYS").arg("*").query::<Vec<String>>(&mut app));
    assert_noperm("DEBUG", redis::cmd("DEBUG").arg("SLEEP").arg("0").query::<()>(&mut app));
    assert_noperm("SHUTDOWN", redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut app));
    assert_noperm("SET other", redis::cmd("SET").arg("billing:1").arg("x").query::<()>(&mut app));
    assert_noperm("GET other", redis::cmd("GET").arg("billing:1").query::<Option<String>>(&mut app));
    assert_noperm("SCRIPT FLUSH", redis::cmd("SCRIPT").arg("FLUSH").query::<()>(&mut app));
    assert_noperm("PUBLISH", redis::cmd("PUBLISH").arg("app:chan").arg("x").query::<i64>(&mut app));
    // A script cannot reach outside the prefix either.
    assert_noperm(
        "EVAL other key",
        redis::cmd("EVAL").arg("return redis.call('SET', KEYS[1], 'x')").arg(1).arg("billing:1").query::<()>(&mut app),
    );

    let mut ro = as_role(port, &s, Role::Readonly);
    let v: Option<String> = redis::cmd("GET").arg("app:v1:user:1").query(&mut ro).expect("readonly reads");
    assert_eq!(v.as_deref(), Some("x"));
    assert_noperm("readonly SET", redis::cmd("SET").arg("app:v1:user:1").arg("y").query::<()>(&mut ro));
    assert_noperm("readonly DEL", redis::cmd("DEL").arg("app:v1:user:1").query::<i64>(&mut ro));
    assert_noperm("readonly GET other", redis::cmd("GET").arg("billing:1").query::<Option<String>>(&mut ro));

    let mut metrics = as_role(port, &s, Role::Metrics);
    let info: String = redis::cmd("INFO").arg("memory").query(&mut metrics).expect("metrics reads INFO");
    assert!(info.contains("used_memory"));
    let _: redis::Value = redis::cmd("SLOWLOG").arg("GET").query(&mut metrics).expect("SLOWLOG GET");
    let _: redis::Value = redis::cmd("LATENCY").arg("LATEST").query(&mut metrics).expect("LATENCY LATEST");
    assert_noperm("metrics GET", redis::cmd("GET").arg("app:v1:user:1").query::<Option<String>>(&mut metrics));
    assert_noperm("metrics SLOWLOG RESET", redis::cmd("SLOWLOG").arg("RESET").query::<()>(&mut metrics));

    // The replication user can do nothing else.
    let mut repl = as_role(port, &s, Role::Replication);
    assert_noperm("replication GET", redis::cmd("GET").arg("app:v1:user:1").query::<Option<String>>(&mut repl));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_api_works_as_app_over_tls_on_a_cluster() -> TestResult {
    let s = Secrets::new();
    let cluster = RedisCluster::builder()
        .masters(3)
        .replicas(1)
        .tls(s.tls.clone())
        .acl_file(s.acl_path(), &s.roles)
        .start()
        .expect("start a secure 3+3 cluster");
    // Replicas synced over TLS as the replication user (start waits for every link to be up).
    for i in cluster.master_indices()? {
        let mut con = cluster.nodes()[i].connection()?;
        let info: String = redis::cmd("INFO").arg("replication").query(&mut con)?;
        assert!(info.contains("connected_slaves:1"), "{info}");
    }
    let urls: Vec<String> = cluster.nodes().iter().map(|n| n.public_url()).collect();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")));
    let app_pass = s.roles.password(Role::App);
    let a = builder(urls.clone(), true, &s, "app", app_pass).require_redis(true).build().await?;
    let b = builder(urls.clone(), true, &s, "app", app_pass).require_redis(true).build().await?;

    let schema = KeySchema::new("app", 1)?;
    let key = schema.key("user", "1")?;
    a.set(&key, &"v1".to_string(), Ttl::Medium).await?;
    assert_eq!(b.get::<String>(&key).await?.as_deref(), Some("v1"));
    // b now holds it in L1; a's overwrite must reach b through invalidation tracking.
    a.set(&key, &"v2".to_string(), Ttl::Medium).await?;
    assert_eq!(eventually_reads(&b, &key, "v2").await?.as_deref(), Some("v2"), "b's L1 copy was invalidated");

    // Cache-aside with leases, then a namespace invalidation (stamps) forces a reload.
    let loads = Arc::new(AtomicUsize::new(0));
    let other = schema.key("order", "9")?;
    for _ in 0..3 {
        let loads = loads.clone();
        let v: u64 = a
            .get_or_set(&other, Ttl::Short, || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(42)
            })
            .await?;
        assert_eq!(v, 42);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load, then hits");
    a.invalidate_namespace(other.namespace()).await?;
    let reloads = loads.clone();
    let v: u64 = b
        .get_or_set(&other, Ttl::Short, || async move {
            reloads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(43)
        })
        .await?;
    assert_eq!((v, loads.load(Ordering::SeqCst)), (43, 2), "the invalidated value was reloaded");

    let many: Vec<_> = (0..20).map(|i| schema.key("item", &i.to_string())).collect::<Result<_, _>>()?;
    for k in &many {
        a.set(k, &k.as_str().to_string(), Ttl::Short).await?;
    }
    let got = b.get_many::<String>(&many).await?;
    assert_eq!(got.iter().filter(|v| v.is_some()).count(), many.len());
    assert!(a.delete(&key).await?);
    assert_eq!(a.get::<String>(&key).await?, None);
    for c in [&a, &b] {
        let m = c.metrics();
        assert_eq!(m.l2_errors, 0, "no Redis call was refused: {m:?}");
    }

    // The app user still cannot flush the cluster.
    let master = cluster.master_indices()?[0];
    let mut app = as_role(cluster.nodes()[master].port(), &s, Role::App);
    assert_noperm("cluster FLUSHALL", redis::cmd("FLUSHALL").query::<()>(&mut app));
    Ok(())
}

/// Credentials given in the URLs alone (no `username` / `password` on the builder), as
/// `strata drill partition` and most deployments pass them: every connection the cache makes
/// must log in, the tracking connections to the nodes it discovers included. Without them
/// tracking never came up on an ACL cluster and L1 stayed closed (issue 18's lab found it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_urls_reach_every_connection_and_l1_opens() -> TestResult {
    let s = Secrets::new();
    let cluster = RedisCluster::builder()
        .masters(3)
        .replicas(1)
        .acl_file(s.acl_path(), &s.roles)
        .start()
        .expect("start a 3+3 cluster with ACL users");
    let pass = s.roles.password(Role::App);
    let urls: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.public_url().replacen("redis://", &format!("redis://app:{pass}@"), 1))
        .collect();
    assert!(urls.iter().all(|u| u.starts_with("redis://app:")), "{urls:?}");
    let build = || {
        Cache::builder()
            .cluster(urls.clone())
            .require_redis(true)
            .op_timeout(Duration::from_secs(2))
            .invalidation(Invalidation::default().heartbeat(Duration::from_millis(200), Duration::from_secs(2)))
            .build()
    };
    let (a, b) = (build().await?, build().await?);
    let mut coherent = false;
    for _ in 0..100 {
        coherent = a.metrics().l1_coherent && b.metrics().l1_coherent;
        if coherent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(coherent, "tracking never came up: a {:?}, b {:?}", a.metrics().l1_coherent, b.metrics().l1_coherent);

    let key = KeySchema::new("app", 1)?.key("user", "1")?;
    a.set(&key, &"v1".to_string(), Ttl::Medium).await?;
    assert_eq!(b.get::<String>(&key).await?.as_deref(), Some("v1"));
    let before = b.metrics().total().l1_hits;
    assert_eq!(b.get::<String>(&key).await?.as_deref(), Some("v1"));
    assert!(b.metrics().total().l1_hits > before, "the second read was not an L1 hit");
    // And b's L1 copy follows a's write.
    a.set(&key, &"v2".to_string(), Ttl::Medium).await?;
    assert_eq!(eventually_reads(&b, &key, "v2").await?.as_deref(), Some("v2"));
    Ok(())
}

/// What `cache` reads for `key` once it reads `want`, or after 5 s of trying.
async fn eventually_reads(cache: &Cache, key: &strata::Key, want: &str) -> strata::Result<Option<String>> {
    let mut seen = None;
    for _ in 0..100 {
        seen = cache.get::<String>(key).await?;
        if seen.as_deref() == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(seen)
}
