//! A lab of hosts on one machine, for what only crosses a network: Redis Cluster across
//! several addresses, partitions between hosts, latency in front of a host.
//!
//! # Layout
//! - `lab.rs`: [`Lab`]: `up` makes N hosts, each a network namespace (`stlab-hN`, address
//!   `10.77.0.(10+N)`) joined to the machine by a veth link on one bridge (`stlab-br0`, the
//!   machine at [`GATEWAY`]), each with its own mount and UTS namespaces held by a sleeping
//!   process (Redis's `/etc/redis`, `/var/lib/redis`, `/var/log/redis`, `/run/redis` are the
//!   host's own directories; its hostname is its name) and, by default, an OpenSSH server so
//!   tools reach it as they reach a real host (`DIR/ssh/config`, `DIR/inventory.ini`).
//!   `partition` / `heal` add and remove nftables rules in the hosts' own namespaces. The state
//!   (`DIR/lab.json`) is written before each thing is made; `down` removes what it records and
//!   anything named `stlab-*`, so a crash leaves nothing `down` cannot find.
//! - `delay.rs`: latency without `netem` (this kernel has none): a delaying TCP proxy inside the
//!   host, on the path by an nftables redirect.
//! - `sh.rs`: running `ip`, `nft`, `nsenter`; stopping processes.
//!
//! Everything needs root ([`require_root`]). Used by `strata lab` and the lab tests.

mod delay;
mod error;
mod lab;
mod sh;

pub use delay::{MAX_DELAY, PROXY_PORT, serve as serve_delay};
pub use error::{Error, ErrorKind, Result};
pub use lab::{
    BRIDGE, Delay, DownReport, GATEWAY, GATEWAY_NAME, Host, Lab, MAX_HOSTS, PREFIX, UpOptions, require_root,
};
