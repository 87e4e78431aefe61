//! Operational alerts through the real binary and broker: garbage input drives the dead-letter
//! rate over `monitoring.high_error_rate`; the worker POSTs the alert to a local webhook
//! (Slack-compatible JSON) and publishes an `OpsAlert` record to `monitoring.ops_alerts_topic`;
//! while the condition lasts it fires again only after `monitoring.cooldown_secs`.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Collector, HttpSink, In, Scenario};
use onad_stream::proto::{OpsAlert, OpsSeverity};
use prost::Message as _;

const COOLDOWN_SECS: i64 = 3;

/// `n` records that are not `SensorReading`s (each a dead letter of kind DECODE), and as many
/// valid readings: a 50% dead-letter rate.
fn half_garbage(wave: usize, n: usize) -> Vec<In> {
    let mut v = Vec::with_capacity(2 * n);
    for i in 0..n {
        let id = format!("sensor-{}", i % 5);
        v.push(In {
            key: Some(id.clone().into_bytes()),
            value: common::reading(&id, (wave * n + i) as i64, &[("temp", 20.0)]),
            partition: 0,
        });
        v.push(In { key: Some(b"junk".to_vec()), value: vec![0xff; 12], partition: 0 });
    }
    v
}

/// The webhook bodies received so far whose `name` is `high_error_rate`.
fn error_rate_posts(sink: &HttpSink) -> Vec<serde_json::Value> {
    sink.received()
        .iter()
        .filter(|(path, _)| path == "/hook")
        .map(|(_, body)| serde_json::from_slice::<serde_json::Value>(body).expect("webhook body is JSON"))
        .filter(|v| v["name"] == "high_error_rate")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_dead_letter_rate_is_posted_to_the_webhook_and_published_once_per_cooldown() {
    let hook = HttpSink::start();
    let s = Scenario::new("opsalert", 1).await;
    let ops_topic = format!("{}-ops", s.name);
    let sets = vec![
        "monitoring.interval_secs=1".to_string(),
        "monitoring.min_records=10".to_string(),
        format!("monitoring.cooldown_secs={COOLDOWN_SECS}"),
        format!("monitoring.ops_alerts_topic=\"{ops_topic}\""),
        format!("monitoring.webhook_url=\"{}/hook\"", hook.url()),
    ];
    let started_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default();
    let worker = common::ChildWorker::start_with_sets(&s.name, 1, "", s.state.path(), &sets);

    // Keep the condition up (a wave every 300 ms) until the alert has fired twice.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut wave = 0;
    while error_rate_posts(&hook).len() < 2 {
        assert!(Instant::now() < deadline, "fewer than two high_error_rate webhook posts after 90 s:\n{}", worker.log());
        common::produce(&s.config, half_garbage(wave, 20)).await;
        wave += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let posts = error_rate_posts(&hook);
    let first = &posts[0];
    assert_eq!(first["severity"], "critical");
    assert_eq!(first["threshold"], 0.05);
    assert!(first["value"].as_f64().is_some_and(|v| v > 0.05 && v <= 1.0), "{first}");
    assert_eq!(first["group_id"], format!("{}-group", s.name));
    let text = first["text"].as_str().expect("a Slack-compatible `text` field");
    assert!(text.contains("high_error_rate") && text.contains("dead-letter rate"), "{text}");
    let gap = posts[1]["fired_at_ms"].as_i64().unwrap_or_default() - first["fired_at_ms"].as_i64().unwrap_or_default();
    assert!(gap >= COOLDOWN_SECS * 1000, "the second firing came {gap} ms after the first, inside the {COOLDOWN_SECS} s cooldown");

    // The same alerts as OpsAlert records on the ops topic (created by the worker).
    let mut ops = Collector::new(&ops_topic, 1);
    let seen = ops.until(Duration::from_secs(30), "two high_error_rate OpsAlert records", |o| {
        o.iter().filter(|r| r.key == b"high_error_rate").count() >= 2
    });
    let alerts: Vec<OpsAlert> = seen
        .iter()
        .filter(|r| r.key == b"high_error_rate")
        .map(|r| OpsAlert::decode(&r.payload[..]).expect("an OpsAlert record"))
        .collect();
    let a = &alerts[0];
    assert_eq!(a.name, "high_error_rate");
    assert_eq!(a.severity, OpsSeverity::Critical as i32);
    assert_eq!(a.threshold, 0.05);
    assert_eq!(Some(a.value), first["value"].as_f64(), "the record and the webhook tell the same firing");
    assert_eq!(a.fired_at_ms, first["fired_at_ms"].as_i64().unwrap_or_default());
    assert!(a.fired_at_ms >= started_ms, "fired_at_ms is the firing's wall clock");
    assert_eq!(a.group_id, format!("{}-group", s.name));
    assert!(
        a.instance.split_once('/').is_some_and(|(host, pid)| !host.is_empty() && pid.parse::<u32>().is_ok()),
        "instance is host/pid: {}",
        a.instance
    );
    assert!(a.message.contains("dead-letter rate"), "{}", a.message);

    let log = worker.stop();
    assert!(log.contains("ops alert: dead-letter rate"), "the firing is logged:\n{log}");
}
