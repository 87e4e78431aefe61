//! `onad-stream tail`.

use clap::Args;

use super::ConfigArgs;

/// Arguments of `onad-stream tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Run the subcommand.
pub fn main(args: TailArgs) -> anyhow::Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("`onad-stream tail` is not built yet")
}
