//! The worker's live counters: plain atomics the hot path bumps, read by `/metrics`
//! ([`super::metrics`]), `/health` and the [`RunSummary`] a run returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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
