//! The consumer driver and rebalance coordination.
//!
//! The driver thread polls the consumer's main queue, which serves the group protocol and
//! runs the rebalance callbacks below on that thread:
//! - assign: each partition's queue is split off *before* librdkafka starts fetching it (so
//!   no record of it can land on the main queue) and handed to a new partition thread;
//! - revoke: every revoked partition's thread is told to stop, finishes its records in hand,
//!   waits for their deliveries and stores their offsets; then the stored offsets are committed
//!   and only then does the callback return, so the next owner starts exactly after what was
//!   delivered. The partition's models are parked in case it comes back to this worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use super::offsets;
use super::task::{Assigned, PartitionTask, Shared, TaskExit};
use crate::error::WorkerError;
use crate::partition::{resume, Models};

/// The worker's consumer type.
pub type Consumer = BaseConsumer<WorkerContext>;

/// How long the driver waits on the main queue before checking for shutdown.
const DRIVER_POLL: Duration = Duration::from_millis(100);

/// A running partition thread.
struct Running {
    /// Tells the thread to finish.
    stop: Arc<AtomicBool>,
    /// The thread; yields the partition's models.
    thread: JoinHandle<TaskExit>,
}

/// Consumer context: serves rebalances by starting and stopping partition threads.
pub struct WorkerContext {
    /// The consumer itself (set right after creation), to split partition queues.
    consumer: OnceLock<Weak<Consumer>>,
    /// Everything partition threads share.
    shared: Arc<Shared>,
    /// Partitions this worker owns now.
    running: Mutex<BTreeMap<i32, Running>>,
    /// Models of partitions revoked from this worker, in case they come back.
    parked: Mutex<BTreeMap<i32, Models>>,
    /// The bootstrap servers (named when no broker is reachable).
    bootstrap: String,
}

impl WorkerContext {
    /// A context over `shared`, for a consumer of `bootstrap`.
    pub fn new(shared: Arc<Shared>, bootstrap: String) -> Self {
        Self { consumer: OnceLock::new(), shared, running: Mutex::new(BTreeMap::new()), parked: Mutex::new(BTreeMap::new()), bootstrap }
    }

    /// Start a thread for each newly assigned partition, before librdkafka fetches it.
    /// May set a partition's start offset in `tpl` (when the state store asks to).
    fn assign(&self, consumer: &Consumer, tpl: &mut TopicPartitionList) {
        let Some(me) = self.consumer.get().and_then(Weak::upgrade) else { return };
        let topic = self.shared.topic.clone();
        let Ok(mut running) = self.running.lock() else { return };
        let new: Vec<i32> = tpl.elements_for_topic(&topic).iter().map(|e| e.partition()).filter(|p| !running.contains_key(p)).collect();
        let mut committed = offsets::committed(consumer, &topic, &new);
        let mut clamped = std::collections::BTreeSet::new();
        // A group committed past the last record (an offset reset beyond the end) would wait
        // there in silence while every reading produced meanwhile is skipped. The rule: such
        // a partition resumes at its end, as if the group had committed the end, and says so.
        match super::bounds::past_end(&self.shared.bounds_reader, &topic, &committed) {
            Ok(past) => {
                for (p, end) in past {
                    let c = committed.get(&p).copied().flatten();
                    tracing::error!(topic = %topic, partition = p, committed = ?c, end, "the group's committed offset is beyond the partition's last record: resuming at the end, so no new reading is skipped");
                    self.shared.stats.past_end_resets.fetch_add(1, Ordering::Relaxed);
                    committed.insert(p, Some(end));
                    clamped.insert(p);
                }
            }
            Err(e) => tracing::warn!(cause = %e, "cannot check the committed offsets against the partitions' ends"),
        }
        let committed = |p: i32| committed.get(&p).copied().flatten();
        // Models kept from an earlier ownership continue only if the group resumes exactly
        // after the last record they learned; otherwise another member has moved on.
        let parked: Vec<Option<Models>> = new
            .iter()
            .map(|p| self.parked.lock().ok().and_then(|mut all| all.remove(p)).filter(|m| resume::parked_continues(m, committed(*p))))
            .collect();
        // Restoring state and reading output tails take about a second per partition, mostly
        // waiting on the broker: do the partitions side by side, not one after another.
        let (hooks, outputs) = (&self.shared.hooks, &self.shared.outputs);
        // The restore spans of the assignment threads belong to this rebalance's span.
        let rebalance = tracing::Span::current();
        let resumes: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = new
                .iter()
                .zip(parked)
                .map(|(&p, parked)| {
                    let (topic, rebalance) = (&topic, &rebalance);
                    std::thread::Builder::new().name(format!("onad-assign-p{p}")).spawn_scoped(scope, move || {
                        // First the producer: a transactional one fences the partition's
                        // previous owner, so the output tails read next cannot grow behind
                        // this worker's back.
                        let out = outputs.for_partition(p)?;
                        Ok::<_, KafkaError>((out, rebalance.in_scope(|| hooks.on_assign(topic, p, parked, committed(p)))))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.map_err(|e| e.to_string())
                        .and_then(|h| h.join().map_err(|_| "panicked".to_string()))
                        .and_then(|r| r.map_err(|e| format!("output producer: {e}")))
                })
                .collect()
        });
        for (partition, resume) in new.into_iter().zip(resumes) {
            let committed = committed(partition);
            let (out, resume) = match resume {
                Ok(r) => r,
                Err(e) => {
                    self.shared.fail(WorkerError::Thread(format!("restoring partition {partition}: {e}")));
                    return;
                }
            };
            // A partition resumed at its end starts there (see `resume::at_end`).
            let resume = match committed {
                Some(end) if clamped.contains(&partition) => resume::at_end(resume, end),
                _ => resume,
            };
            if let Some(start) = resume.start_at {
                if let Err(e) = offsets::start_at(tpl, &topic, partition, start) {
                    self.shared.fail(WorkerError::Kafka(e));
                    return;
                }
            }
            let Some(queue) = me.split_partition_queue(&topic, partition) else {
                self.shared.fail(WorkerError::SplitQueue { topic: topic.to_string(), partition });
                return;
            };
            let stop = Arc::new(AtomicBool::new(false));
            let start_at = resume.start_at;
            let task =
                PartitionTask::new(queue, me.clone(), self.shared.clone(), Assigned { partition, resume, committed, out }, stop.clone());
            match std::thread::Builder::new().name(format!("onad-p{partition}")).spawn(move || task.run()) {
                Ok(thread) => {
                    tracing::info!(topic = %topic, partition, ?committed, ?start_at, "partition assigned");
                    running.insert(partition, Running { stop, thread });
                    self.shared.stats.partitions.fetch_add(1, Ordering::Relaxed);
                    // Unknown until librdkafka's next statistics.
                    self.shared.stats.partition(&topic, partition).lag.store(-1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.shared.fail(WorkerError::Thread(e.to_string()));
                    return;
                }
            }
        }
    }

    /// Stop the threads of `partitions` (all when `None`), wait for them, park their models.
    /// Returns how many were stopped.
    fn stop_partitions(&self, partitions: Option<&[i32]>) -> usize {
        let taken: Vec<(i32, Running)> = {
            let Ok(mut running) = self.running.lock() else { return 0 };
            let keys: Vec<i32> = match partitions {
                Some(ps) => ps.iter().copied().filter(|p| running.contains_key(p)).collect(),
                None => running.keys().copied().collect(),
            };
            keys.into_iter().filter_map(|p| running.remove(&p).map(|r| (p, r))).collect()
        };
        // Signal all first, so that they drain in parallel.
        for (_, r) in &taken {
            r.stop.store(true, Ordering::Release);
        }
        let n = taken.len();
        self.shared.stats.partitions.fetch_sub(n as u64, Ordering::Relaxed);
        for (partition, r) in taken {
            let joined = r.thread.join();
            // After the join: the thread may touch its stats until it returns.
            self.shared.stats.forget_partition(&self.shared.topic, partition);
            match joined {
                Ok(exit) => {
                    // A thread that failed has already reported it; its models are not parked.
                    if exit.error.is_some() {
                        continue;
                    }
                    // Given up after a stall: its models may be ahead of what was delivered.
                    if exit.fenced {
                        tracing::info!(partition, "partition released after a stall; its models are dropped");
                        continue;
                    }
                    if let Ok(mut parked) = self.parked.lock() {
                        parked.insert(partition, exit.models);
                    }
                    tracing::info!(partition, stored = ?exit.stored, "partition released");
                }
                Err(_) => self.shared.fail(WorkerError::Thread(format!("partition {partition} thread panicked"))),
            }
        }
        n
    }

    /// Stop every partition thread and commit what they stored (shutdown).
    pub fn stop_all(&self, consumer: &Consumer) {
        if self.stop_partitions(None) > 0 {
            offsets::commit_stored(consumer);
        }
    }
}

impl ClientContext for WorkerContext {
    // Consumer lag per assigned partition, for `/metrics` and `/ready` (librdkafka's own
    // `consumer_lag`, not the broker's watermarks: design.md).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&*self.shared.topic) else { return };
        let Ok(assigned) = self.shared.stats.per_partition.lock() else { return };
        for (p, s) in &topic.partitions {
            if let Some(stats) = assigned.get(&(self.shared.topic.to_string(), *p)) {
                stats.lag.store(s.consumer_lag, Ordering::Relaxed);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        if matches!(error.rdkafka_error_code(), Some(Code::AllBrokersDown | Code::BrokerTransportFailure)) {
            super::probe::mark_down(&self.shared.stats, &self.bootstrap, reason);
            tracing::warn!(cause = %error, reason, "kafka client error");
        } else {
            tracing::error!(cause = %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for WorkerContext {
    // Replaces rdkafka's default so that the assignment list can carry start offsets; the
    // assign/unassign calls are the ones the default makes.
    fn rebalance(&self, consumer: &Consumer, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        self.shared.stats.rebalances.fetch_add(1, Ordering::Relaxed);
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let kind = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => "assign",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => "revoke",
            _ => "error",
        };
        let listed: Vec<i32> = tpl.elements_for_topic(&self.shared.topic).iter().map(|e| e.partition()).collect();
        let span = crate::telemetry::otel::rebalance_span(kind, &self.shared.topic, &listed);
        let _in_span = span.enter();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, tpl);
                let r = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                match r {
                    Ok(()) => self.shared.stats.group_joined.store(true, Ordering::Relaxed),
                    Err(e) => self.shared.fail(WorkerError::Kafka(e)),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let ps: Vec<i32> = tpl.elements_for_topic(&self.shared.topic).iter().map(|e| e.partition()).collect();
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?ps, lost, "partitions revoked");
                // Until the next assignment the worker is not a member doing work.
                self.shared.stats.group_joined.store(false, Ordering::Relaxed);
                if self.stop_partitions(Some(&ps)) > 0 && !lost {
                    offsets::commit_stored(consumer);
                }
                let r = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    tracing::warn!(cause = %e, "unassign failed");
                }
            }
            other => {
                tracing::warn!(code = ?other, "rebalance error; dropping the assignment");
                self.shared.stats.group_joined.store(false, Ordering::Relaxed);
                self.stop_partitions(None);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Create the consumer, subscribe, and run the driver loop on the calling thread until
/// `shared.stop` is set; then stop every partition (drain, commit) and leave the group.
pub fn drive(config: rdkafka::ClientConfig, shared: Arc<Shared>) -> Result<(), WorkerError> {
    let bootstrap = config.get("bootstrap.servers").unwrap_or_default().to_string();
    let consumer: Arc<Consumer> = Arc::new(config.create_with_context(WorkerContext::new(shared.clone(), bootstrap.clone()))?);
    // Set once, right after creation: nothing else can have set it.
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    consumer.subscribe(&[&shared.topic])?;
    let probe =
        super::probe::spawn(Arc::downgrade(&consumer), shared.clone(), bootstrap).map_err(|e| WorkerError::Thread(e.to_string()))?;
    while !shared.stop.load(Ordering::Acquire) {
        let polled = consumer.poll(DRIVER_POLL);
        shared.stats.last_poll_ms.store(crate::telemetry::health::now_ms(), Ordering::Relaxed);
        match polled {
            None => {}
            Some(Ok(m)) => {
                // Every assigned partition's queue is split off before it is fetched, so this
                // is a bug; stop rather than process the record out of its partition's order.
                use rdkafka::Message as _;
                shared.fail(WorkerError::MainQueueRecord { partition: m.partition(), offset: m.offset() });
            }
            Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                shared.fail(WorkerError::Kafka(KafkaError::MessageConsumptionFatal(code)))
            }
            Some(Err(e)) => tracing::warn!(cause = %e, "consumer error"),
        }
    }
    consumer.context().stop_all(&consumer);
    consumer.unsubscribe();
    shared.stats.group_joined.store(false, Ordering::Relaxed);
    // The probe sees `stop` within one metadata timeout and lets go of the consumer.
    let _ = probe.join();
    // Dropping the last handle closes the consumer: it leaves the group at once, so the
    // partitions move to another member without waiting for the session timeout.
    drop(consumer);
    Ok(())
}
