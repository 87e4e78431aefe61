//! `mad`: robust z-scores from a streaming median and median absolute deviation (MAD), per
//! feature, combined over features; the streaming counterpart of Confluent's
//! `ML_DETECT_ANOMALIES_ROBUST` (median/MAD, uni- and multivariate).
//!
//! Statistic: `z_j = (x_j - median_j) / (1.4826 MAD_j)`, the MAD rescaled to a standard
//! deviation for Gaussian data (Hampel 1974; Rousseeuw & Croux 1993, JASA 88).
//!
//! Streaming approximation with bounded memory (O(1) per feature plus a `warm_up`-value ring):
//! the first `warm_up` readings give the exact median and MAD; from then on both are tracked
//! by stochastic approximation of quantiles (Robbins & Monro 1951; the sign-step "frugal"
//! estimators of Ma, Muthukrishnan & Sandler 2013): `median += rate * MAD * sign(x - median)`
//! (steps proportional to the current spread, so the tracker is scale-free), and `MAD *= (1 +
//! rate)` when `|x - median| > MAD`, `/= (1 + rate)` otherwise, whose fixed point is where
//! `|x - median|` exceeds it half of the time: the MAD. A single outlier moves either by one
//! bounded step, whatever its size; a level shift is followed within ~ln(shift)/rate readings.
//! A feature whose MAD is 0 (constant so far) is re-estimated exactly from its ring until it
//! varies.
//!
//! Score semantics: `combine = "max"` (default): the largest |z_j| over features (univariate
//! per feature, flagged by its worst feature); `combine = "l2"`: sqrt(sum_j z_j^2), the robust
//! Mahalanobis distance under a diagonal scatter (the multivariate combination). A feature with
//! MAD 0 scores 0 at its median and `|x - median| / 1e-9` elsewhere. Range [0, inf). Band per
//! feature: `median +- band_z * 1.4826 MAD`. Not a forecaster: timestamps are not used.
//! Deterministic, no RNG.

use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::series::Band;
use super::Detector;

/// MAD -> standard deviation for Gaussian data (1 / Phi^-1(3/4)).
const MAD_TO_SIGMA: f64 = 1.4826;
/// Scale used for a feature whose MAD is 0.
const DEGENERATE_SCALE: f64 = 1e-9;

/// How per-feature robust z-scores are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Combine {
    /// Largest |z|.
    Max,
    /// Euclidean norm of z.
    L2,
}

/// Checked parameters of [`Mad`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MadParams {
    /// Readings for the exact start (and the ring kept per feature).
    pub warm_up: usize,
    /// Step of the stochastic approximation (relative to the MAD).
    pub rate: f64,
    /// Half-width of the band in robust standard deviations.
    pub band_z: f64,
    /// Combination over features.
    pub combine: Combine,
}

/// `mad`'s `model_params` as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MadSpec {
    /// See [`MadParams::warm_up`].
    pub warm_up: usize,
    /// See [`MadParams::rate`].
    pub rate: f64,
    /// See [`MadParams::band_z`].
    pub band_z: f64,
    /// [`MadParams::combine`]: `"max"` or `"l2"`.
    pub combine: String,
}

impl Default for MadSpec {
    fn default() -> Self {
        Self { warm_up: 32, rate: 0.02, band_z: 3.0, combine: "max".into() }
    }
}

impl MadSpec {
    /// Check `mad` parameters from config.
    pub fn check(self) -> Result<MadParams, SpecError> {
        let bad = invalid("mad");
        let Self { warm_up, rate, band_z, combine } = self;
        let combine = match combine.as_str() {
            "max" => Combine::Max,
            "l2" => Combine::L2,
            other => return Err(bad("combine", format!("`{other}` is not max or l2"))),
        };
        if warm_up < 3 {
            return Err(bad("warm_up", "must be at least 3".into()));
        }
        if !(rate > 0.0 && rate < 1.0) {
            return Err(bad("rate", "must be in (0, 1)".into()));
        }
        if band_z <= 0.0 {
            return Err(bad("band_z", "must be positive".into()));
        }
        Ok(MadParams { warm_up, rate, band_z, combine })
    }
}

/// One feature's robust location and spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Feature {
    /// Running median.
    median: f64,
    /// Running MAD (0 = degenerate, re-estimated from `ring`).
    mad: f64,
    /// The last `warm_up` values (circular).
    ring: Vec<f64>,
}

/// Streaming median/MAD detector (plain data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mad {
    /// Checked parameters.
    params: MadParams,
    /// One tracker per feature.
    features: Vec<Feature>,
    /// Readings learned.
    n: u64,
    /// Sort buffer (not state).
    #[serde(skip)]
    scratch: Vec<f64>,
}

/// Exact median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Mad {
    /// A detector over `dim` features.
    pub fn new(params: MadParams, dim: usize) -> Self {
        let feature = Feature { median: 0.0, mad: 0.0, ring: Vec::with_capacity(params.warm_up) };
        Self { features: vec![feature; dim], n: 0, params, scratch: Vec::new() }
    }

    fn ready(&self) -> bool {
        self.n >= self.params.warm_up as u64
    }

    /// Robust standard deviation of feature `f`.
    fn sigma(f: &Feature) -> f64 {
        if f.mad > 0.0 {
            MAD_TO_SIGMA * f.mad
        } else {
            DEGENERATE_SCALE
        }
    }

    fn z(f: &Feature, v: f64) -> f64 {
        if v == f.median {
            0.0
        } else {
            (v - f.median) / Self::sigma(f)
        }
    }

    /// Exact median and MAD of feature `j`'s ring.
    fn exact(&mut self, j: usize) {
        let f = &mut self.features[j];
        self.scratch.clear();
        self.scratch.extend_from_slice(&f.ring);
        let m = median(&mut self.scratch);
        self.scratch.iter_mut().for_each(|v| *v = (*v - m).abs());
        f.median = m;
        f.mad = median(&mut self.scratch);
    }
}

impl Detector for Mad {
    fn learn_one(&mut self, x: &[f64]) {
        if x.len() != self.features.len() {
            return;
        }
        let w = self.params.warm_up;
        let slot = (self.n % w as u64) as usize;
        let rate = self.params.rate;
        let start = self.n + 1 == w as u64;
        for (j, &v) in x.iter().enumerate() {
            let f = &mut self.features[j];
            if f.ring.len() < w {
                f.ring.push(v);
            } else {
                f.ring[slot] = v;
            }
            if self.n + 1 < w as u64 {
                continue;
            }
            if start || f.mad == 0.0 {
                // Start, or a feature constant so far: exact from the ring. Skipped while the
                // new value equals the median (more than half the ring equal keeps MAD at 0).
                if start || v != f.median {
                    self.exact(j);
                }
                continue;
            }
            let dev = v - f.median;
            // sign(dev), 0 at the median (f64::signum would step up on ties).
            let sign = if dev > 0.0 {
                1.0
            } else if dev < 0.0 {
                -1.0
            } else {
                0.0
            };
            f.median += rate * f.mad * sign;
            if dev.abs() > f.mad {
                f.mad *= 1.0 + rate;
            } else {
                f.mad /= 1.0 + rate;
            }
        }
        self.n += 1;
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        if !self.ready() || x.len() != self.features.len() {
            return 0.0;
        }
        let zs = x.iter().zip(&self.features).map(|(v, f)| Self::z(f, *v));
        match self.params.combine {
            Combine::Max => zs.fold(0.0, |a, z| a.max(z.abs())),
            Combine::L2 => zs.map(|z| z * z).sum::<f64>().sqrt(),
        }
    }

    fn bands(&self, x: &[f64], out: &mut Vec<Band>) -> bool {
        out.clear();
        if !self.ready() || x.len() != self.features.len() {
            return false;
        }
        out.extend(x.iter().zip(&self.features).map(|(v, f)| Band::new(*v, f.median, Self::sigma(f), self.params.band_z)));
        true
    }

    fn contributions(&self, x: &[f64], out: &mut Vec<f64>) -> bool {
        out.clear();
        if !self.ready() || x.len() != self.features.len() {
            out.resize(x.len(), 0.0);
            return true;
        }
        out.extend(x.iter().zip(&self.features).map(|(v, f)| Self::z(f, *v).abs()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testutil::{assert_restore_continues_bit_identically, spec, stream};
    use crate::detect::ParamValue;

    fn mad(combine: &str) -> Mad {
        Mad::new(MadSpec { combine: combine.into(), ..MadSpec::default() }.check().unwrap(), 2)
    }

    #[test]
    fn parameter_errors_name_the_key() {
        for (key, value, want) in [
            ("combine", ParamValue::Str("sum".into()), "mad: invalid `combine`: `sum` is not max or l2"),
            ("warm_up", ParamValue::Int(2), "mad: invalid `warm_up`: must be at least 3"),
            ("rate", ParamValue::Float(1.0), "mad: invalid `rate`: must be in (0, 1)"),
            ("band_z", ParamValue::Float(0.0), "mad: invalid `band_z`: must be positive"),
        ] {
            assert_eq!(spec("mad", &[(key, value)], &[]).check().unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn streaming_median_and_mad_approach_the_exact_ones_and_ignore_outliers() {
        let mut m = mad("max");
        let data = stream(20_000, 2);
        for x in &data {
            m.learn_one(&[x[0] * 3.0 + 10.0, x[1]]);
        }
        // The stream is N(0,1) with +6 outliers every 97th point: median ~0.02, MAD ~0.68.
        let f = &m.features[0];
        assert!((f.median - 10.0).abs() < 0.3, "median {}", f.median);
        assert!((f.mad / 3.0 - 0.6745).abs() < 0.1, "mad {}", f.mad);
        let mut bands = Vec::new();
        assert!(m.bands(&[10.0, 0.0], &mut bands));
        assert!((bands[0].upper - bands[0].expected - 3.0 * 3.0).abs() < 1.0, "{bands:?}");
    }

    #[test]
    fn max_flags_one_feature_and_l2_adds_them_up() {
        let (mut a, mut b) = (mad("max"), mad("l2"));
        for x in &stream(2_000, 2) {
            a.learn_one(x);
            b.learn_one(x);
        }
        let one = a.score_one(&[5.0, 0.0]);
        assert!(one > 4.0, "{one}");
        assert!(b.score_one(&[5.0, 5.0]) > a.score_one(&[5.0, 5.0]) * 1.3);
        let mut c = Vec::new();
        assert!(a.contributions(&[0.0, 8.0], &mut c));
        assert!(c[1] > c[0]);
    }

    #[test]
    fn a_constant_feature_scores_zero_until_it_moves() {
        let mut m = mad("max");
        for i in 0..100 {
            m.learn_one(&[1.0, (i % 5) as f64]);
        }
        assert!(m.score_one(&[1.0, 2.0]) < 0.1, "the constant feature at its value and the other at its median");
        assert!(m.score_one(&[1.5, 2.0]) > 1e6);
        for i in 0..100 {
            m.learn_one(&[(i % 3) as f64, 2.0]);
        }
        assert!(m.features[0].mad > 0.0, "the feature varies now");
    }

    #[test]
    fn snapshot_restore_continues_bit_identically() {
        for combine in ["max", "l2"] {
            assert_restore_continues_bit_identically(&spec("mad", &[("combine", ParamValue::Str(combine.into()))], &[]), 3, 300, 300);
        }
    }
}
