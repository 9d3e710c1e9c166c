//! `strata up`: a local Redis Cluster from `redis-server` itself, left running for development.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use serde::Serialize;
use strata_cluster::{Detached, RedisCluster};

use super::common::{DEFAULT_DIR, OutputArgs, Style, paint};

/// Arguments of `strata up`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Directory for the nodes' configs, logs, data and the pid file.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// First client port (node i uses P+i); default: free ports.
    #[arg(long)]
    base_port: Option<u16>,
    /// Masters (at least 3).
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// Replicas per master.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Persistence of every node.
    #[arg(long, value_enum, default_value_t = Persistence::None)]
    persistence: Persistence,
    /// Memory limit per node (Redis syntax: 256mb, 1gb; 0 = unlimited).
    #[arg(long, default_value = "256mb", value_parser = parse_memory)]
    maxmemory: String,
    /// Eviction policy once maxmemory is reached (see `strata config` for the trade-offs).
    #[arg(long, value_enum, default_value_t = Policy::AllkeysLfu)]
    policy: Policy,
    /// cluster-node-timeout: how long a master may be unreachable before its replica takes over.
    /// 1 s by default: on loopback a second of silence means a dead process, not congestion, and
    /// Redis's own failover (this timeout, failure-report gossip, a 0.5-1 s election delay) then
    /// fits in "node timeout + 2 s" (docs/reliability.md).
    #[arg(long, default_value_t = 1000)]
    node_timeout_ms: u64,
    /// TLS only (generated CA and certificates) and ACL roles (admin, app, readonly, metrics)
    /// with random passwords; secrets go to DIR/secure (0700, files 0600), never to the output.
    #[arg(long)]
    secure: bool,
    /// With --secure: the key prefix the `app` and `readonly` users may touch.
    #[arg(long, default_value = strata_cluster::DEFAULT_KEY_PREFIX, requires = "secure")]
    key_prefix: String,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Persistence {
    /// Append-only file, fsync every second.
    Aof,
    /// RDB snapshots.
    Rdb,
    /// Nothing on disk: a pure cache.
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Policy {
    AllkeysLfu,
    AllkeysLru,
    VolatileTtl,
    VolatileLfu,
    VolatileLru,
    AllkeysRandom,
    VolatileRandom,
    Noeviction,
}

impl Policy {
    fn redis_name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
}

fn parse_memory(s: &str) -> Result<String, String> {
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !["", "b", "k", "kb", "m", "mb", "g", "gb"].contains(&unit)
    {
        return Err(format!("{s:?} is not a memory size like 256mb or 2gb"));
    }
    Ok(lower)
}

/// What `strata up` reports.
#[derive(Debug, Serialize)]
struct UpReport {
    dir: PathBuf,
    already_running: bool,
    urls: Vec<String>,
    pids: Vec<u32>,
    /// Paths of the secret files (with --secure); never their content.
    #[serde(skip_serializing_if = "Option::is_none")]
    secure: Option<SecureReport>,
}

#[derive(Debug, Serialize)]
struct SecureReport {
    dir: PathBuf,
    ca_cert: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    acl_file: PathBuf,
    password_files: Vec<(String, PathBuf)>,
}

impl SecureReport {
    fn new(files: &strata_cluster::SecureFiles) -> Self {
        let (client_cert, client_key) = files.tls.client.clone().unwrap_or_default();
        SecureReport {
            dir: files.dir.clone(),
            ca_cert: files.tls.ca_cert.clone(),
            client_cert,
            client_key,
            acl_file: files.acl_path(),
            password_files: strata_cluster::Role::ALL
                .iter()
                .map(|r| (r.user().to_string(), strata_cluster::SecureFiles::password_path(&files.dir, *r)))
                .collect(),
        }
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if let Some(running) = running_cluster(&args.dir) {
        let report = UpReport {
            dir: args.dir.clone(),
            already_running: true,
            urls: running.urls(),
            pids: running.pids(),
            secure: None,
        };
        eprintln!(
            "a cluster started by `strata up` is already running in {}; not starting another",
            args.dir.display()
        );
        return args.output.print(&report, || render(&report));
    }
    if is_cluster_dir(&args.dir) {
        anyhow::bail!(
            "{} holds a stopped cluster; remove it with `strata down --dir {} --purge` before starting a new one",
            args.dir.display(),
            args.dir.display()
        );
    }
    // Never mix our files into a directory with other content: `down --purge` must be able to
    // remove everything that is ours and nothing else.
    if std::fs::read_dir(&args.dir).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!(
            "{} is not empty and was not made by `strata up`; choose a new or empty directory",
            args.dir.display()
        );
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let _lock = DirLock::take(&args.dir)?;
    std::fs::write(args.dir.join(MARKER), "made by `strata up`; `strata down --purge` removes this directory\n")
        .with_context(|| format!("writing into {}", args.dir.display()))?;
    let mut builder = RedisCluster::builder()
        .dir(&args.dir)
        .masters(args.masters)
        .replicas(args.replicas)
        .node_timeout_ms(args.node_timeout_ms)
        .own_process_group(true)
        .config_line(format!("maxmemory {}", args.maxmemory))
        .config_line(format!("maxmemory-policy {}", args.policy.redis_name()));
    if let Some(port) = args.base_port {
        builder = builder.base_port(port);
    }
    let secure_dir = args.dir.join(strata_cluster::SECURE_DIR);
    let secure = if args.secure {
        let files = strata_cluster::SecureFiles::create(&secure_dir, &args.key_prefix).map_err(|e| {
            let _ = std::fs::remove_dir_all(&secure_dir);
            let _ = std::fs::remove_file(args.dir.join(MARKER));
            anyhow::anyhow!(e)
        })?;
        builder = builder.tls(files.tls.clone()).acl_file(files.acl_path(), &files.roles);
        Some(files)
    } else {
        None
    };
    builder = match args.persistence {
        Persistence::Aof => builder.appendonly(true),
        Persistence::Rdb => builder.config_line("save 3600 1 300 100 60 10000"),
        Persistence::None => builder,
    };
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!(
        "starting {} masters + {} replicas, creating the cluster",
        args.masters,
        args.masters * args.replicas
    ));
    spinner.enable_steady_tick(Duration::from_millis(100));
    // On failure the builder kills whatever it started: nothing half-started stays running.
    let started = builder.start();
    spinner.finish_and_clear();
    let cluster = started.map_err(|e| {
        // The builder stopped what it started; leave the directory as it was (empty).
        let _ = std::fs::remove_file(args.dir.join(MARKER));
        let _ = std::fs::remove_dir_all(&secure_dir);
        anyhow::anyhow!(e)
    })?;
    let expected_replicas = args.masters * args.replicas;
    let detached = cluster.detach()?;
    if let Err(err) = settle(&detached, expected_replicas) {
        // Do not leave a cluster running behind a failed `up`.
        let _ = detached.stop();
        return Err(err.context(format!("the cluster was stopped again; its files are in {}", args.dir.display())));
    }
    let report = UpReport {
        dir: args.dir.clone(),
        already_running: false,
        urls: detached.urls(),
        pids: detached.pids(),
        secure: secure.as_ref().map(SecureReport::new),
    };
    args.output.print(&report, || render(&report))
}

/// Waits until the cluster's own view (CLUSTER NODES, as `status` reads it) lists every replica:
/// right after creation, gossip can still show a new replica as a slot-less master.
fn settle(detached: &Detached, expected_replicas: usize) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        // From the directory, so a secure cluster is asked over TLS as admin.
        let deployment = strata_ops::Deployment::from_dir(detached.dir(), &strata_ops::Credentials::default())?;
        let replicas = deployment.nodes.iter().filter(|n| n.role == strata_ops::Role::Replica).count();
        if replicas == expected_replicas {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the cluster reports {replicas} replicas, expected {expected_replicas}; see {}",
                detached.dir().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The file `strata up` writes first into its directory.
pub(crate) const MARKER: &str = ".strata-up";
const LOCK: &str = ".strata-up.lock";

/// Whether `dir` was made by `strata up` (its marker, or its pid file).
pub(crate) fn is_cluster_dir(dir: &std::path::Path) -> bool {
    dir.join(MARKER).exists() || dir.join(strata_cluster::PID_FILE).exists()
}

/// The cluster recorded in `dir`, if any of its processes is still one of ours (alive, a
/// redis-server, working in this directory: a pid reused by something else does not count).
pub(crate) fn running_cluster(dir: &std::path::Path) -> Option<Detached> {
    let detached = Detached::load(dir).ok()?;
    (!detached.running_pids().is_empty()).then_some(detached)
}

/// An exclusive lock on a `strata up` directory while it is being set up, so two concurrent
/// `up`s cannot both start nodes in it. A lock left by a dead process is taken over.
struct DirLock(PathBuf);

impl DirLock {
    fn take(dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = dir.join(LOCK);
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    std::io::Write::write_all(&mut f, std::process::id().to_string().as_bytes())?;
                    return Ok(Self(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    if std::path::Path::new(&format!("/proc/{}", owner.trim())).exists() {
                        anyhow::bail!("another `strata up` (pid {}) is setting up {}", owner.trim(), dir.display());
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(e).with_context(|| format!("locking {}", dir.display())),
            }
        }
        anyhow::bail!("could not lock {}", dir.display())
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn render(r: &UpReport) -> String {
    let mut out = String::new();
    if !r.already_running {
        out += &format!("{} cluster of {} nodes in {}\n", paint("started", Style::Good), r.urls.len(), r.dir.display());
    }
    out += "seed nodes (give a client all of them):\n";
    for url in &r.urls {
        out += &format!("  {url}\n");
    }
    if let Some(s) = &r.secure {
        out += &format!("TLS only, ACL users; secrets in {} (mode 0700):\n", s.dir.display());
        out += &format!("  CA certificate:      {}\n", s.ca_cert.display());
        out += &format!("  client certificate:  {} (key {})\n", s.client_cert.display(), s.client_key.display());
        out += &format!("  ACL file:            {}\n", s.acl_file.display());
        for (user, path) in &s.password_files {
            out += &format!("  password of {user:<12} {}\n", path.display());
        }
        let example = r.urls.first().map(String::as_str).unwrap_or("rediss://127.0.0.1:PORT");
        let app_pw = s.password_files.iter().find(|(u, _)| u == "app").map(|(_, p)| p.display().to_string());
        out += &format!(
            "connect as the application: {} with user `app`, the password in {}, and CA {}\n",
            example.replacen("rediss://", "rediss://app@", 1),
            app_pw.unwrap_or_default(),
            s.ca_cert.display()
        );
        out += &format!("  e.g. strata status --dir {}   (uses the admin files itself)\n", r.dir.display());
    }
    out += &format!("stop with: strata down --dir {}\n", r.dir.display());
    out
}
