//! `onad-stream replay` refuses the operator mistakes that once lost data, with the real
//! binary, the real broker and RocksDB on disk:
//! - an offset beyond the end of a partition (the group would wait past the last record while
//!   new readings were skipped) is refused, naming the partition and its bounds, and nothing
//!   changes; a group that is past the end anyway resumes at the end and answers every reading;
//! - a timestamp after the last record (the local broker answers offset 0) leaves every
//!   partition alone instead of moving it to its start;
//! - `--state keep` with a full snapshot history keeps the relabelled snapshot (it used to be
//!   pruned as the "oldest" while the newer ones were deleted), changelog or not;
//! - `--dry-run` prints the plan and changes nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;
/// Frequent snapshots with the default history of 4, so that the history is full.
const TOML: &str = "checkpoint_interval = 100\n[state]\ncheckpoint_secs = 1\nsnapshot_history = 4\n";

fn readings(from: usize, to: usize) -> Vec<In> {
    let mut v = Vec::new();
    for j in from..to {
        for i in 0..4 {
            let id = format!("g-{i}");
            let t = (j * 7 + i * 13) as f64;
            v.push(In {
                key: Some(id.clone().into_bytes()),
                value: reading(&id, j as i64, &[("a", t.sin()), ("b", (t * 0.2).cos())]),
                partition: (i as i32) % PARTITIONS,
            });
        }
    }
    v
}

/// Run `onad-stream replay ARGS` on the topics of `name` with `state` as `state.path`.
fn replay(name: &str, args: &[&str], state: &std::path::Path) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onad-stream"));
    cmd.arg("replay").args(args);
    for o in overrides(name, PARTITIONS) {
        cmd.arg("--set").arg(o);
    }
    cmd.arg("--set").arg(format!("state.path={:?}", state.display().to_string()));
    let out = cmd.output().expect("run replay");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `snapshot inspect --json` of the store at `state`: (partition, offset, keys) rows, newest first.
fn snapshots(name: &str, state: &std::path::Path) -> Vec<(i64, i64, u64)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onad-stream"))
        .args(["snapshot", "inspect", "--json", "--set", &format!("state.path={:?}", state.display().to_string())])
        .args(["--set", &format!("kafka.input_topic=\"{name}-in\"")])
        .output()
        .expect("run snapshot inspect");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "snapshot inspect failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .map(|v| (v["partition"].as_i64().unwrap_or(-1), v["offset"].as_i64().unwrap_or(-2), v["keys"].as_u64().unwrap_or(0)))
        .collect()
}

/// A first run over `n` readings per sensor (2 sensors per partition), then a clean stop.
async fn first_run(name: &str, state: &std::path::Path, n: usize) -> (onad_stream::config::Config, BTreeMap<(i32, i64), In>, Collector) {
    let config = config(name, PARTITIONS, &[]);
    create_topics(&config).await;
    let mut inputs = BTreeMap::new();
    let mut scores = Collector::new(&config.kafka.scores_topic, PARTITIONS);
    let worker = ChildWorker::start_with_state(name, PARTITIONS, TOML, state);
    // In waves, each waited for, so that snapshots land throughout.
    for w in 0..4 {
        send(&config, &mut inputs, readings(w * n / 4, (w + 1) * n / 4)).await;
        scores.until(Duration::from_secs(120), "the first run's scores", |s| s.len() >= inputs.len());
        std::thread::sleep(Duration::from_millis(1_200));
    }
    let (status, log) = worker.terminate(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    (config, inputs, scores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_beyond_the_end_is_refused_and_a_group_past_the_end_resumes_there_without_loss() {
    let name = unique("guard-end");
    let state = tempfile::tempdir().expect("state dir");
    let (config, mut inputs, mut scores) = first_run(&name, state.path(), 400).await;
    let group = &config.kafka.group_id;
    let end = 400 * 2; // 2 sensors x 400 readings per partition
    let before = committed(group, &config.kafka.input_topic, PARTITIONS);
    assert_eq!(before, vec![end, end]);
    let snaps = snapshots(&name, state.path());

    let beyond = format!("1:{}", end + 1000);
    let (ok, text) = replay(&name, &["--to-offset", &format!("0:100,{beyond}"), "--state", "reset"], state.path());
    assert!(!ok, "an offset beyond the end must be refused:\n{text}");
    assert!(
        text.contains(&format!("partition 1: offset {} is beyond the end", end + 1000))
            && text.contains(&format!("0..={}", end - 1))
            && text.contains("nothing changed"),
        "the refusal names the partition, the request and the bounds:\n{text}"
    );
    assert_eq!(committed(group, &config.kafka.input_topic, PARTITIONS), before, "no offset moved");
    assert_eq!(snapshots(&name, state.path()), snaps, "no snapshot touched (not even partition 0's)");

    // A group parked past the end anyway (an offset reset by another tool): the worker says
    // so and resumes at the end, so the next readings are answered, not skipped.
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&config.kafka.input_topic, 1, Offset::Offset(end + 1000)).expect("tpl");
    consumer.commit(&tpl, CommitMode::Sync).expect("commit past the end");
    drop(consumer);
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    worker.wait_log("beyond the partition's last record", Duration::from_secs(60));
    let seen = scores.seen.len();
    send(&config, &mut inputs, readings(400, 405)).await;
    scores.until(Duration::from_secs(60), "scores of the readings sent after the reset", |s| s.len() >= seen + 20);
    let (status, log) = worker.terminate(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let plain = strip_ansi(&log);
    assert!(plain.contains(&format!("partition=1 committed=Some({}) end={end}", end + 1000)), "the error names both offsets:\n{plain}");
    let new = by_source(&scores.seen[seen..]);
    for p in 0..PARTITIONS {
        let got: Vec<(i64, usize)> = new.iter().filter(|((q, _), _)| *q == p).map(|((_, o), n)| (*o, *n)).collect();
        let want: Vec<(i64, usize)> = (end..end + 10).map(|o| (o, 1)).collect();
        assert_eq!(got, want, "partition {p}: every new reading answered once, none skipped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timestamp_after_the_last_record_leaves_every_partition_alone() {
    let name = unique("guard-ts");
    let state = tempfile::tempdir().expect("state dir");
    let (config, _, _) = first_run(&name, state.path(), 200).await;
    let before = committed(&config.kafka.group_id, &config.kafka.input_topic, PARTITIONS);
    let snaps = snapshots(&name, state.path());
    let future = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64 + 3_600_000;

    let (ok, text) = replay(&name, &["--to-timestamp", &future.to_string(), "--state", "keep"], state.path());
    assert!(!ok, "nothing valid was requested: exit non-zero:\n{text}");
    for p in 0..PARTITIONS {
        assert!(text.contains(&format!("partition {p}: no record at or after {future}; left alone")), "{text}");
    }
    assert!(text.contains("nothing changed"), "{text}");
    assert_eq!(committed(&config.kafka.group_id, &config.kafka.input_topic, PARTITIONS), before, "no partition moved to 0");
    assert_eq!(snapshots(&name, state.path()), snaps, "no epoch raised, no snapshot touched");
    assert!(!text.contains("replay epoch"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_with_a_full_snapshot_history_keeps_the_relabelled_models_without_the_changelog() {
    let name = unique("guard-keep");
    let state = tempfile::tempdir().expect("state dir");
    let (config, _, _) = first_run(&name, state.path(), 400).await;
    let before = snapshots(&name, state.path());
    let p0: Vec<i64> = before.iter().filter(|(p, _, _)| *p == 0).map(|(_, o, _)| *o).collect();
    assert_eq!(p0.len(), 4, "partition 0 has a full history of newer snapshots: {before:?}");
    assert!(p0.iter().all(|o| *o >= 150), "every snapshot is newer than the target: {p0:?}");

    // The plan first: nothing changes.
    let (ok, text) = replay(&name, &["--to-offset", "0:150", "--state", "keep", "--dry-run", "--no-changelog"], state.path());
    assert!(ok, "{text}");
    assert!(text.contains("partition 0: next offset 800 -> 150, state keep, replay epoch 0 -> 1"), "{text}");
    assert_eq!(snapshots(&name, state.path()), before, "a dry run changes nothing");
    assert_eq!(committed(&config.kafka.group_id, &config.kafka.input_topic, PARTITIONS), vec![800, 800]);

    let (ok, text) = replay(&name, &["--to-offset", "0:150", "--state", "keep", "--no-changelog"], state.path());
    assert!(ok && text.contains("relabelled as applied up to 149"), "{text}");
    let after = snapshots(&name, state.path());
    let p0: Vec<(i64, u64)> = after.iter().filter(|(p, _, _)| *p == 0).map(|(_, o, k)| (*o, *k)).collect();
    assert_eq!(p0, vec![(149, 2)], "the kept models are the partition's snapshot now, with both sensors: {after:?}");
    // The worker resumes from them (the local snapshot, not the changelog's).
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    worker.wait_log("restored state", Duration::from_secs(60));
    let (status, log) = worker.terminate(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let plain = strip_ansi(&log);
    assert!(plain.contains("partition=0 snapshot=Some(149) keys=2"), "{plain}");
}
