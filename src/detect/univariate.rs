//! ONAD's cheap univariate moving statistics (`onad.model.stat.uni`): `MovingAverage`,
//! `MovingVariance` and `MovingMedian`.
//!
//! `moving_median` scores by default (`score = "deviation"`) the distance of the point from
//! the window's median, |x − median(window)|, the robust counterpart of `moving_average`
//! (whose score, (x − mean)/(n + 1), is proportional to the distance from the window mean).
//! ONAD's own score, |median(window + x) − median(window)| (`score = "shift"`, kept for
//! parity), is at chance as an anomaly score, by the median's design: adding one value to a
//! window moves the median by at most half the gap between the middle order statistics, and
//! by exactly that for *every* value beyond them, so a +6 sigma outlier scores the same as
//! half of the normal points (ROC-AUC 0.47-0.49 on the synthetic streams in BENCHMARKS.md).
//! The shift measures how much one reading moves a robust level, which is what it is for
//! (a median filter's output change), not how unusual the reading is.
//!
//! Each keeps the last `window_size` values and scores a point by how much it would move the
//! statistic: |stat(window + x) − stat(window)| (signed with `abs_diff = false`); 0 while the
//! window is empty. Variance is the population variance (as ONAD). Median of an even count is
//! the mean of the two middle values. Range: [0, inf) (or the reals, signed).
//!
//! ONAD's models take exactly one feature. Here each feature has its own window and the score
//! is the per-feature score of largest magnitude, so a one-feature pipeline scores exactly as
//! ONAD and a wider one flags a jump in any feature. ONAD recomputes the statistic from the
//! whole window on every score (O(w)); here average and variance are running sums updated as
//! values enter and leave (O(1) per feature, recomputed exactly every `window_size` points)
//! and the median keeps a sorted copy of the window (O(log w) to score, O(w) memmove to learn).

use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::Detector;

/// Which statistic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MovingKind {
    /// `moving_average`.
    Average,
    /// `moving_variance`.
    Variance,
    /// `moving_median` with `score = "shift"`: ONAD's change of the median.
    Median,
    /// `moving_median` (default `score = "deviation"`): distance from the window's median.
    MedianDeviation,
}

impl MovingKind {
    /// Whether the model keeps a sorted copy of each window.
    fn keeps_sorted(self) -> bool {
        matches!(self, Self::Median | Self::MedianDeviation)
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Average => "moving_average",
            Self::Variance => "moving_variance",
            Self::Median | Self::MedianDeviation => "moving_median",
        }
    }
}

/// Checked parameters of [`MovingStat`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovingStatParams {
    /// The statistic.
    pub kind: MovingKind,
    /// Values remembered per feature (ONAD requires it, no default; 100 here).
    pub window_size: usize,
    /// Score the absolute change (ONAD's default true) or the signed change.
    pub abs_diff: bool,
}

/// The `model_params` of a `moving_*` model as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MovingStatSpec {
    /// See [`MovingStatParams::window_size`].
    pub window_size: usize,
    /// See [`MovingStatParams::abs_diff`].
    pub abs_diff: bool,
    /// `moving_median` only: `"deviation"` (the default, |x − median|) or `"shift"` (ONAD's
    /// change of the median). An `Option` because the three models share this struct: the
    /// others must refuse the key rather than silently ignore it.
    pub score: Option<String>,
}

impl Default for MovingStatSpec {
    fn default() -> Self {
        Self { window_size: 100, abs_diff: true, score: None }
    }
}

impl MovingStatSpec {
    /// Check the parameters of the `moving_*` model `kind` from config.
    pub fn check(self, kind: MovingKind) -> Result<MovingStatParams, SpecError> {
        let bad = invalid(kind.name());
        let kind = match (kind, self.score.as_deref()) {
            (MovingKind::Median | MovingKind::MedianDeviation, None | Some("deviation")) => MovingKind::MedianDeviation,
            (MovingKind::Median | MovingKind::MedianDeviation, Some("shift")) => MovingKind::Median,
            (MovingKind::Median | MovingKind::MedianDeviation, Some(other)) => {
                return Err(bad("score", format!("`{other}` is not deviation or shift")));
            }
            (other, None) => other,
            (_, Some(_)) => return Err(bad("score", "only moving_median takes `score`".into())),
        };
        if self.window_size == 0 {
            return Err(bad("window_size", "must be a positive integer".into()));
        }
        Ok(MovingStatParams { kind, window_size: self.window_size, abs_diff: self.abs_diff })
    }
}

/// Per-feature moving windows (plain data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovingStat {
    /// Checked parameters.
    params: MovingStatParams,
    /// Features.
    dim: usize,
    /// Values, feature-major rings: feature j's window is `values[j*w..j*w+len]`.
    values: Vec<f64>,
    /// Values per window.
    len: usize,
    /// Oldest slot once full.
    next: usize,
    /// Running sum per feature (average, variance).
    sum: Vec<f64>,
    /// Running sum of squared deviations from the window mean per feature (variance).
    m2: Vec<f64>,
    /// Sorted copy of each feature's window, feature-major like `values` (median).
    sorted: Vec<f64>,
    /// Learned points since the running sums were last recomputed.
    since_recompute: usize,
}

impl MovingStat {
    /// A model over `dim` features.
    pub fn new(params: MovingStatParams, dim: usize) -> Self {
        let w = params.window_size;
        let median = params.kind.keeps_sorted();
        Self {
            dim,
            values: vec![0.0; w * dim],
            len: 0,
            next: 0,
            sum: vec![0.0; dim],
            m2: vec![0.0; dim],
            sorted: if median { vec![0.0; w * dim] } else { Vec::new() },
            since_recompute: 0,
            params,
        }
    }

    fn window(&self, j: usize) -> &[f64] {
        let w = self.params.window_size;
        &self.values[j * w..j * w + self.len]
    }

    fn recompute(&mut self) {
        for j in 0..self.dim {
            let win = self.window(j);
            let n = win.len() as f64;
            let sum: f64 = win.iter().sum();
            let mean = sum / n;
            let m2 = win.iter().map(|v| (v - mean) * (v - mean)).sum();
            self.sum[j] = sum;
            self.m2[j] = m2;
        }
        self.since_recompute = 0;
    }

    /// Median of the sorted window `s` with `x` inserted (without inserting it).
    fn median_with(s: &[f64], x: f64) -> f64 {
        let n = s.len() + 1;
        let pos = s.partition_point(|v| *v < x);
        // Element i of the merged sequence.
        let at = |i: usize| {
            if i < pos {
                s[i]
            } else if i == pos {
                x
            } else {
                s[i - 1]
            }
        };
        if n % 2 == 1 {
            at(n / 2)
        } else {
            (at(n / 2 - 1) + at(n / 2)) / 2.0
        }
    }

    fn median(s: &[f64]) -> f64 {
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    }

    fn feature_score(&self, j: usize, x: f64) -> f64 {
        let n = self.len as f64;
        match self.params.kind {
            MovingKind::Average => {
                let old = self.sum[j] / n;
                (self.sum[j] + x) / (n + 1.0) - old
            }
            MovingKind::Variance => {
                let mean = self.sum[j] / n;
                let old = self.m2[j] / n;
                let new_mean = mean + (x - mean) / (n + 1.0);
                let new_m2 = self.m2[j] + (x - mean) * (x - new_mean);
                new_m2 / (n + 1.0) - old
            }
            MovingKind::Median => {
                let w = self.params.window_size;
                let s = &self.sorted[j * w..j * w + self.len];
                Self::median_with(s, x) - Self::median(s)
            }
            MovingKind::MedianDeviation => {
                let w = self.params.window_size;
                x - Self::median(&self.sorted[j * w..j * w + self.len])
            }
        }
    }
}

impl Detector for MovingStat {
    /// |per-feature score|: how much each feature would move its statistic (or, for
    /// `moving_median`, how far it is from the window's median).
    fn contributions(&self, x: &[f64], out: &mut Vec<f64>) -> bool {
        out.clear();
        if self.len == 0 || x.len() != self.dim {
            out.resize(x.len(), 0.0);
            return true;
        }
        out.extend(x.iter().enumerate().map(|(j, v)| self.feature_score(j, *v).abs()));
        true
    }

    fn learn_one(&mut self, x: &[f64]) {
        if x.len() != self.dim {
            return;
        }
        let w = self.params.window_size;
        let full = self.len == w;
        let slot = if full { self.next } else { self.len };
        for (j, &v) in x.iter().enumerate() {
            let old = self.values[j * w + slot];
            self.values[j * w + slot] = v;
            let n_before = self.len as f64;
            // Running sums: remove the evicted value, then add the new one (Welford both ways).
            let (mut sum, mut m2) = (self.sum[j], self.m2[j]);
            let mut n = n_before;
            if full {
                let mean = sum / n;
                let mean_after = (sum - old) / (n - 1.0).max(1.0);
                m2 -= (old - mean) * (old - mean_after);
                sum -= old;
                n -= 1.0;
            }
            let mean = if n > 0.0 { sum / n } else { 0.0 };
            let mean_after = (sum + v) / (n + 1.0);
            m2 += (v - mean) * (v - mean_after);
            sum += v;
            self.sum[j] = sum;
            self.m2[j] = m2.max(0.0);
            if self.params.kind.keeps_sorted() {
                let s = &mut self.sorted[j * w..(j + 1) * w];
                let len = self.len;
                if full {
                    // Replace `old` by `v`, keeping the slice sorted.
                    let i = s[..len].partition_point(|e| *e < old);
                    s.copy_within(i + 1..len, i);
                    let k = s[..len - 1].partition_point(|e| *e < v);
                    s.copy_within(k..len - 1, k + 1);
                    s[k] = v;
                } else {
                    let k = s[..len].partition_point(|e| *e < v);
                    s.copy_within(k..len, k + 1);
                    s[k] = v;
                }
            }
        }
        if full {
            self.next = (self.next + 1) % w;
            self.since_recompute += 1;
        } else {
            self.len += 1;
        }
        if self.since_recompute >= w {
            self.recompute();
        }
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        if self.len == 0 || x.len() != self.dim {
            return 0.0;
        }
        let mut best = 0.0f64;
        for (j, &v) in x.iter().enumerate() {
            let s = self.feature_score(j, v);
            if s.abs() > best.abs() {
                best = s;
            }
        }
        if self.params.abs_diff {
            best.abs()
        } else {
            best
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ONAD's definitions, computed from the window directly.
    fn reference(kind: MovingKind, window: &[f64], x: f64) -> f64 {
        let stat = |v: &[f64]| -> f64 {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            match kind {
                MovingKind::Average => mean,
                MovingKind::Variance => v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / n,
                MovingKind::Median | MovingKind::MedianDeviation => {
                    let mut s = v.to_vec();
                    s.sort_by(f64::total_cmp);
                    MovingStat::median(&s)
                }
            }
        };
        if kind == MovingKind::MedianDeviation {
            return (x - stat(window)).abs();
        }
        let mut with = window.to_vec();
        with.push(x);
        (stat(&with) - stat(window)).abs()
    }

    #[test]
    fn running_statistics_match_direct_computation_across_window_wraps() {
        for kind in [MovingKind::Average, MovingKind::Variance, MovingKind::Median, MovingKind::MedianDeviation] {
            let w = 7;
            let mut m = MovingStat::new(MovingStatParams { kind, window_size: w, abs_diff: true }, 1);
            let value = |i: usize| ((i * 37 % 11) as f64) - 3.5 + (i as f64) * 0.01;
            let mut history = Vec::new();
            for i in 0..40 {
                let x = value(i);
                if !history.is_empty() {
                    let start = history.len().saturating_sub(w);
                    let want = reference(kind, &history[start..], x);
                    let got = m.score_one(&[x]);
                    assert!((got - want).abs() < 1e-9, "{kind:?} point {i}: {got} vs {want}");
                }
                m.learn_one(&[x]);
                history.push(x);
            }
        }
    }

    #[test]
    fn moving_median_scores_the_distance_from_the_median_and_shift_is_onads() {
        let p = |score: &str| MovingStatSpec { score: Some(score.into()), ..MovingStatSpec::default() }.check(MovingKind::Median).unwrap();
        let (mut dev, mut shift) = (MovingStat::new(p("deviation"), 1), MovingStat::new(p("shift"), 1));
        for v in [1.0, 2.0, 3.0, 4.0] {
            dev.learn_one(&[v]);
            shift.learn_one(&[v]);
        }
        assert_eq!(dev.score_one(&[100.0]), 97.5, "|100 - 2.5|");
        // ONAD's shift is blind to the outlier's size: 3 - 2.5 for 4.5 and for 100.
        assert_eq!(shift.score_one(&[100.0]), 0.5);
        assert_eq!(shift.score_one(&[4.5]), 0.5);
        assert_eq!(MovingStatSpec::default().check(MovingKind::Median).unwrap().kind, MovingKind::MedianDeviation);
    }

    #[test]
    fn score_is_refused_outside_moving_median_and_checked_within_it() {
        use crate::detect::testutil::spec;
        use crate::detect::ParamValue;
        let err = spec("moving_average", &[("score", ParamValue::Str("shift".into()))], &[]).check().unwrap_err().to_string();
        assert!(err.starts_with("moving_average: invalid `score`"), "{err}");
        let err = spec("moving_median", &[("score", ParamValue::Str("mean".into()))], &[]).check().unwrap_err().to_string();
        assert_eq!(err, "moving_median: invalid `score`: `mean` is not deviation or shift");
    }

    #[test]
    fn wider_input_scores_the_feature_that_moved_most() {
        let mut m = MovingStat::new(MovingStatParams { kind: MovingKind::Average, window_size: 4, abs_diff: false }, 2);
        for _ in 0..4 {
            m.learn_one(&[1.0, 10.0]);
        }
        assert_eq!(m.score_one(&[1.0, 0.0]), -2.0, "(4*10 + 0)/5 - 10 on the second feature");
    }

    #[test]
    fn snapshot_restore_continues_bit_identically() {
        use crate::detect::testutil::{assert_restore_continues_bit_identically, spec};
        use crate::detect::ParamValue;
        for name in ["moving_average", "moving_variance", "moving_median"] {
            let spec = spec(name, &[("window_size", ParamValue::Int(50))], &[]);
            assert_restore_continues_bit_identically(&spec, 3, 200, 300);
        }
    }
}
