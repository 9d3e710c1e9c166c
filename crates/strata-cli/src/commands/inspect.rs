//! `strata inspect` (being written).

/// Arguments of `strata inspect`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata inspect is not available yet")
}
