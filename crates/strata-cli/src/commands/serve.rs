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
                        /api/namespaces, /api/audit?limit=N. Prints `listening on http://ADDR` (https with TLS) \
                        once bound (--listen 127.0.0.1:0 picks a free port). Stops on Ctrl-C.\n\n\
                        --web-config FILE takes the Prometheus exporter toolkit's web config (YAML): \
                        tls_server_config (cert_file, key_file, client_auth_type, client_ca_file, min_version), \
                        basic_auth_users (name: bcrypt hash) and http_server_config.headers; it covers every \
                        endpoint. A non-loopback --listen needs it, or --insecure-listen.")]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Address to listen on (IP:PORT or localhost:PORT). The API shows key names: anything but
    /// loopback needs --web-config (TLS, basic auth) or --insecure-listen.
    #[arg(long, default_value = "127.0.0.1:9460", value_parser = strata_web::parse_listen)]
    listen: SocketAddr,
    /// Web config (YAML, the Prometheus exporter toolkit's format): TLS certificate and key,
    /// basic-auth users with bcrypt hashes.
    #[arg(long, value_name = "FILE")]
    web_config: Option<PathBuf>,
    /// Listen on a non-loopback address without a web config (something else protects it).
    #[arg(long)]
    insecure_listen: bool,
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
    let web = args.web_config.as_deref().map(strata_web::WebConfig::load).transpose()?;
    // Refused before the deployment is discovered; Server::bind checks it again.
    strata_web::check_listen(args.listen, web.as_ref(), args.insecure_listen)?;
    let deployment = args.target.deployment()?;
    let mut config = strata_admin::ServeConfig::new(deployment, args.listen);
    config.interval = args.interval;
    config.scan_interval = args.scan_interval;
    config.audit_log = args.audit_log;
    config.max_scan_keys = args.max_scan_keys.max(1);
    config.web = web;
    config.insecure_listen = args.insecure_listen;
    runtime()?.block_on(async {
        let server = strata_admin::Server::bind(config).await?;
        let addr = server.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}://{addr}", server.scheme())
            .and_then(|()| out.flush())
            .context("writing to stdout")?;
        drop(out);
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
