//! Sparse random projection: ONAD's `RandomProjection`
//! (`onad.transform.projection.random_projection`), after Achlioptas (2003), "Database-friendly
//! random projections: Johnson-Lindenstrauss with binary coins".
//!
//! A fixed `dim × n_components` matrix with entries √3·{−1, 0, +1} drawn with probabilities
//! {1/6, 2/3, 1/6}; output = Rᵀx (unbounded, distances preserved in expectation). The matrix
//! is drawn once from a seeded RNG (the `seed` parameter, or the pipeline's per-key seed) and
//! kept in the state, so a restored pipeline projects identically. ONAD draws from numpy's
//! generator, so the matrices differ from ONAD's for the same seed.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::detect::params::{invalid, SpecError};
use crate::detect::Transformer;

/// Checked parameters of [`RandomProjection`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomProjectionParams {
    /// Output dimension (ONAD's `n_components`, required, <= input features).
    pub n_components: usize,
    /// Fixed seed; `None` = the pipeline's per-key seed.
    pub seed: Option<u64>,
}

/// `random_projection`'s `params` as config writes them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomProjectionSpec {
    /// See [`RandomProjectionParams::n_components`] (required).
    pub n_components: Option<usize>,
    /// See [`RandomProjectionParams::seed`].
    pub seed: Option<u64>,
}

impl RandomProjectionSpec {
    /// Check `random_projection` parameters from config.
    pub fn check(self) -> Result<RandomProjectionParams, SpecError> {
        let bad = invalid("random_projection");
        let n_components = self.n_components.ok_or_else(|| bad("n_components", "is required (output dimension)".into()))?;
        if n_components == 0 {
            return Err(bad("n_components", "must be at least 1".into()));
        }
        Ok(RandomProjectionParams { n_components, seed: self.seed })
    }
}

impl RandomProjectionParams {
    /// Check that the input has at least `n_components` features (as ONAD requires).
    pub fn check_dim(&self, dim: usize) -> Result<(), SpecError> {
        if self.n_components > dim {
            return Err(SpecError::InvalidParam {
                model: "random_projection".into(),
                key: "n_components".into(),
                reason: format!("{} exceeds the number of input features ({dim})", self.n_components),
            });
        }
        Ok(())
    }
}

/// A fixed sparse random projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomProjection {
    /// Input features.
    dim: usize,
    /// Output dimension.
    n_components: usize,
    /// The matrix, column-major: column c (the weights of output c) is
    /// `matrix[c*dim..(c+1)*dim]`.
    matrix: Vec<f64>,
}

impl RandomProjection {
    /// Draw the projection for `dim` inputs from `params.seed`, or else `pipeline_seed`.
    pub fn new(params: &RandomProjectionParams, dim: usize, pipeline_seed: u64) -> Self {
        let n_components = params.n_components.min(dim).max(1);
        let mut rng = Pcg64Mcg::seed_from_u64(params.seed.unwrap_or(pipeline_seed));
        let s = 3f64.sqrt();
        let matrix = (0..dim * n_components)
            .map(|_| match rng.random_range(0..6u32) {
                0 => -s,
                1 => s,
                _ => 0.0,
            })
            .collect();
        Self { dim, n_components, matrix }
    }

    /// Output dimension.
    pub fn out_dim(&self) -> usize {
        self.n_components
    }
}

impl Transformer for RandomProjection {
    fn learn_one(&mut self, _x: &[f64]) {}

    fn transform_one(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.extend(self.matrix.chunks_exact(self.dim).map(|col| col.iter().zip(x).map(|(a, b)| a * b).sum::<f64>()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_is_seeded_sparse_and_sqrt3_scaled() {
        let p = RandomProjectionParams { n_components: 3, seed: None };
        let a = RandomProjection::new(&p, 50, 7);
        let b = RandomProjection::new(&p, 50, 7);
        let c = RandomProjection::new(&p, 50, 8);
        assert_eq!(a, b, "same seed, same matrix");
        assert_ne!(a, c, "another seed, another matrix");
        let zeros = a.matrix.iter().filter(|v| **v == 0.0).count();
        assert!((70..130).contains(&zeros), "about 2/3 of 150 entries are zero, got {zeros}");
        assert!(a.matrix.iter().all(|v| *v == 0.0 || (v.abs() - 3f64.sqrt()).abs() < 1e-15));
        let mut out = Vec::new();
        a.transform_one(&[1.0; 50], &mut out);
        assert_eq!(out.len(), 3);
    }
}
