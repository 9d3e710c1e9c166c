//! `strata down` (being written).

/// Arguments of `strata down`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata down is not available yet")
}
