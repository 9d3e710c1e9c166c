//! The web config of Strata's admin endpoints (`strata serve`, and `strata edge`'s
//! `/_strata/*`): TLS and HTTP basic auth, read from a file in the format of the Prometheus
//! exporter toolkit's `--web.config.file`, so a file written for node_exporter or
//! redis_exporter works here too.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative paths: from the config file's directory
//!   key_file: server.key
//!   # client_auth_type: RequireAndVerifyClientCert
//!   # client_ca_file: clients.crt
//!   # min_version: TLS12         # TLS12 (default) or TLS13
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! basic_auth_users:
//!   prometheus: $2y$10$...       # bcrypt hashes (htpasswd -nBC 10 prometheus)
//! ```
//!
//! - `config.rs`: [`WebConfig::load`] reads and checks the file (certificates, keys, hashes)
//!   at startup, so a mistake stops the server before it listens; a key the file names but
//!   Strata does not support is an error, not silently ignored.
//! - `auth.rs`: basic auth as an axum middleware ([`WebConfig::protect`]): 401 with
//!   `WWW-Authenticate: Basic realm="strata"`; bcrypt runs on the blocking pool, successful
//!   checks are remembered (bounded) so a scrape every few seconds does not pay bcrypt's cost
//!   each time; an unknown user is checked against a dummy hash of the same cost.
//! - `tls.rs`: a TLS listener (tokio-rustls on ring) for [`axum::serve()`]: handshakes run in
//!   tasks of their own, bounded in number and time, so a slow client does not hold up others.
//!
//! [`check_listen`] is the rule both commands apply: a non-loopback address needs a web
//! config that protects it (TLS or basic auth), unless the operator says `--insecure-listen`.

mod auth;
mod config;
mod tls;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub use config::{WebConfig, WebConfigError};

/// Whether `ip` is a loopback address: 127.0.0.0/8, `::1` (or `::ffff:127.x.y.z`).
/// `0.0.0.0` and `::` listen on every interface, so they are not.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, or `localhost:PORT` (127.0.0.1).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|e| format!("bad port in {text:?}: {e}"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse().map_err(|e| format!("expected IP:PORT or localhost:PORT, got {text:?}: {e}"))
}

/// The rule for an admin listener: a loopback address may serve without protection; any
/// other needs a web config with TLS or basic auth, or `insecure_listen` (the operator's word
/// that something else protects it, a proxy or a private network). Logs nothing: see
/// [`listen_warning`] for what to log once the listener is bound.
pub fn check_listen(addr: SocketAddr, web: Option<&WebConfig>, insecure_listen: bool) -> Result<(), WebConfigError> {
    if is_loopback(addr.ip()) || insecure_listen || web.is_some_and(WebConfig::protects) {
        return Ok(());
    }
    Err(WebConfigError::new(match web {
        Some(_) => format!(
            "refusing to listen on {addr}: it is not a loopback address and the web config authenticates no \
             one (neither basic_auth_users nor client_auth_type: RequireAndVerifyClientCert; TLS alone lets \
             anyone read); add them, or give --insecure-listen to serve it unprotected"
        ),
        None => format!(
            "refusing to listen on {addr}: it is not a loopback address and no web config protects it; give \
             --web-config FILE (TLS, basic auth), or --insecure-listen to serve it unprotected (behind a proxy \
             that protects it)"
        ),
    }))
}

/// What an admin listener that [`check_listen`] let through should warn about: served off
/// loopback without TLS (passwords in clear text), or without any protection.
pub fn listen_warning(addr: SocketAddr, web: Option<&WebConfig>) -> Option<String> {
    if is_loopback(addr.ip()) {
        return None;
    }
    match web {
        Some(web) if web.has_tls() && web.protects() => None,
        Some(web) if web.has_tls() => {
            Some(format!("{addr}: TLS without authentication, anyone may read the admin endpoints (--insecure-listen)"))
        }
        Some(web) if web.has_basic_auth() => {
            Some(format!("{addr}: basic auth without TLS, passwords cross the network in clear text"))
        }
        _ => Some(format!(
            "{addr}: admin endpoints served off loopback without TLS or authentication (--insecure-listen)"
        )),
    }
}

/// Serves `router` on `listener` until `shutdown` completes: over TLS when `web` has a
/// `tls_server_config`, plain HTTP otherwise. Authentication is the router's: see
/// [`WebConfig::protect`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    web: Option<&WebConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match web.and_then(WebConfig::tls) {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, router).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(listener, router).with_graceful_shutdown(shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["0.0.0.0", "::", "10.0.0.1", "192.168.1.1", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(!is_loopback(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("localhost:9460"), Ok("127.0.0.1:9460".parse().expect("addr")));
        assert_eq!(parse_listen("[::1]:1"), Ok("[::1]:1".parse().expect("addr")));
        assert!(parse_listen("localhost:x").is_err());
        assert!(parse_listen("example.com:80").is_err());
    }

    #[test]
    fn non_loopback_needs_protection_or_consent() {
        let public: SocketAddr = "0.0.0.0:9460".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:9460".parse().expect("addr");
        assert!(check_listen(local, None, false).is_ok());
        let err = check_listen(public, None, false).expect_err("refused").to_string();
        assert!(err.contains("--web-config") && err.contains("--insecure-listen"), "{err}");
        assert!(check_listen(public, None, true).is_ok());
        let empty = WebConfig::from_yaml("", std::path::Path::new(".")).expect("empty config");
        assert!(check_listen(public, Some(&empty), false).is_err());
        let hash = bcrypt::hash("pw", 4).expect("hash");
        let auth = WebConfig::from_yaml(&format!("basic_auth_users:\n  u: '{hash}'\n"), std::path::Path::new("."))
            .expect("config");
        assert!(check_listen(public, Some(&auth), false).is_ok());
        assert!(listen_warning(public, Some(&auth)).is_some_and(|w| w.contains("clear text")));
        assert!(listen_warning(public, None).is_some_and(|w| w.contains("--insecure-listen")));
        assert_eq!(listen_warning(local, None), None);
    }
}
