//! Which sensors' pipelines a partition holds in memory, under the worker's memory budget
//! (`memory_limit_mb`, [`crate::ops::memory::MemoryBudget`]).
//!
//! # What is counted
//! Per resident sensor: the heap bytes its pipeline holds, plus [`PER_KEY_BYTES`] and three
//! times the key's length for the map entries and key strings. In the binary the heap bytes
//! are measured ([`crate::ops::heap`]: the net allocation of building or loading the
//! pipeline and of each reading it learns); without the counting allocator they are
//! estimated as the pipeline's encoded size times [`HEAP_FACTOR`], re-measured on load, after
//! the first reading and every [`REMEASURE_EVERY`] readings.
//!
//! # Eviction
//! After each batch, while the worker is over budget, the partition writes its
//! least-recently-used sensors to a [`ColdStore`] (the state store's `spill` column family)
//! and drops them from memory; the next reading of such a sensor loads it back first. A
//! pipeline is plain data, so the reloaded one continues exactly: scores are bit-identical to
//! never evicting. The LRU order is by reading, per partition; the budget is the worker's, so
//! a busy partition evicts its own sensors while the worker as a whole is over.
//!
//! # Why a crash cannot apply a record twice
//! The spill is scratch memory, not state: its rows hold a sensor's pipeline as of its
//! eviction, which may be ahead of the last snapshot. So:
//! 1. A snapshot at offset S is a full copy of the partition: the resident pipelines as
//!    encoded at S, plus the spill rows of the sensors not resident then (a delta: the
//!    changed ones of each). While a snapshot is encoded and waiting for its outputs to be
//!    delivered, the sensors whose spill rows it will read are not evicted
//!    ([`ColdStore::retain_evictable`]), so every spill row read into it is a state at or
//!    before S (a sensor reloaded since keeps its old row, unchanged, until it is evicted
//!    again). Every other sensor may be: the snapshot holds its row as encoded at S (which
//!    wins over the spill), or does not need it. The encoded snapshot's bytes are charged to
//!    the budget while it waits ([`ColdStore::pending_bytes`]), so eviction makes room for
//!    them; so are the keys changed since the last snapshot (a set of up to
//!    `checkpoint_interval` keys per partition).
//! 2. Spill rows are read back only by the incarnation that wrote them: on assignment the
//!    partition's spill is cleared before a snapshot is restored, unless the worker continues
//!    with the models it parked itself on revoke (then the spill still belongs to them).
//!
//! So after a crash the state is exactly snapshot S and replaying S + 1.. applies every
//! record once; an evicted sensor's newer row never stands in for its state at S.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::KeyPipeline;
use crate::error::StateFailure;
use crate::ops::memory::MemoryBudget;
use crate::telemetry::stats::PartitionStats;

/// Heap bytes per encoded byte of a pipeline, for the estimate without the counting
/// allocator (Vec capacities reserved up front make a fresh pipeline far larger in memory).
pub const HEAP_FACTOR: f64 = 4.0;
/// Bytes per resident sensor besides its pipeline's heap: its (key, pipeline) slot in the
/// models' BTreeMap (inline, ~1,540 bytes), twice over: sensors arrive in id order and come
/// back in LRU order, so node splits leave the B-tree's nodes about half full (measured 1.84
/// x the slot in `btree_slots_take_about_twice_their_size`; the 1.5 charged before left ~90
/// MB uncounted at a million sensors, BENCHMARKS.md); plus the LRU's HashMap and BTreeMap
/// entries and the key strings' allocations (256).
pub const PER_KEY_BYTES: u64 = ((std::mem::size_of::<String>() + std::mem::size_of::<KeyPipeline>()) * 2) as u64 + 256;
/// A sensor's size is measured again after this many of its readings.
pub const REMEASURE_EVERY: u64 = 64;
/// Evictions are written in batches of at most this many sensors.
const EVICT_BATCH: usize = 512;

/// Where evicted pipelines go (implemented over the state store by `kafka::recovery`).
pub trait ColdStore: Send {
    /// Of `victims` (least recently used first), keep those that may be evicted now: while a
    /// snapshot is encoded and waits for its outputs to be delivered, not the sensors whose
    /// evicted rows it will read (see the module docs).
    fn retain_evictable(&self, victims: &mut Vec<(&str, &KeyPipeline)>);
    /// Heap bytes of this partition's encoded snapshot waiting to be written: charged to the
    /// budget while it waits, so that eviction makes room for it.
    fn pending_bytes(&self) -> u64 {
        0
    }
    /// Write these pipelines (one batch). On error nothing is dropped from memory.
    fn evict(&mut self, models: &[(&str, &KeyPipeline)]) -> Result<(), StateFailure>;
    /// The evicted pipeline of `key`, if it has one.
    fn reload(&mut self, key: &str) -> Result<Option<KeyPipeline>, StateFailure>;
    /// Drop `key`'s evicted pipeline (its model starts over).
    fn forget(&mut self, key: &str) -> Result<(), StateFailure>;
}

/// One resident sensor's bookkeeping.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Its last use, in this partition's ticks.
    tick: u64,
    /// Accounted bytes.
    bytes: u64,
}

/// The LRU order and byte accounting of one partition's resident pipelines.
pub struct Resident {
    /// The worker's budget.
    budget: Arc<MemoryBudget>,
    /// Where evicted pipelines go; `None`: nothing is evicted.
    cold: Option<Box<dyn ColdStore>>,
    /// Gauges and counters for telemetry.
    stats: Arc<PartitionStats>,
    /// Key -> bookkeeping.
    entries: HashMap<String, Entry>,
    /// Tick -> key, oldest first.
    order: BTreeMap<u64, String>,
    /// Next tick.
    tick: u64,
    /// Bytes this partition accounted in the budget for its pipelines.
    bytes: u64,
    /// Bytes accounted in the budget for its snapshot bookkeeping: the encoded snapshot
    /// waiting to be written and the set of keys changed since the last one.
    pending: u64,
    /// Keys with a cold row that are not resident.
    cold_only: u64,
    /// Over budget without a cold store was reported.
    warned: bool,
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resident").field("keys", &self.entries.len()).field("bytes", &self.bytes).finish()
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        // The models leave this partition (parked or dropped): the budget gets them back.
        self.budget.sub(self.bytes + self.pending);
    }
}

impl Resident {
    /// Bookkeeping against `budget`, evicting to `cold` (if any), reporting to `stats`.
    pub fn new(budget: Arc<MemoryBudget>, cold: Option<Box<dyn ColdStore>>, stats: Arc<PartitionStats>) -> Self {
        Self {
            budget,
            cold,
            stats,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            pending: 0,
            cold_only: 0,
            warned: false,
        }
    }

    /// Bytes of `key` besides its pipeline's heap.
    fn overhead(key: &str) -> u64 {
        PER_KEY_BYTES + 3 * key.len() as u64
    }

    /// Estimated bytes of `kp` from its encoded size (see the module docs), counted without
    /// writing the encoding out.
    fn measure(key: &str, kp: &KeyPipeline) -> u64 {
        let encoded = postcard::serialize_with_flavor(kp, postcard::ser_flavors::Size::default()).unwrap_or_default();
        (encoded as f64 * HEAP_FACTOR) as u64 + Self::overhead(key)
    }

    /// Track a pipeline now in memory (new, restored or reloaded); `heap`: the net bytes
    /// allocated building or loading it, when measured.
    pub fn insert(&mut self, key: &str, kp: &KeyPipeline, heap: Option<i64>) {
        let bytes = match heap.filter(|_| crate::ops::heap::active()) {
            Some(h) => h.max(0) as u64 + Self::overhead(key),
            None => Self::measure(key, kp),
        };
        self.tick += 1;
        if let Some(old) = self.entries.insert(key.to_string(), Entry { tick: self.tick, bytes }) {
            self.order.remove(&old.tick);
            self.release(old.bytes);
        }
        self.order.insert(self.tick, key.to_string());
        self.account(bytes);
    }

    /// `key` was used (a reading was scored, its pipeline's heap changed by `heap` bytes):
    /// it becomes the most recent.
    pub fn touch(&mut self, key: &str, kp: &KeyPipeline, heap: i64) {
        let measured = crate::ops::heap::active();
        let remeasure = !measured && (kp.processed == 1 || kp.processed % REMEASURE_EVERY == 0);
        let mut bytes = if remeasure { Some(Self::measure(key, kp)) } else { None };
        if measured && heap != 0 {
            bytes = self.entries.get(key).map(|e| e.bytes.saturating_add_signed(heap).max(Self::overhead(key)));
        }
        self.tick += 1;
        let tick = self.tick;
        let Some(e) = self.entries.get_mut(key) else { return };
        if let Some(key) = self.order.remove(&e.tick) {
            self.order.insert(tick, key);
        }
        e.tick = tick;
        if let Some(new) = bytes {
            let old = std::mem::replace(&mut e.bytes, new);
            self.release(old);
            self.account(new);
        }
    }

    /// `key`'s model starts over: forget it here and in the cold store (an error means its
    /// old evicted row may come back on its next reading).
    pub fn remove(&mut self, key: &str) -> Result<(), StateFailure> {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.tick);
            self.release(e.bytes);
        }
        match self.cold.as_mut() {
            Some(cold) => cold.forget(key),
            None => Ok(()),
        }
    }

    /// Load `key`'s evicted pipeline back, if it has one.
    pub fn reload(&mut self, key: &str) -> Result<Option<KeyPipeline>, StateFailure> {
        let Some(cold) = self.cold.as_mut() else { return Ok(None) };
        let h0 = crate::ops::heap::net();
        let Some(kp) = cold.reload(key)? else { return Ok(None) };
        let heap = crate::ops::heap::net() - h0;
        self.cold_only = self.cold_only.saturating_sub(1);
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        self.insert(key, &kp, Some(heap));
        Ok(Some(kp))
    }

    /// While the worker is over budget, write this partition's least-recently-used pipelines
    /// to the cold store and drop them from `models`. Returns how many were evicted.
    /// `changed`: heap bytes of the partition's set of keys changed since its last snapshot,
    /// charged to the budget (with the snapshot waiting to be written, if any).
    pub fn keep_budget(&mut self, models: &mut BTreeMap<String, KeyPipeline>, changed: u64) -> Result<usize, StateFailure> {
        let mut evicted = 0;
        if let Some(cold) = self.cold.as_ref() {
            // The snapshot waiting to be written (or none now) and the changed keys: their
            // charge follows them.
            let pending = cold.pending_bytes() + changed;
            self.budget.add(pending);
            self.budget.sub(std::mem::replace(&mut self.pending, pending));
        }
        while self.budget.over() && !self.entries.is_empty() {
            let Some(cold) = self.cold.as_mut() else {
                self.warned = true;
                break;
            };
            // Free what the worker is over by, plus 1% of the budget so that a full worker
            // does not write one sensor per reading.
            let target = self.budget.used().saturating_sub(self.budget.limit()) + self.budget.limit() / 100;
            let (mut freed, mut victims) = (0u64, Vec::new());
            for key in self.order.values() {
                if freed >= target || victims.len() >= EVICT_BATCH {
                    break;
                }
                if let (Some(e), Some(kp)) = (self.entries.get(key), models.get(key)) {
                    freed += e.bytes;
                    victims.push((key.as_str(), kp));
                }
            }
            // Each round evicts at least one sensor or stops: no loop without progress.
            cold.retain_evictable(&mut victims);
            if victims.is_empty() {
                break;
            }
            cold.evict(&victims)?;
            let keys: Vec<String> = victims.into_iter().map(|(k, _)| k.to_string()).collect();
            for key in keys {
                models.remove(&key);
                if let Some(e) = self.entries.remove(&key) {
                    self.order.remove(&e.tick);
                    self.release(e.bytes);
                }
                self.cold_only += 1;
                evicted += 1;
            }
        }
        self.stats.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        self.publish();
        Ok(evicted)
    }

    /// Over budget with nothing to evict to (no state store): report once.
    pub fn take_warning(&mut self) -> bool {
        std::mem::take(&mut self.warned) && self.cold.is_none()
    }

    /// Write the gauges.
    pub fn publish(&self) {
        let resident = self.entries.len() as u64;
        self.stats.models_resident.store(resident, Ordering::Relaxed);
        self.stats.models.store(resident + self.cold_only, Ordering::Relaxed);
        self.stats.model_bytes.store(self.bytes, Ordering::Relaxed);
    }

    /// Bytes this partition accounts in the budget now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes the worker's budget accounts now, over every partition (for the debug log that
    /// compares it with the allocator's figures).
    pub fn budget_used(&self) -> u64 {
        self.budget.used()
    }

    /// Pipelines in memory.
    pub fn resident(&self) -> usize {
        self.entries.len()
    }

    /// The bytes accounted for `key`, if it is resident.
    pub fn bytes_of(&self, key: &str) -> Option<u64> {
        self.entries.get(key).map(|e| e.bytes)
    }

    /// Keys from least to most recently used (tests).
    pub fn lru_order(&self) -> Vec<&str> {
        self.order.values().map(String::as_str).collect()
    }

    fn account(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.budget.add(bytes);
    }

    fn release(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
        self.budget.sub(bytes);
    }
}

#[cfg(test)]
#[path = "resident_tests.rs"]
mod tests;
