//! The lab itself: hosts, the bridge between them, their state file, partitions.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::sh::{self, run};

/// Every name the lab gives a namespace or a link starts with this, so that `down` can find
/// what a crashed `up` left without its state file.
pub const PREFIX: &str = "stlab-";
/// The bridge joining the hosts; the machine's own side of the lab network.
pub const BRIDGE: &str = "stlab-br0";
/// The machine's address on the lab network (the hosts' default gateway).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Host `hN` has address `10.77.0.(10 + N)`.
const FIRST_HOST: u8 = 10;
/// The machine's name in [`Lab::partitions`].
pub const GATEWAY_NAME: &str = "gateway";
/// At most this many hosts (addresses up to 10.77.0.74).
pub const MAX_HOSTS: usize = 64;
const STATE: &str = "lab.json";
/// Hosts of the inventory's `redis` group.
const REDIS_HOSTS: usize = 6;
/// The nftables table of a host's partitions (in the host's own network namespace).
pub(crate) const PARTITION_TABLE: &str = "strata_lab";
/// Directories of the host's own, bind-mounted in its mount namespace (Redis's config, data,
/// logs and run directories as the Debian package lays them out).
const PRIVATE_DIRS: [&str; 4] = ["/etc/redis", "/var/lib/redis", "/var/log/redis", "/run/redis"];

/// One host of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    /// `h1`, `h2`, ...: also its hostname inside.
    pub name: String,
    /// Its address on the lab network.
    pub addr: Ipv4Addr,
    /// Its network namespace (`ip netns`).
    pub netns: String,
    /// The machine's end of its link, attached to the bridge.
    pub link: String,
    /// The process holding its mount and UTS namespaces (`nsenter --target`).
    pub holder: Option<u32>,
    /// Its SSH server.
    pub sshd: Option<u32>,
    /// Its own directory on the machine: the private directories' contents, sshd's files.
    pub root: PathBuf,
}

/// Latency added in front of one host's TCP services (see [`Lab::delay`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delay {
    /// The host.
    pub host: String,
    /// Added to every reply the host's services send, in milliseconds.
    pub delay_ms: u64,
    /// The proxy's port inside the host.
    pub port: u16,
    /// The proxy's process.
    pub pid: u32,
}

/// A lab: what `up` made, as recorded in `DIR/lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lab {
    /// Its directory (state, keys, the hosts' private directories).
    pub dir: PathBuf,
    /// The bridge.
    pub bridge: String,
    /// The machine's address on the lab network.
    pub gateway: Ipv4Addr,
    /// The hosts, in order.
    pub hosts: Vec<Host>,
    /// Pairs of hosts that cannot reach each other.
    pub partitions: Vec<(String, String)>,
    /// Hosts with added latency.
    pub delays: Vec<Delay>,
}

/// How `up` builds the lab.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpOptions {
    /// How many hosts (1 to [`MAX_HOSTS`]).
    pub hosts: usize,
    /// Start an SSH server on every host (needs Debian's `openssh-server`).
    pub ssh: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self { hosts: 6, ssh: true }
    }
}

impl UpOptions {
    /// `hosts` hosts, with SSH.
    pub fn hosts(hosts: usize) -> Self {
        Self { hosts, ..Self::default() }
    }

    /// Without SSH servers.
    pub fn without_ssh(mut self) -> Self {
        self.ssh = false;
        self
    }
}

/// What `down` removed.
#[derive(Debug, Default, Serialize)]
pub struct DownReport {
    /// Processes stopped (proxies, SSH servers, namespace holders).
    pub stopped: Vec<u32>,
    /// Network namespaces deleted.
    pub namespaces: Vec<String>,
    /// Links deleted (the bridge, the hosts' links).
    pub links: Vec<String>,
}

/// Fails unless running as root.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::NotRoot,
            "the lab needs root (network namespaces, links, nftables): run it as root, e.g. with sudo",
        ))
    }
}

impl Lab {
    /// Builds a lab of `options.hosts` hosts in `dir` (created if needed). One lab per machine:
    /// fails if one is up. What it creates is recorded before it is created, so that `down`
    /// removes it all even after a crash half-way.
    pub fn up(dir: &Path, options: &UpOptions) -> Result<Lab> {
        require_root()?;
        if options.hosts == 0 || options.hosts > MAX_HOSTS {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("hosts must be 1 to {MAX_HOSTS}, got {}", options.hosts),
            ));
        }
        let tools: &[&str] = if options.ssh {
            &["ip", "nsenter", "unshare", "nft", "sshd", "ssh-keygen"]
        } else {
            &["ip", "nsenter", "unshare", "nft"]
        };
        for tool in tools {
            sh::require(tool)?;
        }
        if dir.join(STATE).exists() {
            return Err(Error::new(
                ErrorKind::AlreadyUp,
                format!("a lab is up in {} (strata lab down first)", dir.display()),
            ));
        }
        let leftovers = leftover_namespaces()?;
        if !leftovers.is_empty() || link_exists(BRIDGE) {
            return Err(Error::new(
                ErrorKind::AlreadyUp,
                format!(
                    "a lab is up on this machine (namespaces {leftovers:?}, bridge {BRIDGE}): strata lab down --dir DIR first"
                ),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| state_error(dir, e))?;
        let dir = dir.canonicalize().map_err(|e| state_error(dir, e))?;
        // It is written into sshd_config, the SSH client configuration, the inventory and a
        // shell script: keep it to characters none of them needs to quote.
        let text = dir.to_string_lossy();
        if text.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"\\$`;&|<>*?#".contains(c)) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("the lab directory {text:?} has spaces, quotes or shell characters"),
            ));
        }
        let hosts = (1..=options.hosts)
            .map(|i| {
                let name = format!("h{i}");
                Host {
                    addr: Ipv4Addr::new(10, 77, 0, FIRST_HOST + i as u8),
                    netns: format!("{PREFIX}{name}"),
                    link: format!("{PREFIX}{name}"),
                    holder: None,
                    sshd: None,
                    root: dir.join("hosts").join(&name),
                    name,
                }
            })
            .collect();
        let mut lab =
            Lab { dir, bridge: BRIDGE.into(), gateway: GATEWAY, hosts, partitions: Vec::new(), delays: Vec::new() };
        lab.save()?;
        if let Err(err) = lab.build(options) {
            let _ = Lab::down(&lab.dir);
            return Err(err);
        }
        Ok(lab)
    }

    fn build(&mut self, options: &UpOptions) -> Result<()> {
        let gateway = format!("{}/24", self.gateway);
        run("ip", &["link", "add", &self.bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &gateway, "dev", &self.bridge])?;
        run("ip", &["link", "set", &self.bridge, "up"])?;
        if options.ssh {
            self.make_keys()?;
        }
        for i in 0..self.hosts.len() {
            let host = self.hosts[i].clone();
            let addr = format!("{}/24", host.addr);
            let gw = self.gateway.to_string();
            run("ip", &["netns", "add", &host.netns])?;
            run("ip", &["link", "add", &host.link, "type", "veth", "peer", "name", "eth0", "netns", &host.netns])?;
            run("ip", &["link", "set", &host.link, "master", &self.bridge, "up"])?;
            run("ip", &["-n", &host.netns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &host.netns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &host.netns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", &host.netns, "route", "add", "default", "via", &gw])?;
            let holder = start_holder(&host)?;
            self.hosts[i].holder = Some(holder);
            self.save()?;
            if options.ssh {
                let pid = self.start_sshd(&self.hosts[i])?;
                self.hosts[i].sshd = Some(pid);
                self.save()?;
            }
        }
        self.write_client_files()
    }

    /// The lab recorded in `dir`.
    pub fn load(dir: &Path) -> Result<Lab> {
        let path = dir.join(STATE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no lab in {} (strata lab up --dir {} first)", dir.display(), dir.display()),
                )
            } else {
                state_error(&path, e)
            }
        })?;
        serde_json::from_str(&text).map_err(|e| Error::new(ErrorKind::State, format!("{}: {e}", path.display())))
    }

    pub(crate) fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE);
        let tmp = self.dir.join(format!("{STATE}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::new(ErrorKind::State, e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| state_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| state_error(&path, e))
    }

    /// Removes the lab of `dir`: every process, namespace and link it recorded, and any
    /// namespace or link named with [`PREFIX`] (what a crash may have left unrecorded). The
    /// directory stays (keys, logs). Succeeds when nothing is up.
    pub fn down(dir: &Path) -> Result<DownReport> {
        require_root()?;
        let mut report = DownReport::default();
        let lab = match Lab::load(dir) {
            Ok(lab) => Some(lab),
            Err(err) if err.is_not_found() => None,
            Err(err) => {
                tracing::warn!(error = %err, "lab state unreadable; removing what carries the lab's names");
                None
            }
        };
        // Every process of the lab is in one of its namespaces (holders, SSH servers, delay
        // proxies, and whatever ran there: a Redis server, a client): the namespaces say which,
        // so a recorded pid that now names another process (after a reboot) is never signalled.
        for netns in leftover_namespaces()? {
            // Until none is left: a process may fork (an SSH session, a BGSAVE) meanwhile.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let pids = sh::pids_in_netns(&netns);
                if pids.is_empty() || std::time::Instant::now() > deadline {
                    break;
                }
                for pid in pids {
                    if sh::stop(pid) && !report.stopped.contains(&pid) {
                        report.stopped.push(pid);
                    }
                }
            }
            run("ip", &["netns", "del", &netns])?;
            report.namespaces.push(netns);
        }
        for link in leftover_links()? {
            // A host's link goes with its namespace; the bridge (and any stray one) here.
            // (A host's link may vanish meanwhile, with its namespace.)
            match run("ip", &["link", "del", &link]) {
                Ok(()) => report.links.push(link),
                Err(_) if !link_exists(&link) => {}
                Err(err) => return Err(err),
            }
        }
        if let Some(lab) = lab {
            let _ = std::fs::remove_file(lab.dir.join(STATE));
        } else {
            let _ = std::fs::remove_file(dir.join(STATE));
        }
        Ok(report)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts.iter().find(|h| h.name == name || h.addr.to_string() == name).ok_or_else(|| {
            let names: Vec<_> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            Error::new(ErrorKind::NotFound, format!("no host {name:?} in the lab (hosts: {})", names.join(", ")))
        })
    }

    /// A command that runs `program` on `host`: in its network, mount and UTS namespaces.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let host = self.host(host)?;
        let holder = host
            .holder
            .ok_or_else(|| Error::new(ErrorKind::State, format!("host {} has no namespace holder", host.name)))?;
        // The recorded holder must still be this host's (a stale state file after a reboot
        // names pids of other processes).
        if !sh::in_netns(holder, &host.netns) {
            return Err(Error::new(
                ErrorKind::State,
                format!("host {}'s namespace holder (pid {holder}) is gone: strata lab down, then up", host.name),
            ));
        }
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target").arg(holder.to_string()).args(["--mount", "--net", "--uts", "--"]).arg(program);
        Ok(cmd)
    }

    /// Cuts `a` and `b` off from each other (both directions, every protocol) with nftables
    /// rules in each host's own namespace. Repeating a partition changes nothing.
    pub fn partition(&mut self, a: &str, b: &str) -> Result<()> {
        let (ha, hb) = (self.host(a)?.clone(), self.host(b)?.clone());
        if ha.name == hb.name {
            return Err(Error::new(ErrorKind::Invalid, format!("cannot partition {} from itself", ha.name)));
        }
        if self.partitions.iter().any(|(x, y)| (x == &ha.name && y == &hb.name) || (x == &hb.name && y == &ha.name)) {
            return Ok(());
        }
        cut(&ha.netns, hb.addr)?;
        cut(&hb.netns, ha.addr)?;
        self.partitions.push((ha.name, hb.name));
        self.save()
    }

    /// Cuts the hosts of `group` off from every other host and from the machine ([`GATEWAY`],
    /// recorded as `gateway`): a minority side, e.g. a master with its own clients. Hosts of
    /// the group still reach each other.
    pub fn isolate(&mut self, group: &[&str]) -> Result<()> {
        let inside: Vec<Host> = group.iter().map(|name| self.host(name).cloned()).collect::<Result<_>>()?;
        let outside: Vec<Host> =
            self.hosts.iter().filter(|h| !inside.iter().any(|i| i.name == h.name)).cloned().collect();
        for me in &inside {
            for other in &outside {
                self.partition(&me.name, &other.name)?;
            }
            if !self.partitions.iter().any(|(a, b)| a == &me.name && b == GATEWAY_NAME) {
                cut(&me.netns, self.gateway)?;
                self.partitions.push((me.name.clone(), GATEWAY_NAME.into()));
                self.save()?;
            }
        }
        Ok(())
    }

    /// Removes every partition; returns how many there were.
    pub fn heal(&mut self) -> Result<usize> {
        let healed = self.partitions.len();
        for host in &self.hosts {
            if partition_table_exists(&host.netns) {
                run("ip", &["netns", "exec", &host.netns, "nft", "delete", "table", "inet", PARTITION_TABLE])?;
            }
        }
        self.partitions.clear();
        self.save()?;
        Ok(healed)
    }

    /// The SSH client configuration for the hosts (`ssh -F FILE h1`).
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh").join("config")
    }

    /// The Ansible inventory of the hosts (group `lab`).
    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.ini")
    }

    fn make_keys(&self) -> Result<()> {
        let ssh = self.dir.join("ssh");
        std::fs::create_dir_all(&ssh).map_err(|e| state_error(&ssh, e))?;
        for key in ["id_ed25519", "host_ed25519"] {
            let path = ssh.join(key);
            if !path.exists() {
                let p = path.to_string_lossy().into_owned();
                run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "strata-lab", "-f", &p])?;
            }
        }
        let public = std::fs::read_to_string(ssh.join("id_ed25519.pub")).map_err(|e| state_error(&ssh, e))?;
        let authorized = ssh.join("authorized_keys");
        std::fs::write(&authorized, public).map_err(|e| state_error(&authorized, e))
    }

    fn start_sshd(&self, host: &Host) -> Result<u32> {
        let ssh = self.dir.join("ssh");
        let pid_file = host.root.join("sshd.pid");
        let config = host.root.join("sshd_config");
        let text = format!(
            "# Written by `strata lab up`.\nListenAddress {addr}\nPort 22\nHostKey {key}\nPidFile {pid}\n\
             AuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n",
            addr = host.addr,
            key = ssh.join("host_ed25519").display(),
            pid = pid_file.display(),
            auth = ssh.join("authorized_keys").display(),
        );
        std::fs::write(&config, text).map_err(|e| state_error(&config, e))?;
        let _ = std::fs::remove_file(&pid_file);
        let log = host.root.join("sshd.log");
        let mut cmd = self.command(&host.name, "/usr/sbin/sshd")?;
        cmd.arg("-f").arg(&config).arg("-E").arg(&log);
        sh::run_command(&mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                let logged = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Command,
                    format!("sshd on {} did not start: {}", host.name, logged.trim()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_client_files(&self) -> Result<()> {
        let key = self.dir.join("ssh").join("id_ed25519");
        if !key.exists() {
            return Ok(());
        }
        let mut config = String::from("# Written by `strata lab up`: ssh -F THIS_FILE h1\n");
        // Groups for deploy/ansible: `redis` (the first six hosts: 3 masters + 3 replicas),
        // `app` (the others, for services using the cluster).
        let mut inventory = String::from("# Written by `strata lab up`.\n[lab:children]\nredis\napp\n\n[redis]\n");
        for (i, host) in self.hosts.iter().enumerate() {
            config += &format!("Host {name} {addr}\n  HostName {addr}\n", name = host.name, addr = host.addr);
            if i == REDIS_HOSTS {
                inventory += "\n[app]\n";
            }
            inventory += &format!("{} ansible_host={}\n", host.name, host.addr);
        }
        if self.hosts.len() <= REDIS_HOSTS {
            inventory += "\n[app]\n";
        }
        config += &format!(
            "Host *\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  \
             UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 5\n",
            key.display()
        );
        inventory += &format!(
            "\n[lab:vars]\nansible_user=root\nansible_python_interpreter=/usr/bin/python3\n\
             # Lab hosts share the machine's PID 1 and /etc/systemd: Redis runs from the role's start script.\n\
             strata_service_mgr=script\nansible_ssh_private_key_file={}\n\
             ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n",
            key.display()
        );
        let (c, i) = (self.ssh_config(), self.inventory());
        std::fs::write(&c, config).map_err(|e| state_error(&c, e))?;
        std::fs::write(&i, inventory).map_err(|e| state_error(&i, e))
    }
}

/// Starts the process that holds `host`'s mount and UTS namespaces: it sets the hostname,
/// bind-mounts the host's private directories, then sleeps until `down` stops it.
fn start_holder(host: &Host) -> Result<u32> {
    let mut script = format!("set -e; hostname {}; mkdir -p /run/sshd;", host.name);
    for dir in PRIVATE_DIRS {
        let own = host.root.join(dir.trim_start_matches('/').replace('/', "_"));
        std::fs::create_dir_all(&own).map_err(|e| state_error(&own, e))?;
        script += &format!(" mkdir -p {dir}; mount --bind '{}' {dir};", own.display());
    }
    script += " exec sleep infinity";
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &host.netns,
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child =
        cmd.spawn().map_err(|e| Error::new(ErrorKind::Command, format!("starting host {}: {e}", host.name)))?;
    let pid = child.id();
    // Ready once the script has exec'd into `sleep` (the mounts are done).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(Error::new(
                ErrorKind::Command,
                format!("host {} exited ({status}): {}", host.name, err.trim()),
            ));
        }
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep") {
            // Not waited for: `down` stops it; the lab outlives this process.
            std::mem::forget(child);
            return Ok(pid);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(Error::new(ErrorKind::Command, format!("host {} did not start in 10 s", host.name)));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// In `netns`, drops everything to and from `peer`.
fn cut(netns: &str, peer: Ipv4Addr) -> Result<()> {
    ensure_partition_table(netns)?;
    let peer = peer.to_string();
    run(
        "ip",
        &["netns", "exec", netns, "nft", "add", "rule", "inet", PARTITION_TABLE, "input", "ip", "saddr", &peer, "drop"],
    )?;
    run(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "nft",
            "add",
            "rule",
            "inet",
            PARTITION_TABLE,
            "output",
            "ip",
            "daddr",
            &peer,
            "drop",
        ],
    )
}

fn ensure_partition_table(netns: &str) -> Result<()> {
    if partition_table_exists(netns) {
        return Ok(());
    }
    let rules = format!(
        "table inet {PARTITION_TABLE} {{\n  chain input {{ type filter hook input priority 0; policy accept; }}\n  \
         chain output {{ type filter hook output priority 0; policy accept; }}\n}}\n"
    );
    sh::run_with_input("ip", &["netns", "exec", netns, "nft", "-f", "-"], &rules)
}

fn partition_table_exists(netns: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "nft", "list", "table", "inet", PARTITION_TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn leftover_namespaces() -> Result<Vec<String>> {
    let out = sh::output("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

fn leftover_links() -> Result<Vec<String>> {
    let out = sh::output("ip", &["-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn state_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::State, format!("{}: {e}", path.display()))
}
