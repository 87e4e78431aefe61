//! The one place that touches offsets: per partition, the input offsets whose outputs are in
//! flight, stored (for the next commit) strictly in order and only once every output of that
//! record and of every record before it is delivered; the group's committed offsets read on
//! assignment; and `replay`'s explicit reset of a stopped group's offsets.
//!
//! Generic over the consumer's context, so that it depends on no other part of the worker.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

pub use crate::error::DeliveryError;

/// One input record whose outputs are not all delivered yet.
struct Pending {
    /// Input offset.
    offset: i64,
    /// Outputs of it not yet reported delivered.
    remaining: u32,
}

/// How long [`Acks::advance`] may block.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Take what is already delivered.
    Never,
    /// Block until at most this many records are in flight.
    Below(usize),
}

/// How often a blocked [`Acks::advance`] looks again without a report (a report wakes it at
/// once; this only bounds a missed wake-up).
const REPORT_WAIT: Duration = Duration::from_millis(50);

/// The delivery reports of one partition task's outputs, written by the producer's delivery
/// callback (librdkafka's poll thread) and read by the task's [`Acks`]. One per task, never
/// shared with a later task of the same partition: reports of a fenced task's purged outputs
/// land on its own board, which nobody reads any more.
///
/// It replaces a `DeliveryFuture` per output (a boxed oneshot channel each): a report is the
/// input offset pushed onto a vector that the task swaps out, so a delivery allocates nothing.
#[derive(Default)]
pub struct DeliveryBoard {
    /// Reports not yet taken by the task.
    reports: Mutex<Reports>,
    /// Signalled on every report, for a task blocked in [`Acks::advance`].
    wake: Condvar,
}

/// Reports not yet taken.
#[derive(Default)]
struct Reports {
    /// Input offsets of outputs delivered (one entry per output).
    delivered: Vec<i64>,
    /// Input offsets of outputs whose delivery failed (one entry per output).
    failed: Vec<i64>,
    /// The first failed delivery.
    first_failure: Option<Failure>,
    /// The task is blocked waiting for a report: the next report wakes it (and clears this).
    /// Without it every report paid a futex wake-up syscall for a task that was not waiting
    /// (perf: ~4% of the worker's samples in the delivery-report thread).
    waiting: bool,
}

/// A failed delivery as the delivery callback saw it.
#[derive(Clone)]
struct Failure {
    /// Input offset.
    offset: i64,
    /// Producer's error.
    reason: String,
    /// See [`DeliveryError::undelivered`].
    undelivered: bool,
    /// See [`DeliveryError::producer_spent`].
    producer_spent: bool,
}

impl DeliveryBoard {
    fn lock(&self) -> MutexGuard<'_, Reports> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
        self.reports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An output of input `offset` was delivered.
    pub fn delivered(&self, offset: i64) {
        let mut r = self.lock();
        r.delivered.push(offset);
        // One wake-up per wait: the task takes every report on the board when it wakes.
        let wake = std::mem::take(&mut r.waiting);
        drop(r);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Block the calling task (at most [`REPORT_WAIT`]) until the next report, unless
    /// `ready` says the reports on the board are enough already.
    fn wait<'a>(&'a self, mut r: MutexGuard<'a, Reports>, ready: impl Fn(&Reports) -> bool) -> MutexGuard<'a, Reports> {
        if ready(&r) {
            return r;
        }
        r.waiting = true;
        let mut r = self.wake.wait_timeout(r, REPORT_WAIT).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        r.waiting = false;
        r
    }

    /// An output of input `offset` could not be delivered because of `error` (`None`: no
    /// error code, e.g. a report that cannot be matched); the first failure is kept.
    pub fn failed(&self, offset: i64, error: Option<&KafkaError>, reason: String) {
        let mut r = self.lock();
        r.failed.push(offset);
        r.first_failure.get_or_insert(Failure {
            offset,
            reason,
            undelivered: error.is_some_and(undelivered),
            producer_spent: error.is_some_and(producer_spent),
        });
        drop(r);
        self.wake.notify_one();
    }
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
    /// Where this task's delivery reports arrive.
    board: Arc<DeliveryBoard>,
    /// Reports taken from the board (kept to reuse its capacity).
    taken: Vec<i64>,
    /// Outputs pushed and not yet reported delivered.
    outstanding: u64,
}

impl Acks {
    /// Nothing in flight for `topic`/`partition`.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
            pending: VecDeque::new(),
            stored: None,
            board: Arc::default(),
            taken: Vec::new(),
            outstanding: 0,
        }
    }

    /// The board the producer reports this task's deliveries to.
    pub fn board(&self) -> &Arc<DeliveryBoard> {
        &self.board
    }

    /// Records in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The last input offset stored for commit (all its outputs and all earlier ones delivered).
    pub fn stored(&self) -> Option<i64> {
        self.stored
    }

    /// Track `outputs` outputs of input `offset`, each reported to [`Acks::board`] (offsets
    /// must be pushed in increasing order; 0 outputs: retired at the next advance).
    pub fn push(&mut self, offset: i64, outputs: u32) {
        self.pending.push_back(Pending { offset, remaining: outputs });
        self.outstanding += u64::from(outputs);
    }

    /// Apply the reports on the board to the pending records; a failed delivery is an error.
    /// With `block`, first waits (bounded) for a report when the oldest record is not done.
    fn take_reports(&mut self, block: bool) -> Result<(), DeliveryError> {
        {
            let mut r = self.board.lock();
            if block {
                r = self.board.wait(r, |r| !r.delivered.is_empty() || r.first_failure.is_some());
            }
            if let Some(f) = r.first_failure.clone() {
                return Err(DeliveryError {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    offset: f.offset,
                    reason: f.reason,
                    undelivered: f.undelivered,
                    producer_spent: f.producer_spent,
                });
            }
            std::mem::swap(&mut r.delivered, &mut self.taken);
        }
        for &offset in &self.taken {
            // Offsets are pushed in increasing order, so the pending records are sorted.
            match self.pending.binary_search_by_key(&offset, |p| p.offset) {
                Ok(i) if self.pending[i].remaining > 0 => {
                    self.pending[i].remaining -= 1;
                    self.outstanding -= 1;
                }
                Ok(_) => tracing::warn!(topic = %self.topic, partition = self.partition, offset, "more delivery reports than outputs"),
                // A report for no pending record would be a bug in this module; storing an
                // offset past an undelivered output is the one thing it must never cause, and
                // ignoring a stray report cannot.
                Err(_) => tracing::warn!(topic = %self.topic, partition = self.partition, offset, "delivery report for no pending record"),
            }
        }
        self.taken.clear();
        Ok(())
    }

    /// Retire the leading records whose outputs are all delivered and store the last one's
    /// offset. With [`Wait::Below`], blocks the calling thread on deliveries first.
    /// Returns the number of records retired.
    pub fn advance<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, wait: Wait) -> Result<usize, DeliveryError> {
        let mut last = None;
        let mut retired = 0;
        self.take_reports(false)?;
        loop {
            let in_flight = self.pending.len();
            let Some(front) = self.pending.front() else { break };
            if front.remaining > 0 {
                if matches!(wait, Wait::Below(n) if in_flight > n) {
                    self.take_reports(true)?;
                    continue;
                }
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

    /// Wait (at most `limit`) until every output pushed so far is reported delivered, without
    /// retiring anything: a transaction's outputs before its commit. Returns whether they are.
    pub fn await_delivered(&mut self, limit: Duration) -> Result<bool, DeliveryError> {
        self.await_at_most(0, limit)
    }

    /// Wait (at most `limit`) until at most `n` outputs pushed so far are not reported
    /// delivered: `n` = the outputs pushed but held, not yet sent (`super::held`). Returns
    /// whether that is so.
    pub fn await_at_most(&mut self, n: u64, limit: Duration) -> Result<bool, DeliveryError> {
        let deadline = std::time::Instant::now() + limit;
        self.take_reports(false)?;
        while self.outstanding > n {
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            self.take_reports(true)?;
        }
        Ok(true)
    }

    /// Wait until every output in flight has a delivery result (each gets one within
    /// `message.timeout.ms`; a report-less stretch of [`SETTLE_SILENCE`] ends the wait), then
    /// forget them all, delivered or not: the partition is about to be re-read or given up,
    /// and nothing more is stored.
    pub fn settle(&mut self) {
        let mut outstanding: u64 = self.pending.iter().map(|p| u64::from(p.remaining)).sum();
        let mut last_report = std::time::Instant::now();
        while outstanding > 0 && last_report.elapsed() < SETTLE_SILENCE {
            let mut r = self.board.wait(self.board.lock(), |r| !r.delivered.is_empty() || !r.failed.is_empty());
            let n = (r.delivered.len() + r.failed.len()) as u64;
            r.delivered.clear();
            r.failed.clear();
            drop(r);
            if n > 0 {
                outstanding = outstanding.saturating_sub(n);
                last_report = std::time::Instant::now();
            }
        }
        self.pending.clear();
        self.outstanding = 0;
    }

    /// Forget every record in flight without waiting for its outputs: their producer is
    /// about to be fenced (a transactional partition starting over or given up).
    pub fn forget(&mut self) {
        self.pending.clear();
        self.outstanding = 0;
    }
}

/// The longest [`Acks::settle`] waits without any delivery report: well past the output
/// producer's `message.timeout.ms` (below the session timeout, see `client::zombie_fence`).
const SETTLE_SILENCE: Duration = Duration::from_secs(120);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awaiting_a_transactions_outputs_waits_for_each_report_and_retires_nothing() {
        let mut acks = Acks::new("in", 0);
        acks.push(5, 2);
        acks.push(6, 0);
        acks.push(7, 1);
        assert!(!acks.await_delivered(Duration::from_millis(20)).expect("no failure"), "nothing was reported yet");
        let board = acks.board().clone();
        let reporter = std::thread::spawn(move || {
            board.delivered(5);
            board.delivered(7);
            std::thread::sleep(Duration::from_millis(30));
            board.delivered(5);
        });
        assert!(acks.await_delivered(Duration::from_secs(10)).expect("no failure"), "all three outputs were reported");
        reporter.join().expect("reporter");
        // Offsets wait for the commit: nothing is retired or stored by the wait.
        assert_eq!((acks.in_flight(), acks.stored()), (3, None));
    }

    #[test]
    fn the_round_gate_waits_only_for_the_outputs_already_sent() {
        let mut acks = Acks::new("in", 0);
        acks.push(1, 2); // sent in the previous round
        acks.push(2, 1); // held: not sent yet, so never reported before its release
        assert!(!acks.await_at_most(1, Duration::from_millis(20)).expect("no failure"), "the previous round is not delivered");
        acks.board().delivered(1);
        assert!(!acks.await_at_most(1, Duration::from_millis(20)).expect("no failure"), "one output of the previous round is left");
        acks.board().delivered(1);
        assert!(acks.await_at_most(1, Duration::from_millis(20)).expect("no failure"), "only the held output is left");
        assert!(!acks.await_delivered(Duration::from_millis(20)).expect("no failure"), "the held output is not delivered");
    }

    #[test]
    fn a_failed_output_ends_the_wait_with_its_error() {
        let mut acks = Acks::new("in", 0);
        acks.push(9, 1);
        acks.board().failed(9, None, "refused".into());
        let e = acks.await_delivered(Duration::from_secs(10)).expect_err("the failure");
        assert_eq!((e.offset, e.reason.as_str()), (9, "refused"));
    }
}
