//! Integration tests of the `strata` library against real Redis processes (standalone and a
//! 3-master + 3-replica cluster), started on free ports by `strata-cluster`.

// With the `otel` feature an operation's future is a few types deeper (docs/decisions/0020-opentelemetry.md).
#![recursion_limit = "256"]

mod common;

mod audit;
mod batch;
mod coherence;
mod corrupt;
#[cfg(feature = "encryption")]
mod encryption;
mod freshness;
mod hot;
mod l1_budget;
mod leases;
mod namespaces;
#[cfg(feature = "prometheus")]
mod prom_text;
#[cfg(all(feature = "prometheus", feature = "write-behind"))]
mod prometheus;
mod recovery;
mod resilience;
mod retries;
mod security;
mod stampede;
mod topologies;
mod ttl;
mod values;
#[cfg(feature = "write-behind")]
mod write_behind;
mod write_through;
