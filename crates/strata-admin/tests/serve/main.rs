//! `strata serve` end to end: the admin server against a real 3+3 cluster (strata-cluster),
//! its JSON API, `/metrics` checked by promtool and scraped by a real Prometheus.

mod common;
#[path = "../../../strata/tests/it/prom_text.rs"]
mod prom_text;

mod api;
mod prometheus;
