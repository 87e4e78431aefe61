//! A partition thread's wall clock, read through the monotonic clock (see [`WallClock`]).

use std::time::Instant;

use crate::partition::now_ms;

/// The wall clock read through the monotonic one: a record's `now_ms` is the anchor's wall
/// time plus the [`Instant`] elapsed since, so a record costs one clock reading (the stall
/// check's) instead of three (perf: `clock_gettime` was ~1.5% of the worker's samples in each
/// partition thread). Anchored again every poll round (a batch: at most `task::MAX_BATCH` records,
/// milliseconds), so a step of the wall clock shows from the next batch on.
pub struct WallClock {
    /// Wall time at `at`, ms since the Unix epoch.
    ms: i64,
    /// When `ms` was read.
    at: Instant,
}

impl WallClock {
    /// Anchored now.
    pub fn now() -> Self {
        Self { ms: now_ms(), at: Instant::now() }
    }

    /// Wall time at `t` (not before the anchor), ms since the Unix epoch.
    pub fn ms_at(&self, t: Instant) -> i64 {
        self.ms.saturating_add(t.saturating_duration_since(self.at).as_millis() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wall_time_advances_with_the_monotonic_clock_from_the_anchor() {
        let clock = WallClock { ms: 1_700_000_000_000, at: Instant::now() };
        assert_eq!(clock.ms_at(clock.at), 1_700_000_000_000);
        assert_eq!(clock.ms_at(clock.at + Duration::from_millis(1500)), 1_700_000_001_500);
        // An instant read before the anchor (another thread's) counts as the anchor.
        assert_eq!(clock.ms_at(clock.at.checked_sub(Duration::from_millis(5)).unwrap_or(clock.at)), 1_700_000_000_000);
        let real = WallClock::now();
        assert!((real.ms_at(Instant::now()) - now_ms()).abs() < 1000, "anchored on the wall clock");
    }
}
