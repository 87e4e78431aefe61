//! Score bounds and severity bands: what a calibrated score in [0, 1] means to an operator
//! (split from `pipeline`, which re-exports both).

use serde::{Deserialize, Serialize};

use super::params::SpecError;

/// Severity band of a calibrated score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    /// Up to `medium`.
    Low,
    /// Above `medium`, up to `high`.
    Medium,
    /// Above `high`, up to `critical`.
    High,
    /// Above `critical`.
    Critical,
}

/// Score bounds, compared against the calibrated score in [0, 1] (strictly greater, as ONAD).
///
/// A calibrated score `s` means a raw score that about one clean reading in `10^(5 s)` of the
/// same sensor exceeds ([`super::calibrate`]): 0.6 = 1 in 1,000, 0.8 = 1 in 10,000, 1.0 = 1 in
/// 100,000 or rarer. The defaults are not ONAD's 0.7/0.7/0.8/0.9 (which on this scale would
/// flag 1 clean reading in ~3,200): an operator gets about one alert per sensor per 10,000
/// clean readings (under 9 a day for a 1 Hz sensor) and "critical" only at the calibrator's
/// ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// A reading is an anomaly when its score is above this (default 0.8: 1 in 10,000).
    pub anomaly: f64,
    /// Medium severity above this (default 0.8: 1 in 10,000).
    pub medium: f64,
    /// High severity above this (default 0.9: 1 in ~32,000).
    pub high: f64,
    /// Critical severity above this (default 0.99: 1 in ~90,000, the scale's end at 1 in
    /// 100,000).
    pub critical: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { anomaly: 0.8, medium: 0.8, high: 0.9, critical: 0.99 }
    }
}

impl Thresholds {
    /// Check that every bound is in [0, 1] and that medium <= high <= critical.
    pub fn check(&self) -> Result<(), SpecError> {
        let bad = |key: &str, reason: String| SpecError::InvalidParam { model: "thresholds".into(), key: key.into(), reason };
        for (key, v) in [("anomaly", self.anomaly), ("medium", self.medium), ("high", self.high), ("critical", self.critical)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(key, format!("{v} is outside [0, 1]")));
            }
        }
        if self.medium > self.high {
            return Err(bad("medium", format!("{} is above high ({})", self.medium, self.high)));
        }
        if self.high > self.critical {
            return Err(bad("high", format!("{} is above critical ({})", self.high, self.critical)));
        }
        Ok(())
    }

    /// The severity band of `score`.
    pub fn severity(&self, score: f64) -> Severity {
        if score > self.critical {
            Severity::Critical
        } else if score > self.high {
            Severity::High
        } else if score > self.medium {
            Severity::Medium
        } else {
            Severity::Low
        }
    }
}
