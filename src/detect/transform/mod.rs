//! Online feature transforms applied before a detector (ONAD's `preprocessing_steps`).
//!
//! Config names: `scaler` ([`StandardScaler`]), `minmax` ([`MinMaxScaler`]), `pca`
//! ([`IncrementalPca`]), `random_projection` ([`RandomProjection`]).

pub mod pca;
pub mod projection;
pub mod scaler;

use serde::{Deserialize, Serialize};

pub use pca::{IncrementalPca, IncrementalPcaParams, IncrementalPcaSpec};
pub use projection::{RandomProjection, RandomProjectionParams, RandomProjectionSpec};
pub use scaler::{MinMaxScaler, MinMaxScalerParams, MinMaxScalerSpec, StandardScaler, StandardScalerParams, StandardScalerSpec};

use super::params::{read_tagged, Params, SpecError};
use super::Transformer;

/// Step names accepted in `preprocessing_steps`.
pub const STEP_TYPES: &[&str] = &["scaler", "minmax", "pca", "random_projection"];

/// Checked parameters of one preprocessing step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TransformParams {
    /// `scaler`.
    Standard(StandardScalerParams),
    /// `minmax`.
    MinMax(MinMaxScalerParams),
    /// `pca`.
    Pca(IncrementalPcaParams),
    /// `random_projection`.
    Projection(RandomProjectionParams),
}

/// A step's `type` + `params` as serde reads them: one variant per step, each with the step's
/// defaults and `deny_unknown_fields` (see [`super::params`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", content = "params", deny_unknown_fields)]
pub enum StepParamsSpec {
    /// `scaler`.
    #[serde(rename = "scaler")]
    Standard(StandardScalerSpec),
    /// `minmax`.
    #[serde(rename = "minmax")]
    MinMax(MinMaxScalerSpec),
    /// `pca`.
    #[serde(rename = "pca")]
    Pca(IncrementalPcaSpec),
    /// `random_projection`.
    #[serde(rename = "random_projection")]
    Projection(RandomProjectionSpec),
}

impl StepParamsSpec {
    /// Read a step's `params` for its `type`: unknown names, unknown keys and wrong types are
    /// errors naming them.
    pub fn read(kind: &str, params: &Params) -> Result<Self, SpecError> {
        read_tagged(("type", "preprocessing step", STEP_TYPES), "params", kind, params)
    }

    /// Range-check the parameters (each step's own `check`).
    pub fn check(self) -> Result<TransformParams, SpecError> {
        Ok(match self {
            Self::Standard(s) => TransformParams::Standard(s.check()?),
            Self::MinMax(s) => TransformParams::MinMax(s.check()?),
            Self::Pca(s) => TransformParams::Pca(s.check()?),
            Self::Projection(s) => TransformParams::Projection(s.check()?),
        })
    }
}

impl TransformParams {
    /// Check that the step accepts `dim` input features; returns its output dimension.
    pub fn check_dim(&self, dim: usize) -> Result<usize, SpecError> {
        match self {
            Self::Standard(_) | Self::MinMax(_) => Ok(dim),
            Self::Pca(p) => p.check_dim(dim).map(|_| p.n_components),
            Self::Projection(p) => p.check_dim(dim).map(|_| p.n_components),
        }
    }

    /// A fresh step over `dim` inputs; `seed` serves randomised steps.
    pub fn build(&self, dim: usize, seed: u64) -> AnyTransform {
        match self {
            Self::Standard(p) => AnyTransform::Standard(StandardScaler::new(p.clone(), dim)),
            Self::MinMax(p) => AnyTransform::MinMax(MinMaxScaler::new(p.clone(), dim)),
            Self::Pca(p) => AnyTransform::Pca(IncrementalPca::new(p.clone(), dim)),
            Self::Projection(p) => AnyTransform::Projection(RandomProjection::new(p, dim, seed)),
        }
    }
}

/// Transform state, one variant per step type (plain serializable data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AnyTransform {
    /// `scaler`.
    Standard(StandardScaler),
    /// `minmax`.
    MinMax(MinMaxScaler),
    /// `pca`.
    Pca(IncrementalPca),
    /// `random_projection`.
    Projection(RandomProjection),
}

impl AnyTransform {
    fn inner(&self) -> &dyn Transformer {
        match self {
            Self::Standard(t) => t,
            Self::MinMax(t) => t,
            Self::Pca(t) => t,
            Self::Projection(t) => t,
        }
    }

    /// Output width for an input of `dim` features.
    pub fn out_dim(&self, dim: usize) -> usize {
        match self {
            Self::Standard(_) | Self::MinMax(_) => dim,
            Self::Pca(t) => t.out_dim(),
            Self::Projection(t) => t.out_dim(),
        }
    }

    /// Whether the output features are the input features (same count, same order), so
    /// per-feature explanations still name input features.
    pub fn keeps_features(&self) -> bool {
        matches!(self, Self::Standard(_) | Self::MinMax(_))
    }
}

impl Transformer for AnyTransform {
    fn learn_one(&mut self, x: &[f64]) {
        match self {
            Self::Standard(t) => t.learn_one(x),
            Self::MinMax(t) => t.learn_one(x),
            Self::Pca(t) => t.learn_one(x),
            Self::Projection(t) => t.learn_one(x),
        }
    }

    fn transform_one(&self, x: &[f64], out: &mut Vec<f64>) {
        self.inner().transform_one(x, out)
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::testutil::{assert_restore_continues_bit_identically, spec};
    use crate::detect::ParamValue;

    #[test]
    fn every_step_survives_snapshot_restore_bit_identically() {
        let none: &[(&str, ParamValue)] = &[];
        let pca: &[(&str, ParamValue)] = &[("n_components", ParamValue::Int(3)), ("n0", ParamValue::Int(20))];
        let rp: &[(&str, ParamValue)] = &[("n_components", ParamValue::Int(4))];
        let spec = spec(
            "knn",
            &[("k", ParamValue::Int(5)), ("window_size", ParamValue::Int(100))],
            &[("minmax", none), ("scaler", none), ("random_projection", rp), ("pca", pca)],
        );
        assert_restore_continues_bit_identically(&spec, 6, 500, 200);
    }

    #[test]
    fn pca_wider_than_input_is_an_error_naming_n_components() {
        let pca: &[(&str, ParamValue)] = &[("n_components", ParamValue::Int(8))];
        let factory = spec("zscore", &[], &[("pca", pca)]).check().unwrap();
        let err = factory.try_build(5, "k").unwrap_err().to_string();
        assert!(err.contains("n_components") && err.contains('5'), "{err}");
    }

    #[test]
    fn unknown_step_is_an_error_listing_known_steps() {
        let err = spec("zscore", &[], &[("whiten", &[])]).check().unwrap_err().to_string();
        assert!(err.contains("whiten") && err.contains("minmax"), "{err}");
    }
}
