//! The keys whose pipelines changed since a partition's last snapshot: the bookkeeping of
//! incremental snapshots, kept beside the models ([`super::Models::changed`]) and charged to
//! the memory budget.

/// Keys changed since the last snapshot was encoded. Interior mutability: the state hooks
/// take it through the `&Models` they are given when they encode a snapshot.
#[derive(Debug, Default)]
pub struct Changed(std::sync::Mutex<ChangedKeys>);

/// What [`Changed`] holds.
#[derive(Debug, Default, Clone)]
pub struct ChangedKeys {
    /// Sensors whose pipeline changed (scored a reading, or was created).
    pub keys: std::collections::BTreeSet<String>,
    /// A pipeline was dropped: the next snapshot must be full (deltas do not delete keys).
    pub all: bool,
    /// Heap bytes `keys` holds, estimated ([`CHANGED_KEY_BYTES`] a key besides its bytes):
    /// charged to the memory budget (at a million sensors, ~100,000 keys per partition).
    pub bytes: u64,
}

/// Heap bytes per key of [`ChangedKeys::keys`] besides the key's own: its `String` in a
/// B-tree node (24 bytes; keys marked in id order leave nodes about half full: ~45 bytes, as
/// measured for the models' map in `tests/memory_budget.rs`) and the allocation's header and
/// rounding.
pub const CHANGED_KEY_BYTES: u64 = 72;

impl Changed {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChangedKeys> {
        // Plain data: a panic elsewhere cannot leave it half-updated in a way that matters.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `key`'s pipeline changed.
    pub fn mark(&self, key: &str) {
        let mut c = self.lock();
        if !c.keys.contains(key) {
            c.keys.insert(key.to_string());
            c.bytes += key.len() as u64 + CHANGED_KEY_BYTES;
        }
    }

    /// Heap bytes held ([`ChangedKeys::bytes`]).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// A pipeline was dropped.
    pub fn mark_all(&self) {
        self.lock().all = true;
    }

    /// Take what changed, leaving nothing.
    pub fn take(&self) -> ChangedKeys {
        std::mem::take(&mut *self.lock())
    }
}

impl Clone for Changed {
    fn clone(&self) -> Self {
        Self(std::sync::Mutex::new(self.lock().clone()))
    }
}

impl PartialEq for Changed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
