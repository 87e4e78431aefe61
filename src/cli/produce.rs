//! `onad-stream produce`.

use clap::Args;

use super::ConfigArgs;

/// Arguments of `onad-stream produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Run the subcommand.
pub fn main(args: ProduceArgs) -> anyhow::Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("`onad-stream produce` is not built yet")
}
