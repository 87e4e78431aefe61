//! Streaming z-score: the statistical fallback detector.
//!
//! Per feature, Welford's online mean and population variance. Raw score = the largest
//! |x_i - mean_i| / std_i over features (0 where std is 0 or fewer than 2 points were seen).
//! Range: [0, inf). Deterministic, no RNG.

use serde::{Deserialize, Serialize};

use super::params::SpecError;
use super::Detector;

/// Checked parameters of [`ZScore`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZScoreParams {
    /// Points to see before scoring anything but 0.
    pub warm_up: usize,
}

/// `zscore`'s `model_params` as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ZScoreSpec {
    /// See [`ZScoreParams::warm_up`].
    pub warm_up: usize,
}

impl Default for ZScoreSpec {
    fn default() -> Self {
        Self { warm_up: 2 }
    }
}

impl ZScoreSpec {
    /// Check `zscore` parameters from config (any value is valid).
    pub fn check(self) -> Result<ZScoreParams, SpecError> {
        Ok(ZScoreParams { warm_up: self.warm_up })
    }
}

/// Welford state of one feature.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Welford {
    /// Running mean.
    mean: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
}

/// Per-feature streaming z-score detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZScore {
    /// Checked parameters.
    params: ZScoreParams,
    /// Points learned.
    n: u64,
    /// One accumulator per feature.
    stats: Vec<Welford>,
}

impl ZScore {
    /// A detector over `dim` features.
    pub fn new(params: ZScoreParams, dim: usize) -> Self {
        Self { params, n: 0, stats: vec![Welford::default(); dim] }
    }

    /// |z| of each feature of `x`, written into `out`.
    pub fn feature_z(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        if self.n < 2 || (self.n as usize) < self.params.warm_up {
            out.resize(x.len(), 0.0);
            return;
        }
        let n = self.n as f64;
        out.extend(x.iter().zip(&self.stats).map(|(v, s)| {
            let std = (s.m2 / n).sqrt();
            if std > 0.0 {
                ((v - s.mean) / std).abs()
            } else {
                0.0
            }
        }));
    }
}

impl Detector for ZScore {
    fn learn_one(&mut self, x: &[f64]) {
        self.n += 1;
        let n = self.n as f64;
        for (v, s) in x.iter().zip(self.stats.iter_mut()) {
            let delta = v - s.mean;
            s.mean += delta / n;
            s.m2 += delta * (v - s.mean);
        }
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        if self.n < 2 || (self.n as usize) < self.params.warm_up {
            return 0.0;
        }
        let n = self.n as f64;
        x.iter()
            .zip(&self.stats)
            .map(|(v, s)| {
                let std = (s.m2 / n).sqrt();
                if std > 0.0 {
                    ((v - s.mean) / std).abs()
                } else {
                    0.0
                }
            })
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welford_matches_population_statistics() {
        let mut z = ZScore::new(ZScoreParams { warm_up: 2 }, 1);
        for v in [1.0, 2.0, 3.0, 4.0] {
            z.learn_one(&[v]);
        }
        // mean 2.5, population std sqrt(1.25)
        let s = z.score_one(&[5.0]);
        assert!((s - 2.5 / 1.25f64.sqrt()).abs() < 1e-12, "{s}");
    }
}
