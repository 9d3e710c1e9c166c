//! `/api/audit`: the newest records of an audit log (JSON lines, as `strata::AuditSink::file`
//! writes them), read from the end of the file so a large log costs no more than its tail.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

/// Most records one request returns.
pub(crate) const MAX_LIMIT: usize = 1000;
/// Most bytes read from the end of the file (records are short; this is a bound, not a target).
const MAX_TAIL_BYTES: u64 = 8 << 20;
const CHUNK: u64 = 64 << 10;

/// The last `limit` records of `path`, newest first. Lines that are not JSON objects (a line
/// being written, a corrupt one) are skipped. A missing file has no records.
pub(crate) fn tail(path: &Path, limit: usize) -> io::Result<Vec<Value>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    // Reads backwards until the tail holds `limit` complete lines (plus the partial first one).
    while start > 0 && len - start < MAX_TAIL_BYTES && buf.iter().filter(|b| **b == b'\n').count() <= limit {
        let step = CHUNK.min(start);
        start -= step;
        file.seek(SeekFrom::Start(start))?;
        let mut chunk = vec![0; usize::try_from(step).unwrap_or(0)];
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // it may begin mid-line
    }
    Ok(lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok().filter(Value::is_object))
        .take(limit)
        .collect())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn newest_records_first_and_garbage_skipped() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("audit.log");
        let mut f = File::create(&path)?;
        for i in 0..5000 {
            writeln!(f, r#"{{"time":"t{i}","principal":"app","action":"set","target":"k:{i}","result":"ok"}}"#)?;
        }
        writeln!(f, "not json")?;
        write!(f, r#"{{"time":"partial"#)?;
        drop(f);
        let events = tail(&path, 3)?;
        let targets: Vec<&str> = events.iter().filter_map(|e| e["target"].as_str()).collect();
        assert_eq!(targets, ["k:4999", "k:4998", "k:4997"]);
        assert_eq!(tail(&path, MAX_LIMIT)?.len(), MAX_LIMIT);
        assert!(tail(&dir.path().join("absent"), 10)?.is_empty());
        Ok(())
    }
}
