//! `strata serve` end to end: the admin server against a real 3+3 cluster (strata-cluster),
//! its JSON API, `/metrics` checked by promtool and scraped by a real Prometheus (also over
//! TLS with basic auth, through a web config).

mod common;
#[path = "../../../strata/tests/it/prom_text.rs"]
mod prom_text;

#[path = "../../../strata-web/tests/client/mod.rs"]
mod client;

mod api;
mod prometheus;
mod web_config;
