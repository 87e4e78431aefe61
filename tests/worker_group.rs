//! Workers in a consumer group on the real broker: partitions split between members, a
//! crashed member's partitions move to the survivor without loss, and a graceful shutdown
//! (SIGTERM) commits so that a restarted worker does not re-emit what was committed.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn wait_for(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_partitions_and_the_survivor_takes_over_without_loss() {
    let name = unique("group");
    let config = config(&name, 4, &[]);
    create_topics(&config).await;
    let a = ChildWorker::start(&name, 4, "");
    let b = RunningWorker::start(config.clone());
    tokio::task::block_in_place(|| {
        wait_for(WAIT, "worker B to own some but not all of the 4 partitions", || {
            let owned = b.stats.partitions.load(Ordering::Relaxed);
            (1..4).contains(&owned) && a.log().contains("partition assigned")
        })
    });
    let first = produce(&config, fleet(8, 4, 50, None)).await;
    let mut scores = Collector::new(&config.kafka.scores_topic, 4);
    let want1: BTreeSet<(i32, i64)> = first.iter().copied().collect();
    tokio::task::block_in_place(|| {
        scores.until(WAIT, "a score for every reading of the first wave", |s| want1.is_subset(&by_source(s).keys().copied().collect()))
    });
    let b_share = b.consumed();
    assert!(b_share > 0 && b_share < first.len() as u64, "B consumed {b_share} of {}: the partitions were not split", first.len());

    // A crashes: no drain, no commit. B must take over A's partitions after the session timeout.
    a.crash();
    let second = produce(&config, fleet(8, 4, 50, None)).await;
    tokio::task::block_in_place(|| {
        wait_for(WAIT, "worker B to own all 4 partitions after A crashed", || b.stats.partitions.load(Ordering::Relaxed) == 4)
    });
    let want: BTreeSet<(i32, i64)> = first.iter().chain(&second).copied().collect();
    tokio::task::block_in_place(|| {
        scores.until(WAIT, "a score for every reading of both waves", |s| want.is_subset(&by_source(s).keys().copied().collect()));
        scores.read_for(Duration::from_millis(500));
    });
    let counts = by_source(&scores.seen);
    let unknown: Vec<_> = counts.keys().filter(|k| !want.contains(k)).collect();
    assert!(unknown.is_empty(), "scores answering offsets never produced: {unknown:?}");
    // At-least-once: a re-delivered reading is recognisable by its source offset, and only
    // readings A had not committed can be repeated (those of the first wave).
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(k, _)| *k).collect();
    let second_set: BTreeSet<(i32, i64)> = second.iter().copied().collect();
    assert!(repeated.iter().all(|k| !second_set.contains(k)), "second-wave readings scored twice: {repeated:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_so_a_restarted_worker_does_not_reemit() {
    let name = unique("restart");
    let config = config(&name, 4, &[]);
    create_topics(&config).await;
    let first = produce(&config, fleet(8, 4, 50, None)).await;
    // No auto-commit (periodic, or librdkafka's own on close): only the worker's commit on
    // shutdown can keep the restart from re-emitting.
    let a = ChildWorker::start(&name, 4, "[kafka.settings]\n\"enable.auto.commit\" = \"false\"\n");
    let mut scores = Collector::new(&config.kafka.scores_topic, 4);
    tokio::task::block_in_place(|| scores.until(WAIT, "a score for every reading", |s| s.len() >= first.len()));
    let (status, log) = tokio::task::block_in_place(|| a.terminate(Duration::from_secs(30)));
    assert!(status.success(), "worker exited with {status} after SIGTERM:\n{log}");
    assert!(log.contains("shutdown requested"), "no drain on SIGTERM:\n{log}");

    let second = produce(&config, fleet(8, 4, 50, None)).await;
    let b = RunningWorker::start(config.clone());
    let want: BTreeSet<(i32, i64)> = first.iter().chain(&second).copied().collect();
    tokio::task::block_in_place(|| {
        scores
            .until(WAIT, "scores of the readings produced after the restart", |s| want.is_subset(&by_source(s).keys().copied().collect()));
        scores.read_for(Duration::from_secs(1));
    });
    let counts = by_source(&scores.seen);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(k, _)| *k).collect();
    assert!(
        repeated.is_empty(),
        "the restarted worker re-emitted {} committed readings, e.g. {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(5)]
    );
    assert_eq!(counts.len(), want.len());
    let summary = b.stop().await;
    assert_eq!(summary.consumed, second.len() as u64, "the restarted worker read only what was not committed");
}
