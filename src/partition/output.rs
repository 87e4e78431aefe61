//! The one place that builds output records: `ScoredReading`, `AnomalyAlert` and `DeadLetter`
//! payloads, their keys and the headers that tie each back to its input record.
//!
//! Records are plain data here; `kafka::producer` only copies them onto the wire, to the same
//! partition number as the input record (design.md: outputs of input partition p go to
//! partition p of every output topic).

use std::io::Write as _;

use prost::Message;

use crate::detect::{Scored, Severity};
use crate::ops::validate::Rejection;
use crate::proto::{self, AnomalyAlert, DeadLetter, FeatureBand, FeatureContribution, SensorReading, SourcePosition};

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

    /// The headers every output of this record carries, formatted once per record without
    /// allocating (a record may have several outputs).
    pub fn headers(&self) -> SourceHeaders<'_> {
        let mut digits = [0u8; 48];
        let mut w = &mut digits[..];
        // i32, i64 and u32 in decimal take at most 11 + 20 + 10 bytes: the writes cannot
        // run out of room.
        let _ = write!(w, "{}", self.partition);
        let partition_end = 48 - w.len();
        let _ = write!(w, "{}", self.offset);
        let offset_end = 48 - w.len();
        let _ = write!(w, "{}", self.epoch);
        let epoch_end = 48 - w.len();
        SourceHeaders { topic: self.topic, digits, ends: [partition_end, offset_end, epoch_end] }
    }
}

/// The headers of one input record's outputs ([`Source::headers`]).
pub struct SourceHeaders<'a> {
    /// Input topic.
    topic: &'a str,
    /// Decimal partition, offset and epoch, back to back.
    digits: [u8; 48],
    /// Where the partition's, the offset's and the epoch's digits end in `digits`.
    ends: [usize; 3],
}

impl SourceHeaders<'_> {
    /// (header name, value) of each header.
    pub fn pairs(&self) -> [(&'static str, &[u8]); 4] {
        let [p, o, e] = self.ends;
        [
            (HEADER_SOURCE_TOPIC, self.topic.as_bytes()),
            (HEADER_SOURCE_PARTITION, &self.digits[..p]),
            (HEADER_SOURCE_OFFSET, &self.digits[p..o]),
            (HEADER_REPLAY_EPOCH, &self.digits[o..e]),
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
/// `cx.alert` says to raise one. Records come from `spare` when it has some (their buffers
/// are reused: see [`recycle`]).
pub fn scored(
    src: Source<'_>,
    reading: &SensorReading,
    s: &Scored,
    cx: &ScoreContext<'_>,
    out: &mut Vec<OutRecord>,
    spare: &mut Vec<OutRecord>,
) {
    let mut rec = spare.pop().unwrap_or_else(|| OutRecord { dest: Dest::Scores, key: Vec::new(), payload: Vec::new() });
    rec.dest = Dest::Scores;
    rec.key.clear();
    rec.key.extend_from_slice(reading.sensor_id.as_bytes());
    rec.payload.clear();
    wire::scored_reading(&mut rec.payload, src, reading, s, cx);
    out.push(rec);
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
            bands: feature_bands(reading, s, cx.features),
        };
        out.push(OutRecord { dest: Dest::Alerts, key: reading.sensor_id.as_bytes().to_vec(), payload: alert.encode_to_vec() });
    }
}

/// Most records kept for reuse, and the largest buffer kept: what one record's outputs need,
/// without holding on to an outlier's memory.
const SPARE_RECORDS: usize = 4;
/// See [`SPARE_RECORDS`].
const SPARE_BYTES: usize = 16 * 1024;

/// Move the produced records of `out` to `spare`, to build the next record's outputs in
/// their buffers (the hot path then allocates no key and no payload per record).
pub fn recycle(out: &mut Vec<OutRecord>, spare: &mut Vec<OutRecord>) {
    for r in out.drain(..) {
        if spare.len() < SPARE_RECORDS && r.payload.capacity() <= SPARE_BYTES && r.key.capacity() <= SPARE_BYTES {
            spare.push(r);
        }
    }
}

/// The `ScoredReading` written field by field, in prost's byte layout (proto3: default
/// values left out, fields in tag order), straight from the borrowed parts: building the
/// prost struct first would copy the sensor id, detector, topic and every band's feature
/// name into owned strings per reading. `scored_reading_bytes_match_prost` pins the layout.
mod wire {
    use prost::encoding::{encode_key, encode_varint, WireType};

    use super::{severity, ScoreContext, Source};
    use crate::detect::Scored;
    use crate::proto::SensorReading;

    fn string(tag: u32, v: &str, buf: &mut Vec<u8>) {
        if !v.is_empty() {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(v.len() as u64, buf);
            buf.extend_from_slice(v.as_bytes());
        }
    }

    fn double(tag: u32, v: f64, buf: &mut Vec<u8>) {
        // prost's test: -0.0 counts as the default too.
        if v != 0.0 {
            encode_key(tag, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// int64, uint64, int32 and enums (an int32 is sign-extended, as prost does).
    fn varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
        if v != 0 {
            encode_key(tag, WireType::Varint, buf);
            encode_varint(v, buf);
        }
    }

    /// A nested message: written in place, then its length inserted before it.
    fn message(tag: u32, buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
        encode_key(tag, WireType::LengthDelimited, buf);
        let start = buf.len();
        body(buf);
        let mut len = [0u8; 10];
        let mut w = &mut len[..];
        encode_varint((buf.len() - start) as u64, &mut w);
        let n = 10 - w.len();
        buf.splice(start..start, len[..n].iter().copied());
    }

    /// Append the `ScoredReading` of `reading` to `buf`.
    pub(super) fn scored_reading(buf: &mut Vec<u8>, src: Source<'_>, reading: &SensorReading, s: &Scored, cx: &ScoreContext<'_>) {
        let rate = if cx.processed == 0 { 0.0 } else { cx.anomalies as f64 / cx.processed as f64 };
        string(1, &reading.sensor_id, buf);
        varint(2, reading.timestamp_ms as u64, buf);
        double(3, s.score, buf);
        double(4, s.raw_score, buf);
        varint(5, u64::from(s.is_anomaly), buf);
        varint(6, severity(s.severity) as i32 as u64, buf);
        string(7, cx.detector, buf);
        varint(8, u64::from(cx.degraded.is_some()), buf);
        string(9, cx.degraded.unwrap_or_default(), buf);
        message(10, buf, |b| {
            string(1, src.topic, b);
            varint(2, src.partition as u64, b);
            varint(3, src.offset as u64, b);
        });
        varint(11, cx.now_ms as u64, buf);
        message(12, buf, |b| {
            varint(1, cx.processed, b);
            varint(2, cx.anomalies, b);
            double(3, rate, b);
        });
        for (band, feature) in s.bands.iter().zip(cx.features) {
            message(13, buf, |b| {
                string(1, feature, b);
                double(2, reading.values.get(feature).copied().unwrap_or(f64::NAN), b);
                double(3, band.expected, b);
                double(4, band.lower, b);
                double(5, band.upper, b);
                double(6, band.deviation, b);
            });
        }
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

/// The metrics label of the severity of the alert among `out` (alerts are rare: decoding one costs little).
pub fn alert_severity_label(out: &[OutRecord]) -> &'static str {
    use crate::proto::Severity;
    let alert = out.iter().find(|r| r.dest == Dest::Alerts);
    match alert.and_then(|r| <crate::proto::AnomalyAlert as prost::Message>::decode(&r.payload[..]).ok()).map(|a| a.severity()) {
        Some(Severity::Low) => "low",
        Some(Severity::Medium) => "medium",
        Some(Severity::High) => "high",
        Some(Severity::Critical) => "critical",
        Some(Severity::Unspecified) | None => "unspecified",
    }
}

/// The `kind` label of a dead letter.
pub fn dead_letter_kind_label(kind: crate::proto::ErrorKind) -> &'static str {
    use crate::proto::ErrorKind as K;
    match kind {
        K::Unspecified => "unspecified",
        K::Decode => "decode",
        K::Invalid => "invalid",
        K::SchemaMismatch => "schema_mismatch",
        K::RateLimited => "rate_limited",
        K::Processing => "processing",
        K::KeyMismatch => "key_mismatch",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::series::Band;
    use crate::proto::{PipelineCounters, ScoredReading};

    /// What `scored` wrote before its hand-written encoder: the prost struct, encoded.
    fn with_prost(src: Source<'_>, reading: &SensorReading, s: &Scored, cx: &ScoreContext<'_>) -> Vec<u8> {
        let rate = if cx.processed == 0 { 0.0 } else { cx.anomalies as f64 / cx.processed as f64 };
        ScoredReading {
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
            bands: feature_bands(reading, s, cx.features),
        }
        .encode_to_vec()
    }

    #[test]
    fn scored_reading_bytes_match_prost() {
        let features = vec!["a".to_string(), "b".repeat(200)];
        let reading = SensorReading {
            sensor_id: "s1".into(),
            timestamp_ms: -5,
            values: [("a".to_string(), 1.5), ("b".repeat(200), -0.0)].into(),
            ..Default::default()
        };
        let band = Band { expected: 1.0, lower: -0.0, upper: f64::NAN, deviation: -3.25 };
        let (mut out, mut spare) = (Vec::new(), Vec::new());
        for (i, (score, anomalous, bands, degraded, processed)) in [
            (0.0, false, vec![], None, 0),
            (0.97, true, vec![band, band], Some("breaker open"), 7),
            (-0.0, false, vec![band], None, u64::MAX),
            (f64::NAN, false, vec![], Some(""), 1),
        ]
        .into_iter()
        .enumerate()
        {
            let s = Scored {
                score,
                raw_score: score * 3.0,
                is_anomaly: anomalous,
                severity: if anomalous { Severity::Critical } else { Severity::Low },
                top_features: Vec::new(),
                bands,
            };
            let src = Source { topic: "in", partition: i as i32 * 300, offset: [0, 1, i64::MAX, -1][i], epoch: 2 };
            let cx = ScoreContext {
                detector: ["zscore", "", "knn", "x"][i],
                features: &features,
                processed,
                anomalies: processed / 2,
                now_ms: [0, 1_700_000_000_000, -1, 5][i],
                degraded,
                alert: false,
            };
            recycle(&mut out, &mut spare);
            scored(src, &reading, &s, &cx, &mut out, &mut spare);
            assert_eq!(out[0].payload, with_prost(src, &reading, &s, &cx), "case {i}");
            assert_eq!(out[0].key, b"s1");
        }
    }

    #[test]
    fn headers_name_the_source_record() {
        let src = Source { topic: "in", partition: -1, offset: i64::MAX, epoch: u32::MAX };
        let h = src.headers();
        let pairs: Vec<(&str, &[u8])> = h.pairs().into_iter().collect();
        assert_eq!(
            pairs,
            [
                (HEADER_SOURCE_TOPIC, &b"in"[..]),
                (HEADER_SOURCE_PARTITION, b"-1"),
                (HEADER_SOURCE_OFFSET, b"9223372036854775807"),
                (HEADER_REPLAY_EPOCH, b"4294967295")
            ]
        );
    }
}
