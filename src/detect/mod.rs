//! The detection core: online transforms, detectors, calibration and thresholds.
//!
//! Pure library code: no Kafka, RocksDB, tokio or tracing. Every model is plain data deriving
//! `Serialize`/`Deserialize`; every random choice comes from a seeded RNG kept in that data, so
//! a snapshot restored and fed the same continuation produces bit-identical scores.
//!
//! Vocabulary follows ONAD 0.3.0: `learn_one` updates a model with one point, `score_one`
//! (detectors) and `transform_one` (transforms) read it. Points are dense `&[f64]` in the
//! feature order a pipeline fixed on its first reading.

pub mod arima;
pub mod calibrate;
pub mod explain;
pub mod forest;
pub mod holt_winters;
pub mod hst;
pub mod knn;
pub mod mad;
pub mod mahalanobis;
pub mod metrics;
pub mod params;
pub mod pipeline;
pub mod rshash;
pub mod series;
pub mod svm;
pub mod synthetic;
#[cfg(test)]
mod testutil;
pub mod thresholds;
pub mod transform;
pub mod univariate;
pub mod zscore;

pub use params::{ParamValue, Params, SpecError};
pub use pipeline::{Pipeline, PipelineFactory, PipelineSpec, ScoreError, Scored, Severity, StepSpec, Thresholds};
pub use series::Band;

/// An online feature transform (scaler, projection).
pub trait Transformer {
    /// Update the transform's statistics with one point.
    fn learn_one(&mut self, x: &[f64]);
    /// Write the transformed point into `out` (cleared first), without learning.
    fn transform_one(&self, x: &[f64], out: &mut Vec<f64>);
}

/// An online anomaly detector.
pub trait Detector {
    /// Update the model with one point.
    fn learn_one(&mut self, x: &[f64]);
    /// The detector's native anomaly score of `x` (larger = more anomalous). Range is
    /// detector-specific and documented on each implementation.
    fn score_one(&mut self, x: &[f64]) -> f64;
    /// Learn `x`, then score it (ONAD's learn-then-score order). Detectors may override this
    /// to share work between the two; the result must equal `learn_one` then `score_one`.
    fn learn_score_one(&mut self, x: &[f64]) -> f64 {
        self.learn_one(x);
        self.score_one(x)
    }
    /// The timestamp (ms since epoch) of the reading the next `score_one` / `learn_one` calls
    /// are about; `None` when it has none. Called by [`Pipeline::process_at`] before them.
    /// Only the time-series detectors use it (see `series`); the default ignores it.
    fn set_time(&mut self, _ts_ms: Option<i64>) {}
    /// Expected value and band of each feature of `x` before `x` is learned, written into
    /// `out` (cleared first); false when the detector has none (the default) or not yet.
    fn bands(&self, _x: &[f64], _out: &mut Vec<Band>) -> bool {
        false
    }
    /// How much each feature of `x` makes it anomalous (larger = more responsible), written
    /// into `out` (cleared first); false when the detector cannot attribute its score (the
    /// default: the pipeline then measures it by occlusion, see `explain`).
    fn contributions(&self, _x: &[f64], _out: &mut Vec<f64>) -> bool {
        false
    }
    /// A typical point of what the model has learned (in its input coordinates), written into
    /// `out`: the values occlusion puts in place of a feature to measure how much that
    /// feature made a point anomalous (see `explain`). False when the model has none yet.
    fn reference(&self, _out: &mut Vec<f64>) -> bool {
        false
    }
}

#[cfg(test)]
mod calibration_tests;
#[cfg(test)]
mod learn_order_tests;
#[cfg(test)]
mod models_tests;
