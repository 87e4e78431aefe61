//! The time-series detectors end to end on the real broker: a seasonal sensor with a gap in
//! its timestamps and a contextual spike raises an alert that says what was expected, with
//! its band, and `tail` prints it readably.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use onad_stream::proto::{AnomalyAlert, ScoredReading};
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_onad-stream");
/// Readings per day (one every 30 minutes).
const DAY: usize = 48;
/// Time between readings.
const INTERVAL_MS: i64 = 30 * 60 * 1000;
/// 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;
/// Readings per sensor (10 days).
const PER_SENSOR: usize = 10 * DAY;
/// Readings the sensors do not send (a 2.5-hour outage), before the spike.
const GAP: std::ops::Range<usize> = 455..460;
/// The reading that spikes: at t = 470 the daily cycle is near its mean, so +6 is inside the
/// day's range (20 +- 5) and only a model of the time of day can tell it apart.
const SPIKE: usize = 470;

/// A small deterministic wobble in [-0.15, 0.15].
fn wobble(t: usize, i: usize) -> f64 {
    ((t * 7919 + i * 104_729) % 31) as f64 / 100.0 - 0.15
}

/// (temp, humidity) of sensor `i` at reading `t`, without the spike.
fn normal(t: usize, i: usize) -> (f64, f64) {
    let phase = std::f64::consts::TAU * t as f64 / DAY as f64;
    (20.0 + 5.0 * phase.sin() + wobble(t, i), 50.0 + 10.0 * phase.cos() + wobble(t + 1, i))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holt_winters_alerts_carry_expected_values_and_bands_through_the_broker() {
    let name = unique("ts");
    let sets = ["model_type=\"holt_winters\"", "model_params.season_length=48"];
    let config = config(&name, 2, &sets);
    create_topics(&config).await;
    let sensors = 2;
    let mut records = Vec::new();
    let mut spikes = Vec::new();
    for t in (0..PER_SENSOR).filter(|t| !GAP.contains(t)) {
        for i in 0..sensors {
            let id = format!("sensor-{i}");
            let (mut temp, humidity) = normal(t, i);
            if t == SPIKE {
                temp += 6.0;
                spikes.push(records.len());
            }
            let ts = START_MS + t as i64 * INTERVAL_MS;
            records.push(In {
                key: Some(id.clone().into_bytes()),
                value: reading(&id, ts, &[("temp", temp), ("humidity", humidity)]),
                partition: i as i32,
            });
        }
    }
    let positions = produce(&config, records).await;
    let spike_positions: BTreeMap<(i32, i64), usize> = spikes.iter().enumerate().map(|(sensor, r)| (positions[*r], sensor)).collect();

    let worker = RunningWorker::start(config.clone());
    let mut alerts = Collector::new(&config.kafka.alerts_topic, 2);
    let mut scores = Collector::new(&config.kafka.scores_topic, 2);
    tokio::task::block_in_place(|| {
        alerts.until(WAIT, "an alert for every spike", |a| {
            spike_positions.keys().all(|p| a.iter().any(|o| (o.source_partition, o.source_offset) == (Some(p.0), Some(p.1))))
        });
        scores.until(WAIT, "a score for every reading", |s| s.len() >= positions.len());
    });

    for out in &alerts.seen {
        let a = AnomalyAlert::decode(&out.payload[..]).expect("alerts topic holds AnomalyAlerts");
        assert_eq!(a.detector, "holt_winters");
        assert_eq!(a.bands.len(), 2, "every alert of a forecasting detector has a band per feature: {a:?}");
        let src = a.source.expect("alert has a source position");
        let Some(&sensor) = spike_positions.get(&(src.partition, src.offset)) else { continue };
        let temp = a.bands.iter().find(|b| b.feature == "temp").expect("temp band");
        let humidity = a.bands.iter().find(|b| b.feature == "humidity").expect("humidity band");
        let (truth, _) = normal(SPIKE, sensor);
        assert!(
            (temp.expected - truth).abs() < 1.0,
            "expected {} for the cycle's {truth} (after a gap: season aligned by time)",
            temp.expected
        );
        assert!(temp.value > temp.upper && temp.lower < temp.expected, "the spike is above its band: {temp:?}");
        assert!(temp.deviation > 5.0, "{temp:?}");
        assert!(humidity.lower <= humidity.value && humidity.value <= humidity.upper, "humidity is normal: {humidity:?}");
        assert_eq!(a.top_features.first().map(|f| f.feature.as_str()), Some("temp"), "the spiking feature made it anomalous");
    }
    let with_bands = scores.seen.iter().filter(|o| !ScoredReading::decode(&o.payload[..]).expect("ScoredReading").bands.is_empty()).count();
    assert!(with_bands * 10 >= scores.seen.len() * 8, "scores after warm-up carry bands ({with_bands} of {})", scores.seen.len());
    let false_alerts = alerts.seen.len() - spike_positions.len();
    assert!(false_alerts * 100 <= 3 * positions.len(), "{false_alerts} alerts on {} steady readings", positions.len());

    // `tail` prints the expectation readably.
    let out = Command::new(BIN)
        .args(["tail", "--topic", &config.kafka.alerts_topic, "--type", "alert", "--from-beginning", "--timeout-secs", "20"])
        .args(["--count", &alerts.seen.len().to_string(), "--bootstrap", &bootstrap()])
        .output()
        .expect("run onad-stream tail");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tail failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.contains(&format!("/{}\"", positions[spikes[0]].1))).expect("tail printed the spike's alert");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
    let text = v["explained"].as_array().expect("explained lines").iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join("; ");
    assert!(text.contains("temp ") && text.contains(", expected ") && text.contains("(band ") && text.contains("sigma above"), "{text}");

    let summary = worker.stop().await;
    assert_eq!(summary.scored, positions.len() as u64);
}
