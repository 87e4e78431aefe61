//! `onad-stream run`: the worker until SIGTERM/SIGINT, then drain, commit and exit 0.

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
    let config = args.config.load()?;
    crate::telemetry::init(&config.telemetry);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = runtime.block_on(async {
        // State store (issue 4): restore on assignment, snapshots, changelog.
        let partitions = crate::kafka::admin::ensure_output_topics(&config.kafka).await?;
        let hooks = crate::state::hooks::StoreHooks::open(&config, partitions as i32).await?;
        crate::worker::Worker::new(config).with_state(std::sync::Arc::new(hooks)).run(shutdown_signal()).await.map_err(anyhow::Error::from)
    })?;
    eprintln!(
        "onad-stream run: {} readings in {:.1} s: {} scored, {} alerts, {} dead letters",
        summary.consumed,
        summary.elapsed.as_secs_f64(),
        summary.scored,
        summary.alerts,
        summary.dead_letters
    );
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(cause = %e, "cannot watch SIGTERM; only Ctrl-C stops the worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
