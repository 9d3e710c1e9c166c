//! `strata invalidate` (being written).

/// Arguments of `strata invalidate`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata invalidate is not available yet")
}
