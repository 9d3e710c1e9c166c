//! `strata edge`: a caching reverse proxy (strata-http) in front of one origin.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::common::{TargetArgs, parse_duration, runtime};

/// Arguments of `strata edge`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Responses are cached per RFC 9111 in the deployment's Redis (and each edge's L1), shared by \
                        every edge on it. Every response carries X-Cache: HIT|MISS|STALE|REVALIDATED|PASS. \
                        Endpoints: POST /_strata/purge ({\"url\":...}|{\"key\":...}|{\"all\":true}, bearer token), \
                        GET /_strata/metrics. Prints `listening on http://ADDR` once bound (and `admin on \
                        http://ADDR` with --admin-listen; https with TLS). Stops on Ctrl-C.\n\n\
                        --web-config FILE (the Prometheus exporter toolkit's YAML: tls_server_config, \
                        basic_auth_users, http_server_config.headers) protects /_strata/*: its TLS covers the \
                        listener that serves them, its basic auth /_strata/metrics (purging keeps its bearer \
                        token). With --admin-listen they get a listener of their own and --listen only proxies. \
                        The listener of /_strata/* must be on loopback unless --web-config or --insecure-listen.")]
pub(crate) struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// The origin: http://host:port.
    #[arg(long)]
    origin: String,
    /// Address to listen on (IP:PORT or localhost:PORT; port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:9480", value_parser = strata_web::parse_listen)]
    listen: SocketAddr,
    /// A listener of their own for /_strata/purge and /_strata/metrics (then --listen only proxies).
    #[arg(long, value_name = "ADDR", value_parser = strata_web::parse_listen)]
    admin_listen: Option<SocketAddr>,
    /// Web config (YAML, the Prometheus exporter toolkit's format) of the /_strata/* endpoints:
    /// TLS certificate and key, basic-auth users with bcrypt hashes.
    #[arg(long, value_name = "FILE")]
    web_config: Option<PathBuf>,
    /// Serve /_strata/* on a non-loopback address without a web config (something else protects it).
    #[arg(long)]
    insecure_listen: bool,
    /// Cache namespace of the responses (purged together by {"all": true}).
    #[arg(long, default_value = "site")]
    namespace: String,
    /// File holding the purge API's bearer token (first line); without it the purge API is off.
    #[arg(long, value_name = "PATH")]
    purge_token_file: Option<PathBuf>,
    /// Largest response body stored, in bytes (larger ones pass through).
    #[arg(long, default_value_t = 512 * 1024)]
    max_body: usize,
    /// How long the origin has to answer before a 504 (or a stale response).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    origin_timeout: Duration,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let web = args.web_config.as_deref().map(strata_web::WebConfig::load).transpose()?;
    // Refused before connecting to Redis; Edge::bind checks it again.
    strata_web::check_listen(args.admin_listen.unwrap_or(args.listen), web.as_ref(), args.insecure_listen)?;
    let deployment = args.target.deployment()?;
    let token = match &args.purge_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let token = text.lines().next().unwrap_or_default().trim().to_owned();
            let min = strata_http::MIN_TOKEN_LEN;
            anyhow::ensure!(
                token.len() >= min,
                "the purge token in {} is shorter than {min} characters",
                path.display()
            );
            Some(token)
        }
        None => None,
    };
    runtime()?.block_on(async {
        let urls = deployment.urls();
        let mut builder = if deployment.cluster {
            strata::Cache::builder().cluster(urls)
        } else {
            strata::Cache::builder().redis_url(urls.first().cloned().context("no node")?)
        };
        let credentials = deployment.credentials();
        if let Some(user) = &credentials.user {
            builder = builder.username(user);
        }
        if let Some(password) = &credentials.password {
            builder = builder.password(password);
        }
        anyhow::ensure!(credentials.tls.is_none(), "strata edge does not support TLS to Redis yet");
        let cache = builder.build().await.context("connecting to Redis")?;
        let mut config = strata_http::Config::default();
        config.max_body = args.max_body;
        config.origin_timeout = args.origin_timeout;
        let http = strata_http::HttpCache::new(cache, strata::KeySchema::new("edge", 1)?, &args.namespace, config)?;
        let mut edge_config = strata_http::EdgeConfig::new(args.listen, &args.origin);
        if let Some(token) = token {
            edge_config = edge_config.purge_token(token);
        }
        if let Some(addr) = args.admin_listen {
            edge_config = edge_config.admin_listen(addr);
        }
        if let Some(web) = web {
            edge_config = edge_config.web_config(web);
        }
        edge_config = edge_config.insecure_listen(args.insecure_listen);
        let edge = strata_http::Edge::bind(http, edge_config).await?;
        let addr = edge.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}://{addr}", edge.scheme()).context("writing to stdout")?;
        if let Some(admin) = edge.admin_addr()? {
            writeln!(out, "admin on {}://{admin}", edge.admin_scheme()).context("writing to stdout")?;
        }
        out.flush().context("writing to stdout")?;
        drop(out);
        edge.run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok(())
    })
}
