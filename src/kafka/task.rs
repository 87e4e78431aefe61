//! The thread of one assigned partition: poll its queue, process records in small batches,
//! produce their outputs and acknowledge offsets in order; on stop, finish what was taken,
//! wait for its deliveries and store its offsets.
//!
//! The Kafka side of a partition only: what a record means is [`Processor`]'s business, and
//! which records are answered already is [`Replay`]'s (both pure, in [`crate::partition`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message as _};

use super::held::Held;
use super::offsets::{Acks, Wait};
use super::producer::{OutputProducer, Outputs, TxnFailure};
use super::wallclock::WallClock;
use crate::error::{StateFailure, WorkerError};
use crate::partition::resume::Replay;
use crate::partition::{now_ms, output, InputRecord, Models, OutRecord, Outcome, Processor, ProcessorConfig, Resume, Source, StateHooks};
use crate::telemetry::otel::batch_span;
use crate::telemetry::stats::PartitionStats;
use crate::telemetry::WorkerStats;

/// How long a poll waits for the first record of a batch (bounds the reaction to stop).
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Most records taken per round before acknowledging (with transactional outputs, a round
/// may take more while the previous one's outputs are in flight: [`PartitionTask::round_open`]).
const MAX_BATCH: usize = 1024;
/// How often (in records) a round past [`MAX_BATCH`] checks whether the previous round's
/// outputs are delivered ([`PartitionTask::round_open`]).
const GATE_CHECK: usize = 64;
/// Most input records with outputs in flight before the thread waits for deliveries.
const MAX_IN_FLIGHT: usize = 20_000;
/// How often a thread holding its outputs after a stall checks whether its partition was revoked.
const FENCE_CHECK: Duration = Duration::from_millis(50);
/// Outputs in flight this long without one delivery acknowledged: the broker is taken as
/// unreachable (`WorkerStats::broker_down_since_ms`) until deliveries complete again.
const DELIVERY_SILENCE: Duration = Duration::from_secs(5);
/// First and longest wait before retrying a snapshot that failed.
const STATE_RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

/// What every partition thread shares.
pub struct Shared {
    /// Input topic.
    pub topic: Arc<str>,
    /// Pipeline factory and validation limits.
    pub processor: Arc<ProcessorConfig>,
    /// Where the partitions' outputs go.
    pub outputs: Outputs,
    /// `kafka.transaction_interval_ms`: how long an output transaction stays open at most.
    pub transaction_interval: Duration,
    /// Counters.
    pub stats: Arc<WorkerStats>,
    /// State store seam.
    pub hooks: Arc<dyn StateHooks>,
    /// Settings of the reader that checks partition ends on assignment.
    pub bounds_reader: rdkafka::ClientConfig,
    /// The consumer's `session.timeout.ms`: a partition thread that stalled longer than this
    /// may have lost its partition to another member (zombie fencing, [`PartitionTask`]).
    pub session_timeout: Duration,
    /// `kafka.delivery_retry_ms`: how long a partition whose outputs time out undelivered
    /// keeps waiting for the broker to re-read them before that is fatal ([`super::reread`]).
    pub delivery_retry: Duration,
    /// Set when the worker must stop (shutdown requested or a fatal error).
    pub stop: AtomicBool,
    /// The first fatal error, reported by `run`.
    pub fatal: Mutex<Option<WorkerError>>,
}

impl Shared {
    /// Record a fatal error (the first one wins) and stop the worker.
    pub fn fail(&self, e: WorkerError) {
        tracing::error!(cause = %e, "worker stopping on a fatal error");
        if let Ok(mut reason) = self.stats.fatal_reason.lock() {
            reason.get_or_insert_with(|| e.to_string());
        }
        if let Ok(mut slot) = self.fatal.lock() {
            slot.get_or_insert(e);
        }
        self.stop.store(true, Ordering::Release);
    }
}

/// What a partition thread leaves behind.
pub struct TaskExit {
    /// The partition's models (to park for a later reassignment).
    pub models: Models,
    /// Last input offset stored for commit.
    pub stored: Option<i64>,
    /// Why it stopped early, if it did.
    pub error: Option<WorkerError>,
    /// Given up after a stall past the session timeout: outputs of its models' last records
    /// may have been purged undelivered, so the models must not be parked (the partition's
    /// next start restores from the store and re-reads from the committed offset).
    pub fenced: bool,
}

/// How [`PartitionTask::commit`] ended.
enum Committed {
    /// Committed; the next transaction is open.
    Yes,
    /// The transaction failed and the partition started over (a new producer, its store).
    StartedOver,
    /// The partition is given up.
    End(Consumed),
}

/// How [`PartitionTask::consume`] ended.
enum Consumed {
    /// Told to stop: drain and hand the partition over.
    Done,
    /// Gave the partition up after a stall (zombie fencing): no drain, no snapshot.
    Fenced,
}

/// One assigned partition's work (`C`: the consumer's context).
pub struct PartitionTask<C: ConsumerContext + 'static> {
    /// The partition's own queue.
    queue: PartitionQueue<C>,
    /// The consumer (for storing offsets).
    consumer: Arc<BaseConsumer<C>>,
    /// Shared worker parts.
    shared: Arc<Shared>,
    /// This partition's output producer (the shared one, or a transactional one of its own).
    out: Arc<OutputProducer>,
    /// With transactional outputs: since when the open transaction holds records (offsets
    /// and snapshots wait for its commit).
    txn_since: Option<Instant>,
    /// Decode, validate, score, build outputs.
    processor: Processor,
    /// In-order acknowledgement.
    acks: Acks,
    /// The outputs of the round being taken, sent when it ends ([`PartitionTask::release`]).
    held: Held,
    /// Set by the coordinator on revoke.
    stop: Arc<AtomicBool>,
    /// Where outputs resume and which offsets may be stored.
    replay: Replay,
    /// While the state cannot be saved: when to retry, and the wait after that.
    stalled: Option<(std::time::Instant, Duration)>,
    /// This partition's gauges (breakers, degraded readings) for `/ready` and `/metrics`.
    gauges: Arc<PartitionStats>,
    /// When the thread last came by a stall check (zombie fencing, [`hold_after_stall`]).
    beat: Instant,
    /// Since when outputs are in flight with none acknowledged, and the
    /// `broker_down_since_ms` value this thread set (to clear only its own).
    silent: Option<(Instant, Option<u64>)>,
    /// Pipelines evicted by this task so far (the first eviction is logged).
    evicted: u64,
    /// This partition's histograms (handles: observing them takes no lookup).
    timing: Timing,
    /// Since when this partition's outputs fail undelivered with none delivered since, and
    /// the output producer's generation then ([`super::reread`]).
    undelivered_since: Option<(Instant, u64)>,
}

/// What an assignment gives a partition thread.
pub struct Assigned {
    /// The input partition.
    pub partition: i32,
    /// Where it starts (models, offsets, outputs already emitted).
    pub resume: Resume,
    /// The group's committed offset at assignment.
    pub committed: Option<i64>,
    /// Its output producer (initialised before its output tails were read).
    pub out: Arc<OutputProducer>,
}

/// A partition's histogram handles.
struct Timing {
    /// Reading → output latency, from the record timestamp.
    latency: Histogram,
    /// Processing time per batch.
    batch: Histogram,
}

impl<C: ConsumerContext + 'static> PartitionTask<C> {
    /// A task for the partition of `assigned`, reading `queue`.
    pub fn new(
        queue: PartitionQueue<C>,
        consumer: Arc<BaseConsumer<C>>,
        shared: Arc<Shared>,
        assigned: Assigned,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let Assigned { partition, resume, committed, out } = assigned;
        let topic = shared.topic.clone();
        let replay = Replay::new(&resume, committed);
        super::freeze::start();
        let gauges = shared.stats.partition(&topic, partition);
        let cold = shared.hooks.cold_store(&topic, partition);
        let processor = Processor::with_cold(topic.clone(), partition, shared.processor.clone(), resume.models, cold, gauges.clone());
        let i = &shared.stats.instruments;
        let timing = Timing { latency: i.latency(&topic, partition), batch: i.batch(&topic, partition) };
        Self {
            queue,
            consumer,
            acks: Acks::new(&topic, partition),
            held: Held::default(),
            shared,
            out,
            txn_since: None,
            processor,
            stop,
            replay,
            stalled: None,
            gauges,
            beat: Instant::now(),
            silent: None,
            timing,
            evicted: 0,
            undelivered_since: None,
        }
    }

    /// Run until told to stop (or a fatal error); then drain.
    pub fn run(mut self) -> TaskExit {
        let (error, fenced) = match self.consume() {
            Err(e) => (Some(e), false),
            // Lost after a stall: nothing more is stored or snapshotted (outputs may have been
            // purged); the next owner re-reads from the committed offset.
            Ok(Consumed::Fenced) => (None, true),
            // Finish: every output of what was taken is delivered and its offset stored. One
            // that timed out or was purged is left to the next owner, like a fenced partition's.
            Ok(Consumed::Done) => match self.acks.advance(&self.consumer, Wait::Below(0)) {
                Ok(_) => (None, false),
                Err(e) if e.undelivered => {
                    tracing::warn!(partition = self.processor.partition(), cause = %e, "outputs undelivered at revoke: left to the partition's next owner");
                    self.acks.settle();
                    (None, true)
                }
                Err(e) => (Some(WorkerError::from(e)), false),
            },
        };
        let partition = self.processor.partition();
        if self.stalled.take().is_some() {
            self.shared.stats.state_failing.fetch_sub(1, Ordering::Relaxed);
        }
        // This thread no longer watches its deliveries: withdraw its report, if any (after a
        // clean drain every output was acknowledged, so the broker is back).
        if let Some((_, Some(set))) = self.silent.take() {
            let _ = self.shared.stats.broker_down_since_ms.compare_exchange(set, 0, Ordering::AcqRel, Ordering::Relaxed);
            if error.is_none() {
                tracing::info!(partition, "outputs acknowledged again: broker reachable");
            }
        }
        if let Some(e) = &error {
            tracing::error!(partition, cause = %e, "partition stopped on an error");
            self.shared.fail(WorkerError::Partition { partition, reason: e.to_string() });
        } else if !fenced {
            self.shared.hooks.on_revoke(&self.shared.topic, partition, self.processor.models());
        }
        if self.evicted > 0 {
            let r = self.processor.resident();
            tracing::info!(
                partition,
                resident = r.resident(),
                model_bytes = r.bytes(),
                evicted = self.evicted,
                "memory budget: partition stopped"
            );
        }
        TaskExit { stored: self.acks.stored(), models: self.processor.into_models(), error, fenced }
    }

    fn consume(&mut self) -> Result<Consumed, WorkerError> {
        let mut out = Vec::with_capacity(4);
        let partition = self.processor.partition();
        loop {
            // Before the stop check: a thread that wakes from a stall to find itself revoked
            // gives the partition up without a drain or a snapshot (see `Consumed::Fenced`).
            if !hold_after_stall(&mut self.beat, &self.stop, &self.shared, &self.out, &self.consumer, partition) {
                return Ok(Consumed::Fenced);
            }
            if self.stop.load(Ordering::Acquire) || self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let mut wait = POLL_WAIT;
            let mut taken = 0;
            let clock = WallClock::now();
            // While the state cannot be saved, take nothing: what was taken is still delivered
            // and acknowledged, but the committed offset then stands still.
            let retry_due = match self.stalled {
                Some((at, _)) => {
                    std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()).min(POLL_WAIT));
                    std::time::Instant::now() >= at
                }
                None => false,
            };
            // Timed from the first record (not the idle poll) for the ops monitor's
            // `slow_processing`; the span exists only while OpenTelemetry is on.
            let mut batch = None;
            // The round ended because the partition's queue ran dry (not at its size limit).
            let mut dry = false;
            while self.stalled.is_none() && self.round_open(taken) {
                let polled = self.queue.poll(wait);
                // Checked between taking a record and holding its outputs: a freeze while
                // polling (or anywhere since the last check) is seen before anything is produced
                // (and again before the round's outputs are released).
                if !hold_after_stall(&mut self.beat, &self.stop, &self.shared, &self.out, &self.consumer, partition) {
                    // Lost: the record in hand is dropped unproduced; its new owner answers it.
                    return Ok(Consumed::Fenced);
                }
                match polled {
                    None => {
                        dry = true;
                        break;
                    }
                    Some(Ok(m)) => {
                        // Entered once per batch (not per record): log lines of the batch carry its trace id.
                        // `beat` was set by the stall check just now: this record's one clock reading.
                        let now = self.beat;
                        let (_, span, last) = batch.get_or_insert_with(|| {
                            let span = batch_span(&self.shared.topic, self.processor.partition(), m.offset());
                            (now, span.entered(), 0)
                        });
                        *last = m.offset();
                        let ctx = Ctx { shared: &self.shared, latency: &self.timing.latency, now_ms: clock.ms_at(now) };
                        if let Err(e) = handle(&m, &mut self.processor, &ctx, &mut self.acks, &mut self.replay, &mut out, &mut self.held) {
                            span.record("last_offset", *last).record("records", taken as i64).record("outcome", "error");
                            span.record("otel.status_code", "ERROR");
                            return Err(e);
                        }
                        taken += 1;
                        wait = Duration::ZERO;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(partition = self.processor.partition(), cause = %e, "fetch error");
                        break;
                    }
                }
            }
            if let Some((started, span, last)) = batch {
                let took = started.elapsed();
                self.timing.batch.observe(took.as_secs_f64());
                self.shared.stats.processing_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                span.record("last_offset", last).record("records", taken as i64).record("outcome", "ok");
            }
            if !self.held.is_empty() && !self.release()? {
                return Ok(Consumed::Fenced);
            }
            // With transactional outputs, offsets (and so snapshots) wait for the commit: an
            // aborted transaction's outputs are not there for read_committed consumers.
            if self.shared.outputs.transactional() {
                if taken > 0 {
                    self.txn_since.get_or_insert(self.beat);
                }
                // Due after the interval, when many records wait, or as soon as a round took
                // nothing or ran the partition's queue dry (nothing more to add: waiting would only delay the
                // outputs' visibility to `read_committed` consumers, and the offsets). Under a
                // backlog rounds end full and the interval paces the commits; at a steady
                // moderate rate a round ends dry every few ms, and commits follow as fast as the
                // broker answers them (one at a time: the thread waits for each).
                let due = self.txn_since.is_some_and(|t| {
                    taken == 0 || dry || t.elapsed() >= self.shared.transaction_interval || self.acks.in_flight() > MAX_IN_FLIGHT
                });
                if due {
                    match self.commit()? {
                        Committed::Yes => {}
                        Committed::StartedOver => continue,
                        Committed::End(end) => return Ok(end),
                    }
                }
            }
            let wait = if self.acks.in_flight() > MAX_IN_FLIGHT { Wait::Below(MAX_IN_FLIGHT / 2) } else { Wait::Never };
            let advanced = if self.txn_since.is_some() { Ok(0) } else { self.acks.advance(&self.consumer, wait) };
            let retired = match advanced {
                Ok(n) => n,
                Err(e) if e.undelivered => match self.undelivered(e)? {
                    Some(end) => return Ok(end),
                    None => continue,
                },
                Err(e) => return Err(e.into()),
            };
            if retired > 0 {
                self.undelivered_since = None;
            }
            self.shared.stats.acknowledged.fetch_add(retired as u64, Ordering::Relaxed);
            let open = self.processor.breakers_open();
            self.gauges.breakers_half_open.store(self.processor.breakers_half_open(), Ordering::Relaxed);
            let before = self.gauges.breakers_open.swap(open, Ordering::Relaxed);
            if open != before {
                // Per partition, not per sensor: the degraded outputs name each sensor's cause.
                tracing::warn!(partition = self.processor.partition(), breakers_open = open, before, "circuit breakers changed");
            }
            self.gauges.degraded.store(self.processor.degraded(), Ordering::Relaxed);
            self.watch_deliveries(retired > 0 || self.acks.in_flight() == 0);
            // Every round, idle ones too: a time-based snapshot is due without new records,
            // and a due one is written once its outputs are delivered.
            if self.stalled.is_none() || retry_due {
                let saved = self.shared.hooks.after_batch(
                    &self.shared.topic,
                    self.processor.partition(),
                    self.processor.models(),
                    self.acks.stored(),
                );
                self.state_saved(saved);
            }
            self.keep_budget();
        }
        // Revoked or stopping: what was taken is committed before the offsets are stored.
        if self.txn_since.is_some() {
            match self.commit()? {
                Committed::Yes => {}
                Committed::StartedOver | Committed::End(_) => return Ok(Consumed::Fenced),
            }
        }
        Ok(Consumed::Done)
    }

    /// Whether the round goes on after `taken` records. Up to [`MAX_BATCH`] records always;
    /// with transactional outputs, while the previous round's outputs are still in flight
    /// too (checked every [`GATE_CHECK`] records), up to what one produce request carries
    /// ([`Held::full`]): instead of waiting for them at the release, the thread takes and
    /// scores more, and the next request carries it all.
    fn round_open(&mut self, taken: usize) -> bool {
        if taken < MAX_BATCH {
            return true;
        }
        if !self.shared.outputs.transactional() || self.held.full() {
            return false;
        }
        taken % GATE_CHECK != 0 || matches!(self.acks.await_at_most(self.held.len() as u64, Duration::ZERO), Ok(false))
    }

    /// Send the round's held outputs; `false`: the partition was lost in a stall, and they
    /// are dropped unproduced (its next owner answers them). With transactional outputs,
    /// first the previous round's are sent, if they still linger in the producer (a commit
    /// sends them at once, a full round does not), and waited for (at most [`POLL_WAIT`]):
    /// see `super::held` for why librdkafka must not hold outputs behind a request in flight.
    /// A failed delivery stays on the board for the acknowledgement or commit after the round.
    fn release(&mut self) -> Result<bool, WorkerError> {
        if self.shared.outputs.transactional() {
            let held = self.held.len() as u64;
            if !matches!(self.acks.await_at_most(held, Duration::ZERO), Ok(true)) {
                self.out.send_now(POLL_WAIT);
            }
            let _ = self.acks.await_at_most(held, POLL_WAIT);
        }
        let partition = self.processor.partition();
        if !hold_after_stall(&mut self.beat, &self.stop, &self.shared, &self.out, &self.consumer, partition) {
            self.held.drop_all();
            return Ok(false);
        }
        self.held.release(&self.out, &self.shared.topic, partition, self.acks.board())?;
        Ok(true)
    }

    /// Commit the partition's output transaction (waiting for its outputs' deliveries), and
    /// open the next. A commit that times out is tried again (the broker is away) for up to
    /// `kafka.delivery_retry_ms`; any other failure aborts the transaction and starts the
    /// partition over ([`PartitionTask::transaction_failed`]).
    fn commit(&mut self) -> Result<Committed, WorkerError> {
        let partition = self.processor.partition();
        let since = Instant::now();
        loop {
            // First what the producer still holds goes out (nothing more joins this
            // transaction), and the outputs' reports reach this task's own board (it wakes this
            // thread at the last one; see `OutputProducer::commit`). A failure or a timeout
            // here shows in the commit's own result. Every output gets its delivery result
            // within the producer's delivery timeout, which is below the session timeout.
            self.out.send_now(self.shared.session_timeout);
            let _ = self.acks.await_delivered(self.shared.session_timeout);
            let f = match self.out.commit(self.shared.session_timeout) {
                Ok(()) => {
                    self.txn_since = None;
                    self.shared.stats.transactions_committed.fetch_add(1, Ordering::Relaxed);
                    return Ok(Committed::Yes);
                }
                Err(TxnFailure::Retriable(e)) => e,
                Err(f) => return self.transaction_failed(f),
            };
            tracing::warn!(partition, cause = %f, "output transaction not committed yet: retrying");
            // Frozen in the commit, the partition may be another member's by now.
            if !hold_after_stall(&mut self.beat, &self.stop, &self.shared, &self.out, &self.consumer, partition) {
                return Ok(Committed::End(Consumed::Fenced));
            }
            if self.stop.load(Ordering::Acquire) || self.shared.stop.load(Ordering::Acquire) {
                return self.transaction_failed(TxnFailure::Retriable(f));
            }
            if since.elapsed() > self.shared.delivery_retry {
                return Err(WorkerError::Kafka(f));
            }
        }
    }

    /// The output transaction failed (`f`): abort it, and start the partition over as if it
    /// had just been assigned (a new transactional producer, its state store, its output
    /// tails), once the broker answers. When another producer fenced this one, the partition
    /// is another member's (or about to be): nothing more is produced until the group revokes
    /// it (`End`) or still assigns it here a session timeout later (then this worker's new
    /// producer fences that one in turn).
    fn transaction_failed(&mut self, f: TxnFailure) -> Result<Committed, WorkerError> {
        use super::reread::{wait_for_broker, Waited};
        let partition = self.processor.partition();
        // Not aborted here: the next owner's `init_transactions` (this thread's own, when it
        // starts over) ends it, before that owner reads the output tails. An abort of our own
        // could land after that read (the broker may be slow or away just now) and hide
        // outputs the read counted as written (Tansu).
        tracing::warn!(partition, cause = %f.error(), "output transaction failed: producing nothing until the partition starts over");
        self.shared.stats.transactions_failed.fetch_add(1, Ordering::Relaxed);
        // No wait for the outputs in flight (`Acks::settle`): whatever this producer still
        // sends, the broker refuses once the next owner's producer is initialised.
        self.acks.forget();
        self.txn_since = None;
        if !hold_after_stall(&mut self.beat, &self.stop, &self.shared, &self.out, &self.consumer, partition) {
            return Ok(Committed::End(Consumed::Fenced));
        }
        if matches!(f, TxnFailure::Fenced(_)) && !hold_for_group(&mut self.beat, &self.stop, &self.shared, &self.consumer, partition) {
            return Ok(Committed::End(Consumed::Fenced));
        }
        match wait_for_broker(&self.consumer, &self.shared, &self.stop, Instant::now()) {
            Waited::Stopped => return Ok(Committed::End(Consumed::Fenced)),
            Waited::GaveUp => return Err(WorkerError::Kafka(f.error().clone())),
            Waited::Reachable => {}
        }
        self.start_over()?;
        Ok(Committed::StartedOver)
    }

    /// Outputs timed out undelivered or were purged (`e`): after a freeze that cost the
    /// partition they belong to its new owner (`Some(Fenced)`); otherwise (a broker outage, or
    /// the partition confirmed ours after a freeze) the partition starts over once the broker
    /// answers (`None`), and gives up after `kafka.delivery_retry_ms` (`Err`). Nothing of the
    /// partition is produced meanwhile ([`super::reread`] says why nothing is produced again).
    fn undelivered(&mut self, e: super::offsets::DeliveryError) -> Result<Option<Consumed>, WorkerError> {
        use super::reread::{wait_for_broker, Waited};
        let partition = self.processor.partition();
        let (since, generation) = *self.undelivered_since.get_or_insert_with(|| (Instant::now(), self.out.generation()));
        tracing::warn!(partition, cause = %e, "outputs undelivered: producing nothing until the partition starts over");
        // Every output in flight gets its result within message.timeout.ms: none is left that
        // could still be written behind the re-read.
        self.acks.settle();
        // After a freeze past the session timeout: hold until the group revokes or confirms.
        if !hold_after_stall(&mut self.beat, &self.stop, &self.shared, &self.out, &self.consumer, partition) {
            return Ok(Some(Consumed::Fenced));
        }
        match wait_for_broker(&self.consumer, &self.shared, &self.stop, since) {
            Waited::Stopped => return Ok(Some(Consumed::Fenced)),
            Waited::GaveUp => return Err(e.into()),
            Waited::Reachable => {}
        }
        // A timeout spent the producer's id (see `OutputProducer::renew`): the first partition
        // to start over replaces it, the others use that replacement (a transactional
        // producer is replaced by `start_over`).
        if e.producer_spent && !self.shared.outputs.transactional() && self.out.renew(generation)? {
            tracing::info!(partition, "output producer replaced: a delivery timeout spent its producer id");
        }
        self.start_over()?;
        Ok(None)
    }

    /// Restore the partition as an assignment would ([`super::reread::start_over`]), with a
    /// new transactional producer first if outputs are transactional (it fences this
    /// partition's previous one, whatever that still holds, before the tails are read).
    fn start_over(&mut self) -> Result<(), WorkerError> {
        let partition = self.processor.partition();
        if self.shared.outputs.transactional() {
            self.out = self.shared.outputs.for_partition(partition)?;
        }
        let (resume, committed) = super::reread::start_over(&self.consumer, &self.shared, partition)?;
        let topic = self.shared.topic.clone();
        self.replay = Replay::new(&resume, committed);
        let cold = self.shared.hooks.cold_store(&topic, partition);
        self.processor =
            Processor::with_cold(topic.clone(), partition, self.shared.processor.clone(), resume.models, cold, self.gauges.clone());
        self.acks = Acks::new(&topic, partition);
        self.shared.stats.delivery_rereads.fetch_add(1, Ordering::Relaxed);
        self.beat = Instant::now();
        // The broker answers and nothing is in flight: withdraw this thread's unreachable report.
        self.watch_deliveries(true);
        Ok(())
    }

    /// Report the broker unreachable while outputs wait for acknowledgements longer than
    /// [`DELIVERY_SILENCE`] (`progress`: one was acknowledged, or none is waiting). Sets
    /// `broker_down_since_ms` only when nobody else has (the client's error callback may
    /// have), and clears only the value it set.
    fn watch_deliveries(&mut self, progress: bool) {
        let down = &self.shared.stats.broker_down_since_ms;
        let partition = self.processor.partition();
        if progress {
            if let Some((_, Some(set))) = self.silent.take() {
                let _ = down.compare_exchange(set, 0, Ordering::AcqRel, Ordering::Relaxed);
                tracing::info!(partition, "outputs acknowledged again: broker reachable");
            }
            self.silent = None;
            return;
        }
        let now = Instant::now();
        let (since, set) = self.silent.get_or_insert((now, None));
        if set.is_none() && now.duration_since(*since) >= DELIVERY_SILENCE {
            let ms = (now_ms() - DELIVERY_SILENCE.as_millis() as i64).max(1) as u64;
            let _ = down.compare_exchange(0, ms, Ordering::AcqRel, Ordering::Relaxed);
            *set = Some(ms);
            tracing::warn!(partition, in_flight = self.acks.in_flight(), silence = ?DELIVERY_SILENCE, "no output acknowledged while outputs wait: broker unreachable, holding offsets and retrying");
        }
    }

    /// Evict least-recently-used pipelines while the worker is over its memory budget. A
    /// failed eviction only leaves the worker over budget (the pipelines stay in memory).
    fn keep_budget(&mut self) {
        let partition = self.processor.partition();
        match self.processor.keep_budget() {
            Ok(0) if self.processor.over_budget_without_store() => {
                tracing::warn!(partition, "over memory_limit_mb without a state store to evict to: keeping every pipeline");
            }
            Ok(n) if n > 0 => {
                if self.evicted == 0 {
                    let resident = self.processor.resident().resident();
                    tracing::info!(partition, resident, "memory budget reached: evicting least-recently-used pipelines to the state store");
                }
                self.evicted += n as u64;
                tracing::debug!(partition, evicted = n, "evicted pipelines to keep the memory budget");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(partition, cause = %e, "cannot evict pipelines; over the memory budget until it works"),
        }
        // Evictions and the snapshot just written freed memory in bulk: hand free pages back
        // (rationed process-wide; `ops::malloc`), or glibc keeps them mapped.
        if crate::ops::malloc::trim_if_due() {
            if let Some(h) = crate::ops::malloc::heap_stats() {
                // The budget's charge beside glibc's figures: the difference is the live memory
                // the budget does not see (BENCHMARKS.md, "Memory budget: RSS").
                let charged_mb = self.processor.resident().budget_used() >> 20;
                tracing::debug!(in_use_mb = h.in_use >> 20, free_mb = h.free >> 20, charged_mb, "heap trimmed");
            }
        }
    }

    /// Track whether the partition's state can be saved: a failure pauses the partition and
    /// makes the worker unhealthy until a retry succeeds.
    fn state_saved(&mut self, saved: Result<(), StateFailure>) {
        let stats = &self.shared.stats;
        let partition = self.processor.partition();
        match (saved, self.stalled) {
            (Ok(()), None) => {}
            (Ok(()), Some(_)) => {
                self.stalled = None;
                stats.state_recoveries.fetch_add(1, Ordering::Relaxed);
                if stats.state_failing.fetch_sub(1, Ordering::Relaxed) == 1 {
                    if let Ok(mut e) = stats.state_error.lock() {
                        *e = None;
                    }
                }
                tracing::info!(partition, "state saved again: taking records");
            }
            (Err(e), stalled) => {
                stats.state_write_failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = stats.state_error.lock() {
                    *last = Some(format!("partition {partition}: {e}"));
                }
                let wait = match stalled {
                    None => {
                        stats.state_failing.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(partition, cause = %e, "state cannot be saved: partition paused, offsets held, retrying");
                        STATE_RETRY.0
                    }
                    Some((_, wait)) => {
                        tracing::warn!(partition, cause = %e, retry_in = ?wait, "state still cannot be saved");
                        wait
                    }
                };
                self.stalled = Some((std::time::Instant::now() + wait, (wait * 2).min(STATE_RETRY.1)));
            }
        }
    }
}

/// Zombie fencing. `beat` is when the thread last came by here. When more than the session
/// timeout has passed since (the process was frozen, the VM stalled), the group may have given
/// the partition to another member, which answers its records already; librdkafka has not said
/// so yet (its session timer and the revoke run on other threads, after this one wakes), so
/// producing now could duplicate the new owner's outputs. Hold: produce nothing until the
/// partition is revoked (`false`: drop what is in hand, unproduced and unstored) or until a
/// further session timeout has passed with the partition still assigned (`true`). librdkafka
/// declares the session lost once `session.timeout.ms` passes without a successful heartbeat
/// (`SESSTMOUT`), so a member still assigned a session timeout after waking has heartbeated
/// successfully since it woke: the coordinator still counts it as the partition's owner.
fn hold_after_stall<C: ConsumerContext>(
    beat: &mut Instant,
    stop: &AtomicBool,
    shared: &Shared,
    out: &OutputProducer,
    consumer: &BaseConsumer<C>,
    partition: i32,
) -> bool {
    // One clock reading per call (a call per record): it also times the record (`WallClock`).
    let now = Instant::now();
    let gap = now.saturating_duration_since(*beat);
    // A long gap alone may be this thread blocked in a call of its own (a changelog publish to
    // a paused broker) while the process, and librdkafka's heartbeats, ran on: not a zombie.
    if gap <= shared.session_timeout || !super::freeze::frozen_since(*beat, shared.session_timeout) {
        *beat = now;
        return true;
    }
    shared.stats.stall_fences.fetch_add(1, Ordering::Relaxed);
    // Outputs still queued in librdkafka would be written late, after the new owner took over:
    // drop them (those queued before the freeze have timed out already: `client::zombie_fence`).
    // A purge cannot recall a produce request librdkafka had built before the freeze: its broker
    // thread woke with this one and writes it before serving the purge (README, "Zombies").
    // Their deliveries fail: if the partition is still ours after all, it starts over and
    // answers them again (`reread`); if it is lost, its next owner answers them.
    let queued = out.purge_queued();
    tracing::warn!(partition, stalled = ?gap, session_timeout = ?shared.session_timeout, queued, "partition thread stalled past the session timeout: queued outputs purged, producing nothing until the group confirms or revokes the partition");
    hold_for_group(beat, stop, shared, consumer, partition)
}

/// Produce nothing until the group revokes `partition` (`false`) or still assigns it to this
/// member a session timeout from now (`true`; `beat` is reset).
fn hold_for_group<C: ConsumerContext>(
    beat: &mut Instant,
    stop: &AtomicBool,
    shared: &Shared,
    consumer: &BaseConsumer<C>,
    partition: i32,
) -> bool {
    let confirm_at = Instant::now() + shared.session_timeout;
    loop {
        if stop.load(Ordering::Acquire) || shared.stop.load(Ordering::Acquire) {
            tracing::warn!(partition, "partition given up after a stall: records taken and not produced are left to its next owner");
            return false;
        }
        if Instant::now() >= confirm_at && owns(consumer, &shared.topic, partition) {
            tracing::info!(partition, "partition still assigned a session timeout after the stall: producing again");
            *beat = Instant::now();
            return true;
        }
        std::thread::sleep(FENCE_CHECK);
    }
}

/// Whether the consumer's current assignment still includes `partition` of `topic`.
fn owns<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> bool {
    use rdkafka::consumer::Consumer as _;
    !consumer.assignment_lost() && consumer.assignment().is_ok_and(|a| a.find_partition(topic, partition).is_some())
}

/// What [`handle`] needs besides the record and the partition's own parts.
struct Ctx<'a> {
    /// Shared worker parts.
    shared: &'a Shared,
    /// The partition's reading → output latency histogram.
    latency: &'a Histogram,
    /// Wall time of this record, ms since the Unix epoch.
    now_ms: i64,
}

/// Process one record and hold its outputs for the end of the round.
fn handle(
    m: &BorrowedMessage<'_>,
    processor: &mut Processor,
    ctx: &Ctx<'_>,
    acks: &mut Acks,
    replay: &mut Replay,
    out: &mut Vec<OutRecord>,
    held: &mut Held,
) -> Result<(), WorkerError> {
    let (shared, latency, now) = (ctx.shared, ctx.latency, ctx.now_ms);
    let offset = m.offset();
    if let Some(last) = replay.gap_before(offset, processor.models().last_offset) {
        // Records were skipped (retention, or an offset reset): the models have not seen
        // them. Logged, not fatal: the models are still the best available.
        tracing::warn!(partition = processor.partition(), last, offset, "first record does not follow the restored state");
    }
    processor.recycle(out);
    let outcome = processor.process(InputRecord { key: m.key(), value: m.payload(), offset }, now, out);
    let stats = &shared.stats;
    stats.consumed.fetch_add(1, Ordering::Relaxed);
    if replay.answered(offset) {
        // Answered before a crash: the models learn it again, its outputs are not repeated.
        stats.replayed.fetch_add(1, Ordering::Relaxed);
        if replay.stores(offset) {
            acks.push(offset, 0);
        }
        return Ok(());
    }
    match outcome {
        Outcome::Scored { anomaly } => {
            stats.scored.fetch_add(1, Ordering::Relaxed);
            if anomaly {
                stats.alerts.fetch_add(1, Ordering::Relaxed);
                stats.instruments.anomaly(&shared.topic, output::alert_severity_label(out));
            }
        }
        Outcome::DeadLetter(kind) => {
            stats.dead_letters.fetch_add(1, Ordering::Relaxed);
            stats.instruments.dead_letter(&shared.topic, output::dead_letter_kind_label(kind));
            if let Some(e) = processor.last_security_event() {
                stats.instruments.security_event(&shared.topic, e.name());
            }
        }
    }
    if let Some(ts) = m.timestamp().to_millis() {
        latency.observe(now.saturating_sub(ts).max(0) as f64 / 1000.0);
    }
    let src = Source { topic: &shared.topic, partition: processor.partition(), offset, epoch: processor.models().epoch };
    // Sent at the end of the round, after this push: no report can miss its record.
    let outputs = held.hold(&src, now, out, |d| replay.emits(d, offset));
    acks.push(offset, outputs);
    Ok(())
}
