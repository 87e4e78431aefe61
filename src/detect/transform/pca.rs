//! Incremental PCA: ONAD's `IncrementalPCA` (`onad.transform.projection.incremental_pca`),
//! itself the `incRpca` algorithm of the R package onlinePCA (Cardot & Degras 2015, after
//! Brand 2002 and Arora et al. 2012).
//!
//! Warm-up: the first `n0` points are kept; then a thin SVD of that (uncentred, as ONAD) matrix
//! gives the initial `n_components` eigenvalues `s_i^2 / (n0 - 1)` and eigenvectors. Online
//! phase, for each new point x with weight f (`forgetting_factor`, or `1/n` where n counts the
//! points seen before this one, as ONAD): eigenvalues shrink to (1 - f)λ, the scaled point
//! √f·x is projected onto the subspace, a residual larger than `tol` extends the basis by one
//! vector, and the small symmetric problem diag(λ) + x̂x̂ᵀ is re-diagonalised; the top
//! `n_components` are kept.
//!
//! Output: the projections Uᵀx onto the current components (`n_components` values, unbounded);
//! zeros during warm-up. Eigenvectors are only defined up to sign; ONAD inherits whatever sign
//! LAPACK's general `eig` returns, which can flip between points. Here each component's sign
//! is fixed so that its largest-magnitude loading is positive, so a component keeps its
//! orientation from one point to the next (ONAD's outputs equal ours up to that sign).

use nalgebra::{DMatrix, DVector, SymmetricEigen, SVD};
use serde::{Deserialize, Serialize};

use crate::detect::params::{invalid, SpecError};
use crate::detect::Transformer;

/// Iteration cap for the eigen/SVD solvers: never hit on finite data, but a bound means a
/// pathological input degrades (the update is skipped) instead of spinning.
const MAX_SOLVER_ITERATIONS: usize = 10_000;

/// Checked parameters of [`IncrementalPca`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncrementalPcaParams {
    /// Components kept (ONAD's `n_components`, required).
    pub n_components: usize,
    /// Warm-up points before the first SVD (ONAD's `n0`, default 50).
    pub n0: usize,
    /// Residual norm below which a point does not extend the subspace (ONAD's `tol`, 1e-7).
    pub tol: f64,
    /// Weight of each new point in (0, 1); `None` = 1/n, a stationary process (ONAD's default).
    pub forgetting_factor: Option<f64>,
}

/// `pca`'s `params` as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncrementalPcaSpec {
    /// See [`IncrementalPcaParams::n_components`] (required).
    pub n_components: Option<usize>,
    /// See [`IncrementalPcaParams::n0`].
    pub n0: usize,
    /// See [`IncrementalPcaParams::tol`].
    pub tol: f64,
    /// See [`IncrementalPcaParams::forgetting_factor`].
    pub forgetting_factor: Option<f64>,
}

impl Default for IncrementalPcaSpec {
    fn default() -> Self {
        Self { n_components: None, n0: 50, tol: 1e-7, forgetting_factor: None }
    }
}

impl IncrementalPcaSpec {
    /// Check `pca` parameters from config.
    pub fn check(self) -> Result<IncrementalPcaParams, SpecError> {
        let bad = invalid("pca");
        let Self { n_components, n0, tol, forgetting_factor } = self;
        let n_components = n_components.ok_or_else(|| bad("n_components", "is required (number of components to keep)".into()))?;
        if n_components == 0 {
            return Err(bad("n_components", "must be at least 1".into()));
        }
        if n0 < n_components {
            return Err(bad("n0", format!("{n0} is below n_components ({n_components}): the warm-up SVD needs at least that many points")));
        }
        if tol < 0.0 {
            return Err(bad("tol", "must be >= 0".into()));
        }
        if let Some(f) = forgetting_factor {
            if !(f > 0.0 && f < 1.0) {
                return Err(bad("forgetting_factor", format!("{f} is not in (0, 1)")));
            }
        }
        Ok(IncrementalPcaParams { n_components, n0, tol, forgetting_factor })
    }
}

impl IncrementalPcaParams {
    /// Check that the input has at least `n_components` features.
    pub fn check_dim(&self, dim: usize) -> Result<(), SpecError> {
        if self.n_components > dim {
            return Err(SpecError::InvalidParam {
                model: "pca".into(),
                key: "n_components".into(),
                reason: format!("{} exceeds the number of input features ({dim})", self.n_components),
            });
        }
        Ok(())
    }
}

/// Online PCA state (plain data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncrementalPca {
    /// Checked parameters (`n_components` already clamped to the input dimension).
    params: IncrementalPcaParams,
    /// Input features.
    dim: usize,
    /// Points learned.
    n_seen: u64,
    /// Warm-up rows, row-major `n × dim`; emptied once the SVD has run.
    warm: Vec<f64>,
    /// Eigenvalues, descending (empty during warm-up).
    values: Vec<f64>,
    /// Eigenvectors, column-major `dim × values.len()`.
    vectors: Vec<f64>,
}

impl IncrementalPca {
    /// A PCA over `dim` input features. `n_components` above `dim` is clamped (the factory
    /// reports it as an error through [`IncrementalPcaParams::check_dim`] first).
    pub fn new(mut params: IncrementalPcaParams, dim: usize) -> Self {
        params.n_components = params.n_components.min(dim).max(1);
        let warm = Vec::with_capacity(params.n0 * dim);
        Self { params, dim, n_seen: 0, warm, values: Vec::new(), vectors: Vec::new() }
    }

    /// Output dimension.
    pub fn out_dim(&self) -> usize {
        self.params.n_components
    }

    /// Current eigenvalues (descending; empty during warm-up).
    pub fn eigenvalues(&self) -> &[f64] {
        &self.values
    }

    fn initialise(&mut self) {
        let n = self.warm.len() / self.dim;
        // The SVD runs on the matrix divided by its largest magnitude: finite but huge inputs
        // (1e300 after a scaler) would overflow inside the solver to NaN singular values, on
        // which nalgebra's sort panics (found by tests/fuzz_pipeline.rs). Singular vectors are
        // unchanged by the scale; singular values are multiplied back. A warm-up holding a
        // non-finite value has no principal directions: it starts over (bounded memory).
        let scale = self.warm.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if !scale.is_finite() || self.warm.iter().any(|v| v.is_nan()) {
            self.warm.clear();
            return;
        }
        let scale = if scale == 0.0 { 1.0 } else { scale };
        let x = DMatrix::from_row_slice(n, self.dim, &self.warm) / scale;
        let Some(svd) = SVD::try_new(x, false, true, f64::EPSILON, MAX_SOLVER_ITERATIONS) else { return };
        let Some(vt) = svd.v_t else { return };
        let k = self.params.n_components.min(svd.singular_values.len());
        let denom = ((n.max(2) - 1) as f64).sqrt();
        self.values = svd.singular_values.iter().take(k).map(|s| (s * scale / denom).powi(2)).collect();
        self.vectors = Vec::with_capacity(self.dim * k);
        for c in 0..k {
            self.vectors.extend((0..self.dim).map(|j| vt[(c, j)]));
        }
        self.fix_signs();
        self.warm = Vec::new();
    }

    fn update(&mut self, x: &[f64]) {
        let d = self.dim;
        let k = self.values.len();
        let f = self.params.forgetting_factor.unwrap_or(1.0 / self.n_seen as f64);
        let sf = f.sqrt();
        let u = DMatrix::from_column_slice(d, k, &self.vectors);
        let xs = DVector::from_iterator(d, x.iter().map(|v| sf * v));
        let mut xhat = u.tr_mul(&xs);
        let residual = &xs - &u * &xhat;
        let norm = residual.norm();
        let mut lambda: Vec<f64> = self.values.iter().map(|l| (1.0 - f) * l).collect();
        let mut basis = u;
        if norm >= self.params.tol {
            lambda.push(0.0);
            xhat = xhat.push(norm);
            basis = basis.insert_column(k, 0.0);
            basis.column_mut(k).copy_from(&(residual / norm));
        }
        let m = lambda.len();
        let mut small = &xhat * xhat.transpose();
        for (i, l) in lambda.iter().enumerate() {
            small[(i, i)] += l;
        }
        let Some(eig) = SymmetricEigen::try_new(small, f64::EPSILON, MAX_SOLVER_ITERATIONS) else { return };
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|a, b| eig.eigenvalues[*b].total_cmp(&eig.eigenvalues[*a]));
        order.truncate(self.params.n_components);
        self.values = order.iter().map(|&i| eig.eigenvalues[i]).collect();
        let mut rot = DMatrix::zeros(m, order.len());
        for (c, &i) in order.iter().enumerate() {
            rot.column_mut(c).copy_from(&eig.eigenvectors.column(i));
        }
        let new = basis * rot;
        self.vectors.clear();
        self.vectors.extend_from_slice(new.as_slice());
        self.fix_signs();
    }

    /// Orient each component so that its largest-magnitude loading is positive.
    fn fix_signs(&mut self) {
        for col in self.vectors.chunks_exact_mut(self.dim) {
            let mut big = 0.0f64;
            for v in col.iter() {
                if v.abs() > big.abs() {
                    big = *v;
                }
            }
            if big < 0.0 {
                col.iter_mut().for_each(|v| *v = -*v);
            }
        }
    }
}

impl Transformer for IncrementalPca {
    fn learn_one(&mut self, x: &[f64]) {
        if self.values.is_empty() {
            self.warm.extend_from_slice(x);
            if self.warm.len() >= self.params.n0 * self.dim {
                self.initialise();
            }
        } else {
            self.update(x);
        }
        self.n_seen += 1;
    }

    fn transform_one(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        if self.values.is_empty() {
            out.resize(self.params.n_components, 0.0);
            return;
        }
        out.extend(self.vectors.chunks_exact(self.dim).map(|col| col.iter().zip(x).map(|(a, b)| a * b).sum::<f64>()));
        // Fewer components than asked only if the warm-up SVD was short; keep the width fixed.
        out.resize(self.params.n_components, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n_components: usize, n0: usize) -> IncrementalPcaParams {
        IncrementalPcaParams { n_components, n0, tol: 1e-7, forgetting_factor: None }
    }

    /// Points on a line through the origin along (3, 4)/5, plus tiny noise on the other axis.
    fn line_point(i: usize) -> [f64; 2] {
        let t = ((i * 7919) % 101) as f64 / 10.0 - 5.0;
        let e = ((i * 104_729) % 13) as f64 * 1e-4;
        [0.6 * t - 0.8 * e, 0.8 * t + 0.6 * e]
    }

    #[test]
    fn pca_outputs_zeros_during_warm_up_then_finds_the_dominant_direction() {
        let mut pca = IncrementalPca::new(params(1, 10), 2);
        let mut out = Vec::new();
        for i in 0..9 {
            pca.learn_one(&line_point(i));
        }
        pca.transform_one(&[3.0, 4.0], &mut out);
        assert_eq!(out, vec![0.0]);
        for i in 9..500 {
            pca.learn_one(&line_point(i));
        }
        pca.transform_one(&[3.0, 4.0], &mut out);
        assert!((out[0] - 5.0).abs() < 1e-3, "projection onto (0.6, 0.8) with a positive sign: {out:?}");
        pca.transform_one(&[-4.0, 3.0], &mut out);
        assert!(out[0].abs() < 1e-3, "orthogonal direction is dropped: {out:?}");
    }

    #[test]
    fn pca_requires_n_components_and_enough_warm_up() {
        assert!(IncrementalPcaSpec::default().check().unwrap_err().to_string().contains("n_components"));
        let p = IncrementalPcaSpec { n_components: Some(5), n0: 3, ..Default::default() };
        assert!(p.check().unwrap_err().to_string().contains("n0"));
    }

    #[test]
    fn huge_and_nan_warm_up_values_neither_panic_nor_grow_the_warm_up() {
        let mut pca = IncrementalPca::new(params(1, 4), 2);
        let mut out = Vec::new();
        for i in 0..4 {
            pca.learn_one(&[1e300 * (i as f64 + 1.0), -1e308]);
        }
        pca.transform_one(&[1e300, 1.0], &mut out);
        assert!(out.iter().all(|v| !v.is_nan()), "{out:?}");
        let mut pca = IncrementalPca::new(params(1, 4), 2);
        for i in 0..40 {
            pca.learn_one(&[f64::NAN, i as f64]);
        }
        assert!(pca.warm.len() < 8, "a NaN warm-up starts over instead of growing");
    }
}
