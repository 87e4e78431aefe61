//! Rate limiting per reading `source` (the producing client), as token buckets.
//!
//! Each source has a GCRA token bucket (governor): `rate_limit.per_minute` readings a minute
//! on average, `rate_limit.burst` at once. A reading above its source's rate is not dropped:
//! it becomes a dead letter of kind `RATE_LIMITED` with a reason naming the source and the
//! limit, like every other rejection.
//!
//! # Time: the reading's timestamp, not the wall clock
//! A bucket refills by the readings' own `timestamp_ms`, not by the time the worker sees
//! them. The wall clock would make the decision depend on how fast the worker happens to read
//! (a backlog consumed after an outage would be rate-limited although it was produced at a
//! normal rate) and would make a replay of the same offsets decide differently. With the
//! record's time, the same partition read from the same state decides the same way. The cost:
//! a producer sets its own timestamps, so it could claim time passes faster than it does; the
//! timestamp check of validation (`validation.max_future_ms`) bounds how far ahead it may
//! claim, which bounds what it gains. A timestamp earlier than the bucket's last one refills
//! nothing (no credit for going back in time).
//!
//! # Scope and memory
//! Buckets live in the partition's processor, one set per input partition (partitions run on
//! their own threads; a bucket shared between them would decide by thread timing, not by the
//! log). A source writing to P partitions may so send up to P times the limit in total. At
//! most `rate_limit.max_sources` buckets are kept per partition, least recently used evicted:
//! an evicted source starts again with a full bucket, a flood of made-up sources costs a
//! bounded amount of memory. Buckets are not part of snapshots: after a restore or a restart,
//! every source starts with a full bucket.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use lru::LruCache;

use super::validate::{Rejection, SecurityEvent};
use crate::proto::ErrorKind;

pub use crate::config::DEFAULT_MAX_SOURCES;
/// Longest part of a source name quoted in a dead letter's reason.
const SHOWN_SOURCE_CHARS: usize = 64;

pub use crate::config::RateLimitConfig;

/// The clock of every bucket: the timestamp of the reading being checked.
#[derive(Debug, Clone, Default)]
struct RecordClock(Arc<AtomicU64>);

impl Clock for RecordClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, RecordClock, NoOpMiddleware<Duration>>;

/// One partition's buckets.
pub struct SourceLimiter {
    /// The quota of every bucket; `None` when rate limiting is off.
    quota: Option<Quota>,
    /// What the rejection reason quotes.
    per_minute: u32,
    /// Burst, as configured (for the reason).
    burst: u32,
    /// Set to each reading's timestamp before its bucket is asked.
    clock: RecordClock,
    /// Source -> its bucket, bounded.
    buckets: LruCache<String, Bucket>,
}

impl std::fmt::Debug for SourceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLimiter").field("per_minute", &self.per_minute).field("sources", &self.buckets.len()).finish()
    }
}

impl SourceLimiter {
    /// Buckets for `config` (none kept when rate limiting is off).
    pub fn new(config: &RateLimitConfig) -> Self {
        let quota = NonZeroU32::new(config.per_minute).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(rate);
            Quota::per_minute(rate).allow_burst(burst)
        });
        let cap = NonZeroUsize::new(config.max_sources).unwrap_or(NonZeroUsize::MIN);
        Self {
            quota,
            per_minute: config.per_minute,
            burst: if config.burst == 0 { config.per_minute } else { config.burst },
            clock: RecordClock::default(),
            buckets: LruCache::new(cap),
        }
    }

    /// Take one token from `source`'s bucket at `timestamp_ms` (the reading's time), or the
    /// `RATE_LIMITED` rejection when it is empty.
    pub fn check(&mut self, source: &str, timestamp_ms: i64) -> Result<(), Rejection> {
        let Some(quota) = self.quota else { return Ok(()) };
        self.clock.0.store(u64::try_from(timestamp_ms).unwrap_or(0), Ordering::Relaxed);
        if !self.buckets.contains(source) {
            self.buckets.push(source.to_string(), RateLimiter::direct_with_clock(quota, self.clock.clone()));
        }
        let allowed = self.buckets.get(source).is_none_or(|b| b.check().is_ok());
        if allowed {
            return Ok(());
        }
        let shown: String = source.chars().take(SHOWN_SOURCE_CHARS).collect();
        Err(Rejection::new(
            ErrorKind::RateLimited,
            format!(
                "source {shown:?} is above validation.rate_limit.per_minute = {} (burst {}) at timestamp_ms {timestamp_ms}",
                self.per_minute, self.burst
            ),
        )
        .security(SecurityEvent::RateLimited))
    }

    /// Buckets held now (at most `max_sources`).
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, burst: u32, max_sources: usize) -> SourceLimiter {
        SourceLimiter::new(&RateLimitConfig { per_minute, burst, max_sources })
    }

    #[test]
    fn off_by_default_lets_everything_through() {
        let mut l = SourceLimiter::new(&RateLimitConfig::default());
        assert!((0..10_000).all(|_| l.check("s", 0).is_ok()));
        assert_eq!(l.sources(), 0);
    }

    #[test]
    fn a_burst_passes_then_the_excess_is_rate_limited_naming_the_source() {
        let mut l = limiter(60, 5, 10);
        let passed = (0..20).filter(|_| l.check("plc-7", 1_000_000).is_ok()).count();
        assert_eq!(passed, 5);
        let e = l.check("plc-7", 1_000_000).unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert!(e.message.contains("plc-7") && e.message.contains("rate_limit.per_minute = 60"), "{e}");
        // Another source has its own bucket.
        assert!(l.check("plc-8", 1_000_000).is_ok());
    }

    #[test]
    fn buckets_refill_by_the_readings_timestamps_not_the_wall_clock() {
        let mut l = limiter(60, 1, 10);
        assert!(l.check("s", 1_000_000).is_ok());
        assert!(l.check("s", 1_000_500).is_err(), "half a second later at 1/s");
        assert!(l.check("s", 1_001_000).is_ok(), "a second later by the reading's clock");
        // Going back in time earns nothing.
        assert!(l.check("s", 0).is_err());
    }

    #[test]
    fn the_same_readings_decide_the_same_way_every_time() {
        let run = || {
            let mut l = limiter(120, 3, 4);
            (0..500i64).map(|i| l.check(["a", "b", "c"][(i % 3) as usize], 1_000_000 + i * 97).is_ok()).collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.iter().any(|ok| !ok) && first.iter().any(|ok| *ok));
    }

    #[test]
    fn a_flood_of_distinct_sources_keeps_at_most_max_sources_buckets() {
        let mut l = limiter(60, 1, 100);
        for i in 0..100_000 {
            assert!(l.check(&format!("src-{i}"), 1_000_000).is_ok());
        }
        assert_eq!(l.sources(), 100);
    }
}
