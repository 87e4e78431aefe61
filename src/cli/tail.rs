//! `onad-stream tail`: print a topic's records as JSON lines.
//!
//! Reads without a consumer group (partitions are assigned, nothing is committed), so tailing
//! never disturbs the workers' group. Without `--from-beginning` it starts at the end of each
//! partition; on brokers that report a stale end offset (the development broker, see
//! design.md) a few older records may show first.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use super::tools::{partition_count, stop_on_signal};
use super::ConfigArgs;
use crate::config::KafkaConfig;
use crate::proto::{AnomalyAlert, DeadLetter, ErrorKind, FeatureBand, ScoredReading, SensorReading, Severity};

/// Arguments of `onad-stream tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// `scores`, `alerts`, `dead-letters`, `input`, or a topic name.
    #[arg(long, env = "ONAD_TAIL_TOPIC", default_value = "alerts")]
    pub topic: String,
    /// Message type of the records, when `--topic` is a name the config does not know.
    #[arg(long = "type", env = "ONAD_TAIL_TYPE", value_enum)]
    pub kind: Option<RecordKind>,
    /// Start at the beginning of every partition (default: the end).
    #[arg(long, env = "ONAD_TAIL_FROM_BEGINNING")]
    pub from_beginning: bool,
    /// Stop after printing this many records; fewer by `--timeout-secs` is an error.
    #[arg(long, env = "ONAD_TAIL_COUNT")]
    pub count: Option<u64>,
    /// Stop after this many seconds in all.
    #[arg(long, env = "ONAD_TAIL_TIMEOUT_SECS")]
    pub timeout_secs: Option<f64>,
    /// Stop when no record arrived for this many seconds (e.g. to dump a topic and exit).
    #[arg(long, env = "ONAD_TAIL_IDLE_SECS")]
    pub idle_secs: Option<f64>,
    /// Wrap each record with its Kafka coordinates: `{"partition", "offset", "key", "value"}`.
    #[arg(long, env = "ONAD_TAIL_META")]
    pub meta: bool,
}

/// The message type of a topic's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecordKind {
    /// `SensorReading` (the input topic).
    Reading,
    /// `ScoredReading` (the scores topic).
    Scored,
    /// `AnomalyAlert` (the alerts topic).
    Alert,
    /// `DeadLetter` (the dead-letter topic).
    DeadLetter,
}

/// The topic name and record type `topic` means under `kafka`.
pub fn resolve_topic(kafka: &KafkaConfig, topic: &str, kind: Option<RecordKind>) -> anyhow::Result<(String, RecordKind)> {
    let known = [
        ("scores", &kafka.scores_topic, RecordKind::Scored),
        ("alerts", &kafka.alerts_topic, RecordKind::Alert),
        ("dead-letters", &kafka.dead_letter_topic, RecordKind::DeadLetter),
        ("input", &kafka.input_topic, RecordKind::Reading),
    ];
    for (alias, name, k) in known {
        if topic == alias || topic == name.as_str() {
            return Ok((name.clone(), kind.unwrap_or(k)));
        }
    }
    match kind {
        Some(k) => Ok((topic.to_string(), k)),
        None => anyhow::bail!(
            "topic `{topic}` is not one of the configured topics; say what it holds with --type reading|scored|alert|dead-letter"
        ),
    }
}

/// Decode `bytes` as `kind` and render it as JSON: enums by name, bytes as base64.
pub fn record_json(kind: RecordKind, bytes: &[u8]) -> Result<Value, prost::DecodeError> {
    Ok(match kind {
        RecordKind::Reading => to_value(&SensorReading::decode(bytes)?),
        RecordKind::Scored => {
            let m = ScoredReading::decode(bytes)?;
            let mut v = to_value(&m);
            v["severity"] = severity_name(m.severity);
            explain(&mut v, &m.bands);
            v
        }
        RecordKind::Alert => {
            let m = AnomalyAlert::decode(bytes)?;
            let mut v = to_value(&m);
            v["severity"] = severity_name(m.severity);
            explain(&mut v, &m.bands);
            v
        }
        RecordKind::DeadLetter => {
            let m = DeadLetter::decode(bytes)?;
            let mut v = to_value(&m);
            v["error_kind"] = match ErrorKind::try_from(m.error_kind) {
                Ok(k) => json!(k.as_str_name()),
                Err(_) => json!(m.error_kind),
            };
            v["original_key"] = json!(base64(&m.original_key));
            v["original_value"] = json!(base64(&m.original_value));
            v
        }
    })
}

/// Add `"explained"`: one readable line per feature band, e.g.
/// `"temp 98.3, expected 71.2 (band 66.0 to 76.4), 15.6 sigma above"`.
fn explain(v: &mut Value, bands: &[FeatureBand]) {
    if !bands.is_empty() {
        v["explained"] = json!(bands.iter().map(band_text).collect::<Vec<_>>());
    }
}

/// One feature band as text, to 4 significant digits.
pub fn band_text(b: &FeatureBand) -> String {
    let side = if b.deviation >= 0.0 { "above" } else { "below" };
    format!(
        "{} {}, expected {} (band {} to {}), {:.1} sigma {side}",
        b.feature,
        num(b.value),
        num(b.expected),
        num(b.lower),
        num(b.upper),
        b.deviation.abs()
    )
}

/// A number to 4 significant digits, without a trailing exponent for everyday magnitudes.
fn num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    format!("{v:.digits$}")
}

fn to_value<T: serde::Serialize>(m: &T) -> Value {
    // Serializing plain generated structs to a Value cannot fail (no non-string map keys).
    serde_json::to_value(m).unwrap_or(Value::Null)
}

fn severity_name(s: i32) -> Value {
    match Severity::try_from(s) {
        Ok(k) => json!(k.as_str_name()),
        Err(_) => json!(s),
    }
}

/// Standard base64 with padding (RFC 4648), for bytes in JSON.
pub fn base64(bytes: &[u8]) -> String {
    use ::base64::Engine as _;
    ::base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Run the subcommand.
pub fn main(args: TailArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    crate::telemetry::init(&config.telemetry);
    let (topic, kind) = resolve_topic(&config.kafka, &args.topic, args.kind)?;
    // A group id is required by librdkafka's consumer even when only assigning; nothing is
    // committed under it. One given in `[kafka.settings]` is kept (an ACL may demand it).
    let group = config.kafka.settings.get("group.id").cloned().unwrap_or_else(|| format!("onad-stream-tail-{}", std::process::id()));
    let consumer: BaseConsumer = crate::kafka::client::reader(&config.kafka, &group).create()?;
    let partitions = partition_count(&consumer, &topic)?;
    let start = if args.from_beginning { Offset::Beginning } else { Offset::End };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, start)?;
    }
    consumer.assign(&tpl)?;

    let stop = stop_on_signal();
    let started = Instant::now();
    let mut last_record = Instant::now();
    let mut printed = 0u64;
    let mut undecodable = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::LineWriter::new(stdout.lock());
    loop {
        if stop.load(Ordering::Relaxed) || args.count.is_some_and(|c| printed >= c) {
            break;
        }
        if args.timeout_secs.is_some_and(|t| started.elapsed().as_secs_f64() >= t) {
            break;
        }
        if args.idle_secs.is_some_and(|t| last_record.elapsed().as_secs_f64() >= t) {
            break;
        }
        let msg = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(e)) => {
                eprintln!("tail: {e}");
                continue;
            }
            Some(Ok(m)) => m,
        };
        last_record = Instant::now();
        let payload = msg.payload().unwrap_or_default();
        let value = match record_json(kind, payload) {
            Ok(v) => v,
            Err(e) => {
                undecodable += 1;
                json!({ "undecodable": e.to_string(), "bytes": base64(payload) })
            }
        };
        let line = if args.meta {
            let key = msg.key().map(|k| String::from_utf8(k.to_vec()).map_or_else(|e| json!(base64(e.as_bytes())), |s| json!(s)));
            json!({ "partition": msg.partition(), "offset": msg.offset(), "key": key, "value": value })
        } else {
            value
        };
        let written = serde_json::to_writer(&mut out, &line).map_err(std::io::Error::from).and_then(|()| out.write_all(b"\n"));
        match written {
            Ok(()) => printed += 1,
            // The reader went away (`tail ... | head`): a normal way to stop.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        r => r?,
    }
    if undecodable > 0 {
        eprintln!("tail: {undecodable} records of `{topic}` were not {kind:?} messages");
    }
    if let Some(c) = args.count {
        anyhow::ensure!(printed >= c, "tail: only {printed} of {c} records of `{topic}` arrived before the timeout");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn enums_print_by_name_and_bytes_as_base64() {
        let s = ScoredReading { sensor_id: "s".into(), severity: Severity::High as i32, ..Default::default() };
        let v = record_json(RecordKind::Scored, &s.encode_to_vec()).unwrap();
        assert_eq!(v["severity"], "SEVERITY_HIGH");
        assert_eq!(v["sensor_id"], "s");
        let d = DeadLetter { original_value: b"foo".to_vec(), error_kind: ErrorKind::Decode as i32, ..Default::default() };
        let v = record_json(RecordKind::DeadLetter, &d.encode_to_vec()).unwrap();
        assert_eq!(v["error_kind"], "ERROR_KIND_DECODE");
        assert_eq!(v["original_value"], "Zm9v");
    }

    #[test]
    fn alerts_with_bands_print_expected_values_readably() {
        let band = FeatureBand { feature: "temp".into(), value: 98.3, expected: 71.2, lower: 66.0, upper: 76.4, deviation: 15.62 };
        let a = AnomalyAlert { bands: vec![band.clone()], ..Default::default() };
        let v = record_json(RecordKind::Alert, &a.encode_to_vec()).unwrap();
        assert_eq!(v["explained"][0], "temp 98.30, expected 71.20 (band 66.00 to 76.40), 15.6 sigma above");
        assert_eq!(v["bands"][0]["expected"], 71.2);
        let low = FeatureBand { deviation: -4.0, value: 0.001234, ..band };
        assert!(band_text(&low).starts_with("temp 0.001234, ") && band_text(&low).ends_with("4.0 sigma below"), "{}", band_text(&low));
        let plain = record_json(RecordKind::Scored, &ScoredReading::default().encode_to_vec()).unwrap();
        assert!(plain.get("explained").is_none(), "no bands, no explanation");
    }

    #[test]
    fn aliases_resolve_to_configured_topics() {
        let k = KafkaConfig::default();
        assert_eq!(resolve_topic(&k, "scores", None).unwrap(), (k.scores_topic.clone(), RecordKind::Scored));
        assert_eq!(resolve_topic(&k, &k.alerts_topic, None).unwrap().1, RecordKind::Alert);
        assert!(resolve_topic(&k, "other", None).is_err());
        assert_eq!(resolve_topic(&k, "other", Some(RecordKind::DeadLetter)).unwrap().1, RecordKind::DeadLetter);
    }
}
