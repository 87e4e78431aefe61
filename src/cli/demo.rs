//! `onad-stream demo`: the whole flow in one process, on librdkafka's embedded mock cluster.
//!
//! A synthetic fleet (with injected spikes and one drifting sensor) is produced to the input
//! topic, the real worker scores it, and a live view reads the scores, alerts and dead-letter
//! topics back, as any downstream consumer would. It ends after `--seconds` or on Ctrl-C,
//! waits for the worker to score what was produced, stops the worker gracefully and prints a
//! summary. No broker, Docker or network is needed.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::synth::{Fleet, FleetSpec};
use super::tools::{now_ms, stop_on_signal, Pacer, ReadingSender};
use super::ConfigArgs;
use crate::proto::{AnomalyAlert, DeadLetter, ScoredReading, Severity};

/// librdkafka's mock cluster silently drops the oldest records of a partition past this many
/// (and past 5 MiB); the demo refuses settings that would get close.
const MOCK_PARTITION_RECORD_LIMIT: f64 = 80_000.0;
/// How long the demo waits, after producing stops, for the worker to score the rest.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);
/// Anomalies listed per refresh of the live view.
const ANOMALIES_PER_REFRESH: usize = 4;

/// Arguments of `onad-stream demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Configuration (the model, thresholds and topic names are used; Kafka is embedded).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Seconds of producing before the demo winds down (Ctrl-C ends it earlier).
    #[arg(long, env = "ONAD_DEMO_SECONDS", default_value_t = 20.0)]
    pub seconds: f64,
    /// Readings per second produced by the synthetic fleet.
    #[arg(long, env = "ONAD_DEMO_RATE", default_value_t = 1000.0)]
    pub rate: f64,
    /// Sensors in the fleet.
    #[arg(long, env = "ONAD_DEMO_SENSORS", default_value_t = 20)]
    pub sensors: usize,
    /// Features per reading.
    #[arg(long, env = "ONAD_DEMO_FEATURES", default_value_t = 3)]
    pub features: usize,
    /// Probability that a reading carries an injected spike. A calibrated score is a rarity
    /// against each sensor's own history (0.8 = 1 in 10,000), so spikes flag only while they
    /// stay rare: a spike in every 100 readings is, after a while, a 1-in-100 event.
    #[arg(long, env = "ONAD_DEMO_SPIKE_RATE", default_value_t = 0.005)]
    pub spike_rate: f64,
    /// Spike size in noise standard deviations.
    #[arg(long, env = "ONAD_DEMO_SPIKE_SIGMAS", default_value_t = 8.0)]
    pub spike_sigmas: f64,
    /// Drift of the last sensor per reading, in noise standard deviations.
    #[arg(long, env = "ONAD_DEMO_DRIFT", default_value_t = 0.005)]
    pub drift: f64,
    /// Seed of the fleet.
    #[arg(long, env = "ONAD_DEMO_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Partitions of the embedded topics (default: `kafka.partitions`).
    #[arg(long, env = "ONAD_DEMO_PARTITIONS")]
    pub partitions: Option<i32>,
}

/// What the producer thread did.
#[derive(Debug, Default)]
struct Produced {
    /// Readings handed to the producer.
    sent: u64,
    /// Readings acknowledged by the (mock) broker.
    delivered: u64,
    /// `(sensor id, timestamp)` of every reading with an injected spike.
    spikes: HashSet<(String, i64)>,
}

/// What the live view has read from the output topics.
#[derive(Debug, Default)]
struct Seen {
    /// ScoredReadings read.
    scored: u64,
    /// Alerts read, by severity name.
    alerts_by_severity: BTreeMap<&'static str, u64>,
    /// Dead letters read.
    dead_letters: u64,
    /// Scored readings with an injected spike that were flagged.
    spikes_caught: u64,
    /// Scored readings with an injected spike.
    spikes_scored: u64,
    /// Anomalies on readings without a spike, on the drifting sensor.
    drift_alarms: u64,
    /// Anomalies on readings without a spike, elsewhere.
    other_alarms: u64,
    /// Alerts not yet shown in the live view.
    pending: Vec<AnomalyAlert>,
    /// The fleet's drifting sensor, if any.
    drifting: Option<String>,
}

impl Seen {
    fn alerts(&self) -> u64 {
        self.alerts_by_severity.values().sum()
    }
}

/// Run the subcommand.
pub fn main(args: DemoArgs) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    if std::env::var_os("RUST_LOG").is_none() {
        // The live view is the demo's output; worker logs only when something is wrong.
        config.raw.telemetry.log_level = "warn".into();
    }
    crate::telemetry::init(&config.telemetry);
    anyhow::ensure!(args.seconds.is_finite() && args.seconds > 0.0, "--seconds must be a positive number");
    anyhow::ensure!(args.rate.is_finite() && args.rate > 0.0, "--rate must be a positive number");
    let spec = FleetSpec {
        sensors: args.sensors,
        features: args.features,
        spike_rate: args.spike_rate,
        spike_sigmas: args.spike_sigmas,
        drift_sigmas_per_reading: args.drift,
        seed: args.seed,
    };
    spec.check().map_err(|e| anyhow::anyhow!(e))?;
    let partitions = args.partitions.unwrap_or(config.kafka.partitions);
    anyhow::ensure!(partitions >= 1, "--partitions must be at least 1");
    let per_partition = args.rate * args.seconds / f64::from(partitions);
    anyhow::ensure!(
        per_partition <= MOCK_PARTITION_RECORD_LIMIT,
        "--rate {} for --seconds {} puts ~{per_partition:.0} records on each of {partitions} partitions; the embedded \
         mock cluster drops records past 100,000 per partition: lower --rate or --seconds, or raise --partitions",
        args.rate,
        args.seconds
    );

    // The embedded cluster lives as long as `mock`.
    let k = &mut config.raw.kafka;
    let topics = [&k.input_topic, &k.scores_topic, &k.alerts_topic, &k.dead_letter_topic, &k.changelog_topic];
    let mock = crate::kafka::admin::MockCluster::start(&topics.map(String::as_str), partitions)?;
    k.bootstrap = mock.bootstrap_servers().to_string();
    k.group_id = format!("onad-demo-{}", std::process::id());
    k.partitions = partitions;
    let state_dir = std::env::temp_dir().join(format!("onad-stream-demo-{}", std::process::id()));
    config.raw.state.path = state_dir.clone();
    let kafka = config.kafka.clone();

    println!(
        "onad-stream demo: {} sensors x {} features, {:.0} readings/s for {:.0} s, spikes at {:.1}%, drifting sensor, \
         detector `{}`, {partitions} partitions on an embedded mock cluster",
        args.sensors,
        args.features,
        args.rate,
        args.seconds,
        args.spike_rate * 100.0,
        config.pipeline.detector_name()
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let worker = crate::worker::Worker::new(config.clone());
    let stats = worker.stats();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_task = rt.spawn(worker.run(async move {
        let _ = shutdown_rx.await;
    }));

    // The fleet, on its own thread, paced.
    let stop_producing = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(Mutex::new(Produced::default()));
    let producer_thread = {
        let (stop, produced, kafka, spec) = (stop_producing.clone(), produced.clone(), kafka.clone(), spec.clone());
        let rate = args.rate;
        std::thread::Builder::new().name("demo-fleet".into()).spawn(move || -> anyhow::Result<()> {
            let mut fleet = Fleet::new(spec);
            let mut sender = ReadingSender::new(&kafka, &kafka.input_topic)?;
            let pacer = Pacer::new(Some(rate));
            let mut last_ts = 0i64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                pacer.wait_for(i);
                // Unique timestamps per reading, so a spike is identified by (sensor, time).
                last_ts = now_ms().max(last_ts + 1);
                let g = fleet.next_reading(last_ts);
                sender.send(&g.reading)?;
                if let Ok(mut p) = produced.lock() {
                    p.sent += 1;
                    p.delivered = sender.delivered();
                    if g.spike {
                        p.spikes.insert((g.reading.sensor_id.clone(), g.reading.timestamp_ms));
                    }
                }
                i += 1;
            }
            let delivered = sender.finish()?;
            if let Ok(mut p) = produced.lock() {
                p.delivered = delivered;
            }
            Ok(())
        })?
    };

    // The live view reads the output topics from the start, without a group.
    let view: BaseConsumer = crate::kafka::client::reader(&kafka, "onad-demo-view").create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in [&kafka.scores_topic, &kafka.alerts_topic, &kafka.dead_letter_topic] {
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    view.assign(&tpl)?;

    let interrupted = stop_on_signal();
    let started = Instant::now();
    let produce_for = Duration::from_secs_f64(args.seconds);
    let mut seen = Seen { drifting: Fleet::new(spec.clone()).drifting_sensor().map(String::from), ..Seen::default() };
    let mut last_refresh = Instant::now();
    let mut last_counts = (0u64, 0u64);
    let mut producing = true;
    let mut catch_up_deadline = None;
    let stdout = std::io::stdout();
    loop {
        drain_view(&view, &kafka, &produced, &mut seen);
        if producing && (started.elapsed() >= produce_for || interrupted.load(Ordering::Relaxed)) {
            producing = false;
            stop_producing.store(true, Ordering::Relaxed);
            catch_up_deadline = Some(Instant::now() + CATCH_UP_TIMEOUT);
            println!("-- producing stopped; waiting for the worker to score the rest --");
        }
        if !producing && producer_thread.is_finished() {
            let delivered = produced.lock().map(|p| p.delivered).unwrap_or(0);
            let caught_up = seen.scored + seen.dead_letters >= delivered;
            if caught_up || catch_up_deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        if worker_task.is_finished() {
            break;
        }
        if last_refresh.elapsed() >= Duration::from_secs(1) {
            let dt = last_refresh.elapsed().as_secs_f64();
            last_refresh = Instant::now();
            let sent = produced.lock().map(|p| p.sent).unwrap_or(0);
            let mut out = stdout.lock();
            let _ = writeln!(
                out,
                "[{:>5.1}s] produced {:>7} ({:>6.0}/s)  scored {:>7} ({:>6.0}/s)  alerts {:>5}  dead letters {}",
                started.elapsed().as_secs_f64(),
                sent,
                (sent - last_counts.0) as f64 / dt,
                seen.scored,
                (seen.scored - last_counts.1) as f64 / dt,
                seen.alerts(),
                seen.dead_letters
            );
            last_counts = (sent, seen.scored);
            let pending = std::mem::take(&mut seen.pending);
            for a in pending.iter().take(ANOMALIES_PER_REFRESH) {
                let sensor = a.reading.as_ref().map_or("?", |r| r.sensor_id.as_str());
                let injected = a.reading.as_ref().is_some_and(|r| r.labels.get("injected").is_some_and(|v| v == "spike"));
                let _ = writeln!(
                    out,
                    "          ! {sensor:<12} score {:.3}  {:<8}{}",
                    a.score,
                    severity_short(a.severity),
                    if injected { "  (injected spike)" } else { "" }
                );
            }
            if pending.len() > ANOMALIES_PER_REFRESH {
                let _ = writeln!(out, "          ... and {} more", pending.len() - ANOMALIES_PER_REFRESH);
            }
        }
    }

    stop_producing.store(true, Ordering::Relaxed);
    let produce_result = producer_thread.join().map_err(|_| anyhow::anyhow!("the fleet thread panicked"))?;
    let _ = shutdown_tx.send(());
    let worker_result = rt.block_on(worker_task)?;
    drain_view(&view, &kafka, &produced, &mut seen);
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&state_dir);
    produce_result?;
    let run = worker_result?;

    let p = produced.lock().map_err(|_| anyhow::anyhow!("fleet state poisoned"))?;
    let worker_stats = stats.summary(elapsed);
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    println!();
    println!("== onad-stream demo summary ==");
    println!("readings produced      {}", p.delivered);
    println!("readings scored        {}", seen.scored);
    println!(
        "throughput             {:.0} readings/s scored over the worker's {:.1} s (the fleet produced {:.0}/s; raise --rate to push)",
        run.scored as f64 / secs,
        secs,
        args.rate
    );
    println!("dead letters           {}", seen.dead_letters);
    let sev: Vec<String> = ["CRITICAL", "HIGH", "MEDIUM", "LOW"]
        .iter()
        .map(|s| format!("{s} {}", seen.alerts_by_severity.get(s).copied().unwrap_or(0)))
        .collect();
    println!("alerts                 {}  ({})", seen.alerts(), sev.join(", "));
    println!(
        "injected spikes        {}  caught {} of {} scored ({:.0}%; none can be flagged while a sensor's score scale calibrates)",
        p.spikes.len(),
        seen.spikes_caught,
        seen.spikes_scored,
        100.0 * seen.spikes_caught as f64 / seen.spikes_scored.max(1) as f64
    );
    println!("alarms without a spike {}  (on the drifting sensor: {})", seen.other_alarms + seen.drift_alarms, seen.drift_alarms);
    println!("rebalances             {}", worker_stats.rebalances);
    if seen.scored + seen.dead_letters < p.delivered {
        anyhow::bail!(
            "the worker answered only {} of {} readings within {CATCH_UP_TIMEOUT:?} of the end",
            seen.scored + seen.dead_letters,
            p.delivered
        );
    }
    Ok(())
}

/// Read everything the output topics have for now into `seen`.
fn drain_view(view: &BaseConsumer, kafka: &crate::config::KafkaConfig, produced: &Mutex<Produced>, seen: &mut Seen) {
    let mut budget = 50_000;
    while budget > 0 {
        budget -= 1;
        let Some(msg) = view.poll(Duration::from_millis(if budget == 49_999 { 100 } else { 0 })) else { break };
        let Ok(msg) = msg else { continue };
        let payload = msg.payload().unwrap_or_default();
        let topic = msg.topic();
        if topic == kafka.scores_topic {
            let Ok(s) = ScoredReading::decode(payload) else { continue };
            seen.scored += 1;
            let spike = produced.lock().is_ok_and(|p| p.spikes.contains(&(s.sensor_id.clone(), s.timestamp_ms)));
            if spike {
                seen.spikes_scored += 1;
                seen.spikes_caught += u64::from(s.is_anomaly);
            } else if s.is_anomaly {
                if seen.drifting.as_deref() == Some(s.sensor_id.as_str()) {
                    seen.drift_alarms += 1;
                } else {
                    seen.other_alarms += 1;
                }
            }
        } else if topic == kafka.alerts_topic {
            let Ok(a) = AnomalyAlert::decode(payload) else { continue };
            *seen.alerts_by_severity.entry(severity_short(a.severity)).or_default() += 1;
            seen.pending.push(a);
        } else if topic == kafka.dead_letter_topic && DeadLetter::decode(payload).is_ok() {
            seen.dead_letters += 1;
        }
    }
}

fn severity_short(s: i32) -> &'static str {
    match Severity::try_from(s) {
        Ok(Severity::Critical) => "CRITICAL",
        Ok(Severity::High) => "HIGH",
        Ok(Severity::Medium) => "MEDIUM",
        Ok(Severity::Low) => "LOW",
        _ => "UNKNOWN",
    }
}
