//! Workloads behind `strata bench` and `strata demo` (user-profiles).
//!
//! Every workload is bounded in operations and time, talks only to loopback Redis processes it
//! starts itself (or a URL it is given), reports latencies from HDR histograms, and measures the
//! variants it compares in the same run, interleaved, so that machine noise hits all of them.

pub mod cold_start;
pub mod consistency;
pub mod cpu;
pub mod drill_coherence;
pub mod drill_faults;
pub mod drill_stampede;
pub mod eviction;
pub mod expiry;
pub mod fault_inject;
pub mod fault_nodes;
pub mod hit_latency;
pub mod hot_key;
pub mod http;
pub mod invalidation_scale;
pub mod invalidation_wait;
pub mod l1_store;
pub mod redis_benchmark;
pub mod report;
pub mod runner;
pub mod scale;
pub mod soak;
pub mod stampede;
pub mod stats;
pub mod svg;
pub mod user_profiles;
pub mod user_profiles_report;
mod worker_process;
pub mod workload;
