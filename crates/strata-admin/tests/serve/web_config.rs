//! `strata serve` behind a web config (TLS, basic auth): a real Prometheus scrapes it over
//! TLS with basic auth, and the same Prometheus fails with a wrong password and in plain HTTP;
//! a Rust TLS client checks the 401s and that plain HTTP gets no answer.

use std::time::{Duration, Instant};

use serde_json::Value;
use strata_admin::ServeConfig;
use strata_cluster::{RedisServer, TlsMaterial};
use strata_ops::{Credentials, Deployment};
use strata_web::WebConfig;

use crate::client::{client_config, http_get, https_get};
use crate::common::{Prometheus, TestResult, serve};

const USER: &str = "prometheus";
const PASSWORD: &str = "a scrape password";
/// Longest the scrapes may take to show up (Prometheus scrapes every second).
const SCRAPES: Duration = Duration::from_secs(30);

fn target<'a>(targets: &'a [Value], job: &str) -> Option<&'a Value> {
    targets.iter().find(|t| t["labels"]["job"] == job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_serve_over_tls_with_basic_auth() -> TestResult {
    let redis = RedisServer::start()?;
    let dir = tempfile::tempdir()?;
    TlsMaterial::generate(&dir.path().join("tls"))?;
    // Cost 4 keeps the unoptimised test build quick; production hashes are 10 or more.
    let hash = bcrypt::hash(PASSWORD, 4)?;
    let web_yml = dir.path().join("web.yml");
    std::fs::write(
        &web_yml,
        format!(
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n\
             basic_auth_users:\n  {USER}: {hash}\n"
        ),
    )?;
    let mut config =
        ServeConfig::new(Deployment::discover(&redis.url(), &Credentials::default())?, "127.0.0.1:0".parse()?);
    config.interval = Duration::from_millis(200);
    config.web = Some(WebConfig::load(&web_yml)?);
    let server = serve(config).await;
    let addr = server.addr;

    // A Rust client: the right password, none, a wrong one, plain HTTP.
    let ca = dir.path().join("tls").join("ca.crt");
    let tls = client_config(&std::fs::read(&ca)?, None);
    let metrics = https_get(tls.clone(), addr, "/metrics", Some((USER, PASSWORD))).await?;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(metrics.body.contains("redis_up"), "{}", metrics.body);
    for (path, basic) in [("/metrics", None), ("/metrics", Some((USER, "wrong"))), ("/healthz", None), ("/", None)] {
        let denied = https_get(tls.clone(), addr, path, basic).await?;
        assert_eq!(denied.status, 401, "{path} {basic:?}: {denied:?}");
        assert_eq!(denied.header("www-authenticate"), Some("Basic realm=\"strata\""));
    }
    let plain = http_get(addr, "/metrics", Some((USER, PASSWORD))).await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // A real Prometheus: one job as it should be, one with a wrong password, one in plain HTTP.
    let job = |name: &str, scheme: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: {scheme}\n    tls_config:\n      ca_file: {}\n      server_name: localhost\n    \
             basic_auth:\n      username: {USER}\n      password: {password}\n    static_configs:\n      - targets: ['{addr}']\n",
            ca.display()
        )
    };
    let prometheus = Prometheus::start_with(&format!(
        "{}{}{}",
        job("strata", "https", PASSWORD),
        job("wrong-password", "https", "nope"),
        job("plain-http", "http", PASSWORD)
    ));
    let started = Instant::now();
    let targets = loop {
        let targets = prometheus.targets().await.unwrap_or_default();
        let health = |job: &str| target(&targets, job).and_then(|t| t["health"].as_str()).unwrap_or("").to_owned();
        if health("strata") == "up" && health("wrong-password") == "down" && health("plain-http") == "down" {
            break targets;
        }
        assert!(
            started.elapsed() < SCRAPES,
            "the targets did not settle in {SCRAPES:?}: {targets:?}; Prometheus' log:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let error = |job: &str| target(&targets, job).and_then(|t| t["lastError"].as_str()).unwrap_or("").to_owned();
    assert_eq!(error("strata"), "");
    assert!(error("wrong-password").contains("401"), "{}", error("wrong-password"));
    assert!(!error("plain-http").is_empty());

    // What it scraped is queryable.
    assert_eq!(prometheus.query(r#"redis_up{job="strata"}"#).await, Some(1.0));
    let strata_series = prometheus.query(r#"count({__name__=~"strata_.+", job="strata"})"#).await;
    assert!(strata_series.is_some_and(|n| n >= 1.0), "strata_* series: {strata_series:?}");
    assert_eq!(prometheus.query(r#"up{job="wrong-password"}"#).await, Some(0.0));
    Ok(())
}

#[tokio::test]
async fn serve_refuses_a_non_loopback_address_without_protection() -> TestResult {
    let redis = RedisServer::start()?;
    let deployment = Deployment::discover(&redis.url(), &Credentials::default())?;
    for listen in ["0.0.0.0:0", "[::]:0", "10.0.0.1:0"] {
        let config = ServeConfig::new(deployment.clone(), listen.parse()?);
        let err = strata_admin::Server::bind(config).await.expect_err("refused").to_string();
        assert!(err.contains(&format!("refusing to listen on {listen}")), "{err}");
    }
    // A web config that protects nothing does not count.
    let mut config = ServeConfig::new(deployment, "0.0.0.0:0".parse()?);
    config.web = Some(WebConfig::from_yaml("http_server_config:\n  headers: {}\n", std::path::Path::new("."))?);
    let err = strata_admin::Server::bind(config).await.expect_err("refused").to_string();
    assert!(err.contains("the web config authenticates no one"), "{err}");
    // (--insecure-listen is `strata_web::check_listen`'s unit test: no test listens beyond loopback.)
    Ok(())
}
