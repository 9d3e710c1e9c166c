//! Small synchronous Redis probes (connect with timeouts, INFO / ROLE /
//! CLUSTER parsing) shared by the node and topology code.

use std::collections::HashMap;
use std::time::Duration;

use redis::{Connection, RedisResult, Value};

use crate::config::{BIND_ADDR, Credentials};
use crate::error::{ClusterError, Result};

/// Connect timeout used by health probes.
pub(crate) const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Read / write timeout used by health probes.
pub(crate) const PROBE_IO_TIMEOUT: Duration = Duration::from_millis(1500);

/// Certificates for TLS probe connections (the CA, and the client certificate if any).
#[derive(Clone)]
pub(crate) struct ProbeTls(pub(crate) redis::TlsCertificates);

impl std::fmt::Debug for ProbeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeTls")
    }
}

/// `redis[s]://[user:password@]127.0.0.1:PORT`, user and password percent-encoded.
pub(crate) fn url(port: u16, auth: Option<&Credentials>, tls: bool) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    match auth {
        None => format!("{scheme}://{BIND_ADDR}:{port}"),
        Some(c) => {
            format!("{scheme}://{}:{}@{BIND_ADDR}:{port}", percent_encode(c.user_name()), percent_encode(&c.password))
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Open a connection with a connect timeout and the given read/write timeout.
pub(crate) fn connect(
    port: u16,
    auth: Option<&Credentials>,
    tls: Option<&ProbeTls>,
    connect_timeout: Duration,
    io_timeout: Option<Duration>,
) -> RedisResult<Connection> {
    let client = match tls {
        None => redis::Client::open(url(port, auth, false))?,
        Some(t) => redis::Client::build_with_tls(url(port, auth, true), t.0.clone())?,
    };
    let con = client.get_connection_with_timeout(connect_timeout)?;
    con.set_read_timeout(io_timeout)?;
    con.set_write_timeout(io_timeout)?;
    Ok(con)
}

/// A connection for health probes (short timeouts).
pub(crate) fn probe_connection(
    port: u16,
    auth: Option<&Credentials>,
    tls: Option<&ProbeTls>,
) -> RedisResult<Connection> {
    connect(port, auth, tls, PROBE_CONNECT_TIMEOUT, Some(PROBE_IO_TIMEOUT))
}

/// Parse `INFO` output into a map of `field -> value`.
pub(crate) fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// `INFO <section>` as a map.
pub(crate) fn info(con: &mut Connection, section: &str) -> RedisResult<HashMap<String, String>> {
    let text: String = redis::cmd("INFO").arg(section).query(con)?;
    Ok(parse_info(&text))
}

/// The role reported by `ROLE`: "master", "slave" or "sentinel".
pub(crate) fn role(con: &mut Connection) -> RedisResult<String> {
    let v: Value = redis::cmd("ROLE").query(con)?;
    match v {
        Value::Array(items) => Ok(items.first().and_then(as_string).unwrap_or_default()),
        _ => Ok(String::new()),
    }
}

/// One contiguous slot range, the port of the master serving it and the
/// (sorted) ports of its non-failed replicas.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SlotRange {
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) master_port: u16,
    pub(crate) replica_ports: Vec<u16>,
}

/// `CLUSTER SLOTS`, sorted by start slot.
pub(crate) fn cluster_slots(con: &mut Connection) -> Result<Vec<SlotRange>> {
    let v: Value =
        redis::cmd("CLUSTER").arg("SLOTS").query(con).map_err(|e| ClusterError::redis("CLUSTER SLOTS", e))?;
    let bad = || ClusterError::new(crate::ErrorKind::Redis, "unexpected CLUSTER SLOTS reply");
    let Value::Array(entries) = v else {
        return Err(bad());
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else {
            return Err(bad());
        };
        let start = fields.first().and_then(as_int).ok_or_else(bad)?;
        let end = fields.get(1).and_then(as_int).ok_or_else(bad)?;
        let Some(Value::Array(master)) = fields.get(2) else {
            return Err(bad());
        };
        let port = master.get(1).and_then(as_int).ok_or_else(bad)?;
        let conv = |n: i64| u16::try_from(n).map_err(|_| bad());
        let mut replica_ports = Vec::new();
        for replica in &fields[3..] {
            let Value::Array(replica) = replica else {
                return Err(bad());
            };
            replica_ports.push(conv(replica.get(1).and_then(as_int).ok_or_else(bad)?)?);
        }
        replica_ports.sort_unstable();
        ranges.push(SlotRange { start: conv(start)?, end: conv(end)?, master_port: conv(port)?, replica_ports });
    }
    ranges.sort();
    Ok(ranges)
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".into()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => as_string(other)?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encodes_credentials() {
        assert_eq!(url(7000, None, false), "redis://127.0.0.1:7000");
        assert_eq!(url(7000, None, true), "rediss://127.0.0.1:7000");
        let c = Credentials { user: None, password: "p@ss:w/rd".into() };
        assert_eq!(url(7000, Some(&c), false), "redis://default:p%40ss%3Aw%2Frd@127.0.0.1:7000");
    }

    #[test]
    fn info_parsing() {
        let m = parse_info("# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n\r\n");
        assert_eq!(m.get("role").map(String::as_str), Some("slave"));
        assert_eq!(m.get("master_link_status").map(String::as_str), Some("up"));
    }
}
