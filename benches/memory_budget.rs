//! The memory budget at scale, through the real binary (`onad-stream run`, release) and the
//! local broker: `ONAD_BENCH_SENSORS` (default 1,000,000) distinct sensors with the default
//! z-score pipeline (4 features), each reading `ONAD_BENCH_PASSES` (default 2) times, under
//! `memory_limit_mb = 512`; then the same number of readings from 1,000 sensors, in the same
//! run, for the throughput ratio. Reports per run: throughput (first output to last), the
//! worker's peak RSS (VmHWM of its /proc status, read before it is stopped; and the median and
//! 90th percentile of its VmRSS, sampled every ~0.2 s while it scores) against the
//! budget, and its evictions/reloads from the log. First the idle worker (0 sensors, joined),
//! then 1,000 sensors: the same load with next to no model memory, whose peak is the fixed
//! overhead the million-sensor run is held to (peak RSS <= 1.2 x budget + that).
//!
//! Then the store at 1M sensors (`StateStore`, no broker): a full snapshot written, a delta
//! of 1% of the sensors, and a restore of the state (base + delta).
//!
//! Run: `scripts/kafka-broker start; cargo bench --bench memory_budget` (state directories
//! under `ONAD_BENCH_STATE_DIR`, default the system temp dir; `ONAD_BENCH_SET` adds
//! `;`-separated `--set`s to the worker, `ONAD_BENCH_LOG` its `RUST_LOG`, `ONAD_BENCH_KEEP_LOG`
//! a directory to keep the workers' logs in).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onad_stream::config::Config;
use onad_stream::proto::SensorReading;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const BUDGET_MB: u64 = 512;
const LIMIT: Duration = Duration::from_secs(600);

mod common;
use common::bootstrap;

/// A temporary directory under `ONAD_BENCH_STATE_DIR` (default: the system's): the state of a
/// million sensors is a few GB of RocksDB files.
fn state_dir() -> tempfile::TempDir {
    match std::env::var("ONAD_BENCH_STATE_DIR") {
        Ok(d) => tempfile::tempdir_in(d).expect("state dir under ONAD_BENCH_STATE_DIR"),
        Err(_) => tempfile::tempdir().expect("state dir"),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn sets(name: &str) -> Vec<String> {
    let mut sets = vec![
        format!("kafka.bootstrap=\"{}\"", bootstrap()),
        format!("kafka.group_id=\"{name}-group\""),
        format!("kafka.input_topic=\"{name}-in\""),
        format!("kafka.scores_topic=\"{name}-scores\""),
        format!("kafka.alerts_topic=\"{name}-alerts\""),
        format!("kafka.dead_letter_topic=\"{name}-dead\""),
        format!("kafka.changelog_topic=\"{name}-changelog\""),
        format!("kafka.partitions={PARTITIONS}"),
        "kafka.session_timeout_ms=6000".to_string(),
        format!("memory_limit_mb={BUDGET_MB}"),
        // Snapshots every 100,000 readings per partition (a handful per run).
        "checkpoint_interval=100000".to_string(),
        "state.checkpoint_secs=3600".to_string(),
    ];
    // Extra `--set`s for experiments (`;`-separated), e.g. a librdkafka setting:
    // ONAD_BENCH_SET='kafka.settings."queued.max.messages.kbytes"="4096"'.
    sets.extend(std::env::var("ONAD_BENCH_SET").unwrap_or_default().split(';').filter(|s| !s.trim().is_empty()).map(str::to_string));
    sets
}

/// Fresh topics for `mode`, filled with `passes` readings of each of `sensors` sensors.
async fn prepare(mode: &str, sensors: usize, passes: usize) -> (String, Config) {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let name = format!("membench-{mode}-{t}");
    let config = Config::load_from(None, &[], &sets(&name)).expect("bench config");
    onad_stream::kafka::admin::create_all(&config.kafka).await.expect("create bench topics");
    let readings = (0..passes).flat_map(|pass| {
        (0..sensors).map(move |s| {
            let values = (0..4).map(|f| (format!("f{f}"), ((pass * 7 + s) as f64 * 0.1 + f as f64).sin())).collect();
            let reading = SensorReading { sensor_id: format!("sensor-{s:07}"), timestamp_ms: pass as i64, values, ..Default::default() };
            (s as i32 % PARTITIONS, reading)
        })
    });
    common::produce_readings(&config.kafka.input_topic, 500_000, readings).await;
    (name, config)
}

/// `onad-stream run` on `name`'s topics with its own state directory.
fn start(name: &str, state: &std::path::Path, log: &std::path::Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onad-stream"));
    cmd.arg("run");
    for s in sets(name) {
        cmd.arg("--set").arg(s);
    }
    cmd.arg("--set").arg(format!("state.path={:?}", state.display().to_string()));
    cmd.env("RUST_LOG", std::env::var("ONAD_BENCH_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start worker")
}

/// VmHWM and VmRSS of `pid`, in MiB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.wait();
}

/// Counts the records of the scores topic (read from the beginning; the watermarks Tansu
/// reports lag behind).
struct Counter {
    consumer: BaseConsumer,
    seen: i64,
}

impl Counter {
    fn new(config: &Config) -> Self {
        let consumer: BaseConsumer = onad_stream::kafka::bounds::reader(&config.kafka).create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&config.kafka.scores_topic, p, Offset::Beginning).expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
        Self { consumer, seen: 0 }
    }

    /// Read for up to `d`; returns the records seen so far.
    fn read_for(&mut self, d: Duration) -> i64 {
        let end = Instant::now() + d;
        while Instant::now() < end {
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(_)) => self.seen += 1,
                Some(Err(e)) => panic!("reading the scores: {e}"),
                None => break,
            }
        }
        self.seen
    }
}

/// VmRSS samples of a run, in MiB: where the peak stands against the worker's usual size
/// (a peak far above the median is a transient, e.g. snapshots written together).
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    /// The `q` quantile (0..=1) of the samples, NaN without any.
    fn quantile(&mut self, q: f64) -> f64 {
        self.0.sort_by(f64::total_cmp);
        let i = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0.get(i).copied().unwrap_or(f64::NAN)
    }
}

/// Run the worker over `name`'s topics until `n` scores are out; returns (seconds from the
/// first score to the last, peak RSS MiB, VmRSS samples from the first score on, the log).
fn run_worker(name: &str, config: &Config, n: i64) -> (f64, f64, Samples, String) {
    let dir = state_dir();
    let log = dir.path().join("worker.log");
    let child = start(name, &dir.path().join("state"), &log);
    let mut counter = Counter::new(config);
    let deadline = Instant::now() + LIMIT;
    let mut first = None;
    let mut samples = Samples::default();
    loop {
        let done = counter.read_for(Duration::from_millis(200));
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), done));
        }
        if first.is_some() {
            samples.0.push(rss_mb(child.id()).1);
        }
        if done >= n {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {n} scored within {LIMIT:?}");
    }
    let secs = first.map(|(t, _)| t.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    let (hwm, _) = rss_mb(child.id());
    stop(child);
    // ONAD_BENCH_KEEP_LOG=dir keeps each worker's log (its "heap trimmed" lines with
    // `ONAD_BENCH_LOG=info,onad_stream::kafka::task=debug`), named after the topics.
    if let Ok(keep) = std::env::var("ONAD_BENCH_KEEP_LOG") {
        let _ = std::fs::copy(&log, std::path::Path::new(&keep).join(format!("{name}.log")));
    }
    (secs, hwm, samples, std::fs::read_to_string(&log).unwrap_or_default())
}

/// The worker's peak RSS with 0 sensors: joined to its group, idle for 10 s.
fn idle_overhead(name: &str) -> f64 {
    let dir = state_dir();
    let log = dir.path().join("worker.log");
    let child = start(name, &dir.path().join("state"), &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("assigned") {
        assert!(Instant::now() < deadline, "idle worker never assigned:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(10));
    let (hwm, _) = rss_mb(child.id());
    stop(child);
    hwm
}

/// Store timings at `sensors` z-score pipelines (4 features): full snapshot, 1% delta,
/// restore of base + delta.
fn store_timings(sensors: usize) {
    use onad_stream::partition::KeyPipeline;
    use onad_stream::state::StateStore;
    let f = onad_stream::detect::PipelineSpec::default().check().expect("spec");
    let dir = state_dir();
    let store = StateStore::open(dir.path(), 4).expect("store");
    let encode = |i: usize, steps: usize| {
        let key = format!("sensor-{i:07}");
        let mut p = f.build(4, &key);
        for t in 0..steps {
            let x: Vec<f64> = (0..4).map(|j| ((t * 7 + i + j) as f64).sin()).collect();
            p.process(&x);
        }
        let kp = KeyPipeline { processed: steps as u64, ..KeyPipeline::new((0..4).map(|j| format!("f{j}")).collect(), p) };
        (key, onad_stream::state::codec::encode(onad_stream::state::Kind::Model, &kp).expect("encodes"))
    };
    let t = Instant::now();
    let rows: Vec<(String, Vec<u8>)> = (0..sensors).map(|i| encode(i, 3)).collect();
    let bytes: usize = rows.iter().map(|(_, v)| v.len()).sum();
    println!("  store: {sensors} pipelines encoded in {:.1} s, {:.0} bytes each", t.elapsed().as_secs_f64(), bytes as f64 / sensors as f64);
    let t = Instant::now();
    store.write_merged("bench", 0, 1_000_000, &rows).expect("full snapshot");
    println!("  store: full snapshot of {sensors} sensors written in {:.1} s", t.elapsed().as_secs_f64());
    drop(rows);
    let delta: Vec<(String, Vec<u8>)> = (0..sensors).step_by(100).map(|i| encode(i, 4)).collect();
    let t = Instant::now();
    store.write_delta("bench", 0, 1_010_000, 1_000_000, &delta).expect("delta");
    println!("  store: delta of {} changed sensors written in {:.3} s", delta.len(), t.elapsed().as_secs_f64());
    let t = Instant::now();
    let restored = store.restore::<KeyPipeline>("bench", 0, None).expect("reads").snapshot.expect("restored");
    println!("  store: restore (base + delta, decoded) of {} sensors in {:.1} s", restored.models.len(), t.elapsed().as_secs_f64());
}

fn main() {
    let sensors = env_usize("ONAD_BENCH_SENSORS", 1_000_000);
    let passes = env_usize("ONAD_BENCH_PASSES", 2);
    let n = (sensors * passes) as i64;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("memory_budget: memory_limit_mb = {BUDGET_MB}, {PARTITIONS} partitions, z-score, 4 features, broker {}", bootstrap());
    let (idle_name, _) = rt.block_on(prepare("idle", 0, 0));
    let overhead = idle_overhead(&idle_name);
    println!("  0 sensors (idle worker): peak RSS {overhead:.0} MiB");
    // 1,000 sensors first: the worker at the same load with next to no model memory (its
    // queues, outputs in flight, snapshots and store at full tilt) is the fixed overhead the
    // million-sensor run is bounded by: peak RSS <= 1.2 x the budget + that.
    let mut loaded = f64::NAN;
    for (mode, s, p) in [("few", 1000, n as usize / 1000), ("many", sensors, passes)] {
        let (name, config) = rt.block_on(prepare(mode, s, p));
        let (secs, hwm, mut samples, log) = run_worker(&name, &config, n);
        let evicting = log.matches("memory budget reached").count();
        for line in log.lines().filter(|l| l.contains("memory budget: partition stopped")) {
            println!("    worker: {}", line.split("memory budget: partition stopped").nth(1).unwrap_or(""));
        }
        let bound = if loaded.is_nan() {
            loaded = hwm;
            "(= the fixed overhead under load)".to_string()
        } else {
            let b = 1.2 * BUDGET_MB as f64 + loaded;
            format!("(bound 1.2 x {BUDGET_MB} + {loaded:.0} = {b:.0}: {})", if hwm <= b { "within" } else { "OVER" })
        };
        println!("  {s:>9} sensors x {p:>4} readings: {secs:6.1} s {:>8.0} readings/s, peak RSS {hwm:.0} MiB {bound}, {evicting} partitions evicted", n as f64 / secs);
        let (median, p90) = (samples.quantile(0.5), samples.quantile(0.9));
        println!("            VmRSS while scoring ({} samples): median {median:.0} MiB, 90th percentile {p90:.0} MiB", samples.0.len());
    }
    store_timings(sensors);
}
