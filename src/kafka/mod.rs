//! Everything that talks to Kafka: client settings, topic administration, the consumer
//! driver and rebalance coordination, the output producer and offsets.
//!
//! Threads, not async tasks, carry the data path: one driver thread polls the consumer's main
//! queue (rebalance callbacks run there) and one thread per assigned partition polls that
//! partition's own queue, scores and produces. Scoring is CPU-bound, so it never runs on the
//! tokio reactor; the driver never waits behind scoring.
//!
//! # Delivery guarantees
//! - An input offset is stored (and so committed) only after every output of that record and
//!   of every record before it in its partition is acknowledged by the broker (idempotent
//!   producer: retries neither duplicate nor reorder). Nothing is lost: a crash re-reads from
//!   the last commit.
//! - Revoke and shutdown drain deliveries and commit synchronously before giving a partition
//!   up, so a clean handoff or restart repeats nothing.
//! - After a crash, the records between the last commit (at most `auto.commit.interval.ms`,
//!   1 s, behind) and the crash are read again; their outputs repeat unless the state store's
//!   `Resume::emit_from` suppresses them. Every output carries its source partition and offset
//!   (payload and headers), so a consumer can always recognise a repeat.
//! - A member that lost its session but still produces (a zombie) can duplicate outputs;
//!   broker transactions would fence it, but neither development broker honours them.

pub mod admin;
pub mod bounds;
pub mod client;
pub mod driver;
pub mod offsets;
pub mod producer;

pub use admin::AdminError;
pub use driver::{Consumer, WorkerContext};
