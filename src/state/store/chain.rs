//! Incremental snapshots: a snapshot is either *full* (every key of the partition) or a
//! *delta* of an earlier snapshot, its `parent` (only the keys changed since). The state at a
//! delta is its chain resolved: the full base's rows, overlaid by each delta's rows, oldest
//! first. At a million sensors a snapshot then writes the sensors that read since the last
//! one, not all of them.
//!
//! Why a base+delta chain rather than one row per key carrying its last offset: the store's
//! other duties stay as they were. Each snapshot is still all or nothing under its own
//! offset (rows + meta, or nothing); an older snapshot is still an exact earlier state, so
//! `replay --state rewind` and the fallback past a corrupt snapshot keep working; and rows
//! never mix states of different offsets (per-key rows would hold, after an eviction or a
//! crash, keys at several offsets, and restore would need a per-key replay filter).
//!
//! # What changes for history and corruption
//! - Which snapshots are kept: the `history` newest (as before), plus every snapshot their
//!   chains need (down to their full bases), plus, when those all share one base (and
//!   `history` > 1), one older independent chain: the newest snapshot older than that base,
//!   with its own ancestors. A corrupt base takes down every delta on it, so that chain is
//!   what the fallback reaches then. With full snapshots only, nothing changes.
//! - A snapshot is restored if every member of its chain is whole (key counts as recorded,
//!   every envelope valid); otherwise it is rejected like a corrupt full snapshot was, and
//!   the next older one is tried.
//! - Deltas never delete keys: a worker whose sensor's model was dropped (a detector panic)
//!   writes a full snapshot next. The policy (`state::policy::Checkpoints`) also writes a
//!   full one after `state.full_snapshot_every` deltas ([`MAX_DEPTH`] by default), when the parent is not a local snapshot (state from
//!   the changelog) and after a failed write.
//!
//! Metadata written before deltas existed (no `parent`/`depth`) still decodes, as full.

use std::collections::{BTreeMap, BTreeSet};

use rocksdb::{Direction, IteratorMode, DB};
use serde::{Deserialize, Serialize};

use super::{parse_meta_key, snapshot_prefix, stream_prefix, RawModels, SnapshotInfo, StateStore, CF_META, CF_MODELS};
use crate::state::codec::{self, CodecError, Kind};
use crate::state::StateError;

/// Deltas on one base before the policy writes a full snapshot again, by default
/// (`state.full_snapshot_every`): bounds the restore's reads (base + this many deltas).
pub const MAX_DEPTH: u32 = crate::config::DEFAULT_FULL_SNAPSHOT_EVERY;

/// The stored metadata of a snapshot (envelope payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct MetaRecord {
    /// Wall-clock time of the write, ms since the epoch.
    pub written_at_ms: u64,
    /// Number of keys stored under this snapshot's offset.
    pub keys: u64,
    /// Sum of those keys' envelope bytes.
    pub bytes: u64,
    /// The snapshot this is a delta of; `None`: full.
    pub parent: Option<i64>,
    /// Deltas down to the full base.
    pub depth: u32,
}

/// Metadata as written before deltas existed.
#[derive(Deserialize)]
struct LegacyMeta {
    written_at_ms: u64,
    keys: u64,
    bytes: u64,
}

/// Decode a meta value, current or legacy (postcard is not self-describing: the legacy
/// layout is a prefix of the current one and fails to decode as it).
pub(super) fn decode_meta(v: &[u8]) -> Result<MetaRecord, CodecError> {
    match codec::decode::<MetaRecord>(Kind::SnapshotMeta, v) {
        Ok(m) => Ok(m),
        Err(e) => match codec::decode::<LegacyMeta>(Kind::SnapshotMeta, v) {
            Ok(l) => Ok(MetaRecord { written_at_ms: l.written_at_ms, keys: l.keys, bytes: l.bytes, parent: None, depth: 0 }),
            Err(_) => Err(e),
        },
    }
}

impl MetaRecord {
    /// The public view of this record.
    pub(super) fn info(&self, topic: &str, partition: i32, offset: i64) -> SnapshotInfo {
        SnapshotInfo {
            topic: topic.into(),
            partition,
            offset,
            written_at_ms: self.written_at_ms,
            keys: self.keys,
            bytes: self.bytes,
            parent: self.parent,
            depth: self.depth,
        }
    }
}

fn missing(topic: &str, partition: i32, offset: i64, parent: i64) -> StateError {
    StateError::MissingParent { topic: topic.into(), partition, offset, parent }
}

/// The metadata of the snapshot at `offset`, if there is one that decodes.
fn meta_at(db: &DB, topic: &str, partition: i32, offset: i64) -> Result<Option<MetaRecord>, StateError> {
    let v = db.get_cf(StateStore::cf(db, CF_META), snapshot_prefix(topic, partition, offset)).map_err(|source| StateError::Read {
        topic: topic.into(),
        partition,
        source,
    })?;
    Ok(v.and_then(|v| decode_meta(&v).ok()))
}

/// The depth of a new snapshot at `offset` on `parent`: fails if the parent is missing or not
/// below `offset`.
pub(super) fn depth_after(db: &DB, topic: &str, partition: i32, offset: i64, parent: Option<i64>) -> Result<u32, StateError> {
    let Some(p) = parent else { return Ok(0) };
    if p >= offset {
        return Err(missing(topic, partition, offset, p));
    }
    meta_at(db, topic, partition, p)?.map(|m| m.depth + 1).ok_or_else(|| missing(topic, partition, offset, p))
}

/// (offset, parent) of every stored snapshot of a partition; a meta that does not decode
/// counts as full (it is rejected on restore anyway).
fn index(db: &DB, topic: &str, partition: i32) -> Result<BTreeMap<i64, Option<i64>>, StateError> {
    let prefix = stream_prefix(topic, partition);
    let mut out = BTreeMap::new();
    for item in db.iterator_cf(StateStore::cf(db, CF_META), IteratorMode::From(&prefix, Direction::Forward)) {
        let (k, v) = item.map_err(|source| StateError::Read { topic: topic.into(), partition, source })?;
        if !k.starts_with(&prefix) {
            break;
        }
        if let Some((_, _, offset)) = parse_meta_key(&k) {
            out.insert(offset, decode_meta(&v).ok().and_then(|m| m.parent));
        }
    }
    Ok(out)
}

/// Add `from` and its ancestors (as far as they exist) to `keep`.
fn with_ancestors(index: &BTreeMap<i64, Option<i64>>, from: i64, keep: &mut BTreeSet<i64>) {
    let mut at = Some(from);
    while let Some(o) = at {
        if !keep.insert(o) {
            break;
        }
        at = index.get(&o).copied().flatten().filter(|p| *p < o);
    }
}

/// The snapshots a new one at `offset` (on `parent`) supersedes: those above it (a future
/// the partition no longer has), and, of the rest, all but the `history` newest with their
/// chains and one older independent chain (module docs).
pub(super) fn superseded(
    db: &DB,
    topic: &str,
    partition: i32,
    offset: i64,
    parent: Option<i64>,
    history: usize,
) -> Result<Vec<i64>, StateError> {
    let mut index = index(db, topic, partition)?;
    index.insert(offset, parent);
    let mut keep = BTreeSet::new();
    // Newest first, the new one first of all (a relabelled or fallen-back state is the
    // partition's current one whatever its offset).
    let newest = std::iter::once(offset).chain(index.range(..offset).rev().map(|(o, _)| *o)).take(history.max(1));
    for o in newest.collect::<Vec<_>>() {
        with_ancestors(&index, o, &mut keep);
    }
    // With full snapshots only, the kept ones are independent already; when they all share
    // one base, an older independent chain is what a corrupt base falls back to.
    let bases = keep.iter().filter(|o| index.get(*o).is_some_and(|p| p.is_none())).count();
    if let Some(base) = keep.first().copied().filter(|_| bases <= 1 && history > 1) {
        if let Some((&older, _)) = index.range(..base).next_back() {
            with_ancestors(&index, older, &mut keep);
        }
    }
    Ok(index.keys().copied().filter(|o| *o != offset && (*o > offset || !keep.contains(o))).collect())
}

impl StateStore {
    /// The snapshot of a partition at `offset`, if one is stored and its metadata decodes.
    pub fn snapshot_info(&self, topic: &str, partition: i32, offset: i64) -> Result<Option<SnapshotInfo>, StateError> {
        self.with_db(|db| meta_at(db, topic, partition, offset)).map(|m| m.map(|m| m.info(topic, partition, offset)))
    }

    /// The members of `info`'s chain, newest first, down to its full base.
    fn chain_of(&self, info: &SnapshotInfo) -> Result<Vec<SnapshotInfo>, StateError> {
        let mut chain = vec![info.clone()];
        while let Some(p) = chain.last().and_then(|m| m.parent) {
            let child = chain.last().map_or(info.offset, |m| m.offset);
            if p >= child || chain.len() > 100_000 {
                return Err(missing(&info.topic, info.partition, child, p));
            }
            let parent =
                self.snapshot_info(&info.topic, info.partition, p)?.ok_or_else(|| missing(&info.topic, info.partition, child, p))?;
            chain.push(parent);
        }
        Ok(chain)
    }

    /// Every key's envelope at `info`, its chain resolved, in key order; fails when a member
    /// holds another number of keys than its metadata recorded (a snapshot is used whole or
    /// not at all).
    pub(super) fn complete_models(&self, info: &SnapshotInfo) -> Result<RawModels, StateError> {
        self.resolve(info, true)
    }

    /// The rows at `info`, its chain resolved; with `check`, each member's key count must be
    /// the recorded one.
    fn resolve(&self, info: &SnapshotInfo, check: bool) -> Result<RawModels, StateError> {
        let chain = self.chain_of(info)?;
        let mut state: BTreeMap<Vec<u8>, Box<[u8]>> = BTreeMap::new();
        for member in chain.iter().rev() {
            let raw = self.raw_models(member)?;
            if check && raw.len() as u64 != member.keys {
                return Err(StateError::Incomplete {
                    topic: member.topic.clone(),
                    partition: member.partition,
                    offset: member.offset,
                    expected: member.keys,
                    found: raw.len() as u64,
                });
            }
            state.extend(raw);
        }
        Ok(state.into_iter().collect())
    }

    /// Raw (key, envelope bytes) of the rows stored under one snapshot's offset, in key order.
    pub(super) fn raw_models(&self, info: &SnapshotInfo) -> Result<RawModels, StateError> {
        let prefix = snapshot_prefix(&info.topic, info.partition, info.offset);
        self.with_db(|db| {
            let mut out = Vec::with_capacity(info.keys as usize);
            for item in db.iterator_cf(Self::cf(db, CF_MODELS), IteratorMode::From(&prefix, Direction::Forward)) {
                let (k, v) = item.map_err(|source| StateError::Read { topic: info.topic.clone(), partition: info.partition, source })?;
                if !k.starts_with(&prefix) {
                    break;
                }
                out.push((k[prefix.len()..].to_vec(), v));
            }
            Ok(out)
        })
    }

    /// The next rows of the full snapshot `info` after key `after` (from its first key with
    /// `None`), at least one and about `max_bytes` of them, envelopes checked; empty at the
    /// end. Reads a snapshot a page at a time, so that publishing it to the changelog never
    /// holds all of it. A delta's rows alone are not its state: for one, this is an error
    /// ([`StateStore::encoded_models`] resolves its chain).
    pub fn rows_page(&self, info: &SnapshotInfo, after: Option<&str>, max_bytes: usize) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        if let Some(parent) = info.parent {
            return Err(missing(&info.topic, info.partition, info.offset, parent));
        }
        let prefix = snapshot_prefix(&info.topic, info.partition, info.offset);
        let mut start = prefix.clone();
        if let Some(after) = after {
            // The smallest key above `after`.
            start.extend_from_slice(after.as_bytes());
            start.push(0);
        }
        self.with_db(|db| {
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            for item in db.iterator_cf(Self::cf(db, CF_MODELS), IteratorMode::From(&start, Direction::Forward)) {
                let (k, v) = item.map_err(|source| StateError::Read { topic: info.topic.clone(), partition: info.partition, source })?;
                if !k.starts_with(&prefix) || (bytes >= max_bytes && !out.is_empty()) {
                    break;
                }
                let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                codec::open(Kind::Model, &v).map_err(|source| StateError::Corrupt {
                    topic: info.topic.clone(),
                    partition: info.partition,
                    offset: info.offset,
                    key: Some(key.clone()),
                    source,
                })?;
                bytes += k.len() + v.len();
                out.push((key, v.into_vec()));
            }
            Ok(out)
        })
    }

    /// (key, envelope bytes) of every model at a snapshot (chain resolved), without decoding.
    pub fn key_sizes(&self, info: &SnapshotInfo) -> Result<Vec<(String, usize)>, StateError> {
        Ok(self.resolve(info, false)?.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v.len())).collect())
    }

    /// The raw envelope of one key's model at a snapshot (the newest row of it along the
    /// chain), for the changelog and inspection.
    pub fn model_bytes(&self, info: &SnapshotInfo, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        for member in self.chain_of(info)? {
            let mut k = snapshot_prefix(&member.topic, member.partition, member.offset);
            k.extend_from_slice(key.as_bytes());
            let found = self.with_db(|db| {
                db.get_cf(Self::cf(db, CF_MODELS), &k).map_err(|source| StateError::Read {
                    topic: info.topic.clone(),
                    partition: info.partition,
                    source,
                })
            })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// As [`StateStore::write_merged`] for a delta on `parent`: `models` are the resident
    /// pipelines changed since `parent` and the evicted ones changed since (their rows read
    /// from the spill by the caller), in key order.
    pub fn write_delta(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        parent: i64,
        models: &[(String, Vec<u8>)],
    ) -> Result<SnapshotInfo, StateError> {
        self.write_delta_rows(topic, partition, offset, parent, models.iter().cloned().map(Ok))
    }

    /// As [`StateStore::write_delta`], the rows as they come (in key order): the caller need
    /// not gather them into one more copy.
    pub fn write_delta_rows<I>(&self, topic: &str, partition: i32, offset: i64, parent: i64, models: I) -> Result<SnapshotInfo, StateError>
    where
        I: IntoIterator<Item = Result<(String, Vec<u8>), StateError>>,
    {
        self.write_rows(topic, partition, offset, models, false, Some(parent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "t";

    fn env(v: u64) -> Vec<u8> {
        codec::encode(Kind::Model, &v).expect("encodes")
    }

    fn rows(kv: &[(&str, u64)]) -> Vec<(String, Vec<u8>)> {
        kv.iter().map(|(k, v)| (k.to_string(), env(*v))).collect()
    }

    fn state(store: &StateStore, at_or_before: Option<i64>) -> (i64, Vec<(String, u64)>) {
        let s = store.restore::<u64>(T, 0, at_or_before).expect("readable").snapshot.expect("a snapshot");
        (s.info.offset, s.models)
    }

    fn owned(kv: &[(&str, u64)]) -> Vec<(String, u64)> {
        kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_delta_stores_only_changed_keys_and_restores_the_full_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), 4).expect("opens");
        store.write_merged(T, 0, 10, &rows(&[("a", 1), ("b", 1), ("c", 1)])).expect("full");
        let d1 = store.write_delta(T, 0, 20, 10, &rows(&[("b", 2)])).expect("delta");
        assert_eq!((d1.keys, d1.parent, d1.depth), (1, Some(10), 1), "only the changed key is written");
        let d2 = store.write_delta(T, 0, 30, 20, &rows(&[("c", 3), ("d", 3)])).expect("delta");
        assert_eq!(d2.depth, 2);
        assert_eq!(state(&store, None), (30, owned(&[("a", 1), ("b", 2), ("c", 3), ("d", 3)])));
        assert_eq!(state(&store, Some(25)), (20, owned(&[("a", 1), ("b", 2), ("c", 1)])), "rewind to a delta");
        assert_eq!(store.model_bytes(&d2, "a").expect("reads"), Some(env(1)), "found in the base");
        assert_eq!(store.key_sizes(&d2).expect("reads").len(), 4);
        let err = store.write_delta(T, 0, 40, 35, &rows(&[("a", 4)])).expect_err("no snapshot at 35");
        assert!(matches!(err, StateError::MissingParent { parent: 35, .. }), "{err}");
    }

    #[test]
    fn a_corrupt_delta_falls_back_to_its_parent_and_a_corrupt_base_to_an_older_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), 3).expect("opens");
        store.write_merged(T, 0, 10, &rows(&[("a", 1), ("b", 1)])).expect("full");
        store.write_delta(T, 0, 20, 10, &rows(&[("a", 2)])).expect("delta");
        let base = store.write_merged(T, 0, 30, &rows(&[("a", 3), ("b", 3)])).expect("full");
        store.write_delta(T, 0, 40, 30, &rows(&[("b", 4)])).expect("delta");
        let top = store.write_delta(T, 0, 50, 40, &rows(&[("a", 5)])).expect("delta");
        // History 3 keeps 50, 40, 30 (one chain on one base) and the older chain 20 -> 10.
        let kept: Vec<i64> = store.snapshots(T, 0).expect("lists").into_iter().map(|s| s.expect("valid").offset).collect();
        assert_eq!(kept, vec![50, 40, 30, 20, 10]);

        store.put_raw_model(&top, "a", b"garbage");
        let r = store.restore::<u64>(T, 0, None).expect("readable");
        assert_eq!(r.snapshot.expect("fallback").info.offset, 40, "the corrupt delta's parent");
        // A corrupt row shadowed by a newer delta would not matter; "a" of the base is used
        // by 40 and 30.
        store.put_raw_model(&base, "a", b"garbage");
        let r = store.restore::<u64>(T, 0, None).expect("readable");
        assert_eq!(r.rejected.len(), 3, "50, 40 and 30 share the corrupt base");
        let s = r.snapshot.expect("the older chain");
        assert_eq!((s.info.offset, s.models), (20, owned(&[("a", 2), ("b", 1)])));
    }

    #[test]
    fn a_full_snapshot_reads_back_page_by_page_and_a_delta_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), 4).expect("opens");
        let kv: Vec<(String, u64)> = (0..50).map(|i| (format!("k{i:03}"), i)).collect();
        let full = store.write_merged(T, 0, 10, &rows(&kv.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>())).expect("full");
        let (mut got, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let page = store.rows_page(&full, after.as_deref(), 100).expect("reads");
            if page.is_empty() {
                break;
            }
            pages += 1;
            after = page.last().map(|(k, _)| k.clone());
            got.extend(page.into_iter().map(|(k, v)| (k, codec::decode::<u64>(Kind::Model, &v).expect("decodes"))));
        }
        assert_eq!(got, kv, "every row once, in key order");
        assert!(pages > 5, "small pages: {pages}");
        let delta = store.write_delta(T, 0, 20, 10, &rows(&[("k001", 7)])).expect("delta");
        assert!(matches!(store.rows_page(&delta, None, 100), Err(StateError::MissingParent { .. })), "a delta alone is not a state");
    }

    #[test]
    fn pruning_drops_whole_chains_once_nothing_newer_needs_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), 2).expect("opens");
        store.write_merged(T, 0, 10, &rows(&[("a", 1)])).expect("full");
        store.write_delta(T, 0, 20, 10, &rows(&[("a", 2)])).expect("delta");
        store.write_merged(T, 0, 30, &rows(&[("a", 3)])).expect("full");
        store.write_merged(T, 0, 40, &rows(&[("a", 4)])).expect("full");
        let kept: Vec<i64> = store.snapshots(T, 0).expect("lists").into_iter().map(|s| s.expect("valid").offset).collect();
        assert_eq!(kept, vec![40, 30], "two independent full snapshots: the old chain goes");
        store.write_delta(T, 0, 50, 40, &rows(&[("a", 5)])).expect("delta");
        let kept: Vec<i64> = store.snapshots(T, 0).expect("lists").into_iter().map(|s| s.expect("valid").offset).collect();
        assert_eq!(kept, vec![50, 40, 30], "50 and its base 40 share a base: 30 stays as the independent fallback");
    }
}
