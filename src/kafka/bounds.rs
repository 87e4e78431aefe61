//! What a partition really holds, read from the log: its true end (the offset after its last
//! record) and the record at a given offset.
//!
//! The broker's high watermark is not enough: Tansu reports the first offset of the last
//! stored batch + 1 (design.md, Brokers), so the end is found by reading from just below the
//! watermark until nothing more arrives. On Apache Kafka this reads at most one record.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::partition::replay_plan::Bounds;

/// Group id of the bounds reader (required by librdkafka; never joined).
const READER_GROUP: &str = "onad-stream-tail-reader";

/// The settings of the reader the functions below take: [`super::client::reader`]'s.
pub fn reader(k: &KafkaConfig) -> ClientConfig {
    super::client::reader(k, READER_GROUP)
}

/// Watermark requests.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// Reading stops once nothing has arrived for this long (the partitions are read to their end).
const IDLE: Duration = Duration::from_millis(1_000);
/// Hard bound on one read (a partition still being written keeps delivering records).
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Read partitions of `topic` from the given offsets until idle (or the hard bound) and call
/// `seen(partition, offset, timestamp)` for every record; `done` ends the read early.
fn read_from(
    config: &ClientConfig,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    mut seen: impl FnMut(i32, i64, Option<i64>),
    done: impl Fn() -> bool,
) -> Result<(), KafkaError> {
    if from.is_empty() {
        return Ok(());
    }
    let consumer: BaseConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in from {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut last = Instant::now();
    while started.elapsed() < READ_TIMEOUT && last.elapsed() < IDLE && !done() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(m)) => {
                last = Instant::now();
                seen(m.partition(), m.offset(), m.timestamp().to_millis());
            }
        }
    }
    Ok(())
}

/// The true bounds of `partitions` of `topic` (start: the log start; end: one past the last
/// record), read with a consumer made from `config` (a tail reader's settings).
pub fn bounds(config: &ClientConfig, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, Bounds>, KafkaError> {
    let consumer: BaseConsumer = config.create()?;
    let mut out = BTreeMap::new();
    let mut from = BTreeMap::new();
    for &p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, WATERMARK_TIMEOUT)?;
        out.insert(p, Bounds { start: low, end: high.max(low) });
        if high > low {
            from.insert(p, high - 1);
        }
    }
    read_from(
        config,
        topic,
        &from,
        |p, o, _| {
            if let Some(b) = out.get_mut(&p) {
                b.end = b.end.max(o + 1);
            }
        },
        || false,
    )?;
    Ok(out)
}

/// The record at each requested offset: `Some(timestamp)` (ms; `None` inside when the record
/// has none) where there is a record at exactly that offset, absent where there is not.
pub fn timestamps_at(config: &ClientConfig, topic: &str, at: &BTreeMap<i32, i64>) -> Result<BTreeMap<i32, Option<i64>>, KafkaError> {
    let found = std::cell::RefCell::new(BTreeMap::new());
    read_from(
        config,
        topic,
        at,
        |p, o, ts| {
            if at.get(&p) == Some(&o) {
                found.borrow_mut().entry(p).or_insert(ts);
            }
        },
        || found.borrow().len() == at.len(),
    )?;
    Ok(found.into_inner())
}

/// The assignment-time guard against a group parked past the end of its partition (e.g. an
/// offset reset beyond the last record): of `committed` (partition -> the group's next
/// offset), the partitions whose committed offset lies beyond their last record, with the
/// partition's true end. Only partitions committed above the high watermark are read, so a
/// normal assignment costs one watermark request per partition.
pub fn past_end(config: &ClientConfig, topic: &str, committed: &BTreeMap<i32, Option<i64>>) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let consumer: BaseConsumer = config.create()?;
    let mut suspect = Vec::new();
    for (&p, c) in committed {
        let Some(c) = *c else { continue };
        let (_, high) = consumer.fetch_watermarks(topic, p, WATERMARK_TIMEOUT)?;
        if c > high {
            suspect.push(p);
        }
    }
    let ends = bounds(config, topic, &suspect)?;
    Ok(ends.into_iter().filter_map(|(p, b)| committed.get(&p).copied().flatten().filter(|c| *c > b.end).map(|_| (p, b.end))).collect())
}
