//! A tiny HTTP/1.1 client over TLS (rustls, ring) for the tests of admin endpoints behind a
//! web config. Shared by the tests of strata-web, strata-admin and strata-http (`#[path]`).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A response: status, header lines (lower-cased names), body (de-chunked).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A client trusting `ca_pem`, presenting `client` (certificate and key PEM) if given.
pub fn client_config(ca_pem: &[u8], client: Option<(&[u8], &[u8])>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>().expect("client certificate"),
                PrivateKeyDer::from_pem_slice(key).expect("client key"),
            )
            .expect("client certificate and key"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// `GET path` over TLS to `addr` (verified as `localhost`), with basic auth if given.
pub async fn https_get(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
    basic: Option<(&str, &str)>,
) -> std::io::Result<Reply> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
        exchange(tls, addr, path, basic).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other(format!("GET {path} on {addr} took over {REQUEST_TIMEOUT:?}"))))
}

/// `GET path` in plain HTTP, with basic auth if given.
pub async fn http_get(addr: SocketAddr, path: &str, basic: Option<(&str, &str)>) -> std::io::Result<Reply> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        exchange(tcp, addr, path, basic).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other(format!("GET {path} on {addr} took over {REQUEST_TIMEOUT:?}"))))
}

async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    path: &str,
    basic: Option<(&str, &str)>,
) -> std::io::Result<Reply> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((user, password)) = basic {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Authorization: Basic {encoded}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    // A server may close without TLS's close_notify once it has said everything.
    match stream.read_to_end(&mut raw).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!("not an HTTP response: {text:?}")));
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Ok(Reply { status, headers, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest.get(size + 2..).unwrap_or_default();
    }
    out
}
