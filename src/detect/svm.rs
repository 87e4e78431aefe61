//! Incremental one-class SVM with an adaptive RBF kernel: ONAD's
//! `IncrementalOneClassSVMAdaptiveKernel` (`onad.model.svm.adaptive`).
//!
//! The model is a budget of support vectors (SVs) with weights α and a threshold ρ:
//! f(x) = Σ α_j exp(−γ‖s(x) − s(sv_j)‖²) − ρ, where s(·) standardises each feature by its
//! running standard deviation. A learned point whose f(x) < −tolerance becomes a SV with
//! α = min(−f(x), 1/ν) (the first point gets 1/(10ν)); ρ is the median of f + ρ over the SVs;
//! past `sv_budget` the SV with the highest 0.4·α/α_max + 0.6·age/age_max is dropped;
//! every 20 points γ moves by `adaptation_rate` toward 1/(2·median pairwise distance²) of up to
//! 50 points sampled (seeded RNG) from the last `buffer_size` points, within `gamma_bounds`.
//! Raw score = −f(x) (larger = more anomalous); 0 before the first SV. Range: [−Σα, ρ], not
//! [0, 1], so it is calibrated by the pipeline.
//!
//! Three departures from ONAD's version:
//! - its running statistics skip the first point and then divide by a count that includes
//!   it; here Welford's mean and population variance include every point;
//! - its SVs stay in the standardisation of the moment they were added while new points use
//!   the current one; here SVs are stored raw and re-standardised whenever the per-feature
//!   scale has drifted by more than 1% (checked with the γ adaptation), and the query always
//!   uses the same scale as the SVs. The mean cancels in distances, so only the scale matters;
//! - its budget rule removes light, old SVs and keeps heavy ones (0.4·(1 − α/α_max)); here heavy
//!   ones go first (0.4·α/α_max), since a heavy SV is a point that was far outside the boundary.
//!   On 20,000-point streams of 10 Gaussian features with 1% outliers shifted +6σ, learn then
//!   score, ROC-AUC after 2,048 points (tests/detect_parity.rs, `scripts/onad_fixtures.py`):
//!   all features shifted, ONAD 0.935 vs 0.91–0.92 with ONAD's rule and 0.97 with this one;
//!   one feature shifted, ONAD 0.986 vs 0.986 and 0.995. After an abrupt change of regime the
//!   model still re-learns (old, light SVs keep aging out).
//!
//! Data layout: SVs are flat `Vec<f64>` rows (raw and scaled copies); ρ's inputs (each SV's
//! Σ α K) are maintained incrementally as SVs come and go (O(budget·d) per change, instead of
//! ONAD's O(budget²·d) kernel-matrix rebuild on every removal) and recomputed exactly whenever
//! γ or the scale changes.

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::Detector;

/// γ is adapted (and the scale checked) every this many learned points (ONAD's 20).
const ADAPT_EVERY: u64 = 20;
/// Relative scale drift that triggers re-standardising the SVs.
const SCALE_DRIFT: f64 = 0.01;
/// Added to standard deviations before dividing (ONAD's 1e-8).
const STD_EPS: f64 = 1e-8;

/// Checked parameters of [`AdaptiveSvm`] (names and defaults as ONAD's constructor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveSvmParams {
    /// Upper bound on the fraction of outliers; SV weights are capped at 1/ν (default 0.1).
    pub nu: f64,
    /// Starting RBF γ (default 1.0).
    pub initial_gamma: f64,
    /// γ is kept within these bounds (default (0.001, 100)).
    pub gamma_bounds: (f64, f64),
    /// Step of γ toward the median-distance heuristic (default 0.1).
    pub adaptation_rate: f64,
    /// Recent points kept for the γ heuristic (default 200).
    pub buffer_size: usize,
    /// Maximum number of SVs (default 100).
    pub sv_budget: usize,
    /// Margin violation needed to add a SV (default 1e-6).
    pub tolerance: f64,
    /// Fixed seed for the γ heuristic's sampling; `None` = the pipeline's per-key seed.
    pub seed: Option<u64>,
}

/// `adaptive_svm`'s `model_params` as config writes them (names and defaults of ONAD's
/// constructor).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveSvmSpec {
    /// See [`AdaptiveSvmParams::nu`].
    pub nu: f64,
    /// See [`AdaptiveSvmParams::initial_gamma`].
    pub initial_gamma: f64,
    /// See [`AdaptiveSvmParams::gamma_bounds`].
    pub gamma_bounds: (f64, f64),
    /// See [`AdaptiveSvmParams::adaptation_rate`].
    pub adaptation_rate: f64,
    /// See [`AdaptiveSvmParams::buffer_size`].
    pub buffer_size: usize,
    /// See [`AdaptiveSvmParams::sv_budget`].
    pub sv_budget: usize,
    /// See [`AdaptiveSvmParams::tolerance`].
    pub tolerance: f64,
    /// See [`AdaptiveSvmParams::seed`].
    pub seed: Option<u64>,
}

impl Default for AdaptiveSvmSpec {
    fn default() -> Self {
        Self {
            nu: 0.1,
            initial_gamma: 1.0,
            gamma_bounds: (0.001, 100.0),
            adaptation_rate: 0.1,
            buffer_size: 200,
            sv_budget: 100,
            tolerance: 1e-6,
            seed: None,
        }
    }
}

impl AdaptiveSvmSpec {
    /// Check `adaptive_svm` parameters from config.
    pub fn check(self) -> Result<AdaptiveSvmParams, SpecError> {
        let bad = invalid("adaptive_svm");
        let Self { nu, initial_gamma, gamma_bounds, adaptation_rate, buffer_size, sv_budget, tolerance, seed } = self;
        if !(nu > 0.0 && nu <= 1.0) {
            return Err(bad("nu", format!("{nu} is not in (0, 1]")));
        }
        if !(gamma_bounds.0 > 0.0 && gamma_bounds.0 <= gamma_bounds.1) {
            return Err(bad("gamma_bounds", format!("{gamma_bounds:?} must satisfy 0 < low <= high")));
        }
        if !(gamma_bounds.0..=gamma_bounds.1).contains(&initial_gamma) {
            return Err(bad("initial_gamma", format!("{initial_gamma} is outside gamma_bounds {gamma_bounds:?}")));
        }
        if !(0.0..=1.0).contains(&adaptation_rate) {
            return Err(bad("adaptation_rate", format!("{adaptation_rate} is not in [0, 1]")));
        }
        if buffer_size == 0 {
            return Err(bad("buffer_size", "must be at least 1".into()));
        }
        if sv_budget == 0 {
            return Err(bad("sv_budget", "must be at least 1".into()));
        }
        if tolerance < 0.0 {
            return Err(bad("tolerance", "must be >= 0".into()));
        }
        Ok(AdaptiveSvmParams { nu, initial_gamma, gamma_bounds, adaptation_rate, buffer_size, sv_budget, tolerance, seed })
    }
}

/// Adaptive-kernel incremental one-class SVM state (plain data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveSvm {
    /// Checked parameters.
    params: AdaptiveSvmParams,
    /// Features per point.
    dim: usize,
    /// Current RBF γ.
    gamma: f64,
    /// Points learned.
    n: u64,
    /// Welford running mean per feature.
    mean: Vec<f64>,
    /// Welford sum of squared deviations per feature.
    m2: Vec<f64>,
    /// The standardisation in force: 1/(std + 1e-8), or 1 where std is 0.
    scale: Vec<f64>,
    /// SVs as learned, row-major `n_sv × dim`.
    sv_raw: Vec<f64>,
    /// SVs multiplied by `scale`, row-major.
    sv_scaled: Vec<f64>,
    /// SV weights.
    alpha: Vec<f64>,
    /// Point count at which each SV was added (for its age).
    birth: Vec<u64>,
    /// Σ_j α_j K(sv_i, sv_j) for each SV i (ρ is their median).
    sv_value: Vec<f64>,
    /// Offset ρ.
    rho: f64,
    /// The last `buffer_size` learned points, raw, row-major ring.
    buffer: Vec<f64>,
    /// Next ring slot to overwrite once `buffer` is full.
    buffer_next: usize,
    /// RNG of the γ heuristic's sampling.
    rng: Pcg64Mcg,
    /// Scratch: the scaled query (not state).
    #[serde(skip)]
    query: Vec<f64>,
    /// Scratch for medians and kernel rows (not state).
    #[serde(skip)]
    tmp: Vec<f64>,
    /// Bumped whenever the decision function changes (SVs, ρ, γ, scale); not state.
    #[serde(skip)]
    version: u64,
    /// Input of the last `score_one` (see `last_score`); not state.
    #[serde(skip)]
    last_x: Vec<f64>,
    /// The last `score_one`'s (model version, f(x)). In the pipeline's default score-then-learn
    /// order, `learn_one` of the same point reuses f(x) instead of evaluating the budget's
    /// kernels again; the value is the same either way, so a restored model (empty cache)
    /// continues bit-identically. Not state.
    #[serde(skip)]
    last_score: Option<(u64, f64)>,
}

impl AdaptiveSvm {
    /// A detector over `dim` features; `seed` serves the γ heuristic unless `params.seed` is set.
    pub fn new(params: AdaptiveSvmParams, dim: usize, seed: u64) -> Self {
        let rng = Pcg64Mcg::seed_from_u64(params.seed.unwrap_or(seed));
        Self {
            gamma: params.initial_gamma,
            buffer: Vec::with_capacity(params.buffer_size.min(256) * dim),
            params,
            dim,
            n: 0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
            scale: vec![1.0; dim],
            sv_raw: Vec::new(),
            sv_scaled: Vec::new(),
            alpha: Vec::new(),
            birth: Vec::new(),
            sv_value: Vec::new(),
            rho: 0.0,
            buffer_next: 0,
            rng,
            query: Vec::new(),
            tmp: Vec::new(),
            version: 0,
            last_x: Vec::new(),
            last_score: None,
        }
    }

    /// Number of support vectors.
    pub fn n_support_vectors(&self) -> usize {
        self.alpha.len()
    }

    /// Current γ.
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    fn scale_query(&mut self, x: &[f64]) {
        self.query.clear();
        self.query.extend(x.iter().zip(&self.scale).map(|(v, s)| v * s));
    }

    /// Σ α_j K(query, sv_j) − ρ for the already scaled `self.query`.
    fn decision(&self) -> f64 {
        let mut sum = 0.0;
        for (sv, a) in self.sv_scaled.chunks_exact(self.dim).zip(&self.alpha) {
            sum += a * (-self.gamma * sq_dist(&self.query, sv)).exp();
        }
        sum - self.rho
    }

    fn update_rho(&mut self) {
        self.tmp.clear();
        self.tmp.extend_from_slice(&self.sv_value);
        self.rho = median(&mut self.tmp);
    }

    /// Add `self.query` (scaled) / `x` (raw) as a SV with weight `a`, then enforce the budget.
    fn add_sv(&mut self, x: &[f64], a: f64) {
        self.version += 1;
        let d = self.dim;
        // Kernel row of the new SV against the existing ones.
        let mut own = a; // K(x, x) = 1
        for (i, sv) in self.sv_scaled.chunks_exact(d).enumerate() {
            let k = (-self.gamma * sq_dist(&self.query, sv)).exp();
            own += self.alpha[i] * k;
            self.sv_value[i] += a * k;
        }
        self.sv_raw.extend_from_slice(x);
        self.sv_scaled.extend_from_slice(&self.query);
        self.alpha.push(a);
        self.birth.push(self.n);
        self.sv_value.push(own);
        if self.alpha.len() > self.params.sv_budget {
            self.remove_sv(self.removal_candidate());
        }
        self.update_rho();
    }

    /// Budget rule, by weight and age: the SV with the largest 0.4·α/α_max + 0.6·age/age_max
    /// goes (first on ties). ONAD uses 0.4·(1 − α/α_max), keeping the heaviest SVs; but α is
    /// the margin violation at insertion, so the heaviest SVs are the points that were farthest
    /// outside (the bounded SVs of ν-SVM theory, its margin errors), and keeping them lets a
    /// recurring kind of outlier become "normal". See the module docs for the measured effect.
    fn removal_candidate(&self) -> usize {
        let max_alpha = self.alpha.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let oldest = self.birth.iter().copied().min().unwrap_or(self.n);
        let max_age = (self.n - oldest) as f64;
        let mut best = (0, f64::NEG_INFINITY);
        for (i, (a, b)) in self.alpha.iter().zip(&self.birth).enumerate() {
            let age = (self.n - b) as f64;
            let s = 0.4 * (a / (max_alpha + 1e-8)) + 0.6 * (age / (max_age + 1e-8));
            if s > best.1 {
                best = (i, s);
            }
        }
        best.0
    }

    fn remove_sv(&mut self, r: usize) {
        let d = self.dim;
        let a = self.alpha[r];
        let removed = self.sv_scaled[r * d..(r + 1) * d].to_vec();
        for (i, sv) in self.sv_scaled.chunks_exact(d).enumerate() {
            if i != r {
                self.sv_value[i] -= a * (-self.gamma * sq_dist(&removed, sv)).exp();
            }
        }
        self.sv_raw.drain(r * d..(r + 1) * d);
        self.sv_scaled.drain(r * d..(r + 1) * d);
        self.alpha.remove(r);
        self.birth.remove(r);
        self.sv_value.remove(r);
    }

    /// Exact Σ α K for every SV under the current γ and scale, then ρ.
    fn recompute(&mut self) {
        self.version += 1;
        let d = self.dim;
        self.sv_scaled.clear();
        for row in self.sv_raw.chunks_exact(d) {
            self.sv_scaled.extend(row.iter().zip(&self.scale).map(|(v, s)| v * s));
        }
        let n = self.alpha.len();
        for v in self.sv_value.iter_mut() {
            *v = 0.0;
        }
        for i in 0..n {
            self.sv_value[i] += self.alpha[i];
            for j in i + 1..n {
                let k = (-self.gamma * sq_dist(&self.sv_scaled[i * d..(i + 1) * d], &self.sv_scaled[j * d..(j + 1) * d])).exp();
                self.sv_value[i] += self.alpha[j] * k;
                self.sv_value[j] += self.alpha[i] * k;
            }
        }
        self.update_rho();
    }

    /// The scale the running statistics call for now.
    fn target_scale(&self, i: usize) -> f64 {
        let std = if self.n > 0 { (self.m2[i] / self.n as f64).sqrt() } else { 0.0 };
        if std > 0.0 {
            1.0 / (std + STD_EPS)
        } else {
            1.0
        }
    }

    /// ONAD's heuristic: 1/(2·median²) of distances between sampled, buffer-standardised points.
    fn estimate_gamma(&mut self) -> f64 {
        let d = self.dim;
        let len = self.buffer.len() / d;
        if len < 10 {
            return self.gamma;
        }
        let mut mean = vec![0.0; d];
        for row in self.buffer.chunks_exact(d) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= len as f64);
        let mut std = vec![0.0; d];
        for row in self.buffer.chunks_exact(d) {
            std.iter_mut().zip(row.iter().zip(&mean)).for_each(|(s, (v, m))| *s += (v - m) * (v - m));
        }
        std.iter_mut().for_each(|s| *s = (*s / len as f64).sqrt() + STD_EPS);
        let m = len.min(50);
        let picked = rand::seq::index::sample(&mut self.rng, len, m);
        let rows: Vec<Vec<f64>> = picked
            .iter()
            .map(|i| self.buffer[i * d..(i + 1) * d].iter().zip(mean.iter().zip(&std)).map(|(v, (mu, s))| (v - mu) / s).collect())
            .collect();
        self.tmp.clear();
        for i in 0..m {
            for j in i + 1..(i + 10).min(m) {
                let dist = sq_dist(&rows[i], &rows[j]).sqrt();
                if dist > 1e-10 {
                    self.tmp.push(dist);
                }
            }
        }
        if self.tmp.is_empty() {
            return self.gamma;
        }
        let med = median(&mut self.tmp);
        (1.0 / (2.0 * med * med)).clamp(self.params.gamma_bounds.0, self.params.gamma_bounds.1)
    }

    /// Every `ADAPT_EVERY` points (and at 2, 4, 8, 16 so early scales are not stuck at 1):
    /// move γ toward the heuristic and re-standardise the SVs if the scale drifted.
    fn adapt(&mut self) {
        let early = self.n < ADAPT_EVERY && self.n.is_power_of_two() && self.n > 1;
        if self.n % ADAPT_EVERY != 0 && !early {
            return;
        }
        let mut changed = false;
        for i in 0..self.dim {
            let t = self.target_scale(i);
            if (t / self.scale[i] - 1.0).abs() > SCALE_DRIFT {
                changed = true;
            }
        }
        if changed {
            self.scale = (0..self.dim).map(|i| self.target_scale(i)).collect();
        }
        if self.n % ADAPT_EVERY == 0 {
            let target = self.estimate_gamma();
            let diff = target - self.gamma;
            if diff.abs() > 0.01 * self.gamma {
                self.gamma =
                    (self.gamma + self.params.adaptation_rate * diff).clamp(self.params.gamma_bounds.0, self.params.gamma_bounds.1);
                changed = true;
            }
        }
        if changed {
            self.recompute();
        }
    }
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let rem_a = a.chunks_exact(4).remainder();
    let rem_b = b.chunks_exact(4).remainder();
    for (x, y) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for i in 0..4 {
            let t = x[i] - y[i];
            acc[i] += t * t;
        }
    }
    let tail: f64 = rem_a.iter().zip(rem_b).map(|(x, y)| (x - y) * (x - y)).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// numpy's median (mean of the two middle values for an even count); 0 for no values.
fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let (_, hi, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        return hi;
    }
    let lo = v[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo + hi) / 2.0
}

impl Detector for AdaptiveSvm {
    /// The running mean of the learned points.
    fn reference(&self, out: &mut Vec<f64>) -> bool {
        out.clear();
        if self.n == 0 {
            return false;
        }
        out.extend_from_slice(&self.mean);
        true
    }

    fn learn_one(&mut self, x: &[f64]) {
        if x.len() != self.dim {
            return;
        }
        self.n += 1;
        let n = self.n as f64;
        for ((v, mean), m2) in x.iter().zip(self.mean.iter_mut()).zip(self.m2.iter_mut()) {
            let old = *mean;
            *mean += (v - old) / n;
            *m2 += (v - old) * (v - *mean);
        }
        let d = self.dim;
        if self.buffer.len() < self.params.buffer_size * d {
            self.buffer.extend_from_slice(x);
        } else {
            let s = self.buffer_next;
            self.buffer[s * d..(s + 1) * d].copy_from_slice(x);
            self.buffer_next = (s + 1) % self.params.buffer_size;
        }
        self.scale_query(x);
        if self.alpha.is_empty() {
            self.add_sv(x, 1.0 / (self.params.nu * 10.0));
            return;
        }
        let f = match self.last_score.take() {
            Some((version, f)) if version == self.version && self.last_x == x => f,
            _ => self.decision(),
        };
        if f < -self.params.tolerance {
            self.add_sv(x, (-f).min(1.0 / self.params.nu));
        }
        self.adapt();
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        if self.alpha.is_empty() || x.len() != self.dim {
            return 0.0;
        }
        self.scale_query(x);
        let f = self.decision();
        self.last_x.clear();
        self.last_x.extend_from_slice(x);
        self.last_score = Some((self.version, f));
        -f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svm() -> AdaptiveSvm {
        AdaptiveSvm::new(AdaptiveSvmSpec::default().check().unwrap(), 3, 1)
    }

    fn normal(i: u64) -> [f64; 3] {
        let h = |k: u64| (((i * 2_654_435_761 + k * 40_503) % 1000) as f64 / 1000.0 - 0.5) * 2.0;
        [h(1), 10.0 + h(2), -5.0 + 0.1 * h(3)]
    }

    #[test]
    fn outlier_scores_above_inliers_and_budget_holds() {
        let mut m = svm();
        for i in 0..2000 {
            m.learn_one(&normal(i));
        }
        assert!(m.n_support_vectors() <= 100);
        let inlier = m.score_one(&normal(5000));
        let outlier = m.score_one(&[6.0, 16.0, -2.0]);
        assert!(outlier > inlier, "outlier {outlier} vs inlier {inlier}");
    }

    #[test]
    fn incremental_sv_values_match_exact_recompute() {
        let mut m = svm();
        for i in 0..733 {
            m.learn_one(&normal(i));
        }
        let incremental = m.sv_value.clone();
        m.recompute();
        for (a, b) in incremental.iter().zip(&m.sv_value) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn score_then_learn_reuses_the_decision_without_changing_results() {
        let (mut cached, mut plain) = (svm(), svm());
        for i in 0..1500 {
            let x = normal(i);
            cached.score_one(&x);
            cached.learn_one(&x);
            // `plain` never scores, so it never has a cached decision to reuse.
            plain.learn_one(&x);
            assert_eq!(cached.sv_value, plain.sv_value, "point {i}");
            assert_eq!(cached.gamma.to_bits(), plain.gamma.to_bits(), "point {i}");
        }
        assert_eq!(cached.rho.to_bits(), plain.rho.to_bits());
        assert_eq!(cached.alpha, plain.alpha);
    }

    #[test]
    fn statistics_include_the_first_point() {
        let mut m = svm();
        m.learn_one(&[1.0, 2.0, 3.0]);
        m.learn_one(&[3.0, 2.0, 3.0]);
        assert_eq!(m.mean, vec![2.0, 2.0, 3.0]);
        assert_eq!(m.m2[0], 2.0);
    }

    #[test]
    fn median_matches_numpy() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn snapshot_restore_continues_bit_identically() {
        use crate::detect::testutil::{assert_restore_continues_bit_identically, spec};
        let spec = spec("adaptive_svm", &[], &[]);
        assert_restore_continues_bit_identically(&spec, 6, 700, 300);
    }
}
