//! Corrupt snapshots on disk, with the real binary, the real broker and RocksDB: after a clean
//! run, the stopped worker's store is damaged directly through RocksDB, and the restarted
//! worker must detect every bad value, report it naming the partition and the key, and fall
//! back (an older snapshot, or the changelog) without crashing, losing or duplicating an
//! output, and with scores bit-identical to one uninterrupted pass over the input.
//!
//! The damage, per input partition (the newest snapshot of each has applied everything below
//! the committed offset; the older ones are behind it):
//! - 0: one bit flipped in the middle of one key's model in the newest snapshot. The next
//!   snapshot is older than the committed offset, so the worker takes the changelog's newer
//!   state.
//! - 1: one key's model cut to half its length in the newest snapshot, and that key's
//!   changelog record replaced by garbage: the changelog is unusable, so the worker must take
//!   the older local snapshot and replay, silently, up to the committed offset.
//! - 2: one key corrupt in every stored snapshot: nothing local is usable, so the worker
//!   restores from the changelog.
//! - 3: one key corrupt in every stored snapshot and its changelog record spoiled: no state
//!   anywhere, so the worker rebuilds the models by replaying the input from its start,
//!   silently up to the committed offset.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use onad_stream::config::Config;
use onad_stream::proto::ScoredReading;
use onad_stream::state::{KeyModel, SnapshotInfo, StateStore};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 4;
const SENSORS: usize = 24;
/// Readings per sensor in the first burst (before the damage) and the second (after).
const FIRST: usize = 120;
const SECOND: usize = 60;
/// The first burst is produced in this many waves, each waited for: the worker snapshots
/// after a batch, and one burst produced at once is read in one or two batches, so waves of
/// more than `checkpoint_interval` readings per partition give a snapshot each.
const WAVES: usize = 4;
/// Frequent snapshots, so that every partition has a full history of them.
/// Full snapshots only: the damage below targets keys of given snapshots (with deltas, a
/// snapshot holds only the keys changed since its parent; `store::chain` has those tests).
const TOML: &str = "checkpoint_interval = 150\n[state]\ncheckpoint_secs = 1\nsnapshot_history = 3\nfull_snapshot_every = 1\n";
/// Bound on each wait for outputs.
const WAIT: Duration = Duration::from_secs(90);

/// Every sensor's readings (sensor i on partition i % PARTITIONS), with values that move
/// enough to give varied scores and a spike now and then.
const FLEET: Fleet = Fleet {
    prefix: "dev",
    sensors: SENSORS,
    partitions: PARTITIONS,
    values: |j, i| {
        let t = (j * 13 + i * 7) as f64;
        let spike = if (j + i) % 97 == 0 { 8.0 } else { 0.0 };
        vec![("temp", 20.0 + t.sin() + spike), ("rpm", 3.0 + (t * 0.37).cos()), ("vib", (t * 0.11).sin() * 0.5)]
    },
};

/// Read `scores` until it holds at least `n` records (bounded), failing with the worker's log.
fn wait_scores(scores: &mut Collector, n: usize, worker: &ChildWorker) {
    let deadline = Instant::now() + WAIT;
    while scores.seen.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} scores after {WAIT:?}:\n{}", scores.seen.len(), strip_ansi(&worker.log()));
        scores.read_for(Duration::from_millis(200));
    }
}

/// The lines of `log` containing every one of `needles`.
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines().filter(|l| needles.iter().all(|n| l.contains(n))).collect()
}

/// The store's key prefix of snapshot `offset` of `topic`/`partition` (see the module docs
/// of `onad_stream::state::store`): topic, a 0 byte, partition (u32 BE), offset + 1 (u64 BE).
fn snapshot_key(topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut k = topic.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k.extend_from_slice(&((offset + 1) as u64).to_be_bytes());
    k
}

/// The stored snapshots of every partition, newest first, each with its keys in key order.
fn snapshots(state: &Path, topic: &str) -> Vec<Vec<(SnapshotInfo, Vec<String>)>> {
    let store = StateStore::open_read_only(state).expect("open the state store read-only");
    (0..PARTITIONS)
        .map(|p| {
            store
                .snapshots(topic, p)
                .expect("list snapshots")
                .into_iter()
                .map(|s| {
                    let info = s.expect("snapshot metadata decodes before the damage");
                    let keys = store.key_sizes(&info).expect("read snapshot keys").into_iter().map(|(k, _)| k).collect();
                    (info, keys)
                })
                .collect()
        })
        .collect()
}

/// How a stored model value is damaged.
#[derive(Clone, Copy)]
enum Damage {
    /// One bit flipped in the middle.
    FlipBit,
    /// Cut to half its length.
    Truncate,
}

/// Apply `how` to the model of `key` in snapshot `offset` of `topic`/`partition`, through
/// `db`: RocksDB itself, opened read-write on the stopped worker's directory.
fn damage(db: &rocksdb::DB, topic: &str, partition: i32, offset: i64, key: &str, how: Damage) {
    let models = db.cf_handle("models").expect("models column family");
    let mut k = snapshot_key(topic, partition, offset);
    k.extend_from_slice(key.as_bytes());
    let mut value = db
        .get_cf(models, &k)
        .expect("read model")
        .unwrap_or_else(|| panic!("no model of {key:?} in snapshot {offset} of partition {partition}"));
    match how {
        Damage::FlipBit => {
            let mid = value.len() / 2;
            value[mid] ^= 0x10;
        }
        Damage::Truncate => value.truncate(value.len() / 2),
    }
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(models, &k, &value, &opts).expect("write damaged model");
}

/// Replace the changelog record of `key` of `partition` by bytes that are no envelope.
async fn spoil_changelog(config: &Config, partition: i32, key: &str) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("changelog producer");
    let record_key = format!("{partition}/{key}");
    let rec = FutureRecord::<str, [u8]>::to(&config.kafka.changelog_topic)
        .partition(partition)
        .key(record_key.as_str())
        .payload(b"not an envelope");
    producer.send(rec, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("garbage changelog record delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshots_are_reported_and_skipped_without_loss_duplicates_or_different_scores() {
    let name = unique("corrupt");
    let config = config(&name, PARTITIONS, &[]);
    let topic = config.kafka.input_topic.clone();
    create_topics(&config).await;
    let state = tempfile::tempdir().expect("state dir");
    let mut inputs: BTreeMap<(i32, i64), In> = BTreeMap::new();
    let mut scores = Collector::new(&config.kafka.scores_topic, PARTITIONS);

    // 1. A clean run: every reading scored, then SIGTERM (a snapshot of each partition at
    //    its last offset on the way out).
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    for w in 0..WAVES {
        send(&config, &mut inputs, FLEET.readings(w * FIRST / WAVES, (w + 1) * FIRST / WAVES)).await;
        wait_scores(&mut scores, inputs.len(), &worker);
    }
    let (status, log) = worker.terminate(Duration::from_secs(60));
    assert!(status.success(), "first worker exit {status}:\n{}", strip_ansi(&log));

    let before = snapshots(state.path(), &topic);
    for (p, snaps) in before.iter().enumerate() {
        let last = inputs.keys().filter(|(q, _)| *q == p as i32).map(|(_, o)| *o).max().expect("inputs on every partition");
        assert_eq!(
            snaps.len(),
            3,
            "partition {p} keeps a full history of 3 snapshots: {:?}",
            snaps.iter().map(|(i, _)| i.offset).collect::<Vec<_>>()
        );
        assert_eq!(snaps[0].0.offset, last, "partition {p}: the newest snapshot is the one at shutdown");
        assert!(
            snaps.iter().all(|(_, keys)| keys.len() == SENSORS / PARTITIONS as usize),
            "partition {p}: every snapshot holds its {} sensors",
            SENSORS / PARTITIONS as usize
        );
    }

    // 2. Damage, with the worker stopped. The key in the middle of each partition's key order.
    let victim = |p: usize| before[p][0].1[before[p][0].1.len() / 2].clone();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(false);
        let db =
            rocksdb::DB::open_cf(&opts, state.path(), ["meta", "models", "spill"]).expect("open the stopped worker's store read-write");
        damage(&db, &topic, 0, before[0][0].0.offset, &victim(0), Damage::FlipBit);
        damage(&db, &topic, 1, before[1][0].0.offset, &victim(1), Damage::Truncate);
        for p in [2, 3] {
            for (info, _) in &before[p] {
                damage(&db, &topic, p as i32, info.offset, &victim(p), Damage::FlipBit);
            }
        }
    }
    spoil_changelog(&config, 1, &victim(1)).await;
    spoil_changelog(&config, 3, &victim(3)).await;
    // The store itself now refuses what was damaged, and nothing else.
    {
        let store = StateStore::open_read_only(state.path()).expect("reopen the store read-only");
        let restored: Vec<_> = (0..PARTITIONS).map(|p| store.restore::<KeyModel>(&topic, p, None).expect("store readable")).collect();
        let offsets: Vec<Option<i64>> = restored.iter().map(|r| r.snapshot.as_ref().map(|s| s.info.offset)).collect();
        let want = [Some(before[0][1].0.offset), Some(before[1][1].0.offset), None, None];
        assert_eq!(offsets, want, "usable snapshots after the damage");
        let rejected: Vec<usize> = restored.iter().map(|r| r.rejected.len()).collect();
        assert_eq!(rejected, [1, 1, 3, 3], "rejected snapshots per partition");
    }

    // 3. Restart on the damaged store, then a second burst.
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    send(&config, &mut inputs, FLEET.readings(FIRST, FIRST + SECOND)).await;
    let total = inputs.len();
    wait_scores(&mut scores, total, &worker);
    // A duplicate would arrive now.
    scores.read_for(Duration::from_secs(2));
    let (status, log) = worker.terminate(Duration::from_secs(60));
    let log = strip_ansi(&log);
    assert!(status.success(), "restarted worker exit {status}:\n{log}");

    // 4a. Each damaged snapshot is reported with its partition, offset, key and cause.
    let reported = |p: i32, offset: i64, key: &str, cause: &str| {
        let needles = [
            "skipping unusable snapshot",
            &format!("partition={p}"),
            &format!("{topic}[{p}] at offset {offset}"),
            &format!("key {key:?}"),
            cause,
        ];
        assert_eq!(lines_with(&log, &needles).len(), 1, "one report of snapshot {offset} of partition {p} ({needles:?}):\n{log}");
    };
    reported(0, before[0][0].0.offset, &victim(0), "checksum mismatch");
    reported(1, before[1][0].0.offset, &victim(1), "length mismatch");
    for p in [2, 3] {
        for (info, _) in &before[p] {
            reported(p as i32, info.offset, &victim(p), "checksum mismatch");
        }
    }
    assert_eq!(lines_with(&log, &["skipping unusable snapshot"]).len(), 8, "no other snapshot reported:\n{log}");

    // 4b. The fallbacks taken: the changelog for 0 and 2, the older snapshot for 1 (its
    //     changelog record is reported), a rebuild from the input for 3.
    let restored_from_changelog = |p: i32, local: &str| {
        let needles =
            ["restoring from the changelog", &format!("partition={p}"), &format!("offset={}", before[p as usize][0].0.offset), local];
        assert_eq!(lines_with(&log, &needles).len(), 1, "partition {p} restored from the changelog ({needles:?}):\n{log}");
    };
    restored_from_changelog(0, &format!("local_offset=Some({})", before[0][1].0.offset));
    restored_from_changelog(2, "local_offset=None");
    assert_eq!(lines_with(&log, &["restoring from the changelog"]).len(), 2, "only partitions 0 and 2 used the changelog:\n{log}");
    for p in [1, 3] {
        let spoiled =
            lines_with(&log, &["changelog record unusable", &format!("partition={p}"), &format!("key \"{p}/{}\"", victim(p as usize))]);
        assert_eq!(spoiled.len(), 1, "the spoiled changelog record of partition {p} is reported:\n{log}");
    }
    let restored_at = |p: i32, offset: i64| {
        let needles = ["restored state", &format!("partition={p}"), &format!("snapshot=Some({offset})")];
        assert_eq!(lines_with(&log, &needles).len(), 1, "partition {p} resumed from offset {offset} ({needles:?}):\n{log}");
    };
    restored_at(0, before[0][0].0.offset);
    restored_at(1, before[1][1].0.offset);
    restored_at(2, before[2][0].0.offset);
    let replayed = [
        "partition assigned",
        "partition=1",
        &format!("committed=Some({})", before[1][0].0.offset + 1),
        &format!("start_at=Some({})", before[1][1].0.offset + 1),
    ];
    assert_eq!(
        lines_with(&log, &replayed).len(),
        1,
        "partition 1 replays from its older snapshot up to the committed offset ({replayed:?}):\n{log}"
    );
    let rebuilt = lines_with(&log, &["rebuilding the models from the start"]);
    assert!(rebuilt.len() == 1 && rebuilt[0].contains("partition=3"), "partition 3, and only it, rebuilds from the input:\n{log}");
    let from_start = ["partition assigned", "partition=3", &format!("committed=Some({})", before[3][0].0.offset + 1), "start_at=Some(0)"];
    assert_eq!(lines_with(&log, &from_start).len(), 1, "partition 3 replays from offset 0 ({from_start:?}):\n{log}");

    // 4c. Exactly one score per input offset, over both runs.
    assert_exactly_once(&by_source(&scores.seen), &inputs);

    // 4d. Every score equals one uninterrupted pass, bit for bit: the fallbacks rebuilt the
    //     exact state the damaged snapshots held.
    let expected = reference(&config, &inputs);
    for o in &scores.seen {
        let key = (o.source_partition.expect("source partition header"), o.source_offset.expect("source offset header"));
        let s = ScoredReading::decode(&o.payload[..]).expect("score decodes");
        let got = (s.score.to_bits(), s.raw_score.to_bits(), s.counters.map_or(0, |c| c.processed));
        assert_eq!(expected.get(&key), Some(&Some(got)), "score of {key:?} (sensor {}) differs from the uninterrupted run", s.sensor_id);
    }
}
