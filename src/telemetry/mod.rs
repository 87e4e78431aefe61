//! Logs, metrics, health and the worker's counters. Log events, metric names and counters are
//! declared here, in one place: [`stats`] (the atomics the data path bumps and the shared
//! health fields), [`metrics`] (every Prometheus metric), [`health`] (what `/ready` decides),
//! [`http`] (the axum endpoint) and [`process`] (RSS and CPU from `/proc/self`).
//!
//! A leaf for the rest of the crate: it depends only on [`crate::config`] (for
//! [`TelemetryConfig`]), so every layer may count and log through it.

pub mod health;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod otel;
pub mod process;
pub mod rules;
pub mod stats;

pub use stats::{RunSummary, WorkerStats};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter, Layer as _};

use crate::config::TelemetryConfig;

/// Install the global tracing subscriber (text or JSON to stderr). `RUST_LOG`, when set, wins
/// over `telemetry.log_level`. Safe to call more than once (later calls are no-ops).
pub fn init(config: &TelemetryConfig) {
    install(config, None);
}

/// As [`init`], plus OpenTelemetry when configured ([`otel`]); keep the returned exporters
/// until the end of the run (dropping them flushes the last spans and metrics).
pub fn init_with_otel(config: &TelemetryConfig) -> Result<Option<otel::Otel>, String> {
    let otel = otel::Otel::start(config)?;
    install(config, otel.as_ref());
    Ok(otel)
}

fn install(config: &TelemetryConfig, otel: Option<&otel::Otel>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = if config.log_format == "json" { logs.json().with_filter(filter).boxed() } else { logs.with_filter(filter).boxed() };
    // The log filter is the log layer's own: the worker's spans reach the exporter whatever
    // `log_level` says, and the exporter's own HTTP client (reqwest, hyper) never does, so
    // exporting cannot feed itself.
    let spans = otel.map(|o| o.layer().with_filter(Targets::new().with_target("onad_stream", tracing::Level::INFO)));
    let _ = tracing_subscriber::registry().with(logs).with(spans).try_init();
}
