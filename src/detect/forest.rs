//! Online Isolation Forest (Leveni, Weigert Cassales, Pfahringer, Bifet, Boracchi, "Online
//! Isolation Forest", ICML 2024), as ONAD 0.3.0 implements it (`onad.model.iforest.online.
//! OnlineIsolationForest`), with ONAD's bugs fixed.
//!
//! Each tree partitions the feature space with axis-parallel splits. A leaf at depth `k` splits
//! when its count reaches `max_leaf_samples * 2^k` (`type = "adaptive"`; `max_leaf_samples` for
//! `"fixed"`) and `k` is below the depth limit `c(n) = ln(n / max_leaf_samples) / ln(2 b)` of the
//! tree's point count `n` (`b` = branching factor). Splitting draws `count` points uniformly
//! from the leaf's bounding box and builds a subtree over them as a batch isolation tree would
//! (random feature, split values uniform over the sampled range). A FIFO window of
//! `window_size` points forgets the oldest point: counts along its path are decremented and an
//! internal node whose count falls below its split threshold collapses back into a leaf.
//!
//! Score: `2^(-mean depth / c(n * subsample))` over the trees, where a point's depth in a tree is
//! its leaf's depth plus `c(leaf count)`. Range (0, 1]; larger is more anomalous. The scale is
//! compressed: with the defaults on 10 standard normal features typical points score about
//! 0.26 and points shifted by 6 sigma about 0.49, which is why the pipeline calibrates this
//! score like the unbounded ones. Until the forest has seen more than `max_leaf_samples`
//! points the score is 0 (ONAD returns 1.0 then, flagging every early reading as an anomaly).
//!
//! Differences from ONAD, all deliberate:
//! - An empty child (no sampled point fell into it) gets an empty bounding box that grows with
//!   the points it learns. ONAD gives it no box and never updates it, so when it later has to
//!   split it crashes (`uniform(None, None)`); a feature constant for 1,500 points and then
//!   varying crashes ONAD at point 1,645.
//! - With `subsample < 1` each tree remembers which window points it learned and forgets
//!   exactly those; ONAD draws a fresh random subsample when forgetting, so trees forget points
//!   they never learned and keep points that left the window.
//! - Feature order is the pipeline's fixed order, never a dict's insertion order.
//! - A split is drawn among the features whose sampled range is not zero-width (all features if
//!   none has width, as ONAD): a zero-width split sends every sample to one side and only adds
//!   a level of depth to every point.
//! - Internal nodes keep no bounding box: in ONAD an internal node's box is always the union of
//!   its leaves' boxes and is only read when the node collapses, so it is computed then.
//! - Counts are exact integers and may go below zero in a child built from synthetic samples
//!   (as in ONAD and the paper); parents always equal the sum of their children.

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::Detector;

mod tree;

use tree::{Scratch, Tables, Tree, LEAF};

/// ONAD's default number of trees.
pub const DEFAULT_NUM_TREES: usize = 100;
/// ONAD's default leaf capacity at depth 0.
pub const DEFAULT_MAX_LEAF_SAMPLES: usize = 32;
/// ONAD's default sliding window.
pub const DEFAULT_WINDOW_SIZE: usize = 2048;
/// ONAD's default (binary trees).
pub const DEFAULT_BRANCHING_FACTOR: usize = 2;

/// How the split threshold grows with depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeType {
    /// A leaf at depth `k` splits at `max_leaf_samples * 2^k` points (ONAD's default).
    Adaptive,
    /// A leaf splits at `max_leaf_samples` points at every depth.
    Fixed,
}

/// Checked parameters of [`OnlineIsolationForest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationForestParams {
    /// Number of trees.
    pub num_trees: usize,
    /// Leaf capacity at depth 0.
    pub max_leaf_samples: usize,
    /// Threshold growth with depth (`type`).
    pub tree_type: TreeType,
    /// Probability that a tree learns a given point.
    pub subsample: f64,
    /// Points remembered before the oldest is forgotten.
    pub window_size: usize,
    /// Children per internal node.
    pub branching_factor: usize,
}

impl Default for IsolationForestParams {
    fn default() -> Self {
        Self {
            num_trees: DEFAULT_NUM_TREES,
            max_leaf_samples: DEFAULT_MAX_LEAF_SAMPLES,
            tree_type: TreeType::Adaptive,
            subsample: 1.0,
            window_size: DEFAULT_WINDOW_SIZE,
            branching_factor: DEFAULT_BRANCHING_FACTOR,
        }
    }
}

/// `isolation_forest`'s `model_params` as config writes them, with ONAD's names.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationForestSpec {
    /// See [`IsolationForestParams::num_trees`].
    pub num_trees: usize,
    /// See [`IsolationForestParams::max_leaf_samples`].
    pub max_leaf_samples: usize,
    /// [`IsolationForestParams::tree_type`]: `"adaptive"` or `"fixed"`.
    #[serde(rename = "type")]
    pub tree_type: String,
    /// See [`IsolationForestParams::subsample`].
    pub subsample: f64,
    /// See [`IsolationForestParams::window_size`].
    pub window_size: usize,
    /// See [`IsolationForestParams::branching_factor`].
    pub branching_factor: usize,
    /// Must be `"axisparallel"`, ONAD's default and only metric here.
    pub metric: String,
    /// Accepted for compatibility with ONAD and ignored: one pipeline is scored on one thread,
    /// the worker parallelises across partitions.
    pub n_jobs: f64,
}

impl Default for IsolationForestSpec {
    fn default() -> Self {
        let d = IsolationForestParams::default();
        Self {
            num_trees: d.num_trees,
            max_leaf_samples: d.max_leaf_samples,
            tree_type: "adaptive".into(),
            subsample: d.subsample,
            window_size: d.window_size,
            branching_factor: d.branching_factor,
            metric: "axisparallel".into(),
            n_jobs: 1.0,
        }
    }
}

impl IsolationForestSpec {
    /// Check `isolation_forest` parameters from config.
    pub fn check(self) -> Result<IsolationForestParams, SpecError> {
        let bad = invalid("isolation_forest");
        let Self { num_trees, max_leaf_samples, tree_type, subsample, window_size, branching_factor, metric, n_jobs: _ } = self;
        let tree_type = match tree_type.as_str() {
            "adaptive" => TreeType::Adaptive,
            "fixed" => TreeType::Fixed,
            other => return Err(bad("type", format!("`{other}` is not \"adaptive\" or \"fixed\""))),
        };
        if !(1..=10_000).contains(&num_trees) {
            return Err(bad("num_trees", format!("{num_trees} is not in 1..=10000")));
        }
        if !(1..=1 << 20).contains(&max_leaf_samples) {
            return Err(bad("max_leaf_samples", format!("{max_leaf_samples} is not in 1..=1048576")));
        }
        if !(subsample > 0.0 && subsample <= 1.0) {
            return Err(bad("subsample", format!("{subsample} is not in (0, 1]")));
        }
        if window_size <= max_leaf_samples || window_size > 1 << 24 {
            let reason = format!("{window_size} must exceed max_leaf_samples ({max_leaf_samples}) and be at most 16777216");
            return Err(bad("window_size", reason));
        }
        if !(2..=64).contains(&branching_factor) {
            return Err(bad("branching_factor", format!("{branching_factor} is not in 2..=64")));
        }
        if metric != "axisparallel" {
            return Err(bad("metric", format!("`{metric}` is not supported (only \"axisparallel\")")));
        }
        Ok(IsolationForestParams { num_trees, max_leaf_samples, tree_type, subsample, window_size, branching_factor })
    }
}

impl IsolationForestParams {
    /// `c(n) = ln(n / max_leaf_samples) / ln(2 b)`, 0 below `max_leaf_samples`: the expected
    /// extra depth of `n` points (ONAD's `get_random_path_length`).
    fn path_length(&self, n: f64) -> f64 {
        let mls = self.max_leaf_samples as f64;
        if n < mls {
            0.0
        } else {
            (n / mls).ln() / ((2 * self.branching_factor) as f64).ln()
        }
    }

    /// Count at which a leaf at `depth` splits, and below which an internal node collapses.
    fn threshold(&self, depth: u32) -> i64 {
        let mls = self.max_leaf_samples as i64;
        match self.tree_type {
            TreeType::Fixed => mls,
            TreeType::Adaptive if depth >= 40 => i64::MAX,
            TreeType::Adaptive => mls << depth,
        }
    }
}

/// Derived tables and reusable buffers: not state, rebuilt on demand after a restore.
#[derive(Debug, Clone, Default)]
struct Cache {
    /// Lookup tables of the parameters (empty until first use).
    tables: Tables,
    /// Buffers of splitting and collapsing.
    scratch: Scratch,
    /// Trees still to descend (in tree order) when learning without recorded paths.
    walk: Vec<u32>,
    /// Per tree: the leaf the last learned (or scored) point reached and its depth; after
    /// learning, `None` when the tree did not learn it or changed shape since.
    leaves: Vec<Option<(u32, u32)>>,
    /// Per tree, the nodes the last scored point visited, [`MAX_PATH`] slots per tree.
    paths: Vec<u32>,
    /// Per tree, how many of its `paths` slots are used.
    path_len: Vec<u8>,
    /// The last scored point while `paths` describe it in the current trees (cleared by any
    /// learning): learning that same point next (score-then-learn, the pipeline's default)
    /// then updates the recorded nodes instead of descending again.
    scored: Vec<f64>,
}

/// Longest path recorded for reuse (deeper trees just descend again).
const MAX_PATH: usize = 32;

impl PartialEq for Cache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The Online Isolation Forest detector. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineIsolationForest {
    /// Checked parameters.
    params: IsolationForestParams,
    /// Number of features.
    dim: usize,
    /// The trees.
    trees: Vec<Tree>,
    /// Ring buffer of the last `window_size` points (row-major).
    window: Vec<f64>,
    /// Slot of the oldest point in `window` once it is full.
    window_head: usize,
    /// Points in the window.
    window_len: usize,
    /// With `subsample < 1`: per window slot, one bit per tree that learned the point.
    learned_by: Vec<u64>,
    /// Points learned and not forgotten (ONAD's forest `data_size`).
    data_size: u64,
    /// `c(data_size * subsample)`: the depth normalisation of the score.
    normalization: f64,
    /// Source of every random choice.
    rng: Pcg64Mcg,
    /// Tables and buffers, not state.
    #[serde(skip)]
    cache: Cache,
}

impl OnlineIsolationForest {
    /// An empty forest over `dim` features, seeded.
    pub fn new(params: IsolationForestParams, dim: usize, seed: u64) -> Self {
        Self {
            trees: vec![Tree::default(); params.num_trees],
            window: Vec::new(),
            window_head: 0,
            window_len: 0,
            learned_by: Vec::new(),
            data_size: 0,
            normalization: 0.0,
            rng: Pcg64Mcg::seed_from_u64(seed),
            cache: Cache::default(),
            params,
            dim,
        }
    }

    /// Words of the per-slot tree mask (0 when every tree learns every point).
    fn mask_words(&self) -> usize {
        if self.params.subsample < 1.0 {
            self.params.num_trees.div_ceil(64)
        } else {
            0
        }
    }

    /// Build the derived tables if this is the first use (or the first after a restore).
    fn ensure_cache(&mut self) {
        if self.cache.tables.split_min_count.is_empty() {
            self.cache.tables = Tables::new(&self.params);
        }
        self.cache.leaves.resize(self.params.num_trees, None);
        self.cache.paths.resize(self.params.num_trees * MAX_PATH, 0);
        self.cache.path_len.resize(self.params.num_trees, 0);
    }

    /// Learn `x`, then forget the oldest point if the window overflows. Leaves
    /// `cache.leaves[t]` = where `x` ended in tree `t` if that is still valid.
    fn learn_point(&mut self, x: &[f64]) {
        self.ensure_cache();
        let p = &self.params;
        let dim = self.dim;
        let words = self.mask_words();
        let full = self.window_len == p.window_size;
        // The slot the new point takes: the oldest one's once the window is full.
        let slot = if full { self.window_head } else { self.window_len };
        let cache = &mut self.cache;
        let mut mask_buf = [0u64; 4];
        let mut mask_heap = Vec::new();
        let mask: &mut [u64] = if words <= mask_buf.len() {
            &mut mask_buf[..words]
        } else {
            mask_heap.resize(words, 0);
            &mut mask_heap
        };

        self.data_size += 1;
        cache.walk.clear();
        for (t, tree) in self.trees.iter_mut().enumerate() {
            cache.leaves[t] = None;
            if words > 0 {
                if self.rng.random::<f64>() >= p.subsample {
                    continue;
                }
                mask[t / 64] |= 1 << (t % 64);
            }
            tree.count += 1;
            if tree.nodes.is_empty() {
                tree.plant(x, p.branching_factor);
            } else {
                cache.walk.push(t as u32);
            }
        }
        if !cache.scored.is_empty() && cache.scored.as_slice() == x {
            // Score-then-learn of the same point: the trees have not changed since the score
            // descent, so the recorded paths are the ones this descent would take.
            for &t in &cache.walk {
                let t = t as usize;
                let path = &cache.paths[t * MAX_PATH..t * MAX_PATH + cache.path_len[t] as usize];
                let tree = &mut self.trees[t];
                for idx in path {
                    tree.nodes[*idx as usize].count += 1;
                }
                if let Some(leaf) = path.last() {
                    tree.expand_box(*leaf, x);
                    cache.leaves[t] = Some((*leaf, path.len() as u32 - 1));
                }
            }
            cache.walk.clear();
        }
        cache.scored.clear();
        // One tree after another: at the window sizes in use every tree is in L2 and a
        // descent is a few levels, so the loop branches predict and the out-of-order core
        // overlaps consecutive trees' loads (measured faster than interleaving the trees one
        // level per pass, whose bookkeeping cost more than it hid; BENCHMARKS.md).
        for &t in &cache.walk {
            let tree = &mut self.trees[t as usize];
            let (mut idx, mut depth) = (0u32, 0u32);
            while let Some(node) = tree.nodes.get_mut(idx as usize) {
                node.count += 1;
                if node.first_child == LEAF {
                    tree.expand_box(idx, x);
                    cache.leaves[t as usize] = Some((idx, depth));
                    break;
                }
                let node = *node;
                idx = tree.child(idx, &node, x, p.branching_factor);
                depth += 1;
            }
        }
        cache.walk.clear();
        for (t, tree) in self.trees.iter_mut().enumerate() {
            if let Some((idx, depth)) = cache.leaves[t] {
                if tree.maybe_split(idx, depth, dim, p, &cache.tables, &mut self.rng, &mut cache.scratch) {
                    cache.leaves[t] = None;
                }
            }
        }

        if full {
            let old = &self.window[slot * dim..(slot + 1) * dim];
            let old_mask = &self.learned_by[slot * words..(slot + 1) * words];
            for (t, tree) in self.trees.iter_mut().enumerate() {
                if words > 0 && old_mask[t / 64] >> (t % 64) & 1 == 0 {
                    continue;
                }
                tree.count -= 1;
                let (mut idx, mut depth) = (0u32, 0u32);
                while let Some(node) = tree.nodes.get_mut(idx as usize) {
                    node.count -= 1;
                    if node.first_child == LEAF {
                        break;
                    }
                    if (node.count as i64) < cache.tables.threshold(p, depth) {
                        tree.collapse(idx as usize, dim, p.branching_factor, &mut cache.scratch);
                        cache.leaves[t] = None;
                        break;
                    }
                    let node = *node;
                    idx = tree.child(idx, &node, old, p.branching_factor);
                    depth += 1;
                }
            }
            self.data_size -= 1;
            self.window[slot * dim..(slot + 1) * dim].copy_from_slice(x);
            self.learned_by[slot * words..(slot + 1) * words].copy_from_slice(mask);
            self.window_head = (self.window_head + 1) % p.window_size;
        } else {
            self.window.extend_from_slice(x);
            self.learned_by.extend_from_slice(mask);
            self.window_len += 1;
        }
        self.normalization = p.path_length(self.data_size as f64 * p.subsample);
    }

    /// ONAD's score from the sum over trees of (leaf depth + c(leaf count)).
    fn finish_score(&self, total_depth: f64) -> f64 {
        if self.normalization <= 0.0 {
            return 0.0;
        }
        let mean = total_depth / self.trees.len() as f64;
        (-mean / (self.normalization + f64::EPSILON)).exp2()
    }

    /// Depth of the point in one tree from its leaf: depth + c(count).
    #[inline]
    fn leaf_depth(&self, tree: &Tree, idx: u32, depth: u32) -> f64 {
        leaf_depth(&self.params, &self.cache.tables, tree, idx, depth)
    }

    fn score_point(&mut self, x: &[f64]) -> f64 {
        if self.normalization <= 0.0 {
            return 0.0;
        }
        self.ensure_cache();
        let b = self.params.branching_factor;
        let cache = &mut self.cache;
        cache.scored.clear();
        let mut recorded = true;
        // Summed in tree order, so that every path to a score adds the same floats in the same
        // order (bit-identical results). One tree after another, as in learning.
        let mut total = 0.0;
        for ((tree, path), path_len) in self.trees.iter().zip(cache.paths.chunks_exact_mut(MAX_PATH)).zip(&mut cache.path_len) {
            *path_len = 0;
            let (mut idx, mut depth) = (0u32, 0u32);
            let Some(mut node) = tree.nodes.first() else { continue };
            loop {
                match path.get_mut(depth as usize) {
                    Some(slot) => {
                        *slot = idx;
                        *path_len = depth as u8 + 1;
                    }
                    None => recorded = false,
                }
                if node.first_child == LEAF {
                    break;
                }
                idx = tree.child(idx, node, x, b);
                depth += 1;
                node = &tree.nodes[idx as usize];
            }
            total += leaf_depth(&self.params, &cache.tables, tree, idx, depth);
        }
        if recorded {
            cache.scored.extend_from_slice(x);
        }
        self.finish_score(total)
    }

    /// Learn `x`, then score it, reusing the leaves the learning descent found.
    fn learn_score_point(&mut self, x: &[f64]) -> f64 {
        self.learn_point(x);
        if self.normalization <= 0.0 {
            return 0.0;
        }
        let b = self.params.branching_factor;
        let mut total = 0.0;
        for (t, tree) in self.trees.iter().enumerate() {
            let (idx, depth) = match self.cache.leaves[t] {
                Some(leaf) => leaf,
                None if tree.nodes.is_empty() => continue,
                None => tree.find_leaf_from(0, 0, x, b),
            };
            total += self.leaf_depth(tree, idx, depth);
        }
        self.finish_score(total)
    }

    /// Nodes in use over all trees.
    pub fn node_count(&self) -> usize {
        self.trees.iter().map(|t| t.nodes.len() - t.free.len() * self.params.branching_factor).sum()
    }
}

/// Depth of a point in `tree` from its leaf `idx` at `depth`: depth + c(leaf count).
#[inline]
fn leaf_depth(p: &IsolationForestParams, tables: &Tables, tree: &Tree, idx: u32, depth: u32) -> f64 {
    let count = tree.nodes.get(idx as usize).map_or(0, |n| n.count.max(0) as usize);
    let extra = match tables.path_length.get(count) {
        Some(c) => *c,
        None => p.path_length(count as f64),
    };
    depth as f64 + extra
}

impl Detector for OnlineIsolationForest {
    /// The mean of the window of learned points.
    fn reference(&self, out: &mut Vec<f64>) -> bool {
        out.clear();
        if self.window_len == 0 {
            return false;
        }
        out.resize(self.dim, 0.0);
        for row in self.window.chunks_exact(self.dim.max(1)).take(self.window_len) {
            out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
        }
        out.iter_mut().for_each(|o| *o /= self.window_len as f64);
        true
    }

    // A point of the wrong width (or a forest over no features) is not learned and scores 0:
    // the pipeline fixes the width, so this only guards against misuse of the library.
    fn learn_one(&mut self, x: &[f64]) {
        if x.len() == self.dim && self.dim > 0 {
            self.learn_point(x);
        }
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        if x.len() != self.dim || self.dim == 0 {
            return 0.0;
        }
        self.score_point(x)
    }

    fn learn_score_one(&mut self, x: &[f64]) -> f64 {
        if x.len() != self.dim || self.dim == 0 {
            return 0.0;
        }
        self.learn_score_point(x)
    }
}

#[cfg(test)]
mod tests;
