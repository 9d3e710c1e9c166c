//! Audit log: one JSON line per modification or administrative action made through the cache.
//!
//! ```text
//! {"time":"2026-12-02T03:30:00.123Z","principal":"app","action":"set","target":"shop:v1:user:42","result":"ok"}
//! ```
//!
//! `principal` is the configured ACL user (`default` without one), `action` one of `set`,
//! `set_not_found`, `delete`, `invalidate_namespace`, `invalidate_tag`, `target` the key,
//! namespace or tag, `result` `ok` or `error` (then `reason` holds the error message). Writing
//! never blocks a cache call: records go through a bounded queue to a writer thread, and records
//! that find the queue full are dropped and counted ([`AuditSink::dropped`]).

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

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
        let path = path.as_ref();
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file =
            options.open(path).map_err(|e| Error::config(format!("cannot open audit log {}: {e}", path.display())))?;
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

/// The sink with the principal it records.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    pub(crate) sink: AuditSink,
    pub(crate) principal: Arc<str>,
}

impl Audit {
    /// Records `action` on `target` with the outcome of the call.
    pub(crate) fn record<T>(&self, action: &str, target: &str, outcome: &Result<T>) {
        let mut record = serde_json::json!({
            "time": rfc3339_now(),
            "principal": &*self.principal,
            "action": action,
            "target": target,
            "result": if outcome.is_ok() { "ok" } else { "error" },
        });
        if let (Err(err), Some(map)) = (outcome, record.as_object_mut()) {
            map.insert("reason".into(), err.to_string().into());
        }
        self.sink.send(record.to_string());
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn rfc3339_now() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    rfc3339(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339(1_764_646_245_678), "2025-12-02T03:30:45.678Z");
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
