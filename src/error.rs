//! The worker's error type and the subsystem errors folded into it.
//!
//! A leaf: it imports no other module of this crate, so every layer may use it (style.md,
//! conventions 3 and 11). The subsystems re-export their own enum from here (`kafka::AdminError`,
//! `kafka::offsets::DeliveryError`, `partition::StateFailure`), which keeps the dependency
//! graph one-way: the top-level [`WorkerError`] does not have to import the layers that raise
//! its variants.

use rdkafka::error::KafkaError;

/// Why the worker stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Topic set-up failed (missing input, too few output partitions, ...).
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A Kafka client error.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// An output was not delivered; its input offset and all later ones stay uncommitted.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// librdkafka did not give a partition its own queue.
    #[error("cannot split the queue of {topic}/{partition}")]
    SplitQueue {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// A record arrived on the main queue instead of its partition's queue (a bug).
    #[error("record of partition {partition} offset {offset} arrived on the main queue")]
    MainQueueRecord {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// A partition thread stopped on an error.
    #[error("partition {partition}: {reason}")]
    Partition {
        /// Partition.
        partition: i32,
        /// What went wrong.
        reason: String,
    },
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateFailure),
    /// A worker thread could not be started or panicked.
    #[error("worker thread: {0}")]
    Thread(String),
}

/// A topic problem that stops the worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The client could not be created or the broker did not answer.
    #[error("kafka admin: {0}")]
    Client(#[from] KafkaError),
    /// The brokers refused the TLS connection: the reason names the setting to fix.
    #[error("kafka TLS: {0}")]
    Tls(String),
    /// The input topic does not exist.
    #[error("input topic `{0}` does not exist; create it with `onad-stream topics create` (kafka.partitions sets its partition count)")]
    MissingInput(String),
    /// An output topic has fewer partitions than the input.
    #[error("output topic `{topic}` has {has} partitions but input topic `{input}` has {need}; outputs of input partition p go to partition p, so add partitions to `{topic}` (or delete it and let the worker recreate it)")]
    TooFewPartitions {
        /// Output topic.
        topic: String,
        /// Its partition count.
        has: usize,
        /// Input topic.
        input: String,
        /// The input's partition count.
        need: usize,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic `{topic}`: {reason}")]
    Create {
        /// Topic.
        topic: String,
        /// Broker's answer.
        reason: String,
    },
}

/// An output that could not be delivered: its input offset must not be committed.
#[derive(Debug, thiserror::Error)]
#[error("output of {topic}/{partition} offset {offset} was not delivered: {reason}")]
pub struct DeliveryError {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Input offset whose output failed.
    pub offset: i64,
    /// Producer's error.
    pub reason: String,
    /// The output was dropped unsent or timed out (`message.timeout.ms`, a purge after a
    /// freeze) rather than refused by the broker: re-reading its input may answer it.
    pub undelivered: bool,
    /// The failure leaves the idempotent producer unusable on brokers that do not accept
    /// librdkafka's local epoch bump after a timeout (Tansu answers `ProducerFenced`): a
    /// partition that starts over needs a new producer ([`DeliveryError::undelivered`]).
    pub producer_spent: bool,
}

/// A state store failure that stops the worker (offsets stop advancing with it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateFailure(pub String);
