//! Moving Mahalanobis distance: ONAD's `MovingMahalanobisDistance` (`onad.model.stat.multi`).
//!
//! The model is a FIFO window of the last `window_size` learned points. Raw score =
//! (x − μ)ᵀ Σ⁻¹ (x − μ), the *squared* Mahalanobis distance (as ONAD returns it), with μ and
//! Σ the window's mean and sample covariance (ddof = 1, as `np.cov`); 0 while the window holds
//! fewer than max(3, d + 1) points. Range: [0, inf). (ONAD scores from 3 points on; with fewer
//! than d + 1 points the covariance is singular and its `np.linalg.inv` returns rounding noise
//! of order 1e16, so those scores carry no information.)
//!
//! ONAD rebuilds and inverts the covariance on every score (O(w·d² + d³)). Here the mean and
//! the co-moment matrix are updated as points enter and leave the window (O(d²) per point,
//! recomputed exactly from the window every `window_size` points to shed rounding drift), and
//! scoring solves with a Cholesky factor (O(d³/6)). A singular covariance (a constant feature,
//! fewer points than features) is regularised as ONAD's fallback does: + 1e-6·trace/d·I
//! (+ 1e-6·I when the trace is 0).

use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::Detector;

/// Checked parameters of [`Mahalanobis`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MahalanobisParams {
    /// Points in the moving window (ONAD requires it, no default; 1000 here).
    pub window_size: usize,
}

/// `mahalanobis`'s `model_params` as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MahalanobisSpec {
    /// See [`MahalanobisParams::window_size`].
    pub window_size: usize,
}

impl Default for MahalanobisSpec {
    fn default() -> Self {
        Self { window_size: 1000 }
    }
}

impl MahalanobisSpec {
    /// Check `mahalanobis` parameters from config.
    pub fn check(self) -> Result<MahalanobisParams, SpecError> {
        let window_size = self.window_size;
        if window_size < 3 {
            let reason = format!("{window_size} is below 3, the fewest points a covariance is estimated from");
            return Err(invalid("mahalanobis")("window_size", reason));
        }
        Ok(MahalanobisParams { window_size })
    }
}

/// Moving-window Mahalanobis detector (plain data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mahalanobis {
    /// Checked parameters.
    params: MahalanobisParams,
    /// Features per point.
    dim: usize,
    /// The window, row-major ring.
    data: Vec<f64>,
    /// Points in the window.
    len: usize,
    /// Oldest slot once full.
    next: usize,
    /// Window mean.
    mean: Vec<f64>,
    /// Window co-moment Σ (x − μ)(x − μ)ᵀ, row-major `dim × dim`.
    comoment: Vec<f64>,
    /// Removals since the last exact recompute.
    since_recompute: usize,
    /// Scratch: covariance / Cholesky factor (not state).
    #[serde(skip)]
    chol: Vec<f64>,
    /// Scratch: x − μ, then the forward-substituted vector (not state).
    #[serde(skip)]
    diff: Vec<f64>,
}

impl Mahalanobis {
    /// A detector over `dim` features.
    pub fn new(params: MahalanobisParams, dim: usize) -> Self {
        Self {
            params,
            dim,
            data: Vec::new(),
            len: 0,
            next: 0,
            mean: vec![0.0; dim],
            comoment: vec![0.0; dim * dim],
            since_recompute: 0,
            chol: Vec::new(),
            diff: Vec::new(),
        }
    }

    fn add(&mut self, x: &[f64], n_after: f64) {
        let d = self.dim;
        self.diff.clear();
        self.diff.extend(x.iter().zip(&self.mean).map(|(v, m)| v - m));
        for (m, dv) in self.mean.iter_mut().zip(&self.diff) {
            *m += dv / n_after;
        }
        for (i, (xi, mi)) in x.iter().zip(&self.mean).enumerate() {
            let after_i = xi - mi;
            for (c, dj) in self.comoment[i * d..(i + 1) * d].iter_mut().zip(&self.diff) {
                *c += dj * after_i;
            }
        }
    }

    fn remove(&mut self, y: &[f64], n_after: f64) {
        let d = self.dim;
        self.diff.clear();
        self.diff.extend(y.iter().zip(&self.mean).map(|(v, m)| v - m));
        for (m, dv) in self.mean.iter_mut().zip(&self.diff) {
            *m -= dv / n_after;
        }
        for (i, (yi, mi)) in y.iter().zip(&self.mean).enumerate() {
            let after_i = yi - mi;
            for (c, dj) in self.comoment[i * d..(i + 1) * d].iter_mut().zip(&self.diff) {
                *c -= dj * after_i;
            }
        }
    }

    fn recompute(&mut self) {
        let d = self.dim;
        let n = self.len as f64;
        self.mean.iter_mut().for_each(|m| *m = 0.0);
        for row in self.data.chunks_exact(d) {
            self.mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        self.mean.iter_mut().for_each(|m| *m /= n);
        self.comoment.iter_mut().for_each(|c| *c = 0.0);
        for row in self.data.chunks_exact(d) {
            for i in 0..d {
                let a = row[i] - self.mean[i];
                for (c, (rj, mj)) in self.comoment[i * d..(i + 1) * d].iter_mut().zip(row.iter().zip(&self.mean)) {
                    *c += a * (rj - mj);
                }
            }
        }
        self.since_recompute = 0;
    }

    /// Cholesky factor of cov + ridge·I into `self.chol` (lower, row-major); false if not PD.
    fn factor(&mut self, ridge: f64) -> bool {
        let d = self.dim;
        let denom = (self.len - 1) as f64;
        self.chol.clear();
        self.chol.extend(self.comoment.iter().map(|c| c / denom));
        for i in 0..d {
            self.chol[i * d + i] += ridge;
        }
        for j in 0..d {
            let mut s = self.chol[j * d + j];
            for k in 0..j {
                s -= self.chol[j * d + k] * self.chol[j * d + k];
            }
            if s.is_nan() || s <= 0.0 || !s.is_finite() {
                return false;
            }
            let l = s.sqrt();
            self.chol[j * d + j] = l;
            for i in j + 1..d {
                let mut t = self.chol[i * d + j];
                for k in 0..j {
                    t -= self.chol[i * d + k] * self.chol[j * d + k];
                }
                self.chol[i * d + j] = t / l;
            }
        }
        true
    }
}

impl Mahalanobis {
    /// Each feature's term (x − μ)_i · (Σ⁻¹(x − μ))_i of the score (they sum to it; a term can
    /// be negative when correlated features deviate against each other); zeros when the score
    /// is 0.
    pub fn feature_contributions(&mut self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.resize(x.len(), 0.0);
        if self.score_one(x) == 0.0 {
            return;
        }
        // score_one left the Cholesky factor L in `chol` and y = L⁻¹(x − μ) in `diff`;
        // Σ⁻¹(x − μ) = L⁻ᵀ y by back substitution.
        let d = self.dim;
        let mut z = self.diff.clone();
        for i in (0..d).rev() {
            let mut t = z[i];
            for (k, zk) in z.iter().enumerate().skip(i + 1) {
                t -= self.chol[k * d + i] * zk;
            }
            z[i] = t / self.chol[i * d + i];
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = (x[i] - self.mean[i]) * z[i];
        }
    }
}

impl Detector for Mahalanobis {
    fn learn_one(&mut self, x: &[f64]) {
        let d = self.dim;
        if x.len() != d {
            return;
        }
        if self.len < self.params.window_size {
            self.data.extend_from_slice(x);
            self.len += 1;
            self.add(x, self.len as f64);
            return;
        }
        let s = self.next;
        let old: Vec<f64> = self.data[s * d..(s + 1) * d].to_vec();
        self.remove(&old, (self.len - 1) as f64);
        self.data[s * d..(s + 1) * d].copy_from_slice(x);
        self.add(x, self.len as f64);
        self.next = (s + 1) % self.params.window_size;
        self.since_recompute += 1;
        if self.since_recompute >= self.params.window_size {
            self.recompute();
        }
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        let d = self.dim;
        if self.len < 3 || self.len <= d || x.len() != d {
            return 0.0;
        }
        if !self.factor(0.0) {
            let trace: f64 = (0..d).map(|i| self.comoment[i * d + i]).sum::<f64>() / (self.len - 1) as f64;
            let ridge = if trace > 0.0 { 1e-6 * trace / d as f64 } else { 1e-6 };
            if !self.factor(ridge) {
                return 0.0;
            }
        }
        // Solve L y = x − μ; the score is ‖y‖².
        self.diff.clear();
        self.diff.extend(x.iter().zip(&self.mean).map(|(v, m)| v - m));
        let mut score = 0.0;
        for i in 0..d {
            let mut t = self.diff[i];
            for k in 0..i {
                t -= self.chol[i * d + k] * self.diff[k];
            }
            let y = t / self.chol[i * d + i];
            self.diff[i] = y;
            score += y * y;
        }
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_direct_inverse_on_a_small_window() {
        let mut m = Mahalanobis::new(MahalanobisParams { window_size: 4 }, 2);
        for p in [[9.0, 9.0], [0.0, 0.0], [2.0, 1.0], [1.0, 3.0], [4.0, 2.0]] {
            m.learn_one(&p);
        }
        // window: (0,0) (2,1) (1,3) (4,2): mean (1.75, 1.5)
        // cov (ddof 1): sxx = 8.75/3, syy = 5/3, sxy = 2.5/3
        let (sxx, syy, sxy) = (8.75 / 3.0, 5.0 / 3.0, 2.5 / 3.0);
        let det = sxx * syy - sxy * sxy;
        let (dx, dy) = (3.0 - 1.75, -1.0 - 1.5);
        let want = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / det;
        let got = m.score_one(&[3.0, -1.0]);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn constant_feature_is_regularised_not_infinite() {
        let mut m = Mahalanobis::new(MahalanobisParams { window_size: 10 }, 2);
        for i in 0..10 {
            m.learn_one(&[i as f64, 1.0]);
        }
        let s = m.score_one(&[4.5, 1.0]);
        assert!(s.is_finite() && s < 1e-9, "{s}");
        assert!(m.score_one(&[4.5, 2.0]).is_finite());
    }

    #[test]
    fn snapshot_restore_continues_bit_identically() {
        use crate::detect::testutil::{assert_restore_continues_bit_identically, spec};
        use crate::detect::ParamValue;
        let spec = spec("mahalanobis", &[("window_size", ParamValue::Int(100))], &[]);
        assert_restore_continues_bit_identically(&spec, 6, 700, 300);
    }

    #[test]
    fn feature_contributions_sum_to_the_score_and_name_the_shifted_feature() {
        let mut m = Mahalanobis::new(MahalanobisParams { window_size: 200 }, 3);
        for i in 0..200 {
            let t = i as f64;
            m.learn_one(&[(t * 0.37).sin(), (t * 0.91).cos(), ((t * 1.3).sin() + (t * 0.2).cos()) / 2.0]);
        }
        let x = [0.1, 6.0, 0.0];
        let score = m.score_one(&x);
        let mut c = Vec::new();
        m.feature_contributions(&x, &mut c);
        assert!((c.iter().sum::<f64>() - score).abs() < 1e-9 * score, "{c:?} vs {score}");
        assert!(c[1] > c[0] && c[1] > c[2], "{c:?}");
    }
}
