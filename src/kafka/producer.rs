//! The output producer: copies [`OutRecord`]s onto the wire, to the input record's partition
//! number, with the source headers. Building the records is `partition::output`'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::partition::{Dest, OutRecord, Source};

/// First pause before retrying when librdkafka's local queue is full (backpressure from the
/// broker); doubled on each retry up to [`QUEUE_FULL_BACKOFF_MAX`], so a broker that is away
/// costs no busy loop while one that is merely slow is followed closely.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);
/// Longest pause between retries of a full local queue.
const QUEUE_FULL_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Produces the worker's outputs.
pub struct OutputProducer {
    /// The idempotent producer (its own thread serves delivery reports); replaced by
    /// [`OutputProducer::renew`] once a delivery timeout has spent its producer id.
    producer: RwLock<FutureProducer>,
    /// How many times `producer` was replaced.
    generation: AtomicU64,
    /// Its settings (to create a replacement).
    config: rdkafka::ClientConfig,
    /// Topic names indexed like [`Dest`].
    scores: String,
    /// See `scores`.
    alerts: String,
    /// See `scores`.
    dead_letters: String,
}

impl OutputProducer {
    /// A producer for the topics of `k`.
    pub fn new(k: &KafkaConfig) -> Result<Self, KafkaError> {
        let config = super::client::output_producer(k);
        Ok(Self {
            producer: RwLock::new(config.create()?),
            generation: AtomicU64::new(0),
            config,
            scores: k.scores_topic.clone(),
            alerts: k.alerts_topic.clone(),
            dead_letters: k.dead_letter_topic.clone(),
        })
    }

    /// The current producer (a poisoned lock still holds a usable producer).
    fn current(&self) -> RwLockReadGuard<'_, FutureProducer> {
        self.producer.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many times the producer was replaced so far (see [`OutputProducer::renew`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replace the producer with a new one (a new producer id), unless it was replaced since
    /// `seen` ([`OutputProducer::generation`]): after a delivery timeout librdkafka bumps the
    /// idempotent producer's epoch itself, which Tansu answers with `ProducerFenced` on every
    /// later output. Outputs still queued or in flight on the old producer fail (purged), and
    /// their partitions start over too. Returns whether it replaced the producer.
    pub fn renew(&self, seen: u64) -> Result<bool, KafkaError> {
        let mut producer = self.producer.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.generation() != seen {
            return Ok(false);
        }
        let old = std::mem::replace(&mut *producer, self.config.create()?);
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(producer);
        // Dropping purges what the old producer still held, after the lock is released.
        drop(old);
        Ok(true)
    }

    fn topic(&self, d: Dest) -> &str {
        match d {
            Dest::Scores => &self.scores,
            Dest::Alerts => &self.alerts,
            Dest::DeadLetters => &self.dead_letters,
        }
    }

    /// Enqueue `rec` for partition `src.partition` of its topic. Blocks (briefly, repeatedly)
    /// while librdkafka's queue is full; call from a partition thread, not the reactor.
    pub fn send(&self, src: &Source<'_>, rec: &OutRecord) -> Result<DeliveryFuture, KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(4);
        for (key, value) in src.headers() {
            headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
        }
        let mut record =
            FutureRecord::to(self.topic(rec.dest)).partition(src.partition).key(&rec.key[..]).payload(&rec.payload[..]).headers(headers);
        let mut backoff = QUEUE_FULL_BACKOFF;
        loop {
            match self.current().send_result(record) {
                Ok(f) => return Ok(f),
                // Retriable: the queue drains as the broker acknowledges (or as undelivered
                // records time out, which then fails their partition: a fatal error).
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(QUEUE_FULL_BACKOFF_MAX);
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Drop the records still waiting in librdkafka's queue, not yet sent to a broker (their
    /// deliveries fail with `PurgeQueue`); returns how many records were queued or in flight.
    /// For a worker that may have lost its partitions while frozen (zombie fencing): what is
    /// already in flight cannot be recalled, but nothing queued is written late.
    pub fn purge_queued(&self) -> i32 {
        let producer = self.current();
        let n = producer.in_flight_count();
        producer.purge(PurgeConfig::default().queue());
        n
    }

    /// Wait for every queued record to be delivered (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().flush(timeout)
    }
}

/// Producer of the `OpsAlert` records of `monitoring.ops_alerts_topic` (records built by
/// `partition::output::ops_alert`).
pub struct OpsAlertProducer {
    /// A plain producer of its own: ops alerts must not queue behind the outputs' backlog.
    producer: FutureProducer,
    /// `monitoring.ops_alerts_topic`.
    topic: String,
}

impl OpsAlertProducer {
    /// A producer for `topic` on the cluster of `k`.
    pub fn new(k: &KafkaConfig, topic: &str) -> Result<Self, KafkaError> {
        Ok(Self { producer: super::client::producer(k).create()?, topic: topic.to_string() })
    }

    /// Enqueue one record (never blocks: a full queue is an error the caller logs).
    pub fn send(&self, key: &[u8], payload: &[u8]) -> Result<DeliveryFuture, KafkaError> {
        self.producer.send_result(FutureRecord::to(&self.topic).key(key).payload(payload)).map_err(|(e, _)| e)
    }

    /// Wait for the queued records to be delivered (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
