//! Reading and checking the web config file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use http::{HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::auth::BasicAuth;

/// Why a web config could not be used: one line a person can act on.
#[derive(Debug, Clone)]
pub struct WebConfigError {
    message: String,
}

impl WebConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

impl fmt::Display for WebConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WebConfigError {}

/// The file as written. Keys the exporter toolkit knows but Strata does not support are read
/// (as [`IgnoredAny`]) only to name them in an error; any other key is refused by serde.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<IgnoredAny>,
    curve_preferences: Option<IgnoredAny>,
    prefer_server_cipher_suites: Option<IgnoredAny>,
    client_allowed_sans: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The headers `http_server_config.headers` may set (the exporter toolkit's list).
const SETTABLE_HEADERS: [&str; 5] = [
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "x-xss-protection",
    "strict-transport-security",
];

/// A checked web config: the TLS server settings (certificate and key loaded), the basic-auth
/// users (hashes parsed), the response headers. Cheap to clone.
#[derive(Clone)]
pub struct WebConfig {
    inner: Arc<Inner>,
}

struct Inner {
    tls: Option<Arc<rustls::ServerConfig>>,
    /// `client_auth_type: RequireAndVerifyClientCert`: every client shows a certificate the CA signed.
    client_certs: bool,
    auth: Option<Arc<BasicAuth>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.has_tls())
            .field("basic_auth_users", &self.inner.auth.as_ref().map(|a| a.user_count()).unwrap_or(0))
            .field("headers", &self.inner.headers.len())
            .finish()
    }
}

impl WebConfig {
    /// Reads `path` and checks everything it names: the certificate and key files (and that
    /// they go together), the client CA, the bcrypt hashes. Relative paths in it are taken
    /// from the directory of `path`, as the exporter toolkit does.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| WebConfigError::new(format!("reading the web config {}: {e}", path.display())))?;
        let base = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Self::from_yaml(&text, base).map_err(|e| WebConfigError::new(format!("web config {}: {e}", path.display())))
    }

    /// A web config from its YAML text, relative paths taken from `base`.
    pub fn from_yaml(text: &str, base: &Path) -> Result<Self, WebConfigError> {
        let raw = parse(text)?;
        let client_certs = raw
            .tls_server_config
            .as_ref()
            .is_some_and(|tls| tls.client_auth_type.as_deref() == Some("RequireAndVerifyClientCert"));
        let tls = raw.tls_server_config.map(|tls| tls_config(tls, base)).transpose()?;
        let mut headers = Vec::new();
        if let Some(http) = raw.http_server_config {
            if http.http2 == Some(true) {
                return Err(WebConfigError::new(
                    "http_server_config.http2: true is not supported: the admin endpoints speak HTTP/1.1 \
                     (remove the key or set it to false)",
                ));
            }
            for (name, value) in http.headers.unwrap_or_default() {
                if !SETTABLE_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    return Err(WebConfigError::new(format!(
                        "http_server_config.headers: {name} cannot be set (only Content-Security-Policy, \
                         X-Frame-Options, X-Content-Type-Options, X-XSS-Protection, Strict-Transport-Security)"
                    )));
                }
                let header = HeaderName::try_from(name.as_str())
                    .map_err(|e| WebConfigError::new(format!("http_server_config.headers: {name}: {e}")))?;
                let value = HeaderValue::try_from(value.as_str())
                    .map_err(|e| WebConfigError::new(format!("http_server_config.headers.{name}: {e}")))?;
                headers.push((header, value));
            }
        }
        let users = raw.basic_auth_users.unwrap_or_default();
        let auth =
            if users.is_empty() { None } else { Some(Arc::new(BasicAuth::new(users).map_err(WebConfigError::new)?)) };
        Ok(Self { inner: Arc::new(Inner { tls, client_certs, auth, headers }) })
    }

    /// Whether connections are TLS.
    pub fn has_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// Whether requests need a basic-auth user and password.
    pub fn has_basic_auth(&self) -> bool {
        self.inner.auth.is_some()
    }

    /// Whether it authenticates clients (basic auth, or required and verified client
    /// certificates): see [`check_listen`](crate::check_listen). TLS alone encrypts what anyone
    /// may read, and does not count.
    pub fn protects(&self) -> bool {
        self.has_basic_auth() || self.inner.client_certs
    }

    /// `https` with TLS, `http` without.
    pub fn scheme(&self) -> &'static str {
        if self.has_tls() { "https" } else { "http" }
    }

    pub(crate) fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.inner.tls.clone()
    }

    /// `router`'s routes behind the basic auth (when there are users) and with the configured
    /// headers (on the 401s too). Only the routes already added are covered (a route layer), not a fallback added
    /// later: `strata edge` protects its `/_strata/*` routes this way and not the proxied traffic.
    pub fn protect<S: Clone + Send + Sync + 'static>(&self, mut router: Router<S>) -> Router<S> {
        if let Some(auth) = &self.inner.auth {
            router = router.route_layer(axum::middleware::from_fn_with_state(auth.clone(), crate::auth::require));
        }
        if !self.inner.headers.is_empty() {
            let headers = Arc::new(self.inner.headers.clone());
            router =
                router.route_layer(axum::middleware::map_response(move |mut response: axum::response::Response| {
                    let headers = headers.clone();
                    async move {
                        for (name, value) in headers.iter() {
                            response.headers_mut().insert(name.clone(), value.clone());
                        }
                        response
                    }
                }));
        }
        router
    }
}

fn parse(text: &str) -> Result<RawConfig, WebConfigError> {
    // An empty file (or only comments) is a valid config that does nothing, as in the toolkit.
    let empty = text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    });
    if empty {
        return Ok(RawConfig::default());
    }
    // One line (the position, without serde-saphyr's snippet of the file): it ends up in a log.
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options::<RawConfig>(text, options)
        .map_err(|e| WebConfigError::new(format!("not a valid web config: {e}")))
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() { path.to_owned() } else { base.join(path) }
}

/// The PEM text of `file` (resolved) or `inline`: exactly one of them.
fn pem_source(
    what: &str,
    file: Option<String>,
    inline: Option<String>,
    base: &Path,
) -> Result<(String, Vec<u8>), WebConfigError> {
    match (file, inline) {
        (Some(file), None) => {
            let path = resolve(base, &file);
            let bytes = std::fs::read(&path).map_err(|e| {
                WebConfigError::new(format!("tls_server_config.{what}_file: reading {}: {e}", path.display()))
            })?;
            Ok((path.display().to_string(), bytes))
        }
        (None, Some(text)) => Ok((format!("tls_server_config.{what}"), text.into_bytes())),
        (Some(_), Some(_)) => {
            Err(WebConfigError::new(format!("tls_server_config: give {what}_file or {what}, not both")))
        }
        (None, None) => Err(WebConfigError::new(format!("tls_server_config needs {what}_file (or {what})"))),
    }
}

fn certificates(source: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebConfigError::new(format!("{source}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(WebConfigError::new(format!("{source}: no CERTIFICATE in it")));
    }
    Ok(certs)
}

fn version(key: &str, name: &str) -> Result<&'static rustls::SupportedProtocolVersion, WebConfigError> {
    match name {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => Err(WebConfigError::new(format!(
            "tls_server_config.{key}: {name} is not supported (TLS 1.0 and 1.1 are obsolete): use TLS12 or TLS13"
        ))),
        _ => Err(WebConfigError::new(format!("tls_server_config.{key}: unknown version {name:?} (TLS12 or TLS13)"))),
    }
}

fn tls_config(raw: RawTls, base: &Path) -> Result<Arc<rustls::ServerConfig>, WebConfigError> {
    let unsupported = [
        ("cipher_suites", raw.cipher_suites.is_some()),
        ("curve_preferences", raw.curve_preferences.is_some()),
        ("prefer_server_cipher_suites", raw.prefer_server_cipher_suites.is_some()),
        ("client_allowed_sans", raw.client_allowed_sans.is_some()),
    ];
    if let Some((key, _)) = unsupported.iter().find(|(_, given)| *given) {
        return Err(WebConfigError::new(format!(
            "tls_server_config.{key} is not supported by Strata (rustls chooses its own safe cipher suites and \
             curves; client certificates are checked against client_ca_file only): remove it"
        )));
    }
    let (cert_source, cert_pem) = pem_source("cert", raw.cert_file, raw.cert, base)?;
    let (key_source, key_pem) = pem_source("key", raw.key_file, raw.key, base)?;
    let certs = certificates(&cert_source, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| WebConfigError::new(format!("{key_source}: no private key in it: {e}")))?;

    let min = raw.min_version.as_deref().map(|v| version("min_version", v)).transpose()?;
    let max = raw.max_version.as_deref().map(|v| version("max_version", v)).transpose()?;
    let all: [&'static rustls::SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
    let rank =
        |v: &rustls::SupportedProtocolVersion| if v.version == rustls::ProtocolVersion::TLSv1_3 { 13 } else { 12 };
    let versions: Vec<_> = all
        .into_iter()
        .filter(|v| min.is_none_or(|m| rank(v) >= rank(m)) && max.is_none_or(|m| rank(v) <= rank(m)))
        .collect();
    if versions.is_empty() {
        return Err(WebConfigError::new("tls_server_config: min_version is above max_version"));
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| WebConfigError::new(format!("tls_server_config: {e}")))?;
    let client_auth = raw.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let optional = match client_auth {
        "NoClientCert" | "" => None,
        "RequireAndVerifyClientCert" => Some(false),
        "VerifyClientCertIfGiven" => Some(true),
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(WebConfigError::new(format!(
                "tls_server_config.client_auth_type: {client_auth} (a client certificate that is not verified) is \
                 not supported: use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file"
            )));
        }
        other => {
            return Err(WebConfigError::new(format!(
                "tls_server_config.client_auth_type: unknown value {other:?} (NoClientCert, \
                 VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
            )));
        }
    };
    let builder = match (optional, raw.client_ca_file) {
        (None, None) => builder.with_no_client_auth(),
        (None, Some(_)) => {
            return Err(WebConfigError::new(
                "tls_server_config: client_ca_file is given but client_auth_type is not (set it to \
                 RequireAndVerifyClientCert or VerifyClientCertIfGiven)",
            ));
        }
        (Some(_), None) => {
            return Err(WebConfigError::new(format!(
                "tls_server_config: client_auth_type {client_auth} needs client_ca_file"
            )));
        }
        (Some(optional), Some(ca_file)) => {
            let path = resolve(base, &ca_file);
            let pem = std::fs::read(&path).map_err(|e| {
                WebConfigError::new(format!("tls_server_config.client_ca_file: reading {}: {e}", path.display()))
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(&path.display().to_string(), &pem)? {
                roots.add(cert).map_err(|e| {
                    WebConfigError::new(format!("{}: not a usable CA certificate: {e}", path.display()))
                })?;
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier =
                verifier.build().map_err(|e| WebConfigError::new(format!("tls_server_config.client_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        WebConfigError::new(format!(
            "the certificate {cert_source} and the key {key_source} cannot be used together: {e}"
        ))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with a CA, a server certificate and key, and a client certificate.
    fn certs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        strata_cluster::TlsMaterial::generate(&dir.path().join("tls")).expect("certificates");
        dir
    }

    fn load(dir: &Path, yaml: &str) -> Result<WebConfig, String> {
        let path = dir.join("web.yml");
        std::fs::write(&path, yaml).expect("write");
        WebConfig::load(&path).map_err(|e| e.to_string())
    }

    fn refused(dir: &Path, yaml: &str, expected: &[&str]) {
        let err = load(dir, yaml).expect_err(yaml);
        assert!(err.contains("web.yml"), "names the file: {err}");
        for part in expected {
            assert!(err.contains(part), "{part:?} not in {err:?}");
        }
    }

    #[test]
    fn a_full_config_loads_with_paths_relative_to_it() {
        let dir = certs();
        let hash = bcrypt::hash("pw", 4).expect("hash");
        let web = load(
            dir.path(),
            &format!(
                "# the exporter toolkit's format\ntls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n  \
                 min_version: TLS12\n  max_version: TLS13\nhttp_server_config:\n  http2: false\n  headers:\n    \
                 Strict-Transport-Security: max-age=31536000\n    X-Frame-Options: deny\n\
                 basic_auth_users:\n  prometheus: {hash}\n  alice: '{hash}'\n"
            ),
        )
        .expect("loads");
        assert!(web.has_tls() && web.has_basic_auth() && web.protects());
        assert_eq!(web.scheme(), "https");
        assert_eq!(web.inner.headers.len(), 2);
        assert_eq!(format!("{web:?}"), "WebConfig { tls: true, basic_auth_users: 2, headers: 2 }");
    }

    #[test]
    fn inline_certificates_and_client_verification_load() {
        let dir = certs();
        let cert = std::fs::read_to_string(dir.path().join("tls/server.crt")).expect("cert");
        let key = std::fs::read_to_string(dir.path().join("tls/server.key")).expect("key");
        let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
        let yaml = format!(
            "tls_server_config:\n  cert: |\n{}  key: |\n{}  client_auth_type: RequireAndVerifyClientCert\n  \
             client_ca_file: tls/ca.crt\n  min_version: TLS13\n",
            indent(&cert),
            indent(&key)
        );
        let web = load(dir.path(), &yaml).expect("loads");
        assert!(web.has_tls() && !web.has_basic_auth());
        assert!(web.protects(), "verified client certificates authenticate");
    }

    #[test]
    fn tls_without_authentication_protects_nothing() {
        let dir = certs();
        let web = load(dir.path(), "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n")
            .expect("loads");
        assert!(web.has_tls() && !web.protects(), "anyone may still read it");
        let addr = "0.0.0.0:9460".parse().expect("addr");
        assert!(crate::check_listen(addr, Some(&web), false).is_err());
    }

    #[test]
    fn an_empty_config_protects_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        for yaml in ["", "# nothing\n", "---\n", "basic_auth_users:\n", "basic_auth_users: {}\n"] {
            let web = load(dir.path(), yaml).expect(yaml);
            assert!(!web.protects(), "{yaml}");
            assert_eq!(web.scheme(), "http");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let dir = certs();
        let d = dir.path();
        let tls = "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n";
        refused(d, "tls_server_config: [\n", &["not a valid web config"]);
        refused(d, "basic_auth_users: [a, b]\n", &["not a valid web config"]);
        refused(d, "tls_config:\n  cert_file: x\n", &["tls_config"]);
        refused(d, "tls_server_config:\n  cert_file: tls/server.crt\n  keyfile: x\n", &["keyfile"]);
        refused(d, &format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"), &["cipher_suites", "not supported"]);
        refused(d, &format!("{tls}  client_allowed_sans: [a]\n"), &["client_allowed_sans"]);
        refused(d, &format!("{tls}  min_version: TLS10\n"), &["TLS10", "TLS12"]);
        refused(d, &format!("{tls}  min_version: TLS14\n"), &["unknown version"]);
        refused(d, &format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"), &["above"]);
        refused(d, &format!("{tls}  client_auth_type: RequireAnyClientCert\n"), &["RequireAnyClientCert"]);
        refused(d, &format!("{tls}  client_auth_type: Sometimes\n"), &["unknown value"]);
        refused(d, &format!("{tls}  client_ca_file: tls/ca.crt\n"), &["client_auth_type"]);
        refused(d, &format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"), &["needs client_ca_file"]);
        refused(
            d,
            &format!("{tls}  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: nope.crt\n"),
            &["nope.crt"],
        );
        refused(d, "tls_server_config:\n  key_file: tls/server.key\n", &["needs cert_file"]);
        refused(d, "tls_server_config:\n  cert_file: tls/server.crt\n", &["needs key_file"]);
        refused(
            d,
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: tls/server.key\n",
            &["missing.crt", "No such file"],
        );
        refused(
            d,
            "tls_server_config:\n  cert_file: tls/server.key\n  key_file: tls/server.key\n",
            &["server.key", "no CERTIFICATE"],
        );
        refused(
            d,
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.crt\n",
            &["no private key"],
        );
        // The client's key with the server's certificate.
        refused(
            d,
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/client.key\n",
            &["cannot be used together"],
        );
        refused(d, &format!("{tls}  cert: x\n"), &["not both"]);
        refused(d, "basic_auth_users:\n  prometheus: hunter2\n", &["basic_auth_users.prometheus", "not a bcrypt hash"]);
        refused(d, "http_server_config:\n  http2: true\n", &["http2"]);
        refused(d, "http_server_config:\n  headers:\n    Server: strata\n", &["Server cannot be set"]);
        refused(d, "http_server_config:\n  headers:\n    X-Frame-Options: \"a\\nb\"\n", &["X-Frame-Options"]);
        let missing = WebConfig::load(&d.join("absent.yml")).expect_err("no file").to_string();
        assert!(missing.contains("absent.yml"), "{missing}");
    }
}
