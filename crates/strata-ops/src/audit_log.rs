//! `strata audit`: access Redis denied, collected from `ACL LOG` on every node (masters and
//! replicas) into the audit log format of the library ([`strata::AuditRecord`]).
//!
//! Each ACL LOG entry becomes one record: `principal` the ACL user name, `action` the command
//! (`auth` for a failed login), `target` the entry's object (the command for a command denial,
//! the key or channel for a key or channel denial, `AUTH` for a failed login), `result`
//! `denied`, `reason` `command` / `key` / `channel` / `auth`, `node`, `client`, `count`.
//!
//! Redis groups repeated denials (same user, reason, context and object within 60 s) into one
//! entry whose count grows. A [`Cursor`] remembers what it reported: a later poll reports an
//! entry again only when its count grew (with the new count and time). Entries are told apart by
//! `entry-id` and `timestamp-created` on Redis 7.2 and later; Redis 7.0 has neither, so there
//! the entry's identity is its user, reason, context and object, and its time comes from
//! `age-seconds`.

use std::collections::HashMap;

use strata::AuditRecord;

use crate::error::{OpsError, OpsErrorKind, Result};
use crate::target::Deployment;

/// Entries asked of each node: more than Redis keeps by default (`acllog-max-len 128`).
pub const MAX_ENTRIES: u32 = 1024;

/// On Redis 7.0 (no `timestamp-created`), a grouped entry whose time moved by more than this
/// without its count changing is a new entry with the same identity.
const AGE_JITTER_MS: u64 = 2_000;

/// Reports remembered per entry identity.
const SEEN_PER_IDENTITY: usize = 16;

/// Every denial in the ACL LOG of every node of `deployment` whose latest occurrence is at or
/// after `since` (Unix milliseconds; `None`: all), sorted by time.
///
/// Nodes that do not answer are skipped with a warning in the logs; it is an error when none
/// answers, or when the user may not read the ACL LOG.
pub fn collect(deployment: &Deployment, since: Option<u64>) -> Result<Vec<AuditRecord>> {
    Cursor::new(since).poll(deployment)
}

/// Remembers the entries already reported, for `strata audit --follow`.
#[derive(Debug, Default)]
pub struct Cursor {
    since: Option<u64>,
    /// Identity of an entry → the (count, latest time in Unix ms) pairs reported (the last few:
    /// on Redis 7.0 an old and a new entry may share an identity).
    seen: HashMap<String, Vec<(u64, u64)>>,
}

impl Cursor {
    /// A cursor that reports entries whose latest occurrence is at or after `since`.
    pub fn new(since: Option<u64>) -> Self {
        Self { since, seen: HashMap::new() }
    }

    /// The entries that are new, or whose count grew, since the previous poll, sorted by time.
    pub fn poll(&mut self, deployment: &Deployment) -> Result<Vec<AuditRecord>> {
        let mut out = Vec::new();
        let mut answered = 0usize;
        let mut last_error = None;
        for node in &deployment.nodes {
            let entries = match read_node(deployment, &node.addr) {
                Ok(entries) => entries,
                Err(err) if err.is_auth() => return Err(err),
                Err(err) => {
                    tracing::warn!(node = %node.addr, error = %err, "cannot read the ACL LOG of a node");
                    last_error = Some(err);
                    continue;
                }
            };
            answered += 1;
            for entry in entries {
                if self.since.is_some_and(|s| entry.updated_ms < s) {
                    continue;
                }
                let seen = self.seen.entry(entry.identity(&node.addr)).or_default();
                // Reported already: the same count at (about) the same time. Times from
                // `timestamp-last-updated` are exact; those from `age-seconds` move a little.
                let jitter = if entry.entry_id.is_some() { 0 } else { AGE_JITTER_MS };
                let known = seen
                    .iter()
                    .any(|&(count, updated)| count == entry.count && entry.updated_ms.abs_diff(updated) <= jitter);
                if !known {
                    if seen.len() >= SEEN_PER_IDENTITY {
                        seen.remove(0);
                    }
                    seen.push((entry.count, entry.updated_ms));
                    out.push((entry.updated_ms, entry.into_record(&node.addr)));
                }
            }
        }
        if answered == 0 {
            return Err(last_error.unwrap_or_else(|| OpsError::invalid("the deployment lists no node")));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.node.cmp(&b.1.node)));
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }
}

/// One ACL LOG entry, as far as the audit log needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    count: u64,
    reason: String,
    context: String,
    object: String,
    username: String,
    client_info: String,
    entry_id: Option<u64>,
    created_ms: Option<u64>,
    updated_ms: u64,
}

impl Entry {
    fn identity(&self, node: &str) -> String {
        match (self.entry_id, self.created_ms) {
            (Some(id), created) => format!("{node} {id} {}", created.unwrap_or(0)),
            // Redis 7.0: user names, keys and commands hold no NUL, so it separates them.
            _ => format!("{node}\0{}\0{}\0{}\0{}", self.username, self.reason, self.context, self.object),
        }
    }

    fn into_record(self, node: &str) -> AuditRecord {
        let action = match self.reason.as_str() {
            "auth" => "auth".to_owned(),
            "command" => self.object.clone(),
            // Key and channel denials name the object; the command is in the client info.
            _ => client_field(&self.client_info, "cmd").unwrap_or("unknown").to_owned(),
        };
        let reason = if self.context == "toplevel" || self.context.is_empty() {
            self.reason
        } else {
            // Denied inside MULTI, a script or a module: say so.
            format!("{} ({})", self.reason, self.context)
        };
        let mut record = AuditRecord::new(&self.username, &action, &self.object, "denied")
            .time(strata::rfc3339(self.updated_ms))
            .reason(reason)
            .node(node)
            .client(self.client_info)
            .count(self.count);
        if let Some(created) = self.created_ms {
            record = record.first_time(strata::rfc3339(created));
        }
        if let Some(id) = self.entry_id {
            record = record.entry_id(id);
        }
        record
    }
}

/// `name=value` from a `CLIENT LIST`-style line.
fn client_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn read_node(deployment: &Deployment, addr: &str) -> Result<Vec<Entry>> {
    let mut con = deployment.probe(addr)?;
    let reply: redis::Value =
        redis::cmd("ACL").arg("LOG").arg(MAX_ENTRIES).query(&mut con).map_err(|e| OpsError::redis(addr, &e))?;
    parse_log(reply, strata::unix_ms_now())
        .map_err(|what| OpsError::new(OpsErrorKind::Redis, format!("{addr}: unexpected ACL LOG reply: {what}")))
}

/// Parses an `ACL LOG` reply (RESP2 arrays of field/value pairs, or RESP3 maps). `now_ms`
/// turns Redis 7.0's `age-seconds` into a time.
fn parse_log(reply: redis::Value, now_ms: u64) -> std::result::Result<Vec<Entry>, String> {
    let redis::Value::Array(items) = reply else {
        return Err("not an array".into());
    };
    items.into_iter().map(|item| parse_entry(item, now_ms)).collect()
}

fn parse_entry(item: redis::Value, now_ms: u64) -> std::result::Result<Entry, String> {
    let pairs: Vec<(redis::Value, redis::Value)> = match item {
        redis::Value::Map(pairs) => pairs,
        redis::Value::Array(flat) => {
            let mut it = flat.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => return Err("an entry is neither an array nor a map".into()),
    };
    let mut fields: HashMap<String, redis::Value> = HashMap::new();
    for (k, v) in pairs {
        if let Some(k) = text(&k) {
            fields.insert(k, v);
        }
    }
    let get_text = |name: &str| fields.get(name).and_then(text).unwrap_or_default();
    let get_int = |name: &str| fields.get(name).and_then(int);
    let age_ms = fields.get("age-seconds").and_then(float).map(|s| (s * 1000.0).max(0.0) as u64);
    let updated_ms = get_int("timestamp-last-updated")
        .or_else(|| age_ms.map(|age| now_ms.saturating_sub(age)))
        .ok_or("an entry has neither timestamp-last-updated nor age-seconds")?;
    let username = get_text("username");
    if username.is_empty() && get_text("reason").is_empty() {
        return Err("an entry has no username and no reason".into());
    }
    Ok(Entry {
        count: get_int("count").unwrap_or(1),
        reason: get_text("reason"),
        context: get_text("context"),
        object: get_text("object"),
        username,
        client_info: get_text("client-info"),
        entry_id: get_int("entry-id"),
        created_ms: get_int("timestamp-created"),
        updated_ms,
    })
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::VerbatimString { text, .. } => Some(text.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        redis::Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

fn int(v: &redis::Value) -> Option<u64> {
    match v {
        redis::Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.trim().parse().ok(),
    }
}

fn float(v: &redis::Value) -> Option<f64> {
    match v {
        redis::Value::Double(d) => Some(*d),
        other => text(other)?.trim().parse().ok().filter(|f: &f64| f.is_finite()),
    }
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn resp2_entry(fields: &[(&str, Value)]) -> Value {
        Value::Array(fields.iter().flat_map(|(k, v)| [bulk(k), v.clone()]).collect())
    }

    #[test]
    fn redis_7_0_entries_use_age_and_group_identity() -> std::result::Result<(), String> {
        let entry = resp2_entry(&[
            ("count", Value::Int(2)),
            ("reason", bulk("key")),
            ("context", bulk("toplevel")),
            ("object", bulk("other:1")),
            ("username", bulk("app")),
            ("age-seconds", bulk("1.5")),
            ("client-info", bulk("id=5 addr=127.0.0.1:5000 name= cmd=set user=app resp=2")),
        ]);
        let entries = parse_log(Value::Array(vec![entry]), 10_000)?;
        assert_eq!(entries.len(), 1);
        let e = entries[0].clone();
        assert_eq!((e.updated_ms, e.entry_id, e.created_ms), (8_500, None, None));
        assert_eq!(e.identity("n:1"), "n:1\0app\0key\0toplevel\0other:1");
        let r = e.into_record("n:1");
        assert_eq!((r.principal.as_str(), r.action.as_str(), r.target.as_str()), ("app", "set", "other:1"));
        assert_eq!((r.result.as_str(), r.reason.as_deref(), r.count), ("denied", Some("key"), Some(2)));
        assert_eq!(r.time, "1970-01-01T00:00:08.500Z");
        Ok(())
    }

    #[test]
    fn redis_7_2_entries_use_ids_and_timestamps() -> std::result::Result<(), String> {
        let entry = Value::Map(vec![
            (bulk("count"), Value::Int(1)),
            (bulk("reason"), bulk("auth")),
            (bulk("context"), bulk("toplevel")),
            (bulk("object"), bulk("AUTH")),
            (bulk("username"), bulk("app")),
            (bulk("age-seconds"), Value::Double(3.0)),
            (bulk("client-info"), bulk("id=6 cmd=auth user=default")),
            (bulk("entry-id"), Value::Int(7)),
            (bulk("timestamp-created"), Value::Int(1_000)),
            (bulk("timestamp-last-updated"), Value::Int(2_000)),
        ]);
        let e = parse_log(Value::Array(vec![entry]), 99_000)?.remove(0);
        assert_eq!(e.identity("n:1"), "n:1 7 1000");
        let r = e.into_record("n:1");
        assert_eq!((r.action.as_str(), r.target.as_str(), r.entry_id), ("auth", "AUTH", Some(7)));
        assert_eq!(r.first_time.as_deref(), Some("1970-01-01T00:00:01.000Z"));
        assert_eq!(r.time, "1970-01-01T00:00:02.000Z");
        Ok(())
    }

    #[test]
    fn command_denials_name_the_command_and_context() -> std::result::Result<(), String> {
        let entry = resp2_entry(&[
            ("count", Value::Int(1)),
            ("reason", bulk("command")),
            ("context", bulk("lua")),
            ("object", bulk("config|get")),
            ("username", bulk("app")),
            ("age-seconds", bulk("0")),
        ]);
        let r = parse_log(Value::Array(vec![entry]), 5)?.remove(0).into_record("n:1");
        assert_eq!((r.action.as_str(), r.reason.as_deref()), ("config|get", Some("command (lua)")));
        Ok(())
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(parse_log(Value::Int(1), 0).is_err());
        assert!(parse_log(Value::Array(vec![Value::Int(1)]), 0).is_err());
        assert!(parse_log(Value::Array(vec![resp2_entry(&[("count", Value::Int(1))])]), 0).is_err());
        assert!(parse_log(Value::Array(vec![Value::Array(vec![bulk("reason")])]), 0).is_err());
        assert_eq!(parse_log(Value::Array(vec![]), 0), Ok(vec![]));
    }
}
