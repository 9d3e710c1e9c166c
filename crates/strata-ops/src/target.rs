//! Finding a deployment's nodes from one URL (or from a `strata up` directory).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Serialize;

use crate::error::{OpsError, OpsErrorKind, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bulk operations (SCAN batches, MEMORY USAGE pipelines, RESTORE batches).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Discovery probes (INFO, CLUSTER NODES): a hung node should not hold a command up for long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Credentials for every node of a deployment. Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// ACL user (None: the default user).
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// TLS (CA and client certificate files); `None` for plaintext.
    pub tls: Option<strata_cluster::TlsMaterial>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves writes (and, in a cluster, owns slots).
    Master,
    /// Replicates a master.
    Replica,
}

/// One node as the deployment reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// `host:port`.
    pub addr: String,
    /// Cluster node id (None on a standalone server).
    pub id: Option<String>,
    /// Master or replica.
    pub role: Role,
    /// For a replica, its master's `host:port`.
    pub master_addr: Option<String>,
    /// Slot ranges served (inclusive), masters only.
    pub slots: Vec<(u16, u16)>,
    /// `connected` or `disconnected` (the cluster bus link, as seen by the node asked).
    pub link_state: String,
    /// Failure flags reported by the cluster (`fail`, `fail?`), empty when healthy.
    pub failure_flags: Vec<String>,
}

/// A standalone server or a cluster, with every node it reports.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Whether the server runs in cluster mode.
    pub cluster: bool,
    /// Every node (one for a standalone server).
    pub nodes: Vec<Node>,
    credentials: Credentials,
    /// Database number from the URL (always 0 on a cluster).
    db: i64,
}

impl Deployment {
    /// Finds the deployment behind `url` (any node of a cluster will do). Credentials in the
    /// URL (`redis://user:password@host:port`) are used unless `credentials` override them.
    pub fn discover(url: &str, credentials: &Credentials) -> Result<Self> {
        let info = url
            .into_connection_info()
            .map_err(|e| OpsError::invalid(format!("invalid URL {:?}: {}", redact(url), redact(&e.to_string()))))?;
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            redis::ConnectionAddr::TcpTls { host, port, .. } if credentials.tls.is_some() => format!("{host}:{port}"),
            redis::ConnectionAddr::TcpTls { .. } => {
                return Err(OpsError::invalid(
                    "a rediss:// URL needs the CA: use --tls-dir DIR (ca.crt), or --dir of a `strata up --secure` cluster".to_string(),
                ));
            }
            other => return Err(OpsError::invalid(format!("unsupported address {other} (plain TCP only for now)"))),
        };
        let settings = info.redis_settings();
        let db = settings.db();
        let credentials = Credentials {
            user: credentials.user.clone().or_else(|| settings.username().map(str::to_owned)),
            password: credentials.password.clone().or_else(|| settings.password().map(str::to_owned)),
            tls: credentials.tls.clone(),
        };
        // Probe on database 0: a cluster node refuses SELECT, and we want to say why ourselves.
        let mut con = connect(&addr, &credentials, 0)?;
        con.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|e| OpsError::redis(&addr, &e))?;
        let info: String = redis::cmd("INFO").arg("cluster").query(&mut con).map_err(|e| OpsError::redis(&addr, &e))?;
        if !info.contains("cluster_enabled:1") {
            let role = replication_role(&mut con, &addr)?;
            let node = Node {
                addr,
                id: None,
                role: role.0,
                master_addr: role.1,
                slots: Vec::new(),
                link_state: "connected".into(),
                failure_flags: Vec::new(),
            };
            return Ok(Self { cluster: false, nodes: vec![node], credentials, db });
        }
        let text: String =
            redis::cmd("CLUSTER").arg("NODES").query(&mut con).map_err(|e| OpsError::redis(&addr, &e))?;
        if db != 0 {
            return Err(OpsError::invalid(format!(
                "{addr} is a cluster node: clusters have only database 0, not {db}"
            )));
        }
        let nodes = parse_cluster_nodes(&text, &addr)?;
        Ok(Self { cluster: true, nodes, credentials, db })
    }

    /// Finds the deployment started by `strata up` in `dir` (through its pid file), asking the
    /// first node that answers.
    pub fn from_dir(dir: &Path, credentials: &Credentials) -> Result<Self> {
        // A `strata up --secure` directory: TLS, and the admin user unless told otherwise.
        let secure_dir = dir.join(strata_cluster::SECURE_DIR);
        let secured;
        let credentials = if secure_dir.is_dir() {
            let files = strata_cluster::SecureFiles::load(&secure_dir).map_err(|e| OpsError::invalid(e.to_string()))?;
            let admin = files.roles.credentials(strata_cluster::Role::Admin);
            secured = Credentials {
                user: credentials.user.clone().or(admin.user),
                password: credentials.password.clone().or(Some(admin.password)),
                tls: Some(files.tls),
            };
            &secured
        } else {
            credentials
        };
        let detached = strata_cluster::Detached::load(dir)
            .map_err(|e| OpsError::invalid(format!("no cluster started by `strata up` in {} ({e})", dir.display())))?;
        let mut last = None;
        for url in detached.urls() {
            match Self::discover(&url, credentials) {
                Ok(d) => return Ok(d),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| OpsError::invalid(format!("the pid file in {} lists no node", dir.display()))))
    }

    /// An error unless this is a cluster (for commands that only make sense on one).
    pub fn require_cluster(&self, command: &str) -> Result<()> {
        if self.cluster {
            Ok(())
        } else {
            Err(OpsError::new(
                OpsErrorKind::NotCluster,
                format!("{command} needs a Redis Cluster, but {} is a standalone server", self.nodes[0].addr),
            ))
        }
    }

    /// The masters: every node that serves keys (the one node of a standalone server).
    pub fn masters(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Master && (!self.cluster || !n.slots.is_empty()))
    }

    /// The masters, or an error naming what to do when there are none: a command that works on
    /// the keys must not report success after touching nothing (for example when `--url` names a
    /// standalone replica).
    pub fn masters_checked(&self, command: &str) -> Result<Vec<&Node>> {
        let masters: Vec<&Node> = self.masters().collect();
        if !masters.is_empty() {
            return Ok(masters);
        }
        Err(match self.nodes.first() {
            Some(Node { addr, role: Role::Replica, master_addr, .. }) if !self.cluster => OpsError::invalid(format!(
                "{command}: {addr} is a replica{}; point --url at the master",
                master_addr.as_ref().map(|m| format!(" of {m}")).unwrap_or_default()
            )),
            _ => {
                OpsError::new(OpsErrorKind::Redis, format!("{command}: the deployment reports no master serving keys"))
            }
        })
    }

    /// A connection to one of this deployment's nodes, with this deployment's credentials and
    /// database.
    pub fn connect(&self, addr: &str) -> Result<redis::Connection> {
        connect(addr, &self.credentials, self.db)
    }

    /// A connection for quick questions (INFO, CLUSTER INFO): a hung node answers an error after
    /// a few seconds instead of holding the command up.
    pub fn probe(&self, addr: &str) -> Result<redis::Connection> {
        let con = self.connect(addr)?;
        con.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|e| OpsError::redis(addr, &e))?;
        Ok(con)
    }

    /// The database number from the URL (0 on a cluster).
    pub fn db(&self) -> i64 {
        self.db
    }

    /// The credentials used for every node.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// `redis://host:port` for every node (no credentials in them).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://{}", n.addr)).collect()
    }
}

/// A blocking connection with connect and I/O timeouts.
pub(crate) fn connect(addr: &str, credentials: &Credentials, db: i64) -> Result<redis::Connection> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_owned(), p)))
        .ok_or_else(|| OpsError::invalid(format!("invalid address {addr:?}")))?;
    let mut settings = redis::RedisConnectionInfo::default().set_db(db);
    if let Some(u) = &credentials.user {
        settings = settings.set_username(u);
    }
    if let Some(p) = &credentials.password {
        settings = settings.set_password(p);
    }
    let conn_addr = match credentials.tls {
        Some(_) => redis::ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
        None => redis::ConnectionAddr::Tcp(host, port),
    };
    let info = conn_addr.into_connection_info().map_err(|e| OpsError::redis(addr, &e))?;
    let info = info.set_redis_settings(settings);
    let client = match &credentials.tls {
        Some(tls) => {
            let certs = tls.client_certificates().map_err(|e| OpsError::invalid(e.to_string()))?;
            redis::Client::build_with_tls(info, certs)
        }
        None => redis::Client::open(info),
    }
    .map_err(|e| OpsError::redis(addr, &e))?;
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(|e| OpsError::redis(addr, &e))?;
    con.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| OpsError::redis(addr, &e))?;
    con.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| OpsError::redis(addr, &e))?;
    Ok(con)
}

/// A URL (or a message quoting one) with any `user:password@` part masked.
fn redact(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &text[..scheme], &text[at + 1..]),
        _ => text.to_owned(),
    }
}

fn replication_role(con: &mut redis::Connection, addr: &str) -> Result<(Role, Option<String>)> {
    let info: String = redis::cmd("INFO").arg("replication").query(con).map_err(|e| OpsError::redis(addr, &e))?;
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
    Ok(match field("role:").as_deref() {
        Some("slave") => {
            let master = field("master_host:").zip(field("master_port:")).map(|(h, p)| format!("{h}:{p}"));
            (Role::Replica, master)
        }
        _ => (Role::Master, None),
    })
}

/// Parses `CLUSTER NODES` (`<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link>
/// <slot>...`). `asked` replaces an empty address of the node that answered.
fn parse_cluster_nodes(text: &str, asked: &str) -> Result<Vec<Node>> {
    struct Raw<'a> {
        id: &'a str,
        addr: String,
        flags: Vec<&'a str>,
        master_id: &'a str,
        link: &'a str,
        slots: Vec<(u16, u16)>,
    }
    let mut raws = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return Err(OpsError::new(OpsErrorKind::Redis, format!("unexpected CLUSTER NODES line: {line:?}")));
        }
        let flags: Vec<&str> = f[2].split(',').collect();
        if flags.contains(&"noaddr") || flags.contains(&"handshake") {
            continue;
        }
        let mut addr = f[1].split('@').next().unwrap_or_default().to_owned();
        if addr.starts_with(':') && flags.contains(&"myself") {
            addr = asked.to_owned();
        }
        let mut slots = Vec::new();
        for s in &f[8..] {
            if s.starts_with('[') {
                continue; // a slot being migrated or imported: reported by its owner
            }
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            match (a.parse(), b.parse()) {
                (Ok(a), Ok(b)) => slots.push((a, b)),
                _ => return Err(OpsError::new(OpsErrorKind::Redis, format!("unexpected slot range {s:?}"))),
            }
        }
        raws.push(Raw { id: f[0], addr, flags, master_id: f[3], link: f[7], slots });
    }
    let addr_of: HashMap<&str, String> = raws.iter().map(|r| (r.id, r.addr.clone())).collect();
    let mut nodes: Vec<Node> = raws
        .iter()
        .map(|r| {
            let replica = r.flags.contains(&"slave");
            Node {
                addr: r.addr.clone(),
                id: Some(r.id.to_owned()),
                role: if replica { Role::Replica } else { Role::Master },
                master_addr: if replica { addr_of.get(r.master_id).cloned() } else { None },
                slots: r.slots.clone(),
                link_state: r.link.to_owned(),
                failure_flags: r
                    .flags
                    .iter()
                    .filter(|f| matches!(**f, "fail" | "fail?"))
                    .map(|f| (*f).to_owned())
                    .collect(),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes_output() -> Result<()> {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master,fail - 0 1426238316232 5 disconnected 10923-16383 16000
";
        let nodes = parse_cluster_nodes(text, "127.0.0.1:30001")?;
        assert_eq!(nodes.len(), 4);
        let replica = nodes.iter().find(|n| n.addr == "127.0.0.1:30004").ok_or_else(|| OpsError::invalid("missing"))?;
        assert_eq!(replica.role, Role::Replica);
        assert_eq!(replica.master_addr.as_deref(), Some("127.0.0.1:30001"));
        let me = nodes.iter().find(|n| n.addr == "127.0.0.1:30001").ok_or_else(|| OpsError::invalid("missing"))?;
        assert_eq!(me.slots, vec![(0, 5460)]);
        let failed = nodes.iter().find(|n| n.addr == "127.0.0.1:30005").ok_or_else(|| OpsError::invalid("missing"))?;
        assert_eq!(failed.failure_flags, vec!["fail".to_owned()]);
        assert_eq!(failed.slots, vec![(10923, 16383), (16000, 16000)]);
        assert_eq!(failed.link_state, "disconnected");
        assert!(parse_cluster_nodes("garbage", "x").is_err());
        Ok(())
    }

    #[test]
    fn secrets_in_urls_are_masked_in_errors() {
        let err = Deployment::discover("redis://admin:TOPSECRET@127.0.0.1:notaport", &Credentials::default())
            .expect_err("bad port");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
        assert_eq!(redact("redis://u:p@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
