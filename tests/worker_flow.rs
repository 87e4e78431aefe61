//! The worker end to end on the real broker: every reading gets exactly one score, spikes
//! raise alerts, bad records become dead letters and the worker keeps going.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use onad_stream::proto::{AnomalyAlert, DeadLetter, ErrorKind, ScoredReading};
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_yields_exactly_one_score_and_spikes_raise_alerts() {
    let name = unique("flow");
    let config = config(&name, 4, &[]);
    create_topics(&config).await;
    let (sensors, per_sensor, spike) = (8, 300, 290);
    let records = fleet(sensors, 4, per_sensor, Some(spike));
    let keys: Vec<Vec<u8>> = records.iter().map(|r| r.key.clone().unwrap_or_default()).collect();
    let spikes: Vec<bool> = (0..records.len()).map(|i| i / sensors == spike).collect();
    let positions = produce(&config, records).await;
    let expected: BTreeMap<(i32, i64), (Vec<u8>, bool)> = positions.iter().zip(keys).zip(spikes).map(|((p, k), s)| (*p, (k, s))).collect();

    let worker = RunningWorker::start(config.clone());
    let mut scores = Collector::new(&config.kafka.scores_topic, 4);
    let n = expected.len();
    tokio::task::block_in_place(|| {
        scores.until(WAIT, &format!("{n} scores"), |s| s.len() >= n);
        // Anything extra (a duplicate) would arrive right behind.
        scores.read_for(Duration::from_secs(1));
    });
    let counts = by_source(&scores.seen);
    assert_eq!(scores.seen.len(), n, "more scores than readings: duplicates");
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        expected.keys().copied().collect::<Vec<_>>(),
        "scores do not answer exactly the produced offsets"
    );
    for out in &scores.seen {
        let s = ScoredReading::decode(&out.payload[..]).expect("scores topic holds ScoredReadings");
        let src = s.source.expect("score has a source position");
        let (key, _) = &expected[&(src.partition, src.offset)];
        assert_eq!(&out.key, key, "score key is the sensor id");
        assert_eq!(s.sensor_id.as_bytes(), &key[..]);
        assert_eq!(out.partition, src.partition, "output partition = input partition");
        assert_eq!((out.source_partition, out.source_offset), (Some(src.partition), Some(src.offset)), "headers match the payload");
        assert_eq!(src.topic, config.kafka.input_topic);
    }

    let spike_positions: BTreeSet<(i32, i64)> = expected.iter().filter(|(_, (_, s))| *s).map(|(p, _)| *p).collect();
    let mut alerts = Collector::new(&config.kafka.alerts_topic, 4);
    tokio::task::block_in_place(|| {
        alerts.until(WAIT, "an alert for every spike", |a| {
            let got: BTreeSet<(i32, i64)> = a.iter().filter_map(|o| Some((o.source_partition?, o.source_offset?))).collect();
            spike_positions.is_subset(&got)
        });
    });
    for out in &alerts.seen {
        let a = AnomalyAlert::decode(&out.payload[..]).expect("alerts topic holds AnomalyAlerts");
        let src = a.source.expect("alert has a source position");
        assert_eq!(a.alert_id, format!("{}/{}/{}", src.topic, src.partition, src.offset));
        if spike_positions.contains(&(src.partition, src.offset)) {
            assert_eq!(a.top_features.first().map(|f| f.feature.as_str()), Some("temp"), "the spiking feature leads");
        }
    }
    let false_alerts = alerts.seen.len() - spike_positions.len();
    assert!(false_alerts * 100 <= n, "{false_alerts} alerts on {n} steady readings");

    let summary = worker.stop().await;
    assert_eq!(summary.scored, n as u64);
    assert_eq!(summary.dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_dead_letters_with_reasons_and_the_worker_keeps_going() {
    let name = unique("dead");
    let config = config(&name, 1, &[]);
    create_topics(&config).await;
    let good = |i: i64| In { key: Some(b"s1".to_vec()), value: reading("s1", i, &[("t", 1.0 + i as f64)]), partition: 0 };
    let many: Vec<(String, f64)> = (0..5000).map(|i| (format!("feature-{i}"), 1.0)).collect();
    let many: Vec<(&str, f64)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let mut records: Vec<In> = (0..5).map(good).collect();
    records.push(In { key: Some(b"s1".to_vec()), value: b"\x08\x96\x01garbage\xff\xff".to_vec(), partition: 0 });
    records.push(In { key: Some(b"s1".to_vec()), value: reading("s1", 6, &[("t", f64::NAN)]), partition: 0 });
    records.push(In { key: Some(Vec::new()), value: reading("", 7, &[("t", 1.0)]), partition: 0 });
    records.push(In { key: Some(b"s1".to_vec()), value: reading("s1", 8, &many), partition: 0 });
    records.push(In { key: Some(b"other".to_vec()), value: reading("s1", 9, &[("t", 1.0)]), partition: 0 });
    records.push(In { key: Some(b"s1".to_vec()), value: reading("s1", 10, &[("t", 1.0), ("u", 2.0)]), partition: 0 });
    records.extend((11..16).map(good));
    let positions = produce(&config, records).await;
    let offsets: Vec<i64> = positions.iter().map(|(_, o)| *o).collect();

    let worker = RunningWorker::start(config.clone());
    let mut dead = Collector::new(&config.kafka.dead_letter_topic, 1);
    let mut scores = Collector::new(&config.kafka.scores_topic, 1);
    tokio::task::block_in_place(|| {
        dead.until(WAIT, "6 dead letters", |d| d.len() >= 6);
        scores.until(WAIT, "10 scores (the good readings around the bad ones)", |s| s.len() >= 10);
        dead.read_for(Duration::from_millis(500));
    });
    let letters: BTreeMap<i64, DeadLetter> = dead
        .seen
        .iter()
        .map(|o| DeadLetter::decode(&o.payload[..]).expect("dead-letter topic holds DeadLetters"))
        .map(|d| (d.source.as_ref().map(|s| s.offset).unwrap_or(-1), d))
        .collect();
    assert_eq!(dead.seen.len(), 6, "one dead letter per bad record");
    let expect = [
        (5, ErrorKind::Decode, "SensorReading"),
        (6, ErrorKind::Invalid, "\"t\""),
        (7, ErrorKind::Invalid, "sensor_id"),
        (8, ErrorKind::Invalid, "max_features"),
        (9, ErrorKind::KeyMismatch, "other"),
        (10, ErrorKind::SchemaMismatch, "first reading"),
    ];
    for (i, kind, needle) in expect {
        let d = letters.get(&offsets[i]).unwrap_or_else(|| panic!("no dead letter for record {i} (offset {})", offsets[i]));
        assert_eq!(d.error_kind(), kind, "record {i}: {}", d.error_message);
        assert!(d.error_message.contains(needle), "record {i}: reason {:?} lacks {needle:?}", d.error_message);
    }
    let garbage = &letters[&offsets[5]];
    assert_eq!(garbage.original_value, b"\x08\x96\x01garbage\xff\xff", "original bytes kept");
    assert_eq!(garbage.original_key, b"s1");
    let scored: BTreeSet<i64> = scores.seen.iter().filter_map(|o| o.source_offset).collect();
    let good_offsets: BTreeSet<i64> = (0..5).chain(11..16).map(|i| offsets[i]).collect();
    assert_eq!(scored, good_offsets, "every good reading scored, before and after the bad ones");
    let summary = worker.stop().await;
    assert_eq!((summary.scored, summary.dead_letters), (10, 6));
}

/// A state store that restores nothing but says where to start and what not to re-emit.
struct ResumeAt {
    start_at: i64,
    emit_from: i64,
    last_seen: std::sync::Mutex<Option<i64>>,
}

impl onad_stream::partition::StateHooks for ResumeAt {
    fn on_assign(&self, _: &str, _: i32, _: Option<onad_stream::partition::Models>, _: Option<i64>) -> onad_stream::partition::Resume {
        onad_stream::partition::Resume {
            models: Default::default(),
            start_at: Some(self.start_at),
            emit_from: Some(self.emit_from),
            emitted: Default::default(),
        }
    }
    fn after_batch(
        &self,
        _: &str,
        _: i32,
        m: &onad_stream::partition::Models,
        _: Option<i64>,
    ) -> Result<(), onad_stream::partition::StateFailure> {
        *self.last_seen.lock().unwrap() = m.last_offset;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_hooks_choose_the_start_offset_and_suppress_replayed_outputs() {
    let name = unique("resume");
    let config = config(&name, 1, &[]);
    create_topics(&config).await;
    let records = (0..20).map(|i| In { key: Some(b"s1".to_vec()), value: reading("s1", i, &[("t", 1.0)]), partition: 0 }).collect();
    let positions = produce(&config, records).await;
    assert_eq!(positions.first(), Some(&(0, 0)), "fresh topic starts at offset 0");
    let hooks = std::sync::Arc::new(ResumeAt { start_at: 5, emit_from: 12, last_seen: Default::default() });
    let worker = onad_stream::Worker::new(config.clone()).with_state(hooks.clone());
    let stats = worker.stats();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    let mut scores = Collector::new(&config.kafka.scores_topic, 1);
    tokio::task::block_in_place(|| {
        scores.until(WAIT, "scores from offset 12 on", |s| s.len() >= 8);
        scores.read_for(Duration::from_secs(1));
    });
    let offsets: Vec<i64> = scores.seen.iter().filter_map(|o| o.source_offset).collect();
    assert_eq!(offsets, (12..20).collect::<Vec<_>>(), "only offsets at or after emit_from are answered");
    assert_eq!(*hooks.last_seen.lock().unwrap(), Some(19), "after_batch sees the state through the last record");
    let _ = tx.send(());
    let summary = handle.await.expect("worker task").expect("worker run");
    // Once `run` returns the worker holds nothing of its state (or producers): a process that
    // exits right then does not close them from a thread of the worker's while it exits.
    assert_eq!(std::sync::Arc::strong_count(&hooks), 1, "the worker still held its state hooks after run returned");
    assert_eq!(
        (summary.consumed, stats.replayed.load(std::sync::atomic::Ordering::Relaxed)),
        (15, 7),
        "read from start_at; 5..12 replayed silently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_refuses_an_output_topic_with_fewer_partitions_than_the_input() {
    let name = unique("narrow");
    let config = config(&name, 4, &[]);
    let admin = onad_stream::kafka::admin::client(&config.kafka).expect("admin client");
    onad_stream::kafka::admin::create(&admin, &config.kafka, &[(config.kafka.alerts_topic.as_str(), 2)])
        .await
        .expect("create alerts topic");
    // Creates the input; refuses the narrow alerts topic just as the worker will.
    assert!(try_create_topics(&config).await.is_err());
    let err = tokio::time::timeout(WAIT, onad_stream::run(config.clone(), std::future::pending()))
        .await
        .expect("worker neither refused nor stopped")
        .expect_err("worker must refuse to start");
    let msg = err.to_string();
    assert!(msg.contains(&config.kafka.alerts_topic) && msg.contains("2 partitions") && msg.contains('4'), "unclear refusal: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_refuses_to_start_without_its_input_topic() {
    let config = config(&unique("noinput"), 4, &[]);
    let err = tokio::time::timeout(WAIT, onad_stream::run(config.clone(), std::future::pending()))
        .await
        .expect("worker neither refused nor stopped")
        .expect_err("worker must refuse to start");
    let msg = err.to_string();
    assert!(msg.contains(&config.kafka.input_topic) && msg.contains("topics create"), "unclear refusal: {msg}");
}
