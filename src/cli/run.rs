//! `onad-stream run`.

use clap::Args;

use super::ConfigArgs;

/// Arguments of `onad-stream run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Run the subcommand.
pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("`onad-stream run` is not built yet")
}
