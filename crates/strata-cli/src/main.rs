//! `strata`: the operator CLI. Thin: it parses arguments and calls the library crates.
//!
//! Conventions: `--help` on every command; `--json` prints the JSON alone on stdout, while
//! progress bars and logs go to stderr; colours only when stdout is a terminal.
//!
//! Exit codes: 0 success; 1 the command failed (one line on stderr says why); 2 invalid
//! arguments.
mod commands;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "strata", version, about = "Operate Strata caches and the Redis beneath them")]
#[command(after_help = "Exit codes: 0 success, 1 failure (the message says why), 2 invalid arguments.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `text` for people, `json` (one object a line) for log shippers.
    /// Levels and targets are chosen with STRATA_LOG (e.g. `STRATA_LOG=strata=debug`).
    #[arg(long, global = true, env = "STRATA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::from_env("STRATA_LOG");
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start a local Redis Cluster (config per node, nodes, cluster creation) and print its URLs.
    Up(commands::up::Args),
    /// Stop the nodes a `strata up` started (by pid); --purge also removes their data.
    Down(commands::down::Args),
    /// Show every node: address, role, slots, keys, memory, ops/s, links; and the cluster state.
    Status(commands::status::Args),
    /// Check a cluster: every slot served once, nodes up and linked, masters replicated.
    Check(commands::status::CheckArgs),
    /// Keyspace by namespace: keys, memory, keys without TTL, TTL histogram; per-node memory and hits.
    Inspect(commands::inspect::Args),
    /// Remove every key of a namespace or matching a pattern, on every master (SCAN + UNLINK).
    Invalidate(commands::invalidate::Args),
    /// Retire a whole key schema for a deployment by bumping its version.
    Flush(commands::flush::Args),
    /// Write a production redis.conf and users.acl for a workload.
    Config(commands::config::Args),
    /// Back up every master (RDB) with a manifest of the slots each file holds.
    Backup(commands::backup::Args),
    /// Restore a backup into a running deployment (keys, values and TTLs).
    Restore(commands::restore::Args),
    /// Access Redis denied (ACL LOG of every node, masters and replicas) as audit records.
    Audit(commands::audit::Args),
    /// Drills against a deployment: `stampede` (distributed single-flight), `coherence` (L1 invalidation delay),
    /// `failover`, `restart`, `outage`, `reshard` (faults under a cache-aside load).
    Drill(commands::drill::Args),
    /// Admin HTTP server: Prometheus exporter (/metrics), /healthz, JSON API and web dashboard.
    Serve(commands::serve::Args),
    /// Caching reverse proxy (RFC 9111) in front of an origin, on the deployment's Redis.
    Edge(commands::edge::Args),
    /// Run the user-profiles workload over a real database: alone, through Strata, and two peers.
    Demo(commands::demo::Args),
    /// Run a benchmark scenario.
    Bench(commands::bench::Args),
    /// A lab of hosts on this machine (network namespaces): up, down, partition, heal, delay. Root only.
    Lab(commands::lab::Args),
    /// One cache process of the invalidation-scale scenario (started by it).
    #[command(hide = true)]
    BenchWorker(commands::bench::WorkerArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logs(cli.log_format);
    let command = matches.subcommand_name().unwrap_or_default();
    tracing::debug!(command = %command, version = env!("CARGO_PKG_VERSION"), "strata command started");
    let result = match cli.command {
        Command::Up(a) => commands::up::run(a),
        Command::Down(a) => commands::down::run(a),
        Command::Status(a) => commands::status::run(a),
        Command::Check(a) => commands::status::run_check(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Invalidate(a) => commands::invalidate::run(a),
        Command::Flush(a) => commands::flush::run(a),
        Command::Config(a) => commands::config::run(a),
        Command::Backup(a) => commands::backup::run(a),
        Command::Restore(a) => commands::restore::run(a),
        Command::Audit(a) => commands::audit::run(a),
        Command::Drill(a) => commands::drill::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Edge(a) => commands::edge::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Lab(a) => commands::lab::run(a),
        Command::BenchWorker(a) => commands::bench::run_worker(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let text = format!("{err:#}").lines().map(str::trim).collect::<Vec<_>>().join(" | ");
            eprintln!("strata: {text}");
            ExitCode::FAILURE
        }
    }
}
