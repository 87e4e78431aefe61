//! Shared helpers of the integration tests: random topic and group names, the broker address
//! (`ONAD_TEST_BOOTSTRAP`, default 127.0.0.1:9092), producing readings, running a worker
//! in-process, and collecting outputs with bounded waits and clear failure messages.
#![allow(dead_code)]

mod http_sink;
mod small_disk;
mod tansu;
#[allow(unused_imports)]
pub use http_sink::HttpSink;
#[allow(unused_imports)]
pub use small_disk::{Filler, SmallDisk};
#[allow(unused_imports)]
pub use tansu::PrivateBroker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onad_stream::config::Config;
use onad_stream::partition::output::{Dest, HEADER_REPLAY_EPOCH, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use onad_stream::partition::{InputRecord, Models, Processor, ProcessorConfig};
use onad_stream::proto::{ScoredReading, SensorReading};
use onad_stream::{RunSummary, Worker, WorkerError, WorkerStats};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Session timeout used by tests: a group join on Tansu waits about half of it.
pub const SESSION_TIMEOUT_MS: u64 = 6000;

/// The broker the tests run against.
pub fn bootstrap() -> String {
    std::env::var("ONAD_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{:x}-{}", std::process::id(), t % 0xffff_ffff, N.fetch_add(1, Ordering::Relaxed))
}

/// The `--set` overrides of a test worker on fresh topics named after `name`.
pub fn overrides(name: &str, partitions: i32) -> Vec<String> {
    overrides_on(&bootstrap(), name, partitions)
}

/// As [`overrides`], on the broker at `bootstrap` (e.g. a [`PrivateBroker`]).
pub fn overrides_on(bootstrap: &str, name: &str, partitions: i32) -> Vec<String> {
    vec![
        format!("kafka.bootstrap=\"{bootstrap}\""),
        format!("kafka.group_id=\"{name}-group\""),
        format!("kafka.input_topic=\"{name}-in\""),
        format!("kafka.scores_topic=\"{name}-scores\""),
        format!("kafka.alerts_topic=\"{name}-alerts\""),
        format!("kafka.dead_letter_topic=\"{name}-dead\""),
        format!("kafka.changelog_topic=\"{name}-changelog\""),
        format!("kafka.partitions={partitions}"),
        format!("kafka.session_timeout_ms={SESSION_TIMEOUT_MS}"),
    ]
}

/// A checked config for fresh topics named after `name`, plus `extra` overrides.
pub fn config(name: &str, partitions: i32, extra: &[&str]) -> Config {
    config_on(&bootstrap(), name, partitions, extra)
}

/// As [`config`], on the broker at `bootstrap`.
pub fn config_on(bootstrap: &str, name: &str, partitions: i32, extra: &[&str]) -> Config {
    let mut sets = overrides_on(bootstrap, name, partitions);
    sets.extend(extra.iter().map(|s| s.to_string()));
    Config::load_from(None, &[], &sets).expect("test config is valid")
}

/// Create the input and output topics of `config`.
pub async fn create_topics(config: &Config) {
    try_create_topics(config).await.expect("create test topics");
}

/// As [`create_topics`], returning the error.
pub async fn try_create_topics(config: &Config) -> Result<usize, onad_stream::kafka::AdminError> {
    onad_stream::kafka::admin::create_all(&config.kafka).await
}

/// An encoded reading.
pub fn reading(id: &str, ts: i64, values: &[(&str, f64)]) -> Vec<u8> {
    SensorReading {
        sensor_id: id.into(),
        timestamp_ms: ts,
        values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// One record to produce: key, value, partition.
#[derive(Clone)]
pub struct In {
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Vec<u8>,
    /// Partition.
    pub partition: i32,
}

/// Produce `records` to the input topic (on `config`'s broker) and wait for delivery; returns
/// (partition, offset) of each.
pub async fn produce(config: &Config, records: Vec<In>) -> Vec<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("test producer");
    let topic = &config.kafka.input_topic;
    let mut futures = Vec::with_capacity(records.len());
    for r in &records {
        let mut rec = FutureRecord::<[u8], [u8]>::to(topic).payload(&r.value[..]).partition(r.partition);
        if let Some(k) = &r.key {
            rec = rec.key(&k[..]);
        }
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    futures.push(f);
                    break;
                }
                Err((_, back)) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        let d = f.await.expect("producer alive").expect("test record delivered");
        out.push((d.partition, d.offset));
    }
    out
}

/// Readings of `sensors` sensors spread over `partitions` (sensor i on partition i % partitions),
/// `per_sensor` each, two features, steady values; `spike_at` (index per sensor) gets a spike.
pub fn fleet(sensors: usize, partitions: i32, per_sensor: usize, spike_at: Option<usize>) -> Vec<In> {
    let mut v = Vec::with_capacity(sensors * per_sensor);
    for j in 0..per_sensor {
        for i in 0..sensors {
            let id = format!("sensor-{i}");
            let wobble = ((j * 7 + i * 3) % 11) as f64 * 0.01;
            let temp = if spike_at == Some(j) { 100.0 } else { 20.0 + wobble };
            v.push(In {
                key: Some(id.clone().into_bytes()),
                value: reading(&id, j as i64, &[("temp", temp), ("rpm", 3.0 + wobble)]),
                partition: (i as i32) % partitions,
            });
        }
    }
    v
}

/// A fleet of sensors reading in step: sensor `i` is `{prefix}-{i}` (also its record key) on
/// partition `i % partitions`, and at step `j` it reads `values(j, i)`, timestamped `j`.
pub struct Fleet {
    /// Sensor id prefix.
    pub prefix: &'static str,
    /// Number of sensors.
    pub sensors: usize,
    /// Partitions of the input topic.
    pub partitions: i32,
    /// Features of sensor `i` at step `j`.
    pub values: fn(usize, usize) -> Vec<(&'static str, f64)>,
}

impl Fleet {
    /// Steps `from..to` of every sensor, step by step (sensor 0 first within a step).
    pub fn readings(&self, from: usize, to: usize) -> Vec<In> {
        let mut v = Vec::with_capacity(to.saturating_sub(from) * self.sensors);
        for j in from..to {
            for i in 0..self.sensors {
                let id = format!("{}-{i}", self.prefix);
                v.push(In {
                    key: Some(id.clone().into_bytes()),
                    value: reading(&id, j as i64, &(self.values)(j, i)),
                    partition: (i as i32) % self.partitions,
                });
            }
        }
        v
    }
}

/// A worker running in-process on its own tokio task.
pub struct RunningWorker {
    /// Resolves the worker's shutdown future.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The worker's result.
    handle: tokio::task::JoinHandle<Result<RunSummary, WorkerError>>,
    /// Live counters.
    pub stats: Arc<WorkerStats>,
}

impl RunningWorker {
    /// Start a worker with `config`.
    pub fn start(config: Config) -> Self {
        let worker = Worker::new(config);
        let stats = worker.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        Self { stop: Some(tx), handle, stats }
    }

    /// Ask for a graceful stop and wait (bounded) for the summary.
    pub async fn stop(mut self) -> RunSummary {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker did not stop within 60 s of shutdown")
            .expect("worker task panicked")
            .expect("worker ended with an error")
    }

    /// Consumed records so far.
    pub fn consumed(&self) -> u64 {
        self.stats.consumed.load(Ordering::Relaxed)
    }
}

/// One output record read back.
#[derive(Debug, Clone)]
pub struct Out {
    /// Partition it was written to.
    pub partition: i32,
    /// Its key.
    pub key: Vec<u8>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The `onad-source-offset` header.
    pub source_offset: Option<i64>,
    /// The `onad-source-partition` header.
    pub source_partition: Option<i32>,
    /// The `onad-replay-epoch` header.
    pub epoch: Option<u32>,
    /// The record's timestamp (librdkafka's create time: when the worker produced it).
    pub created_ms: Option<i64>,
}

/// Reads a topic from the beginning of every partition (no group).
pub struct Collector {
    /// Plain assigned consumer.
    consumer: BaseConsumer,
    /// Topic name (for messages).
    topic: String,
    /// Everything read so far.
    pub seen: Vec<Out>,
}

impl Collector {
    /// A collector of `topic` (with `partitions` partitions) from offset 0.
    pub fn new(topic: &str, partitions: i32) -> Self {
        Self::on(&bootstrap(), topic, partitions)
    }

    /// As [`Collector::new`], on the broker at `bootstrap`.
    pub fn on(bootstrap: &str, topic: &str, partitions: i32) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", unique("collector"))
            .set("enable.auto.commit", "false")
            .set("fetch.queue.backoff.ms", "10")
            .create()
            .expect("collector consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
        }
        consumer.assign(&tpl).expect("assign collector");
        Self { consumer, topic: topic.to_string(), seen: Vec::new() }
    }

    /// Read until `done(&seen)` holds, for at most `limit`; panics naming `what` otherwise.
    pub fn until(&mut self, limit: Duration, what: &str, done: impl Fn(&[Out]) -> bool) -> &[Out] {
        let deadline = Instant::now() + limit;
        while !done(&self.seen) {
            if Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what} on `{}` ({} records read)", self.topic, self.seen.len());
            }
            self.read_for(Duration::from_millis(200));
        }
        &self.seen
    }

    /// Read whatever arrives within `d`.
    pub fn read_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Some(Ok(m)) = self.consumer.poll(left) {
                let mut src_off = None;
                let mut src_part = None;
                let mut epoch = None;
                if let Some(h) = m.headers() {
                    for hdr in h.iter() {
                        let v = hdr.value.and_then(|v| std::str::from_utf8(v).ok());
                        match hdr.key {
                            HEADER_SOURCE_OFFSET => src_off = v.and_then(|s| s.parse().ok()),
                            HEADER_SOURCE_PARTITION => src_part = v.and_then(|s| s.parse().ok()),
                            HEADER_REPLAY_EPOCH => epoch = v.and_then(|s| s.parse().ok()),
                            _ => {}
                        }
                    }
                }
                self.seen.push(Out {
                    partition: m.partition(),
                    key: m.key().unwrap_or_default().to_vec(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    source_offset: src_off,
                    source_partition: src_part,
                    epoch,
                    created_ms: m.timestamp().to_millis(),
                });
            }
        }
    }
}

/// Count of each (source partition, source offset) among `outs`.
pub fn by_source(outs: &[Out]) -> BTreeMap<(i32, i64), usize> {
    let mut m = BTreeMap::new();
    for o in outs {
        let key = (
            o.source_partition.expect("output without source partition header"),
            o.source_offset.expect("output without source offset header"),
        );
        *m.entry(key).or_default() += 1;
    }
    m
}

/// A worker running as a child process (`onad-stream run`), logging to a temp file.
pub struct ChildWorker {
    /// The process.
    child: std::process::Child,
    /// Its stderr.
    log: tempfile::NamedTempFile,
    /// Its config file (kept until the worker ends).
    _config: tempfile::NamedTempFile,
    /// Its own state directory when the test did not give one (`onad-stream run` keeps a
    /// RocksDB there; two workers cannot share one).
    _state: Option<tempfile::TempDir>,
}

impl ChildWorker {
    /// Start `onad-stream run` on the topics and group named after `name`, with `toml` as its
    /// config file (the topic overrides win over it).
    pub fn start(name: &str, partitions: i32, toml: &str) -> Self {
        let state = tempfile::tempdir().expect("temp state dir");
        let mut w = Self::start_with_state(name, partitions, toml, state.path());
        w._state = Some(state);
        w
    }

    /// As [`ChildWorker::start`], keeping its state store in `state` (which outlives it, so
    /// that a restarted worker finds its snapshots).
    pub fn start_with_state(name: &str, partitions: i32, toml: &str, state: &std::path::Path) -> Self {
        Self::start_with_sets(name, partitions, toml, state, &[])
    }

    /// As [`ChildWorker::start_with_state`], with `sets` as further `--set` overrides (they
    /// win over the topic overrides).
    pub fn start_with_sets(name: &str, partitions: i32, toml: &str, state: &std::path::Path, sets: &[String]) -> Self {
        let log = tempfile::NamedTempFile::new().expect("temp log file");
        let config = tempfile::NamedTempFile::new().expect("temp config file");
        std::fs::write(config.path(), toml).expect("write config");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onad-stream"));
        cmd.arg("run").arg("--config").arg(config.path());
        for o in overrides(name, partitions) {
            cmd.arg("--set").arg(o);
        }
        cmd.arg("--set").arg(format!("state.path={:?}", state.display().to_string()));
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().expect("reopen log"))
            .spawn()
            .expect("start onad-stream run");
        Self { child, log, _config: config, _state: None }
    }

    /// The worker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Wait (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "worker log lacks {needle:?} after {limit:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Send SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        self.signal("-TERM");
        self.wait_exit(limit, "SIGTERM")
    }

    /// Send `sig` (`-STOP`, `-CONT`, ...) to the worker process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill").args([sig, &pid]).status().expect("run kill");
        assert!(ok.success(), "kill {sig} {pid} failed");
    }

    /// The exit status, if the worker has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for worker")
    }

    /// Wait (bounded) for the worker to exit on its own after `what`; its status and log.
    pub fn wait_exit(&mut self, limit: Duration, what: &str) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "worker did not exit within {limit:?} of {what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and assert (bounded) that the worker exits cleanly; returns its log.
    pub fn stop(self) -> String {
        let (status, log) = self.terminate(Duration::from_secs(60));
        assert!(status.success(), "the worker did not exit cleanly ({status}):\n{log}");
        log
    }

    /// The exit status, if the worker has exited (does not wait).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for worker")
    }

    /// SIGKILL: a crash, no drain, no commit.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an end-to-end test of the binary starts from: fresh topics named after a prefix, a
/// state store that outlives the workers started on it, the inputs sent so far by (partition,
/// offset), and a collector of the scores topic.
pub struct Scenario {
    /// Topic, group and file name stem.
    pub name: String,
    /// The checked config of those topics.
    pub config: Config,
    /// The workers' state store.
    pub state: tempfile::TempDir,
    /// Every reading sent, by (partition, offset).
    pub inputs: BTreeMap<(i32, i64), In>,
    /// Reads the scores topic from the beginning.
    pub scores: Collector,
    /// Partitions of every topic.
    pub partitions: i32,
}

impl Scenario {
    /// Create the topics of a fresh name from `prefix`, with `partitions` partitions.
    pub async fn new(prefix: &str, partitions: i32) -> Self {
        let name = unique(prefix);
        let config = config(&name, partitions, &[]);
        create_topics(&config).await;
        let state = tempfile::tempdir().expect("state dir");
        let scores = Collector::new(&config.kafka.scores_topic, partitions);
        Self { name, config, state, inputs: BTreeMap::new(), scores, partitions }
    }

    /// `onad-stream run` with `toml` as its config file, on the scenario's topics and store.
    pub fn worker(&self, toml: &str) -> ChildWorker {
        ChildWorker::start_with_state(&self.name, self.partitions, toml, self.state.path())
    }

    /// Send `records`, then wait (up to 2 minutes) until every reading sent has a score.
    pub async fn send_and_score(&mut self, records: Vec<In>, what: &str) {
        send(&self.config, &mut self.inputs, records).await;
        let n = self.inputs.len();
        self.scores.until(Duration::from_secs(120), what, |s| s.len() >= n);
    }
}

/// Per (partition, offset): (score bits, raw score bits, processed) or `None` for a dead letter.
pub type Expected = BTreeMap<(i32, i64), Option<(u64, u64, u64)>>;

/// Expected (score bits, raw score bits, processed count) or dead letter, per (partition,
/// offset): the worker's own `Processor`, run once over each partition in offset order.
pub fn reference(config: &onad_stream::config::Config, inputs: &BTreeMap<(i32, i64), In>) -> Expected {
    let pc = Arc::new(ProcessorConfig::new(config, true));
    let mut procs: BTreeMap<i32, Processor> = BTreeMap::new();
    let mut out = Vec::new();
    let mut expected = BTreeMap::new();
    for (&(p, o), rec) in inputs {
        let proc =
            procs.entry(p).or_insert_with(|| Processor::new(config.kafka.input_topic.as_str().into(), p, pc.clone(), Models::default()));
        out.clear();
        proc.process(InputRecord { key: rec.key.as_deref(), value: Some(&rec.value), offset: o }, 0, &mut out);
        let scored = out.iter().find(|r| r.dest == Dest::Scores).map(|r| {
            let s = ScoredReading::decode(&r.payload[..]).expect("reference score decodes");
            (s.score.to_bits(), s.raw_score.to_bits(), s.counters.map_or(0, |c| c.processed))
        });
        expected.insert((p, o), scored);
    }
    expected
}

/// `GET path` on `addr`: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // `Connection: close`: the server ends the response by closing, so reading to the end
    // returns (HTTP/1.1 servers keep the connection open otherwise).
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A local address with a free port (for a child's metrics endpoint).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// The group's committed offsets of `partitions` partitions of `topic` (-1: none).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    (0..partitions).map(|p| c.find_partition(topic, p).and_then(|e| e.offset().to_raw()).unwrap_or(-1)).collect()
}

/// Produce `records` and remember each under its (partition, offset) in `inputs`.
pub async fn send(config: &Config, inputs: &mut BTreeMap<(i32, i64), In>, records: Vec<In>) {
    let positions = produce(config, records.clone()).await;
    for (pos, rec) in positions.into_iter().zip(records) {
        assert!(inputs.insert(pos, rec).is_none(), "offset {pos:?} delivered twice by the test producer");
    }
}

/// (score bits, raw score bits) of every ScoredReading in `outs`, by source (partition, offset).
pub fn scores_of(outs: &[Out]) -> BTreeMap<(i32, i64), (u64, u64)> {
    outs.iter()
        .map(|o| {
            let s = ScoredReading::decode(&o.payload[..]).expect("score decodes");
            (
                (o.source_partition.expect("source partition header"), o.source_offset.expect("source offset header")),
                (s.score.to_bits(), s.raw_score.to_bits()),
            )
        })
        .collect()
}

/// Assert that every input of `expected` (all valid readings) has the expected score in `got`.
pub fn assert_scores(got: &BTreeMap<(i32, i64), (u64, u64)>, expected: &Expected, what: &str) {
    for ((p, o), want) in expected {
        let (score, raw, _) = want.expect("every input is a valid reading");
        assert_eq!(got.get(&(*p, *o)), Some(&(score, raw)), "score of {p}:{o} differs from {what}");
    }
}

/// A log without terminal colour codes.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Assert that `counts` (outputs per source offset) has exactly one output for every input
/// and none for anything else.
pub fn assert_exactly_once(counts: &BTreeMap<(i32, i64), usize>, inputs: &BTreeMap<(i32, i64), In>) {
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(dups.is_empty(), "duplicated outputs (source -> count), first ones: {dups:?}");
    let missing: Vec<_> = inputs.keys().filter(|k| !counts.contains_key(k)).take(10).collect();
    assert!(missing.is_empty(), "inputs without an output, first ones: {missing:?}");
    assert_eq!(counts.len(), inputs.len(), "outputs for offsets that were never produced");
}

/// The value of metric `name` on the `/metrics` endpoint at `addr`, if it is there.
pub fn metric(addr: &str, name: &str) -> Option<u64> {
    let (_, text) = http_get(addr, "/metrics");
    text.lines().find(|l| l.starts_with(&format!("{name}{{"))).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}
