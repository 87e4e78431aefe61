//! Whether the whole process was frozen (SIGSTOP, a VM or container stall), as opposed to one
//! partition thread being slow in a call of its own (a changelog publish that waits for a
//! paused broker, a snapshot on a slow disk).
//!
//! Zombie fencing ([`super::task`]) needs the difference: after a freeze longer than the
//! session timeout the group may have given the partition away, so the thread must not
//! produce; a thread that was merely blocked while the process (and librdkafka's heartbeat
//! thread) kept running has lost nothing, and fencing it would turn, say, a failed delivery
//! into a purged one. A watchdog thread ticks every [`TICK`]; a gap between its ticks longer
//! than [`MIN_FREEZE`] is a freeze, recorded with its length and end. After a `SIGCONT` the
//! partition thread may run before the watchdog: then the watchdog's last tick is as old as
//! the freeze, which counts too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often the watchdog ticks.
const TICK: Duration = Duration::from_millis(100);
/// Shortest gap between ticks recorded as a freeze (scheduling delays on a loaded 2-core
/// machine stay far below it).
const MIN_FREEZE: Duration = Duration::from_secs(1);

/// The watchdog's record, in microseconds since `origin`.
struct Watch {
    /// Time zero of the fields below.
    origin: Instant,
    /// The watchdog's last tick.
    last_tick_us: AtomicU64,
    /// When the last freeze ended.
    freeze_end_us: AtomicU64,
    /// How long the last freeze lasted.
    freeze_us: AtomicU64,
}

static WATCH: OnceLock<Watch> = OnceLock::new();

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Start the watchdog (once per process; later calls do nothing).
pub fn start() {
    let mut spawn = false;
    WATCH.get_or_init(|| {
        spawn = true;
        let origin = Instant::now();
        Watch { origin, last_tick_us: AtomicU64::new(0), freeze_end_us: AtomicU64::new(0), freeze_us: AtomicU64::new(0) }
    });
    if spawn {
        let started = std::thread::Builder::new().name("onad-freeze-watch".into()).spawn(|| {
            let Some(w) = WATCH.get() else { return };
            let mut prev = Instant::now();
            loop {
                std::thread::sleep(TICK);
                let now = Instant::now();
                let gap = now.duration_since(prev);
                let at = us(now.duration_since(w.origin));
                if gap > MIN_FREEZE {
                    w.freeze_us.store(us(gap), Ordering::Relaxed);
                    w.freeze_end_us.store(at, Ordering::Release);
                }
                w.last_tick_us.store(at, Ordering::Release);
                prev = now;
            }
        });
        if let Err(e) = started {
            // Without the watchdog every long gap of a partition thread counts as a freeze:
            // safe (no duplicates), at the price of needless fences.
            tracing::warn!(cause = %e, "cannot start the freeze watchdog");
        }
    }
}

/// Whether the process was frozen for longer than `longer_than` at some point since `since`
/// (or may just be waking from such a freeze). Without a running watchdog: always `true`.
pub fn frozen_since(since: Instant, longer_than: Duration) -> bool {
    let Some(w) = WATCH.get() else { return true };
    let now = us(Instant::now().duration_since(w.origin));
    let last_tick = w.last_tick_us.load(Ordering::Acquire);
    if last_tick == 0 || now.saturating_sub(last_tick) > us(longer_than) {
        // The watchdog has not ticked for that long: it is frozen with us, or not running.
        return true;
    }
    let since = us(since.saturating_duration_since(w.origin));
    w.freeze_end_us.load(Ordering::Acquire) > since && w.freeze_us.load(Ordering::Relaxed) > us(longer_than)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_was_only_blocked_is_not_frozen_and_an_unwatched_gap_is() {
        start();
        let since = Instant::now();
        std::thread::sleep(Duration::from_millis(400));
        // The watchdog kept ticking while this thread slept: no freeze longer than 200 ms.
        assert!(!frozen_since(since, Duration::from_millis(200)));
        // A gap the watchdog recorded counts when it ended after `since`.
        let w = WATCH.get().expect("started");
        let now = us(Instant::now().duration_since(w.origin));
        w.freeze_us.store(us(Duration::from_secs(15)), Ordering::Relaxed);
        w.freeze_end_us.store(now, Ordering::Release);
        assert!(frozen_since(since, Duration::from_secs(6)));
        assert!(!frozen_since(Instant::now() + Duration::from_millis(1), Duration::from_secs(6)), "a freeze before `since` does not count");
        assert!(!frozen_since(since, Duration::from_secs(20)), "a freeze shorter than the bound does not count");
    }
}
