//! `onad-stream replay`.

use clap::Args;

use super::ConfigArgs;

/// Arguments of `onad-stream replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Run the subcommand.
pub fn main(args: ReplayArgs) -> anyhow::Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("`onad-stream replay` is not built yet")
}
