//! Stopping and starting the nodes of a cluster made by `strata up`, for the fault drills.
//!
//! `strata up` leaves its nodes running detached and records them in a pid file
//! ([`strata_cluster::PID_FILE`]). A drill that kills a node and starts it again gives it a new
//! pid, so it rewrites that file: `strata down` must still find every process it has to stop.
//! A node is started again exactly as `strata up` started it: `redis-server redis.conf` in its own
//! directory, in its own process group (so a Ctrl-C of the drill does not reach it).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use strata_cluster::{Detached, PID_FILE};

/// One node of the setup.
#[derive(Debug, Clone)]
pub struct Node {
    /// Process id now (0 while stopped).
    pub pid: u32,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// Connection URL.
    pub url: String,
    /// The node's directory (config, data, logs).
    pub dir: PathBuf,
}

/// The nodes of a `strata up` directory, or of a loopback cluster found from a URL.
#[derive(Debug)]
pub struct Nodes {
    /// The `strata up` directory (None: found from a URL, so there is no pid file to keep).
    dir: Option<PathBuf>,
    nodes: Vec<Node>,
}

impl Nodes {
    /// Reads the pid file of `dir`; every recorded node must be running (its directory is taken
    /// from the live process, so a stale pid file is refused rather than acted on).
    pub fn load(dir: &Path) -> anyhow::Result<Nodes> {
        let detached = Detached::load(dir)?;
        let running = detached.running_pids();
        let mut nodes = Vec::new();
        for p in detached.processes() {
            anyhow::ensure!(running.contains(&p.pid), "node on port {} (pid {}) is not running", p.port, p.pid);
            let dir = std::fs::read_link(format!("/proc/{}/cwd", p.pid))
                .with_context(|| format!("finding the directory of pid {}", p.pid))?;
            nodes.push(Node { pid: p.pid, port: p.port, url: p.url.clone(), dir });
        }
        anyhow::ensure!(!nodes.is_empty(), "no nodes recorded in {}", dir.display());
        Ok(Nodes { dir: Some(dir.to_path_buf()), nodes })
    }

    /// Finds every node of the cluster `url` belongs to (CLUSTER NODES), and each one's process
    /// (INFO's `process_id`). Only loopback nodes qualify: the drill signals them.
    pub fn discover(url: &str) -> anyhow::Result<Nodes> {
        let mut con = connect(url).with_context(|| format!("connecting to {url}"))?;
        let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con)?;
        let mut nodes = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else { continue };
            if flags.contains("fail") || flags.contains("noaddr") {
                continue;
            }
            let host_port = addr.split('@').next().unwrap_or_default();
            let (host, port) = host_port.rsplit_once(':').context("malformed CLUSTER NODES address")?;
            anyhow::ensure!(
                host == "127.0.0.1",
                "node {host_port} is not on loopback: the drill only signals local nodes"
            );
            let node_url = format!("redis://{host_port}");
            let info: String = redis::cmd("INFO").arg("server").query(&mut connect(&node_url)?)?;
            let pid = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|v| v.trim().parse().ok())
                .context("INFO server has no process_id")?;
            let dir = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .with_context(|| format!("node {host_port} (pid {pid}) is not a process on this machine"))?;
            nodes.push(Node { pid, port: port.parse()?, url: node_url, dir });
        }
        anyhow::ensure!(!nodes.is_empty(), "{url} reports no cluster nodes");
        Ok(Nodes { dir: None, nodes })
    }

    /// Whether the nodes can be started again (they come from a `strata up` directory).
    pub fn can_restart(&self) -> bool {
        self.dir.is_some()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Index of the node listening on `port`.
    pub fn by_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Sends `sig` to node `i` and waits (up to 15 s) until the process is gone.
    pub fn signal(&mut self, i: usize, sig: Signal) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(i).context("no such node")?;
        if node.pid == 0 {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(node.pid)?);
        signal::kill(pid, sig).with_context(|| format!("sending {sig} to pid {}", node.pid))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while is_alive(node.pid) {
            anyhow::ensure!(Instant::now() < deadline, "pid {} did not exit after {sig}", node.pid);
            std::thread::sleep(Duration::from_millis(10));
        }
        node.pid = 0;
        Ok(())
    }

    /// Starts node `i` again (same directory and config, so the same ports and persistence),
    /// waits until it answers PING, and records its new pid in the pid file.
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.can_restart(), "nodes found from a URL are not started again; use --dir");
        let node = self.nodes.get_mut(i).context("no such node")?;
        anyhow::ensure!(node.pid == 0, "node on port {} is running", node.port);
        let log = OpenOptions::new().create(true).append(true).open(node.dir.join("stdio.log"))?;
        let child = Command::new(strata_cluster::redis_server()?)
            .arg(node.dir.join("redis.conf"))
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting redis-server")?;
        node.pid = child.id();
        // The child is left to run detached, as `strata up` leaves it; `strata down` reaps it by pid.
        drop(child);
        self.write_pid_file()?;
        let node = &self.nodes[i];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ping(&node.url) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "node on port {} did not answer after a restart", node.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Adds a node (not yet in the cluster): a new directory beside the others, the first
    /// node's config with fresh ports and paths, started and recorded in the pid file.
    pub fn add(&mut self) -> anyhow::Result<usize> {
        let template = std::fs::read_to_string(self.nodes[0].dir.join("redis.conf"))?;
        let base = self.dir.clone().context("adding a node needs a `strata up` directory (--dir)")?;
        let dir = (self.nodes.len()..).map(|i| base.join(format!("node-{i}"))).find(|d| !d.exists());
        let dir = dir.context("no free node directory name")?;
        std::fs::create_dir_all(&dir)?;
        let (port, bus) = (strata_cluster::free_port()?, strata_cluster::free_port()?);
        let mut conf = String::from("# added by `strata drill reshard`, from the first node's config\n");
        for line in template.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            conf.push_str(&match name {
                "port" => format!("port {port}"),
                "cluster-port" => format!("cluster-port {bus}"),
                "dir" => format!("dir {}", strata_cluster::quote_config_value(&dir.to_string_lossy())),
                "logfile" => {
                    format!("logfile {}", strata_cluster::quote_config_value(&dir.join("redis.log").to_string_lossy()))
                }
                _ => line.to_owned(),
            });
            conf.push('\n');
        }
        std::fs::write(dir.join("redis.conf"), conf)?;
        let url = format!("redis://127.0.0.1:{port}");
        self.nodes.push(Node { pid: 0, port, url, dir });
        let i = self.nodes.len() - 1;
        self.start(i)?;
        Ok(i)
    }

    fn write_pid_file(&self) -> anyhow::Result<()> {
        let mut text = String::from("# pid port url (written by strata-cluster)\n");
        for n in &self.nodes {
            text.push_str(&format!("{} {} {}\n", n.pid, n.port, n.url));
        }
        let Some(dir) = &self.dir else { return Ok(()) };
        let tmp = dir.join(format!("{PID_FILE}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(PID_FILE))?;
        Ok(())
    }

    /// Port of the master serving `slot` now, from CLUSTER SLOTS of any reachable node.
    pub fn master_port_for_slot(&self, slot: u16) -> anyhow::Result<u16> {
        for node in self.nodes.iter().filter(|n| n.pid != 0) {
            let Ok(mut con) = connect(&node.url) else { continue };
            let Ok(slots) = redis::cmd("CLUSTER").arg("SLOTS").query::<Vec<redis::Value>>(&mut con) else { continue };
            for range in slots {
                let redis::Value::Array(parts) = range else { continue };
                let num = |v: Option<&redis::Value>| match v {
                    Some(redis::Value::Int(n)) => Some(*n),
                    _ => None,
                };
                let (Some(lo), Some(hi)) = (num(parts.first()), num(parts.get(1))) else { continue };
                if !(lo..=hi).contains(&i64::from(slot)) {
                    continue;
                }
                if let Some(redis::Value::Array(master)) = parts.get(2)
                    && let Some(port) = num(master.get(1))
                {
                    return Ok(u16::try_from(port)?);
                }
            }
        }
        anyhow::bail!("no node knows who serves slot {slot}")
    }

    /// Waits until every running node reports `cluster_state:ok` and every slot has a master
    /// that answers PING.
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.healthy() {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the cluster did not become healthy in {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        let all_ok = self.nodes.iter().filter(|n| n.pid != 0).all(|n| {
            connect(&n.url)
                .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        });
        all_ok
            && [0u16, 5461, 10923, 16383].iter().all(|&slot| {
                self.master_port_for_slot(slot)
                    .ok()
                    .and_then(|port| self.by_port(port))
                    .is_some_and(|i| self.nodes[i].pid != 0 && ping(&self.nodes[i].url))
            })
    }
}

fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_millis(500))?;
    con.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(con)
}

fn ping(url: &str) -> bool {
    connect(url).and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_ok()
}

/// Alive and not a zombie.
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
