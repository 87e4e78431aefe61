//! `onad-stream run`: the worker until SIGTERM/SIGINT, then drain, commit and exit 0.
//!
//! The HTTP endpoint (`/live`, `/ready`, `/metrics`) starts first, so that while Kafka is
//! unreachable at start-up the process is live and says why it is not ready; the start-up
//! check is retried with backoff until the broker answers. Only what retrying cannot cure
//! (bad configuration, a missing input topic, failed authentication) exits non-zero.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::ConfigArgs;
use crate::config::{Config, KafkaConfig};
use crate::kafka::{admin, probe};
use crate::telemetry::health::{Health, HealthRules};
use crate::telemetry::http::{self, Endpoint};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::WorkerStats;

/// First and longest wait between start-up attempts while Kafka is unreachable.
const START_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

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
    let summary = runtime.block_on(async {
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let worker = crate::worker::Worker::new(config.clone());
        let stats = worker.stats();
        if let Some(o) = &otel {
            o.watch(&config.kafka.input_topic, stats.clone());
        }
        let server = serve(&config, &stats).await?;
        // The ops-alert monitor needs Kafka (its topic): started once Kafka answers.
        let mut monitor = None;
        let run = async {
            let Some(partitions) = wait_for_kafka(&config.kafka, &stats, shutdown.as_mut()).await? else {
                return Ok(None);
            };
            // State store (issue 4): restore on assignment, snapshots, changelog.
            let hooks = crate::kafka::recovery::StoreHooks::open(&config, partitions as i32).await?.with_stats(stats.clone());
            monitor = Some(start_monitor(config.monitoring.clone(), &config.kafka, stats.clone()).await?);
            let worker = worker.with_state(Arc::new(hooks));
            worker.run(shutdown.as_mut()).await.map(Some).map_err(anyhow::Error::from)
        };
        let result = run.await;
        if let Some(task) = server {
            task.abort();
        }
        if let Some((task, ops)) = monitor {
            if let Some(task) = task {
                task.abort();
            }
            if let Some(ops) = ops {
                if let Err(e) = ops.flush(OPS_FLUSH_TIMEOUT) {
                    tracing::warn!(cause = %e, "ops alerts not all delivered before exit");
                }
            }
        }
        result
    })?;
    drop(runtime);
    drop(otel);
    match summary {
        Some(summary) => eprintln!(
            "onad-stream run: {} readings in {:.1} s: {} scored, {} alerts, {} dead letters",
            summary.consumed,
            summary.elapsed.as_secs_f64(),
            summary.scored,
            summary.alerts,
            summary.dead_letters
        ),
        None => eprintln!("onad-stream run: stopped before Kafka at {} was reachable", config.kafka.bootstrap),
    }
    Ok(())
}

/// Start the HTTP endpoint when `telemetry.metrics_addr` is set; served until the run ends.
async fn serve(config: &Config, stats: &Arc<WorkerStats>) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let addr = &config.telemetry.metrics_addr;
    if addr.is_empty() {
        return Ok(None);
    }
    let rules = HealthRules {
        max_poll_age: Duration::from_secs(config.telemetry.ready_max_poll_age_secs),
        bootstrap: config.kafka.bootstrap.clone(),
    };
    let health = Arc::new(Health::new(stats.clone(), rules));
    let metrics = Arc::new(Metrics::new(&config.kafka.input_topic, stats.clone(), health.clone()));
    let (bound, task) =
        http::serve(addr, Endpoint { metrics, health }).await.map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    tracing::info!(addr = %bound, "serving /metrics and /health (= /ready) and /live");
    Ok(Some(task))
}

/// The worker's start-up check of its topics, retried with backoff while Kafka is unreachable
/// (the outage shows in `/ready`). `None`: shutdown was requested meanwhile.
async fn wait_for_kafka<F: Future<Output = ()>>(
    k: &KafkaConfig,
    stats: &WorkerStats,
    mut shutdown: Pin<&mut F>,
) -> anyhow::Result<Option<usize>> {
    let mut wait = START_RETRY.0;
    loop {
        let attempt = tokio::select! {
            r = admin::ensure_output_topics(k) => r,
            () = &mut shutdown => return Ok(None),
        };
        match attempt {
            Ok(partitions) => {
                probe::mark_up(stats);
                return Ok(Some(partitions));
            }
            Err(e) if probe::retriable(&e) => {
                probe::mark_down(stats, &k.bootstrap, &e.to_string());
                tracing::warn!(bootstrap = %k.bootstrap, cause = %e, retry_in = ?wait, "cannot reach Kafka; retrying");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut shutdown => return Ok(None),
                }
                wait = (wait * 2).min(START_RETRY.1);
            }
            Err(e) => return Err(e.into()),
        }
    }
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
