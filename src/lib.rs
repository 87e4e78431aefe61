//! onad-stream: online anomaly detection on sensor streams in Kafka.
//!
//! The production form of ONAD (Python "Online Anomaly Detection"): per-sensor pipelines of
//! online transforms and detectors, scored one reading at a time, with state that survives
//! crashes, restarts and rebalances.
//!
//! # Layout
//! - [`config`]: TOML + env + flags -> checked [`config::Config`].
//! - [`detect`]: the pure detection core (no Kafka, RocksDB, tokio or tracing).
//! - [`proto`]: the wire contracts, generated from `proto/onad/v1`.
//! - [`kafka`]: consumer driver, rebalance coordination, producer, offsets.
//! - [`partition`]: one task per assigned partition: decode, route by key, score, emit, ack.
//! - [`state`]: RocksDB snapshots, the snapshot codec, the changelog.
//! - [`ops`]: validation, circuit breaker and fallback, rate limiting, memory budget.
//! - [`telemetry`]: logs, metrics, health.
//! - [`worker`]: [`run`]: the worker as a library call (start, run until shutdown, drain).
//! - [`cli`]: the subcommands of the `onad-stream` binary.

pub mod cli;
pub mod config;
pub mod detect;
pub mod kafka;
pub mod ops;
pub mod partition;
pub mod state;
pub mod telemetry;
pub mod worker;

pub use worker::{run, RunSummary, Worker, WorkerError, WorkerStats};

/// Generated wire types (`proto/onad/v1/readings.proto`).
pub mod proto {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onad.v1.rs"));
}
