//! `onad-stream produce` and `onad-stream tail` against the real broker
//! (`ONAD_TEST_BOOTSTRAP`, default 127.0.0.1:9092), through the real binary.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

mod common;
use common::{bootstrap, unique};
use onad_stream::proto::{AnomalyAlert, DeadLetter, ErrorKind, ScoredReading, SensorReading, Severity, SourcePosition};

const BIN: &str = env!("CARGO_BIN_EXE_onad-stream");
const WAIT: Duration = Duration::from_secs(30);

fn create_topic(partitions: i32) -> String {
    let name = unique("tools");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let res = rt
        .block_on(admin.create_topics(&[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()))
        .expect("create_topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e} (is the broker running? scripts/kafka-broker start)"));
    }
    name
}

/// Read every record of `topic` until `n` arrived (bounded by WAIT). Returns (partition, key, value).
fn consume(topic: &str, partitions: i32, n: usize) -> Vec<(i32, String, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("tools-check"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} records arrived on {topic} within {WAIT:?}", out.len());
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let key = String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap();
            out.push((m.partition(), key, m.payload().unwrap_or_default().to_vec()));
        }
    }
    // Nothing beyond n: give stragglers a moment to show up.
    let extra_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < extra_until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            panic!("more than {n} records on {topic}: extra at offset {}", m.offset());
        }
    }
    out
}

fn run(args: &[&str]) -> (String, String) {
    let out = Command::new(BIN).args(args).arg("--bootstrap").arg(bootstrap()).output().expect("run onad-stream");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "onad-stream {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    (stdout, stderr)
}

#[test]
fn produce_from_csv_sends_exactly_one_reading_per_row_keyed_by_sensor() {
    let topic = create_topic(3);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("readings.csv");
    let mut text = String::from("sensor,timestamp_ms,temp,pressure,site\n");
    let mut expected = Vec::new();
    for i in 0..60 {
        let sensor = format!("pump-{}", i % 7);
        let (t, p) = (20.0 + i as f64 * 0.25, 1000.0 - i as f64);
        text.push_str(&format!("{sensor},{},{t},{p},\"north, hall {}\"\n", 1_700_000_000_000i64 + i, i % 2));
        expected.push((sensor, 1_700_000_000_000i64 + i, t, p));
    }
    std::fs::write(&csv, text).unwrap();
    let (stdout, stderr) = run(&["produce", "--file", csv.to_str().unwrap(), "--key-column", "sensor", "--topic", &topic]);
    assert!(stdout.contains("produced 60 readings of 7 sensors"), "summary: {stdout}");
    assert!(!stderr.contains('\r') && !stderr.contains('\u{1b}') && !stderr.contains("ETA"), "no progress bar off a terminal: {stderr:?}");

    let records = consume(&topic, 3, 60);
    let mut got: Vec<(String, i64, f64, f64)> = Vec::new();
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for (partition, key, value) in records {
        let r = SensorReading::decode(value.as_slice()).unwrap();
        assert_eq!(key, r.sensor_id, "record key must be the sensor id");
        assert_eq!(r.values.len(), 2, "features are the numeric columns only: {:?}", r.values);
        assert!(r.labels["site"].starts_with("north, hall "), "text columns are labels: {:?}", r.labels);
        let prev = partition_of.insert(key.clone(), partition);
        assert!(prev.is_none() || prev == Some(partition), "sensor {key} spread over partitions");
        got.push((r.sensor_id, r.timestamp_ms, r.values["temp"], r.values["pressure"]));
    }
    got.sort_by_key(|g| g.1);
    assert_eq!(got, expected);
}

#[test]
fn produce_accepts_quiet_and_prints_no_progress_off_a_terminal() {
    let topic = create_topic(1);
    let (stdout, stderr) = run(&["produce", "--quiet", "--count", "50", "--rate", "0", "--topic", &topic]);
    assert!(stdout.contains("produced 50 readings"), "summary: {stdout}");
    assert!(!stderr.contains('\r') && !stderr.contains("ETA") && !stderr.contains("readings sent"), "quiet: {stderr:?}");
    assert_eq!(consume(&topic, 1, 50).len(), 50);
}

#[test]
fn synthetic_fleet_is_deterministic_per_seed_and_labels_its_spikes() {
    let (a, b) = (create_topic(2), create_topic(2));
    let args = ["produce", "--sensors", "4", "--features", "3", "--count", "400", "--rate", "0", "--spike-rate", "0.05", "--seed", "9"];
    let (stdout, _) = run(&[&args[..], &["--topic", &a]].concat());
    assert!(stdout.contains("produced 400 readings of 4 sensors"), "summary: {stdout}");
    run(&[&args[..], &["--topic", &b]].concat());

    // Per sensor, in order: (values, carries the spike label).
    type BySensor = BTreeMap<String, Vec<(BTreeMap<String, f64>, bool)>>;
    let decode = |recs: Vec<(i32, String, Vec<u8>)>| {
        let mut by_sensor = BySensor::new();
        for (_, key, value) in recs {
            let r = SensorReading::decode(value.as_slice()).unwrap();
            assert_eq!(key, r.sensor_id);
            by_sensor.entry(key).or_default().push((r.values, r.labels.get("injected").is_some_and(|v| v == "spike")));
        }
        by_sensor
    };
    let (ra, rb) = (decode(consume(&a, 2, 400)), decode(consume(&b, 2, 400)));
    assert_eq!(ra.keys().collect::<Vec<_>>(), ["sensor-000", "sensor-001", "sensor-002", "sensor-003"]);
    assert_eq!(ra, rb, "same seed and settings must produce the same readings per sensor, in order");
    let spikes = ra.values().flatten().filter(|(_, s)| *s).count();
    assert!((5..=40).contains(&spikes), "expected about 20 labelled spikes at rate 0.05, got {spikes}");
    assert!(stdout.contains(&format!("{spikes} with an injected spike")), "summary must count the spikes: {stdout}");
}

#[test]
fn produce_to_a_missing_topic_fails_with_a_clear_message() {
    let out = Command::new(BIN)
        .args(["produce", "--count", "1", "--topic", &unique("no-such-topic"), "--bootstrap", &bootstrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn tail_prints_scores_alerts_and_dead_letters_as_json_lines() {
    let (scores, alerts, dead) = (create_topic(2), create_topic(1), create_topic(1));
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", bootstrap()).create().unwrap();
    for i in 0..5i64 {
        let s = ScoredReading {
            sensor_id: format!("s{i}"),
            score: i as f64 / 10.0,
            severity: Severity::Low as i32,
            detector: "zscore".into(),
            source: Some(SourcePosition { topic: "in".into(), partition: (i % 2) as i32, offset: i }),
            ..Default::default()
        };
        producer.send(BaseRecord::to(&scores).partition((i % 2) as i32).key(&s.sensor_id).payload(&s.encode_to_vec())).unwrap();
    }
    let alert = AnomalyAlert { alert_id: "in/0/3".into(), score: 0.97, severity: Severity::Critical as i32, ..Default::default() };
    producer.send(BaseRecord::to(&alerts).key("s3").payload(&alert.encode_to_vec())).unwrap();
    let dl = DeadLetter {
        original_key: b"k".to_vec(),
        original_value: vec![0xff, 0x00, 0x10],
        error_kind: ErrorKind::Decode as i32,
        error_message: "not a SensorReading".into(),
        ..Default::default()
    };
    producer.send(BaseRecord::to(&dead).key("k").payload(&dl.encode_to_vec())).unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let timeout = ["--from-beginning", "--timeout-secs", "30"];
    let (out, _) = run(&[&["tail", "--topic", &scores, "--type", "scored", "--count", "5", "--meta"][..], &timeout].concat());
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert_eq!(lines.len(), 5, "{out}");
    let mut sensors: Vec<&str> = lines.iter().map(|l| l["value"]["sensor_id"].as_str().unwrap()).collect();
    sensors.sort();
    assert_eq!(sensors, ["s0", "s1", "s2", "s3", "s4"]);
    for l in &lines {
        assert_eq!(l["key"], l["value"]["sensor_id"]);
        assert_eq!(l["value"]["severity"], "SEVERITY_LOW", "enums print by name: {l}");
        assert_eq!(l["partition"], l["value"]["source"]["partition"]);
    }

    let (out, _) = run(&[&["tail", "--topic", &alerts, "--type", "alert", "--count", "1"][..], &timeout].concat());
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["alert_id"].as_str(), v["severity"].as_str(), v["score"].as_f64()),
        (Some("in/0/3"), Some("SEVERITY_CRITICAL"), Some(0.97))
    );

    // The configured aliases work too: `dead-letters` means kafka.dead_letter_topic.
    let set = format!("kafka.dead_letter_topic={dead}");
    let (out, _) = run(&[&["tail", "--topic", "dead-letters", "--set", &set, "--count", "1"][..], &timeout].concat());
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["error_kind"], "ERROR_KIND_DECODE");
    assert_eq!(v["original_value"], "/wAQ", "bytes print as base64");
    assert_eq!(v["error_message"], "not a SensorReading");
}

#[test]
fn tail_with_count_fails_when_too_few_records_arrive() {
    let topic = create_topic(1);
    let out = Command::new(BIN)
        .args(["tail", "--topic", &topic, "--type", "scored", "--from-beginning", "--count", "1", "--timeout-secs", "3"])
        .args(["--bootstrap", &bootstrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an empty topic cannot satisfy --count 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only 0 of 1"));
}
