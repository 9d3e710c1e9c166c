//! `strata backup` (being written).

/// Arguments of `strata backup`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata backup is not available yet")
}
