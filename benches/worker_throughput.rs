//! Throughput of `run` on the local broker: readings per second from the first record taken
//! to the last record acknowledged (all outputs delivered, offset stored), for
//! - `zscore`: the default detector (with the default warm fallback, a second z-score);
//! - `isolation_forest`: that detector with its defaults (any `model_type` names a mode);
//! - `zscore-nofb`: the same without the fallback (`resilience.fallback = "none"`);
//! - `zscore-notxn`: z-score without transactional outputs (`kafka.transactional_outputs = false`);
//! - `zscore-throughput`: z-score with `kafka.profile = "throughput"`;
//! - `zscore-batchN`: z-score with the producers' `batch.size` N bytes (e.g. `zscore-batch262144`);
//! - `no-scoring`: the same worker with the detector bypassed (`Worker::without_scoring`);
//! - `bare loop`: consume -> produce the same bytes to the same partition, no decode (the
//!   ceiling design.md measures; run here in the same process and moment as a peer).
//! - `<detector> alone`: for each scoring mode's detector, its pipeline with no Kafka on this
//!   thread (decode, validate, score, build the outputs), timed in every round right after
//!   the mode; the summary gives the median of the rounds' ratios of the mode to this rate
//!   times the machine's cores (goal 2 of issue 12).
//!
//! Each mode gets fresh topics (4 partitions) filled beforehand with the same readings (50
//! sensors, 4 features), so only consuming, processing and producing are timed; the group
//! join (seconds on Tansu) is excluded by starting the clock at the first record.
//!
//! `ONAD_TEST_BOOTSTRAP` (default 127.0.0.1:9092), `ONAD_BENCH_READINGS` (default 600000:
//! at 200,000 a worker mode's window was 0.4-0.5 s, of which its first fetches and last
//! transaction commit, 20-50 ms on Tansu, took a tenth; every mode's topics are deleted once
//! it is timed, so the broker does not slow as they pile up),
//! `ONAD_BENCH_MODES` (default `no-scoring,zscore,isolation_forest`; the bare loop always
//! runs), `ONAD_BENCH_SET` (extra `--set` overrides of the worker's config, `;`-separated) and
//! `ONAD_BENCH_REPEAT` (default 3): every round runs each mode once, and the
//! summary gives the median readings/s and the median ratio to the bare loop of its round.
//! Besides readings/s, each mode reports the CPU time this process spent per reading over the
//! same window (`getrusage`: every thread of the worker or the bare loop, librdkafka's
//! included; not the broker's): on a machine shared with other work the wall-clock rate swings
//! with the load, while CPU per reading moves far less, so it is the figure to compare two
//! builds by. Where the broker is a local process (`scripts/kafka-broker`'s pid file for the
//! bootstrap's port, or `ONAD_BENCH_BROKER_PID`), its CPU per reading over the window is
//! printed too: it shares the machine's cores with the worker.
//! `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318` exports spans and metrics over OTLP while
//! measuring (the tracing-on figure of BENCHMARKS.md).
//! Run: `scripts/kafka-broker start; cargo bench --bench worker_throughput` (release), or
//! `cargo test --bench worker_throughput` (test profile) where a release build is too costly.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onad_stream::config::Config;
use onad_stream::proto::SensorReading;
use onad_stream::Worker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The binary's counting allocator (`src/main.rs`), so that this measures what `run` does:
/// without it the memory budget estimates each sensor's size by encoding its pipeline every
/// few readings, a cost the binary does not have (3.9 points of the partition threads'
/// profile with `isolation_forest`, BENCHMARKS.md).
#[global_allocator]
static ALLOC: onad_stream::ops::heap::CountingAlloc = onad_stream::ops::heap::CountingAlloc;

const PARTITIONS: i32 = 4;
const SENSORS: usize = 50;
const LIMIT: Duration = Duration::from_secs(300);

mod common;
use common::bootstrap;

fn config(name: &str) -> Config {
    let sets = vec![
        format!("kafka.bootstrap=\"{}\"", bootstrap()),
        format!("kafka.group_id=\"{name}-group\""),
        format!("kafka.input_topic=\"{name}-in\""),
        format!("kafka.scores_topic=\"{name}-scores\""),
        format!("kafka.alerts_topic=\"{name}-alerts\""),
        format!("kafka.dead_letter_topic=\"{name}-dead\""),
        format!("kafka.changelog_topic=\"{name}-changelog\""),
        format!("kafka.partitions={PARTITIONS}"),
        "kafka.session_timeout_ms=6000".to_string(),
        "telemetry.log_level=\"warn\"".to_string(),
    ];
    // `ONAD_BENCH_SET`: more `--set` overrides for every worker mode, `;`-separated (e.g.
    // `kafka.settings."linger.ms"=5`), to try a setting beside the bare loop.
    let extra = std::env::var("ONAD_BENCH_SET").unwrap_or_default();
    let sets: Vec<String> = sets.into_iter().chain(extra.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from)).collect();
    Config::load_from(None, &[], &sets).expect("bench config")
}

/// The bench's readings, each with its partition: `n` of them, 50 sensors, 4 features.
fn readings(n: usize) -> impl Iterator<Item = (i32, SensorReading)> {
    (0..n).map(|i| {
        let sensor = i % SENSORS;
        let step = (i / SENSORS) as f64;
        let values = (0..4).map(|f| (format!("f{f}"), (step * 0.1 + f as f64).sin() + sensor as f64)).collect();
        (
            sensor as i32 % PARTITIONS,
            SensorReading { sensor_id: format!("sensor-{sensor:03}"), timestamp_ms: i as i64, values, ..Default::default() },
        )
    })
}

/// Fresh topics named for `mode`, filled with `n` readings; returns the config.
async fn prepare(mode: &str, n: usize) -> Config {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let config = config(&format!("bench-{mode}-{t}"));
    onad_stream::kafka::admin::create_all(&config.kafka).await.expect("create bench topics");
    // librdkafka's default local queue (100,000 messages).
    common::produce_readings(&config.kafka.input_topic, 100_000, readings(n)).await;
    config
}

/// The topics a bench config names (input, outputs, changelog).
fn topics_of(config: &Config) -> Vec<String> {
    let k = &config.kafka;
    [&k.input_topic, &k.scores_topic, &k.alerts_topic, &k.dead_letter_topic, &k.changelog_topic].map(String::clone).to_vec()
}

/// Delete `topics` (a failure is printed, not fatal: it only costs the broker memory).
async fn drop_topics(topics: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("admin client");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match admin.delete_topics(&names, &opts).await {
        Ok(results) => {
            // A mode without state never creates its changelog.
            for (topic, code) in results.into_iter().filter_map(Result::err) {
                if code != rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                    eprintln!("worker_throughput: topic {topic} not deleted: {code}");
                }
            }
        }
        Err(e) => eprintln!("worker_throughput: topics not deleted: {e}"),
    }
}

/// The pipeline alone on one core: the same `n` readings, encoded beforehand, through one
/// `Processor` per partition (decode, validate, score, build the outputs: the worker's work
/// per record without Kafka), on this thread. Goal 2 of issue 12 compares the worker with
/// this rate times the cores it can use.
fn time_standalone(config: &Config, n: usize) -> Timed {
    use onad_stream::partition::{InputRecord, Models, Processor, ProcessorConfig};
    use prost::Message as _;
    let encoded: Vec<(i32, Vec<u8>, Vec<u8>)> =
        readings(n).map(|(p, r)| (p, r.sensor_id.clone().into_bytes(), r.encode_to_vec())).collect();
    let pc = std::sync::Arc::new(ProcessorConfig::new(config, true));
    let mut processors: Vec<Processor> =
        (0..PARTITIONS).map(|p| Processor::new(config.kafka.input_topic.as_str().into(), p, pc.clone(), Models::default())).collect();
    let mut out = Vec::new();
    let start = (Instant::now(), cpu_now(None));
    for (offset, (p, key, value)) in encoded.iter().enumerate() {
        out.clear();
        let now_ms = offset as i64;
        processors[*p as usize].process(InputRecord { key: Some(key), value: Some(value), offset: offset as i64 }, now_ms, &mut out);
        std::hint::black_box(&out);
    }
    Timed::since(start, None)
}

/// CPU seconds (user + system) this process has used so far, all threads.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The local broker's process id: `ONAD_BENCH_BROKER_PID`, else the pid file
/// `scripts/kafka-broker` wrote for the bootstrap's port (`ONAD_BROKER_HOME`, default
/// `~/.cache/onad-stream/broker`). `None` when the broker is not a local process we know.
fn broker_pid() -> Option<u32> {
    if let Some(pid) = std::env::var("ONAD_BENCH_BROKER_PID").ok().and_then(|p| p.parse().ok()) {
        return Some(pid);
    }
    let port = bootstrap().rsplit(':').next()?.to_string();
    let home =
        std::env::var("ONAD_BROKER_HOME").ok().or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cache/onad-stream/broker")))?;
    std::fs::read_to_string(format!("{home}/tansu-{port}.pid")).ok()?.trim().parse().ok()
}

/// CPU seconds (user + system) process `pid` has used so far (`/proc/PID/stat`), NaN if unknown.
fn broker_cpu_secs(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok()) else {
        return f64::NAN;
    };
    // Fields after the command (which may hold spaces) start at state, field 3; utime and
    // stime are fields 14 and 15, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(14) + ticks(15)) / hz
}

/// CPU seconds of this process and of the local broker, now.
fn cpu_now(broker: Option<u32>) -> (f64, f64) {
    (cpu_secs(), broker_cpu_secs(broker))
}

/// One timed run: wall seconds and CPU seconds of this process and of the local broker, from
/// the first record taken to the last acknowledged.
#[derive(Clone, Copy)]
struct Timed {
    /// Wall-clock seconds.
    secs: f64,
    /// CPU seconds over the same window.
    cpu: f64,
    /// The broker's CPU seconds over the same window (NaN when it is not a known local
    /// process): on a machine whose cores the broker shares, its cost per reading is part of
    /// what limits the rate.
    broker: f64,
}

impl Timed {
    /// The window that started at `start` (an instant and [`cpu_now`]), ending now.
    fn since((at, (cpu, broker)): (Instant, (f64, f64)), pid: Option<u32>) -> Self {
        let (cpu_end, broker_end) = cpu_now(pid);
        Timed { secs: at.elapsed().as_secs_f64(), cpu: cpu_end - cpu, broker: broker_end - broker }
    }

    const NONE: Timed = Timed { secs: f64::NAN, cpu: f64::NAN, broker: f64::NAN };
}

/// Time the worker over the prepared topics (from first record to last ack).
async fn time_worker(config: Config, n: u64, scoring: bool) -> Timed {
    let mut worker = Worker::new(config);
    if !scoring {
        worker = worker.without_scoring();
    }
    let stats = worker.stats();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    let deadline = Instant::now() + LIMIT;
    let mut first = None;
    let pid = broker_pid();
    loop {
        let consumed = stats.consumed.load(Ordering::Relaxed);
        if first.is_none() && consumed > 0 {
            first = Some((Instant::now(), cpu_now(pid)));
        }
        if stats.acknowledged.load(Ordering::Relaxed) >= n {
            break;
        }
        assert!(Instant::now() < deadline, "worker did not finish {n} readings within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let timed = first.map(|start| Timed::since(start, pid));
    let _ = tx.send(());
    let summary = handle.await.expect("worker task").expect("worker run");
    assert_eq!(summary.scored, n, "every reading scored");
    timed.unwrap_or(Timed::NONE)
}

/// The bare loop: assign all partitions, copy each record to the same partition of the
/// scores topic, wait for every delivery. Timed from first record to last delivery.
fn time_bare(config: &Config, n: usize) -> Timed {
    let k = &config.kafka;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("{}-bare", k.group_id))
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&k.input_topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = VecDeque::new();
    let (mut seen, mut first) = (0, None);
    let pid = broker_pid();
    let deadline = Instant::now() + LIMIT;
    while seen < n {
        assert!(Instant::now() < deadline, "bare loop did not finish");
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        first.get_or_insert_with(|| (Instant::now(), cpu_now(pid)));
        seen += 1;
        let mut rec = FutureRecord::<[u8], [u8]>::to(&k.scores_topic).partition(m.partition());
        if let Some(key) = m.key() {
            rec = rec.key(key);
        }
        if let Some(p) = m.payload() {
            rec = rec.payload(p);
        }
        loop {
            match producer.send_result(rec) {
                Ok(f) => break pending.push_back(f),
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        while pending.front_mut().is_some_and(|f| futures::FutureExt::now_or_never(&mut *f).is_some()) {
            pending.pop_front();
        }
    }
    for f in pending {
        let _ = futures::executor::block_on(f);
    }
    first.map(|start| Timed::since(start, pid)).unwrap_or(Timed::NONE)
}

/// `config` with `model_type = detector` (its defaults).
fn with_detector(mut config: Config, detector: &str) -> Config {
    let spec = format!("model_type = \"{detector}\"");
    config.pipeline = Config::load_from(None, &[], &[spec]).expect("detector config").pipeline;
    config
}

/// The detector a worker mode scores with, if it scores (`zscore*` modes: the default).
fn detector_of(mode: &str) -> Option<&str> {
    match mode {
        "bare loop" | "no-scoring" => None,
        m if m.starts_with("zscore") => Some("zscore"),
        m => Some(m),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    // The allocator settings `run` starts with (before any thread), unless told not to
    // (`ONAD_BENCH_MALLOC=default`, to measure what they cost).
    if std::env::var("ONAD_BENCH_MALLOC").as_deref() != Ok("default") {
        onad_stream::ops::malloc::tune();
    }
    // `cargo test --benches` passes no args; `cargo bench` passes --bench. Either way, run.
    let n: usize = std::env::var("ONAD_BENCH_READINGS").ok().and_then(|v| v.parse().ok()).unwrap_or(600_000);
    let repeat: usize = std::env::var("ONAD_BENCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let modes = std::env::var("ONAD_BENCH_MODES").unwrap_or_else(|_| "no-scoring,zscore,isolation_forest".into());
    let modes: Vec<&str> = modes.split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
    // Tracing on vs off: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans and metrics are exported
    // as `run` exports them (BENCHMARKS.md); without it, OpenTelemetry is off.
    let telemetry = onad_stream::config::TelemetryConfig { log_level: "warn".into(), ..Default::default() };
    let otel = onad_stream::telemetry::init_with_otel(&telemetry).expect("OpenTelemetry");
    println!("worker_throughput: OpenTelemetry {}", if otel.is_some() { "on (exporting over OTLP)" } else { "off" });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        println!(
            "worker_throughput: {n} readings, {PARTITIONS} partitions, {SENSORS} sensors, 4 features, broker {}, {repeat} rounds",
            bootstrap()
        );
        // Per mode, the readings/s of each round; the bare loop runs in every round beside the
        // modes, so each round gives side-by-side ratios under the same machine load.
        let mut rates: Vec<(String, Vec<Timed>)> =
            std::iter::once("bare loop").chain(modes.iter().copied()).map(|m| (m.to_string(), Vec::new())).collect();
        // Goal 2 of issue 12: per scoring detector, its pipeline alone on one core, timed in
        // every round right after the first of its modes, so that each round's ratio compares
        // two rates of the same moment (the machine swings between a fast and a slow state
        // for seconds at a time, BENCHMARKS.md).
        let mut alone: Vec<(&str, Vec<Timed>)> = Vec::new();
        for d in modes.iter().filter_map(|m| detector_of(m)) {
            if !alone.iter().any(|(a, _)| *a == d) {
                alone.push((d, Vec::new()));
            }
        }
        for round in 1..=repeat {
            for (mode, got) in rates.iter_mut() {
                let config = prepare(&mode.replace(['_', ' '], "-"), n).await;
                let topics = topics_of(&config);
                let timed = match mode.as_str() {
                    "bare loop" => tokio::task::block_in_place(|| time_bare(&config, n)),
                    "no-scoring" => time_worker(config, n as u64, false).await,
                    "zscore" => time_worker(config, n as u64, true).await,
                    "zscore-nofb" => {
                        // The same worker without the warm fallback (`resilience.fallback = "none"`).
                        let mut config = config;
                        config.fallback = None;
                        time_worker(config, n as u64, true).await
                    }
                    batch if batch.starts_with("zscore-batch") => {
                        // The same with the producers' `batch.size` set to the bytes the mode
                        // names (`zscore-batch262144`): the zombie bound's trade-off (README,
                        // "Zombies"), side by side with the default.
                        let mut config = config;
                        config.raw.kafka.settings.insert("batch.size".into(), batch.trim_start_matches("zscore-batch").into());
                        time_worker(config, n as u64, true).await
                    }
                    "zscore-notxn" => {
                        // The same without transactional outputs (`kafka.transactional_outputs = false`):
                        // what the zombie fence costs.
                        let mut config = config;
                        config.raw.kafka.transactional_outputs = false;
                        time_worker(config, n as u64, true).await
                    }
                    "zscore-throughput" => {
                        // The same with `kafka.profile = "throughput"`.
                        let mut config = config;
                        config.raw.kafka.profile = onad_stream::config::KafkaProfile::Throughput;
                        time_worker(config, n as u64, true).await
                    }
                    detector => time_worker(with_detector(config, detector), n as u64, true).await,
                };
                println!(
                    "  round {round} {mode:<18}: {:6.2} s  {:>9.0} readings/s  cpu {:5.2} us/reading  broker cpu {:5.2} us/reading",
                    timed.secs,
                    n as f64 / timed.secs,
                    timed.cpu * 1e6 / n as f64,
                    timed.broker * 1e6 / n as f64
                );
                got.push(timed);
                // Tansu's memory storage slows as topics accumulate (BENCHMARKS.md): each
                // mode's topics go once timed, so later rounds meet the broker as the first did.
                drop_topics(&topics).await;
                if let Some((detector, times)) = alone.iter_mut().find(|(d, t)| detector_of(mode) == Some(*d) && t.len() < round) {
                    let config = with_detector(crate::config("standalone"), detector);
                    let t = tokio::task::block_in_place(|| time_standalone(&config, n));
                    println!(
                        "  round {round} {:<18}: {:6.2} s  {:>9.0} readings/s  cpu {:5.2} us/reading",
                        format!("{detector} alone"),
                        t.secs,
                        n as f64 / t.secs,
                        t.cpu * 1e6 / n as f64
                    );
                    times.push(t);
                }
            }
        }
        let bare = rates[0].1.clone();
        println!("worker_throughput: median of {repeat} rounds (ratio: median of the rounds' mode / bare loop)");
        for (mode, got) in &rates {
            let ratio = median(got.iter().zip(&bare).map(|(g, b)| b.secs / g.secs).collect());
            let rate = median(got.iter().map(|g| n as f64 / g.secs).collect());
            let cpu = median(got.iter().map(|g| g.cpu * 1e6 / n as f64).collect());
            let broker = median(got.iter().map(|g| g.broker * 1e6 / n as f64).collect());
            println!(
                "  {mode:<18}: {rate:>9.0} readings/s  {:>5.1}% of the bare loop  cpu {cpu:5.2} us/reading  broker cpu {broker:5.2} us/reading",
                ratio * 100.0
            );
        }
        // Goal 2 of issue 12: each scoring mode against its pipeline alone on one core times
        // the cores of this machine (which the worker shares with the broker when it is local).
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1) as f64;
        for (detector, alone) in &alone {
            let rate = median(alone.iter().map(|t| n as f64 / t.secs).collect());
            let cpu = median(alone.iter().map(|t| t.cpu * 1e6 / n as f64).collect());
            println!("  {detector} alone, 1 core : {rate:>9.0} readings/s  cpu {cpu:5.2} us/reading (median of {repeat})");
            for (mode, got) in rates.iter().filter(|(m, _)| detector_of(m) == Some(detector)) {
                let ratio = median(got.iter().zip(alone).map(|(g, a)| a.secs / (g.secs * cores)).collect());
                println!(
                    "  {mode:<18}: {:>5.1}% of {detector} alone x {cores} cores (median of the rounds' ratios)",
                    100.0 * ratio,
                );
            }
        }
    });
    // Outside the runtime: flushes the last spans.
    drop(rt);
    drop(otel);
}
