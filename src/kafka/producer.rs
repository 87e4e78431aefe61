//! The output producer: copies outputs (held a round by [`super::held`]) onto the wire, to
//! the input record's partition number, with the source headers. Building the records is `partition::output`'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryFuture, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::types::RDKafkaErrorCode;

use super::offsets::DeliveryBoard;
use crate::config::KafkaConfig;
use crate::partition::output::{SourceHeaders, HEADER_SOURCE_OFFSET};
use crate::partition::{Dest, Source};

/// First pause before retrying when librdkafka's local queue is full (backpressure from the
/// broker); doubled on each retry up to [`QUEUE_FULL_BACKOFF_MAX`], so a broker that is away
/// costs no busy loop while one that is merely slow is followed closely.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);
/// Longest pause between retries of a full local queue.
const QUEUE_FULL_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Routes each output's delivery report to the board of the partition task that produced it.
pub struct OutputContext;

impl ClientContext for OutputContext {}

impl ProducerContext for OutputContext {
    /// The producing task's board; the input offset travels in the record's
    /// `onad-source-offset` header (set by [`OutputProducer::send`]), so a report needs no
    /// allocation of its own (a `FutureProducer` boxes a oneshot channel per record).
    type DeliveryOpaque = Arc<DeliveryBoard>;

    fn delivery(&self, result: &DeliveryResult<'_>, board: Arc<DeliveryBoard>) {
        let (message, error) = match result {
            Ok(m) => (m, None),
            Err((e, m)) => (m, Some(e)),
        };
        let offset = message.headers().and_then(source_offset);
        match (offset, error) {
            (Some(offset), None) => board.delivered(offset),
            (Some(offset), Some(e)) => board.failed(offset, Some(e), e.to_string()),
            // Every output carries the header: without it the report cannot be matched, and
            // the task must not store offsets past it.
            (None, e) => board.failed(-1, None, format!("delivery report without {HEADER_SOURCE_OFFSET} header ({e:?})")),
        }
    }
}

/// The input offset in an output's `onad-source-offset` header. [`OutputProducer::send`]
/// puts it at [`SOURCE_OFFSET_INDEX`], so that one is looked at first; the search by name is
/// a fallback that costs one header read per header before it (perf: looking every report's
/// headers up by name was ~3% of the worker's samples).
fn source_offset(headers: &BorrowedHeaders) -> Option<i64> {
    let header = match headers.try_get(SOURCE_OFFSET_INDEX) {
        Some(h) if h.key == HEADER_SOURCE_OFFSET => h,
        _ => headers.iter().find(|h| h.key == HEADER_SOURCE_OFFSET)?,
    };
    std::str::from_utf8(header.value?).ok()?.parse::<i64>().ok()
}

/// Where `onad-source-offset` is among an output's headers ([`SourceHeaders::pairs`]).
const SOURCE_OFFSET_INDEX: usize = 2;

/// `src`'s headers as librdkafka wants them (one list per record: the producer takes it).
fn owned_headers(headers: &SourceHeaders<'_>) -> OwnedHeaders {
    let mut owned = OwnedHeaders::new_with_capacity(4);
    for (key, value) in headers.pairs() {
        owned = owned.insert(Header { key, value: Some(value) });
    }
    owned
}

/// How long `init_transactions` may take (finding the coordinator, fencing the previous
/// owner and aborting its open transaction).
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest [`OutputProducer::commit`] waits for librdkafka to count delivered outputs done.
const REPORTS_DONE_WAIT: Duration = Duration::from_millis(20);

/// Where each partition's outputs go: the worker's one producer, or (`kafka.transactional_outputs`)
/// a transactional producer of the partition's own.
pub enum Outputs {
    /// One idempotent producer for every partition.
    Shared(Arc<OutputProducer>),
    /// A producer per input partition, created on assignment.
    PerPartition(Box<KafkaConfig>),
}

impl Outputs {
    /// The outputs of the worker configured by `k`.
    pub fn new(k: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(if k.transactional_outputs { Self::PerPartition(Box::new(k.clone())) } else { Self::Shared(Arc::new(OutputProducer::new(k)?)) })
    }

    /// The producer of input partition `partition`'s outputs. A transactional one is new and
    /// initialised: the partition's previous owner is fenced and its open transaction aborted
    /// (so call this before reading the output tails), and a transaction is open. Blocking.
    ///
    /// A transactional producer is made on a thread of its own. Measured: the OpenTelemetry
    /// spans a thread starts after it created and initialised one never reached the exporter
    /// (the restore spans of `tests/ops_otel.rs` went missing), and both callers (assignment,
    /// a partition thread starting over) go on to start spans.
    pub fn for_partition(&self, partition: i32) -> Result<Arc<OutputProducer>, KafkaError> {
        let k = match self {
            Self::Shared(p) => return Ok(p.clone()),
            Self::PerPartition(k) => k,
        };
        std::thread::scope(|s| {
            let made = std::thread::Builder::new()
                .name(format!("onad-txn-p{partition}"))
                .spawn_scoped(s, || OutputProducer::transactional(k, partition).map(Arc::new));
            match made {
                Ok(h) => h.join().unwrap_or_else(|_| Err(KafkaError::ClientCreation("output producer thread panicked".into()))),
                Err(e) => Err(KafkaError::ClientCreation(format!("output producer thread: {e}"))),
            }
        })
    }

    /// Whether outputs are produced in transactions.
    pub fn transactional(&self) -> bool {
        matches!(self, Self::PerPartition(_))
    }

    /// Wait for the shared producer's queued records (transactional producers are committed
    /// by their partition threads).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        match self {
            Self::Shared(p) => p.flush(timeout),
            Self::PerPartition(_) => Ok(()),
        }
    }
}

/// How a transaction call failed.
#[derive(Debug)]
pub enum TxnFailure {
    /// Try the same call again (it timed out, the broker is away).
    Retriable(KafkaError),
    /// Another producer initialised this partition's transactional id: its new owner.
    Fenced(KafkaError),
    /// The transaction cannot complete (an output failed, the producer is unusable).
    Failed(KafkaError),
}

impl TxnFailure {
    fn of(e: KafkaError) -> Self {
        use RDKafkaErrorCode as C;
        let (retriable, code) = match &e {
            KafkaError::Transaction(t) => (t.is_retriable(), Some(t.code())),
            other => (false, other.rdkafka_error_code()),
        };
        match code {
            Some(C::ProducerFenced | C::InvalidProducerEpoch | C::Fenced) => Self::Fenced(e),
            _ if retriable => Self::Retriable(e),
            _ => Self::Failed(e),
        }
    }

    /// The error.
    pub fn error(&self) -> &KafkaError {
        match self {
            Self::Retriable(e) | Self::Fenced(e) | Self::Failed(e) => e,
        }
    }
}

/// Produces the worker's outputs.
pub struct OutputProducer {
    /// The idempotent producer (its own thread serves delivery reports); replaced by
    /// [`OutputProducer::renew`] once a delivery timeout has spent its producer id.
    producer: RwLock<ThreadedProducer<OutputContext>>,
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
    /// The partition thread says when a round is complete ([`OutputProducer::send_now`]):
    /// a transactional producer with its own `linger.ms` ([`super::client::HELD_LINGER_MS`]).
    /// A `linger.ms` set in `[kafka.settings]` is honoured instead, as librdkafka honours it.
    told: bool,
}

impl OutputProducer {
    /// A producer for the topics of `k`.
    pub fn new(k: &KafkaConfig) -> Result<Self, KafkaError> {
        let config = super::client::output_producer(k);
        let producer = config.create_with_context(OutputContext)?;
        Ok(Self::with(k, config, producer, false))
    }

    /// `producer`, made from `config`, for the topics of `k`.
    fn with(k: &KafkaConfig, config: rdkafka::ClientConfig, producer: ThreadedProducer<OutputContext>, told: bool) -> Self {
        Self {
            told,
            producer: RwLock::new(producer),
            generation: AtomicU64::new(0),
            config,
            scores: k.scores_topic.clone(),
            alerts: k.alerts_topic.clone(),
            dead_letters: k.dead_letter_topic.clone(),
        }
    }

    /// A transactional producer of input partition `partition`'s outputs, initialised (which
    /// fences the partition's previous owner) with a transaction open.
    pub fn transactional(k: &KafkaConfig, partition: i32) -> Result<Self, KafkaError> {
        let config = super::client::transactional_output_producer(k, partition);
        let told = !super::client::lingers_as_set(k);
        Self::transactional_with(k, config, told)
    }

    /// [`OutputProducer::transactional`] with `config` (`told`: see the field).
    fn transactional_with(k: &KafkaConfig, config: rdkafka::ClientConfig, told: bool) -> Result<Self, KafkaError> {
        let producer: ThreadedProducer<OutputContext> = config.create_with_context(OutputContext)?;
        producer.init_transactions(INIT_TIMEOUT)?;
        producer.begin_transaction()?;
        Ok(Self::with(k, config, producer, told))
    }

    /// Commit the open transaction (at most `timeout`) and open the next one.
    ///
    /// Call once the transaction's outputs are reported delivered ([`OutputProducer::send_now`]
    /// first): rust-rdkafka's flush inside `commit_transaction` waits for deliveries in steps
    /// of ~100 ms (measured: every commit took 100 ms, the commit proper ~1.3 ms), so the few
    /// microseconds until librdkafka counts the last report done are waited here instead.
    pub fn commit(&self, timeout: Duration) -> Result<(), TxnFailure> {
        let p = self.current();
        let settled = std::time::Instant::now() + REPORTS_DONE_WAIT;
        while p.in_flight_count() > 0 && std::time::Instant::now() < settled {
            std::thread::sleep(Duration::from_micros(50));
        }
        p.commit_transaction(timeout).map_err(TxnFailure::of)?;
        p.begin_transaction().map_err(TxnFailure::of)
    }

    /// A round is complete: send what this producer holds now, whatever its `linger.ms`, and
    /// wait (at most `timeout`) until each output's delivery report is served. Returns whether
    /// that is so; does nothing (`false`) unless the producer is told (its `told` field).
    ///
    /// librdkafka's own flush: while it runs, the broker thread takes `linger.ms` as elapsed.
    /// Its wait ends when librdkafka counts no message of the producer left, i.e. after the
    /// delivery callbacks have run (in the producer's polling thread). rust-rdkafka's `flush`
    /// would poll the producer's queue from this thread as well, beside that thread, in waits
    /// of up to 100 ms each.
    pub fn send_now(&self, timeout: Duration) -> bool {
        if !self.told {
            return false;
        }
        let p = self.current();
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the guard keeps the client handle alive for the call; `rd_kafka_flush` may be
        // called from any thread, with the producer's polling thread running.
        let err = unsafe { rdkafka_sys::rd_kafka_flush(p.client().native_ptr(), ms) };
        err == rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    }

    /// The current producer (a poisoned lock still holds a usable producer).
    fn current(&self) -> RwLockReadGuard<'_, ThreadedProducer<OutputContext>> {
        self.producer.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many times the producer was replaced so far (see [`OutputProducer::renew`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replace the producer with a new one (a new producer id), unless it was replaced since
    /// `seen` ([`OutputProducer::generation`]): after a delivery timeout librdkafka bumps the
    /// idempotent producer's epoch itself, which Tansu answers with `ProducerFenced` on every
    /// later output. Outputs still queued or in flight on the old producer fail (purged, their
    /// reports go to their tasks' boards), and their partitions start over too. Returns whether
    /// it replaced the producer.
    pub fn renew(&self, seen: u64) -> Result<bool, KafkaError> {
        let mut producer = self.producer.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.generation() != seen {
            return Ok(false);
        }
        let old = std::mem::replace(&mut *producer, self.config.create_with_context(OutputContext)?);
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

    /// Enqueue `rec` for partition `src.partition` of its topic, its delivery reported to
    /// `board`; `headers` are `src`'s ([`Source::headers`], formatted once per input record).
    /// `timestamp_ms` is the record's CreateTime: the caller's clock reading of this record
    /// (librdkafka would read the clock again for each output).
    /// Blocks (briefly, repeatedly) while librdkafka's queue is full; call from a partition
    /// thread, not the reactor.
    pub fn send(
        &self,
        src: &Source<'_>,
        headers: &SourceHeaders<'_>,
        rec: OutputRef<'_>,
        board: &Arc<DeliveryBoard>,
        timestamp_ms: i64,
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::with_opaque_to(self.topic(rec.dest), board.clone())
            .partition(src.partition)
            .timestamp(timestamp_ms)
            .key(rec.key)
            .payload(rec.payload)
            .headers(owned_headers(headers));
        let mut backoff = QUEUE_FULL_BACKOFF;
        loop {
            match self.current().send(record) {
                Ok(()) => return Ok(()),
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

/// One output to send, borrowed (from a held round, `super::held`).
#[derive(Debug, Clone, Copy)]
pub struct OutputRef<'a> {
    /// Its topic.
    pub dest: Dest,
    /// Record key.
    pub key: &'a [u8],
    /// Encoded payload.
    pub payload: &'a [u8],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::offsets::Acks;

    #[test]
    fn a_transactional_producer_sends_what_it_holds_when_told_however_long_it_lingers() {
        // Two partitions: the second producer below writes to partition 1 (on a one-partition
        // topic its send failed with `UnknownPartition` whenever the metadata came first).
        let mock = crate::kafka::admin::MockCluster::start(&["in", "scores", "alerts", "dead"], 2).expect("mock cluster");
        let mut k = KafkaConfig {
            bootstrap: mock.bootstrap_servers().to_string(),
            input_topic: "in".into(),
            scores_topic: "scores".into(),
            alerts_topic: "alerts".into(),
            dead_letter_topic: "dead".into(),
            ..KafkaConfig::default()
        };
        let mut config = crate::kafka::client::transactional_output_producer(&k, 0);
        // Left to librdkafka, the outputs would wait 5 s: longer than the waits below.
        config.set("linger.ms", "5000");
        let out = OutputProducer::transactional_with(&k, config, true).expect("transactional producer");
        let mut acks = Acks::new("in", 0);
        let src = Source { topic: "in", partition: 0, offset: 41, epoch: 0 };
        for payload in [b"a", b"b"] {
            let rec = OutputRef { dest: Dest::Scores, key: b"sensor-1", payload };
            out.send(&src, &src.headers(), rec, acks.board(), 1_700_000_000_000).expect("queued");
        }
        acks.push(41, 2);
        assert!(out.send_now(Duration::from_secs(3)), "both outputs delivered");
        assert_eq!(acks.await_delivered(Duration::ZERO).map_err(|e| e.to_string()), Ok(true), "and reported to the board");
        assert!(out.commit(Duration::from_secs(3)).is_ok());
        // With `linger.ms` in `[kafka.settings]`, the producer is not told: the user's linger holds.
        k.settings.insert("linger.ms".into(), "5000".into());
        let lingering = OutputProducer::transactional(&k, 1).expect("transactional producer");
        let src = Source { partition: 1, ..src };
        lingering
            .send(&src, &src.headers(), OutputRef { dest: Dest::Scores, key: b"sensor-2", payload: b"c" }, acks.board(), 0)
            .expect("queued");
        assert!(!lingering.send_now(Duration::from_millis(500)));
        assert_eq!(lingering.current().in_flight_count(), 1, "still lingering");
    }

    #[test]
    fn a_delivery_report_finds_the_input_offset_in_the_headers() {
        let src = Source { topic: "in", partition: 3, offset: 9_000_000_001, epoch: 2 };
        let headers = owned_headers(&src.headers());
        assert_eq!(source_offset(headers.as_borrowed()), Some(9_000_000_001));
        // Another order (not ours): still found, by name.
        let moved = OwnedHeaders::new()
            .insert(Header { key: HEADER_SOURCE_OFFSET, value: Some("7") })
            .insert(Header { key: "a", value: Some("1") })
            .insert(Header { key: "b", value: Some("2") });
        assert_eq!(source_offset(moved.as_borrowed()), Some(7));
        let without = OwnedHeaders::new().insert(Header { key: "a", value: Some("1") });
        assert_eq!(source_offset(without.as_borrowed()), None);
    }
}
