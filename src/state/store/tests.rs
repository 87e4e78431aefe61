//! Store tests on real RocksDB in temporary directories.

use super::*;
use crate::detect::{Pipeline, PipelineSpec};
use crate::state::CodecError;

const TOPIC: &str = "readings";

fn factory() -> crate::detect::PipelineFactory {
    PipelineSpec { learn_anomalies: false, seed: 3, ..PipelineSpec::default() }.check().expect("valid spec")
}

/// `n` keys, each fed `steps` deterministic readings.
fn models(n: usize, steps: usize) -> Vec<(String, Pipeline)> {
    let f = factory();
    (0..n)
        .map(|i| {
            let key = format!("sensor-{i:04}");
            let mut p = f.build(2, &key);
            for t in 0..steps {
                let v = (t * 7 + i) as f64;
                p.process(&[v.sin(), (v * 0.3).cos()]);
            }
            (key, p)
        })
        .collect()
}

/// Same keys and same model state (by bytes: Pipeline's PartialEq also compares scratch
/// buffers that are not state).
fn assert_same(a: &[(String, Pipeline)], b: &[(String, Pipeline)]) {
    let bytes = |m: &[(String, Pipeline)]| -> Vec<(String, Vec<u8>)> {
        m.iter().map(|(k, p)| (k.clone(), postcard::to_stdvec(p).expect("encodes"))).collect()
    };
    assert!(bytes(a) == bytes(b), "models differ");
}

fn write(store: &StateStore, partition: i32, offset: i64, m: &[(String, Pipeline)]) -> SnapshotInfo {
    store.write_snapshot(TOPIC, partition, offset, m.iter().map(|(k, p)| (k.as_str(), p))).expect("snapshot written")
}

#[test]
fn snapshot_round_trips_and_restored_models_continue_identically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = models(50, 150);
    {
        let store = StateStore::open(dir.path(), 4).expect("open");
        let info = write(&store, 2, 999, &m);
        assert_eq!((info.keys, info.offset, info.partition), (50, 999, 2));
    }
    // Reopen: the snapshot is on disk, not in memory.
    let store = StateStore::open(dir.path(), 4).expect("reopen");
    let restored = store.restore::<Pipeline>(TOPIC, 2, None).expect("readable");
    assert!(restored.rejected.is_empty(), "{:?}", restored.rejected);
    let snap = restored.snapshot.expect("a snapshot");
    assert_eq!(snap.info.offset, 999);
    assert_same(&snap.models, &m);
    let (mut original, mut back) = (m, snap.models);
    for ((_, a), (_, b)) in original.iter_mut().zip(back.iter_mut()) {
        for t in 0..20 {
            let x = [t as f64 * 0.01, 5.0 - t as f64];
            assert!(a.process(&x) == b.process(&x), "restored model scores differently");
        }
    }
    assert!(store.restore::<Pipeline>(TOPIC, 3, None).expect("readable").snapshot.is_none(), "other partitions are untouched");
    assert_eq!(store.partitions().expect("list"), vec![(TOPIC.to_string(), 2)]);
}

#[test]
fn history_keeps_only_the_newest_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path(), 3).expect("open");
    let m = models(5, 10);
    let infos: Vec<SnapshotInfo> = (1..=6).map(|i| write(&store, 0, i * 100, &m)).collect();
    let kept: Vec<i64> = store.snapshots(TOPIC, 0).expect("list").into_iter().map(|s| s.expect("valid").offset).collect();
    assert_eq!(kept, vec![600, 500, 400]);
    // The models of dropped snapshots are gone too, not just their metadata.
    for old in &infos[..3] {
        assert!(store.key_sizes(old).expect("readable").is_empty(), "models of {} still stored", old.offset);
    }
    assert_eq!(store.key_sizes(&infos[5]).expect("readable").len(), 5);
}

#[test]
fn rewriting_an_offset_replaces_that_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path(), 3).expect("open");
    write(&store, 0, 10, &models(8, 5));
    let fewer = models(3, 9);
    write(&store, 0, 10, &fewer);
    let snap = store.restore::<Pipeline>(TOPIC, 0, None).expect("readable").snapshot.expect("present");
    assert_same(&snap.models, &fewer);
    assert_eq!(store.snapshots(TOPIC, 0).expect("list").len(), 1);
}

#[test]
fn a_snapshot_written_below_newer_ones_is_the_state_now_and_survives_pruning() {
    // `replay --state keep` relabels the newest models as applied up to an earlier offset
    // while the history is full of newer snapshots: the relabelled one must be what a
    // restore finds, not the "oldest" that pruning drops.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path(), 4).expect("open");
    for o in [1000, 1500, 2000, 2500] {
        write(&store, 0, o, &models(3, 10));
    }
    let kept = models(3, 40);
    write(&store, 0, 499, &kept);
    let offsets: Vec<i64> = store.snapshots(TOPIC, 0).expect("list").into_iter().map(|s| s.expect("valid").offset).collect();
    assert_eq!(offsets, vec![499], "the newer snapshots describe a future the partition no longer has");
    let snap = store.restore::<Pipeline>(TOPIC, 0, None).expect("readable").snapshot.expect("the relabelled snapshot is kept");
    assert_eq!(snap.info.offset, 499);
    assert_same(&snap.models, &kept);
    // Older snapshots below it are history as usual.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path(), 3).expect("open");
    for o in [100, 200, 300, 900] {
        write(&store, 0, o, &models(2, 5));
    }
    write(&store, 0, 250, &models(2, 5));
    let offsets: Vec<i64> = store.snapshots(TOPIC, 0).expect("list").into_iter().map(|s| s.expect("valid").offset).collect();
    assert_eq!(offsets, vec![250, 200]);
}

#[test]
fn rewind_picks_the_nearest_snapshot_at_or_before_the_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path(), 4).expect("open");
    for (i, o) in [100, 200, 300, 400].into_iter().enumerate() {
        write(&store, 1, o, &models(3, 10 * (i + 1)));
    }
    let at = |limit| store.restore::<Pipeline>(TOPIC, 1, Some(limit)).expect("readable").snapshot.map(|s| s.info.offset);
    assert_eq!(at(250), Some(200));
    assert_eq!(at(300), Some(300));
    assert_eq!(at(10_000), Some(400));
    assert_eq!(at(99), None);
    assert_eq!(store.delete_after(TOPIC, 1, Some(250)).expect("deleted"), 2);
    assert_eq!(store.restore::<Pipeline>(TOPIC, 1, None).expect("readable").snapshot.map(|s| s.info.offset), Some(200));
    assert_eq!(store.delete_after(TOPIC, 1, None).expect("deleted"), 2);
    assert!(store.partitions().expect("list").is_empty());
}

#[test]
fn corrupt_newest_snapshot_falls_back_to_the_older_one_and_names_partition_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path(), 4).expect("open");
    let old = models(4, 20);
    write(&store, 3, 100, &old);
    let new = write(&store, 3, 200, &models(4, 40));
    let mut bytes = store.model_bytes(&new, "sensor-0002").expect("readable").expect("present");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    store.put_raw_model(&new, "sensor-0002", &bytes);

    let restored = store.restore::<Pipeline>(TOPIC, 3, None).expect("readable");
    let snap = restored.snapshot.expect("fell back");
    assert_eq!(snap.info.offset, 100);
    assert_same(&snap.models, &old);
    assert_eq!(restored.rejected.len(), 1);
    let err = &restored.rejected[0];
    assert!(
        matches!(err, StateError::Corrupt { partition: 3, offset: 200, key: Some(k), source: CodecError::Checksum { .. }, .. } if k == "sensor-0002"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("readings[3]") && msg.contains("sensor-0002") && msg.contains("checksum"), "{msg}");
}

#[test]
fn truncated_missing_and_bad_metadata_snapshots_are_all_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path(), 5).expect("open");
    let m = models(3, 10);
    let base = write(&store, 0, 10, &m);
    let truncated = write(&store, 0, 20, &m);
    let missing = write(&store, 0, 30, &m);
    let bad_meta = write(&store, 0, 40, &m);
    let bytes = store.model_bytes(&truncated, "sensor-0000").expect("readable").expect("present");
    store.put_raw_model(&truncated, "sensor-0000", &bytes[..bytes.len() - 3]);
    store.delete_raw_model(&missing, "sensor-0001");
    store.put_raw_meta(&bad_meta, b"this is not an envelope at all");

    let restored = store.restore::<Pipeline>(TOPIC, 0, None).expect("readable");
    assert_eq!(restored.snapshot.expect("fell back").info.offset, base.offset);
    let kinds: Vec<String> = restored.rejected.iter().map(|e| e.to_string()).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(
        matches!(restored.rejected[0], StateError::Corrupt { offset: 40, key: None, source: CodecError::BadMagic { .. }, .. }),
        "{kinds:?}"
    );
    assert!(matches!(restored.rejected[1], StateError::Incomplete { offset: 30, expected: 3, found: 2, .. }), "{kinds:?}");
    assert!(matches!(restored.rejected[2], StateError::Corrupt { offset: 20, source: CodecError::Length { .. }, .. }), "{kinds:?}");

    // With every snapshot bad, the answer is "none" (rebuild by replay), not an error.
    store.put_raw_model(&base, "sensor-0001", b"");
    let restored = store.restore::<Pipeline>(TOPIC, 0, None).expect("readable");
    assert!(restored.snapshot.is_none());
    assert_eq!(restored.rejected.len(), 4);
}

#[test]
fn a_failed_write_is_an_error_and_leaves_the_last_snapshot_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = models(3, 10);
    {
        let store = StateStore::open(dir.path(), 4).expect("open");
        write(&store, 0, 10, &m);
    }
    // A read-only database refuses writes the way a failed disk does: RocksDB returns an
    // error from the write. (tests/state_faults.rs fills a real small filesystem.)
    let ro = StateStore::open_read_only(dir.path()).expect("open read-only");
    let err = ro.write_snapshot(TOPIC, 0, 20, m.iter().map(|(k, p)| (k.as_str(), p))).expect_err("write must fail");
    assert!(matches!(err, StateError::Write { partition: 0, offset: 20, .. }), "{err:?}");
    let snap = ro.restore::<Pipeline>(TOPIC, 0, None).expect("readable").snapshot.expect("intact");
    assert_eq!(snap.info.offset, 10);
}

#[test]
fn a_second_worker_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = StateStore::open(dir.path(), 4).expect("open");
    let err = StateStore::open(dir.path(), 4).expect_err("locked");
    assert!(matches!(err, StateError::Open { .. }), "{err:?}");
    // Inspection still works while the worker holds the lock.
    assert!(StateStore::open_read_only(dir.path()).is_ok());
}

#[test]
fn offsets_below_minus_one_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path(), 4).expect("open");
    let err = store.write_snapshot(TOPIC, 0, -2, models(1, 1).iter().map(|(k, p)| (k.as_str(), p))).expect_err("refused");
    assert!(matches!(err, StateError::InvalidOffset(-2)));
    // -1 is "nothing applied yet" (a reset), and sorts before every real offset.
    store.write_snapshot::<&str, Pipeline, _>(TOPIC, 0, -1, []).expect("empty reset snapshot");
    write(&store, 0, 0, &models(1, 1));
    let offsets: Vec<i64> = store.snapshots(TOPIC, 0).expect("list").into_iter().map(|s| s.expect("valid").offset).collect();
    assert_eq!(offsets, vec![0, -1]);
}

// The integration tests' tmpfs helper, one definition for both.
#[allow(dead_code)]
#[path = "../../../tests/common/small_disk.rs"]
mod small_disk;
use small_disk::SmallDisk;

#[test]
fn a_full_disk_fails_the_write_loses_nothing_and_the_store_writes_again_once_space_is_freed() {
    let disk = SmallDisk::mount(16);
    let path = disk.dir.path().join("db");
    let store = StateStore::open(&path, 3).expect("open");
    let m = models(50, 10);
    let snap = |offset: i64| store.write_snapshot(TOPIC, 0, offset, m.iter().map(|(k, p)| (k.as_str(), p)));
    snap(10).expect("write with space");
    let filler = disk.fill();
    let e = snap(20).expect_err("a full disk fails the write");
    assert!(matches!(e, StateError::Write { partition: 0, offset: 20, .. }), "{e}");
    assert!(e.to_string().contains("No space left"), "{e}");
    // The next write first reopens the database, which fails too while the disk is full.
    let e = snap(21).expect_err("still full");
    assert!(e.to_string().contains("No space left"), "{e}");
    // What was written before stays readable, and the failed writes left nothing behind.
    let r = store.restore::<Pipeline>(TOPIC, 0, None).expect("readable while full");
    assert_eq!(r.snapshot.expect("older snapshot").info.offset, 10);
    filler.free();
    // RocksDB keeps refusing writes after an I/O error until reopened; the store reopens.
    let info = snap(30).expect("writes again once space is freed");
    assert_eq!(info.keys, 50);
    let offsets: Vec<i64> = store.snapshots(TOPIC, 0).unwrap().into_iter().map(|s| s.unwrap().offset).collect();
    assert_eq!(offsets, vec![30, 10]);
    let restored = store.restore::<Pipeline>(TOPIC, 0, None).unwrap().snapshot.unwrap();
    assert_same(&restored.models, &m);
}

/// The rows stored under `offset` of partition 0, whether or not a meta record names them.
fn rows_at(store: &StateStore, offset: i64) -> usize {
    let info = SnapshotInfo { topic: TOPIC.into(), partition: 0, offset, written_at_ms: 0, keys: 0, bytes: 0, parent: None, depth: 0 };
    store.raw_models(&info).expect("readable").len()
}

#[test]
fn a_snapshot_interrupted_between_chunks_leaves_the_previous_one_and_its_rows_are_cleaned_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (models(40, 5), models(40, 9));
    let encoded = |m: &[(String, Pipeline)]| -> Vec<(String, Vec<u8>)> {
        m.iter().map(|(k, p)| (k.clone(), codec::encode(Kind::Model, p).expect("encodes"))).collect()
    };
    // Fails after 30 rows, the way a crash mid-write stops it: chunks already written stay.
    let failing = |rows: Vec<(String, Vec<u8>)>| {
        rows.into_iter().enumerate().map(|(i, r)| if i < 30 { Ok(r) } else { Err(StateError::InvalidOffset(-7)) })
    };
    {
        let mut store = StateStore::open(dir.path(), 4).expect("open");
        store.chunk_bytes = 1024;
        write(&store, 0, 10, &old);
        let err = store.write_encoded(TOPIC, 0, 20, failing(encoded(&new))).expect_err("interrupted");
        assert!(matches!(err, StateError::InvalidOffset(-7)), "{err}");
        assert!(rows_at(&store, 20) >= 10, "several chunks were written before the interruption: {}", rows_at(&store, 20));
        // Rewriting the snapshot at 10 itself, interrupted: the old one at 10 is gone (its rows
        // were the first chunk's to replace), none is half there.
        let err = store.write_encoded(TOPIC, 0, 10, failing(encoded(&new))).expect_err("interrupted");
        assert!(matches!(err, StateError::InvalidOffset(-7)), "{err}");
        let r = store.restore::<Pipeline>(TOPIC, 0, None).expect("readable");
        assert!(r.snapshot.is_none() && r.rejected.is_empty(), "no half snapshot at 10: {:?}", r.rejected);
        write(&store, 0, 5, &old);
        store.write_encoded(TOPIC, 0, 20, failing(encoded(&new))).expect_err("interrupted");
    }
    // After a restart the state is the last complete snapshot, exactly.
    let mut store = StateStore::open(dir.path(), 4).expect("reopen");
    store.chunk_bytes = 1024;
    let r = store.restore::<Pipeline>(TOPIC, 0, None).expect("readable");
    assert!(r.rejected.is_empty(), "an interrupted snapshot is not a corrupt one: {:?}", r.rejected);
    let snap = r.snapshot.expect("the previous complete snapshot");
    assert_eq!(snap.info.offset, 5);
    assert_same(&snap.models, &old);
    // The next snapshot, above or below the interrupted one, removes its rows.
    let info = write(&store, 0, 30, &new);
    assert_eq!(info.keys, 40);
    assert_eq!((rows_at(&store, 10), rows_at(&store, 20), rows_at(&store, 30)), (0, 0, 40));
    store.write_encoded(TOPIC, 0, 40, failing(encoded(&old))).expect_err("interrupted");
    write(&store, 0, 35, &old);
    assert_eq!(rows_at(&store, 40), 0, "rows above the newest snapshot are gone with it");
    let snap = store.restore::<Pipeline>(TOPIC, 0, None).expect("readable").snapshot.expect("present");
    assert_eq!(snap.info.offset, 35);
    assert_same(&snap.models, &old);
}
