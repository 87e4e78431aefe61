//! Incremental k-nearest-neighbours: ONAD's `IncrementalKNN` (its code: `KNN` over a
//! `FaissSimilaritySearchEngine`, `onad.model.distance.knn`).
//!
//! The model is a FIFO window of the last `window_size` learned points. Raw score = the mean
//! squared Euclidean distance from x to its k nearest points in the window; 0 while the window
//! holds fewer than `warm_up` points. Range: [0, inf).
//!
//! ONAD rebuilds a faiss `IndexFlatL2` from the whole window on every point and computes in
//! float32. Here the window is one flat feature-major `Vec<f64>` used as a ring buffer (a
//! learned point overwrites the oldest one in place: O(d), no rebuild) and the search is an
//! exact scan in float64 (column by column, so it vectorises across points) with a k-slot
//! insertion list, so scores equal ONAD's up to its float32 rounding.

use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::Detector;

/// Checked parameters of [`Knn`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnParams {
    /// Neighbours averaged (ONAD's `k`; ONAD has no default, 10 here).
    pub k: usize,
    /// Points remembered (the faiss engine's `window_size`; no ONAD default, 1000 here).
    pub window_size: usize,
    /// Points to learn before scoring anything but 0 (the engine's `warm_up`; default `k`).
    pub warm_up: usize,
}

/// `knn`'s `model_params` as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnSpec {
    /// See [`KnnParams::k`].
    pub k: usize,
    /// See [`KnnParams::window_size`].
    pub window_size: usize,
    /// See [`KnnParams::warm_up`]; `None` = `k`.
    pub warm_up: Option<usize>,
}

impl Default for KnnSpec {
    fn default() -> Self {
        Self { k: 10, window_size: 1000, warm_up: None }
    }
}

impl KnnSpec {
    /// Check `knn` parameters from config.
    pub fn check(self) -> Result<KnnParams, SpecError> {
        let bad = invalid("knn");
        let Self { k, window_size, warm_up } = self;
        let warm_up = warm_up.unwrap_or(k);
        if k == 0 {
            return Err(bad("k", "must be a positive integer".into()));
        }
        if window_size == 0 {
            return Err(bad("window_size", "must be a positive integer".into()));
        }
        if k > window_size {
            return Err(bad("k", format!("{k} exceeds window_size ({window_size}): the window can never hold k neighbours")));
        }
        if warm_up > window_size {
            return Err(bad("warm_up", format!("{warm_up} exceeds window_size ({window_size})")));
        }
        if warm_up < k {
            return Err(bad("warm_up", format!("{warm_up} is below k ({k}): scoring needs k points in the window")));
        }
        Ok(KnnParams { k, window_size, warm_up })
    }
}

/// Sliding-window exact kNN detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knn {
    /// Checked parameters.
    params: KnnParams,
    /// Features per point.
    dim: usize,
    /// The window, feature-major: feature j of slot p is `cols[j * stride + p]`. Scoring then
    /// streams each feature's column contiguously, which vectorises across points.
    cols: Vec<f64>,
    /// Slots reserved per feature column (grows by doubling up to `window_size`).
    stride: usize,
    /// Points in the window.
    len: usize,
    /// Slot the next learned point overwrites once the window is full (the oldest point).
    next: usize,
    /// Scratch: squared distance of the query to each slot (not state).
    #[serde(skip)]
    dist: Vec<f64>,
    /// Scratch: the k smallest distances of the current query, ascending (not state).
    #[serde(skip)]
    best: Vec<f64>,
}

impl Knn {
    /// A detector over `dim` features.
    pub fn new(params: KnnParams, dim: usize) -> Self {
        Self { params, dim, cols: Vec::new(), stride: 0, len: 0, next: 0, dist: Vec::new(), best: Vec::new() }
    }

    /// Re-lay the columns with room for `stride` slots each.
    fn grow(&mut self, stride: usize) {
        let mut cols = vec![0.0; stride * self.dim];
        for j in 0..self.dim {
            let old = &self.cols[j * self.stride..j * self.stride + self.len];
            cols[j * stride..j * stride + self.len].copy_from_slice(old);
        }
        self.cols = cols;
        self.stride = stride;
    }
}

impl Knn {
    /// Per feature, the mean squared difference between `x` and its k nearest points (the
    /// terms of the score, so they sum to it); zeros during warm-up.
    pub fn feature_contributions(&mut self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.resize(x.len(), 0.0);
        self.score_one(x);
        if self.len < self.params.warm_up || self.len < self.params.k || self.dist.len() != self.len {
            return;
        }
        // The k nearest slots (by the distances `score_one` just left in `dist`).
        let mut order: Vec<usize> = (0..self.dist.len()).collect();
        let k = self.params.k.min(order.len());
        if k == 0 {
            return;
        }
        order.select_nth_unstable_by(k - 1, |a, b| self.dist[*a].total_cmp(&self.dist[*b]));
        for &p in &order[..k] {
            for (j, (o, xj)) in out.iter_mut().zip(x).enumerate() {
                let t = self.cols[j * self.stride + p] - xj;
                *o += t * t / k as f64;
            }
        }
    }
}

impl Detector for Knn {
    fn learn_one(&mut self, x: &[f64]) {
        if x.len() != self.dim {
            // The pipeline fixes the width; a mismatch is a caller bug, ignored, not a panic.
            return;
        }
        let slot = if self.len < self.params.window_size {
            if self.len == self.stride {
                self.grow((self.stride * 2).max(16).min(self.params.window_size));
            }
            self.len += 1;
            self.len - 1
        } else {
            let s = self.next;
            self.next = (s + 1) % self.params.window_size;
            s
        };
        for (j, v) in x.iter().enumerate() {
            self.cols[j * self.stride + slot] = *v;
        }
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        let k = self.params.k;
        let n = self.len;
        if n < self.params.warm_up || n < k || x.len() != self.dim || self.dim == 0 {
            return 0.0;
        }
        // Squared distances to every slot, one feature column at a time.
        self.dist.clear();
        self.dist.extend(self.cols[..n].iter().map(|c| (c - x[0]) * (c - x[0])));
        // Three columns per pass (summed in feature order, as a plain loop would) so the
        // distance buffer is read and written a third as often.
        let col = |j: usize| &self.cols[j * self.stride..j * self.stride + n];
        let mut j = 1;
        while j + 3 <= self.dim {
            let (c0, c1, c2) = (col(j), col(j + 1), col(j + 2));
            let (x0, x1, x2) = (x[j], x[j + 1], x[j + 2]);
            for (((d, a0), a1), a2) in self.dist.iter_mut().zip(c0).zip(c1).zip(c2) {
                let (t0, t1, t2) = (a0 - x0, a1 - x1, a2 - x2);
                *d = *d + t0 * t0 + t1 * t1 + t2 * t2;
            }
            j += 3;
        }
        for (jj, xj) in x.iter().enumerate().skip(j) {
            for (d, c) in self.dist.iter_mut().zip(col(jj)) {
                let t = c - xj;
                *d += t * t;
            }
        }
        // The k smallest, by insertion into an ascending list.
        self.best.clear();
        self.best.resize(k, f64::INFINITY);
        let mut worst = f64::INFINITY;
        for &dist in &self.dist {
            if dist < worst {
                let mut i = k - 1;
                while i > 0 && self.best[i - 1] > dist {
                    self.best[i] = self.best[i - 1];
                    i -= 1;
                }
                self.best[i] = dist;
                worst = self.best[k - 1];
            }
        }
        self.best.iter().sum::<f64>() / k as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knn(k: usize, window_size: usize, warm_up: usize) -> Knn {
        Knn::new(KnnParams { k, window_size, warm_up }, 2)
    }

    #[test]
    fn score_is_mean_squared_distance_to_k_nearest_in_window() {
        let mut m = knn(2, 3, 2);
        m.learn_one(&[0.0, 0.0]);
        assert_eq!(m.score_one(&[1.0, 1.0]), 0.0, "warm-up");
        m.learn_one(&[1.0, 0.0]);
        m.learn_one(&[5.0, 5.0]);
        // nearest to (1,1): (1,0) at 1, (0,0) at 2
        assert_eq!(m.score_one(&[1.0, 1.0]), 1.5);
        // window of 3: (0,0) is forgotten when (1,2) arrives
        m.learn_one(&[1.0, 2.0]);
        assert_eq!(m.score_one(&[1.0, 1.0]), 1.0);
    }

    #[test]
    fn brute_force_agrees_on_many_points() {
        let mut m = Knn::new(KnnParams { k: 5, window_size: 50, warm_up: 5 }, 7);
        let pt = |i: usize| -> Vec<f64> { (0..7).map(|j| ((i * 31 + j * 17) % 23) as f64 / 3.0).collect() };
        for i in 0..120 {
            m.learn_one(&pt(i));
        }
        let q = pt(1000);
        let mut all: Vec<f64> = (70..120).map(|i| pt(i).iter().zip(&q).map(|(a, b)| (a - b) * (a - b)).sum()).collect();
        all.sort_by(f64::total_cmp);
        let want = all[..5].iter().sum::<f64>() / 5.0;
        assert!((m.score_one(&q) - want).abs() < 1e-12);
    }

    #[test]
    fn k_above_window_is_a_spec_error() {
        let err = KnnSpec { k: 20, window_size: 10, warm_up: None }.check().unwrap_err().to_string();
        assert!(err.contains("`k`") && err.contains("window_size"), "{err}");
    }

    #[test]
    fn snapshot_restore_continues_bit_identically() {
        use crate::detect::testutil::{assert_restore_continues_bit_identically, spec};
        use crate::detect::ParamValue;
        let spec =
            spec("knn", &[("k", ParamValue::Int(5)), ("window_size", ParamValue::Int(200))], &[("scaler", &[] as &[(&str, ParamValue)])]);
        assert_restore_continues_bit_identically(&spec, 6, 700, 300);
    }

    #[test]
    fn feature_contributions_sum_to_the_score_and_name_the_shifted_feature() {
        let mut m = Knn::new(KnnParams { k: 3, window_size: 50, warm_up: 3 }, 3);
        for i in 0..50 {
            let t = i as f64;
            m.learn_one(&[(t * 0.37).sin(), (t * 0.91).cos(), (t * 1.3).sin()]);
        }
        let x = [0.2, 5.0, -0.1];
        let score = m.score_one(&x);
        let mut c = Vec::new();
        m.feature_contributions(&x, &mut c);
        assert!((c.iter().sum::<f64>() - score).abs() < 1e-9 * score, "{c:?} vs {score}");
        assert!(c[1] > c[0] && c[1] > c[2], "{c:?}");
    }

    #[test]
    fn pipeline_alert_names_the_feature_that_moved() {
        use crate::detect::testutil::{spec, stream};
        use crate::detect::ParamValue;
        let none: &[(&str, ParamValue)] = &[];
        let factory =
            spec("knn", &[("k", ParamValue::Int(5)), ("window_size", ParamValue::Int(300))], &[("scaler", none)]).check().unwrap();
        let mut p = factory.try_build(4, "s").unwrap();
        for x in stream(1000, 4).iter().filter(|x| x[0] < 3.0) {
            p.process(x);
        }
        let s = p.process(&[0.1, -0.2, 9.0, 0.3]);
        assert!(s.is_anomaly, "{s:?}");
        assert_eq!(s.top_features.first().map(|f| f.0), Some(2), "{s:?}");
    }
}
