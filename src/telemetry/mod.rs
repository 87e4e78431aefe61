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
pub mod process;
pub mod stats;

pub use stats::{RunSummary, WorkerStats};

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::TelemetryConfig;

/// Install the global tracing subscriber (text or JSON to stderr). `RUST_LOG`, when set, wins
/// over `telemetry.log_level`. Safe to call more than once (later calls are no-ops).
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if config.log_format == "json" { builder.json().try_init() } else { builder.try_init() };
}
