//! The changelog topic's I/O: publishing snapshots to it, restoring them from it, rewriting a
//! partition's state (`replay`), recording a replay epoch, and creating the topic (compacted,
//! through [`super::admin`], the one topic-creation path).
//!
//! What the records mean (keys, chunks, markers, epochs, how a restore is assembled) is
//! [`crate::state::changelog`]'s: this module only moves those records, with the producer and
//! reader of [`super::client`]. A reader finds the end of the log by appending an end marker
//! with a fresh nonce and reading up to it: Tansu's high watermark is not the true end.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::KafkaConfig;
use crate::state::changelog::{
    encode_encoded, encode_model, encode_snapshot, end_marker, epoch_record, snapshot_marker, Assembler, ChangelogState,
    DEFAULT_MAX_CHUNK_BYTES,
};
use crate::state::StateError;

/// Records published before waiting for their deliveries (librdkafka's local queue holds
/// 100k messages by default; staying well under it avoids `QueueFull`).
const PUBLISH_WINDOW: usize = 5_000;
/// Value bytes published before waiting for their deliveries: a snapshot is streamed to the
/// changelog a window at a time, so the records built for it and librdkafka's copies of
/// them hold at most this much, not the whole snapshot (tens of MB per partition at a
/// million sensors: the memory budget's fixed overhead, BENCHMARKS.md).
pub const PUBLISH_WINDOW_BYTES: usize = 4 << 20;
/// Group id of the changelog's readers (required by librdkafka; never joined).
const READER_GROUP: &str = "onad-stream-changelog-reader";

/// Publishes snapshots to, and restores them from, the changelog topic.
pub struct Changelog {
    /// Connection settings (for the admin client that creates the topic).
    kafka: KafkaConfig,
    /// Idempotent producer for chunks and markers.
    producer: FutureProducer,
    /// Settings for the short-lived restore consumers.
    consumer_config: ClientConfig,
    /// The changelog topic.
    topic: String,
    /// See [`DEFAULT_MAX_CHUNK_BYTES`].
    max_chunk_bytes: usize,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changelog").field("topic", &self.topic).finish()
    }
}

/// What a publish wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Records, marker included.
    pub records: usize,
    /// Value bytes.
    pub bytes: usize,
}

impl Changelog {
    /// A changelog on `topic`, reached with the connection settings of `k` (bootstrap and
    /// any passthrough security settings).
    pub fn new(k: &KafkaConfig, topic: &str) -> Result<Self, StateError> {
        let err = |e: KafkaError| StateError::Changelog { topic: topic.into(), partition: -1, reason: e.to_string() };
        let producer: FutureProducer = super::client::producer(k).create().map_err(err)?;
        let consumer_config = super::client::reader(k, READER_GROUP);
        Ok(Self { kafka: k.clone(), producer, consumer_config, topic: topic.into(), max_chunk_bytes: DEFAULT_MAX_CHUNK_BYTES })
    }

    /// Use a smaller record limit (tests of chunking).
    pub fn with_max_chunk_bytes(mut self, bytes: usize) -> Self {
        self.max_chunk_bytes = bytes.max(1);
        self
    }

    /// Create the compacted changelog topic with `partitions` partitions if it is missing.
    pub async fn ensure_topic(&self, partitions: i32) -> Result<(), StateError> {
        super::admin::ensure_changelog(&self.kafka, &self.topic, partitions.max(0) as usize).await.map_err(|e| StateError::Changelog {
            topic: self.topic.clone(),
            partition: -1,
            reason: e.to_string(),
        })
    }

    /// Publish a snapshot of `partition` at `offset` (at least every key changed since the
    /// previous publish), marker last; returns once every record is acknowledged.
    pub async fn publish<'a, K, T, I>(&self, partition: i32, offset: i64, models: I) -> Result<Published, StateError>
    where
        K: AsRef<str>,
        T: Serialize + 'a,
        I: IntoIterator<Item = (K, &'a T)>,
    {
        let records = encode_snapshot(partition, offset, models, self.max_chunk_bytes)?;
        let (count, bytes) = (records.len(), records.iter().map(|(_, v)| v.len()).sum());
        self.send(partition, records.iter().map(|(k, v)| (k.as_str(), Some(v.as_slice())))).await?;
        Ok(Published { records: count, bytes })
    }

    /// As [`Changelog::publish`], with models already in their envelopes.
    pub async fn publish_encoded(&self, partition: i32, offset: i64, models: Vec<(String, Vec<u8>)>) -> Result<Published, StateError> {
        self.publish_stream(partition, offset, models.into_iter().map(Ok)).await
    }

    /// As [`Changelog::publish_encoded`], taking the models as they come (from memory or read
    /// from the store page by page): the records are built and sent a window of at most
    /// [`PUBLISH_WINDOW_BYTES`] at a time, marker last, so a publish holds one window.
    pub async fn publish_stream<I>(&self, partition: i32, offset: i64, models: I) -> Result<Published, StateError>
    where
        I: IntoIterator<Item = Result<(String, Vec<u8>), StateError>>,
    {
        let (mut window, mut window_bytes) = (Vec::new(), 0usize);
        let (mut keys, mut published) = (0u64, Published { records: 0, bytes: 0 });
        for entry in models {
            let (key, bytes) = entry?;
            let before = window.len();
            encode_model(partition, offset, &key, &bytes, self.max_chunk_bytes, &mut window)?;
            window_bytes += window[before..].iter().map(|(_, v)| v.len()).sum::<usize>();
            keys += 1;
            if window.len() >= PUBLISH_WINDOW || window_bytes >= PUBLISH_WINDOW_BYTES {
                self.send_window(partition, &mut window, &mut published).await?;
                window_bytes = 0;
            }
        }
        window.push(snapshot_marker(partition, offset, keys)?);
        self.send_window(partition, &mut window, &mut published).await?;
        Ok(published)
    }

    /// Send and empty `window`, counting it in `published`.
    async fn send_window(&self, partition: i32, window: &mut Vec<(String, Vec<u8>)>, published: &mut Published) -> Result<(), StateError> {
        self.send(partition, window.iter().map(|(k, v)| (k.as_str(), Some(v.as_slice())))).await?;
        published.records += window.len();
        published.bytes += window.iter().map(|(_, v)| v.len()).sum::<usize>();
        window.clear();
        Ok(())
    }

    /// Make the changelog of `partition` say exactly `models` at `offset` (`replay`: state
    /// rewound, relabelled or reset): publish them, then delete (tombstone) every other key
    /// the changelog holds for the partition.
    pub async fn replace(
        &self,
        partition: i32,
        offset: i64,
        models: Vec<(String, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<Published, StateError> {
        let records = encode_encoded(partition, offset, models.into_iter().map(Ok), self.max_chunk_bytes)?;
        let keep: std::collections::HashSet<String> = records.iter().map(|(k, _)| k.clone()).collect();
        let keys_now = self.record_keys(partition, timeout).await?;
        let mut all: Vec<(String, Option<Vec<u8>>)> = keys_now.into_iter().filter(|k| !keep.contains(k)).map(|k| (k, None)).collect();
        let (count, bytes) = (records.len() + all.len(), records.iter().map(|(_, v)| v.len()).sum());
        // Tombstones first, then the models, marker last (an empty set still gets its marker:
        // "at `offset` the partition has no models", i.e. a reset).
        all.extend(records.into_iter().map(|(k, v)| (k, Some(v))));
        self.send(partition, all.iter().map(|(k, v)| (k.as_str(), v.as_deref()))).await?;
        Ok(Published { records: count, bytes })
    }

    /// Record the replay epoch of `partition` (after [`Changelog::replace`]).
    pub async fn publish_epoch(&self, partition: i32, epoch: u32) -> Result<(), StateError> {
        let (key, value) = epoch_record(partition, epoch)?;
        self.send(partition, [(key.as_str(), Some(value.as_slice()))]).await
    }

    /// The record keys currently live (not deleted) in `partition`.
    async fn record_keys(&self, partition: i32, timeout: Duration) -> Result<Vec<String>, StateError> {
        let nonce = nonce();
        self.send_end_marker(partition, nonce).await?;
        let (config, topic) = (self.consumer_config.clone(), self.topic.clone());
        let asm = tokio::task::spawn_blocking(move || read_to_marker_raw(&config, &topic, partition, nonce, timeout))
            .await
            .map_err(|e| StateError::Changelog { topic: self.topic.clone(), partition, reason: format!("reader task: {e}") })??;
        Ok(asm.live_keys())
    }

    async fn send_end_marker(&self, partition: i32, nonce: u64) -> Result<(), StateError> {
        let (key, value) = end_marker(partition, nonce)?;
        self.send(partition, [(key.as_str(), Some(value.as_slice()))]).await
    }

    /// Produce `records` (a `None` value is a tombstone) to `partition`, in order, and wait
    /// for every delivery. At most [`PUBLISH_WINDOW`] records or [`PUBLISH_WINDOW_BYTES`]
    /// wait at once (librdkafka copies each value into its queue).
    async fn send<'r>(&self, partition: i32, records: impl IntoIterator<Item = (&'r str, Option<&'r [u8]>)>) -> Result<(), StateError> {
        let err = |reason: String| StateError::Changelog { topic: self.topic.clone(), partition, reason };
        // The idempotent producer keeps per-partition order, so the marker lands after its
        // chunks.
        let (mut pending, mut bytes) = (Vec::new(), 0usize);
        for (k, v) in records {
            let mut rec = FutureRecord::<str, [u8]>::to(&self.topic).partition(partition).key(k);
            if let Some(v) = v {
                rec = rec.payload(v);
                bytes += v.len();
            }
            pending.push(self.producer.send_result(rec).map_err(|(e, _)| err(format!("enqueue: {e}")))?);
            if pending.len() >= PUBLISH_WINDOW || bytes >= PUBLISH_WINDOW_BYTES {
                Self::delivered(std::mem::take(&mut pending), &err).await?;
                bytes = 0;
            }
        }
        Self::delivered(pending, &err).await
    }

    /// Wait for every delivery of `pending`.
    async fn delivered(pending: Vec<rdkafka::producer::DeliveryFuture>, err: &impl Fn(String) -> StateError) -> Result<(), StateError> {
        for f in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(err(format!("delivery: {e}"))),
                Err(_) => return Err(err("producer dropped the delivery".into())),
            }
        }
        Ok(())
    }

    /// Read `partition` of the changelog from the beginning and assemble its latest state.
    /// Appends an end marker first and reads up to it, so the end is known exactly; fails
    /// if the marker is not read back within `timeout`.
    pub async fn restore<T: DeserializeOwned + Send + 'static>(
        &self,
        partition: i32,
        timeout: Duration,
    ) -> Result<ChangelogState<T>, StateError> {
        let nonce = nonce();
        self.send_end_marker(partition, nonce).await?;
        let (config, topic) = (self.consumer_config.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || read_to_marker(&config, &topic, partition, nonce, timeout))
            .await
            .map_err(|e| StateError::Changelog { topic: self.topic.clone(), partition, reason: format!("reader task: {e}") })?
    }
}

/// A nonce that differs between readers (time and process id; it only has to be unique
/// among concurrent readers of one partition, not unpredictable).
fn nonce() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    crate::detect::pipeline::fnv1a(&[t.to_le_bytes(), u64::from(std::process::id()).to_le_bytes()].concat()) | 1
}

/// Blocking read of one changelog partition from the beginning up to the end marker `nonce`.
fn read_to_marker<T: DeserializeOwned>(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    nonce: u64,
    timeout: Duration,
) -> Result<ChangelogState<T>, StateError> {
    Ok(read_to_marker_raw(config, topic, partition, nonce, timeout)?.finish())
}

/// As [`read_to_marker`], without decoding.
fn read_to_marker_raw(config: &ClientConfig, topic: &str, partition: i32, nonce: u64, timeout: Duration) -> Result<Assembler, StateError> {
    let err = |reason: String| StateError::Changelog { topic: topic.into(), partition, reason };
    let consumer: BaseConsumer = config.create().map_err(|e| err(e.to_string()))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning).map_err(|e| err(e.to_string()))?;
    consumer.assign(&tpl).map_err(|e| err(e.to_string()))?;
    let mut asm = Assembler::new(topic, partition);
    let deadline = Instant::now() + timeout;
    let mut read = 0u64;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(e)) => return Err(err(format!("read: {e}"))),
            Some(Ok(m)) => {
                read += 1;
                let key = m.key().unwrap_or_default();
                if asm.feed(key, m.payload()) == Some(nonce) {
                    return Ok(asm);
                }
            }
        }
    }
    Err(err(format!("end marker not read back within {timeout:?} ({read} records read)")))
}
