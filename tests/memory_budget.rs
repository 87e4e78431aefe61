//! The memory budget through the real binary, the real broker and RocksDB: 3,000 sensors
//! whose pipelines need several times `memory_limit_mb = 1`, so the worker keeps evicting
//! least-recently-used pipelines and loading them back; it is killed with SIGKILL twice
//! mid-stream and restarted on the same state directory. Afterwards every input offset has
//! exactly one output and every score is bit-identical to a reference that never evicts.
//! Also: the budget's per-sensor charge covers what the models' map really takes per sensor.

mod common;

use std::time::{Duration, Instant};

use common::*;
use onad_stream::proto::ScoredReading;
use prost::Message as _;

// The binary's counting allocator, so that this thread's allocations are counted exactly.
#[global_allocator]
static ALLOC: onad_stream::ops::heap::CountingAlloc = onad_stream::ops::heap::CountingAlloc;

const PARTITIONS: i32 = 2;
const SENSORS: usize = 3000;
const STEPS: usize = 24;
const BURSTS: usize = 3;
/// A 1 MiB budget holds a few hundred z-score pipelines; snapshots every 5,000 readings or
/// second, so kills land between snapshots, evictions and deliveries.
const TOML: &str = "memory_limit_mb = 1\ncheckpoint_interval = 5000\n[state]\ncheckpoint_secs = 1\nsnapshot_history = 3\n";

fn values(j: usize, i: usize) -> Vec<(&'static str, f64)> {
    let t = (j * 13 + i * 7) as f64;
    let spike = if (j + i) % 89 == 0 { 7.0 } else { 0.0 };
    vec![("temp", 20.0 + t.sin() + spike), ("rpm", 3.0 + (t * 0.37).cos())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_budget_evicts_and_reloads_and_a_kill_9_resumes_with_scores_as_if_nothing_was_evicted() {
    let name = unique("membudget");
    let config = config(&name, PARTITIONS, &[]);
    create_topics(&config).await;
    let state = tempfile::tempdir().expect("state dir");
    let fleet = Fleet { prefix: "m", sensors: SENSORS, partitions: PARTITIONS, values };
    let mut inputs = std::collections::BTreeMap::new();
    let mut scores = Collector::new(&config.kafka.scores_topic, PARTITIONS);

    let mut worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    let per = STEPS / BURSTS;
    for b in 0..BURSTS {
        send(&config, &mut inputs, fleet.readings(b * per, (b + 1) * per)).await;
        if b + 1 == BURSTS {
            break;
        }
        // Kill once about half of this burst has come out (past the first burst, every
        // sensor has been evicted at least once).
        let kill_after = scores.seen.len() + SENSORS * per / 2;
        let deadline = Instant::now() + Duration::from_secs(120);
        while scores.seen.len() < kill_after {
            assert!(Instant::now() < deadline, "only {} of {kill_after} scores:\n{}", scores.seen.len(), worker.log());
            scores.read_for(Duration::from_millis(20));
        }
        let log = worker.log();
        worker.crash();
        assert!(log.contains("memory budget reached"), "the budget was never reached:\n{log}");
        worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    }
    let total = inputs.len();
    scores.until(Duration::from_secs(180), "every reading scored after the restarts", |s| s.len() >= total);
    scores.read_for(Duration::from_secs(2));
    let log = worker.stop();
    assert!(log.contains("restored state"), "the restarts restored snapshots:\n{log}");
    assert!(log.contains("memory budget reached"), "the last worker evicted too:\n{log}");

    assert_exactly_once(&by_source(&scores.seen), &inputs);
    let expected = reference(&config, &inputs);
    for o in &scores.seen {
        let key = (o.source_partition.expect("header"), o.source_offset.expect("header"));
        let s = ScoredReading::decode(&o.payload[..]).expect("score decodes");
        let got = (s.score.to_bits(), s.raw_score.to_bits(), s.counters.map_or(0, |c| c.processed));
        assert_eq!(
            expected.get(&key),
            Some(&Some(got)),
            "score of {key:?} (sensor {}) differs from the never-evicting reference",
            s.sensor_id
        );
    }
    assert_eq!(scores.seen.len(), SENSORS * STEPS);
}

/// A (key, pipeline) slot's worth of bytes, as the models' `BTreeMap` holds them inline.
struct Slot(#[allow(dead_code)] [u8; std::mem::size_of::<onad_stream::partition::KeyPipeline>()]);

/// The models' map as the worker fills it at scale (sensors new in id order, the least
/// recently used evicted, coming back in order on the next pass) takes about twice its slot
/// size per sensor, B-tree nodes being about half full: the per-sensor charge must cover that,
/// or a million sensors hold ~90 MB the budget does not see (BENCHMARKS.md, "Memory budget: RSS").
#[test]
fn btree_slots_take_about_twice_their_size() {
    use onad_stream::ops::heap;
    use onad_stream::partition::resident::PER_KEY_BYTES;
    const N: usize = 20_000;
    let key = |i: usize| format!("sensor-{i:07}");
    let h0 = heap::net();
    let mut models = std::collections::BTreeMap::new();
    for i in 0..N {
        models.insert(key(i), Slot([0; std::mem::size_of::<onad_stream::partition::KeyPipeline>()]));
    }
    for i in 0..N * 3 / 10 {
        models.remove(&key(i));
    }
    for i in N..N + N * 3 / 10 {
        models.insert(key(i), Slot([0; std::mem::size_of::<onad_stream::partition::KeyPipeline>()]));
    }
    let total = heap::net() - h0;
    assert!(heap::active(), "the counting allocator is installed");
    // The key strings' own allocations are charged apart (3 x the key's length, besides).
    let per_key = total as f64 / models.len() as f64 - (key(0).len() + 16) as f64;
    let slot = (std::mem::size_of::<String>() + std::mem::size_of::<Slot>()) as f64;
    let charged = (PER_KEY_BYTES - 256) as f64;
    assert!(per_key > 1.6 * slot, "{per_key:.0} bytes per sensor for a {slot} byte slot: nodes fuller than measured before");
    assert!(per_key <= charged, "the models' map takes {per_key:.0} bytes per sensor, the budget charges {charged} for it");
    drop(models);
}
