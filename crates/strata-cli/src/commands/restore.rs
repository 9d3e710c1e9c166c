//! `strata restore` (being written).

/// Arguments of `strata restore`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata restore is not available yet")
}
