//! Validation of decoded readings, before they reach a pipeline.
//!
//! Every rule here protects a pipeline from input it cannot learn from (a NaN poisons running
//! means forever) or protects the worker (a 5,000-feature reading costs memory per sensor).
//! A reading that fails goes to the dead-letter topic with the reason; nothing is dropped.

use crate::config::ValidationConfig;
use crate::proto::{ErrorKind, SensorReading};
pub use crate::telemetry::stats::SecurityEvent;

/// Characters a sensor id and a feature name may hold besides ASCII letters and digits (and,
/// with `validation.allow_unicode`, Unicode letters and digits). Whitespace, control and
/// format characters (zero-width, bidi overrides) never: they make look-alike ids that
/// split one sensor's history or hide in dashboards and logs.
pub const NAME_PUNCTUATION: &[char] = &['_', '-', '.', ':', '/', '@'];

/// Why a record was rejected: the dead letter's kind and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    /// Category, as written to the dead letter.
    pub kind: ErrorKind,
    /// Human-readable reason naming the offending field.
    pub message: String,
    /// The security event it counts as, if any (`onad_security_events_total`).
    pub security: Option<SecurityEvent>,
}

impl Rejection {
    /// A rejection of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), security: None }
    }

    /// The same rejection, counted as `event`.
    pub fn security(mut self, event: SecurityEvent) -> Self {
        self.security = Some(event);
        self
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
}

/// Reject a raw record before decoding: too large to be a sane reading.
pub fn check_record_size(len: usize, limits: &ValidationConfig) -> Result<(), Rejection> {
    if len > limits.max_record_bytes {
        return Err(Rejection::invalid(format!("record is {len} bytes, above validation.max_record_bytes = {}", limits.max_record_bytes))
            .security(SecurityEvent::Oversized));
    }
    Ok(())
}

/// The first character of `name` outside the allowed set, if any.
fn bad_char(name: &str, allow_unicode: bool) -> Option<char> {
    name.chars().find(|&c| !(c.is_ascii_alphanumeric() || NAME_PUNCTUATION.contains(&c) || (allow_unicode && c.is_alphanumeric())))
}

/// Check the reading's timestamp against the worker's clock `now_ms`: at most
/// `validation.max_future_ms` ahead and `max_past_ms` behind (0 = no bound). The wall clock
/// is the only reference a reading cannot forge; a replay long after the fact compares with
/// the later clock, so `max_past_ms` must cover the longest replay (or stay 0).
pub fn check_timestamp(reading: &SensorReading, now_ms: i64, limits: &ValidationConfig) -> Result<(), Rejection> {
    let ts = reading.timestamp_ms;
    let ahead = ts.saturating_sub(now_ms);
    if limits.max_future_ms > 0 && ahead > limits.max_future_ms {
        return Err(Rejection::invalid(format!(
            "timestamp_ms {ts} is {ahead} ms ahead of the worker's clock, above validation.max_future_ms = {}",
            limits.max_future_ms
        ))
        .security(SecurityEvent::Timestamp));
    }
    let behind = now_ms.saturating_sub(ts);
    if limits.max_past_ms > 0 && behind > limits.max_past_ms {
        return Err(Rejection::invalid(format!(
            "timestamp_ms {ts} is {behind} ms behind the worker's clock, above validation.max_past_ms = {}",
            limits.max_past_ms
        ))
        .security(SecurityEvent::Timestamp));
    }
    Ok(())
}

/// Check a decoded reading against the limits and against its record key.
///
/// `key` is the Kafka record key: it must equal the sensor id, because the key decides the
/// partition and so which worker owns the sensor's model.
pub fn check_reading(reading: &SensorReading, key: Option<&[u8]>, limits: &ValidationConfig) -> Result<(), Rejection> {
    let id = reading.sensor_id.as_str();
    if id.is_empty() {
        return Err(Rejection::invalid("sensor_id is empty"));
    }
    if id.len() > limits.max_sensor_id_bytes {
        return Err(Rejection::invalid(format!(
            "sensor_id is {} bytes, above validation.max_sensor_id_bytes = {}",
            id.len(),
            limits.max_sensor_id_bytes
        ))
        .security(SecurityEvent::Oversized));
    }
    if let Some(c) = bad_char(id, limits.allow_unicode) {
        return Err(Rejection::invalid(format!(
            "sensor_id {id:?} holds {c:?}, outside the allowed characters (see validation.allow_unicode)"
        ))
        .security(SecurityEvent::SensorId));
    }
    if key != Some(id.as_bytes()) {
        let shown = match key {
            None => "no key".to_string(),
            Some(k) => format!("key {:?}", String::from_utf8_lossy(k)),
        };
        return Err(Rejection::new(
            ErrorKind::KeyMismatch,
            format!("record has {shown} but sensor_id {id:?}; the key must be the sensor id"),
        ));
    }
    if reading.values.is_empty() {
        return Err(Rejection::invalid("values is empty: a reading needs at least one feature"));
    }
    if reading.values.len() > limits.max_features {
        return Err(Rejection::invalid(format!(
            "values has {} features, above validation.max_features = {}",
            reading.values.len(),
            limits.max_features
        ))
        .security(SecurityEvent::Oversized));
    }
    for (name, &v) in &reading.values {
        if name.is_empty() {
            return Err(Rejection::invalid(format!("feature name {name:?} is empty")).security(SecurityEvent::FeatureName));
        }
        if name.len() > limits.max_feature_name_bytes {
            let shown: String = name.chars().take(32).collect();
            return Err(Rejection::invalid(format!(
                "feature name {shown:?}... is {} bytes, above validation.max_feature_name_bytes = {}",
                name.len(),
                limits.max_feature_name_bytes
            ))
            .security(SecurityEvent::FeatureName));
        }
        if let Some(c) = bad_char(name, limits.allow_unicode) {
            return Err(Rejection::invalid(format!(
                "feature name {name:?} holds {c:?}, outside the allowed characters (see validation.allow_unicode)"
            ))
            .security(SecurityEvent::FeatureName));
        }
        if !v.is_finite() {
            return Err(Rejection::invalid(format!("value of feature {name:?} is {v}, not a finite number")));
        }
        let below = limits.min_value.is_some_and(|min| v < min);
        let above = limits.max_value.is_some_and(|max| v > max);
        if below || above {
            return Err(Rejection::invalid(format!(
                "value of feature {name:?} is {v}, outside validation.min_value..max_value = {:?}..{:?}",
                limits.min_value, limits.max_value
            ))
            .security(SecurityEvent::ValueRange));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_FEATURE_NAME_BYTES;

    fn reading(id: &str, values: &[(&str, f64)]) -> SensorReading {
        SensorReading { sensor_id: id.into(), values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(), ..Default::default() }
    }

    fn check(r: &SensorReading, key: Option<&[u8]>) -> Result<(), Rejection> {
        check_reading(r, key, &ValidationConfig::default())
    }

    #[test]
    fn a_plain_reading_passes() {
        assert_eq!(check(&reading("s1", &[("t", 1.0)]), Some(b"s1")), Ok(()));
    }

    #[test]
    fn empty_sensor_id_is_invalid() {
        let e = check(&reading("", &[("t", 1.0)]), Some(b"")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains("sensor_id"), "{e}");
    }

    #[test]
    fn key_must_equal_sensor_id() {
        let e = check(&reading("s1", &[("t", 1.0)]), Some(b"s2")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::KeyMismatch);
        let e = check(&reading("s1", &[("t", 1.0)]), None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::KeyMismatch);
    }

    #[test]
    fn non_finite_values_name_the_feature() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = check(&reading("s1", &[("a", 1.0), ("temp", v)]), Some(b"s1")).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Invalid);
            assert!(e.message.contains("temp"), "{e}");
        }
    }

    #[test]
    fn too_many_features_and_no_features_are_invalid() {
        let many: Vec<(String, f64)> = (0..5000).map(|i| (format!("f{i}"), 1.0)).collect();
        let r = SensorReading { sensor_id: "s1".into(), values: many.into_iter().collect(), ..Default::default() };
        let e = check(&r, Some(b"s1")).unwrap_err();
        assert!(e.message.contains("max_features"), "{e}");
        let e = check(&reading("s1", &[]), Some(b"s1")).unwrap_err();
        assert!(e.message.contains("values"), "{e}");
    }

    #[test]
    fn oversized_records_are_invalid() {
        let limits = ValidationConfig { max_record_bytes: 100, ..Default::default() };
        assert!(check_record_size(100, &limits).is_ok());
        assert!(check_record_size(101, &limits).unwrap_err().message.contains("max_record_bytes"));
    }

    #[test]
    fn ids_and_feature_names_outside_the_charset_name_the_field() {
        for id in ["s 1", "s\u{200b}1", "s\n1", "s1;drop", "sé"] {
            let e = check(&reading(id, &[("t", 1.0)]), Some(id.as_bytes())).unwrap_err();
            assert!(e.message.contains("sensor_id") && e.security == Some(SecurityEvent::SensorId), "{id:?}: {e}");
        }
        for name in ["te mp", "t\u{202e}", "a=b", "températ"] {
            let e = check(&reading("s1", &[(name, 1.0)]), Some(b"s1")).unwrap_err();
            assert!(e.message.contains("feature name") && e.security == Some(SecurityEvent::FeatureName), "{name:?}: {e}");
        }
        let unicode = ValidationConfig { allow_unicode: true, ..Default::default() };
        assert!(check_reading(&reading("capteur-é", &[("température", 1.0)]), Some("capteur-é".as_bytes()), &unicode).is_ok());
        assert!(check_reading(&reading("s\u{200b}1", &[("t", 1.0)]), Some("s\u{200b}1".as_bytes()), &unicode).is_err());
        let long = "f".repeat(DEFAULT_MAX_FEATURE_NAME_BYTES + 1);
        let e = check(&reading("s1", &[(&long, 1.0)]), Some(b"s1")).unwrap_err();
        assert!(e.message.contains("max_feature_name_bytes"), "{e}");
        assert_eq!(check(&reading("plant-3/line_2:pump@a.b", &[("rpm.mean", 1.0)]), Some(b"plant-3/line_2:pump@a.b")), Ok(()));
    }

    #[test]
    fn values_outside_the_configured_range_name_the_feature() {
        let limits = ValidationConfig { min_value: Some(-100.0), max_value: Some(1e6), ..Default::default() };
        assert!(check_reading(&reading("s1", &[("t", 1e6)]), Some(b"s1"), &limits).is_ok());
        let e = check_reading(&reading("s1", &[("a", 1.0), ("temp", 1e300)]), Some(b"s1"), &limits).unwrap_err();
        assert!(e.message.contains("\"temp\"") && e.message.contains("max_value"), "{e}");
        assert_eq!(e.security, Some(SecurityEvent::ValueRange));
        assert!(check_reading(&reading("s1", &[("t", -101.0)]), Some(b"s1"), &limits).is_err());
        // Default: any finite value, denormals and extremes included.
        assert!(check(&reading("s1", &[("t", f64::MAX), ("u", 5e-324), ("v", -f64::MAX)]), Some(b"s1")).is_ok());
    }

    #[test]
    fn timestamps_too_far_ahead_or_behind_name_the_field() {
        let limits = ValidationConfig { max_future_ms: 60_000, max_past_ms: 86_400_000, ..Default::default() };
        let now = 1_700_000_000_000;
        let at = |ts| SensorReading { timestamp_ms: ts, ..reading("s1", &[("t", 1.0)]) };
        assert!(check_timestamp(&at(now + 60_000), now, &limits).is_ok());
        let e = check_timestamp(&at(now + 60_001), now, &limits).unwrap_err();
        assert!(e.message.contains("timestamp_ms") && e.message.contains("max_future_ms"), "{e}");
        let e = check_timestamp(&at(0), now, &limits).unwrap_err();
        assert!(e.message.contains("max_past_ms") && e.security == Some(SecurityEvent::Timestamp), "{e}");
        assert!(check_timestamp(&at(i64::MIN), now, &limits).is_err());
        assert!(check_timestamp(&at(i64::MAX), now, &limits).is_err());
        // Default: no bound (history can be replayed at any time).
        assert!(check_timestamp(&at(0), now, &ValidationConfig::default()).is_ok());
    }
}
