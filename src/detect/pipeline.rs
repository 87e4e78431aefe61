//! A per-sensor pipeline: transforms, then a detector, then calibration and thresholds.
//!
//! Mirrors ONAD's `scaler | model` composition and its `AnomalyDetectionService` thresholding,
//! made exact: score-then-learn by default (an anomaly must not mask itself), `learn_first`
//! reproduces ONAD's snippet, `learn_anomalies = false` keeps anomalies out of the model.

use serde::{Deserialize, Serialize};

use super::arima::{Arima, ArimaParams, ArimaSpec};
use super::calibrate::Calibrator;
use super::explain;
use super::forest::{IsolationForestParams, IsolationForestSpec, OnlineIsolationForest};
use super::holt_winters::{HoltWinters, HoltWintersParams, HoltWintersSpec};
use super::hst::{HalfSpaceTrees, HalfSpaceTreesParams, HalfSpaceTreesSpec};
use super::knn::{Knn, KnnParams, KnnSpec};
use super::mad::{Mad, MadParams, MadSpec};
use super::mahalanobis::{Mahalanobis, MahalanobisParams, MahalanobisSpec};
use super::params::{read_tagged, Params, SpecError};
use super::rshash::{RsHash, RsHashParams, RsHashSpec};
use super::series::Band;
use super::svm::{AdaptiveSvm, AdaptiveSvmParams, AdaptiveSvmSpec};
pub use super::thresholds::{Severity, Thresholds};
use super::transform::{AnyTransform, StepParamsSpec, TransformParams};
use super::univariate::{MovingKind, MovingStat, MovingStatParams, MovingStatSpec};
use super::zscore::{ZScore, ZScoreParams, ZScoreSpec};
use super::{Detector, Transformer};

/// One preprocessing step from config: `{ type = "scaler", params = { ... } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Step name (`scaler`, `minmax`, `pca`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Step parameters.
    #[serde(default)]
    pub params: Params,
}

/// The unchecked description of a pipeline, as config gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    /// Detector name (`zscore`, `isolation_forest`, `knn`, `adaptive_svm`, ...).
    pub model_type: String,
    /// Detector parameters.
    pub model_params: Params,
    /// Transforms applied in order before the detector.
    pub preprocessing_steps: Vec<StepSpec>,
    /// Score bounds.
    pub thresholds: Thresholds,
    /// Learn before scoring (ONAD's snippet) instead of score-then-learn.
    pub learn_first: bool,
    /// Whether readings flagged as anomalies are learned.
    pub learn_anomalies: bool,
    /// Base seed; each key's pipeline derives its own seed from it and the key.
    pub seed: u64,
}

impl Default for PipelineSpec {
    /// The configuration file's defaults: a z-score detector with its default parameters, no
    /// steps, ONAD's thresholds, score-then-learn, anomalies learned, seed 42.
    fn default() -> Self {
        Self {
            model_type: "zscore".into(),
            model_params: Params::new(),
            preprocessing_steps: Vec::new(),
            thresholds: Thresholds::default(),
            learn_first: false,
            learn_anomalies: true,
            seed: 42,
        }
    }
}

/// Detector state, one variant per model (an enum, not a trait object, so that it is plain
/// serializable data).
// Variants differ in size (the SVM carries its RNG and buffers inline); one pipeline per key
// holds one of them, so boxing would only add an indirection on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AnyDetector {
    ZScore(ZScore),
    Knn(Knn),
    AdaptiveSvm(AdaptiveSvm),
    Mahalanobis(Mahalanobis),
    Moving(MovingStat),
    IsolationForest(OnlineIsolationForest),
    HalfSpaceTrees(HalfSpaceTrees),
    RsHash(RsHash),
    HoltWinters(HoltWinters),
    Arima(Arima),
    Mad(Mad),
}

/// Checked detector parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum DetectorParams {
    ZScore(ZScoreParams),
    Knn(KnnParams),
    AdaptiveSvm(AdaptiveSvmParams),
    Mahalanobis(MahalanobisParams),
    Moving(MovingStatParams),
    IsolationForest(IsolationForestParams),
    HalfSpaceTrees(HalfSpaceTreesParams),
    RsHash(RsHashParams),
    HoltWinters(HoltWintersParams),
    Arima(ArimaParams),
    Mad(MadParams),
}

/// A checked [`PipelineSpec`]: builds pipelines without re-validating.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineFactory {
    /// Checked detector parameters.
    detector: DetectorParams,
    /// Checked preprocessing steps, in order.
    steps: Vec<TransformParams>,
    /// Score bounds.
    thresholds: Thresholds,
    /// See [`PipelineSpec::learn_first`].
    learn_first: bool,
    /// See [`PipelineSpec::learn_anomalies`].
    learn_anomalies: bool,
    /// Base seed.
    seed: u64,
}

/// Model names accepted as `model_type`.
pub const MODEL_TYPES: &[&str] = &[
    "zscore",
    "isolation_forest",
    "half_space_trees",
    "rshash",
    "knn",
    "adaptive_svm",
    "mahalanobis",
    "moving_average",
    "moving_variance",
    "moving_median",
    "holt_winters",
    "arima",
    "mad",
];

/// `model_type` + `model_params` as serde reads them: one variant per model, each with the
/// model's defaults and `deny_unknown_fields` (see [`super::params`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "model_type", content = "model_params", deny_unknown_fields)]
pub enum ModelSpec {
    /// `zscore`.
    #[serde(rename = "zscore")]
    ZScore(ZScoreSpec),
    /// `knn`.
    #[serde(rename = "knn")]
    Knn(KnnSpec),
    /// `adaptive_svm`.
    #[serde(rename = "adaptive_svm")]
    AdaptiveSvm(AdaptiveSvmSpec),
    /// `mahalanobis`.
    #[serde(rename = "mahalanobis")]
    Mahalanobis(MahalanobisSpec),
    /// `moving_average`.
    #[serde(rename = "moving_average")]
    MovingAverage(MovingStatSpec),
    /// `moving_variance`.
    #[serde(rename = "moving_variance")]
    MovingVariance(MovingStatSpec),
    /// `moving_median`.
    #[serde(rename = "moving_median")]
    MovingMedian(MovingStatSpec),
    /// `isolation_forest`.
    #[serde(rename = "isolation_forest")]
    IsolationForest(IsolationForestSpec),
    /// `half_space_trees`.
    #[serde(rename = "half_space_trees")]
    HalfSpaceTrees(HalfSpaceTreesSpec),
    /// `rshash`.
    #[serde(rename = "rshash")]
    RsHash(RsHashSpec),
    /// `holt_winters`.
    #[serde(rename = "holt_winters")]
    HoltWinters(HoltWintersSpec),
    /// `arima`.
    #[serde(rename = "arima")]
    Arima(ArimaSpec),
    /// `mad`.
    #[serde(rename = "mad")]
    Mad(MadSpec),
}

impl ModelSpec {
    /// Read `model_params` for `model_type`: unknown names, unknown keys and wrong types are
    /// errors naming them.
    pub fn read(model_type: &str, model_params: &Params) -> Result<Self, SpecError> {
        read_tagged(("model_type", "model_type", MODEL_TYPES), "model_params", model_type, model_params)
    }

    /// Range-check the parameters (each model's own `check`).
    fn check(self) -> Result<DetectorParams, SpecError> {
        Ok(match self {
            Self::ZScore(s) => DetectorParams::ZScore(s.check()?),
            Self::Knn(s) => DetectorParams::Knn(s.check()?),
            Self::AdaptiveSvm(s) => DetectorParams::AdaptiveSvm(s.check()?),
            Self::Mahalanobis(s) => DetectorParams::Mahalanobis(s.check()?),
            Self::MovingAverage(s) => DetectorParams::Moving(s.check(MovingKind::Average)?),
            Self::MovingVariance(s) => DetectorParams::Moving(s.check(MovingKind::Variance)?),
            Self::MovingMedian(s) => DetectorParams::Moving(s.check(MovingKind::Median)?),
            Self::IsolationForest(s) => DetectorParams::IsolationForest(s.check()?),
            Self::HalfSpaceTrees(s) => DetectorParams::HalfSpaceTrees(s.check()?),
            Self::RsHash(s) => DetectorParams::RsHash(s.check()?),
            Self::HoltWinters(s) => DetectorParams::HoltWinters(s.check()?),
            Self::Arima(s) => DetectorParams::Arima(s.check()?),
            Self::Mad(s) => DetectorParams::Mad(s.check()?),
        })
    }
}

impl PipelineSpec {
    /// Validate everything once.
    pub fn check(&self) -> Result<PipelineFactory, SpecError> {
        self.thresholds.check()?;
        let detector = ModelSpec::read(&self.model_type, &self.model_params)?.check()?;
        let steps = self
            .preprocessing_steps
            .iter()
            .map(|step| StepParamsSpec::read(&step.kind, &step.params)?.check())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PipelineFactory {
            detector,
            steps,
            thresholds: self.thresholds,
            learn_first: self.learn_first,
            learn_anomalies: self.learn_anomalies,
            seed: self.seed,
        })
    }
}

impl PipelineFactory {
    /// A fresh pipeline over `dim` features for the sensor `key`. The key's seed is derived
    /// from the base seed and the key, so the same key gets the same model on every replica.
    ///
    /// A step that needs more input features than it gets (`pca` / `random_projection` with
    /// `n_components` above the width) is clamped to the width; call [`Self::try_build`] or
    /// [`Self::check_dim`] to have that reported as an error instead.
    pub fn build(&self, dim: usize, key: &str) -> Pipeline {
        let seed = self.seed ^ fnv1a(key.as_bytes());
        let mut width = dim;
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            // Each step gets its own stream of randomness, derived from the key's seed.
            let t = step.build(width, seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            width = t.out_dim(width);
            steps.push(t);
        }
        let dim = width;
        let detector = match &self.detector {
            DetectorParams::ZScore(p) => AnyDetector::ZScore(ZScore::new(p.clone(), dim)),
            DetectorParams::Knn(p) => AnyDetector::Knn(Knn::new(p.clone(), dim)),
            DetectorParams::AdaptiveSvm(p) => AnyDetector::AdaptiveSvm(AdaptiveSvm::new(p.clone(), dim, seed)),
            DetectorParams::Mahalanobis(p) => AnyDetector::Mahalanobis(Mahalanobis::new(p.clone(), dim)),
            DetectorParams::Moving(p) => AnyDetector::Moving(MovingStat::new(p.clone(), dim)),
            DetectorParams::IsolationForest(p) => AnyDetector::IsolationForest(OnlineIsolationForest::new(p.clone(), dim, seed)),
            DetectorParams::HalfSpaceTrees(p) => AnyDetector::HalfSpaceTrees(HalfSpaceTrees::new(p.clone(), dim, seed)),
            DetectorParams::RsHash(p) => AnyDetector::RsHash(RsHash::new(p.clone(), dim, seed)),
            DetectorParams::HoltWinters(p) => AnyDetector::HoltWinters(HoltWinters::new(p.clone(), dim)),
            DetectorParams::Arima(p) => AnyDetector::Arima(Arima::new(p.clone(), dim)),
            DetectorParams::Mad(p) => AnyDetector::Mad(Mad::new(p.clone(), dim)),
        };
        let bufs = vec![Vec::new(); steps.len()];
        Pipeline {
            steps,
            bufs,
            detector,
            calibrator: Calibrator::new(),
            thresholds: self.thresholds,
            learn_first: self.learn_first,
            learn_anomalies: self.learn_anomalies,
            scratch: Vec::new(),
        }
    }

    /// Check that the steps accept `dim` input features (e.g. `pca`'s `n_components` is not
    /// above the width it receives).
    pub fn check_dim(&self, dim: usize) -> Result<(), SpecError> {
        let mut width = dim;
        for step in &self.steps {
            width = step.check_dim(width)?;
        }
        Ok(())
    }

    /// [`Self::build`], with the steps' width requirements checked first.
    pub fn try_build(&self, dim: usize, key: &str) -> Result<Pipeline, SpecError> {
        self.check_dim(dim)?;
        Ok(self.build(dim, key))
    }

    /// Name of the configured detector.
    pub fn detector_name(&self) -> &'static str {
        match &self.detector {
            DetectorParams::ZScore(_) => "zscore",
            DetectorParams::Knn(_) => "knn",
            DetectorParams::AdaptiveSvm(_) => "adaptive_svm",
            DetectorParams::Mahalanobis(_) => "mahalanobis",
            DetectorParams::Moving(p) => p.kind.name(),
            DetectorParams::IsolationForest(_) => "isolation_forest",
            DetectorParams::HalfSpaceTrees(_) => "half_space_trees",
            DetectorParams::RsHash(_) => "rshash",
            DetectorParams::HoltWinters(_) => "holt_winters",
            DetectorParams::Arima(_) => "arima",
            DetectorParams::Mad(_) => "mad",
        }
    }
}

/// 64-bit FNV-1a: a stable hash (unlike std's, which may change between releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The outcome of scoring one point.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Calibrated score in [0, 1].
    pub score: f64,
    /// The detector's native score.
    pub raw_score: f64,
    /// `score > thresholds.anomaly`.
    pub is_anomaly: bool,
    /// Severity band of `score`.
    pub severity: Severity,
    /// (feature index, weight) of the features that made this reading anomalous, largest
    /// first (see `explain`); empty when it is not an anomaly.
    pub top_features: Vec<(usize, f64)>,
    /// Per feature, in the pipeline's feature order: the expected value and band before this
    /// reading was learned, for detectors that have them (`holt_winters`, `arima`, `mad`) and
    /// no preprocessing steps (a band in scaled units would not be the sensor's); else empty.
    pub bands: Vec<Band>,
}

/// Why [`Pipeline::try_process_at`] could not score a point.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum ScoreError {
    /// The detector's raw score is NaN or infinite (e.g. squared distances that overflow on
    /// huge but finite values).
    #[error("non-finite raw score {raw}")]
    NonFinite {
        /// The raw score.
        raw: f64,
        /// The detector learned the point before scoring it (`learn_first`).
        learned: bool,
    },
}

/// One sensor's model: detector + calibrator + thresholds. Plain data, serializable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// Preprocessing steps, applied in order.
    steps: Vec<AnyTransform>,
    /// Output buffer of each step (not state; kept to avoid allocation per point).
    #[serde(skip)]
    bufs: Vec<Vec<f64>>,
    /// The detector.
    detector: AnyDetector,
    /// Raw-score calibration to [0, 1].
    calibrator: Calibrator,
    /// Score bounds.
    thresholds: Thresholds,
    /// See [`PipelineSpec::learn_first`].
    learn_first: bool,
    /// See [`PipelineSpec::learn_anomalies`].
    learn_anomalies: bool,
    /// Reused buffer for per-feature contributions (not state; kept to avoid allocation).
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl Pipeline {
    fn detector(&mut self) -> &mut dyn Detector {
        match &mut self.detector {
            AnyDetector::ZScore(d) => d,
            AnyDetector::Knn(d) => d,
            AnyDetector::AdaptiveSvm(d) => d,
            AnyDetector::Mahalanobis(d) => d,
            AnyDetector::Moving(d) => d,
            AnyDetector::IsolationForest(d) => d,
            AnyDetector::HalfSpaceTrees(d) => d,
            AnyDetector::RsHash(d) => d,
            AnyDetector::HoltWinters(d) => d,
            AnyDetector::Arima(d) => d,
            AnyDetector::Mad(d) => d,
        }
    }

    /// Run `x` through the steps; with `learn`, each step learns the point before
    /// transforming it (ONAD's `scaler | model`). The result is in the last buffer (or `x`).
    fn transform(&mut self, x: &[f64], learn: bool) {
        if self.bufs.len() != self.steps.len() {
            // Restored from a snapshot: the buffers are not state.
            self.bufs = vec![Vec::new(); self.steps.len()];
        }
        for i in 0..self.steps.len() {
            let (done, rest) = self.bufs.split_at_mut(i);
            let input: &[f64] = if i == 0 { x } else { &done[i - 1] };
            if learn {
                self.steps[i].learn_one(input);
            }
            self.steps[i].transform_one(input, &mut rest[0]);
        }
    }

    /// Learn `x` through the steps and the detector.
    fn learn(&mut self, x: &[f64]) {
        if self.steps.is_empty() {
            self.detector().learn_one(x);
            return;
        }
        self.transform(x, true);
        let mut out = std::mem::take(&mut self.bufs[self.steps.len() - 1]);
        self.detector().learn_one(&out);
        std::mem::swap(&mut out, &mut self.bufs[self.steps.len() - 1]);
    }

    /// Learn `x` through the steps and the detector, then score the learned transform of `x`
    /// (ONAD's learn-then-score order; the detector may fuse the two).
    fn learn_score(&mut self, x: &[f64]) -> f64 {
        if self.steps.is_empty() {
            return self.detector().learn_score_one(x);
        }
        self.transform(x, true);
        let out = std::mem::take(&mut self.bufs[self.steps.len() - 1]);
        let raw = self.detector().learn_score_one(&out);
        self.bufs[self.steps.len() - 1] = out;
        raw
    }

    /// The detector's raw score of `x` (transformed, not learned).
    fn raw_score(&mut self, x: &[f64]) -> f64 {
        if self.steps.is_empty() {
            return self.detector().score_one(x);
        }
        self.transform(x, false);
        let out = std::mem::take(&mut self.bufs[self.steps.len() - 1]);
        let raw = self.detector().score_one(&out);
        self.bufs[self.steps.len() - 1] = out;
        raw
    }

    /// Score `x` and learn it, in the configured order.
    ///
    /// Every detector goes through the calibrator, including the ones whose native score is
    /// in [0, 1]: the Online Isolation Forest's score compresses into a narrow band (on 10
    /// Gaussian features typical points score ~0.26 and +6 sigma outliers ~0.49), and
    /// Half-Space Trees put typical points near 0.99, so neither means the same as a
    /// threshold of 0.8 on a calibrated score (1 in 10,000).
    pub fn process(&mut self, x: &[f64]) -> Scored {
        self.process_at(x, None)
    }

    /// [`Self::process`] for a reading taken at `ts_ms` (ms since the epoch; `None` when
    /// unknown). The time-series detectors forecast for that time (gaps, late readings: see
    /// `series`); the others ignore it. The timestamp goes to the detector through
    /// [`Detector::set_time`] before it scores and learns, so `score_one` / `learn_one` keep
    /// their signatures and every other detector is untouched.
    pub fn process_at(&mut self, x: &[f64], ts_ms: Option<i64>) -> Scored {
        let (raw, bands) = self.raw_at(x, ts_ms, self.learn_first);
        self.finish(x, raw, bands, true)
    }

    /// [`Self::process_at`], refusing a non-finite raw score: it is neither calibrated nor
    /// learned (a NaN or infinity would push the calibrator's tail and the model's running
    /// statistics out of range for good). In score-then-learn order the pipeline is then
    /// exactly as before the call; with `learn_first` its detector has already learned `x`
    /// ([`ScoreError::NonFinite::learned`]), and the caller should start the model over.
    pub fn try_process_at(&mut self, x: &[f64], ts_ms: Option<i64>) -> Result<Scored, ScoreError> {
        self.try_at(x, ts_ms, true)
    }

    /// Score `x` at `ts_ms` without learning it (neither the model nor its calibrator, in
    /// either learning order): how a fallback answers for a reading it must not learn from.
    /// A non-finite raw score is refused, as in [`Self::try_process_at`].
    pub fn try_score_at(&mut self, x: &[f64], ts_ms: Option<i64>) -> Result<Scored, ScoreError> {
        self.try_at(x, ts_ms, false)
    }

    fn try_at(&mut self, x: &[f64], ts_ms: Option<i64>, learn: bool) -> Result<Scored, ScoreError> {
        let learned = learn && self.learn_first;
        let (raw, bands) = self.raw_at(x, ts_ms, learned);
        if !raw.is_finite() {
            return Err(ScoreError::NonFinite { raw, learned });
        }
        Ok(self.finish(x, raw, bands, learn))
    }

    /// The detector's raw score of `x` at `ts_ms` and its bands; `learn_score` learns `x`
    /// first (ONAD's order).
    fn raw_at(&mut self, x: &[f64], ts_ms: Option<i64>, learn_score: bool) -> (f64, Vec<Band>) {
        self.detector().set_time(ts_ms);
        let mut bands = Vec::new();
        if self.steps.is_empty() && !self.detector().bands(x, &mut bands) {
            bands.clear();
        }
        let raw = if learn_score { self.learn_score(x) } else { self.raw_score(x) };
        (raw, bands)
    }

    /// Calibrate `raw`, threshold it, explain an anomaly; with `learn`, the calibrator learns
    /// `raw` and (score-then-learn) the model learns `x`.
    fn finish(&mut self, x: &[f64], raw: f64, bands: Vec<Band>, learn: bool) -> Scored {
        let score = self.calibrator.score(raw);
        if learn {
            self.calibrator.learn(raw);
        }
        let is_anomaly = score > self.thresholds.anomaly;
        // Explained before learning, so that x is not its own neighbour / part of its window.
        let top_features = if is_anomaly { self.explain(x) } else { Vec::new() };
        if learn && !self.learn_first && (self.learn_anomalies || !is_anomaly) {
            self.learn(x);
        }
        Scored { score, raw_score: raw, is_anomaly, severity: self.thresholds.severity(score), top_features, bands }
    }

    /// The features that made `x` anomalous, largest first (see `explain`): the detector's own
    /// per-feature terms where it has them (z-score, KNN, Mahalanobis, the moving statistics,
    /// the time-series detectors), otherwise occlusion against the detector's typical point.
    /// In the detector's coordinates, so empty behind steps that mix features (PCA, random
    /// projection), where indices would not name input features.
    fn explain(&mut self, x: &[f64]) -> Vec<(usize, f64)> {
        if !self.steps.iter().all(AnyTransform::keeps_features) {
            return Vec::new();
        }
        // Explain in the detector's own (scaled) coordinates, same features as `x`.
        let xt = if self.steps.is_empty() {
            x.to_vec()
        } else {
            self.transform(x, false);
            self.bufs[self.steps.len() - 1].clone()
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let native = match &mut self.detector {
            AnyDetector::ZScore(z) => {
                z.feature_z(&xt, &mut scratch);
                true
            }
            AnyDetector::Knn(k) => {
                k.feature_contributions(&xt, &mut scratch);
                true
            }
            AnyDetector::Mahalanobis(m) => {
                m.feature_contributions(&xt, &mut scratch);
                true
            }
            _ => false,
        };
        let native = native || self.detector().contributions(&xt, &mut scratch);
        if !native {
            let mut reference = Vec::new();
            let det = self.detector();
            if det.reference(&mut reference) {
                let raw = det.score_one(&xt);
                explain::occlusion(&xt, raw, &reference, |p| det.score_one(p), &mut scratch);
            } else {
                scratch.clear();
            }
        }
        let top = explain::top(&scratch);
        self.scratch = scratch;
        top
    }

    /// The raw score `x` would get now, without learning it or touching the calibrator
    /// (for parity tests and offline inspection).
    pub fn peek_raw_score(&mut self, x: &[f64]) -> f64 {
        self.raw_score(x)
    }
}
