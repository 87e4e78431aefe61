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
    // Kept to the end of `main`, outside the runtime: dropping it flushes the last spans.
    let otel = crate::telemetry::init_with_otel(&config.telemetry).map_err(|e| anyhow::anyhow!("OpenTelemetry: {e}"))?;
    if let Some(endpoint) = otel.as_ref().and(crate::telemetry::otel::endpoint(&config.telemetry)) {
        tracing::info!(%endpoint, "exporting traces and metrics over OTLP");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let metrics_addr = config.telemetry.metrics_addr.clone();
    let input_topic = config.kafka.input_topic.clone();
    let summary = runtime.block_on(async {
        // State store (issue 4): restore on assignment, snapshots, changelog.
        let partitions = crate::kafka::admin::ensure_output_topics(&config.kafka).await?;
        let hooks = crate::kafka::recovery::StoreHooks::open(&config, partitions as i32).await?;
        let monitoring = config.monitoring.clone();
        let kafka = config.kafka.clone();
        let worker = crate::worker::Worker::new(config).with_state(std::sync::Arc::new(hooks));
        if let Some(o) = &otel {
            o.watch(&input_topic, worker.stats());
        }
        let (monitor, ops) = start_monitor(monitoring, &kafka, worker.stats()).await?;
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
        if let Some(task) = monitor {
            task.abort();
        }
        if let Some(ops) = ops {
            if let Err(e) = ops.flush(OPS_FLUSH_TIMEOUT) {
                tracing::warn!(cause = %e, "ops alerts not all delivered before exit");
            }
        }
        summary.map_err(anyhow::Error::from)
    })?;
    drop(runtime);
    drop(otel);
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

/// Longest wait on shutdown for ops alerts still queued.
const OPS_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Start the ops-alert monitor when `[monitoring]` is enabled: creates the ops topic (one
/// partition) and its producer when one is configured.
async fn start_monitor(
    m: crate::config::MonitoringConfig,
    kafka: &crate::config::KafkaConfig,
    stats: std::sync::Arc<crate::telemetry::WorkerStats>,
) -> anyhow::Result<(Option<tokio::task::JoinHandle<()>>, Option<std::sync::Arc<crate::kafka::producer::OpsAlertProducer>>)> {
    if !m.enabled {
        return Ok((None, None));
    }
    let ops = if m.ops_alerts_topic.is_empty() {
        None
    } else {
        let admin = crate::kafka::admin::client(kafka)?;
        crate::kafka::admin::create(&admin, kafka, &[(m.ops_alerts_topic.as_str(), 1)]).await?;
        Some(std::sync::Arc::new(crate::kafka::producer::OpsAlertProducer::new(kafka, &m.ops_alerts_topic)?))
    };
    let publish: Option<crate::telemetry::monitor::Publish> = ops.clone().map(|p| {
        Box::new(move |alert: &crate::telemetry::monitor::OpsAlert| {
            let (key, payload) = crate::partition::output::ops_alert(alert);
            let name = alert.firing.name;
            match p.send(&key, &payload) {
                // Delivery is awaited off the monitor's path; a failure is only logged.
                Ok(delivery) => {
                    tokio::spawn(async move {
                        if let Ok(Err((e, _))) = delivery.await {
                            tracing::warn!(alert = name, cause = %e, "ops alert record not delivered");
                        }
                    });
                }
                Err(e) => tracing::warn!(alert = name, cause = %e, "ops alert record not sent"),
            }
        }) as crate::telemetry::monitor::Publish
    });
    let monitor = crate::telemetry::monitor::Monitor::new(m, stats, &kafka.group_id, publish).map_err(|e| anyhow::anyhow!(e))?;
    Ok((Some(tokio::spawn(monitor.run())), ops))
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
