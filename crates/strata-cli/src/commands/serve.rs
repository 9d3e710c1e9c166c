//! `strata serve`: the admin HTTP server (exporter, health check, JSON API, dashboard).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::common::{TargetArgs, parse_duration, runtime};

/// Arguments of `strata serve`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Endpoints: / (dashboard), /healthz, /metrics (Prometheus), /api/topology, /api/history, \
                        /api/namespaces, /api/audit?limit=N. Prints `listening on http://ADDR` once bound \
                        (--listen 127.0.0.1:0 picks a free port). Stops on Ctrl-C.")]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Address to listen on. The API shows key names: keep it on loopback or behind a proxy.
    #[arg(long, default_value = "127.0.0.1:9460")]
    listen: SocketAddr,
    /// How often every node is sampled (the dashboard's charts, /healthz freshness).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    interval: Duration,
    /// How long a namespace scan (/api/namespaces, strata_namespace_* in /metrics) is reused
    /// (default: --interval). Each scan sends one PTTL per key, which Redis counts as a hit.
    #[arg(long, value_parser = parse_duration)]
    scan_interval: Option<Duration>,
    /// Audit log (JSON lines) shown by /api/audit.
    #[arg(long, value_name = "PATH")]
    audit_log: Option<PathBuf>,
    /// Keys measured per master by a namespace scan (beyond it, figures are extrapolated).
    #[arg(long, value_name = "N", default_value_t = strata_admin::DEFAULT_MAX_SCAN_KEYS)]
    max_scan_keys: usize,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let deployment = args.target.deployment()?;
    let mut config = strata_admin::ServeConfig::new(deployment, args.listen);
    config.interval = args.interval;
    config.scan_interval = args.scan_interval;
    config.audit_log = args.audit_log;
    config.max_scan_keys = args.max_scan_keys.max(1);
    runtime()?.block_on(async {
        let server = strata_admin::Server::bind(config).await?;
        let addr = server.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}").and_then(|()| out.flush()).context("writing to stdout")?;
        drop(out);
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
