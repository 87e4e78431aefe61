//! The detection core: online transforms, detectors, calibration and thresholds.
//!
//! Pure library code: no Kafka, RocksDB, tokio or tracing. Every model is plain data deriving
//! `Serialize`/`Deserialize`; every random choice comes from a seeded RNG kept in that data, so
//! a snapshot restored and fed the same continuation produces bit-identical scores.
//!
//! Vocabulary follows ONAD 0.3.0: `learn_one` updates a model with one point, `score_one`
//! (detectors) and `transform_one` (transforms) read it. Points are dense `&[f64]` in the
//! feature order a pipeline fixed on its first reading.

pub mod calibrate;
pub mod forest;
pub mod hst;
pub mod knn;
pub mod mahalanobis;
pub mod metrics;
pub mod params;
pub mod pipeline;
pub mod rshash;
pub mod svm;
pub mod synthetic;
#[cfg(test)]
mod testutil;
pub mod transform;
pub mod univariate;
pub mod zscore;

pub use params::{ParamValue, Params, SpecError};
pub use pipeline::{Pipeline, PipelineFactory, PipelineSpec, Scored, Severity, StepSpec, Thresholds};

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
}

#[cfg(test)]
mod calibration_tests;
#[cfg(test)]
mod learn_order_tests;
#[cfg(test)]
mod models_tests;
