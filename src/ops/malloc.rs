//! glibc malloc settings that keep the worker's RSS near what it actually holds.
//!
//! Measured with `malloc_stats()` during the 1M-sensor bench (BENCHMARKS.md, memory budget):
//! glibc gave each busy thread its own arena (up to 8 per core), and memory freed in one
//! arena — pipelines evicted, snapshot and changelog buffers dropped — stayed mapped there
//! while the next allocations grew another: at one point three arenas held 500 MB with 3 MB
//! in use. glibc returns free memory to the system only from the top of a heap; everything
//! else waits for `malloc_trim`. So:
//! - [`tune`] caps the arenas at [`ARENA_MAX`]: freed memory is reused by whichever thread
//!   allocates next instead of sitting in its own thread's arena. The partition threads
//!   mostly allocate from their tcache, so one lock per arena costs little here.
//! - [`tune`] also fixes the mmap threshold at [`MMAP_THRESHOLD`]: glibc's default starts at
//!   128 KiB but rises to the size of any mapped block freed (up to 32 MiB), after which
//!   RocksDB's WriteBatches and memtable arena blocks, librdkafka's buffers and the packed
//!   snapshot rows (`state::packed`) — large and short-lived — came from the heap, between
//!   long-lived pipelines, and left holes there. Mapped on their own, they go back to the
//!   system whole when freed. Measured: peak RSS 1,070 -> 937 MiB at 1M sensors, throughput
//!   unchanged within the noise (BENCHMARKS.md, "Memory budget: RSS").
//! - [`trim_if_due`] hands free pages back (`malloc_trim(0)`, which walks every arena and
//!   `madvise`s whole free pages away) at most once per [`TRIM_EVERY_MS`], called after
//!   evictions and snapshots, the two places that free memory in bulk.
//!
//! With these two, the million-sensor bench fell from ~1.75 GiB to ~1.0 GiB peak RSS
//! together with the other caps (BENCHMARKS.md, "Memory budget: RSS"); what remains free
//! inside the heap is ~100 MB of pages shared by live and free chunks. Other allocators were
//! measured against that and kept worse: mimalloc for the Rust heap +160 MiB peak RSS at 1M
//! sensors; jemalloc (Rust heap only, or the whole process) +60 to +235 MiB in every
//! configuration tried (BENCHMARKS.md, "Memory budget: RSS").
//!
//! Only on glibc targets; elsewhere both are no-ops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `M_ARENA_MAX`: malloc arenas of the process (glibc's default is 8 per core).
pub const ARENA_MAX: i32 = 2;
/// `M_MMAP_THRESHOLD`: allocations of at least this many bytes are mapped on their own (see
/// the module docs). Setting it also stops glibc from raising it.
pub const MMAP_THRESHOLD: i32 = 256 << 10;
/// Least time between two trims, in ms: a trim walks every free chunk of every arena (a few
/// ms at a GB of heap), so it is rationed.
pub const TRIM_EVERY_MS: u64 = 500;

/// When the last trim ran, ms since the epoch.
static LAST_TRIM_MS: AtomicU64 = AtomicU64::new(0);

/// Apply the process-wide malloc settings (call first thing in `main`, before threads start).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Return free heap pages to the system if the last trim is [`TRIM_EVERY_MS`] old. Returns
/// whether this call trimmed.
pub fn trim_if_due() -> bool {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let last = LAST_TRIM_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < TRIM_EVERY_MS || LAST_TRIM_MS.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return false;
    }
    trim();
    true
}

/// Return free heap pages to the system now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` is thread-safe (it takes each arena's lock in turn).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The allocator's own account of the heap (glibc's `mallinfo2`), to tell live data from
/// memory held free inside the heap when RSS is above what the budget explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes in allocated chunks, `mmap`ped ones included.
    pub in_use: u64,
    /// Bytes in free chunks inside the heap (resident or not: a trim `madvise`s whole free
    /// pages away but they stay counted here).
    pub free: u64,
}

/// The heap's [`HeapStats`] (walks every arena: call it as rarely as [`trim_if_due`] trims).
/// `None` off glibc.
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` only reads the allocator's counters (under its arena locks).
        let m = unsafe { libc::mallinfo2() };
        Some(HeapStats { in_use: (m.uordblks + m.hblkhd) as u64, free: m.fordblks as u64 })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_are_rationed_to_one_per_interval() {
        tune();
        LAST_TRIM_MS.store(0, Ordering::Relaxed);
        assert!(trim_if_due(), "the first trim runs");
        assert!(!trim_if_due(), "a second one within {TRIM_EVERY_MS} ms does not");
    }

    #[test]
    fn heap_stats_see_a_live_allocation() {
        // The counters are the process's: the other tests' threads allocate and free between
        // two readings (a CI run saw 1.4 MB go in between), so the allocation must show, and
        // go with its drop, in one of a few tries rather than in a single pair of readings.
        const BIG: u64 = 8 << 20;
        const SLACK: u64 = 1 << 20;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let before = heap_stats().expect("glibc").in_use;
            let big = std::hint::black_box(vec![1u8; BIG as usize]);
            let during = heap_stats().expect("glibc").in_use;
            drop(big);
            let after = heap_stats().expect("glibc").in_use;
            if during + SLACK >= before + BIG && after + BIG <= during + SLACK {
                return;
            }
            seen.push((before, during, after));
        }
        panic!("an 8 MiB allocation never showed in the heap's in-use bytes (before, during, after): {seen:?}");
    }
}
