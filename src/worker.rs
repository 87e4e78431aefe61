//! The worker as a library call: [`run`] (or [`Worker`] for counters and a state store) joins
//! the consumer group and processes until `shutdown` resolves, then stops consuming, drains
//! deliveries, commits and returns. `onad-stream run`, the demo and the tests all use this.
//!
//! The composition root of the data path: it wires the configuration, the state seam
//! ([`StateHooks`]) and the counters ([`WorkerStats`]) into [`crate::kafka`]'s driver; it is
//! imported only by `cli` (and the crate root's re-exports).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::WorkerError;
use crate::kafka::admin;
use crate::kafka::driver;
use crate::kafka::producer::Outputs;
use crate::kafka::task::Shared;
use crate::partition::{NoState, ProcessorConfig, StateHooks};
use crate::telemetry::{RunSummary, WorkerStats};

/// How long shutdown waits for the producer's last deliveries.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

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
            processor: Arc::new(ProcessorConfig::new(&self.config, self.scoring)),
            outputs: Outputs::new(k)?,
            transaction_interval: Duration::from_millis(k.transaction_interval_ms),
            stats: self.stats.clone(),
            hooks: self.hooks.clone(),
            bounds_reader: crate::kafka::bounds::reader(k),
            session_timeout: Duration::from_millis(k.session_timeout_ms),
            delivery_retry: Duration::from_millis(k.delivery_retry_ms),
            stop: AtomicBool::new(false),
            fatal: Mutex::new(None),
        });
        let consumer_config = crate::kafka::client::bounded_prefetch(crate::kafka::client::consumer(k), self.config.memory_limit_mb);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let driver_shared = shared.clone();
        std::thread::Builder::new()
            .name("onad-driver".into())
            .spawn(move || {
                let r = driver::drive(consumer_config, driver_shared.clone());
                // Everything delivered before the offsets were committed; flush is a formality
                // except after a failure.
                let _ = driver_shared.outputs.flush(FLUSH_TIMEOUT);
                // Let go of the shared state before saying done: otherwise this (detached)
                // thread could hold its last reference and close the producers and the state
                // store while `run` returns and the process exits around it (a worker once
                // died of SIGSEGV after its summary line). The caller then drops it itself.
                drop(driver_shared);
                let _ = done_tx.send(r);
            })
            .map_err(|e| WorkerError::Thread(e.to_string()))?;
        tokio::pin!(shutdown);
        let mut done_rx = done_rx;
        let fatal_exit_after = Duration::from_millis(k.fatal_exit_after_ms);
        let driven = tokio::select! {
            r = &mut done_rx => r,
            () = &mut shutdown => {
                tracing::info!("shutdown requested: draining");
                shared.stop.store(true, Ordering::Release);
                done_rx.await
            }
            () = fatal_seen(&shared) => {
                // The drain may hang (deliveries and the group leave wait on the broker that
                // failed): bounded, so the orchestrator restarts the worker promptly. Offsets
                // never pass undelivered outputs, so a restart re-reads what was not delivered.
                match tokio::time::timeout(fatal_exit_after, &mut done_rx).await {
                    Ok(r) => r,
                    Err(_) => {
                        let e = shared.fatal.lock().ok().and_then(|mut f| f.take());
                        tracing::error!(after = ?fatal_exit_after, "fatal error: exiting without finishing the drain");
                        return Err(e.unwrap_or_else(|| WorkerError::Thread("fatal error; drain did not finish".into())));
                    }
                }
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

/// How often [`Worker::run`] looks for a fatal error recorded by a Kafka thread.
const FATAL_CHECK: Duration = Duration::from_millis(100);

/// Resolves once a fatal error has been recorded (the threads have been told to stop).
async fn fatal_seen(shared: &Shared) {
    loop {
        if shared.fatal.lock().map(|f| f.is_some()).unwrap_or(true) {
            return;
        }
        tokio::time::sleep(FATAL_CHECK).await;
    }
}

/// Run a worker with `config` until `shutdown` resolves. See [`Worker::run`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<RunSummary, WorkerError> {
    Worker::new(config).run(shutdown).await
}
