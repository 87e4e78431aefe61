//! Hostile input through the real binary and broker: readings above their source's rate limit
//! become RATE_LIMITED dead letters (none dropped), counted by kind on `/metrics`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{produce, unique, ChildWorker, Collector, In};
use onad_stream::proto::{DeadLetter, ErrorKind, ScoredReading, SensorReading};
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(90);

/// An encoded reading of `id` from `source` at `ts`.
fn from_source(id: &str, source: &str, ts: i64, v: f64) -> Vec<u8> {
    SensorReading {
        sensor_id: id.into(),
        timestamp_ms: ts,
        source: source.into(),
        values: [("t".to_string(), v)].into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    format!("127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_above_their_source_rate_become_rate_limited_dead_letters() {
    let name = unique("ratelimit");
    let config = common::config(&name, 1, &[]);
    common::create_topics(&config).await;
    // "flood" sends 20 readings within 20 ms: its burst of 5 passes, 15 are limited.
    // "calm" sends 10 readings 2 s apart (by their timestamps): all pass at 60 a minute.
    let mut records = Vec::new();
    for i in 0..20 {
        records.push(In { key: Some(b"s-flood".to_vec()), value: from_source("s-flood", "flood", 1_000_000 + i, 1.0), partition: 0 });
    }
    for i in 0..10 {
        records.push(In { key: Some(b"s-calm".to_vec()), value: from_source("s-calm", "calm", 1_000_000 + i * 2000, 1.0), partition: 0 });
    }
    produce(&config, records).await;
    let metrics = free_addr();
    let state = tempfile::tempdir().expect("state dir");
    let worker = ChildWorker::start_with_sets(
        &name,
        1,
        "[validation.rate_limit]\nper_minute = 60\nburst = 5\n",
        state.path(),
        &[format!("telemetry.metrics_addr={metrics:?}")],
    );
    let mut scores = Collector::new(&config.kafka.scores_topic, 1);
    let mut dead = Collector::new(&config.kafka.dead_letter_topic, 1);
    scores.until(WAIT, "15 scores", |s| s.len() >= 15);
    dead.until(WAIT, "15 dead letters", |d| d.len() >= 15);
    scores.read_for(Duration::from_millis(500));
    dead.read_for(Duration::from_millis(300));

    let scored: Vec<ScoredReading> = scores.seen.iter().map(|o| ScoredReading::decode(&o.payload[..]).expect("ScoredReading")).collect();
    let letters: Vec<DeadLetter> = dead.seen.iter().map(|o| DeadLetter::decode(&o.payload[..]).expect("DeadLetter")).collect();
    assert_eq!(scored.iter().filter(|s| s.sensor_id == "s-flood").count(), 5, "the flood's burst is scored");
    assert_eq!(scored.iter().filter(|s| s.sensor_id == "s-calm").count(), 10, "a source within its rate is never limited");
    assert_eq!(letters.len(), 15, "every limited reading is a dead letter, none dropped");
    for d in &letters {
        assert_eq!(d.error_kind, ErrorKind::RateLimited as i32);
        assert!(d.error_message.contains("\"flood\"") && d.error_message.contains("rate_limit.per_minute = 60"), "{}", d.error_message);
        assert_eq!(d.original_key, b"s-flood");
    }
    let needle = "onad_dead_letters_by_kind_total{topic=";
    let deadline = Instant::now() + WAIT;
    loop {
        let page = http_get(&metrics, "/metrics");
        if page.lines().any(|l| l.starts_with(needle) && l.contains("kind=\"rate_limited\"} 15")) {
            break;
        }
        assert!(Instant::now() < deadline, "/metrics never counted 15 rate_limited dead letters:\n{page}");
        std::thread::sleep(Duration::from_millis(200));
    }
    worker.stop();
}

fn reading_of(id: &str, ts: i64, values: &[(&str, f64)]) -> In {
    let value = SensorReading {
        sensor_id: id.into(),
        timestamp_ms: ts,
        values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    }
    .encode_to_vec();
    In { key: Some(id.as_bytes().to_vec()), value, partition: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_readings_become_dead_letters_naming_the_field_and_count_as_security_events() {
    let name = unique("hostile");
    let config = common::config(&name, 1, &[]);
    common::create_topics(&config).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let records = vec![
        reading_of("good", now, &[("t", 1.0)]),
        reading_of("bad id", now, &[("t", 1.0)]),
        reading_of("s2", now, &[("t\u{202e}x", 1.0)]),
        reading_of("s3", now, &[("t", 1e12)]),
        reading_of("s4", now + 3_600_000, &[("t", 1.0)]),
        reading_of("good", now + 1, &[("t", 2.0)]),
    ];
    produce(&config, records).await;
    let metrics = free_addr();
    let state = tempfile::tempdir().expect("state dir");
    let worker = ChildWorker::start_with_sets(
        &name,
        1,
        "[validation]\nmax_value = 1e9\nmax_future_ms = 60000\n",
        state.path(),
        &[format!("telemetry.metrics_addr={metrics:?}")],
    );
    let mut scores = Collector::new(&config.kafka.scores_topic, 1);
    let mut dead = Collector::new(&config.kafka.dead_letter_topic, 1);
    scores.until(WAIT, "2 scores", |s| s.len() >= 2);
    dead.until(WAIT, "4 dead letters", |d| d.len() >= 4);
    dead.read_for(Duration::from_millis(300));
    let mut reasons: Vec<(i64, String)> = dead
        .seen
        .iter()
        .map(|o| DeadLetter::decode(&o.payload[..]).expect("DeadLetter"))
        .map(|d| (d.source.map(|s| s.offset).unwrap_or(-1), d.error_message))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    for ((offset, reason), field) in reasons.iter().zip(["sensor_id", "feature name", "max_value", "timestamp_ms"]) {
        assert!(reason.contains(field), "offset {offset}: {reason:?} does not name {field}");
    }
    let deadline = Instant::now() + WAIT;
    let wanted = ["sensor_id\"} 1", "feature_name\"} 1", "value_range\"} 1", "timestamp\"} 1"];
    loop {
        let page = http_get(&metrics, "/metrics");
        let events: Vec<&str> = page.lines().filter(|l| l.starts_with("onad_security_events_total{")).collect();
        if wanted.iter().all(|w| events.iter().any(|l| l.ends_with(w))) {
            break;
        }
        assert!(Instant::now() < deadline, "/metrics lacks the security events {wanted:?}:\n{page}");
        std::thread::sleep(Duration::from_millis(200));
    }
    worker.stop();
}

/// `r` in Confluent Schema Registry framing (schema id 7, message indexes [0]).
fn confluent(r: &SensorReading) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0, 7, 0];
    v.extend(r.encode_to_vec());
    v
}

fn plain(id: &str, ts: i64) -> SensorReading {
    SensorReading { sensor_id: id.into(), timestamp_ms: ts, values: [("t".to_string(), 1.0 + ts as f64)].into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_confluent_framed_and_json_readings_are_all_scored_with_auto_detection() {
    let name = unique("formats");
    let config = common::config(&name, 1, &[]);
    common::create_topics(&config).await;
    let mut records = Vec::new();
    for ts in 1..=2 {
        records.push(In { key: Some(b"s-proto".to_vec()), value: plain("s-proto", ts).encode_to_vec(), partition: 0 });
        records.push(In { key: Some(b"s-confluent".to_vec()), value: confluent(&plain("s-confluent", ts)), partition: 0 });
        let json = format!(r#"{{"sensorId":"s-json","timestampMs":"{ts}","values":{{"t":{}}},"source":"web"}}"#, 1.0 + ts as f64);
        records.push(In { key: Some(b"s-json".to_vec()), value: json.into_bytes(), partition: 0 });
    }
    produce(&config, records).await;
    let state = tempfile::tempdir().expect("state dir");
    let worker = ChildWorker::start_with_sets(&name, 1, "[kafka]\ninput_format = \"auto\"\n", state.path(), &[]);
    let mut scores = Collector::new(&config.kafka.scores_topic, 1);
    scores.until(WAIT, "6 scores", |s| s.len() >= 6);
    let mut ids: Vec<String> =
        scores.seen.iter().map(|o| ScoredReading::decode(&o.payload[..]).expect("ScoredReading").sensor_id).collect();
    ids.sort();
    assert_eq!(ids, ["s-confluent", "s-confluent", "s-json", "s-json", "s-proto", "s-proto"]);
    worker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_confluent_format_dead_letters_unframed_records_naming_the_framing() {
    let name = unique("confluent");
    let config = common::config(&name, 1, &[]);
    common::create_topics(&config).await;
    let records = vec![
        In { key: Some(b"s1".to_vec()), value: confluent(&plain("s1", 1)), partition: 0 },
        In { key: Some(b"s1".to_vec()), value: plain("s1", 2).encode_to_vec(), partition: 0 },
        In { key: Some(b"s1".to_vec()), value: br#"{"sensorId":"s1"}"#.to_vec(), partition: 0 },
    ];
    produce(&config, records).await;
    let state = tempfile::tempdir().expect("state dir");
    let worker = ChildWorker::start_with_sets(&name, 1, "[kafka]\ninput_format = \"confluent\"\n", state.path(), &[]);
    let mut scores = Collector::new(&config.kafka.scores_topic, 1);
    let mut dead = Collector::new(&config.kafka.dead_letter_topic, 1);
    scores.until(WAIT, "1 score", |s| !s.is_empty());
    dead.until(WAIT, "2 dead letters", |d| d.len() >= 2);
    for o in &dead.seen {
        let d = DeadLetter::decode(&o.payload[..]).expect("DeadLetter");
        assert_eq!(d.error_kind, ErrorKind::Decode as i32);
        assert!(d.error_message.contains("Confluent") && d.error_message.contains("kafka.input_format"), "{}", d.error_message);
    }
    worker.stop();
}
