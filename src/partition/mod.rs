//! One input partition's work, as a pure state machine: decode -> validate -> route by key ->
//! score -> build outputs. No Kafka, RocksDB or threads here.
//!
//! [`Processor`] is the synchronous core (unit-testable); `kafka::task` runs it on its own
//! thread per assigned partition, produces its outputs and acknowledges offsets. [`output`]
//! builds every output record; [`resume`] decides where a partition resumes after assignment
//! and which of its records are answered already.
//!
//! State seam (issue 4): all of a partition's learned state is [`Models`], plain serde data
//! with the last input offset applied to it. [`StateHooks`] is called on assignment (restore),
//! after each batch (snapshot when due) and on revocation (final snapshot); the layers above
//! implement it (`kafka::recovery`), so this one imports none of them.

mod breakers;
mod buffers;
mod changed;
pub mod decode;
pub mod output;
pub mod replay_plan;
pub mod resident;
pub mod resume;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ValidationConfig};
use crate::detect::{Pipeline, PipelineFactory, Scored, Severity};
use crate::ops::breaker::{BreakerParams, BreakerState};
use crate::ops::fallback::{self, Guard, Resilience, Verdict};
use crate::ops::heap;
use crate::ops::memory::MemoryBudget;
use crate::ops::ratelimit::SourceLimiter;
use crate::ops::validate::{self, Rejection};
use crate::proto::ErrorKind;
use crate::telemetry::stats::PartitionStats;
pub use changed::{Changed, ChangedKeys, CHANGED_KEY_BYTES};
pub use resident::{ColdStore, Resident};

pub use crate::error::StateFailure;
pub use output::{Dest, OutRecord, Source};
pub use resume::{EmittedUpTo, Resume};

/// One sensor's pipeline and what it was fixed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyPipeline {
    /// Feature names, sorted, fixed by the sensor's first reading: the order of the dense
    /// vector the pipeline sees.
    pub features: Vec<String>,
    /// The sensor's model.
    pub pipeline: Pipeline,
    /// Readings scored so far.
    pub processed: u64,
    /// Readings flagged as anomalies so far.
    pub anomalies: u64,
    /// The sensor's circuit breaker and warm fallback pipeline.
    #[serde(default)]
    pub guard: Guard,
    /// Event time (reading timestamp, ms) of the sensor's last `AnomalyAlert`, for
    /// `alerts.cooldown`; `None` before the first.
    #[serde(default)]
    pub last_alert_ms: Option<i64>,
}

impl KeyPipeline {
    /// A sensor's fresh entry: its features and main pipeline, nothing counted yet.
    pub fn new(features: Vec<String>, pipeline: Pipeline) -> Self {
        Self { features, pipeline, processed: 0, anomalies: 0, guard: Guard::default(), last_alert_ms: None }
    }
}

/// Everything a partition has learned: the unit of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Models {
    /// Sensor id -> its pipeline. A BTreeMap so that serialized bytes are deterministic.
    pub keys: BTreeMap<String, KeyPipeline>,
    /// The last input offset applied (scored or dead-lettered); `None` before the first.
    pub last_offset: Option<i64>,
    /// Replay epoch: 0, raised by each `onad-stream replay --state keep|reset` of the
    /// partition. Every output carries it, so that outputs of a replay (new scores for
    /// offsets already answered) are told apart from the original ones.
    #[serde(default)]
    pub epoch: u32,
    /// The keys changed since the last snapshot was encoded (bookkeeping for incremental
    /// snapshots, not state: never serialized, ignored by equality).
    #[serde(skip)]
    pub changed: Changed,
}

/// What happened to one input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Scored; `anomaly` says whether an alert was emitted too (an anomaly within the
    /// sensor's `alerts.cooldown` is scored `is_anomaly = true` but emits none).
    Scored {
        /// An alert was emitted.
        anomaly: bool,
    },
    /// Sent to dead letters.
    DeadLetter(ErrorKind),
}

/// One input record, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
    /// Record offset.
    pub offset: i64,
}

/// Settings a processor needs, shared by every partition of a worker.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Builds a pipeline for a new sensor.
    pub factory: PipelineFactory,
    /// Validation limits.
    pub limits: ValidationConfig,
    /// How input records are encoded (`kafka.input_format`).
    pub input_format: decode::InputFormat,
    /// Run the pipelines. `false` (only through `Worker::without_scoring`) emits every
    /// valid reading with score 0 and detector "none": it measures the worker without the
    /// detector's cost and is never a production setting.
    pub scoring: bool,
    /// Circuit breaker settings and the fallback detector.
    pub resilience: Resilience,
    /// `alerts.cooldown` in ms of event time (0: an alert per anomalous reading).
    pub alert_cooldown_ms: i64,
    /// The worker's memory budget (`memory_limit_mb`), shared by its partitions.
    pub budget: Arc<MemoryBudget>,
}

impl ProcessorConfig {
    /// The settings of a checked `config`; `scoring` as [`ProcessorConfig::scoring`].
    pub fn new(config: &Config, scoring: bool) -> Self {
        let r = &config.resilience;
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            factory: config.pipeline.clone(),
            limits: config.validation.clone(),
            input_format: config.kafka.input_format,
            scoring,
            resilience: Resilience {
                breaker: BreakerParams { window: r.error_window, threshold: r.error_threshold, open_timeout_ms: ms(config.open_timeout) },
                fallback: config.fallback.clone(),
            },
            alert_cooldown_ms: ms(config.alert_cooldown),
            budget: Arc::new(MemoryBudget::from_mb(config.memory_limit_mb)),
        }
    }
}

/// The synchronous per-partition core.
pub struct Processor {
    /// Input topic (for source positions and alert ids).
    topic: Arc<str>,
    /// Input partition.
    partition: i32,
    /// Shared settings.
    config: Arc<ProcessorConfig>,
    /// Learned state.
    models: Models,
    /// Reused from one record to the next.
    buf: buffers::Buffers,
    /// Sensors of `models` whose breaker is open now, and since when (kept as breakers
    /// change, for stats).
    breakers: breakers::OpenBreakers,
    /// Readings scored by a fallback by this processor (degraded).
    degraded: u64,
    /// Which pipelines are in memory, under the budget.
    resident: Resident,
    /// Token buckets per reading `source` (`validation.rate_limit`), timed by the readings.
    limiter: SourceLimiter,
    /// The security event of the last record processed, if it was one.
    last_security: Option<validate::SecurityEvent>,
}

impl Processor {
    /// A processor for `topic`/`partition` starting from `models`, without a cold store
    /// (nothing is evicted).
    pub fn new(topic: Arc<str>, partition: i32, config: Arc<ProcessorConfig>, models: Models) -> Self {
        Self::with_cold(topic, partition, config, models, None, Arc::default())
    }

    /// As [`Processor::new`], evicting least-recently-used pipelines to `cold` while the
    /// worker is over its memory budget, reporting to `stats`.
    pub fn with_cold(
        topic: Arc<str>,
        partition: i32,
        config: Arc<ProcessorConfig>,
        models: Models,
        cold: Option<Box<dyn ColdStore>>,
        stats: Arc<PartitionStats>,
    ) -> Self {
        let mut resident = Resident::new(config.budget.clone(), cold, stats);
        for (k, kp) in &models.keys {
            resident.insert(k, kp, None);
        }
        resident.publish();
        let breakers = breakers::OpenBreakers::from_breakers(models.keys.iter().map(|(k, kp)| (k, &kp.guard.breaker)));
        let limiter = SourceLimiter::new(&config.limits.rate_limit);
        Self { topic, partition, config, models, buf: Default::default(), resident, breakers, degraded: 0, limiter, last_security: None }
    }

    /// Keep the worker's memory budget: evict this partition's least-recently-used
    /// pipelines while the worker is over it (call between batches). Returns how many were
    /// evicted; `Ok(0)` also when over budget with nothing to evict to (see
    /// [`Processor::over_budget_without_store`]).
    pub fn keep_budget(&mut self) -> Result<usize, StateFailure> {
        let changed = self.models.changed.bytes();
        self.resident.keep_budget(&mut self.models.keys, changed)
    }

    /// Whether the worker went over budget and this partition has no store to evict to
    /// (reported once per occurrence).
    pub fn over_budget_without_store(&mut self) -> bool {
        self.resident.take_warning()
    }

    /// The LRU bookkeeping (tests and telemetry).
    pub fn resident(&self) -> &Resident {
        &self.resident
    }

    /// Sensors whose circuit breaker is open now (half-open ones included).
    pub fn breakers_open(&self) -> u64 {
        self.breakers.open()
    }

    /// Sensors whose circuit breaker is half-open: open, with its timeout passed on the
    /// partition's event-time clock (the latest reading scored), so that the sensor's next
    /// reading is the trial.
    pub fn breakers_half_open(&self) -> u64 {
        self.breakers.half_open(&self.config.resilience.breaker)
    }

    /// Readings this processor scored with a fallback detector (`degraded = true`).
    pub fn degraded(&self) -> u64 {
        self.degraded
    }

    /// The learned state.
    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Give up the learned state.
    pub fn into_models(self) -> Models {
        self.models
    }

    /// Input partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The security event the last processed record counted as (a dead letter whose cause
    /// points at a hostile or broken producer), if any.
    pub fn last_security_event(&self) -> Option<validate::SecurityEvent> {
        self.last_security
    }

    /// Empty `out`, keeping its records' buffers for the next outputs (instead of `clear`).
    pub fn recycle(&mut self, out: &mut Vec<OutRecord>) {
        output::recycle(out, &mut self.buf.spare);
    }

    /// Process one record, appending its outputs to `out`. Every record yields either one
    /// `ScoredReading` (plus an `AnomalyAlert` when anomalous) or one `DeadLetter`.
    pub fn process(&mut self, rec: InputRecord<'_>, now_ms: i64, out: &mut Vec<OutRecord>) -> Outcome {
        let topic = self.topic.clone();
        let src = Source { topic: &topic, partition: self.partition, offset: rec.offset, epoch: self.models.epoch };
        self.models.last_offset = Some(rec.offset);
        self.last_security = None;
        match self.score(src, rec, now_ms, out) {
            Ok(anomaly) => Outcome::Scored { anomaly },
            Err(why) => {
                self.last_security = why.security;
                output::dead_letter(src, rec.key, rec.value, &why, now_ms, out);
                Outcome::DeadLetter(why.kind)
            }
        }
    }

    fn score(&mut self, src: Source<'_>, rec: InputRecord<'_>, now_ms: i64, out: &mut Vec<OutRecord>) -> Result<bool, Rejection> {
        let bytes = rec.value.ok_or_else(|| Rejection::new(ErrorKind::Decode, "record has no value"))?;
        validate::check_record_size(bytes.len(), &self.config.limits)?;
        // Into the last valid reading (given back below): its strings and feature map are reused.
        let mut reading = std::mem::take(&mut self.buf.reading);
        decode::decode_into(bytes, self.config.input_format, &mut reading, &mut self.buf.entries)?;
        validate::check_reading(&reading, rec.key, &self.config.limits)?;
        validate::check_timestamp(&reading, now_ms, &self.config.limits)?;
        // After validation: only readings that would be scored spend tokens, and the
        // timestamp that times the bucket has passed the timestamp check.
        self.limiter.check(&reading.source, reading.timestamp_ms)?;
        if !self.models.keys.contains_key(&reading.sensor_id) {
            // Evicted earlier: load it back, so that it continues exactly.
            let reloaded = self
                .resident
                .reload(&reading.sensor_id)
                .map_err(|e| Rejection::new(ErrorKind::Processing, format!("this sensor's evicted model cannot be loaded: {e}")))?;
            if let Some(kp) = reloaded {
                self.models.keys.insert(reading.sensor_id.clone(), kp);
            }
        }
        let kp = match self.models.keys.get_mut(&reading.sensor_id) {
            Some(kp) => {
                let same = kp.features.len() == reading.values.len() && kp.features.iter().zip(reading.values.keys()).all(|(a, b)| a == b);
                if !same {
                    return Err(Rejection::new(
                        ErrorKind::SchemaMismatch,
                        format!(
                            "features {:?} differ from {:?}, fixed by this sensor's first reading",
                            reading.values.keys().collect::<Vec<_>>(),
                            kp.features
                        ),
                    ));
                }
                kp
            }
            None => {
                let h0 = heap::net();
                let features: Vec<String> = reading.values.keys().cloned().collect();
                let pipeline = self.config.factory.build(features.len(), &reading.sensor_id);
                let kp = KeyPipeline::new(features, pipeline);
                self.resident.insert(&reading.sensor_id, &kp, Some(heap::net() - h0));
                self.models.keys.entry(reading.sensor_id.clone()).or_insert(kp)
            }
        };
        // `values` is a BTreeMap: its iteration order is the sorted feature order.
        self.buf.x.clear();
        self.buf.x.extend(reading.values.values().copied());
        let h0 = heap::net();
        let mut degraded = None;
        let s = if self.config.scoring {
            let main =
                fallback::Main { factory: &self.config.factory, name: self.config.factory.detector_name(), pipeline: &mut kp.pipeline };
            let was_open = kp.guard.breaker.state() == BreakerState::Open;
            let g = fallback::score(&self.config.resilience, main, &mut kp.guard, &reading.sensor_id, &self.buf.x, reading.timestamp_ms);
            self.breakers.observe(&reading.sensor_id, was_open, &kp.guard.breaker, reading.timestamp_ms);
            match g.verdict {
                Verdict::Main(s) => s,
                Verdict::Degraded(s, why) => {
                    self.degraded += 1;
                    degraded = Some(why);
                    s
                }
                Verdict::Failed(why) => {
                    // The reading is not counted by the sensor's pipeline: nobody scored it.
                    // Its breaker (and maybe its main model) changed all the same.
                    self.resident.touch(&reading.sensor_id, kp, heap::net() - h0);
                    self.models.changed.mark(&reading.sensor_id);
                    return Err(Rejection::new(ErrorKind::Processing, why));
                }
            }
        } else {
            Scored { score: 0.0, raw_score: 0.0, is_anomaly: false, severity: Severity::Low, top_features: Vec::new(), bands: Vec::new() }
        };
        kp.processed += 1;
        kp.anomalies += u64::from(s.is_anomaly);
        self.resident.touch(&reading.sensor_id, kp, heap::net() - h0);
        self.models.changed.mark(&reading.sensor_id);
        let alert = s.is_anomaly && cooled_down(&mut kp.last_alert_ms, reading.timestamp_ms, self.config.alert_cooldown_ms);
        let detector = match (&degraded, &self.config.resilience.fallback) {
            _ if !self.config.scoring => "none",
            (Some(_), Some(f)) => f.detector_name(),
            _ => self.config.factory.detector_name(),
        };
        let cx = output::ScoreContext {
            detector,
            features: &kp.features,
            processed: kp.processed,
            anomalies: kp.anomalies,
            now_ms,
            degraded: degraded.as_deref(),
            alert,
        };
        output::scored(src, &reading, &s, &cx, out, &mut self.buf.spare);
        self.buf.reading = reading;
        Ok(alert)
    }
}

/// Whether an anomalous reading at `ts_ms` raises an alert under a per-sensor cooldown of
/// `cooldown_ms` (event time) after the alert at `last`; records it in `last` when it does.
/// A reading within the cooldown of the last alert, before or after it (a late reading),
/// raises none; the cooldown runs from the last alert *raised*, so a lasting anomaly raises
/// one alert per cooldown.
fn cooled_down(last: &mut Option<i64>, ts_ms: i64, cooldown_ms: i64) -> bool {
    let due = match *last {
        Some(t) if cooldown_ms > 0 => ts_ms.abs_diff(t) >= cooldown_ms.unsigned_abs(),
        _ => true,
    };
    if due {
        *last = Some(last.map_or(ts_ms, |t| t.max(ts_ms)));
    }
    due
}

/// Where a partition's state comes from and goes to (implemented by the state store, issue 4).
/// Every method has a default, which is the behaviour without a state store: models live in
/// memory and are kept across a revoke/assign of the same partition when still contiguous.
pub trait StateHooks: Send + Sync {
    /// Called in the assign callback, before the partition is fetched. `parked` is the
    /// state this worker held when it last owned the partition, already checked to end right
    /// before `committed` (the group's committed offset: the next record to read), so it
    /// continues exactly. Runs inside the assign callback, on a thread of its own per
    /// partition (the partitions assigned together are restored side by side).
    fn on_assign(&self, _topic: &str, _partition: i32, parked: Option<Models>, _committed: Option<i64>) -> Resume {
        Resume { models: parked.unwrap_or_default(), start_at: None, emit_from: None, emitted: EmittedUpTo::default() }
    }
    /// Called on the partition's thread after each batch (and every poll round while idle),
    /// with the state and the highest
    /// input offset whose outputs are all delivered and stored for commit (if any). An error
    /// pauses the partition (no more records taken, so offsets stop advancing past state
    /// that cannot be saved) and reports unhealthy; the call is retried with backoff, with
    /// the same models, until it succeeds.
    fn after_batch(&self, _topic: &str, _partition: i32, _models: &Models, _delivered: Option<i64>) -> Result<(), StateFailure> {
        Ok(())
    }
    /// Called on the partition's thread when it is revoked or the worker stops, after every
    /// output is delivered and its offset stored, before the offsets are committed.
    fn on_revoke(&self, _topic: &str, _partition: i32, _models: &Models) {}
    /// Where the partition's processor evicts pipelines to keep the memory budget (called
    /// after [`StateHooks::on_assign`], on the partition's thread). `None`: nothing is
    /// evicted.
    fn cold_store(&self, _topic: &str, _partition: i32) -> Option<Box<dyn ColdStore>> {
        None
    }
}

/// The default: state lives in memory only.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoState;

impl StateHooks for NoState {}

/// Wall clock in ms since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod resilience_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::proto::{AnomalyAlert, DeadLetter, ScoredReading, SensorReading};
    use prost::Message;

    fn processor() -> Processor {
        let c = Config::load_from(None, &[], &[]).unwrap();
        let pc = ProcessorConfig::new(&c, true);
        Processor::new("in".into(), 3, Arc::new(pc), Models::default())
    }

    fn reading(id: &str, values: &[(&str, f64)]) -> Vec<u8> {
        SensorReading {
            sensor_id: id.into(),
            timestamp_ms: 1,
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn run(p: &mut Processor, key: &[u8], value: &[u8], offset: i64) -> (Outcome, Vec<OutRecord>) {
        let mut out = Vec::new();
        let o = p.process(InputRecord { key: Some(key), value: Some(value), offset }, 0, &mut out);
        (o, out)
    }

    #[test]
    fn valid_reading_yields_one_scored_reading_with_source() {
        let mut p = processor();
        let (o, out) = run(&mut p, b"s1", &reading("s1", &[("b", 2.0), ("a", 1.0)]), 17);
        assert_eq!(o, Outcome::Scored { anomaly: false });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].dest, Dest::Scores);
        assert_eq!(out[0].key, b"s1");
        let s = ScoredReading::decode(&out[0].payload[..]).unwrap();
        let src = s.source.unwrap();
        assert_eq!((src.topic.as_str(), src.partition, src.offset), ("in", 3, 17));
        assert_eq!(s.counters.unwrap().processed, 1);
        assert_eq!(p.models().keys["s1"].features, vec!["a", "b"]);
        assert_eq!(p.models().last_offset, Some(17));
    }

    #[test]
    fn garbage_goes_to_dead_letters_with_original_bytes() {
        let mut p = processor();
        let (o, out) = run(&mut p, b"k", b"\xff\xff\xff", 5);
        assert_eq!(o, Outcome::DeadLetter(ErrorKind::Decode));
        let d = DeadLetter::decode(&out[0].payload[..]).unwrap();
        assert_eq!(d.original_value, b"\xff\xff\xff");
        assert_eq!(d.original_key, b"k");
        assert_eq!(d.source.unwrap().offset, 5);
        assert_eq!(p.models().last_offset, Some(5));
    }

    #[test]
    fn a_changed_feature_set_is_a_schema_mismatch() {
        let mut p = processor();
        run(&mut p, b"s1", &reading("s1", &[("a", 1.0)]), 0);
        let (o, out) = run(&mut p, b"s1", &reading("s1", &[("a", 1.0), ("b", 1.0)]), 1);
        assert_eq!(o, Outcome::DeadLetter(ErrorKind::SchemaMismatch));
        assert!(DeadLetter::decode(&out[0].payload[..]).unwrap().error_message.contains("first reading"));
        assert_eq!(p.models().keys["s1"].processed, 1);
    }

    #[test]
    fn a_spike_after_a_steady_stream_is_an_alert_with_named_features() {
        let mut p = processor();
        let mut alert = None;
        for i in 0..400 {
            let wobble = (i % 7) as f64 * 0.01;
            let v = if i == 399 { 50.0 } else { 1.0 + wobble };
            let (_, out) = run(&mut p, b"s1", &reading("s1", &[("temp", v), ("rpm", 3.0 + wobble)]), i);
            if i == 399 {
                alert = out.into_iter().find(|r| r.dest == Dest::Alerts);
            }
        }
        let a = AnomalyAlert::decode(&alert.expect("the spike raised no alert").payload[..]).unwrap();
        assert_eq!(a.alert_id, "in/3/399");
        assert_eq!(a.top_features[0].feature, "temp");
    }
}
