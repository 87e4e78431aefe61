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
    let metrics_addr = config.telemetry.metrics_addr.clone();
    let input_topic = config.kafka.input_topic.clone();
    let summary = runtime.block_on(async {
        // State store (issue 4): restore on assignment, snapshots, changelog.
        let partitions = crate::kafka::admin::ensure_output_topics(&config.kafka).await?;
        let hooks = crate::kafka::recovery::StoreHooks::open(&config, partitions as i32).await?;
        let worker = crate::worker::Worker::new(config).with_state(std::sync::Arc::new(hooks));
        // Prometheus /metrics and /health, when configured; served until the worker returns.
        let server = if metrics_addr.is_empty() {
            None
        } else {
            let metrics = std::sync::Arc::new(crate::telemetry::metrics::Metrics::default());
            metrics.watch_worker(&input_topic, worker.stats());
            metrics.set_healthy(true);
            let (addr, task) = crate::telemetry::metrics::serve(&metrics_addr, metrics)
                .await
                .map_err(|e| anyhow::anyhow!("cannot serve metrics on {metrics_addr}: {e}"))?;
            tracing::info!(%addr, "serving /metrics and /health");
            Some(task)
        };
        let summary = worker.run(shutdown_signal()).await;
        if let Some(task) = server {
            task.abort();
        }
        summary.map_err(anyhow::Error::from)
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
