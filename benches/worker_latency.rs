//! Latency of `run`: from the moment a reading is handed to the producer to the moment its
//! `ScoredReading` is read back from the scores topic, at a fixed offered rate (issue 12).
//!
//! For each rate (default 5,000 and 20,000 readings/s, `ONAD_LATENCY_RATES`) over
//! `ONAD_LATENCY_SECS` seconds (default 30):
//! - `mock`: the worker on librdkafka's embedded mock cluster, where the broker adds almost
//!   nothing: the worker's own latency (goal: p99 <= 20 ms at 5k/s, <= 50 ms at 20k/s);
//! - `broker` and `baseline` (skipped with `ONAD_LATENCY_BROKER=0`): the same on the local
//!   broker (`ONAD_TEST_BOOTSTRAP`, default 127.0.0.1:9092), then the same producer and
//!   reader with no worker (the reader reads the input topic itself), in the same run: the
//!   difference is what the worker adds there (design.md: that broker's own latency is large
//!   and grows with the topic).
//!
//! Readings: 50 sensors, 4 features, partitioned by sensor over 4 partitions, produced by a
//! paced thread (`linger.ms` 5, librdkafka's default; `ONAD_LATENCY_LINGER_MS`); each reading's `timestamp_ms` is its index (plus the start
//! time), so the reader finds the `Instant` it was sent at: microsecond resolution, no clock
//! of the broker involved. The reader (`fetch.wait.max.ms` 1 ms on the mock, 5 ms on the broker, `ONAD_LATENCY_READER_WAIT_MS`) is the same in both modes of a broker. The
//! worker runs with its default config (`kafka.profile` included, `ONAD_LATENCY_PROFILE`
//! overrides it; `ONAD_LATENCY_SET` adds `;`-separated `--set` overrides) and no state store. Timing starts once the worker has answered a probe
//! reading on every partition (the group join is not measured).
//!
//! Run: `cargo bench --bench worker_latency` (with the broker up: `scripts/kafka-broker start`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onad_stream::config::Config;
use onad_stream::proto::{ScoredReading, SensorReading};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

// Only the broker address is needed here, not the topic filling of the throughput benches.
#[allow(dead_code)]
mod common;

/// The binary's counting allocator (`src/main.rs`), so that this measures what `run` does:
/// without it the memory budget estimates each sensor's size by encoding its pipeline every
/// few readings, a cost the binary does not have (3.9 points of the partition threads'
/// profile with `isolation_forest`, BENCHMARKS.md).
#[global_allocator]
static ALLOC: onad_stream::ops::heap::CountingAlloc = onad_stream::ops::heap::CountingAlloc;

const PARTITIONS: i32 = 4;
const SENSORS: u64 = 50;
/// Timestamps of the probe readings sent before timing: below every measured one.
const PROBE_TS: i64 = 1;
/// The reader's `fetch.wait.max.ms` on the mock cluster, which holds an empty fetch for the
/// whole wait (it does not answer early when data arrives, as Kafka does), so this wait is
/// the measuring apparatus's own share of every figure, not the worker's: 1 ms keeps it
/// small (BENCHMARKS.md, "Latency: the fetch wait", has the figures with 5 ms too).
const READER_WAIT_MS_MOCK: &str = "1";
/// The same on the local broker: Tansu falls behind a reader that fetches every millisecond
/// (a baseline at 5,000/s got 54k of 150k answers within a minute), so 5 ms there.
/// `ONAD_LATENCY_READER_WAIT_MS` sets both.
const READER_WAIT_MS_BROKER: &str = "5";
/// How long after the last reading was sent its answers may still take.
const DRAIN: Duration = Duration::from_secs(60);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Topic names of one run.
struct Topics {
    input: String,
    scores: String,
    alerts: String,
    dead: String,
    changelog: String,
}

impl Topics {
    fn new(mode: &str) -> Self {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        let n = |what: &str| format!("lat-{mode}-{t}-{what}");
        Self { input: n("in"), scores: n("scores"), alerts: n("alerts"), dead: n("dead"), changelog: n("changelog") }
    }

    fn all(&self) -> [&str; 5] {
        [&self.input, &self.scores, &self.alerts, &self.dead, &self.changelog]
    }
}

fn worker_config(bootstrap: &str, topics: &Topics, group: &str) -> Config {
    let mut sets = vec![
        format!("kafka.bootstrap=\"{bootstrap}\""),
        format!("kafka.group_id=\"{group}\""),
        format!("kafka.input_topic=\"{}\"", topics.input),
        format!("kafka.scores_topic=\"{}\"", topics.scores),
        format!("kafka.alerts_topic=\"{}\"", topics.alerts),
        format!("kafka.dead_letter_topic=\"{}\"", topics.dead),
        format!("kafka.changelog_topic=\"{}\"", topics.changelog),
        format!("kafka.partitions={PARTITIONS}"),
        "kafka.session_timeout_ms=6000".to_string(),
        "telemetry.log_level=\"warn\"".to_string(),
    ];
    if let Ok(p) = std::env::var("ONAD_LATENCY_PROFILE") {
        sets.push(format!("kafka.profile=\"{p}\""));
    }
    // More `--set` overrides of the worker's config, `;`-separated.
    if let Ok(more) = std::env::var("ONAD_LATENCY_SET") {
        sets.extend(more.split(';').filter(|s| !s.is_empty()).map(String::from));
    }
    Config::load_from(None, &[], &sets).expect("bench config")
}

/// Percentiles of one run, in milliseconds.
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
}

impl Latency {
    fn of(mut us: Vec<u64>) -> Self {
        us.sort_unstable();
        let at = |q: f64| us.get(((us.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0) as f64 / 1000.0;
        Self { p50: at(0.50), p99: at(0.99), max: at(1.0), n: us.len() }
    }

    fn show(&self) -> String {
        format!("p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms  ({} readings)", self.p50, self.p99, self.max, self.n)
    }
}

fn reading(i: u64, base_ms: i64) -> (i32, SensorReading) {
    let sensor = i % SENSORS;
    let step = (i / SENSORS) as f64;
    let values = (0..4).map(|f| (format!("f{f}"), (step * 0.1 + f as f64).sin() + sensor as f64)).collect();
    let ts = if base_ms == PROBE_TS { PROBE_TS } else { base_ms + i as i64 };
    (
        (sensor % PARTITIONS as u64) as i32,
        SensorReading { sensor_id: format!("sensor-{sensor:03}"), timestamp_ms: ts, values, ..Default::default() },
    )
}

/// Reads `topic` from the beginning on its own thread; for each record whose timestamp (as
/// `ts_of` decodes it) is a measured reading's, records the time since that reading was sent.
struct Reader {
    seen: Arc<AtomicU64>,
    probes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<u64>>,
}

impl Reader {
    fn start(bootstrap: &str, topic: &str, ts_of: fn(&[u8]) -> Option<i64>, sent: Arc<Sent>, wait_ms: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", std::env::var("ONAD_LATENCY_READER_WAIT_MS").unwrap_or_else(|_| wait_ms.into()))
            .set("fetch.queue.backoff.ms", "10")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        let (seen, probes, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (s, pr, st) = (seen.clone(), probes.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut us = Vec::new();
            while !st.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else { continue };
                let arrived = Instant::now();
                match m.payload().and_then(ts_of) {
                    Some(PROBE_TS) => {
                        pr.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(ts) => {
                        if let Some(at) = sent.at(ts) {
                            us.push(arrived.saturating_duration_since(at).as_micros() as u64);
                            s.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {}
                }
            }
            us
        });
        Self { seen, probes, stop, handle }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("reader thread")
    }
}

/// When each measured reading was handed to the producer (nanoseconds after `start`), and
/// the timestamp of the first (`base_ms`: the reading's index is its timestamp minus it).
struct Sent {
    start: Instant,
    base_ms: i64,
    at_ns: Vec<AtomicU64>,
}

impl Sent {
    fn at(&self, ts: i64) -> Option<Instant> {
        let ns = self.at_ns.get(usize::try_from(ts - self.base_ms).ok()?)?.load(Ordering::Acquire);
        (ns > 0).then(|| self.start + Duration::from_nanos(ns))
    }
}

fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // A plain client's settings: librdkafka's default linger (5 ms, counted in the
        // latency) and idempotence (no loss or duplicate on retries). Unbatched (linger 0),
        // every reading is a request of its own: Tansu times thousands of them out, and the
        // mock cluster, which finds a fetch offset by walking its list of batches, slows
        // down as that list grows.
        .set("linger.ms", std::env::var("ONAD_LATENCY_LINGER_MS").unwrap_or_else(|_| "5".into()))
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, (partition, r): (i32, SensorReading)) {
    let bytes = r.encode_to_vec();
    let mut rec = BaseRecord::to(topic).key(&r.sensor_id).payload(&bytes).partition(partition);
    while let Err((e, back)) = p.send(rec) {
        assert!(matches!(e, rdkafka::error::KafkaError::MessageProduction(_)), "produce: {e}");
        rec = back;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Send one probe reading per partition and wait until `reader` has seen each answer.
fn probe(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, reader: &Reader) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    while reader.probes.load(Ordering::Relaxed) < PARTITIONS as u64 {
        assert!(Instant::now() < deadline, "no answer to the probe readings within 90 s");
        if round % 50 == 0 {
            for i in 0..PARTITIONS as u64 {
                send(p, topic, reading(i, PROBE_TS));
            }
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Offer `rate` readings/s for `secs` to `input` and measure until `reader` saw them all.
fn offer(p: &ThreadedProducer<DefaultProducerContext>, input: &str, reader: &Reader, sent: &Sent, rate: f64, n: u64) {
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let r = reading(i, sent.base_ms);
        sent.at_ns[i as usize].store((sent.start.elapsed().as_nanos() as u64).max(1), Ordering::Release);
        send(p, input, r);
    }
    let deadline = Instant::now() + DRAIN;
    while reader.seen.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "only {} of {n} answers within {DRAIN:?}", reader.seen.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn new_sent(n: u64) -> Arc<Sent> {
    let base_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Arc::new(Sent { start: Instant::now(), base_ms, at_ns: (0..n).map(|_| AtomicU64::new(0)).collect() })
}

fn score_ts(b: &[u8]) -> Option<i64> {
    ScoredReading::decode(b).ok().map(|s| s.timestamp_ms)
}

fn reading_ts(b: &[u8]) -> Option<i64> {
    SensorReading::decode(b).ok().map(|s| s.timestamp_ms)
}

/// The worker between `bootstrap`'s `topics`: latency of `n` readings offered at `rate`.
fn with_worker(rt: &tokio::runtime::Runtime, bootstrap: &str, topics: &Topics, rate: f64, n: u64, wait: &str) -> Latency {
    let config = worker_config(bootstrap, topics, &format!("{}-group", topics.input));
    let worker = onad_stream::Worker::new(config);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = rt.spawn(worker.run(async move {
        let _ = rx.await;
    }));
    let us = measure(bootstrap, &topics.input, &topics.scores, score_ts, rate, n, wait);
    let _ = tx.send(());
    rt.block_on(handle).expect("worker task").expect("worker run");
    Latency::of(us)
}

/// The same producer and reader with no worker: the reader reads the input topic.
fn baseline(bootstrap: &str, topics: &Topics, rate: f64, n: u64) -> Latency {
    Latency::of(measure(bootstrap, &topics.input, &topics.input, reading_ts, rate, n, READER_WAIT_MS_BROKER))
}

/// Start the reader of `read`, wait until the probe readings sent to `input` came through
/// (the reader, and the worker if any, are connected and assigned), then offer `n`
/// readings at `rate` and return the latency of each, in microseconds.
fn measure(bootstrap: &str, input: &str, read: &str, ts_of: fn(&[u8]) -> Option<i64>, rate: f64, n: u64, wait: &str) -> Vec<u64> {
    let sent = new_sent(n);
    let reader = Reader::start(bootstrap, read, ts_of, sent.clone(), wait);
    // One producer for both: connected, and holding its idempotent producer id, before timing.
    let p = producer(bootstrap);
    probe(&p, input, &reader);
    offer(&p, input, &reader, &sent, rate, n);
    reader.finish()
}

fn main() {
    let secs: f64 = env_or("ONAD_LATENCY_SECS", 30.0);
    let rates: Vec<f64> = std::env::var("ONAD_LATENCY_RATES")
        .unwrap_or_else(|_| "5000,20000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let on_broker = env_or("ONAD_LATENCY_BROKER", 1) != 0;
    let telemetry = onad_stream::config::TelemetryConfig { log_level: "warn".into(), ..Default::default() };
    let _otel = onad_stream::telemetry::init_with_otel(&telemetry).expect("telemetry");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("worker_latency: {secs} s per rate, {PARTITIONS} partitions, {SENSORS} sensors, 4 features");
    for &rate in &rates {
        let n = (rate * secs) as u64;
        let topics = Topics::new("mock");
        let mock = onad_stream::kafka::admin::MockCluster::start(&topics.all(), PARTITIONS).expect("mock cluster");
        let l = with_worker(&rt, mock.bootstrap_servers(), &topics, rate, n, READER_WAIT_MS_MOCK);
        println!("  mock   {rate:>6.0}/s worker  : {}", l.show());
        drop(mock);
        if on_broker {
            let bootstrap = common::bootstrap();
            let topics = Topics::new("broker");
            let config = worker_config(&bootstrap, &topics, "unused");
            rt.block_on(onad_stream::kafka::admin::create_all(&config.kafka)).expect("create topics");
            let w = with_worker(&rt, &bootstrap, &topics, rate, n, READER_WAIT_MS_BROKER);
            let topics = Topics::new("base");
            let config = worker_config(&bootstrap, &topics, "unused");
            rt.block_on(onad_stream::kafka::admin::create_all(&config.kafka)).expect("create topics");
            let b = baseline(&bootstrap, &topics, rate, n);
            println!("  broker {rate:>6.0}/s worker  : {}", w.show());
            println!("  broker {rate:>6.0}/s baseline: {}", b.show());
            println!(
                "  broker {rate:>6.0}/s worker adds: p50 {:+7.2} ms  p99 {:+7.2} ms  max {:+7.2} ms",
                w.p50 - b.p50,
                w.p99 - b.p99,
                w.max - b.max
            );
        }
    }
}
