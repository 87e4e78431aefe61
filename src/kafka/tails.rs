//! Reading the ends of a partition's output partitions (and of its changelog partition), to
//! find what was already emitted in each replay epoch: the facts behind
//! [`crate::partition::resume`].
//!
//! Outputs carry their source partition, offset and replay epoch in headers
//! (`partition::output`); the changelog's tail carries the partition's replay epoch record
//! (`state::changelog`). The tail is read until nothing arrives for [`TAIL_IDLE`]: this
//! worker now owns the partition, so nothing else should be writing to it, and Tansu's high
//! watermark is not the true end (design.md).

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::partition::output::{HEADER_REPLAY_EPOCH, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use crate::partition::resume::Tails;
use crate::state::changelog::{decode_epoch, epoch_key};

/// Records read back from the end of an output partition to find the last source offset.
const TAIL_RECORDS: i64 = 2_000;
/// The tail is read until nothing arrives for this long.
const TAIL_IDLE: Duration = Duration::from_millis(1_000);
/// Hard bound on reading a tail.
const TAIL_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the watermark requests.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(10);
/// Group id of the tail readers (required by librdkafka; never joined).
const READER_GROUP: &str = "onad-stream-tail-reader";

/// Reads the tails of the output and changelog partitions of a configuration.
#[derive(Clone)]
pub struct TailReader {
    /// Reader settings.
    config: ClientConfig,
    /// Scores, alerts and dead-letter topics, in [`Tails::outputs`] order.
    outputs: [String; 3],
    /// The changelog topic (its tail holds the replay epoch).
    changelog: String,
}

impl std::fmt::Debug for TailReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailReader").field("outputs", &self.outputs).field("changelog", &self.changelog).finish()
    }
}

impl TailReader {
    /// A reader of the output and changelog topics of `k`.
    pub fn new(k: &KafkaConfig) -> Self {
        Self {
            config: super::client::reader(k, READER_GROUP),
            outputs: [k.scores_topic.clone(), k.alerts_topic.clone(), k.dead_letter_topic.clone()],
            changelog: k.changelog_topic.clone(),
        }
    }

    /// Read the last records of partition `partition` of each output topic (the
    /// source-offset header per replay epoch, a missing epoch header being 0) and of the
    /// changelog (its replay epoch record). Blocking.
    pub fn read(&self, partition: i32) -> Result<Tails, String> {
        let consumer: BaseConsumer = self.config.create().map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for t in self.outputs.iter().chain([&self.changelog]) {
            let (low, high) =
                consumer.fetch_watermarks(t, partition, WATERMARKS_TIMEOUT).map_err(|e| format!("{t}[{partition}] watermarks: {e}"))?;
            if high <= low {
                continue;
            }
            // High may be the first offset of the last batch + 1 (Tansu), so read on to the end.
            tpl.add_partition_offset(t, partition, Offset::Offset((high - TAIL_RECORDS).max(low))).map_err(|e| e.to_string())?;
        }
        let mut tails = Tails::default();
        if tpl.count() == 0 {
            return Ok(tails);
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let epoch_key = epoch_key(partition);
        let started = Instant::now();
        let mut last_record = Instant::now();
        while started.elapsed() < TAIL_TIMEOUT && last_record.elapsed() < TAIL_IDLE {
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => return Err(format!("reading output tails: {e}")),
                Some(Ok(m)) => {
                    last_record = Instant::now();
                    if m.topic() == self.changelog {
                        if m.key() == Some(epoch_key.as_bytes()) {
                            match m.payload().map(decode_epoch) {
                                Some(Ok(e)) => tails.changelog_epoch = Some(e),
                                Some(Err(e)) => tracing::warn!(partition, cause = %e, "unreadable replay epoch record in the changelog"),
                                None => {}
                            }
                        }
                        continue;
                    }
                    let Some(i) = self.outputs.iter().position(|t| t == m.topic()) else { continue };
                    let Some(headers) = m.headers() else { continue };
                    let (mut p, mut o, mut epoch) = (None, None, 0);
                    for h in headers.iter() {
                        let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
                        match h.key {
                            HEADER_SOURCE_PARTITION => p = v.and_then(|v| v.parse::<i32>().ok()),
                            HEADER_SOURCE_OFFSET => o = v.and_then(|v| v.parse::<i64>().ok()),
                            HEADER_REPLAY_EPOCH => epoch = v.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0),
                            _ => {}
                        }
                    }
                    if let (Some(p), Some(o)) = (p, o) {
                        if p == partition {
                            let h = tails.outputs[i].entry(epoch).or_insert(o);
                            *h = (*h).max(o);
                        }
                    }
                }
            }
        }
        if started.elapsed() >= TAIL_TIMEOUT {
            return Err(format!("output tails still moving after {TAIL_TIMEOUT:?} (another writer?)"));
        }
        Ok(tails)
    }
}
