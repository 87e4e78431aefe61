//! Test helpers that damage or rewrite stored values (corruption and incomplete snapshots).

use super::{snapshot_prefix, SnapshotInfo, StateStore, CF_META, CF_MODELS};

impl StateStore {
    /// Overwrite one stored model's bytes (tests that simulate corruption on disk).
    #[cfg(test)]
    pub(crate) fn put_raw_model(&self, info: &SnapshotInfo, key: &str, bytes: &[u8]) {
        let mut k = snapshot_prefix(&info.topic, info.partition, info.offset);
        k.extend_from_slice(key.as_bytes());
        self.with_db(|db| {
            db.put_cf(Self::cf(db, CF_MODELS), &k, bytes).expect("test write");
            Ok(())
        })
        .expect("open store");
    }

    /// Delete one stored model (tests of incomplete snapshots).
    #[cfg(test)]
    pub(crate) fn delete_raw_model(&self, info: &SnapshotInfo, key: &str) {
        let mut k = snapshot_prefix(&info.topic, info.partition, info.offset);
        k.extend_from_slice(key.as_bytes());
        self.with_db(|db| {
            db.delete_cf(Self::cf(db, CF_MODELS), &k).expect("test delete");
            Ok(())
        })
        .expect("open store");
    }

    /// Overwrite a snapshot's metadata bytes (tests).
    #[cfg(test)]
    pub(crate) fn put_raw_meta(&self, info: &SnapshotInfo, bytes: &[u8]) {
        let k = snapshot_prefix(&info.topic, info.partition, info.offset);
        self.with_db(|db| {
            db.put_cf(Self::cf(db, CF_META), &k, bytes).expect("test write");
            Ok(())
        })
        .expect("open store");
    }
}
