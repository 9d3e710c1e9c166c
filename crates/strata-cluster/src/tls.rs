//! TLS for the nodes: certificate files, the `tls-*` config lines, and a
//! private CA generated with rcgen for local secure setups.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{ClusterError, ErrorKind, Result};

/// Whether nodes require a client certificate (`tls-auth-clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsAuthClients {
    /// Clients need no certificate (`no`).
    No,
    /// A certificate is checked when one is presented (`optional`); passwords still apply.
    #[default]
    Optional,
    /// Every client must present a certificate signed by the CA (`yes`).
    Yes,
}

impl TlsAuthClients {
    fn as_config(self) -> &'static str {
        match self {
            TlsAuthClients::No => "no",
            TlsAuthClients::Optional => "optional",
            TlsAuthClients::Yes => "yes",
        }
    }
}

/// PEM files for TLS on every node: the CA that signed them, the server
/// certificate and key (also used by nodes towards each other), and an
/// optional client certificate that probes and `redis-cli` present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// CA certificate (PEM) clients and nodes verify against.
    pub ca_cert: PathBuf,
    /// Server certificate (PEM), valid for `127.0.0.1` and `localhost`.
    pub server_cert: PathBuf,
    /// Server private key (PEM).
    pub server_key: PathBuf,
    /// Client certificate and key (PEM) presented by this crate's own connections.
    pub client: Option<(PathBuf, PathBuf)>,
    /// `tls-auth-clients` (default `optional`).
    pub auth_clients: TlsAuthClients,
}

/// File names [`TlsMaterial::generate`] writes.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA's private key (kept to issue more client certificates; safe to delete).
pub const CA_KEY_FILE: &str = "ca.key";
/// Server certificate file name.
pub const SERVER_CERT_FILE: &str = "server.crt";
/// Server key file name.
pub const SERVER_KEY_FILE: &str = "server.key";
/// Client certificate file name.
pub const CLIENT_CERT_FILE: &str = "client.crt";
/// Client key file name.
pub const CLIENT_KEY_FILE: &str = "client.key";

impl TlsMaterial {
    /// Generate a fresh CA, a server certificate for `127.0.0.1` / `localhost`
    /// and a client certificate into `dir` (created 0700 if missing; files 0600).
    pub fn generate(dir: &Path) -> Result<TlsMaterial> {
        create_private_dir(dir)?;
        let pems = TlsPems::generate(&["127.0.0.1".into(), "localhost".into()])?;
        for (name, pem) in pems.files() {
            write_private(&dir.join(name), pem.as_bytes())?;
        }
        Ok(TlsMaterial::in_dir(dir))
    }

    /// The material [`generate`](Self::generate) wrote into `dir` (nothing is read).
    pub fn in_dir(dir: &Path) -> TlsMaterial {
        TlsMaterial {
            ca_cert: dir.join(CA_CERT_FILE),
            server_cert: dir.join(SERVER_CERT_FILE),
            server_key: dir.join(SERVER_KEY_FILE),
            client: Some((dir.join(CLIENT_CERT_FILE), dir.join(CLIENT_KEY_FILE))),
            auth_clients: TlsAuthClients::Optional,
        }
    }

    /// The same material with another `tls-auth-clients` setting.
    pub fn with_auth_clients(mut self, auth_clients: TlsAuthClients) -> TlsMaterial {
        self.auth_clients = auth_clients;
        self
    }

    /// Certificates for a redis-rs client: the CA, plus the client certificate if any.
    pub fn client_certificates(&self) -> Result<redis::TlsCertificates> {
        let root_cert = Some(read(&self.ca_cert)?);
        let client_tls = match &self.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
            None => None,
        };
        Ok(redis::TlsCertificates { client_tls, root_cert })
    }

    /// `redis-cli` arguments for a TLS connection (file paths only, no secrets).
    pub(crate) fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["--tls".to_string(), "--cacert".into(), self.ca_cert.display().to_string()];
        if let Some((cert, key)) = &self.client {
            args.extend(["--cert".into(), cert.display().to_string(), "--key".into(), key.display().to_string()]);
        }
        args
    }

    /// The `tls-*` lines of a node's config, for client port `port` (`port 0`: no plaintext
    /// listener; replication and the cluster bus over TLS too).
    pub fn config_lines(&self, port: u16) -> Vec<(&'static str, String)> {
        let q = |p: &Path| crate::config::quote(&p.display().to_string());
        vec![
            ("port", "0".into()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", q(&self.server_cert)),
            ("tls-key-file", q(&self.server_key)),
            ("tls-ca-cert-file", q(&self.ca_cert)),
            ("tls-auth-clients", self.auth_clients.as_config().into()),
            ("tls-replication", "yes".into()),
            ("tls-cluster", "yes".into()),
        ]
    }
}

/// A CA and the certificates it signed, as PEM text, before they are written anywhere.
/// `Debug` leaves the private keys out.
#[derive(Clone)]
pub struct TlsPems {
    /// CA certificate.
    pub ca_cert: String,
    /// CA private key (only needed to issue more certificates).
    pub ca_key: String,
    /// Server certificate (server and client usage: nodes connect to each other with it).
    pub server_cert: String,
    /// Server private key.
    pub server_key: String,
    /// Client certificate.
    pub client_cert: String,
    /// Client private key.
    pub client_key: String,
}

impl std::fmt::Debug for TlsPems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPems").field("ca_cert", &self.ca_cert).finish_non_exhaustive()
    }
}

impl TlsPems {
    /// A fresh CA (ECDSA P-256), a server certificate for `server_names` (IP addresses or DNS
    /// names) and a client certificate, valid from 1 January of this year for two years.
    pub fn generate(server_names: &[String]) -> Result<TlsPems> {
        let fail = |what: &str, e: rcgen::Error| ClusterError::new(ErrorKind::InvalidConfig, format!("{what}: {e}"));

        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name.push(DnType::CommonName, "Strata local CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut ca_params);
        let ca_key = KeyPair::generate().map_err(|e| fail("generating the CA key", e))?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| fail("signing the CA", e))?;

        let leaf = |cn: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let mut params = CertificateParams::new(sans).map_err(|e| fail("certificate names", e))?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            params.extended_key_usages = usages;
            set_validity(&mut params);
            let key = KeyPair::generate().map_err(|e| fail("generating a key", e))?;
            let cert = params.signed_by(&key, &ca).map_err(|e| fail("signing a certificate", e))?;
            Ok::<_, ClusterError>((cert.pem(), key.serialize_pem()))
        };
        // Nodes also act as TLS clients towards each other (replication, cluster bus)
        // with the same certificate, so it carries both usages.
        let (server_cert, server_key) = leaf(
            "strata-node",
            server_names.to_vec(),
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        let (client_cert, client_key) = leaf("strata-client", Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth])?;
        Ok(TlsPems { ca_cert: ca.pem(), ca_key: ca_key_pem, server_cert, server_key, client_cert, client_key })
    }

    /// Every file as (name, PEM text), with the names [`TlsMaterial::in_dir`] expects.
    pub fn files(&self) -> [(&'static str, &str); 6] {
        [
            (CA_CERT_FILE, &self.ca_cert),
            (CA_KEY_FILE, &self.ca_key),
            (SERVER_CERT_FILE, &self.server_cert),
            (SERVER_KEY_FILE, &self.server_key),
            (CLIENT_CERT_FILE, &self.client_cert),
            (CLIENT_KEY_FILE, &self.client_key),
        ]
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| ClusterError::io(format!("reading {}", path.display()), e))
}

/// Valid from 1 January of this year for two years (rcgen's default, 1975 to 4096, is
/// an invitation to keep test certificates forever).
fn set_validity(params: &mut CertificateParams) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
}

/// Create `dir` (and parents) and restrict it to its owner.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| ClusterError::io(format!("creating {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| ClusterError::io(format!("restricting {}", dir.display()), e))
}

/// Write a file readable by its owner only (created 0600, so the content is never
/// visible to others even for a moment).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |e| ClusterError::io(format!("writing {}", path.display()), e);
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
    f.write_all(bytes).map_err(err)
}
