//! Where a phase's CPU went: this process, the Redis masters, the whole machine.
//!
//! On a small machine the cache, Redis and the database share the cores, so a variant that
//! needs more CPU per operation anywhere (client, Redis or database) runs fewer operations.
//! [`Meter::snapshot`] before and after a phase and [`Snapshot::since`] give the CPU seconds each
//! part used and what Redis ran (INFO commandstats), so a throughput ratio comes with the
//! work per operation that explains it.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;

use crate::runner::{connect, masters};
use crate::workload::Target;

/// Calls and microseconds per command (INFO commandstats), summed over nodes.
#[derive(Debug, Clone, Default)]
pub struct CommandStats(BTreeMap<String, (f64, f64)>);

impl CommandStats {
    /// Adds one node's `INFO commandstats` text.
    pub fn add(&mut self, text: &str) {
        for line in text.lines() {
            let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            let field =
                |f: &str| rest.split(',').find_map(|kv| kv.strip_prefix(f)?.strip_prefix('=')?.parse::<f64>().ok());
            if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
                let entry = self.0.entry(name.to_owned()).or_default();
                entry.0 += calls;
                entry.1 += usec;
            }
        }
    }

    /// (calls, microseconds) of `command`.
    pub fn of(&self, command: &str) -> (f64, f64) {
        self.0.get(command).copied().unwrap_or_default()
    }

    /// Calls of every command but INFO.
    pub fn calls(&self) -> f64 {
        self.0.iter().filter(|(name, _)| name.as_str() != "info").map(|(_, (calls, _))| calls).sum()
    }

    /// What ran between `earlier` and `self`.
    fn minus(&self, earlier: &CommandStats) -> CommandStats {
        CommandStats(
            self.0
                .iter()
                .map(|(name, (calls, usec))| {
                    let (c0, u0) = earlier.of(name);
                    (name.clone(), (calls - c0, usec - u0))
                })
                .filter(|(name, (calls, _))| *calls > 0.0 && name.as_str() != "info")
                .collect(),
        )
    }
}

/// Redis CPU seconds (user + system) and commandstats, summed over `nodes`.
pub async fn redis_work(nodes: &mut [redis::aio::MultiplexedConnection]) -> anyhow::Result<(f64, CommandStats)> {
    let (mut cpu, mut stats) = (0.0, CommandStats::default());
    for con in nodes {
        let text: String = redis::cmd("INFO").arg("cpu").query_async(con).await?;
        for field in ["used_cpu_sys:", "used_cpu_user:"] {
            cpu += text
                .lines()
                .find_map(|l| l.strip_prefix(field)?.trim().parse::<f64>().ok())
                .with_context(|| format!("INFO cpu has no {field}"))?;
        }
        let text: String = redis::cmd("INFO").arg("commandstats").query_async(con).await?;
        stats.add(&text);
    }
    Ok((cpu, stats))
}

/// CPU counters at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: std::time::Instant,
    process_s: f64,
    machine: Option<(f64, f64)>,
    redis_s: f64,
    commands: CommandStats,
    switches: f64,
}

/// Connections to the masters of a deployment, to take [`Snapshot`]s.
#[allow(missing_debug_implementations)] // redis connections have no useful Debug
pub struct Meter {
    nodes: Vec<redis::aio::MultiplexedConnection>,
}

impl Meter {
    /// Connects to every master of `target`.
    pub async fn new(target: &Target) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for url in masters(target).await? {
            nodes.push(connect(&url).await?);
        }
        Ok(Self { nodes })
    }

    /// The counters now.
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let (redis_s, commands) = redis_work(&mut self.nodes).await?;
        Ok(Snapshot {
            at: std::time::Instant::now(),
            process_s: process_cpu_s(),
            machine: machine_cpu_s(),
            redis_s,
            commands,
            switches: context_switches(),
        })
    }
}

impl Snapshot {
    /// What was used from `earlier` to `self`.
    pub fn since(&self, earlier: &Snapshot) -> CpuUse {
        let wall_s = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let (busy_s, total_s) = match (self.machine, earlier.machine) {
            (Some((b1, t1)), Some((b0, t0))) => (b1 - b0, t1 - t0),
            _ => (0.0, 0.0),
        };
        CpuUse {
            wall_s,
            process_s: self.process_s - earlier.process_s,
            redis_masters_s: self.redis_s - earlier.redis_s,
            machine_busy_s: busy_s,
            machine_capacity_s: total_s,
            commands: self.commands.minus(&earlier.commands),
            context_switches: self.switches - earlier.switches,
        }
    }
}

/// CPU used over one phase, seconds.
#[derive(Debug, Clone)]
pub struct CpuUse {
    /// Wall time of the phase.
    pub wall_s: f64,
    /// This process (user + system).
    pub process_s: f64,
    /// The Redis masters (user + system, INFO cpu).
    pub redis_masters_s: f64,
    /// Every core of the machine, busy (everything but idle and iowait; /proc/stat).
    pub machine_busy_s: f64,
    /// Every core of the machine, in all (cores x wall time).
    pub machine_capacity_s: f64,
    /// What the masters ran.
    pub commands: CommandStats,
    /// This process's context switches (its threads', voluntary and not).
    pub context_switches: f64,
}

/// [`CpuUse`] per operation, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct PerOp {
    /// This process's CPU per operation, µs.
    pub process_us: f64,
    /// The Redis masters' CPU per operation, µs.
    pub redis_masters_us: f64,
    /// Everything else busy on the machine per operation (replicas, the database server, the
    /// kernel on others' behalf), µs.
    pub other_us: f64,
    /// Fraction of the machine's cores busy over the phase.
    pub machine_busy: f64,
    /// This process's context switches per operation: every hand-off between threads (a
    /// worker parking and being woken, a query on the blocking pool) costs one or two.
    pub context_switches: f64,
    /// Commands the masters ran per operation.
    pub redis_calls: f64,
    /// Per command: calls per operation and the masters' µs per operation, the most expensive
    /// first.
    pub redis_commands: Vec<(String, f64, f64)>,
}

impl CpuUse {
    /// Per operation, over `ops` operations.
    pub fn per_op(&self, ops: u64) -> PerOp {
        let ops = ops.max(1) as f64;
        let mut redis_commands: Vec<(String, f64, f64)> =
            self.commands.0.iter().map(|(name, (calls, usec))| (name.clone(), calls / ops, usec / ops)).collect();
        redis_commands.sort_by(|a, b| b.2.total_cmp(&a.2));
        PerOp {
            process_us: self.process_s * 1e6 / ops,
            redis_masters_us: self.redis_masters_s * 1e6 / ops,
            other_us: (self.machine_busy_s - self.process_s - self.redis_masters_s).max(0.0) * 1e6 / ops,
            machine_busy: if self.machine_capacity_s > 0.0 {
                self.machine_busy_s / self.machine_capacity_s
            } else {
                0.0
            },
            context_switches: self.context_switches / ops,
            redis_calls: self.commands.calls() / ops,
            redis_commands,
        }
    }
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`: 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// This process's CPU time (user + system), seconds; 0 where /proc is missing.
fn process_cpu_s() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces) in parentheses: utime is the 12th
    // of them, stime the 13th.
    let Some((_, rest)) = text.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / TICKS_PER_S
}

/// This process's context switches so far, every thread's, voluntary and involuntary
/// (`getrusage`); 0 where it fails.
fn context_switches() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map_or(0.0, |u| (u.voluntary_context_switches() + u.involuntary_context_switches()) as f64)
}

/// The machine's busy and total CPU time over every core, seconds (/proc/stat's `cpu` line).
fn machine_cpu_s() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine(&text)
}

fn parse_machine(text: &str) -> Option<(f64, f64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest times are already in user).
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    Some(((total - idle) / TICKS_PER_S, total / TICKS_PER_S))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_summed_over_nodes_and_diffed() {
        let mut before = CommandStats::default();
        before.add(
            "# Commandstats\r\ncmdstat_get:calls=10,usec=20,usec_per_call=2.00\r\ncmdstat_info:calls=5,usec=50\r\n",
        );
        let mut after = CommandStats::default();
        after.add("cmdstat_get:calls=15,usec=30,usec_per_call=2.00\r\ncmdstat_info:calls=9,usec=90\r\n");
        after.add("cmdstat_get:calls=4,usec=8\r\ncmdstat_evalsha:calls=2,usec=40,rejected_calls=0\r\n");
        assert_eq!(after.of("get"), (19.0, 38.0));
        let ran = after.minus(&before);
        assert_eq!(ran.of("get"), (9.0, 18.0));
        assert_eq!(ran.of("evalsha"), (2.0, 40.0));
        assert_eq!(ran.of("info"), (0.0, 0.0), "the meter's own INFO calls are left out");
        assert_eq!(ran.calls(), 11.0);
        let per = CpuUse {
            wall_s: 1.0,
            process_s: 0.5,
            redis_masters_s: 0.25,
            machine_busy_s: 1.5,
            machine_capacity_s: 2.0,
            commands: ran,
            context_switches: 30.0,
        }
        .per_op(10);
        assert_eq!((per.process_us, per.redis_masters_us, per.other_us), (50_000.0, 25_000.0, 75_000.0));
        assert_eq!(per.context_switches, 3.0);
        assert_eq!(per.machine_busy, 0.75);
        assert_eq!(per.redis_commands[0].0, "evalsha", "the most expensive first");
    }

    #[test]
    fn the_machine_line_counts_idle_and_iowait_as_not_busy() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        assert_eq!(parse_machine(text), Some((1.5, 10.0)));
        assert!(process_cpu_s() >= 0.0);
    }
}
