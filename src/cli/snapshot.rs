//! `onad-stream snapshot`.

use clap::Args;

use super::ConfigArgs;

/// Arguments of `onad-stream snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Run the subcommand.
pub fn main(args: SnapshotArgs) -> anyhow::Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("`onad-stream snapshot` is not built yet")
}
