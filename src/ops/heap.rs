//! Heap bytes per thread, for the memory budget: a counting wrapper around the system
//! allocator that the binary installs (`src/main.rs`). The budget charges a sensor with the
//! net bytes its pipeline allocated (built, loaded, learning), measured on the partition's
//! thread around those calls: the real footprint, whatever the detector. The encoded size a
//! snapshot stores is no proxy: a fresh z-score pipeline encodes to ~150 bytes and occupies
//! ~2.7 KB (capacities reserved up front).
//!
//! Without the wrapper installed (library users, unit tests), [`active`] is false and the
//! budget falls back to an estimate from the encoded size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// Bytes allocated minus bytes freed by this thread.
    static NET: Cell<i64> = const { Cell::new(0) };
}

/// Bytes the system allocator spends per allocation besides the requested size (glibc's
/// chunk header), counted so that many small allocations are not undercounted.
const PER_ALLOCATION: i64 = 16;

/// Set once the counting allocator has served an allocation.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting each thread's net allocated bytes.
#[derive(Debug, Default)]
pub struct CountingAlloc;

fn add(bytes: i64) {
    // `try_with`: during thread teardown the slot may be gone; those bytes do not matter.
    let _ = NET.try_with(|n| n.set(n.get() + bytes));
}

// SAFETY: every call is forwarded unchanged to `System`; only a thread-local counter (const
// initialised, so it never allocates) is updated besides.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64 + PER_ALLOCATION);
        if !ACTIVE.load(Ordering::Relaxed) {
            ACTIVE.store(true, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64 + PER_ALLOCATION);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64 + PER_ALLOCATION));
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        // SAFETY: as `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Whether the counting allocator is installed.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// This thread's net allocated bytes so far (0 without the counting allocator).
pub fn net() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}
