//! The faults of `strata drill failover|restart|outage`, injected into a `strata up` cluster.
//! Each blocks until the cluster is healthy again, so its duration is "time to recover".

use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;

use crate::fault_nodes::Nodes;

/// The slot the failover and restart drills aim at (any slot would do; the drill's keys spread
/// over all three masters, so a third of the calls hit the victim).
const VICTIM_SLOT: u16 = 0;

/// Which fault a drill injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL one master; its replica takes over. The old master is started again afterwards
    /// and rejoins as a replica, so the cluster is whole when the drill ends.
    Failover,
    /// SIGKILL one master and start it again at once from its append-only file; keys
    /// acknowledged more than 1 s before the kill must still be there.
    Restart,
    /// Stop every node (SIGTERM) for a while, then start them all again.
    Outage,
    /// Add a master and move a quarter of the slots to it (`redis-cli --cluster reshard`);
    /// every key written before the move must still be there.
    Reshard,
}

impl Fault {
    /// The subcommand name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Failover => "failover",
            Fault::Restart => "restart",
            Fault::Outage => "outage",
            Fault::Reshard => "reshard",
        }
    }
}

/// What the restart and reshard drills checked (zero for the other faults).
#[derive(Debug, Default, Clone, Copy)]
pub struct Survival {
    /// Keys acknowledged more than 1 s before the kill (restart) or before the move (reshard).
    pub checked: usize,
    /// Of those, keys gone after the restart.
    pub lost: usize,
    /// When the cluster was healthy again, as the injector saw it (for failover: the replica had
    /// taken over, before the old master was started again).
    pub healthy_at: Option<Instant>,
}

/// Refuses a drill the setup cannot support, before any load runs.
pub fn prepare(nodes: &Nodes, fault: Fault) -> anyhow::Result<()> {
    anyhow::ensure!(
        fault == Fault::Failover || nodes.can_restart(),
        "drill {} starts nodes again: it needs the directory of `strata up` (--dir), not --url",
        fault.name()
    );
    nodes.wait_healthy(Duration::from_secs(10)).context("the cluster must be healthy before a drill")?;
    if fault == Fault::Restart {
        for node in nodes.nodes() {
            let conf = std::fs::read_to_string(node.dir.join("redis.conf"))?;
            anyhow::ensure!(
                conf.lines().any(|l| l.trim() == "appendonly yes"),
                "drill restart needs persistence: start the cluster with `strata up --persistence aof`"
            );
        }
    }
    Ok(())
}

/// Injects `fault` and waits for recovery. `written` are keys already stored (the reshard drill
/// checks they survive the move).
pub fn inject(nodes: &mut Nodes, fault: Fault, outage_for: Duration, written: &[String]) -> anyhow::Result<Survival> {
    match fault {
        Fault::Reshard => reshard(nodes, written),
        Fault::Failover => failover(nodes),
        Fault::Restart => restart(nodes),
        Fault::Outage => outage(nodes, outage_for).map(|()| Survival::default()),
    }
}

/// `cluster-node-timeout` from the first node's config (Redis's default, 15 s, when absent).
pub fn node_timeout(nodes: &Nodes) -> Duration {
    let conf = nodes.nodes().first().and_then(|n| std::fs::read_to_string(n.dir.join("redis.conf")).ok());
    let ms = conf
        .as_deref()
        .and_then(|c| c.lines().find_map(|l| l.trim().strip_prefix("cluster-node-timeout ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(15_000);
    Duration::from_millis(ms)
}

fn victim(nodes: &Nodes) -> anyhow::Result<usize> {
    let port = nodes.master_port_for_slot(VICTIM_SLOT)?;
    nodes.by_port(port).context("the master of slot 0 is not one of the recorded nodes")
}

fn failover(nodes: &mut Nodes) -> anyhow::Result<Survival> {
    let victim = victim(nodes)?;
    nodes.signal(victim, Signal::SIGKILL)?;
    nodes.wait_healthy(Duration::from_secs(60)).context("the replica did not take over")?;
    let healthy_at = Some(Instant::now());
    // Found from a URL, the killed master stays down: killing is all the drill may do there.
    if nodes.can_restart() {
        nodes.start(victim)?;
        nodes.wait_healthy(Duration::from_secs(30))?;
    }
    Ok(Survival { healthy_at, ..Survival::default() })
}

fn outage(nodes: &mut Nodes, outage_for: Duration) -> anyhow::Result<()> {
    for i in 0..nodes.nodes().len() {
        nodes.signal(i, Signal::SIGTERM)?;
    }
    std::thread::sleep(outage_for);
    for i in 0..nodes.nodes().len() {
        nodes.start(i)?;
    }
    nodes.wait_healthy(Duration::from_secs(60))
}

/// Writes numbered keys with a plain client, noting when each write was acknowledged, right up
/// to the kill; starts the master again; checks the keys acknowledged more than 1 s before the
/// kill. `appendfsync everysec` promises exactly that much.
fn restart(nodes: &mut Nodes) -> anyhow::Result<Survival> {
    let victim = victim(nodes)?;
    let urls: Vec<String> = nodes.nodes().iter().map(|n| n.url.clone()).collect();
    let mut con = redis::cluster::ClusterClient::new(urls.clone())?.get_connection()?;
    let mut acked = Vec::new();
    let writing = Instant::now();
    while writing.elapsed() < Duration::from_secs(3) && acked.len() < 100_000 {
        let key = marker(acked.len());
        redis::cmd("SET").arg(&key).arg("1").query::<()>(&mut con)?;
        acked.push((key, Instant::now()));
    }
    let killed = Instant::now();
    nodes.signal(victim, Signal::SIGKILL)?;
    nodes.start(victim)?;
    nodes.wait_healthy(Duration::from_secs(60)).context("the cluster did not recover from the restart")?;
    let healthy_at = Some(Instant::now());
    let mut con = redis::cluster::ClusterClient::new(urls)?.get_connection()?;
    let old: Vec<&String> =
        acked.iter().filter(|(_, at)| killed.duration_since(*at) > Duration::from_secs(1)).map(|(k, _)| k).collect();
    let mut lost = 0;
    for key in &old {
        if !redis::cmd("EXISTS").arg(*key).query::<bool>(&mut con)? {
            lost += 1;
        }
    }
    for (key, _) in &acked {
        let _ = redis::cmd("DEL").arg(key).query::<i64>(&mut con);
    }
    Ok(Survival { checked: old.len(), lost, healthy_at })
}

/// Slots moved to the new master: a quarter of the cluster, enough to move keys of every
/// existing master while the load runs.
const MOVED_SLOTS: u16 = strata_cluster::SLOT_COUNT / 4;

fn reshard(nodes: &mut Nodes, written: &[String]) -> anyhow::Result<Survival> {
    let seed = format!("127.0.0.1:{}", nodes.master_port_for_slot(VICTIM_SLOT)?);
    let new = nodes.add()?;
    let addr = format!("127.0.0.1:{}", nodes.nodes()[new].port);
    let dir = nodes.nodes()[new].dir.clone();
    redis_cli(&dir, &["--cluster", "add-node", &addr, &seed])?;
    // The new node must know every master, and every node the new one, before slots can move
    // to it: redis-cli refuses to reshard while the nodes disagree about the configuration.
    nodes.wait_healthy(Duration::from_secs(30)).context("the new node did not join")?;
    let agreed = Instant::now() + Duration::from_secs(30);
    while redis_cli(&dir, &["--cluster", "check", &seed]).is_err() {
        anyhow::ensure!(Instant::now() < agreed, "the nodes did not agree on the configuration after add-node");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut con = redis::Client::open(nodes.nodes()[new].url.as_str())?.get_connection()?;
    let id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut con)?;
    let slots = MOVED_SLOTS.to_string();
    let args = ["--cluster", "reshard", &seed, "--cluster-from", "all", "--cluster-to", &id, "--cluster-slots", &slots];
    redis_cli(&dir, &[&args[..], &["--cluster-yes"]].concat())?;
    nodes.wait_healthy(Duration::from_secs(60)).context("the cluster did not settle after the reshard")?;
    let healthy_at = Some(Instant::now());
    let urls: Vec<String> = nodes.nodes().iter().map(|n| n.url.clone()).collect();
    let mut con = redis::cluster::ClusterClient::new(urls)?.get_connection()?;
    let mut lost = 0;
    for key in written {
        if !redis::cmd("EXISTS").arg(key).query::<bool>(&mut con)? {
            lost += 1;
        }
    }
    Ok(Survival { checked: written.len(), lost, healthy_at })
}

/// Runs redis-cli (bounded: `--cluster` commands end on their own; 120 s is a hung one), its
/// output appended to `reshard-cli.log` in `dir`.
fn redis_cli(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("reshard-cli.log"))?;
    let mut child = std::process::Command::new(strata_cluster::redis_cli()?)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("running redis-cli")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "redis-cli {} failed (see {})", args[..2].join(" "), dir.display());
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("redis-cli {} did not finish in 120 s", args[..2].join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn marker(i: usize) -> String {
    format!("strata-drill:aof:{i}")
}

/// Deletes the drill's keys and their namespace stamp (best effort: the cluster may have lost
/// them anyway).
pub fn remove_keys(nodes: &Nodes, mut keys: Vec<String>) -> anyhow::Result<()> {
    if let Some(first) = keys.first() {
        keys.push(strata::namespace_stamp_key(strata::Key::parse(first)?.namespace())?);
    }
    let urls: Vec<String> = nodes.nodes().iter().map(|n| n.url.clone()).collect();
    let mut con = redis::cluster::ClusterClient::new(urls)?.get_connection()?;
    for key in keys {
        redis::cmd("DEL").arg(key).query::<i64>(&mut con)?;
    }
    Ok(())
}
