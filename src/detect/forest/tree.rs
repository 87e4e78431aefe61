//! One online isolation tree: a node arena, leaf bounding boxes, splitting and collapsing.
//!
//! Traversal of the trees lives in the parent module (it descends one tree after another and
//! shares a score's recorded paths with the learning that follows); this module owns
//! everything that changes a tree's shape.

use rand::Rng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::IsolationForestParams;

/// Marks a node without children.
pub(super) const LEAF: u32 = u32::MAX;

/// One tree node. Children of an internal node are `branching_factor` consecutive nodes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Node {
    /// First split value (child 0 takes `x[feature] < split`).
    pub(super) split: f64,
    /// Index of the first child, or [`LEAF`].
    pub(super) first_child: u32,
    /// Split feature (internal nodes).
    pub(super) feature: u32,
    /// Points in this subtree (learned minus forgotten; synthetic at split time).
    pub(super) count: i32,
}

/// A fresh empty leaf.
const EMPTY_LEAF: Node = Node { split: 0.0, first_child: LEAF, feature: 0, count: 0 };

/// One online isolation tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Tree {
    /// Nodes; index 0 is the root once the tree has learned a point.
    pub(super) nodes: Vec<Node>,
    /// Bounding box of each node slot: `dim` minima then `dim` maxima (meaningful for leaves
    /// only). An empty box is (+inf, -inf).
    pub(super) boxes: Vec<f64>,
    /// Split values 2..b-1 of each node slot when `branching_factor > 2` (empty otherwise).
    pub(super) more_splits: Vec<f64>,
    /// Start indices of freed child blocks, reused before the arena grows.
    pub(super) free: Vec<u32>,
    /// Points this tree currently holds (its `data_size` in ONAD).
    pub(super) count: i64,
}

/// Derived lookup tables (functions of the parameters only).
#[derive(Debug, Clone, Default)]
pub(super) struct Tables {
    /// `c(n)` for n in 0..len.
    pub(super) path_length: Vec<f64>,
    /// Per depth k: the smallest tree count n with `k < c(n)` (the depth limit), so that the
    /// hot path compares integers yet decides exactly as the float formula.
    pub(super) split_min_count: Vec<i64>,
    /// Per depth: [`IsolationForestParams::threshold`], read on every forgetting step.
    threshold: Vec<i64>,
}

impl Tables {
    /// The tables of `p`.
    pub(super) fn new(p: &IsolationForestParams) -> Self {
        // Leaf counts stay near the window size; larger windows fall back to the formula.
        let len = (p.window_size + 2).min(1 << 16);
        let path_length = (0..len).map(|n| p.path_length(n as f64)).collect();
        let split_min_count = (0..64u32)
            .map(|k| {
                let limit = |n: i64| (k as f64) < p.path_length(n as f64);
                let (mut lo, mut hi) = (0i64, 1i64 << 52);
                if !limit(hi) {
                    return i64::MAX;
                }
                // Smallest n in (lo, hi] with limit(n); c is non-decreasing in n.
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if limit(mid) {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                hi
            })
            .collect();
        let threshold = (0..64).map(|k| p.threshold(k)).collect();
        Self { path_length, split_min_count, threshold }
    }

    /// [`IsolationForestParams::threshold`] from the table (the formula past its end).
    #[inline]
    pub(super) fn threshold(&self, p: &IsolationForestParams, depth: u32) -> i64 {
        match self.threshold.get(depth as usize) {
            Some(t) => *t,
            None => p.threshold(depth),
        }
    }

    /// Whether a tree holding `tree_count` points may split a node at `depth`.
    #[inline]
    pub(super) fn below_depth_limit(&self, depth: u32, tree_count: i64) -> bool {
        self.split_min_count.get(depth as usize).is_some_and(|n| tree_count >= *n)
    }
}

/// Reusable buffers of splitting and collapsing.
#[derive(Debug, Clone, Default)]
pub(super) struct Scratch {
    /// Synthetic points of a split (row-major).
    samples: Vec<f64>,
    /// Per-feature minima.
    lo: Vec<f64>,
    /// Per-feature maxima.
    hi: Vec<f64>,
    /// Candidate split features, or child blocks still to visit.
    list: Vec<u32>,
}

impl Tree {
    /// The child of internal node `idx` that `x` falls into (a NaN goes right, past every
    /// split, as in `x < split` being false).
    #[inline]
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must go right: `!(v < s)`, not `v >= s`
    pub(super) fn child(&self, idx: u32, node: &Node, x: &[f64], branching: usize) -> u32 {
        let v = x[node.feature as usize];
        let first = node.first_child;
        // Branch-free for binary trees: the comparison is a coin flip the predictor cannot
        // learn, and a mispredict costs more than the whole step.
        let right = !(v < node.split);
        if branching == 2 || !right {
            return first + right as u32;
        }
        let k = branching - 2;
        let more = &self.more_splits[idx as usize * k..(idx as usize + 1) * k];
        first + 1 + more.iter().take_while(|s| v >= **s).count() as u32
    }

    /// The leaf `x` falls into, starting at `idx` of depth `depth`, and the leaf's depth.
    pub(super) fn find_leaf_from(&self, mut idx: u32, mut depth: u32, x: &[f64], branching: usize) -> (u32, u32) {
        while let Some(node) = self.nodes.get(idx as usize) {
            if node.first_child == LEAF {
                break;
            }
            idx = self.child(idx, node, x, branching);
            depth += 1;
        }
        (idx, depth)
    }

    /// Make the root a leaf holding `x` (a tree's first point).
    pub(super) fn plant(&mut self, x: &[f64], branching: usize) {
        self.nodes.push(Node { count: 1, ..EMPTY_LEAF });
        self.boxes.extend_from_slice(x);
        self.boxes.extend_from_slice(x);
        self.more_splits.resize(branching - 2, 0.0);
    }

    /// Grow the box of leaf `idx` to hold `x`.
    #[inline]
    pub(super) fn expand_box(&mut self, idx: u32, x: &[f64]) {
        let dim = x.len();
        let i = idx as usize;
        let b = &mut self.boxes[i * 2 * dim..(i + 1) * 2 * dim];
        let (lo, hi) = b.split_at_mut(dim);
        // Selects rather than branches, so the loop compiles to packed min/max: the same
        // result (a NaN compares false and leaves the box as it was).
        for ((l, h), v) in lo.iter_mut().zip(hi.iter_mut()).zip(x) {
            let v = *v;
            *l = if v < *l { v } else { *l };
            *h = if v > *h { v } else { *h };
        }
    }

    /// After `x` reached leaf `idx` (count incremented, box grown): split the leaf if it is
    /// due. Returns whether the tree changed shape.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn maybe_split(
        &mut self,
        idx: u32,
        depth: u32,
        dim: usize,
        p: &IsolationForestParams,
        tables: &Tables,
        rng: &mut Pcg64Mcg,
        scratch: &mut Scratch,
    ) -> bool {
        let i = idx as usize;
        // ONAD's order: the count test, then the depth limit of the tree's current count
        // (which includes the point just learned).
        let count = self.nodes[i].count as i64;
        if count >= tables.threshold(p, depth) && tables.below_depth_limit(depth, self.count) {
            return self.split_leaf(i, depth, dim, p, tables, rng, scratch);
        }
        false
    }

    /// Turn internal node `idx` into a leaf whose box is the union of its leaves' boxes.
    pub(super) fn collapse(&mut self, idx: usize, dim: usize, branching: usize, scratch: &mut Scratch) {
        let (min, max, stack) = (&mut scratch.lo, &mut scratch.hi, &mut scratch.list);
        min.clear();
        min.resize(dim, f64::INFINITY);
        max.clear();
        max.resize(dim, f64::NEG_INFINITY);
        stack.clear();
        stack.push(self.nodes[idx].first_child);
        self.nodes[idx].first_child = LEAF;
        while let Some(first) = stack.pop() {
            self.free.push(first);
            for c in first as usize..first as usize + branching {
                let child = self.nodes[c];
                if child.first_child == LEAF {
                    let b = &self.boxes[c * 2 * dim..(c + 1) * 2 * dim];
                    for f in 0..dim {
                        min[f] = min[f].min(b[f]);
                        max[f] = max[f].max(b[dim + f]);
                    }
                } else {
                    stack.push(child.first_child);
                }
            }
        }
        let b = &mut self.boxes[idx * 2 * dim..(idx + 1) * 2 * dim];
        b[..dim].copy_from_slice(min);
        b[dim..].copy_from_slice(max);
    }

    /// A block of `branching` node slots.
    fn alloc_block(&mut self, dim: usize, branching: usize) -> u32 {
        if let Some(first) = self.free.pop() {
            return first;
        }
        let first = self.nodes.len() as u32;
        self.nodes.resize(self.nodes.len() + branching, EMPTY_LEAF);
        self.boxes.resize(self.nodes.len() * 2 * dim, 0.0);
        self.more_splits.resize(self.nodes.len() * (branching - 2), 0.0);
        first
    }

    /// Replace leaf `idx` by a subtree built over `count` points drawn uniformly from its box.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn split_leaf(
        &mut self,
        idx: usize,
        depth: u32,
        dim: usize,
        p: &IsolationForestParams,
        tables: &Tables,
        rng: &mut Pcg64Mcg,
        scratch: &mut Scratch,
    ) -> bool {
        let n = self.nodes[idx].count.max(0) as usize;
        let b = &self.boxes[idx * 2 * dim..(idx + 1) * 2 * dim];
        // A box that is empty or infinite cannot be sampled; the leaf stays (it cannot happen
        // with finite inputs, since the leaf learned the points that reached its count).
        if (0..dim).any(|f| b[f] > b[dim + f] || !(b[dim + f] - b[f]).is_finite()) {
            return false;
        }
        let mut samples = std::mem::take(&mut scratch.samples);
        samples.clear();
        samples.reserve(n * dim);
        for _ in 0..n {
            for f in 0..dim {
                samples.push(b[f] + (b[dim + f] - b[f]) * rng.random::<f64>());
            }
        }
        self.build(idx, depth, &mut samples, dim, p, tables, rng, scratch);
        scratch.samples = samples;
        true
    }

    /// Make node slot `idx` the root of a batch isolation subtree over `rows` (ONAD's
    /// `recursive_build`).
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        idx: usize,
        depth: u32,
        rows: &mut [f64],
        dim: usize,
        p: &IsolationForestParams,
        tables: &Tables,
        rng: &mut Pcg64Mcg,
        scratch: &mut Scratch,
    ) {
        let n = rows.len() / dim;
        scratch.lo.clear();
        scratch.lo.resize(dim, f64::INFINITY);
        scratch.hi.clear();
        scratch.hi.resize(dim, f64::NEG_INFINITY);
        for row in rows.chunks_exact(dim) {
            for ((lo, hi), v) in scratch.lo.iter_mut().zip(scratch.hi.iter_mut()).zip(row) {
                *lo = lo.min(*v);
                *hi = hi.max(*v);
            }
        }
        self.nodes[idx].count = n as i32;
        if (n as i64) < tables.threshold(p, depth) || !tables.below_depth_limit(depth, self.count) {
            self.nodes[idx].first_child = LEAF;
            let b = &mut self.boxes[idx * 2 * dim..(idx + 1) * 2 * dim];
            b[..dim].copy_from_slice(&scratch.lo);
            b[dim..].copy_from_slice(&scratch.hi);
            return;
        }
        scratch.list.clear();
        scratch.list.extend((0..dim as u32).filter(|f| scratch.hi[*f as usize] > scratch.lo[*f as usize]));
        let feature =
            if scratch.list.is_empty() { rng.random_range(0..dim) as u32 } else { scratch.list[rng.random_range(0..scratch.list.len())] };
        let (lo, hi) = (scratch.lo[feature as usize], scratch.hi[feature as usize]);
        let b = p.branching_factor;
        let mut splits = [0.0f64; 64];
        for s in splits[..b - 1].iter_mut() {
            *s = lo + (hi - lo) * rng.random::<f64>();
        }
        splits[..b - 1].sort_by(f64::total_cmp);
        let first = self.alloc_block(dim, b);
        self.nodes[idx] = Node { split: splits[0], first_child: first, feature, count: n as i32 };
        if b > 2 {
            self.more_splits[idx * (b - 2)..(idx + 1) * (b - 2)].copy_from_slice(&splits[1..b - 1]);
        }
        // Rows below split j (and not below an earlier one) go to child j.
        let mut start = 0;
        for (j, split) in splits[..b].iter().enumerate() {
            let end = if j + 1 == b { n } else { start + partition_rows(&mut rows[start * dim..], dim, feature as usize, *split) };
            let child = first as usize + j;
            self.nodes[child] = EMPTY_LEAF;
            self.build(child, depth + 1, &mut rows[start * dim..end * dim], dim, p, tables, rng, scratch);
            start = end;
        }
    }
}

/// Move the rows whose `feature` is below `split` to the front; returns how many there are.
fn partition_rows(rows: &mut [f64], dim: usize, feature: usize, split: f64) -> usize {
    let n = rows.len() / dim;
    let mut below = 0;
    for i in 0..n {
        if rows[i * dim + feature] < split {
            if i != below {
                for f in 0..dim {
                    rows.swap(i * dim + f, below * dim + f);
                }
            }
            below += 1;
        }
    }
    below
}
