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
//!
//! The seasonal kinds (time series; `dim` features, default 4, one reading every 5 minutes,
//! `season_length` = 288 readings = one day): feature j is `10 j + A sin(2 pi t / m + j) +
//! A/2 sin(4 pi t / m + 2 j) + N(0, 1)` (a daily cycle with a second harmonic, amplitude `A` =
//! `amplitude`, default 5 sigma). Outliers are *contextual*: a spike of `+-spike` sigma
//! (default 4, random sign) on one random feature, mostly inside the day's overall range, so
//! only a model of the time of day can tell it from the cycle.
//! - [`StreamKind::SeasonalSpikes`] (e): the cycle, noise and spikes.
//! - [`StreamKind::SeasonalLevelShift`] (f): as (e) at half the spike rate, plus level shifts:
//!   with probability `outlier_rate / 20` per reading one feature's level moves by +-`shift`
//!   sigma for good; the first 10 readings after a shift are labelled anomalies (the change).
//!   Also every ~3,000 readings the sensor goes silent for 1-40 readings (a gap in the
//!   timestamps), as real sensors do.
//! - [`StreamKind::SeasonalGrowing`] (g): as (e) with the amplitude growing linearly to
//!   3 `A` over the stream, so the range a point detector learned early is left behind.

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
    /// (e) daily cycle with contextual spikes.
    SeasonalSpikes,
    /// (f) daily cycle with level shifts, gaps and spikes.
    SeasonalLevelShift,
    /// (g) daily cycle of growing amplitude with spikes.
    SeasonalGrowing,
}

impl StreamKind {
    /// All kinds, in benchmark order (a) to (g).
    pub const ALL: [StreamKind; 7] = [
        Self::ShiftAll,
        Self::ShiftOne,
        Self::Drift,
        Self::ConstantThenVarying,
        Self::SeasonalSpikes,
        Self::SeasonalLevelShift,
        Self::SeasonalGrowing,
    ];

    /// Whether this is one of the seasonal time-series kinds (e)-(g).
    pub fn is_seasonal(self) -> bool {
        matches!(self, Self::SeasonalSpikes | Self::SeasonalLevelShift | Self::SeasonalGrowing)
    }

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::ShiftAll => "a_shift_all",
            Self::ShiftOne => "b_shift_one",
            Self::Drift => "c_drift",
            Self::ConstantThenVarying => "d_constant_then_varying",
            Self::SeasonalSpikes => "e_seasonal_spikes",
            Self::SeasonalLevelShift => "f_seasonal_level_shift",
            Self::SeasonalGrowing => "g_seasonal_growing",
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
    /// Readings per season (seasonal kinds).
    pub season_length: usize,
    /// Amplitude of the daily cycle in sigma (seasonal kinds).
    pub amplitude: f64,
    /// Contextual spike size in sigma (seasonal kinds).
    pub spike: f64,
    /// Time between readings, ms (the timestamps of every kind).
    pub interval_ms: i64,
    /// RNG seed.
    pub seed: u64,
}

impl StreamSpec {
    /// The benchmark's stream of `kind`: 20,000 points, 10 features, 1% outliers, +6 sigma,
    /// drift of 5 sigma, feature 0 constant for 1,500 points, a reading a second; the seasonal
    /// kinds: 4 features, a reading every 5 minutes, a day of 288 readings, amplitude 5 sigma,
    /// spikes of 4 sigma, level shifts of 6 sigma.
    pub fn benchmark(kind: StreamKind, seed: u64) -> Self {
        let base = Self {
            kind,
            len: 20_000,
            dim: 10,
            outlier_rate: 0.01,
            shift: 6.0,
            drift: 5.0,
            constant_len: 1_500,
            season_length: 288,
            amplitude: 5.0,
            spike: 4.0,
            interval_ms: 1_000,
            seed,
        };
        if kind.is_seasonal() {
            Self { dim: 4, interval_ms: 300_000, ..base }
        } else {
            base
        }
    }
}

/// Points and their labels (`true` = outlier).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledStream {
    /// One dense point per row, `dim` features each.
    pub points: Vec<Vec<f64>>,
    /// `labels[i]` says whether `points[i]` is an outlier.
    pub labels: Vec<bool>,
    /// When each point was taken (ms since the epoch; increasing, with gaps in kind (f)).
    pub timestamps_ms: Vec<i64>,
}

/// Timestamp of the first point of every stream (2026-01-01T00:00:00Z).
pub const START_MS: i64 = 1_767_225_600_000;

/// Generate the stream described by `spec`.
pub fn generate(spec: &StreamSpec) -> LabelledStream {
    if spec.kind.is_seasonal() {
        return generate_seasonal(spec);
    }
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
    let timestamps_ms = (0..spec.len as i64).map(|i| START_MS + i * spec.interval_ms).collect();
    LabelledStream { points, labels, timestamps_ms }
}

/// The seasonal kinds (e)-(g); see the module docs.
fn generate_seasonal(spec: &StreamSpec) -> LabelledStream {
    let mut rng = Pcg64Mcg::seed_from_u64(spec.seed);
    let mut normals = Normals::default();
    let (mut points, mut labels, mut timestamps_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut levels: Vec<f64> = (0..spec.dim).map(|j| 10.0 * j as f64).collect();
    let mut step: i64 = 0;
    let mut after_shift = 0usize;
    let m = spec.season_length.max(1) as f64;
    let spike_rate = if spec.kind == StreamKind::SeasonalLevelShift { spec.outlier_rate / 2.0 } else { spec.outlier_rate };
    for i in 0..spec.len {
        if spec.kind == StreamKind::SeasonalLevelShift && i > 0 && rng.random::<f64>() < 1.0 / 3_000.0 {
            step += rng.random_range(1..=40);
        }
        let amplitude = if spec.kind == StreamKind::SeasonalGrowing && spec.len > 1 {
            spec.amplitude * (1.0 + 2.0 * i as f64 / (spec.len - 1) as f64)
        } else {
            spec.amplitude
        };
        let t = std::f64::consts::TAU * step as f64 / m;
        let mut x: Vec<f64> = (0..spec.dim)
            .map(|j| {
                let j = j as f64;
                levels[j as usize] + amplitude * (t + j).sin() + amplitude / 2.0 * (2.0 * t + 2.0 * j).sin() + normals.next(&mut rng)
            })
            .collect();
        let mut label = false;
        if spec.kind == StreamKind::SeasonalLevelShift && spec.dim > 0 && rng.random::<f64>() < spec.outlier_rate / 20.0 {
            let f = rng.random_range(0..spec.dim);
            let delta = if rng.random::<bool>() { spec.shift } else { -spec.shift };
            levels[f] += delta;
            x[f] += delta;
            after_shift = 10;
        }
        if after_shift > 0 {
            after_shift -= 1;
            label = true;
        }
        if spec.dim > 0 && rng.random::<f64>() < spike_rate {
            let f = rng.random_range(0..spec.dim);
            x[f] += if rng.random::<bool>() { spec.spike } else { -spec.spike };
            label = true;
        }
        points.push(x);
        labels.push(label);
        timestamps_ms.push(START_MS + step * spec.interval_ms);
        step += 1;
    }
    LabelledStream { points, labels, timestamps_ms }
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
    fn seasonal_streams_repeat_daily_with_labelled_spikes_and_gaps_in_time() {
        let e = generate(&StreamSpec::benchmark(StreamKind::SeasonalSpikes, 4));
        assert_eq!(e.points[0].len(), 4);
        // The same time of day a day apart is close (noise sd 1 each, so the difference ~1.4).
        let normal: Vec<usize> = (288..e.points.len()).filter(|i| !e.labels[*i] && !e.labels[*i - 288]).collect();
        let mean_diff = normal.iter().map(|i| (e.points[*i][0] - e.points[*i - 288][0]).abs()).sum::<f64>() / normal.len() as f64;
        assert!(mean_diff < 1.4, "{mean_diff}");
        let rate = e.labels.iter().filter(|l| **l).count() as f64 / e.labels.len() as f64;
        assert!((0.007..0.013).contains(&rate), "{rate}");
        let f = generate(&StreamSpec::benchmark(StreamKind::SeasonalLevelShift, 4));
        let gaps = f.timestamps_ms.windows(2).filter(|w| w[1] - w[0] > 300_000).count();
        assert!(gaps >= 2, "{gaps} gaps");
        assert!(f.timestamps_ms.windows(2).all(|w| w[1] > w[0]));
        let g = generate(&StreamSpec::benchmark(StreamKind::SeasonalGrowing, 4));
        let range = |s: &[Vec<f64>]| s.iter().map(|p| p[0]).fold(f64::MIN, f64::max) - s.iter().map(|p| p[0]).fold(f64::MAX, f64::min);
        assert!(range(&g.points[18_000..]) > 2.0 * range(&g.points[..2_000]));
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
