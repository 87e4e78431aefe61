//! onad-stream: online anomaly detection on sensor streams in Kafka.
//!
//! The production form of ONAD (Python "Online Anomaly Detection"): per-sensor pipelines of
//! online transforms and detectors, scored one reading at a time, with state that survives
//! crashes, restarts and rebalances.
//!
//! # Layout
//! Dependencies point one way, top to bottom (style.md, convention 11); a layer that needs
//! something from above gets a trait or a value passed down ([`partition::StateHooks`]).
//! `python3 /work/shared/tools/modcycles.py src` checks that there is no import cycle.
//! - [`cli`]: the subcommands of the `onad-stream` binary.
//! - [`worker`]: [`run`]: the worker as a library call (start, run until shutdown, drain);
//!   wires the configuration, the state hooks and the counters into [`kafka`].
//! - [`kafka`]: all Kafka I/O: one client builder per role ([`kafka::client`]), metadata and
//!   every topic creation ([`kafka::admin`]), the consumer driver and rebalances, the
//!   per-partition loop, the output producer, offsets, the changelog topic, output tails,
//!   partition bounds read from the log ([`kafka::bounds`]), and
//!   [`kafka::recovery::StoreHooks`] (the state seam wired to RocksDB and those topics).
//! - [`partition`]: the pure per-partition state machine: decode, validate, route by key,
//!   score, build outputs; and [`partition::resume`], where a partition resumes (a pure
//!   function of the committed offset, the snapshot, the output tails and the replay epoch),
//!   and [`partition::replay_plan`], a replay request checked against the partitions' bounds.
//! - [`state`]: RocksDB snapshots, the snapshot codec, the changelog's record format and the
//!   restore policy (no Kafka client).
//! - [`ops`]: input validation, rate limiting per source, the per-sensor circuit breaker and its warm fallback, and the memory budget.
//! - [`detect`]: the pure detection core (no Kafka, RocksDB, tokio or tracing).
//! - [`config`]: TOML + env + flags -> checked [`config::Config`].
//! - [`telemetry`]: logs, metrics, health, OpenTelemetry export, the ops-alert monitor and
//!   the worker's counters ([`WorkerStats`]); a leaf.
//! - [`error`]: [`WorkerError`] and the subsystem errors folded into it; a leaf.
//! - [`proto`]: the wire contracts, generated from `proto/onad/v1`.

pub mod cli;
pub mod config;
pub mod detect;
pub mod error;
pub mod kafka;
pub mod ops;
pub mod partition;
pub mod state;
pub mod telemetry;
pub mod worker;

pub use error::WorkerError;
pub use telemetry::{RunSummary, WorkerStats};
pub use worker::{run, Worker};

/// Generated wire types (`proto/onad/v1/readings.proto`).
pub mod proto {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onad.v1.rs"));
}
