//! Audit log: one JSON line per modification or administrative action made through the cache.
//!
//! ```text
//! {"time":"2026-12-02T03:30:00.123Z","principal":"app","action":"set","target":"shop:v1:user:42","result":"ok"}
//! ```
//!
//! `principal` is the configured ACL user (`default` without one), `action` one of `set`,
//! `set_not_found`, `set_many` (one record per key), `set_through`, `update_through`,
//! `update_through_versioned`, `write_behind_enqueue`,
//! `delete`, `invalidate_namespace`, `invalidate_tag`, `target` the key, namespace or tag, `result` `ok` or `error` (then `reason` holds the error message). Writing
//! never blocks a cache call: records go through a bounded queue to a writer thread, and records
//! that find the queue full are dropped and counted ([`AuditSink::dropped`]).
//!
//! The same format ([`AuditRecord`]) carries the `strata` CLI's administrative actions and the
//! access denials `strata audit` collects from Redis' `ACL LOG`.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::timefmt::rfc3339_now;

/// Records queued for the writer before new ones are dropped.
pub const AUDIT_QUEUE: usize = 4096;

/// Where audit records go: [`CacheBuilder::audit`](crate::CacheBuilder::audit).
#[derive(Clone)]
pub struct AuditSink {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
    memory: Option<Arc<Mutex<Vec<String>>>>,
}

impl fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSink").field("dropped", &self.dropped()).finish_non_exhaustive()
    }
}

impl AuditSink {
    /// Appends JSON lines to `path`, created with mode 0600 if absent.
    pub fn file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let mut file = open_append(path.as_ref())?;
        Ok(Self::spawn(None, move |line| {
            if let Err(err) = file.write_all(line.as_bytes()).and_then(|()| file.write_all(b"\n")) {
                tracing::warn!(error = %err, "could not write an audit record");
            }
        }))
    }

    /// Keeps the records in memory (tests): read them with [`lines`](Self::lines).
    pub fn memory() -> Self {
        let store = Arc::new(Mutex::new(Vec::new()));
        let writer = store.clone();
        Self::spawn(Some(store), move |line| writer.lock().unwrap_or_else(|p| p.into_inner()).push(line))
    }

    /// The records written so far by a [`memory`](Self::memory) sink (empty for a file sink).
    /// Records are written asynchronously: one made just before may not be there yet.
    pub fn lines(&self) -> Vec<String> {
        self.memory.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn spawn(memory: Option<Arc<Mutex<Vec<String>>>>, mut write: impl FnMut(String) + Send + 'static) -> Self {
        let (tx, rx): (SyncSender<String>, Receiver<String>) = sync_channel(AUDIT_QUEUE);
        // A plain thread: file writes block, and it ends by itself when the last sender is dropped.
        let _ = std::thread::Builder::new().name("strata-audit".into()).spawn(move || {
            for line in rx {
                write(line);
            }
        });
        Self { tx, dropped: Arc::new(AtomicU64::new(0)), memory }
    }

    fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One audit record: a line of the audit log.
///
/// `time`, `principal`, `action`, `target` and `result` are always present; the optional
/// fields appear only when set. Records made from Redis' `ACL LOG` (`strata audit`) have
/// `result` `denied`, `reason` `command` / `key` / `channel` / `auth`, and `node`, `client`,
/// `count`, `first_time` (and `entry_id` on Redis 7.2+).
///
/// ```
/// let record = strata::AuditRecord::new("ops", "flush", "127.0.0.1:6379", "error")
///     .reason("NOPERM")
///     .node("127.0.0.1:6379");
/// assert!(record.to_line().ends_with(r#""reason":"NOPERM","node":"127.0.0.1:6379"}"#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// When it happened (RFC 3339, UTC, milliseconds); for a grouped ACL LOG entry, the latest
    /// denial.
    pub time: String,
    /// The ACL user (`default` without one).
    pub principal: String,
    /// What was done or attempted: `set`, `delete`, `flush`, a Redis command, `auth`...
    pub action: String,
    /// The key, namespace, tag, channel or directory acted on.
    pub target: String,
    /// `ok`, `error` or `denied`.
    pub result: String,
    /// Why it failed or was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The Redis node (`host:port`) that reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The client as Redis described it (`CLIENT LIST` format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// How many denials Redis grouped into this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The first denial of a grouped record (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_time: Option<String>,
    /// Redis' `entry-id` of an ACL LOG entry (Redis 7.2 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<u64>,
}

impl AuditRecord {
    /// A record made now, with no optional field set.
    pub fn new(principal: &str, action: &str, target: &str, result: &str) -> Self {
        Self {
            time: rfc3339_now(),
            principal: principal.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            result: result.to_owned(),
            reason: None,
            node: None,
            client: None,
            count: None,
            first_time: None,
            entry_id: None,
        }
    }

    /// Sets the time (RFC 3339, UTC, milliseconds; see [`rfc3339`](crate::rfc3339)); `new`
    /// sets the current time.
    #[must_use]
    pub fn time(mut self, time: impl Into<String>) -> Self {
        self.time = time.into();
        self
    }

    /// Sets why it failed or was denied.
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the Redis node (`host:port`) that reported it.
    #[must_use]
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Sets the client as Redis described it (`CLIENT LIST` format).
    #[must_use]
    pub fn client(mut self, client: impl Into<String>) -> Self {
        self.client = Some(client.into());
        self
    }

    /// Sets how many denials Redis grouped into this record.
    #[must_use]
    pub fn count(mut self, count: u64) -> Self {
        self.count = Some(count);
        self
    }

    /// Sets the time of the first denial of a grouped record (RFC 3339).
    #[must_use]
    pub fn first_time(mut self, time: impl Into<String>) -> Self {
        self.first_time = Some(time.into());
        self
    }

    /// Sets Redis' `entry-id` of an ACL LOG entry.
    #[must_use]
    pub fn entry_id(mut self, id: u64) -> Self {
        self.entry_id = Some(id);
        self
    }

    /// The JSON line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Appends this record to the file at `path` now (created with mode 0600 if absent), for
    /// short-lived processes such as the `strata` CLI that cannot wait for an [`AuditSink`].
    pub fn append_to(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let mut file = open_append(path)?;
        // One write call per line: concurrent appenders (O_APPEND) do not interleave lines.
        file.write_all(format!("{}\n", self.to_line()).as_bytes())
            .map_err(|e| Error::config(format!("cannot write audit log {}: {e}", path.display())))
    }
}

fn open_append(path: &std::path::Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| Error::config(format!("cannot open audit log {}: {e}", path.display())))
}

/// The sink with the principal it records.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    pub(crate) sink: AuditSink,
    pub(crate) principal: Arc<str>,
}

impl Audit {
    /// Records `action` on `target` with the outcome of the call.
    pub(crate) fn record<T>(&self, action: &str, target: &str, outcome: &Result<T>) {
        let mut record =
            AuditRecord::new(&self.principal, action, target, if outcome.is_ok() { "ok" } else { "error" });
        if let Err(err) = outcome {
            record.reason = Some(err.to_string());
        }
        self.sink.send(record.to_line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields_appear_only_when_set() {
        let mut record = AuditRecord::new("app", "set", "app:1", "ok");
        let line = record.to_line();
        assert!(line.starts_with(r#"{"time":""#), "{line}");
        assert!(line.ends_with(r#""principal":"app","action":"set","target":"app:1","result":"ok"}"#), "{line}");
        record.count = Some(3);
        record.node = Some("127.0.0.1:7000".into());
        let back: AuditRecord = serde_json::from_str(&record.to_line()).expect("parses");
        assert_eq!(back, record);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = sync_channel(1);
        let sink = AuditSink { tx, dropped: Arc::new(AtomicU64::new(0)), memory: None };
        sink.send("a".into());
        sink.send("b".into());
        assert_eq!(sink.dropped(), 1);
    }
}
