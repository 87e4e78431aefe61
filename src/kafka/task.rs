//! The thread of one assigned partition: poll its queue, process records in small batches,
//! produce their outputs and acknowledge offsets in order; on stop, finish what was taken,
//! wait for its deliveries and store its offsets.
//!
//! The Kafka side of a partition only: what a record means is [`Processor`]'s business, and
//! which records are answered already is [`Replay`]'s (both pure, in [`crate::partition`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message as _};

use super::offsets::{Acks, Wait};
use super::producer::OutputProducer;
use crate::error::{StateFailure, WorkerError};
use crate::partition::resume::Replay;
use crate::partition::{now_ms, InputRecord, Models, OutRecord, Outcome, Processor, ProcessorConfig, Resume, Source, StateHooks};
use crate::telemetry::WorkerStats;

/// How long a poll waits for the first record of a batch (bounds the reaction to stop).
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Most records taken per batch before acknowledging.
const MAX_BATCH: usize = 1024;
/// Most input records with outputs in flight before the thread waits for deliveries.
const MAX_IN_FLIGHT: usize = 20_000;
/// First and longest wait before retrying a snapshot that failed.
const STATE_RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));

/// What every partition thread shares.
pub struct Shared {
    /// Input topic.
    pub topic: Arc<str>,
    /// Pipeline factory and validation limits.
    pub processor: Arc<ProcessorConfig>,
    /// Output producer.
    pub producer: OutputProducer,
    /// Counters.
    pub stats: Arc<WorkerStats>,
    /// State store seam.
    pub hooks: Arc<dyn StateHooks>,
    /// Settings of the reader that checks partition ends on assignment.
    pub bounds_reader: rdkafka::ClientConfig,
    /// Set when the worker must stop (shutdown requested or a fatal error).
    pub stop: AtomicBool,
    /// The first fatal error, reported by `run`.
    pub fatal: Mutex<Option<WorkerError>>,
}

impl Shared {
    /// Record a fatal error (the first one wins) and stop the worker.
    pub fn fail(&self, e: WorkerError) {
        tracing::error!(cause = %e, "worker stopping on a fatal error");
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
}

/// One assigned partition's work (`C`: the consumer's context).
pub struct PartitionTask<C: ConsumerContext + 'static> {
    /// The partition's own queue.
    queue: PartitionQueue<C>,
    /// The consumer (for storing offsets).
    consumer: Arc<BaseConsumer<C>>,
    /// Shared worker parts.
    shared: Arc<Shared>,
    /// Decode, validate, score, build outputs.
    processor: Processor,
    /// In-order acknowledgement.
    acks: Acks,
    /// Set by the coordinator on revoke.
    stop: Arc<AtomicBool>,
    /// Where outputs resume and which offsets may be stored.
    replay: Replay,
    /// While the state cannot be saved: when to retry, and the wait after that.
    stalled: Option<(std::time::Instant, Duration)>,
}

impl<C: ConsumerContext + 'static> PartitionTask<C> {
    /// A task for `partition`, starting as `resume` says; `committed` is the group's
    /// committed offset at assignment.
    pub fn new(
        queue: PartitionQueue<C>,
        consumer: Arc<BaseConsumer<C>>,
        shared: Arc<Shared>,
        partition: i32,
        resume: Resume,
        committed: Option<i64>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let topic = shared.topic.clone();
        let replay = Replay::new(&resume, committed);
        let processor = Processor::new(topic.clone(), partition, shared.processor.clone(), resume.models);
        Self { queue, consumer, acks: Acks::new(&topic, partition), shared, processor, stop, replay, stalled: None }
    }

    /// Run until told to stop (or a fatal error); then drain.
    pub fn run(mut self) -> TaskExit {
        let error = self.consume().err();
        let error = match error {
            Some(e) => Some(e),
            // Finish: every output of what was taken is delivered and its offset stored.
            None => self.acks.advance(&self.consumer, Wait::Below(0)).err().map(WorkerError::from),
        };
        let partition = self.processor.partition();
        if self.stalled.take().is_some() {
            self.shared.stats.state_failing.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(e) = &error {
            tracing::error!(partition, cause = %e, "partition stopped on an error");
            self.shared.fail(WorkerError::Partition { partition, reason: e.to_string() });
        } else {
            self.shared.hooks.on_revoke(&self.shared.topic, partition, self.processor.models());
        }
        TaskExit { stored: self.acks.stored(), models: self.processor.into_models(), error }
    }

    fn consume(&mut self) -> Result<(), WorkerError> {
        let mut out = Vec::with_capacity(4);
        while !self.stop.load(Ordering::Acquire) && !self.shared.stop.load(Ordering::Acquire) {
            let mut wait = POLL_WAIT;
            let mut taken = 0;
            // While the state cannot be saved, take nothing: what was taken is still delivered
            // and acknowledged, but the committed offset then stands still.
            let retry_due = match self.stalled {
                Some((at, _)) => {
                    std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()).min(POLL_WAIT));
                    std::time::Instant::now() >= at
                }
                None => false,
            };
            while taken < MAX_BATCH && self.stalled.is_none() {
                match self.queue.poll(wait) {
                    None => break,
                    Some(Ok(m)) => {
                        handle(&m, &mut self.processor, &self.shared, &mut self.acks, &mut self.replay, &mut out)?;
                        taken += 1;
                        wait = Duration::ZERO;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(partition = self.processor.partition(), cause = %e, "fetch error");
                        break;
                    }
                }
            }
            let wait = if self.acks.in_flight() > MAX_IN_FLIGHT { Wait::Below(MAX_IN_FLIGHT / 2) } else { Wait::Never };
            let retired = self.acks.advance(&self.consumer, wait)?;
            self.shared.stats.acknowledged.fetch_add(retired as u64, Ordering::Relaxed);
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
        }
        Ok(())
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

/// Process one record and enqueue its outputs.
fn handle(
    m: &BorrowedMessage<'_>,
    processor: &mut Processor,
    shared: &Shared,
    acks: &mut Acks,
    replay: &mut Replay,
    out: &mut Vec<OutRecord>,
) -> Result<(), WorkerError> {
    let offset = m.offset();
    if let Some(last) = replay.gap_before(offset, processor.models().last_offset) {
        // Records were skipped (retention, or an offset reset): the models have not seen
        // them. Logged, not fatal: the models are still the best available.
        tracing::warn!(partition = processor.partition(), last, offset, "first record does not follow the restored state");
    }
    out.clear();
    let outcome = processor.process(InputRecord { key: m.key(), value: m.payload(), offset }, now_ms(), out);
    let stats = &shared.stats;
    stats.consumed.fetch_add(1, Ordering::Relaxed);
    if replay.answered(offset) {
        // Answered before a crash: the models learn it again, its outputs are not repeated.
        stats.replayed.fetch_add(1, Ordering::Relaxed);
        if replay.stores(offset) {
            acks.push(offset, Vec::new());
        }
        return Ok(());
    }
    match outcome {
        Outcome::Scored { anomaly } => {
            stats.scored.fetch_add(1, Ordering::Relaxed);
            if anomaly {
                stats.alerts.fetch_add(1, Ordering::Relaxed);
            }
        }
        Outcome::DeadLetter(kind) => {
            stats.dead_letters.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = usize::try_from(kind as i32).ok().and_then(|i| stats.dead_letters_by_kind.get(i)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(e) = processor.last_security_event() {
                stats.security_events[e as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let src = Source { topic: &shared.topic, partition: processor.partition(), offset, epoch: processor.models().epoch };
    let mut deliveries = Vec::with_capacity(out.len());
    for rec in out.iter().filter(|r| replay.emits(r.dest, offset)) {
        deliveries.push(shared.producer.send(&src, rec)?);
    }
    acks.push(offset, deliveries);
    Ok(())
}
