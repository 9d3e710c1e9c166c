//! The history of a consistency drill and its checker.
//!
//! Every operation of every worker process is one or more [`Entry`] lines (one per key it
//! touched), timed on the host's monotonic clock, which all processes on one machine share. The
//! checker judges reads against writes:
//!
//! - a write of version `w` to key `k` *completed* at its `end` (the invalidation or cache write
//!   returned; the source already held `w`);
//! - a read of `k` that *started* at `s` and returned version `v` is **stale** when some write
//!   of `k` with a version above `v` completed more than the bound `B` before `s`. A read that
//!   started before (or within `B` of) the write's completion may return either version.
//!
//! Its staleness is `s` minus the completion of the earliest write that superseded `v`; the
//! largest one over all reads is `max_staleness_ms`, whether within the bound or not. For every
//! write, `visible_after_write` is how long after its completion a read could still start and
//! get an older version (0 when none did): the time the new version took to become visible
//! everywhere.
//!
//! Failed writes (the call returned an error) do not count as completed: the caller was told.
//! Reads that returned an error are caller errors; a read that found nothing (`get` miss) is
//! not judged.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A read of a key (`v` is the version it returned, `None` for a miss).
    Read,
    /// A write of a key (`v` is the version the source was given).
    Write,
}

/// One key touched by one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Read or write.
    pub kind: Kind,
    /// The API call (`get_or_set`, `delete`, `plain_del`, ...).
    pub op: String,
    /// The worker process.
    pub process: u16,
    /// The cache key.
    pub key: String,
    /// Start, in nanoseconds of the host's monotonic clock.
    pub start: u64,
    /// End, likewise.
    pub end: u64,
    /// The version read or written.
    pub version: Option<u64>,
    /// The call returned without an error.
    pub ok: bool,
}

/// A stale read, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaleRead {
    /// The read.
    pub read: Entry,
    /// The newest version whose write had completed when the read started.
    pub newest_version: u64,
    /// How long before the read started the first newer version's write had completed, in ms.
    pub staleness_ms: f64,
    /// That write.
    pub superseded_by: Entry,
}

/// The checker's findings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Read entries judged (a read of several keys counts once per key).
    pub reads: usize,
    /// Completed write entries (one per key written).
    pub writes: usize,
    /// Reads that returned an error.
    pub caller_errors: usize,
    /// Writes that returned an error (not counted as completed).
    pub write_errors: usize,
    /// Reads older than a write completed more than the bound before they started.
    pub stale_reads: usize,
    /// The largest staleness of any read (within the bound or not), in ms.
    pub max_staleness_ms: f64,
    /// Per write: how long after it completed an older version was still read, in ms.
    pub visible_after_write_ms: Quantiles,
    /// Stale reads per API call.
    pub stale_by_op: HashMap<String, usize>,
    /// The largest staleness per API call (within the bound or not), in ms.
    pub max_staleness_by_op: HashMap<String, f64>,
    /// The first few stale reads of each API call (by start), for diagnosis.
    pub examples: Vec<StaleRead>,
    /// The read with the largest staleness, within the bound or not.
    pub worst: Option<StaleRead>,
}

/// p50 / p99 / max of a distribution, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// How many stale reads of each API call the verdict lists in full.
const EXAMPLES_PER_OP: usize = 3;

/// Judges `entries` with staleness bound `bound_ns`.
pub fn check(entries: &[Entry], bound_ns: u64) -> Verdict {
    let mut by_key: HashMap<&str, (Vec<&Entry>, Vec<&Entry>)> = HashMap::new();
    let (mut caller_errors, mut write_errors) = (0, 0);
    for e in entries {
        match (e.kind, e.ok) {
            (Kind::Read, false) => caller_errors += 1,
            (Kind::Write, false) => write_errors += 1,
            (Kind::Read, true) => by_key.entry(&e.key).or_default().0.push(e),
            (Kind::Write, true) => by_key.entry(&e.key).or_default().1.push(e),
        }
    }
    let mut verdict = Verdict {
        reads: 0,
        writes: 0,
        caller_errors,
        write_errors,
        stale_reads: 0,
        max_staleness_ms: 0.0,
        visible_after_write_ms: Quantiles::default(),
        stale_by_op: HashMap::new(),
        max_staleness_by_op: HashMap::new(),
        examples: Vec::new(),
        worst: None,
    };
    let mut lags = Vec::new();
    for (reads, mut writes) in by_key.into_values() {
        verdict.reads += reads.len();
        verdict.writes += writes.len();
        writes.retain(|w| w.version.is_some());
        writes.sort_by_key(|w| w.end);
        // newest[i]: the highest version among the first i + 1 completed writes.
        let newest: Vec<u64> = writes
            .iter()
            .scan(0, |top, w| {
                *top = (*top).max(w.version.unwrap_or(0));
                Some(*top)
            })
            .collect();
        for r in &reads {
            let Some(v) = r.version else { continue };
            // The earliest-completed write with a version above v.
            let first_newer = newest.partition_point(|&top| top <= v);
            let Some(w) = writes.get(first_newer) else { continue };
            if w.end >= r.start {
                continue;
            }
            let staleness = r.start - w.end;
            let op_max = verdict.max_staleness_by_op.entry(r.op.clone()).or_default();
            *op_max = op_max.max(ms(staleness));
            let worst = verdict.worst.as_ref().is_none_or(|s| ms(staleness) > s.staleness_ms);
            if staleness <= bound_ns && !worst {
                continue;
            }
            let completed = writes.partition_point(|w| w.end < r.start);
            let newest_version = completed.checked_sub(1).map_or(0, |i| newest[i]);
            let read = StaleRead {
                read: (*r).clone(),
                newest_version,
                staleness_ms: ms(staleness),
                superseded_by: (*w).clone(),
            };
            if worst {
                verdict.max_staleness_ms = read.staleness_ms;
                verdict.worst = Some(read.clone());
            }
            if staleness > bound_ns {
                verdict.stale_reads += 1;
                *verdict.stale_by_op.entry(r.op.clone()).or_default() += 1;
                verdict.examples.push(read);
            }
        }
        lags.extend(visible_after(&reads, &writes));
    }
    verdict.examples.sort_by_key(|s| s.read.start);
    let mut listed: HashMap<String, usize> = HashMap::new();
    verdict.examples.retain(|s| {
        let n = listed.entry(s.read.op.clone()).or_default();
        *n += 1;
        *n <= EXAMPLES_PER_OP
    });
    verdict.visible_after_write_ms = quantiles(&mut lags);
    verdict
}

/// For each write of one key: how long after its completion a read started that still returned
/// an older version (0 when none did), in ms. Sweeps writes by version with the latest start of
/// the reads below that version.
fn visible_after(reads: &[&Entry], writes: &[&Entry]) -> Vec<f64> {
    let mut reads: Vec<(u64, u64)> = reads.iter().filter_map(|r| r.version.map(|v| (v, r.start))).collect();
    reads.sort_unstable();
    let mut writes: Vec<(u64, u64)> = writes.iter().filter_map(|w| w.version.map(|v| (v, w.end))).collect();
    writes.sort_unstable();
    let (mut next, mut latest_start) = (0, None::<u64>);
    let mut lags = Vec::with_capacity(writes.len());
    for (version, end) in writes {
        while next < reads.len() && reads[next].0 < version {
            latest_start = Some(latest_start.map_or(reads[next].1, |s| s.max(reads[next].1)));
            next += 1;
        }
        lags.push(latest_start.map_or(0.0, |s| ms(s.saturating_sub(end))));
    }
    lags
}

fn quantiles(values: &mut [f64]) -> Quantiles {
    if values.is_empty() {
        return Quantiles::default();
    }
    values.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).floor() as usize];
    Quantiles { p50: at(0.5), p99: at(0.99), max: values[values.len() - 1] }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn entry(kind: Kind, key: &str, start_ms: u64, end_ms: u64, version: Option<u64>) -> Entry {
        Entry {
            kind,
            op: if kind == Kind::Read { "get_or_set".into() } else { "delete".into() },
            process: 0,
            key: key.into(),
            start: start_ms * MS,
            end: end_ms * MS,
            version,
            ok: true,
        }
    }

    fn read(key: &str, start_ms: u64, v: u64) -> Entry {
        entry(Kind::Read, key, start_ms, start_ms + 1, Some(v))
    }

    fn write(key: &str, start_ms: u64, end_ms: u64, v: u64) -> Entry {
        entry(Kind::Write, key, start_ms, end_ms, Some(v))
    }

    #[test]
    fn a_read_older_than_a_write_completed_beyond_the_bound_is_stale() {
        let history = [
            write("k", 0, 10, 1),
            write("k", 20, 30, 2),
            read("k", 25, 1), // overlaps the write: either version is fine
            read("k", 35, 1), // 5 ms after completion: within a 10 ms bound
            read("k", 45, 1), // 15 ms after: stale
            read("k", 50, 2), // fresh
            read("other", 60, 1),
        ];
        let v = check(&history, 10 * MS);
        assert_eq!((v.reads, v.writes, v.stale_reads), (5, 2, 1));
        assert_eq!(v.examples.len(), 1);
        assert_eq!(v.examples[0].read.start, 45 * MS);
        assert_eq!(v.examples[0].newest_version, 2);
        assert!((v.max_staleness_ms - 15.0).abs() < 1e-9);
        assert_eq!(v.stale_by_op.get("get_or_set"), Some(&1));
        assert_eq!(v.worst.as_ref().map(|w| w.read.start), Some(45 * MS));
        // Write 2 was still unseen 15 ms after it completed; write 1 by nobody.
        assert!((v.visible_after_write_ms.max - 15.0).abs() < 1e-9);
        assert_eq!(v.visible_after_write_ms.p50, 0.0);
    }

    #[test]
    fn staleness_counts_from_the_first_write_that_superseded_the_value() {
        // Versions need not arrive in order of completion (concurrent writers).
        let history = [write("k", 0, 10, 3), write("k", 0, 20, 2), read("k", 100, 2)];
        let v = check(&history, 50 * MS);
        assert_eq!(v.stale_reads, 1);
        assert!((v.max_staleness_ms - 90.0).abs() < 1e-9);
        assert_eq!(v.examples[0].newest_version, 3);
    }

    #[test]
    fn failed_writes_and_misses_are_not_judged_and_errors_are_counted() {
        let mut failed = write("k", 0, 10, 2);
        failed.ok = false;
        let mut error = read("k", 50, 1);
        error.ok = false;
        error.version = None;
        let history = [write("k", 0, 1, 1), failed, error, read("k", 60, 1), entry(Kind::Read, "k", 70, 71, None)];
        let v = check(&history, 5 * MS);
        assert_eq!((v.stale_reads, v.caller_errors, v.write_errors, v.writes), (0, 1, 1, 1));
    }
}
