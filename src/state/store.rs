//! The RocksDB snapshot store: one database per worker, a bounded history of atomic
//! partition snapshots.
//!
//! # Key layout
//! Two column families; `stream` = input topic, a 0 byte (Kafka topic names cannot contain
//! one), and the partition as a big-endian u32, so that keys sort by partition and then by
//! offset, and one partition's snapshots are a contiguous range.
//! - `meta`: `stream ++ (offset + 1)(u64 BE)` -> envelope([`Kind::SnapshotMeta`]): time, key count,
//!   bytes. Its presence is what makes a snapshot exist.
//! - `models`: `stream ++ (offset + 1)(u64 BE) ++ key` -> envelope([`Kind::Model`]): one key's model.
//! - `spill`: `stream ++ key` -> envelope([`Kind::Model`]): pipelines evicted to keep the
//!   memory budget; scratch, never part of a restore ([`spill`]).
//!
//! A snapshot is written in WriteBatches of about [`SNAPSHOT_CHUNK_BYTES`] (a full snapshot at
//! a million sensors is tens of MB: one batch would be that much more RSS), its meta record
//! last: the meta record's presence is what makes a snapshot exist, so a crash (or an error)
//! between chunks leaves rows nobody reads, and the state is the previous complete snapshot.
//! The first chunk deletes what a new snapshot at offset O replaces below it (an earlier one
//! at O, meta included, and rows left by an interrupted write since the newest complete
//! snapshot below O); the last one, synced, holds the meta record and the deletion of the
//! snapshots it supersedes (those above O, their rows and any left-over rows above O, and the
//! oldest past the history). Synced last means all of it is durable: the WAL is written in
//! order. The newest snapshot is always the one written last, which is what `replay --state
//! keep` (models relabelled at an earlier offset) needs.
//! A snapshot is a full copy or a delta of an earlier one (only the keys changed since):
//! [`chain`] says how they are resolved, kept and fallen back from.
//!
//! # Tuning, for this write pattern
//! Writes are bursts (a whole partition every `checkpoint_interval` readings or
//! `checkpoint_secs`), reads happen only on recovery and are range scans, and old snapshots
//! die whole. So:
//! - WAL on, `sync` on each snapshot write: a snapshot is rare and large, one fsync per
//!   snapshot costs little next to it, and it makes "written" mean "survives power loss".
//!   With the WAL, a WriteBatch across both column families is atomic without `atomic_flush`.
//! - `max_total_wal_size` 64 MiB: the tiny `meta` family would otherwise pin every WAL file
//!   until it is flushed (a WAL file lives until all families' data in it is flushed).
//! - No bloom filters: we never do point lookups, only prefix range scans; filters would
//!   cost memory and write time for nothing. 16 KiB blocks: fewer index entries, and scans
//!   read whole snapshots sequentially anyway.
//! - LZ4 on `models`: nearly free in CPU; float-heavy models compress little, but keys,
//!   thresholds and parameters repeat in every record.
//! - Old snapshots are removed with one range deletion each (a single tombstone instead of
//!   one per key); compaction drops their data. Level compaction with dynamic level sizes.
//! - `max_background_jobs` 2 and `bytes_per_sync` 1 MiB: the machines have 2 cores, and
//!   write-back of large SSTs is smoothed instead of stalling at file close.
//! - Memory, part of the worker's fixed overhead next to `memory_limit_mb` (BENCHMARKS.md):
//!   all memtables together at most [`DB_WRITE_BUFFER_BYTES`] (RocksDB's default is 64 MiB
//!   per family, times two while one flushes), `models` memtables of
//!   [`MODELS_WRITE_BUFFER_BYTES`], and one [`BLOCK_CACHE_BYTES`] block cache shared by the
//!   families (RocksDB's default gives each family its own 32 MiB): reads are the spill's
//!   point lookups, which the bloom filters mostly answer, and restores, which scan once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{ColumnFamily, Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{self, Kind};
use super::StateError;

/// Column family of snapshot metadata.
const CF_META: &str = "meta";
/// Column family of per-key models.
const CF_MODELS: &str = "models";
/// Column family of evicted pipelines (see [`spill`]).
const CF_SPILL: &str = "spill";
/// See the module docs.
const MAX_TOTAL_WAL_BYTES: u64 = 64 << 20;
/// See the module docs.
const BLOCK_BYTES: usize = 16 << 10;
/// Bytes of rows per WriteBatch of a snapshot (module docs): RocksDB copies each batch once
/// more into its memtable, so this bounds the transient copy, not the throughput.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

/// (key bytes, value bytes) as stored.
type RawModels = Vec<(Vec<u8>, Box<[u8]>)>;

/// What is known about one stored snapshot without reading its models.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotInfo {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Last input offset applied to the models (resume at `offset + 1`); -1 for a state
    /// that has applied nothing (written by `replay --state reset` at offset 0).
    pub offset: i64,
    /// When it was written, ms since the epoch.
    pub written_at_ms: u64,
    /// Number of keys stored in this snapshot (a delta: the keys changed since `parent`).
    pub keys: u64,
    /// Bytes of the keys' envelopes stored in this snapshot.
    pub bytes: u64,
    /// The snapshot this one is a delta of; `None` for a full snapshot (see [`chain`]).
    pub parent: Option<i64>,
    /// Deltas between this snapshot and its full base (0 for a full one).
    pub depth: u32,
}

/// A decoded snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T> {
    /// Its metadata.
    pub info: SnapshotInfo,
    /// Every key's model, in key byte order.
    pub models: Vec<(String, T)>,
}

/// The outcome of loading a partition's newest usable snapshot.
#[derive(Debug)]
pub struct Restored<T> {
    /// The newest snapshot that decoded completely, if any. `None` means: rebuild by replay
    /// from the start of the retained input (or the changelog).
    pub snapshot: Option<Snapshot<T>>,
    /// Newer snapshots that were skipped and why (to report, never to crash on).
    pub rejected: Vec<StateError>,
}

/// One worker's state database.
pub struct StateStore {
    /// The database; read-only (or `None`) after a failed write whose reopen failed too.
    db: RwLock<Option<DB>>,
    /// A write failed: RocksDB refuses every later write (its background error stays set;
    /// the Rust API has no `Resume`), so the next write reopens the database first.
    failed: AtomicBool,
    /// Snapshots kept per partition (`state.snapshot_history`).
    history: usize,
    /// Where it lives (for messages).
    path: PathBuf,
    /// Held while a snapshot's WriteBatch is built and written: the partitions of a worker
    /// reach their snapshots together, and RocksDB applies writes one group at a time anyway,
    /// so one batch (and the memtable growth it brings) at a time is what the worker holds
    /// instead of one per partition (the memory budget's fixed overhead, BENCHMARKS.md).
    writing: std::sync::Mutex<()>,
    /// [`SNAPSHOT_CHUNK_BYTES`] (tests use tiny chunks).
    chunk_bytes: usize,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("path", &self.path).field("history", &self.history).finish()
    }
}

/// The key prefix of one input partition.
fn stream_prefix(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

/// The key of a partition's replay epoch in `meta` (its length never parses as a snapshot's).
fn epoch_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = stream_prefix(topic, partition);
    k.extend_from_slice(b"epoch");
    k
}

/// The key prefix of one snapshot.
fn snapshot_prefix(topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut k = stream_prefix(topic, partition);
    // offset + 1, so that -1 ("nothing applied yet": a reset state) sorts first.
    k.extend_from_slice(&((offset + 1) as u64).to_be_bytes());
    k
}

/// Split a meta key into (topic, partition, offset).
fn parse_meta_key(key: &[u8]) -> Option<(String, i32, i64)> {
    let zero = key.iter().position(|b| *b == 0)?;
    let rest = &key[zero + 1..];
    if rest.len() != 12 {
        return None;
    }
    let topic = std::str::from_utf8(&key[..zero]).ok()?.to_string();
    let partition = u32::from_be_bytes(rest[0..4].try_into().ok()?) as i32;
    let offset = u64::from_be_bytes(rest[4..12].try_into().ok()?) as i64 - 1;
    Some((topic, partition, offset))
}

/// The end (exclusive) of the key range starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl StateStore {
    /// Open (creating if needed) the database at `path`, keeping `history` snapshots per
    /// partition. Fails if another process holds it (RocksDB's LOCK file).
    pub fn open(path: &Path, history: usize) -> Result<Self, StateError> {
        if let Err(e) = std::fs::create_dir_all(path) {
            return Err(StateError::CreateDir { path: path.into(), source: e });
        }
        let db = Self::open_db(path)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            failed: AtomicBool::new(false),
            history: history.max(1),
            path: path.into(),
            writing: Default::default(),
            chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        })
    }

    /// Open the database read-only, for inspection while a worker may be running (no lock
    /// is taken). Every write fails with [`StateError::Write`].
    pub fn open_read_only(path: &Path) -> Result<Self, StateError> {
        let db = DB::open_cf_descriptors_read_only(&db_options(), path, existing_descriptors(path), false)
            .map_err(|source| StateError::Open { path: path.into(), source })?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            failed: AtomicBool::new(false),
            history: usize::MAX,
            path: path.into(),
            writing: Default::default(),
            chunk_bytes: SNAPSHOT_CHUNK_BYTES,
        })
    }

    fn open_db(path: &Path) -> Result<DB, StateError> {
        DB::open_cf_descriptors(&db_options(), path, descriptors()).map_err(|source| StateError::Open { path: path.into(), source })
    }

    /// Run `f` on the open database.
    fn with_db<R>(&self, f: impl FnOnce(&DB) -> Result<R, StateError>) -> Result<R, StateError> {
        let guard = self.db.read().map_err(|_| StateError::Closed { path: self.path.clone() })?;
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(StateError::Closed { path: self.path.clone() }),
        }
    }

    /// After a failed write, close and reopen the database (replaying its WAL), so that a
    /// freed disk makes it writable again. A failed reopen leaves it closed, and the next
    /// write tries again.
    fn recover(&self) -> Result<(), StateError> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut guard = self.db.write().map_err(|_| StateError::Closed { path: self.path.clone() })?;
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        // The old instance holds the directory's lock: it must be gone before the reopen.
        drop(guard.take());
        match Self::open_db(&self.path) {
            Ok(db) => {
                *guard = Some(db);
                self.failed.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // Still failing (a full disk cannot even flush the WAL at open): keep what was
                // written readable through a read-only instance until a reopen succeeds.
                *guard = DB::open_cf_descriptors_read_only(&db_options(), &self.path, existing_descriptors(&self.path), false).ok();
                Err(e)
            }
        }
    }

    /// Write `batch` synced; a failure marks the database for reopening.
    fn write_batch(&self, batch: WriteBatch, err: impl FnOnce(rocksdb::Error) -> StateError) -> Result<(), StateError> {
        self.recover()?;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.with_db(|db| {
            db.write_opt(batch, &opts).map_err(|e| {
                self.failed.store(true, Ordering::Release);
                err(e)
            })
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf<'d>(db: &'d DB, name: &str) -> &'d ColumnFamily {
        // Both families are created or required at open.
        db.cf_handle(name).expect("column family opened with the database")
    }

    /// Write a snapshot of `topic`/`partition` holding `models`, having applied every input
    /// offset up to and including `offset`. One atomic, synced WriteBatch, which also drops
    /// any earlier one at the same offset, every snapshot above `offset` (this one is the
    /// partition's state now) and the oldest ones past the history.
    ///
    /// An error means nothing was written: the caller keeps its last successful snapshot as
    /// the limit of what it may commit, and reports unhealthy.
    pub fn write_snapshot<'a, K, T, I>(&self, topic: &str, partition: i32, offset: i64, models: I) -> Result<SnapshotInfo, StateError>
    where
        K: AsRef<str>,
        T: Serialize + 'a,
        I: IntoIterator<Item = (K, &'a T)>,
    {
        let encoded = models.into_iter().map(|(key, model)| {
            let key = key.as_ref();
            codec::encode(Kind::Model, model).map(|v| (key.to_string(), v)).map_err(|source| StateError::Encode {
                partition,
                key: key.into(),
                source,
            })
        });
        self.write_encoded(topic, partition, offset, encoded)
    }

    /// As [`StateStore::write_snapshot`], with models already in their envelopes (as read by
    /// [`StateStore::encoded_models`]): `replay` relabels snapshots without knowing the type.
    pub fn write_encoded<I>(&self, topic: &str, partition: i32, offset: i64, models: I) -> Result<SnapshotInfo, StateError>
    where
        I: IntoIterator<Item = Result<(String, Vec<u8>), StateError>>,
    {
        self.write_rows(topic, partition, offset, models, false, None)
    }

    /// Write a snapshot; with `merge_spill`, the partition's evicted pipelines (its `spill`
    /// rows) are part of it, under the resident ones (`models`, in key order, win). With a
    /// `parent`, `models` are the keys changed since that snapshot: a delta ([`chain`]).
    fn write_rows<I>(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        models: I,
        merge_spill: bool,
        parent: Option<i64>,
    ) -> Result<SnapshotInfo, StateError>
    where
        I: IntoIterator<Item = Result<(String, Vec<u8>), StateError>>,
    {
        if offset < -1 {
            return Err(StateError::InvalidOffset(offset));
        }
        // A poisoned lock only means another writer panicked; the database is still whole.
        let _writing = self.writing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.recover()?;
        let guard = self.db.read().map_err(|_| StateError::Closed { path: self.path.clone() })?;
        let Some(db) = guard.as_ref() else { return Err(StateError::Closed { path: self.path.clone() }) };
        let (meta_cf, models_cf) = (Self::cf(db, CF_META), Self::cf(db, CF_MODELS));
        let depth = chain::depth_after(db, topic, partition, offset, parent)?;
        let prefix = snapshot_prefix(topic, partition, offset);
        let write_err = |source| StateError::Write { topic: topic.into(), partition, offset, source };
        // First chunk: what this snapshot replaces below and at its offset (module docs).
        let below = Self::offsets_in(db, topic, partition)?.into_iter().rfind(|o| *o < offset);
        let mut batch = WriteBatch::default();
        batch.delete_cf(meta_cf, &prefix);
        batch.delete_range_cf(models_cf, snapshot_prefix(topic, partition, below.map_or(-1, |o| o + 1)), prefix_end(&prefix));
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut key_buf = Vec::with_capacity(prefix.len() + 32);
        let mut flushed: Result<(), rocksdb::Error> = Ok(());
        let chunk_bytes = self.chunk_bytes;
        let mut put = |key: &[u8], value: &[u8]| {
            if flushed.is_err() {
                // A chunk failed: the write fails; gather nothing more.
                return;
            }
            key_buf.clear();
            key_buf.extend_from_slice(&prefix);
            key_buf.extend_from_slice(key);
            batch.put_cf(models_cf, &key_buf, value);
            keys += 1;
            bytes += value.len() as u64;
            if batch.size_in_bytes() >= chunk_bytes {
                // Not synced: the last chunk's sync makes every earlier one durable.
                flushed = db.write_opt(std::mem::take(&mut batch), &WriteOptions::default());
            }
        };
        let mut spilled = spill::Rows::new(db, topic, partition, merge_spill);
        for entry in models {
            let (key, value) = entry?;
            spilled.put_before(key.as_bytes(), &mut put)?;
            put(key.as_bytes(), &value);
        }
        spilled.put_rest(&mut put)?;
        drop(spilled);
        if let Err(e) = flushed {
            self.failed.store(true, Ordering::Release);
            return Err(write_err(e));
        }
        let meta = chain::MetaRecord { written_at_ms: now_ms(), keys, bytes, parent, depth };
        let meta_value =
            codec::encode(Kind::SnapshotMeta, &meta).map_err(|source| StateError::Encode { partition, key: String::new(), source })?;
        batch.put_cf(meta_cf, &prefix, &meta_value);
        for doomed in chain::superseded(db, topic, partition, offset, parent, self.history)? {
            Self::delete_snapshot_in(db, &mut batch, topic, partition, doomed);
        }
        // Rows above this snapshot left by an interrupted write: nothing above it survives.
        batch.delete_range_cf(models_cf, prefix_end(&prefix), prefix_end(&stream_prefix(topic, partition)));
        drop(guard);
        self.write_batch(batch, write_err)?;
        Ok(SnapshotInfo { topic: topic.into(), partition, offset, written_at_ms: meta.written_at_ms, keys, bytes, parent, depth })
    }

    /// Every model of a snapshot as its checked envelope bytes (envelopes verified, payloads
    /// not decoded), failing like [`StateStore::load`] on any bad value.
    pub fn encoded_models(&self, info: &SnapshotInfo) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let raw = self.complete_models(info)?;
        raw.into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8_lossy(&k).into_owned();
                match codec::open(Kind::Model, &v) {
                    Ok(_) => Ok((key, v.into_vec())),
                    Err(source) => Err(StateError::Corrupt {
                        topic: info.topic.clone(),
                        partition: info.partition,
                        offset: info.offset,
                        key: Some(key),
                        source,
                    }),
                }
            })
            .collect()
    }

    fn delete_snapshot_in(db: &DB, batch: &mut WriteBatch, topic: &str, partition: i32, offset: i64) {
        let prefix = snapshot_prefix(topic, partition, offset);
        batch.delete_cf(Self::cf(db, CF_META), &prefix);
        batch.delete_range_cf(Self::cf(db, CF_MODELS), &prefix, &prefix_end(&prefix));
    }

    /// Offsets of the stored snapshots of a partition, ascending.
    fn offsets_in(db: &DB, topic: &str, partition: i32) -> Result<Vec<i64>, StateError> {
        let prefix = stream_prefix(topic, partition);
        let mut out = Vec::new();
        for item in db.iterator_cf(Self::cf(db, CF_META), IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, _) = item.map_err(|source| StateError::Read { topic: topic.into(), partition, source })?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Some((_, _, offset)) = parse_meta_key(&k) {
                out.push(offset);
            }
        }
        Ok(out)
    }

    /// Every partition with at least one snapshot: (topic, partition), sorted.
    pub fn partitions(&self) -> Result<Vec<(String, i32)>, StateError> {
        self.with_db(|db| {
            let mut out: Vec<(String, i32)> = Vec::new();
            for item in db.iterator_cf(Self::cf(db, CF_META), IteratorMode::Start) {
                let (k, _) = item.map_err(|source| StateError::Read { topic: String::new(), partition: -1, source })?;
                if let Some((topic, partition, _)) = parse_meta_key(&k) {
                    if out.last() != Some(&(topic.clone(), partition)) {
                        out.push((topic, partition));
                    }
                }
            }
            Ok(out)
        })
    }

    /// The snapshots of a partition, newest first. A snapshot whose metadata is corrupt is
    /// listed as the error (its offset is known from the key).
    pub fn snapshots(&self, topic: &str, partition: i32) -> Result<Vec<Result<SnapshotInfo, StateError>>, StateError> {
        let prefix = stream_prefix(topic, partition);
        self.with_db(|db| {
            let mut out = Vec::new();
            for item in db.iterator_cf(Self::cf(db, CF_META), IteratorMode::From(&prefix, Direction::Forward)) {
                let (k, v) = item.map_err(|source| StateError::Read { topic: topic.into(), partition, source })?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let Some((_, _, offset)) = parse_meta_key(&k) else { continue };
                out.push(chain::decode_meta(&v).map(|m| m.info(topic, partition, offset)).map_err(|source| StateError::Corrupt {
                    topic: topic.into(),
                    partition,
                    offset,
                    key: None,
                    source,
                }));
            }
            out.reverse();
            Ok(out)
        })
    }

    /// Decode every model of a snapshot. Any bad value (or a key count that differs from
    /// the metadata) fails the whole snapshot: a partition is restored consistently or not
    /// at all.
    pub fn load<T: DeserializeOwned>(&self, info: &SnapshotInfo) -> Result<Snapshot<T>, StateError> {
        let raw = self.complete_models(info)?;
        let mut models = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let corrupt = |key: String, source| StateError::Corrupt {
                topic: info.topic.clone(),
                partition: info.partition,
                offset: info.offset,
                key: Some(key),
                source,
            };
            let key = match String::from_utf8(k) {
                Ok(key) => key,
                Err(e) => {
                    return Err(corrupt(
                        String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        codec::CodecError::Payload("key is not UTF-8".into()),
                    ))
                }
            };
            match codec::decode::<T>(Kind::Model, &v) {
                Ok(model) => models.push((key, model)),
                Err(source) => return Err(corrupt(key, source)),
            }
        }
        Ok(Snapshot { info: info.clone(), models })
    }

    /// The newest snapshot of a partition that decodes completely, optionally only among
    /// those at or before `at_or_before` (`replay --state rewind`). Corrupt or incomplete
    /// snapshots are skipped and returned in [`Restored::rejected`]; an error is returned
    /// only when the store cannot be read at all.
    pub fn restore<T: DeserializeOwned>(&self, topic: &str, partition: i32, at_or_before: Option<i64>) -> Result<Restored<T>, StateError> {
        let mut rejected = Vec::new();
        for entry in self.snapshots(topic, partition)? {
            let info = match entry {
                Ok(info) => info,
                Err(e) => {
                    rejected.push(e);
                    continue;
                }
            };
            if at_or_before.is_some_and(|limit| info.offset > limit) {
                continue;
            }
            match self.load(&info) {
                Ok(snapshot) => return Ok(Restored { snapshot: Some(snapshot), rejected }),
                Err(e) => rejected.push(e),
            }
        }
        Ok(Restored { snapshot: None, rejected })
    }

    /// Delete the snapshots of a partition with an offset above `offset` (all of them with
    /// `None`): `replay --state rewind` and `--state reset`. Returns how many were deleted.
    pub fn delete_after(&self, topic: &str, partition: i32, offset: Option<i64>) -> Result<usize, StateError> {
        self.recover()?;
        let (batch, doomed) = self.with_db(|db| {
            let doomed: Vec<i64> =
                Self::offsets_in(db, topic, partition)?.into_iter().filter(|o| offset.is_none_or(|limit| *o > limit)).collect();
            let mut batch = WriteBatch::default();
            for o in &doomed {
                Self::delete_snapshot_in(db, &mut batch, topic, partition, *o);
            }
            Ok((batch, doomed.len()))
        })?;
        if doomed == 0 {
            return Ok(0);
        }
        self.write_batch(batch, |source| StateError::Write { topic: topic.into(), partition, offset: offset.unwrap_or(-1), source })?;
        Ok(doomed)
    }
}

pub mod chain;
mod epoch;
mod options;
use options::{db_options, descriptors, existing_descriptors};
pub use options::{BLOCK_CACHE_BYTES, DB_WRITE_BUFFER_BYTES, MODELS_WRITE_BUFFER_BYTES};
#[cfg(test)]
mod damage;
pub mod spill;
#[cfg(test)]
mod tests;
