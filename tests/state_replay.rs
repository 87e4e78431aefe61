//! `onad-stream replay --state rewind` with the real binary: after a run, the group is moved
//! back to the middle of every partition and the state rewound; the restarted worker restores
//! the nearest snapshot at or before the target, replays up to it silently, re-learns the
//! rest, and then scores new readings exactly as an uninterrupted run would (a model that
//! was kept instead would have learned the replayed span twice, and score differently).
//! Already emitted outputs are not emitted again.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const PARTITIONS: i32 = 2;
const TOML: &str = "checkpoint_interval = 300\n[state]\ncheckpoint_secs = 1\nsnapshot_history = 8\n";

const FLEET: Fleet = Fleet {
    prefix: "m",
    sensors: 6,
    partitions: PARTITIONS,
    values: |j, i| {
        let t = (j * 5 + i * 11) as f64;
        vec![("a", t.sin() * 2.0), ("b", (t * 0.3).cos())]
    },
};

fn wait_outputs(c: &mut Collector, n: usize, what: &str) {
    c.until(Duration::from_secs(120), what, |s| s.len() >= n);
}

/// A scenario after a first run of the worker: each of `bursts` (steps `from..to` of the
/// fleet) sent and scored before the next, then a clean stop.
async fn after_a_first_run(prefix: &str, bursts: &[(usize, usize)]) -> Scenario {
    let mut s = Scenario::new(prefix, PARTITIONS).await;
    let worker = s.worker(TOML);
    for &(from, to) in bursts {
        s.send_and_score(FLEET.readings(from, to), "the first run's scores").await;
    }
    worker.stop();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_with_state_rewind_rebuilds_the_models_of_the_original_run() {
    // Two bursts of 600 per partition, so that a snapshot lands before the replay target.
    let Scenario { name, config, state, mut inputs, mut scores, .. } = after_a_first_run("replay", &[(0, 200), (200, 400)]).await;

    // Move the group back to offset 700 of each partition, rewinding the models.
    let text = replay_cmd(&name, &["--group", &config.kafka.group_id, "--to-offset", "0:700,1:700", "--state", "rewind"], state.path());
    assert!(text.contains("rewound to snapshot"), "replay found a snapshot to rewind to:\n{text}");

    // Restart on the rewound state, then send new readings.
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    worker.wait_log("restored state", Duration::from_secs(60));
    let second = FLEET.readings(400, 500);
    send(&config, &mut inputs, second).await;
    wait_outputs(&mut scores, inputs.len(), "scores of the new readings");
    scores.read_for(Duration::from_secs(2));
    let log = worker.stop();
    let plain = strip_ansi(&log);
    assert!(
        plain.contains("committed=Some(700) start_at=Some(600)"),
        "the worker resumed after its snapshot 599, not at the committed 700:\n{plain}"
    );

    // No offset was emitted twice (the replayed span was already in the scores topic).
    let dups: Vec<_> = by_source(&scores.seen).into_iter().filter(|(_, n)| *n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates after replay: {dups:?}");

    // Every score, old and new, equals one uninterrupted pass over the input.
    let got = scores_of(&scores.seen);
    assert_scores(&got, &reference(&config, &inputs), "the uninterrupted run");
}

/// Run `onad-stream replay ARGS` for the topics of `name` with `state` as its `state.path`
/// and `sets` as further overrides: (success, output).
fn try_replay(name: &str, args: &[&str], state: &std::path::Path, sets: &[String]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onad-stream"));
    cmd.arg("replay").args(args);
    for o in overrides(name, PARTITIONS) {
        cmd.arg("--set").arg(o);
    }
    cmd.arg("--set").arg(format!("state.path={:?}", state.display().to_string()));
    for o in sets {
        cmd.arg("--set").arg(o);
    }
    let out = cmd.output().expect("run replay");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// As [`try_replay`] without extra overrides, asserting success.
fn replay_cmd(name: &str, args: &[&str], state: &std::path::Path) -> String {
    let (ok, text) = try_replay(name, args, state, &[]);
    assert!(ok, "replay failed:\n{text}");
    text
}

/// Epoch of an output (its `onad-replay-epoch` header; absent = 0).
fn epoch_of(o: &Out) -> u32 {
    o.epoch.unwrap_or(0)
}

/// `--state reset` in place: the replayed records get new scores, emitted although outputs of
/// those offsets are already in the scores topic, each exactly once even though the worker
/// is killed with SIGKILL halfway through; they carry replay epoch 1 and are the scores of
/// fresh models started at the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_with_state_reset_emits_fresh_scores_for_the_replayed_span_exactly_once_across_a_crash() {
    replay_reset(false).await;
}

/// As above, with the replay run against another replica's store (as an operator may, on
/// any one machine): the worker's own store still holds snapshots from before the replay,
/// newer than its target; the worker sees the new epoch in the changelog, ignores them and
/// restores the reset state from the changelog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_with_state_reset_run_against_another_store_is_obeyed_by_the_worker() {
    replay_reset(true).await;
}

async fn replay_reset(elsewhere: bool) {
    let Scenario { name, config, state, inputs, mut scores, .. } = after_a_first_run("replay-reset", &[(0, 3000)]).await;
    let first_run = scores.seen.len();
    assert!(scores.seen.iter().all(|o| epoch_of(o) == 0), "outputs before any replay are of epoch 0");

    // 9,000 per partition were scored; replay partition 0 from 600 with fresh models.
    let other = tempfile::tempdir().expect("another replica's state dir");
    let text = replay_cmd(
        &name,
        &["--group", &config.kafka.group_id, "--to-offset", "0:600", "--state", "reset"],
        if elsewhere { other.path() } else { state.path() },
    );
    assert!(text.contains("state reset") && text.contains("replay epoch 1"), "{text}");
    let replayed_span = 9_000 - 600;
    let addr = free_addr();
    let watched = format!("{TOML}[telemetry]\nmetrics_addr = \"{addr}\"\n");
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, &watched, state.path());
    if elsewhere {
        worker.wait_log("this store's snapshots predate it", Duration::from_secs(60));
    }
    // Kill it a quarter into the replay (its own counter: the outputs lag behind).
    worker.wait_log("serving /metrics and /health", Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while metric(&addr, "onad_records_consumed_total").unwrap_or(0) < (replayed_span / 4) as u64 {
        assert!(std::time::Instant::now() < deadline, "the worker did not get a quarter into the replay:\n{}", worker.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    worker.crash();
    scores.read_for(Duration::from_secs(1));
    assert!(scores.seen.len() < first_run + replayed_span, "the kill landed after the replay was done: nothing left to prove");
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    wait_outputs(&mut scores, first_run + replayed_span, "the rest of the replay's scores");
    scores.read_for(Duration::from_secs(2));
    let log = worker.stop();
    assert!(strip_ansi(&log).contains("restored state"), "the restarted worker resumed from its snapshot:\n{log}");

    // Exactly the replayed span came out again, once, in epoch 1.
    let replayed = &scores.seen[first_run..];
    assert!(replayed.iter().all(|o| epoch_of(o) == 1), "replay outputs carry epoch 1");
    let again = by_source(replayed);
    let outside: Vec<_> = again.keys().filter(|(p, o)| *p != 0 || !(600..9_000).contains(o)).take(5).collect();
    assert!(outside.is_empty(), "outputs outside the replayed span: {outside:?}");
    let dups: Vec<_> = again.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "replayed offsets emitted twice across the crash: {dups:?}");
    assert_eq!(again.len(), replayed_span, "one new score per replayed record");

    // They are the scores of fresh models fed partition 0 from offset 600 ...
    let fresh: BTreeMap<(i32, i64), In> = inputs
        .iter()
        .filter(|((p, o), _)| *p == 0 && *o >= 600)
        .map(|(k, r)| (*k, In { key: r.key.clone(), value: r.value.clone(), partition: r.partition }))
        .collect();
    let got = scores_of(replayed);
    for ((p, o), want) in reference(&config, &fresh) {
        let (score, raw, _) = want.expect("valid reading");
        assert_eq!(got.get(&(p, o)), Some(&(score, raw)), "replayed score of {p}:{o} is not a fresh model's");
    }
    // ... not the first run's (whose models had learned 0..600).
    let original = scores_of(&scores.seen[..first_run]);
    assert!(got.iter().any(|(k, v)| original.get(k) != Some(v)), "the replay reproduced the old scores: the state was not reset");
}

/// A backfill while the live group runs: the backfill gets its own group, output topics,
/// changelog and store (the same `--set`s for `replay` and `run`), replays the input from
/// offset 0 with fresh models and scores all of it into its own topics; the live worker
/// meanwhile answers every new reading exactly once, and its changelog still hands its
/// models over afterwards (the backfill's replay did not touch it). `replay` refuses a
/// `--group` that is not the configuration's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_into_its_own_topics_does_not_disturb_the_live_group() {
    let Scenario { name, config, state: live_state, mut inputs, scores: mut live_scores, .. } = Scenario::new("backfill", PARTITIONS).await;
    let backfill_state = tempfile::tempdir().expect("backfill state dir");
    let backfill: Vec<String> = ["group_id", "scores_topic", "alerts_topic", "dead_letter_topic", "changelog_topic"]
        .iter()
        .map(|k| format!("kafka.{k}=\"{name}-bf-{k}\""))
        .collect();
    let live = ChildWorker::start_with_state(&name, PARTITIONS, TOML, live_state.path());
    let batch = FLEET.readings(0, 200);
    send(&config, &mut inputs, batch).await;
    wait_outputs(&mut live_scores, inputs.len(), "the live group's scores");

    let bf_group = format!("{name}-bf-group_id");
    // Naming the backfill group while keeping the live group's changelog and store: refused.
    let (ok, text) = try_replay(&name, &["--group", &bf_group, "--to-offset", "0:0,1:0", "--state", "reset"], backfill_state.path(), &[]);
    assert!(!ok && text.contains("is not kafka.group_id"), "replay of another group with this group's state must fail:\n{text}");

    // The backfill's replay, with the live worker running, then its worker.
    let (ok, text) =
        try_replay(&name, &["--group", &bf_group, "--to-offset", "0:0,1:0", "--state", "reset"], backfill_state.path(), &backfill);
    assert!(ok, "backfill replay failed:\n{text}");
    let bf = ChildWorker::start_with_sets(&name, PARTITIONS, TOML, backfill_state.path(), &backfill);
    let batch = FLEET.readings(200, 300);
    send(&config, &mut inputs, batch).await;
    let mut bf_scores = Collector::new(&format!("{name}-bf-scores_topic"), PARTITIONS);
    bf_scores.until(Duration::from_secs(120), "the backfill's scores", |s| s.len() >= inputs.len());
    wait_outputs(&mut live_scores, inputs.len(), "the live group's scores of the new readings");
    bf_scores.read_for(Duration::from_secs(2));
    live_scores.read_for(Duration::from_millis(500));
    let (status, log) = bf.terminate(Duration::from_secs(60));
    assert!(status.success(), "backfill worker:\n{log}");
    let (status, log) = live.terminate(Duration::from_secs(60));
    assert!(status.success(), "live worker:\n{log}");

    // Both answered every input exactly once, with the scores of one pass from offset 0.
    let expected = reference(&config, &inputs);
    for (what, outs) in [("live", &live_scores.seen), ("backfill", &bf_scores.seen)] {
        let counts = by_source(outs);
        assert!(counts.values().all(|n| *n == 1), "{what}: duplicated scores");
        assert_eq!(counts.len(), inputs.len(), "{what}: one score per input");
        let got = scores_of(outs);
        for ((p, o), want) in &expected {
            let (score, raw, _) = want.expect("valid reading");
            assert_eq!(got.get(&(*p, *o)), Some(&(score, raw)), "{what}: score of {p}:{o} differs from one pass over the input");
        }
    }

    // The live changelog still holds the live models: a replica with no local state takes
    // them over and scores new readings as one uninterrupted pass would.
    let fresh_state = tempfile::tempdir().expect("another replica's state dir");
    let replica = ChildWorker::start_with_state(&name, PARTITIONS, TOML, fresh_state.path());
    let batch = FLEET.readings(300, 350);
    send(&config, &mut inputs, batch).await;
    wait_outputs(&mut live_scores, inputs.len(), "the new replica's scores");
    let (status, log) = replica.terminate(Duration::from_secs(60));
    assert!(status.success(), "replica:\n{log}");
    assert!(strip_ansi(&log).contains("restoring from the changelog"), "the replica restored the live models from the changelog:\n{log}");
    let got = scores_of(&live_scores.seen);
    for ((p, o), want) in reference(&config, &inputs) {
        let (score, raw, _) = want.expect("valid reading");
        assert_eq!(
            got.get(&(p, o)),
            Some(&(score, raw)),
            "score of {p}:{o} after the handover differs (live models reset by the backfill?)"
        );
    }
}

/// `--to-timestamp T`: the group is moved, in every partition, to the first record at or
/// after T (records produced after T was taken), and `--state rewind` then reproduces the
/// original scores without emitting them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_a_timestamp_moves_every_partition_to_the_first_record_at_or_after_it() {
    let Scenario { name, config, state, mut inputs, mut scores, .. } = Scenario::new("replay-ts", PARTITIONS).await;
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    send(&config, &mut inputs, FLEET.readings(0, 150)).await;
    let before: Vec<i64> = (0..PARTITIONS).map(|p| inputs.keys().filter(|(q, _)| *q == p).count() as i64).collect();
    // Timestamps are in ms: a clear gap on both sides of T.
    std::thread::sleep(Duration::from_millis(50));
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    std::thread::sleep(Duration::from_millis(50));
    send(&config, &mut inputs, FLEET.readings(150, 250)).await;
    wait_outputs(&mut scores, inputs.len(), "the first run's scores");
    worker.stop();
    let first_run = scores.seen.len();

    let text = replay_cmd(&name, &["--to-timestamp", &t.to_string(), "--state", "rewind"], state.path());
    let moved = committed(&config.kafka.group_id, &config.kafka.input_topic, PARTITIONS);
    assert_eq!(moved, before, "every partition starts at its first record produced after T:\n{text}");

    // The rewound worker reproduces the span after T silently (already emitted, same scores).
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    worker.wait_log("restored state", Duration::from_secs(60));
    send(&config, &mut inputs, FLEET.readings(250, 260)).await;
    wait_outputs(&mut scores, inputs.len(), "scores of the readings after the replay");
    scores.read_for(Duration::from_secs(2));
    worker.stop();
    assert_eq!(scores.seen.len(), first_run + 60, "only the new readings were emitted");
    assert!(by_source(&scores.seen).values().all(|n| *n == 1), "duplicates after the replay");
    assert_scores(&scores_of(&scores.seen), &reference(&config, &inputs), "the uninterrupted run");
}

/// `--state keep` run on a machine whose store has no snapshot of the partition: the replay
/// takes the group's models from the changelog (not fresh ones), relabels them at the target,
/// and the worker, whose own snapshots predate the replay, re-learns and re-scores the span
/// with them: exactly the scores of models that learned everything once and then the
/// replayed span again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_with_state_keep_from_a_store_without_snapshots_keeps_the_changelog_models() {
    let Scenario { name, config, state, inputs, mut scores, .. } = after_a_first_run("replay-keep", &[(0, 500)]).await;
    let elsewhere = tempfile::tempdir().expect("an empty store on another machine");
    let first_run = scores.seen.len();

    let text = replay_cmd(&name, &["--group", &config.kafka.group_id, "--to-offset", "0:600", "--state", "keep"], elsewhere.path());
    assert!(
        text.contains("took the changelog's state at offset 1499") && text.contains("kept the models") && text.contains("replay epoch 1"),
        "{text}"
    );
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, TOML, state.path());
    wait_outputs(&mut scores, first_run + 900, "new scores of the replayed span");
    scores.read_for(Duration::from_secs(2));
    let log = worker.stop();
    assert!(strip_ansi(&log).contains("snapshots predate it"), "{log}");
    let replayed = &scores.seen[first_run..];
    assert_eq!(by_source(replayed).len(), 900, "one new score per replayed record:\n{log}");

    // Partition 0 learned once, then the span 600.. again.
    let partition0: Vec<((i32, i64), In)> = inputs.iter().filter(|((p, _), _)| *p == 0).map(|(k, r)| (*k, r.clone())).collect();
    let twice: BTreeMap<(i32, i64), In> = partition0
        .iter()
        .cloned()
        .chain(partition0.iter().filter(|((_, o), _)| *o >= 600).map(|((p, o), r)| ((*p, o + 10_000), r.clone())))
        .collect();
    let expected: Expected =
        reference(&config, &twice).into_iter().filter(|((_, o), _)| *o >= 10_000).map(|((p, o), v)| ((p, o - 10_000), v)).collect();
    assert_scores(&scores_of(replayed), &expected, "models that learned everything once, then the span again");
}
