//! `onad-stream topics`.

use clap::Args;

use super::ConfigArgs;

/// Arguments of `onad-stream topics`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Run the subcommand.
pub fn main(args: TopicsArgs) -> anyhow::Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("`onad-stream topics` is not built yet")
}
