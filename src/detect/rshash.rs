//! RS-Hash (Sathe & Aggarwal, "Subspace Outlier Detection in Linear Time with Randomized
//! Hashing", ICDM 2016), streaming form with time-decayed counts, as pysad's `RSHash` (its
//! parameter names), with its omissions fixed: points are normalised to the feature ranges
//! before gridding (pysad skips this), and the count tables are fixed-size arrays addressed by a
//! stable hash (pysad keeps a growing dict per hash function).
//!
//! Each of `num_components` components draws a grid width f in (1/sqrt(s), 1 - 1/sqrt(s))
//! (s = max(sampling_points, 1/(1 - 2^-decay))), a random subspace of r features (r between
//! 1 + ln(s) / (2 ln max(2, 1/f)) and ln(s) / ln max(2, 1/f), at most the number of varying
//! features) and a random shift per feature in [0, f). A point falls into the grid cell
//! `floor((x_norm + shift) / f)` over its subspace; each of `num_hash_fns` count-min tables
//! keeps a decayed count per hashed cell, halved every 1/decay points.
//!
//! Raw score: `exp(-mean over components of ln(1 + min over tables of the decayed cell
//! count))`, the geometric mean over components of `1 / (1 + count)` at the time of scoring
//! (a monotone transform of the paper's `-mean log` score, so rankings are the same). Range
//! [0, 1]; 1 = every cell empty (never or long ago visited), larger is more anomalous; 0 during
//! the warm-up (no evidence, not maximal surprise). Not a probability, so the pipeline
//! calibrates it.
//!
//! Feature ranges: `feature_mins` / `feature_maxes` set the range of every feature (use a
//! scaler for per-feature ranges); without them each feature's range is its min and max over
//! the first `warm_up` points, after which the components are drawn and those points replayed.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::Detector;

/// pysad's default ensemble size.
pub const DEFAULT_NUM_COMPONENTS: usize = 100;
/// pysad's default count-min depth.
pub const DEFAULT_NUM_HASH_FNS: usize = 1;
/// pysad's default sample-size parameter s.
pub const DEFAULT_SAMPLING_POINTS: usize = 1000;
/// pysad's default decay per point (counts halve every 1/decay points).
pub const DEFAULT_DECAY: f64 = 0.015;
/// Points used to learn the feature ranges when none are given.
pub const DEFAULT_WARM_UP: usize = 256;
/// Cells per count-min table (a power of two).
pub const DEFAULT_TABLE_SIZE: usize = 1 << 14;
/// Every this many points, cells not touched for as long are cleared, so that the 32-bit
/// timestamps never wrap into a wrong age.
const STALE_AGE: u64 = 1 << 30;

/// Checked parameters of [`RsHash`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RsHashParams {
    /// Ensemble size.
    pub num_components: usize,
    /// Count-min tables.
    pub num_hash_fns: usize,
    /// Sample-size parameter s.
    pub sampling_points: usize,
    /// Count decay per point.
    pub decay: f64,
    /// Range of every feature; `None` = learned over the warm-up.
    pub limits: Option<(f64, f64)>,
    /// Points to learn the ranges from.
    pub warm_up: usize,
    /// Cells per table (power of two).
    pub table_size: usize,
}

impl Default for RsHashParams {
    fn default() -> Self {
        Self {
            num_components: DEFAULT_NUM_COMPONENTS,
            num_hash_fns: DEFAULT_NUM_HASH_FNS,
            sampling_points: DEFAULT_SAMPLING_POINTS,
            decay: DEFAULT_DECAY,
            limits: None,
            warm_up: DEFAULT_WARM_UP,
            table_size: DEFAULT_TABLE_SIZE,
        }
    }
}

/// `rshash`'s `model_params` as config writes them (pysad's names, plus `warm_up` and
/// `table_size`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RsHashSpec {
    /// See [`RsHashParams::num_components`].
    pub num_components: usize,
    /// See [`RsHashParams::num_hash_fns`].
    pub num_hash_fns: usize,
    /// See [`RsHashParams::sampling_points`].
    pub sampling_points: usize,
    /// See [`RsHashParams::decay`].
    pub decay: f64,
    /// Low end of [`RsHashParams::limits`] (given with `feature_maxes` or not at all).
    pub feature_mins: Option<f64>,
    /// High end of [`RsHashParams::limits`].
    pub feature_maxes: Option<f64>,
    /// See [`RsHashParams::warm_up`].
    pub warm_up: usize,
    /// See [`RsHashParams::table_size`].
    pub table_size: usize,
}

impl Default for RsHashSpec {
    fn default() -> Self {
        let d = RsHashParams::default();
        Self {
            num_components: d.num_components,
            num_hash_fns: d.num_hash_fns,
            sampling_points: d.sampling_points,
            decay: d.decay,
            feature_mins: None,
            feature_maxes: None,
            warm_up: d.warm_up,
            table_size: d.table_size,
        }
    }
}

impl RsHashSpec {
    /// Check `rshash` parameters from config.
    pub fn check(self) -> Result<RsHashParams, SpecError> {
        let bad = invalid("rshash");
        let Self { num_components, num_hash_fns, sampling_points, decay, feature_mins, feature_maxes, warm_up, table_size } = self;
        let limits = match (feature_mins, feature_maxes) {
            (None, None) => None,
            (Some(lo), Some(hi)) if lo < hi => Some((lo, hi)),
            (Some(lo), Some(hi)) => return Err(bad("feature_mins", format!("{lo} is not below feature_maxes ({hi})"))),
            (lo, _) => {
                let missing = if lo.is_some() { "feature_maxes" } else { "feature_mins" };
                return Err(bad(missing, "feature_mins and feature_maxes go together".into()));
            }
        };
        if !(1..=10_000).contains(&num_components) {
            return Err(bad("num_components", format!("{num_components} is not in 1..=10000")));
        }
        if !(1..=16).contains(&num_hash_fns) {
            return Err(bad("num_hash_fns", format!("{num_hash_fns} is not in 1..=16")));
        }
        if sampling_points < 2 {
            return Err(bad("sampling_points", format!("{sampling_points} must be at least 2")));
        }
        if !(1e-6..=1.0).contains(&decay) {
            return Err(bad("decay", format!("{decay} is not in [1e-6, 1]")));
        }
        if warm_up == 0 && limits.is_none() {
            return Err(bad("warm_up", "must be at least 1 when no feature_mins / feature_maxes are given".into()));
        }
        if !table_size.is_power_of_two() || !(64..=1 << 24).contains(&table_size) {
            return Err(bad("table_size", format!("{table_size} is not a power of two in 64..=16777216")));
        }
        Ok(RsHashParams { num_components, num_hash_fns, sampling_points, decay, limits, warm_up, table_size })
    }
}

/// One ensemble component: a grid over a random subspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Component {
    /// Grid width in normalised units.
    width: f64,
    /// Features of the subspace.
    features: Vec<u32>,
    /// Grid shift of each subspace feature.
    shifts: Vec<f64>,
}

/// One decayed count: weight as of `stamp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Cell {
    /// Count at `stamp`.
    weight: f32,
    /// Point index (low 32 bits) of the last update.
    stamp: u32,
}

/// The RS-Hash detector. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RsHash {
    /// Checked parameters.
    params: RsHashParams,
    /// Number of features.
    dim: usize,
    /// Per-feature (min, 1 / (max - min)) for normalisation; empty during the warm-up.
    scale: Vec<(f64, f64)>,
    /// Ensemble components (empty during the warm-up).
    components: Vec<Component>,
    /// `num_hash_fns` tables of `table_size` cells, one after the other.
    cells: Vec<Cell>,
    /// Points learned since the components were drawn.
    index: u64,
    /// Warm-up points (row-major) until the ranges are known.
    warm_up: Vec<f64>,
    /// Source of every random choice.
    rng: Pcg64Mcg,
    /// Tables and buffers, not state.
    #[serde(skip)]
    cache: Cache,
}

/// Derived values and buffers: not state, rebuilt on demand after a restore.
#[derive(Debug, Clone, Default)]
struct Cache {
    /// `2^(-decay * age)` for small ages.
    decay: Vec<f64>,
    /// Cell indices of the point being learned and scored.
    cells: Vec<u32>,
    /// The point `cells` were located for by the last score, until the next learning
    /// (score-then-learn, the pipeline's default, then hashes the point once).
    scored: Vec<f64>,
}

impl PartialEq for Cache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Ages whose decay factor is tabled.
const DECAY_TABLE: usize = 4096;

impl RsHash {
    /// A detector over `dim` features, seeded.
    pub fn new(params: RsHashParams, dim: usize, seed: u64) -> Self {
        let mut d = Self {
            params,
            dim,
            scale: Vec::new(),
            components: Vec::new(),
            cells: Vec::new(),
            index: 0,
            warm_up: Vec::new(),
            rng: Pcg64Mcg::seed_from_u64(seed),
            cache: Cache::default(),
        };
        if let Some((lo, hi)) = d.params.limits {
            d.init(&vec![(lo, hi); dim]);
        }
        d
    }

    /// Draw the components for feature ranges `ranges`.
    fn init(&mut self, ranges: &[(f64, f64)]) {
        let p = &self.params;
        self.scale = ranges.iter().map(|(lo, hi)| if hi > lo { (*lo, 1.0 / (hi - lo)) } else { (*lo, 0.0) }).collect();
        let varying: Vec<u32> = (0..self.dim as u32).filter(|f| self.scale[*f as usize].1 > 0.0).collect();
        let candidates: Vec<u32> = if varying.is_empty() { (0..self.dim as u32).collect() } else { varying };
        let s = (p.sampling_points as f64).max(1.0 / (1.0 - (-p.decay).exp2()));
        let (f_lo, f_hi) = (1.0 / s.sqrt(), 1.0 - 1.0 / s.sqrt());
        self.components = (0..p.num_components)
            .map(|_| {
                let width = f_lo + (f_hi - f_lo) * self.rng.random::<f64>();
                let common = s.ln() / (1.0 / width).max(2.0).ln();
                let (low, high) = (1.0 + 0.5 * common, common);
                let r = if low.floor() >= high.floor() { 1 } else { self.rng.random_range(low.floor() as usize..high.floor() as usize) };
                let r = r.clamp(1, candidates.len().max(1));
                // A random r-subset, in a fixed order (partial Fisher-Yates over a copy).
                let mut pool = candidates.clone();
                for i in 0..r.min(pool.len()) {
                    let j = self.rng.random_range(i..pool.len());
                    pool.swap(i, j);
                }
                pool.truncate(r);
                let shifts = (0..pool.len()).map(|_| width * self.rng.random::<f64>()).collect();
                Component { width, features: pool, shifts }
            })
            .collect();
        self.cells = vec![Cell::default(); p.num_hash_fns * p.table_size];
        self.index = 0;
    }

    /// The cell index of `x` in component `c` for table `w`.
    #[inline]
    fn cell_of(&self, c: usize, w: usize, x: &[f64]) -> usize {
        let comp = &self.components[c];
        let mut h = mix((c as u64) << 8 | w as u64);
        for (f, shift) in comp.features.iter().zip(&comp.shifts) {
            let (lo, inv) = self.scale[*f as usize];
            let y = floor_i64(((x[*f as usize] - lo) * inv + shift) / comp.width);
            h = mix(h ^ y as u64);
        }
        (h as usize) & (self.params.table_size - 1)
    }

    /// Decayed weight of `cell` at the current index.
    #[inline]
    fn weight(&self, cell: Cell) -> f64 {
        let age = (self.index as u32).wrapping_sub(cell.stamp);
        let factor = match self.cache.decay.get(age as usize) {
            Some(f) => *f,
            None => (-self.params.decay * age as f64).exp2(),
        };
        cell.weight as f64 * factor
    }

    /// Fill `cache.cells` with the cell of `x` in every (component, table), table-major
    /// within each component.
    fn locate(&mut self, x: &[f64]) {
        if self.cache.decay.is_empty() {
            self.cache.decay = (0..DECAY_TABLE).map(|age| (-self.params.decay * age as f64).exp2()).collect();
        }
        let table = self.params.table_size;
        let mut cells = std::mem::take(&mut self.cache.cells);
        cells.clear();
        for c in 0..self.components.len() {
            for w in 0..self.params.num_hash_fns {
                cells.push((w * table + self.cell_of(c, w, x)) as u32);
            }
        }
        self.cache.cells = cells;
    }

    /// Add `x` to the cells located by [`Self::locate`].
    fn learn_located(&mut self) {
        for k in 0..self.cache.cells.len() {
            let i = self.cache.cells[k] as usize;
            let weight = self.weight(self.cells[i]) + 1.0;
            self.cells[i] = Cell { weight: weight as f32, stamp: self.index as u32 };
        }
        self.index += 1;
        if self.index % STALE_AGE == 0 {
            let now = self.index as u32;
            for cell in &mut self.cells {
                if now.wrapping_sub(cell.stamp) as u64 >= STALE_AGE {
                    *cell = Cell { weight: 0.0, stamp: now };
                }
            }
        }
    }

    fn learn_point(&mut self, x: &[f64]) {
        if self.cache.scored.as_slice() != x {
            self.locate(x);
        }
        self.cache.scored.clear();
        self.learn_located();
    }

    /// The score of the point whose cells [`Self::locate`] found.
    fn score_located(&self) -> f64 {
        let w = self.params.num_hash_fns;
        // Sum of ln(1 + count) as the ln of products of 16 factors: one logarithm per 16
        // components. Counts are below 1 / (1 - 2^-decay) < 1.5e6 (decay >= 1e-6), so a product
        // of 16 factors stays far below f64's range.
        let mut total = 0.0;
        for group in self.cache.cells.chunks(16 * w) {
            let mut product = 1.0;
            for cells in group.chunks_exact(w) {
                let min = cells.iter().map(|i| self.weight(self.cells[*i as usize])).fold(f64::INFINITY, f64::min);
                product *= 1.0 + min;
            }
            total += product.ln();
        }
        (-total / self.components.len() as f64).exp()
    }

    fn finish_warm_up(&mut self) {
        let dim = self.dim;
        let mut ranges = vec![(f64::INFINITY, f64::NEG_INFINITY); dim];
        for row in self.warm_up.chunks_exact(dim) {
            for (r, v) in ranges.iter_mut().zip(row) {
                r.0 = r.0.min(*v);
                r.1 = r.1.max(*v);
            }
        }
        self.init(&ranges);
        let rows = std::mem::take(&mut self.warm_up);
        for row in rows.chunks_exact(dim) {
            self.learn_point(row);
        }
    }
}

/// `floor(v)` as an integer, saturating (NaN gives 0). Baseline x86-64 has no rounding
/// instruction, and `f64::floor` is then a libm call that dominated the profile.
#[inline]
fn floor_i64(v: f64) -> i64 {
    let t = v as i64;
    if (t as f64) > v {
        t - 1
    } else {
        t
    }
}

/// A 64-bit finaliser (splitmix64's): a stable hash step, unlike std's hasher.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Detector for RsHash {
    /// The middle of each feature's range.
    fn reference(&self, out: &mut Vec<f64>) -> bool {
        out.clear();
        if self.scale.len() != self.dim {
            return false;
        }
        out.extend(self.scale.iter().map(|(lo, inv)| if *inv > 0.0 { lo + 0.5 / inv } else { *lo }));
        true
    }

    fn learn_one(&mut self, x: &[f64]) {
        if x.len() != self.dim {
            return;
        }
        if self.components.is_empty() {
            self.warm_up.extend_from_slice(x);
            if self.warm_up.len() / self.dim.max(1) >= self.params.warm_up {
                self.finish_warm_up();
            }
            return;
        }
        self.learn_point(x);
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        if self.components.is_empty() || x.len() != self.dim {
            return 0.0;
        }
        self.locate(x);
        self.cache.scored.clear();
        self.cache.scored.extend_from_slice(x);
        self.score_located()
    }

    fn learn_score_one(&mut self, x: &[f64]) -> f64 {
        if self.components.is_empty() {
            self.learn_one(x);
            return self.score_one(x);
        }
        if x.len() != self.dim {
            return 0.0;
        }
        self.locate(x);
        self.cache.scored.clear();
        self.learn_located();
        self.score_located()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::metrics::roc_auc;
    use crate::detect::params::{read_params, ParamValue as V, Params};
    use crate::detect::synthetic::{generate, StreamKind, StreamSpec};

    #[test]
    fn outliers_score_higher_than_inliers() {
        let s = generate(&StreamSpec { len: 8_000, ..StreamSpec::benchmark(StreamKind::ShiftAll, 2) });
        let mut d = RsHash::new(RsHashParams::default(), 10, 1);
        let scores: Vec<f64> = s.points.iter().map(|x| d.learn_score_one(x)).collect();
        let auc = roc_auc(&scores[2048..], &s.labels[2048..]).unwrap();
        assert!(auc > 0.99, "{auc}");
    }

    #[test]
    fn counts_decay_by_half_every_one_over_decay_points() {
        let p = RsHashParams { limits: Some((0.0, 1.0)), decay: 0.5, num_components: 3, ..Default::default() };
        let mut d = RsHash::new(p, 2, 1);
        d.learn_one(&[0.5, 0.5]);
        // Just learned: the count is 1 after one step of age (2^-0.5).
        let s1 = d.score_one(&[0.5, 0.5]);
        assert!((s1 - 1.0 / (1.0 + 2f64.powf(-0.5))).abs() < 1e-6, "{s1}");
        d.learn_one(&[0.9, 0.1]);
        d.learn_one(&[0.1, 0.9]);
        let s3 = d.score_one(&[0.5, 0.5]);
        assert!(s3 > s1, "older counts weigh less: {s3} vs {s1}");
    }

    #[test]
    fn fused_learn_score_equals_learn_then_score() {
        let s = generate(&StreamSpec { len: 1_000, ..StreamSpec::benchmark(StreamKind::ShiftOne, 6) });
        let d = RsHash::new(RsHashParams { num_hash_fns: 3, table_size: 256, ..Default::default() }, 10, 2);
        crate::detect::testutil::assert_learn_score_equals_learn_then_score(d, &s.points);
    }

    #[test]
    fn learning_a_just_scored_point_reuses_its_cells_exactly() {
        let s = generate(&StreamSpec { len: 1_500, ..StreamSpec::benchmark(StreamKind::Drift, 7) });
        let mut a = RsHash::new(RsHashParams { warm_up: 50, ..Default::default() }, 10, 3);
        let mut b = a.clone();
        for (i, x) in s.points.iter().enumerate() {
            a.score_one(x);
            if i % 5 == 0 {
                a.score_one(&s.points[(i * 13) % s.points.len()]);
            }
            a.learn_one(x);
            b.learn_one(x);
        }
        assert_eq!(a, b);
    }

    #[test]
    fn floor_matches_f64_floor() {
        for v in [-2.5, -2.0, -0.5, -0.0, 0.0, 0.3, 1.0, 7.999, 1e12 + 0.5, -1e12 - 0.5] {
            assert_eq!(floor_i64(v), v.floor() as i64, "{v}");
        }
        assert_eq!(floor_i64(f64::NAN), 0);
        assert_eq!(floor_i64(1e300), i64::MAX);
    }

    #[test]
    fn score_is_zero_during_warm_up() {
        let mut d = RsHash::new(RsHashParams { warm_up: 10, ..Default::default() }, 2, 1);
        for i in 0..10 {
            assert_eq!(d.score_one(&[i as f64, 0.0]), 0.0);
            d.learn_one(&[i as f64, 0.0]);
        }
        let s = d.score_one(&[3.0, 0.0]);
        assert!(s > 0.0 && s < 1.0, "{s}");
    }

    #[test]
    fn snapshot_restore_continues_bit_identically() {
        let s = generate(&StreamSpec { len: 1_500, ..StreamSpec::benchmark(StreamKind::ShiftOne, 4) });
        let mut d = RsHash::new(RsHashParams { num_hash_fns: 2, ..Default::default() }, 10, 9);
        for x in &s.points[..700] {
            d.learn_score_one(x);
        }
        let mut restored: RsHash = postcard::from_bytes(&postcard::to_stdvec(&d).unwrap()).unwrap();
        assert_eq!(restored, d);
        for x in &s.points[700..] {
            assert_eq!(d.learn_score_one(x).to_bits(), restored.learn_score_one(x).to_bits());
        }
    }

    #[test]
    fn params_are_checked_with_pysad_names() {
        let check = |p: &Params| read_params::<RsHashSpec>("rshash", p)?.check();
        let p: Params = [("feature_mins".to_string(), V::Float(-3.0)), ("feature_maxes".to_string(), V::Int(3))].into();
        assert_eq!(check(&p).unwrap().limits, Some((-3.0, 3.0)));
        for (key, value, expect) in [
            ("num_component", V::Int(3), "unknown parameter `num_component`"),
            ("decay", V::Float(0.0), "invalid `decay`"),
            ("table_size", V::Int(1000), "invalid `table_size`"),
            ("feature_mins", V::Float(0.0), "invalid `feature_maxes`"),
        ] {
            let p: Params = [(key.to_string(), value)].into();
            let err = check(&p).unwrap_err().to_string();
            assert!(err.contains(expect), "{key}: {err}");
        }
    }
}
