//! The worker's memory budget (`memory_limit_mb`): one accountant shared by every partition
//! of a worker, so that partitions share the budget instead of each getting a fixed slice.
//!
//! Each partition adds and removes the estimated bytes of the pipelines it holds in memory
//! (`partition::resident`); when the sum is over the limit, the partitions that are taking
//! records evict their least-recently-used sensors until it is under again. An atomic is
//! enough: the sum may overshoot by what other partitions added since the last check, which
//! is bounded by one batch of new sensors per partition.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes in a MiB (`memory_limit_mb` counts MiB).
const MIB: u64 = 1 << 20;

/// A byte budget shared by the partitions of one worker.
#[derive(Debug)]
pub struct MemoryBudget {
    /// The limit in bytes; `u64::MAX` for none.
    limit: u64,
    /// Bytes accounted now.
    used: AtomicU64,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self::unlimited()
    }
}

impl MemoryBudget {
    /// A budget of `mb` MiB.
    pub fn from_mb(mb: u64) -> Self {
        Self::from_bytes(mb.saturating_mul(MIB))
    }

    /// A budget of `bytes` (tests use tiny ones).
    pub fn from_bytes(bytes: u64) -> Self {
        Self { limit: bytes, used: AtomicU64::new(0) }
    }

    /// No limit: nothing is ever evicted.
    pub fn unlimited() -> Self {
        Self::from_bytes(u64::MAX)
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes accounted now, over every partition.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether more is accounted than the limit allows.
    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    /// Account `bytes` more.
    pub fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Account `bytes` less (never below 0: a partition only returns what it added).
    pub fn sub(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| Some(u.saturating_sub(bytes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_share_one_limit() {
        let b = MemoryBudget::from_bytes(100);
        b.add(60);
        assert!(!b.over());
        b.add(60);
        assert!(b.over(), "two partitions together exceed the worker's budget");
        b.sub(60);
        assert!(!b.over());
        b.sub(1000);
        assert_eq!(b.used(), 0);
        assert_eq!(MemoryBudget::from_mb(512).limit(), 512 << 20);
    }
}
