//! `onad-stream demo`.

use clap::Args;

use super::ConfigArgs;

/// Arguments of `onad-stream demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Run the subcommand.
pub fn main(args: DemoArgs) -> anyhow::Result<()> {
    let _config = args.config.load()?;
    anyhow::bail!("`onad-stream demo` is not built yet")
}
