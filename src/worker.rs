//! The worker as a library call: [`run`] (or [`Worker`] for counters and a state store) joins
//! the consumer group and processes until `shutdown` resolves, then stops consuming, drains
//! deliveries, commits and returns. `onad-stream run`, the demo and the tests all use this.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;

use crate::config::Config;
use crate::kafka::admin::{self, AdminError};
use crate::kafka::driver::{self, Shared};
use crate::kafka::offsets::DeliveryError;
use crate::kafka::producer::OutputProducer;
use crate::partition::{NoState, ProcessorConfig, StateHooks};

/// How long shutdown waits for the producer's last deliveries.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

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
    State(#[from] crate::partition::StateFailure),
    /// A worker thread could not be started or panicked.
    #[error("worker thread: {0}")]
    Thread(String),
}

/// Live counters of a running worker (read them any time; they only grow).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Input records taken from Kafka.
    pub consumed: AtomicU64,
    /// Readings scored (one `ScoredReading` each).
    pub scored: AtomicU64,
    /// Alerts emitted.
    pub alerts: AtomicU64,
    /// Records sent to dead letters.
    pub dead_letters: AtomicU64,
    /// Input records whose outputs are all delivered and whose offset is stored.
    pub acknowledged: AtomicU64,
    /// Rebalance callbacks served (assign and revoke each count).
    pub rebalances: AtomicU64,
    /// Records re-applied to restored state without outputs (answered before a crash).
    pub replayed: AtomicU64,
    /// Input partitions this worker owns now (goes down on revoke).
    pub partitions: AtomicU64,
    /// Partitions whose state cannot be saved now: they take no records (their committed
    /// offsets stand still) and retry the snapshot. Non-zero means unhealthy.
    pub state_failing: AtomicU64,
    /// Failed snapshot writes (each retry counts).
    pub state_write_failures: AtomicU64,
    /// Times a paused partition saved its state again and carried on.
    pub state_recoveries: AtomicU64,
    /// Partitions assigned with a committed offset beyond their last record, resumed at the end.
    pub past_end_resets: AtomicU64,
    /// The last state failure's message, while one lasts (for `/health`).
    pub state_error: Mutex<Option<String>>,
}

impl WorkerStats {
    /// Why the worker is unhealthy, if it is: state that cannot be saved.
    pub fn unhealthy_reason(&self) -> Option<String> {
        let failing = self.state_failing.load(Ordering::Relaxed);
        (failing > 0).then(|| {
            let cause = self.state_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
            format!("state of {failing} partition(s) cannot be saved; their offsets are held: {cause}")
        })
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Input records taken.
    pub consumed: u64,
    /// Readings scored.
    pub scored: u64,
    /// Alerts emitted.
    pub alerts: u64,
    /// Dead letters emitted.
    pub dead_letters: u64,
    /// Input records acknowledged (outputs delivered, offset stored).
    pub acknowledged: u64,
    /// Rebalance callbacks served.
    pub rebalances: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl WorkerStats {
    /// The counters now.
    pub fn summary(&self, elapsed: Duration) -> RunSummary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RunSummary {
            consumed: g(&self.consumed),
            scored: g(&self.scored),
            alerts: g(&self.alerts),
            dead_letters: g(&self.dead_letters),
            acknowledged: g(&self.acknowledged),
            rebalances: g(&self.rebalances),
            elapsed,
        }
    }
}

/// A worker to be run, with its counters and state store.
pub struct Worker {
    /// Checked configuration.
    config: Config,
    /// Counters shared with whoever watches.
    stats: Arc<WorkerStats>,
    /// State store seam.
    hooks: Arc<dyn StateHooks>,
    /// Run the pipelines (see [`Worker::without_scoring`]).
    scoring: bool,
}

impl Worker {
    /// A worker with in-memory state only.
    pub fn new(config: Config) -> Self {
        Self { config, stats: Arc::default(), hooks: Arc::new(NoState), scoring: true }
    }

    /// Bypass the detectors: every valid reading is still decoded, validated, routed to its
    /// sensor's pipeline slot and answered with a `ScoredReading`, but with score 0 and
    /// detector "none". For measuring the worker's own cost (benches/worker_throughput.rs);
    /// deliberately not a config key.
    pub fn without_scoring(mut self) -> Self {
        self.scoring = false;
        self
    }

    /// Use `hooks` to restore and snapshot partition state.
    pub fn with_state(mut self, hooks: Arc<dyn StateHooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Live counters (clone the `Arc` before calling [`Worker::run`]).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Check the topics, join the group and process until `shutdown` resolves or a fatal
    /// error; then stop consuming, drain deliveries, commit and leave the group.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<RunSummary, WorkerError> {
        let started = Instant::now();
        let k = &self.config.kafka;
        let partitions = admin::ensure_output_topics(k).await?;
        tracing::info!(topic = %k.input_topic, partitions, group = %k.group_id, detector = self.config.pipeline.detector_name(), "worker starting");
        let shared = Arc::new(Shared {
            topic: k.input_topic.as_str().into(),
            processor: Arc::new(ProcessorConfig {
                factory: self.config.pipeline.clone(),
                limits: self.config.validation.clone(),
                scoring: self.scoring,
            }),
            producer: OutputProducer::new(k)?,
            stats: self.stats.clone(),
            hooks: self.hooks.clone(),
            bounds_reader: crate::state::hooks::tail_config(&crate::kafka::client::admin(k)),
            stop: AtomicBool::new(false),
            fatal: Mutex::new(None),
        });
        let consumer_config = crate::kafka::client::consumer(k);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let driver_shared = shared.clone();
        std::thread::Builder::new()
            .name("onad-driver".into())
            .spawn(move || {
                let r = driver::drive(consumer_config, driver_shared.clone());
                // Everything delivered before the offsets were committed; flush is a formality
                // except after a failure.
                let _ = driver_shared.producer.flush(FLUSH_TIMEOUT);
                let _ = done_tx.send(r);
            })
            .map_err(|e| WorkerError::Thread(e.to_string()))?;
        tokio::pin!(shutdown);
        let mut done_rx = done_rx;
        let driven = tokio::select! {
            r = &mut done_rx => r,
            () = &mut shutdown => {
                tracing::info!("shutdown requested: draining");
                shared.stop.store(true, Ordering::Release);
                done_rx.await
            }
        };
        let driven = driven.map_err(|_| WorkerError::Thread("driver thread ended without a result".into()))?;
        let fatal = shared.fatal.lock().ok().and_then(|mut f| f.take());
        driven?;
        if let Some(e) = fatal {
            return Err(e);
        }
        let summary = self.stats.summary(started.elapsed());
        tracing::info!(?summary, "worker stopped");
        Ok(summary)
    }
}

/// Run a worker with `config` until `shutdown` resolves. See [`Worker::run`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<RunSummary, WorkerError> {
    Worker::new(config).run(shutdown).await
}
