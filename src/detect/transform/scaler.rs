//! Running feature scalers: ONAD's `StandardScaler` and `MinMaxScaler`
//! (`onad.transform.preprocessing.scaler`).
//!
//! - [`StandardScaler`]: Welford's online mean and *population* variance per feature;
//!   output `(x - mean) / std`, or 0 where std is 0 (ONAD's `_safe_div`); with
//!   `with_std = false`, `x - mean`. Output range: unbounded, about N(0, 1) on stationary data.
//! - [`MinMaxScaler`]: running min and max per feature; output
//!   `(x - min) / (max - min) * (hi - lo) + lo`, or `lo` where min == max. Values outside the
//!   seen range map outside `[lo, hi]` (not clamped, as ONAD).
//!
//! Before the first `learn_one`, ONAD raises ("feature has not been seen"); here the output is
//! the neutral value (0 for the standard scaler, `lo` for min-max), so a score-then-learn
//! pipeline can score its very first reading.

use serde::{Deserialize, Serialize};

use crate::detect::params::{invalid, SpecError};
use crate::detect::Transformer;

/// Checked parameters of [`StandardScaler`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScalerParams {
    /// Divide by the standard deviation (ONAD's `with_std`, default true).
    pub with_std: bool,
}

/// `scaler`'s `params` as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandardScalerSpec {
    /// See [`StandardScalerParams::with_std`].
    pub with_std: bool,
}

impl Default for StandardScalerSpec {
    fn default() -> Self {
        Self { with_std: true }
    }
}

impl StandardScalerSpec {
    /// Check `scaler` parameters from config (any value is valid).
    pub fn check(self) -> Result<StandardScalerParams, SpecError> {
        Ok(StandardScalerParams { with_std: self.with_std })
    }
}

/// Online standardisation (Welford, population variance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    /// Checked parameters.
    params: StandardScalerParams,
    /// Points learned (every point carries every feature, so one count serves all).
    n: u64,
    /// Running mean per feature.
    mean: Vec<f64>,
    /// Sum of squared deviations from the mean per feature.
    m2: Vec<f64>,
}

impl StandardScaler {
    /// A scaler over `dim` features.
    pub fn new(params: StandardScalerParams, dim: usize) -> Self {
        Self { params, n: 0, mean: vec![0.0; dim], m2: vec![0.0; dim] }
    }
}

impl Transformer for StandardScaler {
    fn learn_one(&mut self, x: &[f64]) {
        self.n += 1;
        let n = self.n as f64;
        for ((v, mean), m2) in x.iter().zip(self.mean.iter_mut()).zip(self.m2.iter_mut()) {
            let old = *mean;
            *mean += (v - old) / n;
            if self.params.with_std {
                *m2 += (v - old) * (v - *mean);
            }
        }
    }

    fn transform_one(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        if !self.params.with_std {
            out.extend(x.iter().zip(&self.mean).map(|(v, m)| v - m));
            return;
        }
        let n = self.n as f64;
        out.extend(x.iter().zip(&self.mean).zip(&self.m2).map(|((v, m), m2)| {
            let var = if self.n > 0 { m2 / n } else { 0.0 };
            let std = var.sqrt();
            if std != 0.0 {
                (v - m) / std
            } else {
                0.0
            }
        }));
    }
}

/// Checked parameters of [`MinMaxScaler`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinMaxScalerParams {
    /// Target range `[lo, hi]` (ONAD's `feature_range`, default `[0, 1]`).
    pub feature_range: (f64, f64),
}

/// `minmax`'s `params` as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinMaxScalerSpec {
    /// See [`MinMaxScalerParams::feature_range`].
    pub feature_range: (f64, f64),
}

impl Default for MinMaxScalerSpec {
    fn default() -> Self {
        Self { feature_range: (0.0, 1.0) }
    }
}

impl MinMaxScalerSpec {
    /// Check `minmax` parameters from config.
    pub fn check(self) -> Result<MinMaxScalerParams, SpecError> {
        let feature_range = self.feature_range;
        if feature_range.0 >= feature_range.1 {
            let reason = format!("low ({}) must be below high ({})", feature_range.0, feature_range.1);
            return Err(invalid("minmax")("feature_range", reason));
        }
        Ok(MinMaxScalerParams { feature_range })
    }
}

/// Running min-max scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinMaxScaler {
    /// Checked parameters.
    params: MinMaxScalerParams,
    /// Points learned.
    n: u64,
    /// Smallest value seen per feature.
    min: Vec<f64>,
    /// Largest value seen per feature.
    max: Vec<f64>,
}

impl MinMaxScaler {
    /// A scaler over `dim` features.
    pub fn new(params: MinMaxScalerParams, dim: usize) -> Self {
        Self { params, n: 0, min: vec![f64::INFINITY; dim], max: vec![f64::NEG_INFINITY; dim] }
    }
}

impl Transformer for MinMaxScaler {
    fn learn_one(&mut self, x: &[f64]) {
        self.n += 1;
        for ((v, lo), hi) in x.iter().zip(self.min.iter_mut()).zip(self.max.iter_mut()) {
            *lo = lo.min(*v);
            *hi = hi.max(*v);
        }
    }

    fn transform_one(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        let (a, b) = self.params.feature_range;
        out.extend(x.iter().zip(&self.min).zip(&self.max).map(|((v, lo), hi)| {
            if self.n == 0 || lo == hi {
                a
            } else {
                (v - lo) / (hi - lo) * (b - a) + a
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_scaler_uses_population_variance_and_zero_for_constant_features() {
        let mut s = StandardScaler::new(StandardScalerParams { with_std: true }, 2);
        for v in [1.0, 2.0, 3.0, 4.0] {
            s.learn_one(&[v, 7.0]);
        }
        let mut out = Vec::new();
        s.transform_one(&[5.0, 9.0], &mut out);
        assert!((out[0] - 2.5 / 1.25f64.sqrt()).abs() < 1e-12, "{out:?}");
        assert_eq!(out[1], 0.0, "a constant feature has std 0 and scales to 0");
    }

    #[test]
    fn minmax_scaler_maps_seen_range_to_feature_range() {
        let mut s = MinMaxScaler::new(MinMaxScalerParams { feature_range: (-1.0, 1.0) }, 2);
        let mut out = Vec::new();
        s.transform_one(&[3.0, 3.0], &mut out);
        assert_eq!(out, vec![-1.0, -1.0], "nothing learned yet: the low bound");
        for v in [0.0, 10.0, 5.0] {
            s.learn_one(&[v, 4.0]);
        }
        s.transform_one(&[2.5, 8.0], &mut out);
        assert_eq!(out, vec![-0.5, -1.0]);
    }

    #[test]
    fn minmax_rejects_empty_range() {
        let err = MinMaxScalerSpec { feature_range: (1.0, 1.0) }.check().unwrap_err().to_string();
        assert!(err.contains("feature_range"), "{err}");
    }
}
