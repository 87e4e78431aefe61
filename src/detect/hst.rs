//! Half-Space Trees (Tan, Ting, Liu, "Fast Anomaly Detection for Streaming Data", IJCAI 2011),
//! in the form of river's `anomaly.HalfSpaceTrees` (ONAD's successor and the Python peers ship
//! this one; ONAD 0.3.0 has none).
//!
//! Each tree is a complete binary tree of height `height` over a fixed workspace: every
//! internal node splits a feature chosen with probability proportional to its range width, at a
//! point drawn uniformly from the middle 70% of that range (river's padded trees). Trees count
//! the points of the current window (`l_mass`); at the end of every `window_size` points the
//! counts become the reference profile (`r_mass`) and start again from zero.
//!
//! Score of x (river's): `1 - S(x) / S_max`, where `S(x)` sums, over trees and over the nodes
//! on x's path from the root, `r_mass * 2^depth`, stopping after the first node whose
//! reference mass is below `0.1 * window_size`; `S_max = n_trees * window_size *
//! (2^(height+1) - 1)`. Range [0, 1], larger is more anomalous, 0 during the first window.
//! Typical points score very close to 1 on this scale (S is a small fraction of S_max), so the
//! pipeline calibrates it like an unbounded score instead of comparing it to thresholds as is.
//!
//! Workspace: river needs features in [0, 1] (`limits` defaults to that and usually follows a
//! min-max scaler). Here `limits = [low, high]` sets the range of every feature; without it the
//! range of each feature is learned from the first window (its min and max, widened by 10% of
//! the range on both sides), the trees are built then, and that window becomes the first
//! reference profile. Points outside the workspace fall into the outermost cells.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::Detector;

/// river's default number of trees.
pub const DEFAULT_N_TREES: usize = 10;
/// river's default tree height.
pub const DEFAULT_HEIGHT: usize = 8;
/// river's default window.
pub const DEFAULT_WINDOW_SIZE: usize = 250;
/// river's padding: splits are drawn from the middle `1 - 2 * PADDING` of a range.
const PADDING: f64 = 0.15;
/// Relative widening of a workspace learned from the first window.
const LEARNED_MARGIN: f64 = 0.1;

/// Checked parameters of [`HalfSpaceTrees`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalfSpaceTreesParams {
    /// Number of trees.
    pub n_trees: usize,
    /// Height of every tree (leaves are at this depth).
    pub height: usize,
    /// Points per window.
    pub window_size: usize,
    /// Workspace of every feature; `None` = learned from the first window.
    pub limits: Option<(f64, f64)>,
}

/// `half_space_trees`' `model_params` as config writes them (river's names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HalfSpaceTreesSpec {
    /// See [`HalfSpaceTreesParams::n_trees`].
    pub n_trees: usize,
    /// See [`HalfSpaceTreesParams::height`].
    pub height: usize,
    /// See [`HalfSpaceTreesParams::window_size`].
    pub window_size: usize,
    /// See [`HalfSpaceTreesParams::limits`].
    pub limits: Option<(f64, f64)>,
}

impl Default for HalfSpaceTreesSpec {
    fn default() -> Self {
        let d = HalfSpaceTreesParams::default();
        Self { n_trees: d.n_trees, height: d.height, window_size: d.window_size, limits: d.limits }
    }
}

impl HalfSpaceTreesSpec {
    /// Check `half_space_trees` parameters from config.
    pub fn check(self) -> Result<HalfSpaceTreesParams, SpecError> {
        let bad = invalid("half_space_trees");
        let Self { n_trees, height, window_size, limits } = self;
        if !(1..=1000).contains(&n_trees) {
            return Err(bad("n_trees", format!("{n_trees} is not in 1..=1000")));
        }
        if !(1..=20).contains(&height) {
            return Err(bad("height", format!("{height} is not in 1..=20")));
        }
        if !(2..=1 << 24).contains(&window_size) {
            return Err(bad("window_size", format!("{window_size} is not in 2..=16777216")));
        }
        if let Some((lo, hi)) = limits {
            if lo >= hi {
                return Err(bad("limits", format!("[{lo}, {hi}] is empty; low must be below high")));
            }
        }
        Ok(HalfSpaceTreesParams { n_trees, height, window_size, limits })
    }
}

impl Default for HalfSpaceTreesParams {
    fn default() -> Self {
        Self { n_trees: DEFAULT_N_TREES, height: DEFAULT_HEIGHT, window_size: DEFAULT_WINDOW_SIZE, limits: None }
    }
}

/// One node of a complete tree in heap order (children of `i` are `2i+1`, `2i+2`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Node {
    /// Split value (internal nodes): left takes `x[feature] < split`.
    split: f64,
    /// Split feature.
    feature: u32,
    /// Mass of the reference (previous) window.
    r_mass: u32,
    /// Mass of the current window.
    l_mass: u32,
}

/// The Half-Space Trees detector. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HalfSpaceTrees {
    /// Checked parameters.
    params: HalfSpaceTreesParams,
    /// Number of features.
    dim: usize,
    /// All trees' nodes, tree after tree, `2^(height+1) - 1` each (empty until built).
    nodes: Vec<Node>,
    /// Points of the current window so far.
    counter: usize,
    /// Whether a reference profile exists yet (river's `not _first_window`).
    has_reference: bool,
    /// First-window points while the workspace is being learned (row-major).
    warm_up: Vec<f64>,
    /// Source of every random choice.
    rng: Pcg64Mcg,
}

impl HalfSpaceTrees {
    /// A detector over `dim` features, seeded.
    pub fn new(params: HalfSpaceTreesParams, dim: usize, seed: u64) -> Self {
        let mut hst = Self {
            params,
            dim,
            nodes: Vec::new(),
            counter: 0,
            has_reference: false,
            warm_up: Vec::new(),
            rng: Pcg64Mcg::seed_from_u64(seed),
        };
        if let Some((lo, hi)) = hst.params.limits {
            let limits = vec![(lo, hi); dim];
            hst.build(&limits);
        }
        hst
    }

    fn nodes_per_tree(&self) -> usize {
        (1 << (self.params.height + 1)) - 1
    }

    /// Build every tree over the workspace `limits` (river's `make_padded_tree`).
    fn build(&mut self, limits: &[(f64, f64)]) {
        let per_tree = self.nodes_per_tree();
        self.nodes = vec![Node { split: 0.0, feature: 0, r_mass: 0, l_mass: 0 }; per_tree * self.params.n_trees];
        let mut work = limits.to_vec();
        for t in 0..self.params.n_trees {
            self.build_node(t * per_tree, 0, 0, &mut work);
        }
    }

    fn build_node(&mut self, base: usize, i: usize, depth: usize, work: &mut [(f64, f64)]) {
        if depth == self.params.height || work.is_empty() {
            return;
        }
        let total: f64 = work.iter().map(|(lo, hi)| hi - lo).sum();
        let feature = if total > 0.0 && total.is_finite() {
            let mut pick = self.rng.random::<f64>() * total;
            let mut f = work.len() - 1;
            for (k, (lo, hi)) in work.iter().enumerate() {
                if pick < hi - lo {
                    f = k;
                    break;
                }
                pick -= hi - lo;
            }
            f
        } else {
            self.rng.random_range(0..work.len())
        };
        let (a, b) = work[feature];
        let split = a + (b - a) * (PADDING + (1.0 - 2.0 * PADDING) * self.rng.random::<f64>());
        self.nodes[base + i] = Node { split, feature: feature as u32, r_mass: 0, l_mass: 0 };
        work[feature] = (a, split);
        self.build_node(base, 2 * i + 1, depth + 1, work);
        work[feature] = (split, b);
        self.build_node(base, 2 * i + 2, depth + 1, work);
        work[feature] = (a, b);
    }

    /// Count `x` in the current window of every tree (a NaN goes right, like `x < split`
    /// being false).
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must go right: `!(v < s)`, not `v >= s`
    fn count(&mut self, x: &[f64]) {
        let per_tree = self.nodes_per_tree();
        let height = self.params.height;
        for tree in self.nodes.chunks_exact_mut(per_tree) {
            let mut i = 0;
            for _ in 0..height {
                let node = &mut tree[i];
                node.l_mass += 1;
                i = 2 * i + 1 + !(x[node.feature as usize] < node.split) as usize;
            }
            tree[i].l_mass += 1;
        }
    }

    /// End of a window: the current counts become the reference profile.
    fn rotate(&mut self) {
        for node in &mut self.nodes {
            node.r_mass = node.l_mass;
            node.l_mass = 0;
        }
        self.has_reference = true;
        self.counter = 0;
    }

    /// Build the workspace from the buffered first window and replay it.
    fn finish_warm_up(&mut self) {
        let dim = self.dim;
        let mut limits = vec![(f64::INFINITY, f64::NEG_INFINITY); dim];
        for row in self.warm_up.chunks_exact(dim) {
            for (l, v) in limits.iter_mut().zip(row) {
                l.0 = l.0.min(*v);
                l.1 = l.1.max(*v);
            }
        }
        for l in &mut limits {
            let margin = (l.1 - l.0) * LEARNED_MARGIN;
            *l = (l.0 - margin, l.1 + margin);
        }
        self.build(&limits);
        let rows = std::mem::take(&mut self.warm_up);
        for row in rows.chunks_exact(dim) {
            self.count(row);
        }
    }
}

impl Detector for HalfSpaceTrees {
    /// Per feature, the mean of the split values of the top levels of the trees, weighted by
    /// the reference window's mass through each node: where the learned data sits.
    fn reference(&self, out: &mut Vec<f64>) -> bool {
        out.clear();
        if !self.has_reference || self.dim == 0 {
            return false;
        }
        let per_tree = self.nodes_per_tree();
        // Internal nodes of depth <= 4 (heap order: the first 31), never the leaves.
        let top = per_tree.min(31).min((1 << self.params.height) - 1);
        let mut weight = vec![0.0; self.dim];
        out.resize(self.dim, 0.0);
        for tree in self.nodes.chunks_exact(per_tree) {
            for node in &tree[..top] {
                let w = node.r_mass as f64 + 1.0;
                out[node.feature as usize] += w * node.split;
                weight[node.feature as usize] += w;
            }
        }
        // A feature no top node splits on has no estimate: NaN tells occlusion to leave it.
        out.iter_mut().zip(&weight).for_each(|(o, w)| *o = if *w > 0.0 { *o / w } else { f64::NAN });
        true
    }

    fn learn_one(&mut self, x: &[f64]) {
        if x.len() != self.dim || self.dim == 0 {
            return;
        }
        if self.nodes.is_empty() {
            self.warm_up.extend_from_slice(x);
            self.counter += 1;
            if self.counter == self.params.window_size {
                self.finish_warm_up();
                self.rotate();
            }
            return;
        }
        self.count(x);
        self.counter += 1;
        if self.counter == self.params.window_size {
            self.rotate();
        }
    }

    #[allow(clippy::neg_cmp_op_on_partial_ord)] // as in `count`
    fn score_one(&mut self, x: &[f64]) -> f64 {
        if !self.has_reference || x.len() != self.dim || self.dim == 0 {
            return 0.0;
        }
        let per_tree = self.nodes_per_tree();
        let height = self.params.height;
        let size_limit = 0.1 * self.params.window_size as f64;
        let mut score = 0.0;
        for tree in self.nodes.chunks_exact(per_tree) {
            let mut i = 0;
            for depth in 0..=height {
                let node = &tree[i];
                score += node.r_mass as f64 * (1u64 << depth) as f64;
                if (node.r_mass as f64) < size_limit || depth == height {
                    break;
                }
                i = 2 * i + 1 + !(x[node.feature as usize] < node.split) as usize;
            }
        }
        let max_score = (self.params.n_trees * self.params.window_size) as f64 * ((1u64 << (height + 1)) - 1) as f64;
        1.0 - score / max_score
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::metrics::roc_auc;
    use crate::detect::params::{read_params, ParamValue as V, Params};
    use crate::detect::synthetic::{generate, StreamKind, StreamSpec};

    fn auc(params: HalfSpaceTreesParams, kind: StreamKind) -> f64 {
        let s = generate(&StreamSpec { len: 8_000, ..StreamSpec::benchmark(kind, 2) });
        let mut h = HalfSpaceTrees::new(params, 10, 1);
        let scores: Vec<f64> = s.points.iter().map(|x| h.learn_score_one(x)).collect();
        roc_auc(&scores[2048..], &s.labels[2048..]).unwrap()
    }

    #[test]
    fn outliers_score_higher_with_a_learned_workspace() {
        let a = auc(HalfSpaceTreesParams::default(), StreamKind::ShiftAll);
        assert!(a > 0.99, "{a}");
    }

    #[test]
    fn explicit_limits_build_the_trees_at_once() {
        let p = HalfSpaceTreesParams { limits: Some((-5.0, 11.0)), ..Default::default() };
        let h = HalfSpaceTrees::new(p.clone(), 10, 1);
        assert_eq!(h.nodes.len(), 10 * 511);
        assert!(auc(p, StreamKind::ShiftAll) > 0.99);
    }

    #[test]
    fn score_is_zero_in_the_first_window_and_in_range_after() {
        let mut h = HalfSpaceTrees::new(HalfSpaceTreesParams::default(), 2, 3);
        for i in 0..250 {
            assert_eq!(h.score_one(&[i as f64, 1.0]), 0.0);
            h.learn_one(&[i as f64, 1.0]);
        }
        let s = h.score_one(&[3.0, 1.0]);
        assert!((0.0..=1.0).contains(&s) && s > 0.0, "{s}");
        assert!(h.score_one(&[1e9, 1.0]) > s);
    }

    #[test]
    fn window_masses_rotate_and_sum_to_the_window() {
        let p = HalfSpaceTreesParams { limits: Some((0.0, 1.0)), window_size: 100, ..Default::default() };
        let mut h = HalfSpaceTrees::new(p, 3, 5);
        let mut rng = Pcg64Mcg::seed_from_u64(2);
        for _ in 0..130 {
            h.learn_one(&[rng.random(), rng.random(), rng.random()]);
        }
        let per_tree = h.nodes_per_tree();
        for tree in h.nodes.chunks_exact(per_tree) {
            assert_eq!(tree[0].r_mass, 100);
            assert_eq!(tree[0].l_mass, 30);
            let leaves = &tree[per_tree / 2..];
            assert_eq!(leaves.iter().map(|n| n.r_mass).sum::<u32>(), 100);
        }
    }

    #[test]
    fn snapshot_restore_continues_bit_identically() {
        let s = generate(&StreamSpec { len: 2_000, ..StreamSpec::benchmark(StreamKind::Drift, 4) });
        let mut h = HalfSpaceTrees::new(HalfSpaceTreesParams::default(), 10, 9);
        for x in &s.points[..900] {
            h.learn_score_one(x);
        }
        let mut restored: HalfSpaceTrees = postcard::from_bytes(&postcard::to_stdvec(&h).unwrap()).unwrap();
        assert_eq!(restored, h);
        for x in &s.points[900..] {
            assert_eq!(h.score_one(x).to_bits(), restored.score_one(x).to_bits());
            h.learn_one(x);
            restored.learn_one(x);
        }
        // Also from inside the first window (the workspace still being learned).
        let mut h = HalfSpaceTrees::new(HalfSpaceTreesParams::default(), 10, 9);
        for x in &s.points[..100] {
            h.learn_one(x);
        }
        let mut restored: HalfSpaceTrees = postcard::from_bytes(&postcard::to_stdvec(&h).unwrap()).unwrap();
        for x in &s.points[100..600] {
            assert_eq!(h.learn_score_one(x).to_bits(), restored.learn_score_one(x).to_bits());
        }
    }

    #[test]
    fn params_are_checked_with_river_names() {
        let check = |p: &Params| read_params::<HalfSpaceTreesSpec>("half_space_trees", p)?.check();
        let ok: Params = [("limits".to_string(), V::List(vec![V::Float(-1.0), V::Int(1)]))].into();
        assert_eq!(check(&ok).unwrap().limits, Some((-1.0, 1.0)));
        for (key, value, expect) in [
            ("n_tree", V::Int(3), "unknown parameter `n_tree`"),
            ("height", V::Int(0), "invalid `height`"),
            ("window_size", V::Int(1), "invalid `window_size`"),
            ("limits", V::List(vec![V::Int(1), V::Int(1)]), "invalid `limits`"),
        ] {
            let p: Params = [(key.to_string(), value)].into();
            let err = check(&p).unwrap_err().to_string();
            assert!(err.contains(expect), "{key}: {err}");
        }
    }
}
