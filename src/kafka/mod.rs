//! Everything that talks to Kafka: client settings (one builder per role), topic
//! administration (the one topic-creation and metadata path), the consumer driver and
//! rebalance coordination, the per-partition loop, the output producer, offsets, the
//! changelog topic's I/O, reading output tails, and the state hooks that tie them to the
//! store.
//!
//! Below `worker`, above [`crate::partition`] (the pure per-partition state machine
//! this layer runs) and [`crate::state`] (RocksDB, the codec, the restore policy):
//!
//! - [`client`]: the librdkafka settings of every client role;
//! - [`admin`]: metadata (never naming a topic) and topic creation, the changelog's included;
//! - [`driver`]: the consumer, its rebalance callbacks, one thread per assigned partition;
//! - [`task`]: a partition's thread: poll, [`crate::partition::Processor`], produce, ack;
//! - [`wallclock`]: a partition thread's wall clock, one monotonic reading per record;
//! - [`freeze`]: whether the whole process was frozen (zombie fencing), not one thread slow;
//! - [`held`]: a round's outputs, held until it ends; [`producer`]: outputs onto the wire;
//!   [`offsets`]: in-order acks, commits, group resets;
//! - [`changelog`], [`tails`]: the changelog topic's records and the output tails, moved;
//! - [`tls`]: the diagnosis of a failed TLS connection, naming the setting to fix;
//! - [`bounds`]: a partition's true end and the record at an offset, read from the log;
//! - [`probe`]: whether a broker answers (for `/ready`);
//! - [`recovery`]: [`recovery::StoreHooks`], the state seam wired to RocksDB and these topics.
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
//! - A member that lost its session but still produces (a zombie) could duplicate outputs. A
//!   partition thread that finds more than the session timeout passed since its previous
//!   round holds everything until the group revokes or confirms its partition ([`task`]).
//!   Outputs already handed to librdkafka before the stall expire before librdkafka's threads
//!   can send them: their delivery timeout is below any freeze that can cost the partitions
//!   ([`client`], `zombie_fence`). Not fenced: the one produce request librdkafka may have
//!   built and not yet written when the process stopped; its broker thread writes it on
//!   waking, before it checks the request's age (measured: 4,856 repeats, one full 1 MB
//!   request, in 1 of 13 runs of the freeze test; README, "Zombies"). At most one request per
//!   broker connection ([`client::OUTPUT_UNSENT_REQUESTS`]), recognisable by its source
//!   headers. Broker transactions would be the general fence, but neither development broker
//!   honours them.
//! - Outputs that time out undelivered (a broker outage) are never produced again blindly: the
//!   partition starts over from its state store, output tails and committed offset once the
//!   broker answers ([`reread`]). A fatal Kafka error (outputs still timing out after
//!   `kafka.delivery_retry_ms`, a refused output) stops the worker; its offsets never pass the
//!   undelivered output, and `run` returns the error at the latest `kafka.fatal_exit_after_ms`
//!   after it, drained or not.

pub mod admin;
pub mod bounds;
pub mod changelog;
pub mod client;
pub mod driver;
pub mod freeze;
pub mod held;
pub mod offsets;
pub mod probe;
pub mod producer;
pub mod recovery;
pub mod reread;
pub mod tails;
pub mod task;
pub mod tls;
pub mod wallclock;

pub use admin::AdminError;
pub use driver::{Consumer, WorkerContext};
