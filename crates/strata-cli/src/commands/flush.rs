//! `strata flush` (being written).

/// Arguments of `strata flush`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata flush is not available yet")
}
