//! `strata config` (being written).

/// Arguments of `strata config`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata config is not available yet")
}
