//! The worker's live counters: plain atomics the hot path bumps, read by `/metrics`
//! ([`super::metrics`]), `/health` and the [`RunSummary`] a run returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A rejected reading that points at a hostile or broken producer rather than a detector
/// concern (`onad_security_events_total{kind}`); each is also a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityEvent {
    /// Its source was above `validation.rate_limit`.
    RateLimited,
    /// A record, id or feature set above a size limit.
    Oversized,
    /// A sensor id with characters outside the allowed set.
    SensorId,
    /// A feature name too long or with characters outside the allowed set.
    FeatureName,
    /// A value outside `validation.min_value`..`max_value`.
    ValueRange,
    /// A timestamp beyond `validation.max_future_ms` / `max_past_ms`.
    Timestamp,
}

impl SecurityEvent {
    /// Metric label values, in declaration order.
    pub const NAMES: [&'static str; 6] = ["rate_limited", "oversized", "sensor_id", "feature_name", "value_range", "timestamp"];

    /// Its label value.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
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
    /// The consumer has joined its group and holds an assignment (set by the rebalance
    /// callbacks; an empty assignment still counts as joined).
    pub group_joined: AtomicBool,
    /// Unix time (ms) of the consumer's last poll of its main queue; 0 before the first.
    pub last_poll_ms: AtomicU64,
    /// Unix time (ms) since which no broker has been reachable; 0 while one is.
    pub broker_down_since_ms: AtomicU64,
    /// Why the worker is going down, once a fatal error was seen (for `/ready`).
    pub fatal_reason: Mutex<Option<String>>,
    /// Per assigned partition: the state `/ready` and `/metrics` report. Entries are
    /// created on assignment ([`WorkerStats::partition`]) and removed on revocation.
    pub per_partition: Mutex<BTreeMap<(String, i32), Arc<PartitionStats>>>,
    /// Times a partition thread found itself stalled past the session timeout (the process
    /// was frozen) and held its outputs until the group confirmed or revoked its partition.
    pub stall_fences: AtomicU64,
    /// Times a partition started over (state store, output tails, committed offset) because
    /// outputs timed out undelivered or were purged (`kafka::reread`).
    pub delivery_rereads: AtomicU64,
    /// Output transactions committed (`kafka.transactional_outputs`).
    pub transactions_committed: AtomicU64,
    /// Output transactions that failed (their outputs timed out or were refused, or another
    /// producer fenced this one): the partition starts over, or is given up when another
    /// member fenced it.
    pub transactions_failed: AtomicU64,
    /// Labelled counters and histograms, observed where they happen (`telemetry::metrics`).
    pub instruments: super::metrics::Instruments,
    /// Time spent processing batches (first record taken to last record handled), µs; with
    /// `consumed`, the average processing time per record the ops monitor judges.
    pub processing_us: AtomicU64,
}

/// What one assigned partition reports (gauges; written by its owner, read by telemetry).
#[derive(Debug, Default)]
pub struct PartitionStats {
    /// Consumer lag in records, from librdkafka's statistics (`consumer_lag`); -1 unknown.
    pub lag: std::sync::atomic::AtomicI64,
    /// Sensor pipelines of this partition (in memory and evicted).
    pub models: AtomicU64,
    /// Sensor pipelines held in memory now.
    pub models_resident: AtomicU64,
    /// Bytes of the resident pipelines' state (their encoded size).
    pub model_bytes: AtomicU64,
    /// Pipelines written to the store and dropped from memory to keep the budget.
    pub evictions: AtomicU64,
    /// Evicted pipelines loaded back on their sensor's next reading.
    pub reloads: AtomicU64,
    /// Circuit breakers open now (their pipelines are scored by the fallback).
    pub breakers_open: AtomicU64,
    /// Circuit breakers half-open now: open with their trial due (the partition's event time
    /// passed their `open_timeout`); counted in `breakers_open` too.
    pub breakers_half_open: AtomicU64,
    /// Readings scored by a fallback detector (`degraded = true`).
    pub degraded: AtomicU64,
    /// Unix time (ms) of the last snapshot written; 0 before the first.
    pub last_snapshot_ms: AtomicU64,
    /// Duration of the last snapshot write, microseconds.
    pub last_snapshot_us: AtomicU64,
    /// Bytes of the last snapshot written.
    pub last_snapshot_bytes: AtomicU64,
}

impl WorkerStats {
    /// The stats of an assigned partition, created on first use (call on assignment).
    pub fn partition(&self, topic: &str, partition: i32) -> Arc<PartitionStats> {
        let mut map = self.per_partition.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((topic.to_string(), partition)).or_default().clone()
    }

    /// Forget a partition's stats (call on revocation).
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let mut map = self.per_partition.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(topic.to_string(), partition));
    }

    /// The assigned partitions' stats now, in (topic, partition) order.
    pub fn partitions_now(&self) -> Vec<((String, i32), Arc<PartitionStats>)> {
        let map = self.per_partition.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Why the worker is unhealthy, if it is: state that cannot be saved.
    pub fn unhealthy_reason(&self) -> Option<String> {
        let failing = self.state_failing.load(Ordering::Relaxed);
        (failing > 0).then(|| {
            let cause = self.state_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default();
            format!("state of {failing} partition(s) cannot be saved; their offsets are held: {cause}")
        })
    }

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
