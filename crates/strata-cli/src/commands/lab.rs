//! `strata lab`: hosts as network namespaces on this machine, with partitions and latency
//! (crate `strata-lab`). Needs root.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use strata_lab::{Lab, UpOptions};

use super::common::{OutputArgs, parse_duration, runtime};

/// Where `strata lab` keeps its state unless told.
const DEFAULT_LAB_DIR: &str = ".strata/lab";

/// Arguments of `strata lab`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(clap::Subcommand, Debug)]
enum LabCommand {
    /// Make N hosts (network namespaces on one bridge, 10.77.0.11 up), each with its own Redis
    /// directories, hostname and SSH server; writes DIR/ssh/config and DIR/inventory.ini.
    Up(UpArgs),
    /// Remove every host, link and process of the lab (also what a crash left behind).
    Down(DirArgs),
    /// The hosts, their addresses, partitions and delays.
    Status(DirArgs),
    /// Cut two hosts off from each other (nftables rules in both).
    Partition(PartitionArgs),
    /// Remove every partition.
    Heal(DirArgs),
    /// Add latency to every reply of a host's TCP services (`off` removes it).
    Delay(DelayArgs),
    /// Run a command on a host (in its namespaces); exits with its status.
    Exec(ExecArgs),
    /// The delay proxy (started inside a host by `delay`).
    #[command(hide = true)]
    ServeDelay(ServeDelayArgs),
}

#[derive(clap::Args, Debug)]
struct DirArgs {
    /// The lab's directory.
    #[arg(long, default_value = DEFAULT_LAB_DIR)]
    dir: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// How many hosts.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=64))]
    hosts: u16,
    /// Without SSH servers.
    #[arg(long)]
    no_ssh: bool,
}

#[derive(clap::Args, Debug)]
struct PartitionArgs {
    /// One host (name like `h1`, or address).
    a: String,
    /// The other.
    b: String,
    #[command(flatten)]
    dir: DirArgs,
}

#[derive(clap::Args, Debug)]
struct DelayArgs {
    /// The host.
    host: String,
    /// Added to each reply, like `20ms`; `off` removes the delay.
    #[arg(value_parser = parse_delay)]
    delay: Duration,
    #[command(flatten)]
    dir: DirArgs,
}

#[derive(clap::Args, Debug)]
struct ExecArgs {
    /// The host.
    host: String,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
    /// The lab's directory.
    #[arg(long, default_value = DEFAULT_LAB_DIR)]
    dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ServeDelayArgs {
    #[arg(long)]
    listen: std::net::SocketAddr,
    #[arg(long)]
    delay_ms: u64,
}

fn parse_delay(s: &str) -> Result<Duration, String> {
    match s {
        "off" | "0" => Ok(Duration::ZERO),
        _ => parse_duration(s),
    }
}

#[derive(Serialize)]
struct Done<'a> {
    did: String,
    lab: &'a Lab,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Up(a) => {
            let options = UpOptions::hosts(usize::from(a.hosts));
            let options = if a.no_ssh { options.without_ssh() } else { options };
            let lab = Lab::up(&a.dir.dir, &options)?;
            let did = format!("{} hosts up on {}", lab.hosts.len(), lab.bridge);
            print(&a.dir.output, &lab, did)
        }
        LabCommand::Down(a) => {
            let report = Lab::down(&a.dir)?;
            a.output.print(&report, || {
                format!(
                    "removed {} namespaces, {} links; stopped {} processes\n",
                    report.namespaces.len(),
                    report.links.len(),
                    report.stopped.len()
                )
            })
        }
        LabCommand::Status(a) => {
            let lab = Lab::load(&a.dir)?;
            print(&a.output, &lab, format!("{} hosts", lab.hosts.len()))
        }
        LabCommand::Partition(a) => {
            let mut lab = Lab::load(&a.dir.dir)?;
            lab.partition(&a.a, &a.b)?;
            let did = format!("partitioned {} from {}", a.a, a.b);
            print(&a.dir.output, &lab, did)
        }
        LabCommand::Heal(a) => {
            let mut lab = Lab::load(&a.dir)?;
            let n = lab.heal()?;
            print(&a.output, &lab, format!("healed {n} partitions"))
        }
        LabCommand::Delay(a) => {
            let mut lab = Lab::load(&a.dir.dir)?;
            let me = std::env::current_exe().context("locating the strata binary for the delay proxy")?;
            lab.delay(&a.host, a.delay, &me)?;
            let did = if a.delay.is_zero() {
                format!("removed the delay of {}", a.host)
            } else {
                format!("{} added to every reply of {}'s TCP services", humanize(a.delay), a.host)
            };
            print(&a.dir.output, &lab, did)
        }
        LabCommand::Exec(a) => {
            let lab = Lab::load(&a.dir)?;
            let (program, rest) = a.command.split_first().context("no command given")?;
            let status =
                lab.command(&a.host, program)?.args(rest).status().with_context(|| format!("running {program}"))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        LabCommand::ServeDelay(a) => {
            let rt = runtime()?;
            rt.block_on(strata_lab::serve_delay(a.listen, Duration::from_millis(a.delay_ms)))
                .with_context(|| format!("delay proxy on {}", a.listen))
        }
    }
}

fn print(output: &OutputArgs, lab: &Lab, did: String) -> anyhow::Result<()> {
    let done = Done { did, lab };
    output.print(&done, || {
        let mut out = format!("{}\n", done.did);
        for host in &lab.hosts {
            let delay = lab.delays.iter().find(|d| d.host == host.name).map(|d| format!("  delay {} ms", d.delay_ms));
            out += &format!("  {:<4} {:<12} netns {}{}\n", host.name, host.addr, host.netns, delay.unwrap_or_default());
        }
        for (a, b) in &lab.partitions {
            out += &format!("  partition: {a} x {b}\n");
        }
        if lab.ssh_config().exists() {
            out +=
                &format!("ssh: ssh -F {} h1\nansible: -i {}\n", lab.ssh_config().display(), lab.inventory().display());
        }
        out
    })
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}
