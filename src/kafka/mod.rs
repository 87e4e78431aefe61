//! Everything that talks to Kafka: client settings, topic administration, the consumer
//! driver and rebalance coordination, the output producer and offsets.
//!
//! Threads, not async tasks, carry the data path: one driver thread polls the consumer's main
//! queue (rebalance callbacks run there) and one thread per assigned partition polls that
//! partition's own queue, scores and produces. Scoring is CPU-bound, so it never runs on the
//! tokio reactor; the driver never waits behind scoring.

pub mod admin;
pub mod client;
pub mod driver;
pub mod offsets;
pub mod producer;

pub use admin::AdminError;
pub use driver::{Consumer, WorkerContext};
