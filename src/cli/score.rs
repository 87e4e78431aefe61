//! `onad-stream score`.

use clap::Args;

use super::ConfigArgs;

/// Arguments of `onad-stream score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Run the subcommand.
pub fn main(args: ScoreArgs) -> anyhow::Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("`onad-stream score` is not built yet")
}
