//! The `spill` column family: pipelines evicted to keep the memory budget
//! (`partition::resident`), `stream ++ key` -> envelope([`Kind::Model`]), the same bytes a
//! snapshot stores.
//!
//! Scratch, not state: a row is a sensor's pipeline as of its eviction, possibly ahead of
//! the partition's last snapshot, so no restore ever reads it. Its only readers are the
//! incarnation that wrote it: the reload on the sensor's next reading, and the snapshots,
//! which copy the rows of the sensors not resident ([`StateStore::write_merged`]; no eviction
//! runs while a snapshot waits to be written, so the copied rows are states at or before its
//! offset). On assignment the rows are cleared ([`StateStore::clear_spill`]) before a
//! snapshot is restored. Written with the WAL (a reopen after a failed write must not lose
//! them) but not synced: a crash makes them worthless anyway. A bloom filter makes the
//! lookup of a sensor that was never evicted (every new sensor) cheap.

use rocksdb::{BlockBasedOptions, DBIteratorWithThreadMode, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use super::{stream_prefix, StateStore, CF_SPILL};
use crate::state::codec::{self, Kind};
use crate::state::{SnapshotInfo, StateError};

/// Bits per key of the family's bloom filter.
const BLOOM_BITS: f64 = 10.0;

/// Memtable size of the `spill` family: evictions are a steady trickle of small rows, and
/// memtables count against the worker's RSS (the default 64 MiB, twice, would be a quarter
/// of a 512 MiB budget).
const SPILL_WRITE_BUFFER: usize = 8 << 20;

/// Options of the `spill` family: point lookups, so a bloom filter; small memtables; the
/// block cache the families share.
pub(super) fn cf_options(cache: &rocksdb::Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(BLOOM_BITS, false);
    let mut o = Options::default();
    o.set_write_buffer_size(SPILL_WRITE_BUFFER);
    o.set_block_based_table_factory(&table);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o
}

fn spill_key(topic: &str, partition: i32, key: &str) -> Vec<u8> {
    let mut k = stream_prefix(topic, partition);
    k.extend_from_slice(key.as_bytes());
    k
}

/// A spill row: key without the partition prefix, value.
type Row = (Vec<u8>, Box<[u8]>);

/// A partition's spill rows in key order, merged into a snapshot being written.
pub(super) struct Rows<'d> {
    /// Prefix of the partition's rows.
    prefix: Vec<u8>,
    /// The iterator, `None` when not merging or exhausted.
    iter: Option<DBIteratorWithThreadMode<'d, DB>>,
    /// The next row (key without the prefix, value).
    next: Option<Row>,
    /// For errors.
    topic: String,
    /// For errors.
    partition: i32,
}

impl<'d> Rows<'d> {
    /// The rows of `topic`/`partition`, or none when `merge` is false.
    pub(super) fn new(db: &'d DB, topic: &str, partition: i32, merge: bool) -> Self {
        let prefix = stream_prefix(topic, partition);
        let iter = merge.then(|| db.iterator_cf(StateStore::cf(db, CF_SPILL), IteratorMode::From(&prefix, Direction::Forward)));
        Self { prefix, iter, next: None, topic: topic.into(), partition }
    }

    fn peek(&mut self) -> Result<Option<&Row>, StateError> {
        if self.next.is_none() {
            if let Some(iter) = self.iter.as_mut() {
                match iter.next() {
                    Some(Ok((k, v))) if k.starts_with(&self.prefix) => self.next = Some((k[self.prefix.len()..].to_vec(), v)),
                    Some(Err(source)) => return Err(StateError::Read { topic: self.topic.clone(), partition: self.partition, source }),
                    _ => self.iter = None,
                }
            }
        }
        Ok(self.next.as_ref())
    }

    /// Put every row with a key below `key`; drop the row of `key` itself (the resident
    /// pipeline is newer).
    pub(super) fn put_before(&mut self, key: &[u8], put: &mut impl FnMut(&[u8], &[u8])) -> Result<(), StateError> {
        while let Some((k, v)) = self.peek()? {
            match k.as_slice().cmp(key) {
                std::cmp::Ordering::Less => put(k, v),
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => break,
            }
            self.next = None;
        }
        Ok(())
    }

    /// Put every remaining row.
    pub(super) fn put_rest(&mut self, put: &mut impl FnMut(&[u8], &[u8])) -> Result<(), StateError> {
        while let Some((k, v)) = self.peek()? {
            put(k, v);
            self.next = None;
        }
        Ok(())
    }
}

impl StateStore {
    /// Write these evicted pipelines (already in their envelopes) of `topic`/`partition`.
    pub fn spill(&self, topic: &str, partition: i32, rows: &[(String, Vec<u8>)]) -> Result<(), StateError> {
        self.recover()?;
        let err = |source| StateError::Write { topic: topic.into(), partition, offset: -1, source };
        self.with_db(|db| {
            let cf = Self::cf(db, CF_SPILL);
            let mut batch = WriteBatch::default();
            for (k, v) in rows {
                batch.put_cf(cf, spill_key(topic, partition, k), v);
            }
            db.write_opt(batch, &WriteOptions::default()).map_err(|e| {
                self.failed.store(true, std::sync::atomic::Ordering::Release);
                err(e)
            })
        })
    }

    /// The evicted pipeline of `key` (checked envelope bytes), if there is one.
    pub fn unspill(&self, topic: &str, partition: i32, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let raw = self.with_db(|db| {
            db.get_cf(Self::cf(db, CF_SPILL), spill_key(topic, partition, key)).map_err(|source| StateError::Read {
                topic: topic.into(),
                partition,
                source,
            })
        })?;
        let Some(raw) = raw else { return Ok(None) };
        codec::open(Kind::Model, &raw).map_err(|source| StateError::Corrupt {
            topic: topic.into(),
            partition,
            offset: -1,
            key: Some(key.into()),
            source,
        })?;
        Ok(Some(raw))
    }

    /// Delete `key`'s evicted pipeline.
    pub fn forget_spilled(&self, topic: &str, partition: i32, key: &str) -> Result<(), StateError> {
        self.recover()?;
        self.with_db(|db| {
            db.delete_cf(Self::cf(db, CF_SPILL), spill_key(topic, partition, key)).map_err(|source| StateError::Write {
                topic: topic.into(),
                partition,
                offset: -1,
                source,
            })
        })
    }

    /// Delete every evicted pipeline of `topic`/`partition` (on assignment, before restoring:
    /// they belong to an earlier incarnation and may be ahead of any snapshot).
    pub fn clear_spill(&self, topic: &str, partition: i32) -> Result<(), StateError> {
        self.recover()?;
        let prefix = stream_prefix(topic, partition);
        self.with_db(|db| {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(Self::cf(db, CF_SPILL), &prefix, &super::prefix_end(&prefix));
            db.write(batch).map_err(|source| StateError::Write { topic: topic.into(), partition, offset: -1, source })
        })
    }

    /// As [`StateStore::write_encoded`] with the resident pipelines `models` (in key order),
    /// and the partition's evicted pipelines: a full snapshot of a partition under a memory
    /// budget, still all or nothing (written in chunks, meta record last: [`super`]).
    pub fn write_merged(&self, topic: &str, partition: i32, offset: i64, models: &[(String, Vec<u8>)]) -> Result<SnapshotInfo, StateError> {
        self.write_merged_rows(topic, partition, offset, models.iter().cloned().map(Ok))
    }

    /// As [`StateStore::write_merged`], the resident rows as they come (in key order).
    pub fn write_merged_rows<I>(&self, topic: &str, partition: i32, offset: i64, models: I) -> Result<SnapshotInfo, StateError>
    where
        I: IntoIterator<Item = Result<(String, Vec<u8>), StateError>>,
    {
        self.write_rows(topic, partition, offset, models, true, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: u64) -> Vec<u8> {
        codec::encode(Kind::Model, &v).expect("encodes")
    }

    #[test]
    fn a_snapshot_holds_resident_and_evicted_models_and_a_cleared_spill_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), 3).expect("opens");
        store.spill("t", 1, &[("a".into(), env(1)), ("b".into(), env(2)), ("d".into(), env(4))]).expect("spilled");
        store.spill("t", 2, &[("other".into(), env(9))]).expect("spilled");
        assert_eq!(store.unspill("t", 1, "b").expect("reads"), Some(env(2)));
        assert_eq!(store.unspill("t", 1, "zz").expect("reads"), None);

        // b was reloaded and changed (resident wins), c is resident only.
        let info = store.write_merged("t", 1, 41, &[("b".into(), env(20)), ("c".into(), env(3))]).expect("written");
        assert_eq!(info.keys, 4);
        let snap = store.restore::<u64>("t", 1, None).expect("reads").snapshot.expect("a snapshot");
        assert_eq!(snap.info.offset, 41);
        let got: Vec<(&str, u64)> = snap.models.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(got, vec![("a", 1), ("b", 20), ("c", 3), ("d", 4)], "the full state, other partitions' rows not mixed in");

        store.forget_spilled("t", 1, "a").expect("deleted");
        assert_eq!(store.unspill("t", 1, "a").expect("reads"), None);
        store.clear_spill("t", 1).expect("cleared");
        assert_eq!(store.unspill("t", 1, "d").expect("reads"), None);
        assert_eq!(store.unspill("t", 2, "other").expect("reads"), Some(env(9)), "only that partition's rows");
        let info = store.write_merged("t", 1, 50, &[("c".into(), env(5))]).expect("written");
        assert_eq!(info.keys, 1);
    }

    #[test]
    fn a_corrupt_evicted_row_is_an_error_not_a_fresh_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), 3).expect("opens");
        let mut bad = env(7);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        store.spill("t", 0, &[("k".into(), bad)]).expect("spilled");
        let err = store.unspill("t", 0, "k").expect_err("corrupt");
        assert!(err.to_string().contains("\"k\""), "{err}");
    }
}
