//! Scaling 1 -> 3 -> 1 replicas of the real binary, each with its own state directory: a
//! partition that moves to a replica without local state continues with the previous
//! owner's models (restored from the changelog topic), and when it moves back the old owner
//! takes the newer changelog state over its own stale snapshot. Every input offset has
//! exactly one output and every score equals one uninterrupted pass over the input.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const PARTITIONS: i32 = 4;
const TOML: &str = "checkpoint_interval = 200\n[state]\ncheckpoint_secs = 1\n";

const FLEET: Fleet = Fleet {
    prefix: "h",
    sensors: 12,
    partitions: PARTITIONS,
    values: |j, i| {
        let t = (j * 3 + i * 17) as f64;
        vec![("x", t.sin()), ("y", (t * 0.7).cos() * 3.0)]
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_to_three_to_one_hands_models_over_without_loss_duplicates_or_reset() {
    let name = unique("handoff");
    let config = config(&name, PARTITIONS, &[]);
    create_topics(&config).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("state dir")).collect();
    let mut inputs = BTreeMap::new();
    let mut scores = Collector::new(&config.kafka.scores_topic, PARTITIONS);
    let wait = |c: &mut Collector, n: usize, what: &str| {
        c.until(Duration::from_secs(120), what, |s| s.len() >= n);
    };

    let a = ChildWorker::start_with_state(&name, PARTITIONS, TOML, dirs[0].path());
    send(&config, &mut inputs, FLEET.readings(0, 300)).await;
    wait(&mut scores, inputs.len(), "scores with one replica");

    let b = ChildWorker::start_with_state(&name, PARTITIONS, TOML, dirs[1].path());
    let c = ChildWorker::start_with_state(&name, PARTITIONS, TOML, dirs[2].path());
    b.wait_log("partition assigned", Duration::from_secs(60));
    c.wait_log("partition assigned", Duration::from_secs(60));
    send(&config, &mut inputs, FLEET.readings(300, 600)).await;
    wait(&mut scores, inputs.len(), "scores with three replicas");
    let moved = b.log().contains("restoring from the changelog") || c.log().contains("restoring from the changelog");
    assert!(moved, "a new replica took a partition over with the changelog's models:\nB:\n{}\nC:\n{}", b.log(), c.log());

    let (sb, lb) = b.terminate(Duration::from_secs(60));
    let (sc, lc) = c.terminate(Duration::from_secs(60));
    assert!(sb.success() && sc.success(), "B:\n{lb}\nC:\n{lc}");
    send(&config, &mut inputs, FLEET.readings(600, 900)).await;
    wait(&mut scores, inputs.len(), "scores with one replica again");
    scores.read_for(Duration::from_secs(2));
    let (sa, la) = a.terminate(Duration::from_secs(60));
    assert!(sa.success(), "{la}");

    assert_exactly_once(&by_source(&scores.seen), &inputs);

    assert_scores(
        &scores_of(&scores.seen),
        &reference(&config, &inputs),
        "one uninterrupted pass (model reset or double-learned on handoff?)",
    );
}
