//! Validation of decoded readings, before they reach a pipeline.
//!
//! Every rule here protects a pipeline from input it cannot learn from (a NaN poisons running
//! means forever) or protects the worker (a 5,000-feature reading costs memory per sensor).
//! A reading that fails goes to the dead-letter topic with the reason; nothing is dropped.

use crate::config::ValidationConfig;
use crate::proto::{ErrorKind, SensorReading};

/// Why a record was rejected: the dead letter's kind and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    /// Category, as written to the dead letter.
    pub kind: ErrorKind,
    /// Human-readable reason naming the offending field.
    pub message: String,
}

impl Rejection {
    /// A rejection of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
}

/// Reject a raw record before decoding: too large to be a sane reading.
pub fn check_record_size(len: usize, limits: &ValidationConfig) -> Result<(), Rejection> {
    if len > limits.max_record_bytes {
        return Err(Rejection::invalid(format!("record is {len} bytes, above validation.max_record_bytes = {}", limits.max_record_bytes)));
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
        )));
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
        )));
    }
    if let Some((name, v)) = reading.values.iter().find(|(_, v)| !v.is_finite()) {
        return Err(Rejection::invalid(format!("value of feature {name:?} is {v}, not a finite number")));
    }
    if let Some(name) = reading.values.keys().find(|k| k.is_empty()) {
        return Err(Rejection::invalid(format!("feature name {name:?} is empty")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
