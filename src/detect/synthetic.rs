//! Deterministic labelled synthetic streams for the quality benchmark and tests.
//!
//! Every stream is `dim` independent standard normal features (default 10) with a fraction of
//! outliers (default 1%, each point independently) that are labelled `true`. Pure and seeded:
//! the same [`StreamSpec`] always yields the same points, on every platform (normals come from
//! a Box-Muller transform over a PCG stream, not from a library whose algorithm may change).
//!
//! The kinds:
//! - [`StreamKind::ShiftAll`] (a): an outlier is shifted by `+shift` sigma on every feature.
//! - [`StreamKind::ShiftOne`] (b): an outlier is shifted by `+shift` sigma on one feature chosen
//!   uniformly at random per outlier.
//! - [`StreamKind::Drift`] (c): the mean of every feature drifts linearly from 0 to
//!   `drift` sigma over the stream; outliers are shifted as in (a) from the current mean, so
//!   a model that does not forget flags late normal points.
//! - [`StreamKind::ConstantThenVarying`] (d): feature 0 is the constant 1.0 for the first
//!   `constant_len` points, then standard normal; outliers as in (a) except that feature 0
//!   stays constant while it is (ONAD's OnlineIsolationForest crashes on this stream).

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// Which synthetic stream to generate (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// (a) outliers shifted on all features.
    ShiftAll,
    /// (b) outliers shifted on one random feature.
    ShiftOne,
    /// (c) gradual drift of the mean.
    Drift,
    /// (d) a feature constant, then varying.
    ConstantThenVarying,
}

impl StreamKind {
    /// All kinds, in benchmark order (a) to (d).
    pub const ALL: [StreamKind; 4] = [Self::ShiftAll, Self::ShiftOne, Self::Drift, Self::ConstantThenVarying];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::ShiftAll => "a_shift_all",
            Self::ShiftOne => "b_shift_one",
            Self::Drift => "c_drift",
            Self::ConstantThenVarying => "d_constant_then_varying",
        }
    }
}

/// Parameters of one synthetic stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// Which stream.
    pub kind: StreamKind,
    /// Number of points.
    pub len: usize,
    /// Number of features.
    pub dim: usize,
    /// Probability that a point is an outlier.
    pub outlier_rate: f64,
    /// Outlier shift in standard deviations.
    pub shift: f64,
    /// Total mean drift over the stream, in standard deviations (kind `Drift` only).
    pub drift: f64,
    /// Points for which feature 0 is constant (kind `ConstantThenVarying` only).
    pub constant_len: usize,
    /// RNG seed.
    pub seed: u64,
}

impl StreamSpec {
    /// The benchmark's stream of `kind`: 20,000 points, 10 features, 1% outliers, +6 sigma,
    /// drift of 5 sigma, feature 0 constant for 1,500 points.
    pub fn benchmark(kind: StreamKind, seed: u64) -> Self {
        Self { kind, len: 20_000, dim: 10, outlier_rate: 0.01, shift: 6.0, drift: 5.0, constant_len: 1_500, seed }
    }
}

/// Points and their labels (`true` = outlier).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledStream {
    /// One dense point per row, `dim` features each.
    pub points: Vec<Vec<f64>>,
    /// `labels[i]` says whether `points[i]` is an outlier.
    pub labels: Vec<bool>,
}

/// Generate the stream described by `spec`.
pub fn generate(spec: &StreamSpec) -> LabelledStream {
    let mut rng = Pcg64Mcg::seed_from_u64(spec.seed);
    let mut points = Vec::with_capacity(spec.len);
    let mut labels = Vec::with_capacity(spec.len);
    let mut normals = Normals::default();
    for i in 0..spec.len {
        let mut x: Vec<f64> = (0..spec.dim).map(|_| normals.next(&mut rng)).collect();
        let outlier = rng.random::<f64>() < spec.outlier_rate;
        let constant_now = spec.kind == StreamKind::ConstantThenVarying && i < spec.constant_len;
        if outlier {
            match spec.kind {
                StreamKind::ShiftOne => {
                    if spec.dim > 0 {
                        let f = rng.random_range(0..spec.dim);
                        x[f] += spec.shift;
                    }
                }
                _ => x.iter_mut().for_each(|v| *v += spec.shift),
            }
        }
        if spec.kind == StreamKind::Drift && spec.len > 1 {
            let offset = spec.drift * i as f64 / (spec.len - 1) as f64;
            x.iter_mut().for_each(|v| *v += offset);
        }
        if constant_now && spec.dim > 0 {
            x[0] = 1.0;
        }
        points.push(x);
        labels.push(outlier);
    }
    LabelledStream { points, labels }
}

/// Standard normals by the Box-Muller transform, caching the second value of each pair.
#[derive(Default)]
struct Normals {
    /// The unused second normal of the last pair.
    spare: Option<f64>,
}

impl Normals {
    fn next(&mut self, rng: &mut Pcg64Mcg) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_spec_gives_the_same_stream_and_seeds_differ() {
        let spec = StreamSpec { len: 500, ..StreamSpec::benchmark(StreamKind::ShiftOne, 7) };
        assert_eq!(generate(&spec), generate(&spec));
        assert_ne!(generate(&spec), generate(&StreamSpec { seed: 8, ..spec.clone() }));
    }

    #[test]
    fn normal_points_are_standard_normal_and_outliers_are_about_one_percent() {
        let s = generate(&StreamSpec::benchmark(StreamKind::ShiftAll, 1));
        let normal: Vec<&Vec<f64>> = s.points.iter().zip(&s.labels).filter(|(_, l)| !**l).map(|(p, _)| p).collect();
        let n = normal.len() as f64;
        let mean = normal.iter().map(|p| p[3]).sum::<f64>() / n;
        let var = normal.iter().map(|p| (p[3] - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        let rate = s.labels.iter().filter(|l| **l).count() as f64 / s.labels.len() as f64;
        assert!((0.007..0.013).contains(&rate), "outlier rate {rate}");
        // Outliers are shifted by 6 on every feature: their mean is near 6.
        let out: Vec<&Vec<f64>> = s.points.iter().zip(&s.labels).filter(|(_, l)| **l).map(|(p, _)| p).collect();
        let out_mean = out.iter().map(|p| p.iter().sum::<f64>() / 10.0).sum::<f64>() / out.len() as f64;
        assert!((out_mean - 6.0).abs() < 0.3, "outlier mean {out_mean}");
    }

    #[test]
    fn shift_one_moves_a_single_feature() {
        let s = generate(&StreamSpec::benchmark(StreamKind::ShiftOne, 3));
        for (p, _) in s.points.iter().zip(&s.labels).filter(|(_, l)| **l) {
            // Exactly one feature of an outlier is far out in almost every case.
            let far = p.iter().filter(|v| **v > 3.5).count();
            assert!(far <= 2, "{p:?}");
        }
    }

    #[test]
    fn drift_moves_the_mean_and_constant_feature_is_constant_first() {
        let s = generate(&StreamSpec::benchmark(StreamKind::Drift, 2));
        let tail_mean = s.points[19_000..].iter().map(|p| p[0]).sum::<f64>() / 1000.0;
        assert!((tail_mean - 4.87).abs() < 0.2, "{tail_mean}");
        let s = generate(&StreamSpec::benchmark(StreamKind::ConstantThenVarying, 2));
        assert!(s.points[..1500].iter().all(|p| p[0] == 1.0));
        assert!(s.points[1500..1600].iter().any(|p| p[0] != 1.0));
    }
}
