//! The one place that builds output records: `ScoredReading`, `AnomalyAlert` and `DeadLetter`
//! payloads, their keys and the headers that tie each back to its input record.
//!
//! Records are plain data here; `kafka::producer` only copies them onto the wire, to the same
//! partition number as the input record (design.md: outputs of input partition p go to
//! partition p of every output topic).

use prost::Message;

use crate::detect::{Scored, Severity};
use crate::ops::validate::Rejection;
use crate::proto::{
    self, AnomalyAlert, DeadLetter, FeatureBand, FeatureContribution, PipelineCounters, ScoredReading, SensorReading, SourcePosition,
};

/// Header carrying the input topic of the record an output answers.
pub const HEADER_SOURCE_TOPIC: &str = "onad-source-topic";
/// Header carrying the input partition (decimal ASCII).
pub const HEADER_SOURCE_PARTITION: &str = "onad-source-partition";
/// Header carrying the input offset (decimal ASCII): downstream de-duplication key.
pub const HEADER_SOURCE_OFFSET: &str = "onad-source-offset";
/// Header carrying the partition's replay epoch (decimal ASCII; see `Models::epoch`).
pub const HEADER_REPLAY_EPOCH: &str = "onad-replay-epoch";

/// Which output topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// `kafka.scores_topic`.
    Scores,
    /// `kafka.alerts_topic`.
    Alerts,
    /// `kafka.dead_letter_topic`.
    DeadLetters,
}

/// One output record, ready to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    /// Destination topic.
    pub dest: Dest,
    /// Record key (the sensor id; the original key for dead letters).
    pub key: Vec<u8>,
    /// Encoded protobuf payload.
    pub payload: Vec<u8>,
}

/// Where an input record came from; every output of it carries this.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Input topic.
    pub topic: &'a str,
    /// Input partition (also the output partition).
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// The partition's replay epoch.
    pub epoch: u32,
}

impl Source<'_> {
    fn position(&self) -> SourcePosition {
        SourcePosition { topic: self.topic.to_string(), partition: self.partition, offset: self.offset }
    }

    /// The `alert_id` of an alert for this record: `<topic>/<partition>/<offset>`, so that a
    /// re-delivered alert is recognisable; after a replay, `/r<epoch>` is appended, since
    /// the replay's alert is a new one.
    pub fn alert_id(&self) -> String {
        match self.epoch {
            0 => format!("{}/{}/{}", self.topic, self.partition, self.offset),
            e => format!("{}/{}/{}/r{e}", self.topic, self.partition, self.offset),
        }
    }

    /// The headers every output of this record carries.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            (HEADER_SOURCE_TOPIC, self.topic.to_string()),
            (HEADER_SOURCE_PARTITION, self.partition.to_string()),
            (HEADER_SOURCE_OFFSET, self.offset.to_string()),
            (HEADER_REPLAY_EPOCH, self.epoch.to_string()),
        ]
    }
}

/// Wire form of a severity band.
pub fn severity(s: Severity) -> proto::Severity {
    match s {
        Severity::Low => proto::Severity::Low,
        Severity::Medium => proto::Severity::Medium,
        Severity::High => proto::Severity::High,
        Severity::Critical => proto::Severity::Critical,
    }
}

/// What the scores record needs besides the reading and the score.
pub struct ScoreContext<'a> {
    /// Detector name.
    pub detector: &'a str,
    /// Feature names of the sensor's pipeline, in its fixed order.
    pub features: &'a [String],
    /// The pipeline's counters after this reading.
    pub processed: u64,
    /// Anomalies so far, including this reading.
    pub anomalies: u64,
    /// Wall clock, ms since epoch.
    pub now_ms: i64,
    /// Why a fallback scored the reading (`degraded = true`); `None` for the main detector.
    pub degraded: Option<&'a str>,
    /// Emit the `AnomalyAlert` of an anomalous reading (false within the sensor's alert
    /// cooldown: the `ScoredReading` still says `is_anomaly`).
    pub alert: bool,
}

/// The `ScoredReading` of a valid reading, and its `AnomalyAlert` when it is an anomaly and
/// `cx.alert` says to raise one.
pub fn scored(src: Source<'_>, reading: &SensorReading, s: &Scored, cx: &ScoreContext<'_>, out: &mut Vec<OutRecord>) {
    let key = reading.sensor_id.as_bytes().to_vec();
    let rate = if cx.processed == 0 { 0.0 } else { cx.anomalies as f64 / cx.processed as f64 };
    let bands = feature_bands(reading, s, cx.features);
    let scored = ScoredReading {
        sensor_id: reading.sensor_id.clone(),
        timestamp_ms: reading.timestamp_ms,
        score: s.score,
        raw_score: s.raw_score,
        is_anomaly: s.is_anomaly,
        severity: severity(s.severity) as i32,
        detector: cx.detector.to_string(),
        degraded: cx.degraded.is_some(),
        degraded_reason: cx.degraded.unwrap_or_default().to_string(),
        source: Some(src.position()),
        processed_at_ms: cx.now_ms,
        counters: Some(PipelineCounters { processed: cx.processed, anomalies: cx.anomalies, anomaly_rate: rate }),
        bands: bands.clone(),
    };
    out.push(OutRecord { dest: Dest::Scores, key: key.clone(), payload: scored.encode_to_vec() });
    if s.is_anomaly && cx.alert {
        let top_features = s
            .top_features
            .iter()
            .filter_map(|(i, w)| cx.features.get(*i).map(|f| FeatureContribution { feature: f.clone(), weight: *w }))
            .collect();
        let alert = AnomalyAlert {
            alert_id: src.alert_id(),
            reading: Some(reading.clone()),
            score: s.score,
            raw_score: s.raw_score,
            severity: severity(s.severity) as i32,
            detector: cx.detector.to_string(),
            top_features,
            source: Some(src.position()),
            degraded: cx.degraded.is_some(),
            detected_at_ms: cx.now_ms,
            bands,
        };
        out.push(OutRecord { dest: Dest::Alerts, key, payload: alert.encode_to_vec() });
    }
}

/// The wire form of the score's bands, named by the pipeline's features (values from the
/// reading); empty when the detector has none.
fn feature_bands(reading: &SensorReading, s: &Scored, features: &[String]) -> Vec<FeatureBand> {
    s.bands
        .iter()
        .zip(features)
        .map(|(b, f)| FeatureBand {
            feature: f.clone(),
            value: reading.values.get(f).copied().unwrap_or(f64::NAN),
            expected: b.expected,
            lower: b.lower,
            upper: b.upper,
            deviation: b.deviation,
        })
        .collect()
}

/// The `DeadLetter` of a record that could not be processed: original key and bytes kept.
pub fn dead_letter(src: Source<'_>, key: Option<&[u8]>, value: Option<&[u8]>, why: &Rejection, now_ms: i64, out: &mut Vec<OutRecord>) {
    let key = key.unwrap_or_default().to_vec();
    let dl = DeadLetter {
        original_key: key.clone(),
        original_value: value.unwrap_or_default().to_vec(),
        source: Some(src.position()),
        error_kind: why.kind as i32,
        error_message: why.message.clone(),
        failed_at_ms: now_ms,
    };
    out.push(OutRecord { dest: Dest::DeadLetters, key, payload: dl.encode_to_vec() });
}

/// The `OpsAlert` record of an operational alert (key, payload), for
/// `monitoring.ops_alerts_topic`; key = the rule name, so one rule's alerts stay in order.
pub fn ops_alert(a: &crate::telemetry::monitor::OpsAlert) -> (Vec<u8>, Vec<u8>) {
    use crate::telemetry::rules::Severity as S;
    let f = &a.firing;
    let severity = match f.severity {
        S::Warning => proto::OpsSeverity::Warning,
        S::Critical => proto::OpsSeverity::Critical,
    };
    let msg = proto::OpsAlert {
        name: f.name.to_string(),
        severity: severity as i32,
        value: f.value,
        threshold: f.threshold,
        message: f.message.clone(),
        instance: a.instance.clone(),
        group_id: a.group_id.clone(),
        fired_at_ms: a.fired_at_ms,
    };
    (f.name.as_bytes().to_vec(), msg.encode_to_vec())
}
