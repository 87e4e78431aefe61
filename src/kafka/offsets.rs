//! The one place that touches offsets: per partition, the input offsets whose outputs are in
//! flight, stored (for the next commit) strictly in order and only once every output of that
//! record and of every record before it is delivered; the group's committed offsets read on
//! assignment; and `replay`'s explicit reset of a stopped group's offsets.
//!
//! Generic over the consumer's context, so that it depends on no other part of the worker.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::DeliveryFuture;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

pub use crate::error::DeliveryError;

/// One input record whose outputs are not all delivered yet.
struct Pending {
    /// Input offset.
    offset: i64,
    /// Outstanding deliveries (removed as they complete).
    deliveries: Vec<DeliveryFuture>,
}

/// How long [`Acks::advance`] may block.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Take what is already delivered.
    Never,
    /// Block until at most this many records are in flight.
    Below(usize),
}

/// In-order acknowledgement of one partition's input offsets.
pub struct Acks {
    /// Input topic.
    topic: String,
    /// Input partition.
    partition: i32,
    /// Records in flight, in input order.
    pending: VecDeque<Pending>,
    /// Last input offset stored for commit.
    stored: Option<i64>,
}

impl Acks {
    /// Nothing in flight for `topic`/`partition`.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self { topic: topic.to_string(), partition, pending: VecDeque::new(), stored: None }
    }

    /// Records in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The last input offset stored for commit (all its outputs and all earlier ones delivered).
    pub fn stored(&self) -> Option<i64> {
        self.stored
    }

    /// Track the outputs of input `offset` (offsets must be pushed in increasing order).
    pub fn push(&mut self, offset: i64, deliveries: Vec<DeliveryFuture>) {
        self.pending.push_back(Pending { offset, deliveries });
    }

    /// Retire the leading records whose outputs are all delivered and store the last one's
    /// offset. With [`Wait::Below`], blocks the calling thread on deliveries first.
    /// Returns the number of records retired.
    pub fn advance<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, wait: Wait) -> Result<usize, DeliveryError> {
        let mut last = None;
        let mut retired = 0;
        let (topic, partition) = (&self.topic, self.partition);
        let failed = |offset: i64, e: Option<&KafkaError>| DeliveryError {
            topic: topic.clone(),
            partition,
            offset,
            reason: e.map_or_else(|| "producer shut down before delivery".into(), |e| e.to_string()),
            undelivered: e.is_some_and(undelivered),
            producer_spent: e.is_some_and(producer_spent),
        };
        loop {
            let in_flight = self.pending.len();
            let Some(front) = self.pending.front_mut() else { break };
            let block = matches!(wait, Wait::Below(n) if in_flight > n);
            let mut ready = true;
            while let Some(d) = front.deliveries.last_mut() {
                let result = if block { Some(futures::executor::block_on(d)) } else { d.now_or_never() };
                match result {
                    None => {
                        ready = false;
                        break;
                    }
                    Some(Ok(Ok(_))) => {
                        front.deliveries.pop();
                    }
                    Some(Ok(Err((e, _)))) => return Err(failed(front.offset, Some(&e))),
                    Some(Err(_)) => return Err(failed(front.offset, None)),
                }
            }
            if !ready {
                break;
            }
            last = Some(front.offset);
            self.pending.pop_front();
            retired += 1;
        }
        if let Some(offset) = last {
            // Stores offset + 1 (the next record to read), librdkafka's convention.
            match consumer.store_offset(&self.topic, self.partition, offset) {
                Ok(()) => self.stored = Some(offset),
                // The partition was lost to another member: its commit is no longer ours.
                Err(e) => tracing::warn!(topic = %self.topic, partition = self.partition, offset, cause = %e, "offset not stored"),
            }
        }
        Ok(retired)
    }

    /// Wait until every output in flight has a delivery result (each gets one within
    /// `message.timeout.ms`), then forget them all, delivered or not: the partition is about
    /// to be re-read or given up, and nothing more is stored.
    pub fn settle(&mut self) {
        for p in self.pending.drain(..) {
            for d in p.deliveries {
                let _ = futures::executor::block_on(d);
            }
        }
    }
}

/// Whether a delivery failed because the output was never acknowledged in time or was purged
/// unsent (zombie fencing, a broker outage), as opposed to refused by the broker.
fn undelivered(e: &KafkaError) -> bool {
    producer_spent(e) || matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight))
}

/// Whether a delivery failure leaves the idempotent producer needing a new producer id: a
/// timeout makes librdkafka bump its epoch locally, which Tansu answers with `ProducerFenced`.
fn producer_spent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

/// Commit the stored offsets of the current assignment now (revoke, shutdown).
pub fn commit_stored<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::debug!("stored offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(cause = %e, "commit of stored offsets failed; they will be re-read"),
    }
}

/// How long the assign callback waits for the group's committed offsets.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

/// The group's committed offset (next record to read) of each of `partitions`; `None` where
/// the group has none or the broker did not answer.
pub fn committed<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partitions: &[i32]) -> BTreeMap<i32, Option<i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let mut out: BTreeMap<i32, Option<i64>> = partitions.iter().map(|p| (*p, None)).collect();
    if partitions.is_empty() {
        return out;
    }
    match consumer.committed_offsets(tpl, COMMITTED_TIMEOUT) {
        Ok(got) => {
            for e in got.elements_for_topic(topic) {
                if let Offset::Offset(o) = e.offset() {
                    out.insert(e.partition(), Some(o));
                }
            }
        }
        Err(e) => tracing::warn!(cause = %e, "cannot read committed offsets"),
    }
    out
}

/// Make the assignment in `tpl` start `partition` at `offset` (instead of the committed one).
pub fn start_at(tpl: &mut TopicPartitionList, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
    tpl.set_partition_offset(topic, partition, Offset::Offset(offset))
}

/// The offset of the first record at or after `timestamp_ms` (ms since the epoch) in each of
/// `partitions` of `topic` (an `Offset::End` or `Offset::Invalid` where there is none). On
/// Tansu this searches the broker's append time, not the record's CreateTime (design.md).
pub fn offsets_for_time<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    timestamp_ms: i64,
    timeout: Duration,
) -> Result<BTreeMap<i32, Offset>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(timestamp_ms))?;
    }
    let found = consumer.offsets_for_times(tpl, timeout)?;
    Ok(found.elements().iter().map(|e| (e.partition(), e.offset())).collect())
}

/// Why a group's offsets could not be set.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The commit (or reading it back) failed.
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    /// The broker answered with another offset than the one committed.
    #[error("partition {partition}: committed offset reads back as {got:?}, not {want:?}")]
    ReadBack {
        /// Partition.
        partition: i32,
        /// What the broker says now.
        got: Offset,
        /// What was committed.
        want: Option<i64>,
    },
}

/// Commit `targets` (partition -> next offset to read) of `topic` as the group's offsets
/// (the consumer's `group.id`; its members must be stopped), and check them by reading them
/// back. Next-offset values, not record offsets: a hand-built commit list is not shifted.
pub fn reset_group<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    targets: &BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<(), ResetError> {
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in targets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    let committed = consumer.committed_offsets(tpl, timeout)?;
    for e in committed.elements() {
        let want = targets.get(&e.partition()).copied();
        if e.offset() != Offset::Offset(want.unwrap_or(-1)) {
            return Err(ResetError::ReadBack { partition: e.partition(), got: e.offset(), want });
        }
    }
    Ok(())
}
