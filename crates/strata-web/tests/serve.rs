//! A router served through a web config, checked by a real TLS client: TLS only, basic auth
//! (401 and its challenge), the configured headers, client certificates.

mod client;

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::routing::get;
use client::{client_config, http_get, https_get};
use strata_web::WebConfig;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Serves a two-route router through `web` on a free loopback port until the test ends.
async fn serve(web: Option<WebConfig>) -> Result<SocketAddr, Box<dyn std::error::Error + Send + Sync>> {
    let mut router = Router::new().route("/metrics", get(|| async { "strata_up 1\n" }));
    if let Some(web) = &web {
        router = web.protect(router);
    }
    let router = router.route("/open", get(|| async { "open\n" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { strata_web::serve(listener, router, web.as_ref(), std::future::pending()).await });
    Ok(addr)
}

fn write_config(dir: &Path, yaml: &str) -> Result<WebConfig, Box<dyn std::error::Error + Send + Sync>> {
    let path = dir.join("web.yml");
    std::fs::write(&path, yaml)?;
    Ok(WebConfig::load(&path)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_basic_auth_guard_the_protected_routes() -> TestResult {
    let dir = tempfile::tempdir()?;
    strata_cluster::TlsMaterial::generate(&dir.path().join("tls"))?;
    let hash = bcrypt::hash("s3cret", 4)?;
    let web = write_config(
        dir.path(),
        &format!(
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    )?;
    let addr = serve(Some(web)).await?;
    let tls = client_config(&std::fs::read(dir.path().join("tls/ca.crt"))?, None);

    let ok = https_get(tls.clone(), addr, "/metrics", Some(("prometheus", "s3cret"))).await?;
    assert_eq!((ok.status, ok.body.as_str()), (200, "strata_up 1\n"), "{ok:?}");
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
    // Remembered: the second time is not a bcrypt check (nothing to see but that it passes).
    assert_eq!(https_get(tls.clone(), addr, "/metrics", Some(("prometheus", "s3cret"))).await?.status, 200);

    for basic in [None, Some(("prometheus", "wrong")), Some(("nobody", "s3cret")), Some(("", ""))] {
        let denied = https_get(tls.clone(), addr, "/metrics", basic).await?;
        assert_eq!(denied.status, 401, "{basic:?}: {denied:?}");
        assert_eq!(denied.header("www-authenticate"), Some("Basic realm=\"strata\""));
        assert_eq!(denied.header("x-content-type-options"), Some("nosniff"), "headers on a 401 too");
        assert!(!denied.body.contains("strata_up"));
    }
    // A route added after `protect` is not behind the auth, but still behind TLS.
    assert_eq!(https_get(tls.clone(), addr, "/open", None).await?.status, 200);

    // Plain HTTP gets no HTTP answer from a TLS listener.
    let plain = http_get(addr, "/metrics", Some(("prometheus", "s3cret"))).await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // Neither does a client that does not trust the certificate.
    let other_ca = tempfile::tempdir()?;
    strata_cluster::TlsMaterial::generate(other_ca.path())?;
    let untrusting = client_config(&std::fs::read(other_ca.path().join("ca.crt"))?, None);
    assert!(https_get(untrusting, addr, "/metrics", Some(("prometheus", "s3cret"))).await.is_err());
    // The server still serves after all that.
    assert_eq!(https_get(tls, addr, "/metrics", Some(("prometheus", "s3cret"))).await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified() -> TestResult {
    let dir = tempfile::tempdir()?;
    strata_cluster::TlsMaterial::generate(&dir.path().join("tls"))?;
    let web = write_config(
        dir.path(),
        "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: tls/ca.crt\n",
    )?;
    let addr = serve(Some(web)).await?;
    let ca = std::fs::read(dir.path().join("tls/ca.crt"))?;
    let (cert, key) =
        (std::fs::read(dir.path().join("tls/client.crt"))?, std::fs::read(dir.path().join("tls/client.key"))?);
    let with_cert = client_config(&ca, Some((&cert, &key)));
    assert_eq!(https_get(with_cert, addr, "/metrics", None).await?.status, 200);
    let without = https_get(client_config(&ca, None), addr, "/metrics", None).await;
    assert!(without.is_err(), "served without a client certificate: {without:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_without_tls_and_no_config_at_all() -> TestResult {
    let dir = tempfile::tempdir()?;
    let hash = bcrypt::hash("pw", 4)?;
    let web = write_config(dir.path(), &format!("basic_auth_users:\n  u: '{hash}'\n"))?;
    let addr = serve(Some(web)).await?;
    assert_eq!(http_get(addr, "/metrics", None).await?.status, 401);
    assert_eq!(http_get(addr, "/metrics", Some(("u", "pw"))).await?.status, 200);

    let addr = serve(None).await?;
    assert_eq!(http_get(addr, "/metrics", None).await?.status, 200);
    Ok(())
}
