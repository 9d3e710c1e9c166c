//! The background sampler's memory: the last [`MAX_SAMPLES`] samples of hit ratio, ops/s and
//! memory per node, for the dashboard's charts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Instant, UNIX_EPOCH};

use serde::Serialize;

use crate::poll::Snapshot;

/// Samples kept (10 minutes at the default 2 s interval).
pub(crate) const MAX_SAMPLES: usize = 300;

/// One point of the charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Sample {
    pub(crate) t_unix_ms: u64,
    /// Hits / (hits + misses) over the masters since the previous sample; None without reads.
    pub(crate) hit_ratio: Option<f64>,
    /// Commands per second processed by the masters since the previous sample.
    pub(crate) ops_per_sec: f64,
    /// `used_memory` of every node that answered.
    pub(crate) memory_used_bytes: BTreeMap<String, u64>,
}

/// Counters of one master at the previous sample.
#[derive(Debug, Clone, Copy)]
struct Counters {
    hits: u64,
    misses: u64,
    commands: u64,
}

#[derive(Debug, Default)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
    previous: Option<(Instant, HashMap<String, Counters>)>,
}

impl History {
    /// Adds the sample `snapshot` gives, taken at `now`.
    pub(crate) fn record(&mut self, snapshot: &Snapshot, now: Instant) {
        let counters: HashMap<String, Counters> = snapshot
            .masters()
            .map(|(node, info)| {
                let c = Counters {
                    hits: info.integer("keyspace_hits").unwrap_or(0),
                    misses: info.integer("keyspace_misses").unwrap_or(0),
                    commands: info.integer("total_commands_processed").unwrap_or(0),
                };
                (node.addr.clone(), c)
            })
            .collect();
        let (mut hits, mut misses, mut commands) = (0, 0, 0);
        let ops_per_sec = match &self.previous {
            Some((at, before)) => {
                for (addr, now) in &counters {
                    // A node that was not a reachable master before has no baseline yet.
                    let Some(before) = before.get(addr) else { continue };
                    hits += delta(before.hits, now.hits);
                    misses += delta(before.misses, now.misses);
                    commands += delta(before.commands, now.commands);
                }
                let seconds = now.duration_since(*at).as_secs_f64();
                if seconds > 0.0 { commands as f64 / seconds } else { 0.0 }
            }
            None => snapshot.masters().filter_map(|(_, info)| info.number("instantaneous_ops_per_sec")).sum(),
        };
        let hit_ratio = (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
        let memory_used_bytes = snapshot
            .nodes
            .iter()
            .filter_map(|n| Some((n.node.addr.clone(), n.info.as_ref().ok()?.integer("used_memory")?)))
            .collect();
        let t_unix_ms =
            snapshot.taken.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { t_unix_ms, hit_ratio, ops_per_sec, memory_used_bytes });
        self.previous = Some((now, counters));
    }

    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }
}

/// Growth of a counter; a counter that went down was reset (CONFIG RESETSTAT, restart) and
/// counts from zero.
fn delta(before: u64, now: u64) -> u64 {
    if now >= before { now - before } else { now }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use strata_ops::{Node, Role};

    use super::*;
    use crate::poll::{NodeReport, parse_info};

    fn snapshot(hits: u64, misses: u64, commands: u64) -> Snapshot {
        let node = |addr: &str, role| Node {
            addr: addr.into(),
            id: None,
            role,
            master_addr: None,
            slots: Vec::new(),
            link_state: "connected".into(),
            failure_flags: Vec::new(),
        };
        let info = parse_info(&format!(
            "keyspace_hits:{hits}\nkeyspace_misses:{misses}\ntotal_commands_processed:{commands}\nused_memory:100\n"
        ));
        // The replica's counters must not count: reads go to masters.
        let replica =
            parse_info("keyspace_hits:1000\nkeyspace_misses:0\ntotal_commands_processed:5000\nused_memory:50\n");
        Snapshot {
            cluster: true,
            cluster_state: Some("ok".into()),
            nodes: vec![
                NodeReport { node: node("m:1", Role::Master), info: Ok(info) },
                NodeReport { node: node("r:2", Role::Replica), info: Ok(replica) },
                NodeReport { node: node("x:3", Role::Master), info: Err("down".into()) },
            ],
            taken: SystemTime::now(),
        }
    }

    #[test]
    fn hit_ratio_and_ops_come_from_master_deltas() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.record(&snapshot(10, 10, 100), t0);
        h.record(&snapshot(40, 20, 300), t0 + Duration::from_secs(2));
        h.record(&snapshot(40, 20, 300), t0 + Duration::from_secs(4));
        h.record(&snapshot(3, 1, 10), t0 + Duration::from_secs(6));
        let s = h.samples();
        assert_eq!(s[0].hit_ratio, None);
        assert_eq!(s[1].hit_ratio, Some(0.75));
        assert_eq!(s[1].ops_per_sec, 100.0);
        assert_eq!(s[2].hit_ratio, None, "no reads between the samples");
        assert_eq!(s[3].hit_ratio, Some(0.75), "after a reset the counters count from zero");
        assert_eq!(s[1].memory_used_bytes.len(), 2);
    }

    #[test]
    fn only_the_last_samples_are_kept() {
        let mut h = History::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SAMPLES as u64 + 5) {
            h.record(&snapshot(i, 0, i), t0 + Duration::from_secs(i));
        }
        assert_eq!(h.samples().len(), MAX_SAMPLES);
    }
}
