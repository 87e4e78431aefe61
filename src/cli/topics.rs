//! `onad-stream topics create`: the input topic (`kafka.partitions` partitions) and the
//! output topics with the input's partition count.

use clap::{Args, Subcommand};

use super::ConfigArgs;

/// Arguments of `onad-stream topics`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: TopicsAction,
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `topics` actions.
#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Create the input topic (if missing) and the scores, alerts and dead-letter topics.
    Create,
}

/// Run the subcommand.
pub fn main(args: TopicsArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    crate::telemetry::init(&config.telemetry);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.action {
        TopicsAction::Create => {
            let k = &config.kafka;
            let n = runtime.block_on(crate::kafka::admin::create_all(k))?;
            println!(
                "topics ready with {n} partitions: {} (input), {}, {}, {}",
                k.input_topic, k.scores_topic, k.alerts_topic, k.dead_letter_topic
            );
        }
    }
    Ok(())
}
