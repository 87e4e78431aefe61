//! Every Prometheus metric of the worker, declared in one place, with `prometheus-client`.
//!
//! Two kinds of source:
//! - the counters and gauges the hot path already keeps as atomics in [`WorkerStats`] (and
//!   the per-partition gauges of [`PartitionStats`]) are read at scrape time by
//!   [`WorkerCollector`]: nothing is counted twice;
//! - events with a label the atomics lack (dead letters by kind, anomalies by severity) and the
//!   histograms live in [`Instruments`], which [`WorkerStats`] carries so that the partition
//!   threads reach them. Partition threads hold their own histogram handles (no family lookup
//!   per record).
//!
//! Labels: `topic` (the input topic), `partition`, `kind`, `severity`, `state` — never a
//! sensor id (unbounded cardinality). Names say what they count.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::health::{Health, Status};
use super::stats::{PartitionStats, WorkerStats};

/// `topic` and one more label.
type Labels2 = [(&'static str, String); 2];
/// A histogram family whose constructor is a plain function (so the family is `Clone`).
type HistogramFamily = Family<Labels2, Histogram, fn() -> Histogram>;

/// Reading → output latency buckets, seconds: 1 ms to ~65 s (a backlog replays old readings).
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17))
}

/// Batch processing buckets, seconds: 50 µs to ~1.6 s (a batch is at most 1024 records).
fn batch_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16))
}

/// Snapshot write buckets, seconds: 1 ms to ~33 s.
fn snapshot_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16))
}

/// The labelled metrics that are observed where they happen (see the module doc).
#[derive(Debug, Clone)]
pub struct Instruments {
    /// `onad_dead_letters_by_kind_total{topic,kind}`.
    dead_letters: Family<Labels2, Counter>,
    /// `onad_anomalies_total{topic,severity}`.
    anomalies: Family<Labels2, Counter>,
    /// `onad_security_events_total{topic,kind}`.
    security_events: Family<Labels2, Counter>,
    /// `onad_reading_to_output_seconds{topic,partition}`.
    latency: HistogramFamily,
    /// `onad_batch_processing_seconds{topic,partition}`.
    batch: HistogramFamily,
    /// `onad_snapshot_duration_seconds{topic,partition}`.
    snapshot: HistogramFamily,
    /// `onad_snapshot_written_bytes_total{topic,partition}`.
    snapshot_bytes: Family<Labels2, Counter>,
}

impl Default for Instruments {
    fn default() -> Self {
        Self {
            dead_letters: Family::default(),
            anomalies: Family::default(),
            security_events: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            batch: Family::new_with_constructor(batch_histogram),
            snapshot: Family::new_with_constructor(snapshot_histogram),
            snapshot_bytes: Family::default(),
        }
    }
}

impl Instruments {
    /// Count a dead letter of `kind` (e.g. `decode`).
    pub fn dead_letter(&self, topic: &str, kind: &str) {
        self.dead_letters.get_or_create(&[("topic", topic.to_string()), ("kind", kind.to_string())]).inc();
    }

    /// Count a rejected reading pointing at a hostile or broken producer (`kind`: a
    /// [`super::stats::SecurityEvent`] name).
    pub fn security_event(&self, topic: &str, kind: &str) {
        self.security_events.get_or_create(&[("topic", topic.to_string()), ("kind", kind.to_string())]).inc();
    }

    /// Count an anomaly alert of `severity` (e.g. `high`).
    pub fn anomaly(&self, topic: &str, severity: &str) {
        self.anomalies.get_or_create(&[("topic", topic.to_string()), ("severity", severity.to_string())]).inc();
    }

    /// The reading → output latency histogram of a partition (keep the handle: observing it
    /// takes no family lookup).
    pub fn latency(&self, topic: &str, partition: i32) -> Histogram {
        self.latency.get_or_create_owned(&[("topic", topic.to_string()), ("partition", partition.to_string())])
    }

    /// The batch processing-time histogram of a partition.
    pub fn batch(&self, topic: &str, partition: i32) -> Histogram {
        self.batch.get_or_create_owned(&[("topic", topic.to_string()), ("partition", partition.to_string())])
    }

    /// A snapshot of a partition was written: its duration and size.
    pub fn snapshot(&self, topic: &str, partition: i32, seconds: f64, bytes: u64) {
        let labels = [("topic", topic.to_string()), ("partition", partition.to_string())];
        self.snapshot.get_or_create(&labels).observe(seconds);
        self.snapshot_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// Register every instrument in `registry`.
    fn register(&self, registry: &mut Registry) {
        registry.register("onad_dead_letters_by_kind", "Records sent to the dead-letter topic, by error kind", self.dead_letters.clone());
        registry.register("onad_anomalies", "Anomaly alerts emitted, by severity", self.anomalies.clone());
        registry.register(
            "onad_security_events",
            "Rejected readings pointing at a hostile or broken producer, by kind",
            self.security_events.clone(),
        );
        registry.register(
            "onad_reading_to_output_seconds",
            "From the input record's timestamp to its outputs being handed to the producer, seconds",
            self.latency.clone(),
        );
        registry.register(
            "onad_batch_processing_seconds",
            "Time to process one batch of records taken from a partition (score and enqueue outputs), seconds",
            self.batch.clone(),
        );
        registry.register("onad_snapshot_duration_seconds", "Time to write one state snapshot, seconds", self.snapshot.clone());
        registry.register("onad_snapshot_written_bytes", "Bytes of state snapshots written", self.snapshot_bytes.clone());
    }
}

/// A counter or gauge read from a [`WorkerStats`] atomic at scrape time.
struct Exposed {
    /// Name (counters without `_total`: the encoder appends it).
    name: &'static str,
    /// Counter or gauge.
    kind: MetricType,
    /// One-line help text.
    help: &'static str,
    /// The value now.
    read: fn(&WorkerStats) -> u64,
}

/// Shorthand for an atomic's value.
fn get(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Every worker-wide counter and gauge kept as an atomic.
const EXPOSED: &[Exposed] = &[
    Exposed {
        name: "onad_records_consumed",
        kind: MetricType::Counter,
        help: "Input records taken from Kafka.",
        read: |s| get(&s.consumed),
    },
    Exposed {
        name: "onad_readings_scored",
        kind: MetricType::Counter,
        help: "Readings scored (one ScoredReading each).",
        read: |s| get(&s.scored),
    },
    Exposed { name: "onad_alerts", kind: MetricType::Counter, help: "Anomaly alerts emitted (all severities).", read: |s| get(&s.alerts) },
    Exposed {
        name: "onad_dead_letters",
        kind: MetricType::Counter,
        help: "Records sent to the dead-letter topic (all kinds).",
        read: |s| get(&s.dead_letters),
    },
    Exposed {
        name: "onad_records_acknowledged",
        kind: MetricType::Counter,
        help: "Input records whose outputs were delivered and whose offset was stored.",
        read: |s| get(&s.acknowledged),
    },
    Exposed {
        name: "onad_records_replayed",
        kind: MetricType::Counter,
        help: "Records re-applied to restored state without outputs.",
        read: |s| get(&s.replayed),
    },
    Exposed { name: "onad_rebalances", kind: MetricType::Counter, help: "Rebalance callbacks served.", read: |s| get(&s.rebalances) },
    Exposed {
        name: "onad_state_failing_partitions",
        kind: MetricType::Gauge,
        help: "Partitions paused because their state cannot be saved (non-zero: not ready).",
        read: |s| get(&s.state_failing),
    },
    Exposed {
        name: "onad_state_write_failures",
        kind: MetricType::Counter,
        help: "Snapshot writes that failed (each retry counts).",
        read: |s| get(&s.state_write_failures),
    },
    Exposed {
        name: "onad_state_recoveries",
        kind: MetricType::Counter,
        help: "Times a paused partition saved its state again and carried on.",
        read: |s| get(&s.state_recoveries),
    },
    Exposed {
        name: "onad_partitions_resumed_at_end",
        kind: MetricType::Counter,
        help: "Partitions assigned with a committed offset beyond their last record, resumed at the end.",
        read: |s| get(&s.past_end_resets),
    },
    Exposed {
        name: "onad_stall_fences",
        kind: MetricType::Counter,
        help: "Times a partition thread found itself stalled past the session timeout and held its outputs (zombie fencing).",
        read: |s| get(&s.stall_fences),
    },
    Exposed {
        name: "onad_delivery_rereads",
        kind: MetricType::Counter,
        help: "Times a partition started over from its state store and committed offset because outputs timed out undelivered (a broker outage or a freeze).",
        read: |s| get(&s.delivery_rereads),
    },
    Exposed {
        name: "onad_output_transactions_committed",
        kind: MetricType::Counter,
        help: "Output transactions committed (kafka.transactional_outputs): their outputs are visible to read_committed consumers.",
        read: |s| get(&s.transactions_committed),
    },
    Exposed {
        name: "onad_output_transactions_failed",
        kind: MetricType::Counter,
        help: "Output transactions that failed (outputs timed out or refused, or the producer was fenced): the partition starts over, or is given up when fenced by another member.",
        read: |s| get(&s.transactions_failed),
    },
    Exposed {
        name: "onad_assigned_partitions",
        kind: MetricType::Gauge,
        help: "Input partitions this worker owns now.",
        read: |s| get(&s.partitions),
    },
];

/// A per-partition gauge read from [`PartitionStats`] at scrape time.
struct PerPartition {
    /// Name.
    name: &'static str,
    /// Counter or gauge.
    kind: MetricType,
    /// Help text.
    help: &'static str,
    /// The value now (`now_ms` for ages).
    read: fn(&PartitionStats, u64) -> i64,
}

/// Clamp an unsigned value into a gauge.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Every per-partition metric (labels `topic`, `partition`).
const PER_PARTITION: &[PerPartition] = &[
    PerPartition {
        name: "onad_consumer_lag",
        kind: MetricType::Gauge,
        help: "Records behind the partition's end, from librdkafka's statistics (consumer_lag); -1 unknown.",
        read: |p, _| p.lag.load(Ordering::Relaxed),
    },
    PerPartition {
        name: "onad_models",
        kind: MetricType::Gauge,
        help: "Sensor pipelines of the partition (in memory and evicted).",
        read: |p, _| signed(get(&p.models)),
    },
    PerPartition {
        name: "onad_models_resident",
        kind: MetricType::Gauge,
        help: "Sensor pipelines of the partition held in memory.",
        read: |p, _| signed(get(&p.models_resident)),
    },
    PerPartition {
        name: "onad_model_bytes",
        kind: MetricType::Gauge,
        help: "Bytes of the partition's resident pipeline state (encoded size).",
        read: |p, _| signed(get(&p.model_bytes)),
    },
    PerPartition {
        name: "onad_snapshot_bytes",
        kind: MetricType::Gauge,
        help: "Bytes of the partition's last snapshot.",
        read: |p, _| signed(get(&p.last_snapshot_bytes)),
    },
    PerPartition {
        name: "onad_snapshot_age_seconds",
        kind: MetricType::Gauge,
        help: "Seconds since the partition's last snapshot; -1 before the first.",
        read: |p, now| match get(&p.last_snapshot_ms) {
            0 => -1,
            at => signed(now.saturating_sub(at) / 1000),
        },
    },
    PerPartition {
        name: "onad_readings_degraded",
        kind: MetricType::Counter,
        help: "Readings of the partition scored by a fallback detector (degraded = true) since it was assigned.",
        read: |p, _| signed(get(&p.degraded)),
    },
    PerPartition {
        name: "onad_pipelines_evicted",
        kind: MetricType::Counter,
        help: "Pipelines of the partition written to the store and dropped from memory since it was assigned.",
        read: |p, _| signed(get(&p.evictions)),
    },
];

/// Reads the atomics of a worker, its partitions, its health and the process at scrape time.
#[derive(Debug)]
struct WorkerCollector {
    /// Input topic (the `topic` label).
    topic: String,
    /// The worker's counters.
    stats: Arc<WorkerStats>,
    /// Readiness rules, for `onad_ready`.
    health: Arc<Health>,
}

impl Collector for WorkerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let topic = [("topic", self.topic.as_str())];
        for e in EXPOSED {
            let mut m = encoder.encode_descriptor(e.name, e.help, None, e.kind)?;
            encode_value(m.encode_family(&topic)?, e.kind, signed((e.read)(&self.stats)))?;
        }
        let report = self.health.report();
        let ready = i64::from(report.status != Status::Unhealthy);
        let m =
            encoder.encode_descriptor("onad_ready", "1 when /ready answers 200 (healthy or degraded), else 0.", None, MetricType::Gauge)?;
        ConstGauge::new(ready).encode(m)?;
        let degraded = i64::from(report.status == Status::Degraded);
        let m = encoder.encode_descriptor(
            "onad_degraded",
            "1 while any circuit breaker is open (status degraded).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(degraded).encode(m)?;

        let now = super::health::now_ms();
        let parts = self.stats.partitions_now();
        for p in PER_PARTITION {
            let mut m = encoder.encode_descriptor(p.name, p.help, None, p.kind)?;
            for ((t, n), s) in &parts {
                let labels = [("topic", t.clone()), ("partition", n.to_string())];
                encode_value(m.encode_family(&labels)?, p.kind, (p.read)(s, now))?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "onad_breakers",
            "Circuit breakers by state per partition: open (half-open included), half_open (open, trial due).",
            None,
            MetricType::Gauge,
        )?;
        for ((t, n), s) in &parts {
            for (state, v) in [("open", &s.breakers_open), ("half_open", &s.breakers_half_open)] {
                let labels = [("topic", t.clone()), ("partition", n.to_string()), ("state", state.to_string())];
                ConstGauge::new(signed(get(v))).encode(m.encode_family(&labels)?)?;
            }
        }

        if let Some(p) = super::process::sample() {
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident set size of the worker process, bytes.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(signed(p.rss_bytes)).encode(m)?;
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time of the worker process, seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(p.cpu_seconds).encode(m)?;
        }
        Ok(())
    }
}

/// Encode `v` as a counter or a gauge (`m` carries the labels).
fn encode_value(m: prometheus_client::encoding::MetricEncoder<'_>, kind: MetricType, v: i64) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => ConstCounter::new(u64::try_from(v).unwrap_or(0)).encode(m),
        _ => ConstGauge::new(v).encode(m),
    }
}

/// What `/metrics` serves: the registry of one worker.
#[derive(Debug)]
pub struct Metrics {
    /// Every metric, registered once.
    registry: Registry,
}

impl Metrics {
    /// The metrics of a worker consuming `topic` with `stats`, `health` deciding `onad_ready`.
    pub fn new(topic: &str, stats: Arc<WorkerStats>, health: Arc<Health>) -> Self {
        let mut registry = Registry::default();
        stats.instruments.register(&mut registry);
        registry.register_collector(Box::new(WorkerCollector { topic: topic.to_string(), stats, health }));
        Self { registry }
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail; an encoder error would only truncate the page.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!(cause = %e, "cannot encode the metrics");
        }
        out
    }
}

/// The `Content-Type` of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::health::HealthRules;

    fn metrics(stats: &Arc<WorkerStats>) -> Metrics {
        let health = Arc::new(Health::new(stats.clone(), HealthRules::default()));
        Metrics::new("in\"put", stats.clone(), health)
    }

    #[test]
    fn exposition_names_every_counter_with_its_topic_and_partition_gauges() {
        let stats = Arc::new(WorkerStats::default());
        stats.scored.fetch_add(5, Ordering::Relaxed);
        stats.partitions.store(2, Ordering::Relaxed);
        stats.partition("in\"put", 3).lag.store(42, Ordering::Relaxed);
        stats.partition("in\"put", 3).breakers_open.store(1, Ordering::Relaxed);
        stats.instruments.dead_letter("in\"put", "decode");
        stats.instruments.anomaly("in\"put", "high");
        stats.instruments.latency("in\"put", 3).observe(0.02);
        let text = metrics(&stats).render();
        for want in [
            "# TYPE onad_readings_scored_total counter",
            "onad_readings_scored_total{topic=\"in\\\"put\"} 5",
            "onad_assigned_partitions{topic=\"in\\\"put\"} 2",
            "onad_consumer_lag{topic=\"in\\\"put\",partition=\"3\"} 42",
            "onad_breakers{topic=\"in\\\"put\",partition=\"3\",state=\"open\"} 1",
            "onad_dead_letters_by_kind_total{topic=\"in\\\"put\",kind=\"decode\"} 1",
            "onad_anomalies_total{topic=\"in\\\"put\",severity=\"high\"} 1",
            "onad_reading_to_output_seconds_count{topic=\"in\\\"put\",partition=\"3\"} 1",
            "onad_ready 0",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
