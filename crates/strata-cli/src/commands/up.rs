//! `strata up` (being written).

/// Arguments of `strata up`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata up is not available yet")
}
