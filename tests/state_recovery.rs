//! Crash recovery with the real binary, the real broker and RocksDB on disk: `onad-stream run`
//! is killed with SIGKILL at several random points and restarted on the same state directory;
//! afterwards every input offset has exactly one ScoredReading or DeadLetter, and every score
//! is bit-identical to an uninterrupted run of the same scoring code over the same input.
//!
//! Volume: 200 sensors x 1,000 readings over 4 partitions (+ 100 garbage records) = 200,100
//! input records in 5 bursts, with 4 kills (about a minute on 2 cores; each restart waits for
//! a Tansu group join).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use onad_stream::proto::{DeadLetter, ScoredReading};
use prost::Message as _;

const PARTITIONS: i32 = 4;
const SENSORS: usize = 200;
const PER_SENSOR: usize = 1000;
const BURSTS: usize = 5;
/// Snapshots often, so that kills land between snapshots, commits and deliveries.
const TOML: &str = "checkpoint_interval = 700\n[state]\ncheckpoint_secs = 1\nsnapshot_history = 3\n";

/// Small deterministic generator (the test's random kill points; seeded, so reproducible).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

/// Readings of burst `b`: every sensor `PER_SENSOR / BURSTS` times, values that move enough
/// to give varied scores, a spike now and then, and a garbage record per partition.
fn burst(b: usize) -> Vec<In> {
    let per = PER_SENSOR / BURSTS;
    let mut v = Vec::new();
    for j in b * per..(b + 1) * per {
        for i in 0..SENSORS {
            let id = format!("dev-{i}");
            let t = (j * 13 + i * 7) as f64;
            let spike = if (j + i) % 97 == 0 { 8.0 } else { 0.0 };
            v.push(In {
                key: Some(id.clone().into_bytes()),
                value: reading(
                    &id,
                    j as i64,
                    &[("temp", 20.0 + t.sin() + spike), ("rpm", 3.0 + (t * 0.37).cos()), ("vib", (t * 0.11).sin() * 0.5)],
                ),
                partition: (i as i32) % PARTITIONS,
            });
        }
        if j % 40 == 0 {
            for p in 0..PARTITIONS {
                v.push(In { key: Some(b"junk".to_vec()), value: vec![0xff, 0x00, 0x13, 0x37], partition: p });
            }
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_kill_9_at_random_points_loses_nothing_duplicates_nothing_and_scores_as_uninterrupted() {
    let name = unique("kill9");
    let config = config(&name, PARTITIONS, &[]);
    create_topics(&config).await;
    let state = tempfile::tempdir().expect("state dir");
    let mut rng = Lcg(0x5eed_0004);
    let mut inputs: BTreeMap<(i32, i64), In> = BTreeMap::new();
    let mut scores = Collector::new(&config.kafka.scores_topic, PARTITIONS);
    let mut dead = Collector::new(&config.kafka.dead_letter_topic, PARTITIONS);

    let mut worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    for b in 0..BURSTS {
        let records = burst(b);
        let copies: Vec<In> = records.iter().map(|r| In { key: r.key.clone(), value: r.value.clone(), partition: r.partition }).collect();
        let positions = produce(&config, records).await;
        for (pos, rec) in positions.into_iter().zip(copies) {
            inputs.insert(pos, rec);
        }
        if b + 1 == BURSTS {
            break;
        }
        // Kill at a random point of this burst's processing: after a random share of it
        // has come out (some of it delivered but not yet committed or snapshotted).
        let done_before = scores.seen.len() + dead.seen.len();
        let burst_len = inputs.len() - done_before.min(inputs.len());
        let kill_after = done_before + 1 + rng.next((burst_len as u64 * 3 / 4).max(1)) as usize;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while scores.seen.len() + dead.seen.len() < kill_after {
            assert!(std::time::Instant::now() < deadline, "no progress to {kill_after} outputs:\n{}", worker.log());
            scores.read_for(Duration::from_millis(20));
            dead.read_for(Duration::from_millis(1));
        }
        worker.crash();
        worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    }

    // Let the last incarnation finish everything, then stop it cleanly.
    let total = inputs.len();
    let want = |s: &[Out], d: &[Out]| s.len() + d.len() >= total;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !want(&scores.seen, &dead.seen) {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {total} outputs after 120 s:\n{}",
            scores.seen.len() + dead.seen.len(),
            worker.log()
        );
        scores.read_for(Duration::from_millis(200));
        dead.read_for(Duration::from_millis(50));
    }
    // Anything extra (a duplicate) would arrive now.
    scores.read_for(Duration::from_secs(2));
    dead.read_for(Duration::from_secs(1));
    let (status, log) = worker.terminate(Duration::from_secs(60));
    assert!(status.success(), "worker exit {status}:\n{log}");
    assert!(log.contains("restored state"), "restarts restored snapshots:\n{log}");

    // Exactly one output per input offset.
    let mut counts = by_source(&scores.seen);
    for (k, n) in by_source(&dead.seen) {
        *counts.entry(k).or_default() += n;
    }
    assert_exactly_once(&counts, &inputs);

    // Every score equals the uninterrupted reference, bit for bit.
    let expected = reference(&config, &inputs);
    let mut compared = 0;
    for o in &scores.seen {
        let key = (o.source_partition.expect("header"), o.source_offset.expect("header"));
        let s = ScoredReading::decode(&o.payload[..]).expect("score decodes");
        let got = (s.score.to_bits(), s.raw_score.to_bits(), s.counters.map_or(0, |c| c.processed));
        assert_eq!(expected.get(&key), Some(&Some(got)), "score of {key:?} differs from the uninterrupted run (sensor {})", s.sensor_id);
        compared += 1;
    }
    for o in &dead.seen {
        let key = (o.source_partition.expect("header"), o.source_offset.expect("header"));
        assert_eq!(expected.get(&key), Some(&None), "dead letter for {key:?}, which the reference scored");
        DeadLetter::decode(&o.payload[..]).expect("dead letter decodes");
    }
    assert_eq!(compared, SENSORS * PER_SENSOR);
}
