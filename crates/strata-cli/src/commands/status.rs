//! `strata status` (being written).

/// Arguments of `strata status`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata status is not available yet")
}
