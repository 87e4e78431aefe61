//! Circuit breakers through the real binary and the broker: a sensor whose detector really
//! fails (KNN's squared distances overflow on readings of 1e200, which validation accepts as
//! finite) is scored by the warm fallback with `degraded = true` and the reason, the other
//! sensors are not affected, no record is lost, and once `open_timeout` of event time has
//! passed a healthy trial reading closes the breaker. Without a fallback the failed readings
//! become PROCESSING dead letters.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use onad_stream::proto::{DeadLetter, ErrorKind, ScoredReading};
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 2;

/// KNN main detector; a breaker over 4 readings that opens above 50% (the 3rd failure) and
/// tries again after 10 s of event time.
fn toml(fallback: &str) -> String {
    format!(
        "model_type = \"knn\"\n[resilience]\nerror_window = 4\nerror_threshold = 0.5\nopen_timeout = \"10s\"\nfallback = \"{fallback}\"\n"
    )
}

/// The value of sensor `id` at event time `ts` (ms): "bad" sends 1e200 from 60 s to 64 s.
fn value(id: &str, ts: i64) -> f64 {
    if id == "bad" && (60_000..=64_000).contains(&ts) {
        1e200
    } else {
        10.0 + (ts / 500 % 7) as f64 * 0.1
    }
}

/// Event times (ms) of the readings: 120 healthy ones 0.5 s apart, then one a second from 60 s
/// to 90 s.
fn times() -> Vec<i64> {
    (0..120).map(|i| i * 500).chain((60..=90).map(|s| s * 1000)).collect()
}

/// The readings at `times` of "bad" and "good-0" (partition 0) and "good-1" (partition 1).
fn records_at(times: &[i64]) -> Vec<In> {
    let mut v = Vec::new();
    for &ts in times {
        for (id, partition) in [("bad", 0), ("good-0", 0), ("good-1", 1)] {
            let x = value(id, ts);
            v.push(In { key: Some(id.as_bytes().to_vec()), value: reading(id, ts, &[("a", x), ("b", x * 0.5)]), partition });
        }
    }
    v
}

fn records() -> Vec<In> {
    records_at(&times())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sensor_is_scored_degraded_until_its_breaker_closes_and_others_are_unaffected() {
    let mut s = Scenario::new("resil", PARTITIONS).await;
    send(&s.config, &mut s.inputs, records()).await;
    let worker = s.worker(&toml("zscore"));
    let n = s.inputs.len();
    tokio::task::block_in_place(|| {
        s.scores.until(WAIT, &format!("{n} scores"), |o| o.len() >= n);
        // Anything extra (a duplicate) would arrive right behind.
        s.scores.read_for(Duration::from_secs(1));
    });
    worker.stop();
    assert_exactly_once(&by_source(&s.scores.seen), &s.inputs);
    let mut bad = BTreeMap::new();
    for out in &s.scores.seen {
        let r = ScoredReading::decode(&out.payload[..]).expect("scores topic holds ScoredReadings");
        if r.sensor_id != "bad" {
            assert!(!r.degraded && r.degraded_reason.is_empty() && r.detector == "knn", "{} is affected: {r:?}", r.sensor_id);
            continue;
        }
        assert_eq!(r.degraded, !r.degraded_reason.is_empty(), "a degraded score says why: {r:?}");
        bad.insert(r.timestamp_ms, r);
    }
    for (ts, r) in &bad {
        // Failures from 60 s, open from the 3rd (62 s) until the healthy trial at 72 s.
        let degraded = (60_000..72_000).contains(ts);
        assert_eq!(r.degraded, degraded, "reading of `bad` at {ts} ms: {r:?}");
        if degraded {
            assert_eq!(r.detector, "zscore", "the fallback scored it");
            assert!(r.score.is_finite() && (0.0..=1.0).contains(&r.score));
        }
    }
    let reason = |ts: i64| bad[&ts].degraded_reason.as_str();
    assert!(reason(60_000).starts_with("`knn` gave a non-finite raw score (inf)"), "{}", reason(60_000));
    assert!(reason(62_000).contains("circuit breaker opened"), "{}", reason(62_000));
    assert!(reason(70_000).starts_with("circuit breaker of `knn` open (3 of the last 4 readings failed)"), "{}", reason(70_000));
    assert_eq!(bad[&72_000].detector, "knn", "the trial reading is the main detector's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fallback_failed_readings_become_processing_dead_letters() {
    let mut s = Scenario::new("resil-none", PARTITIONS).await;
    send(&s.config, &mut s.inputs, records()).await;
    let worker = s.worker(&toml("none"));
    let mut dead = Collector::new(&s.config.kafka.dead_letter_topic, PARTITIONS);
    // Failures at 60-62 s, then open until the trial at 72 s: 12 readings of `bad`.
    let (n, letters) = (s.inputs.len(), 12);
    tokio::task::block_in_place(|| {
        s.scores.until(WAIT, &format!("{} scores", n - letters), |o| o.len() >= n - letters);
        dead.until(WAIT, &format!("{letters} dead letters"), |d| d.len() >= letters);
        s.scores.read_for(Duration::from_secs(1));
        dead.read_for(Duration::from_millis(200));
    });
    worker.stop();
    let mut all = s.scores.seen.clone();
    all.extend(dead.seen.iter().cloned());
    assert_exactly_once(&by_source(&all), &s.inputs);
    for out in &dead.seen {
        let d = DeadLetter::decode(&out.payload[..]).expect("dead-letter topic holds DeadLetters");
        assert_eq!(d.error_kind, ErrorKind::Processing as i32, "{d:?}");
        assert_eq!(d.original_key, b"bad");
        assert!(d.error_message.contains("no fallback (resilience.fallback = \"none\")"), "{}", d.error_message);
    }
    let degraded = s.scores.seen.iter().filter(|o| ScoredReading::decode(&o.payload[..]).map(|r| r.degraded).unwrap_or(true)).count();
    assert_eq!(degraded, 0, "nothing is degraded without a fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_continues_an_open_breaker_bit_identically() {
    let mut s = Scenario::new("resil-restart", PARTITIONS).await;
    let toml = toml("zscore");
    // Stop after the readings of 66 s: `bad`'s breaker (open since 62 s) is in the snapshot.
    let t = times();
    let split = t.iter().position(|&ts| ts == 67_000).expect("67 s is an event time");
    let worker = s.worker(&toml);
    s.send_and_score(records_at(&t[..split]), "the first part scored").await;
    worker.stop();
    let worker = s.worker(&toml);
    s.send_and_score(records_at(&t[split..]), "the second part scored").await;
    s.scores.read_for(Duration::from_secs(1));
    worker.stop();
    assert_exactly_once(&by_source(&s.scores.seen), &s.inputs);
    let degraded_after_restart = s.scores.seen.iter().filter_map(|o| ScoredReading::decode(&o.payload[..]).ok()).any(|r| {
        r.sensor_id == "bad" && r.timestamp_ms == 67_000 && r.degraded && r.degraded_reason.starts_with("circuit breaker of `knn` open")
    });
    assert!(degraded_after_restart, "the restarted worker kept the breaker open");
    // The reference: the same config, every reading through one Processor, no restart.
    let sets = ["model_type=\"knn\"", "resilience.error_window=4", "resilience.error_threshold=0.5", "resilience.open_timeout=\"10s\""];
    let expected = reference(&config(&s.name, PARTITIONS, &sets), &s.inputs);
    assert_scores(&scores_of(&s.scores.seen), &expected, "one uninterrupted processor");
}

/// Wait (bounded) until `read()` equals `want`; panics naming `what` otherwise.
fn wait_for(what: &str, want: u64, read: impl Fn() -> u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read() != want {
        assert!(std::time::Instant::now() < deadline, "{what} is {} after 30 s, expected {want}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_stats_count_open_breakers_and_degraded_readings() {
    let sets = ["model_type=\"knn\"", "resilience.error_window=4", "resilience.error_threshold=0.5", "resilience.open_timeout=\"10s\""];
    let mut s = Scenario::new("resil-stats", PARTITIONS).await;
    let config = config(&s.name, PARTITIONS, &sets);
    let worker = RunningWorker::start(config.clone());
    let t = times();
    let split = t.iter().position(|&ts| ts == 67_000).expect("67 s is an event time");
    s.send_and_score(records_at(&t[..split]), "readings up to 66 s scored").await;
    let (p0, p1) = (worker.stats.partition(&config.kafka.input_topic, 0), worker.stats.partition(&config.kafka.input_topic, 1));
    let gauge = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    tokio::task::block_in_place(|| {
        wait_for("breakers_open of partition 0", 1, || gauge(&p0.breakers_open));
        wait_for("degraded of partition 0 (60-66 s of `bad`)", 7, || gauge(&p0.degraded));
    });
    assert_eq!((gauge(&p1.breakers_open), gauge(&p1.degraded)), (0, 0), "partition 1 has only healthy sensors");
    assert_eq!(gauge(&p0.breakers_half_open), 0, "open since 62 s, the partition's clock at 66 s: no trial due");
    // `bad` goes quiet while the other sensors of partition 0 carry its event time past 72 s:
    // its breaker's timeout has passed, its next reading is the trial (half-open).
    let (rest_bad, rest): (Vec<In>, Vec<In>) = records_at(&t[split..]).into_iter().partition(|r| r.key.as_deref() == Some(b"bad"));
    s.send_and_score(rest, "the other sensors' readings up to 90 s scored").await;
    tokio::task::block_in_place(|| wait_for("breakers_half_open of partition 0 while `bad` is quiet", 1, || gauge(&p0.breakers_half_open)));
    assert_eq!((gauge(&p0.breakers_open), gauge(&p1.breakers_half_open)), (1, 0), "half-open breakers are still open");
    s.send_and_score(rest_bad, "the rest scored").await;
    tokio::task::block_in_place(|| {
        wait_for("breakers_open of partition 0 after the trial", 0, || gauge(&p0.breakers_open));
        wait_for("breakers_half_open of partition 0 after the trial", 0, || gauge(&p0.breakers_half_open));
        wait_for("degraded of partition 0 (60-71 s of `bad`)", 12, || gauge(&p0.degraded));
    });
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_cooldown_raises_one_alert_per_sensor_per_cooldown_and_still_scores_anomalies() {
    let mut s = Scenario::new("resil-cooldown", 1).await;
    let reading_at = |ts: i64, v: f64| In { key: Some(b"pump".to_vec()), value: reading("pump", ts, &[("flow", v)]), partition: 0 };
    let mut records: Vec<In> = (0..200).map(|i| reading_at(i * 1000, 10.0 + (i % 7) as f64 * 0.1)).collect();
    // Four growing spikes within a minute, then one 6 minutes after the first.
    let spikes = [(200_000, 1e6), (201_000, 1e9), (202_000, 1e12), (203_000, 1e15), (560_000, 1e18)];
    records.extend(spikes.iter().map(|&(ts, v)| reading_at(ts, v)));
    let n = records.len();
    send(&s.config, &mut s.inputs, records).await;
    let worker = ChildWorker::start_with_state(&s.name, 1, "[alerts]\ncooldown = \"5m\"\n", s.state.path());
    let mut alerts = Collector::new(&s.config.kafka.alerts_topic, 1);
    tokio::task::block_in_place(|| {
        s.scores.until(WAIT, &format!("{n} scores"), |o| o.len() >= n);
        alerts.until(WAIT, "2 alerts", |a| a.len() >= 2);
        alerts.read_for(Duration::from_secs(1));
    });
    worker.stop();
    let anomalous: Vec<i64> = s
        .scores
        .seen
        .iter()
        .filter_map(|o| ScoredReading::decode(&o.payload[..]).ok())
        .filter(|r| r.is_anomaly)
        .map(|r| r.timestamp_ms)
        .collect();
    assert_eq!(anomalous, spikes.iter().map(|(ts, _)| *ts).collect::<Vec<_>>(), "every spike is scored as an anomaly");
    let alerted: Vec<i64> = alerts
        .seen
        .iter()
        .filter_map(|o| onad_stream::proto::AnomalyAlert::decode(&o.payload[..]).ok())
        .filter_map(|a| a.reading.map(|r| r.timestamp_ms))
        .collect();
    assert_eq!(alerted, vec![200_000, 560_000], "one alert per 5 minutes of event time");
}
