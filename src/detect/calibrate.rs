//! Online calibration of a detector's raw score to a score in [0, 1] that reads as a rarity.
//!
//! Follows SPOT: A. Siffer, P.-A. Fouque, A. Termier, C. Largouët, "Anomaly Detection in
//! Streams with Extreme Value Theory", KDD 2017. By the Pickands–Balkema–de Haan theorem the
//! excesses X − t of a stream over a high threshold t follow a generalized Pareto distribution
//! (GPD), so tail probabilities far beyond anything seen can be estimated from a few numbers.
//! Where this differs from SPOT, and why:
//! - bounded state: SPOT keeps every excess and refits by maximum likelihood; here the excesses
//!   enter exponentially decayed sums (count, Σy, Σy²) and the GPD is fitted by the method of
//!   moments (Hosking & Wallis 1987), O(1) per reading. The decay (memory [`MEMORY`] readings)
//!   lets the calibration follow a detector whose score scale changes slowly;
//! - the threshold t is the (1 − [`TAIL_FRACTION`]) quantile tracked by Robbins–Monro steps
//!   (scaled by the fitted tail, so it converges about as fast as an empirical quantile; they
//!   stop shrinking after [`TRACKING`] readings, so t follows a drifting score scale), and
//!   the body below t is a log-linear interpolation through the tracked median and t;
//! - the shape ξ is shrunk towards a heavier-than-exponential prior ([`SHAPE_PRIOR`], weight
//!   [`SHAPE_PRIOR_WEIGHT`] excesses): with few excesses the moment estimate is noisy and a
//!   light-tailed error would flag clean readings, so a young calibrator errs towards fewer
//!   alerts;
//! - a raw score is learned clipped at the fitted 1-in-[`CLIP_ODDS`] quantile, so one spike
//!   (SPOT does not learn alarms at all) cannot fatten the tail and hide the next one, while a
//!   lasting rise of the scores still moves the threshold and the tail up;
//! - a detector's warm-up does not enter: leading raw scores of exactly 0 (a detector with
//!   nothing learned yet) and then the first [`SKIP`] non-zero ones (a model fitted on a handful
//!   of points, e.g. z-scores from 2–4 readings) are ignored, and the next [`INIT_LEN`] are
//!   kept to start the estimates from exact empirical quantiles (the only buffer, emptied
//!   then).
//!
//! # Score semantics
//! `p(x)` is the estimated probability that one of this sensor's readings gets a raw score
//! above `x` (on the sensor's recent, mostly clean, history). The calibrated score is
//! `clamp(-log10(p) / 5, 0, 1)`: every 0.2 is a factor of 10 in rarity, so
//! 0.2 = 1 in 10, 0.4 = 1 in 100, 0.6 = 1 in 1,000, 0.8 = 1 in 10,000 and 1.0 = 1 in 100,000
//! or rarer (and 0.1 steps are factors of ~3.2). A threshold `s` therefore flags about one
//! clean reading in `10^(5 s)`. The score is monotone (non-decreasing) in the raw score for a
//! given state, 0 until the calibrator has started (the sensor's first ~80 scored readings
//! for the z-score detector), and deterministic: the state is plain data and a restored
//! snapshot continues bit-identically.

use serde::{Deserialize, Serialize};

/// Decades of rarity spanned by the score: score 1.0 = a tail probability of 10^-5.
pub const SCORE_DECADES: f64 = 5.0;
/// Fraction of the scores above the GPD threshold. 5%: lower thresholds bias the GPD fit
/// (the excesses of Gaussian-like scores are not yet GPD), higher ones leave too few excesses.
pub const TAIL_FRACTION: f64 = 0.05;
/// Raw scores kept to start the estimates (about 3 excesses at the tail fraction).
pub const INIT_LEN: usize = 64;
/// Non-zero raw scores ignored after a detector's warm-up of zeros.
pub const SKIP: u32 = 16;
/// Effective memory in readings: sums decay by 1 − 1/MEMORY per reading once this many were
/// learned (before, plain averages). ~2,500 excesses: enough for a 1-in-10,000 tail within
/// a factor of ~1.3 on Gaussian-like scores.
pub const MEMORY: f64 = 50_000.0;
/// Readings over which the threshold and the median follow the scores: their Robbins–Monro
/// steps stop shrinking at 1 / TRACKING, so they follow a drifting score scale within a few
/// thousand readings (as the old 2,000-score window did) while the tail's shape keeps the
/// longer [`MEMORY`]; the excesses are measured from the threshold of their time, as DSPOT
/// measures them from a moving level.
pub const TRACKING: f64 = 2_000.0;
/// Shape the estimate is shrunk towards while excesses are few (a heavier tail than the
/// exponential: a young calibrator errs towards fewer alerts).
pub const SHAPE_PRIOR: f64 = 0.1;
/// Weight of [`SHAPE_PRIOR`], in excesses.
pub const SHAPE_PRIOR_WEIGHT: f64 = 100.0;
/// A learned raw score is clipped at the fitted quantile of tail probability 1 / CLIP_ODDS.
pub const CLIP_ODDS: f64 = 10_000.0;
/// Bounds of the moment estimate of the shape: undefined from ξ = 0.5 on; ξ = −1 is a uniform
/// tail (bounded raw scores such as Half-Space Trees' fit about −0.7).
const SHAPE_BOUNDS: (f64, f64) = (-1.0, 0.45);

/// Maps raw scores to calibrated scores in [0, 1] (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibrator {
    /// Non-zero warm-up scores ignored so far (up to [`SKIP`]).
    skipped: u32,
    /// Raw scores learned (the initial ones included).
    learned: u64,
    /// The first [`INIT_LEN`] learned raw scores; empty once the estimates have started.
    init: Vec<f64>,
    /// Tracked median of the raw scores (anchors the body).
    median: f64,
    /// Tracked (1 − [`TAIL_FRACTION`]) quantile: the GPD threshold t.
    threshold: f64,
    /// Decayed count of learned scores.
    weight: f64,
    /// Decayed count of excesses over the threshold.
    excess_weight: f64,
    /// Decayed sum of excesses y = x − t.
    excess_sum: f64,
    /// Decayed sum of y².
    excess_sq_sum: f64,
}

impl Default for Calibrator {
    fn default() -> Self {
        Self::new()
    }
}

impl Calibrator {
    /// A calibrator that has learned nothing (scores 0 until it has started).
    pub fn new() -> Self {
        Self {
            skipped: 0,
            learned: 0,
            init: Vec::new(),
            median: 0.0,
            threshold: 0.0,
            weight: 0.0,
            excess_weight: 0.0,
            excess_sum: 0.0,
            excess_sq_sum: 0.0,
        }
    }

    /// Whether the estimates have started (the calibrator scores anything but 0).
    pub fn is_started(&self) -> bool {
        self.learned as usize >= INIT_LEN && self.init.is_empty()
    }

    /// The calibrated score of `raw` (not learning it): `clamp(-log10(p) / 5, 0, 1)`.
    pub fn score(&self, raw: f64) -> f64 {
        match self.tail_probability(raw) {
            Some(p) if p > 0.0 => (-p.log10() / SCORE_DECADES).clamp(0.0, 1.0),
            Some(_) => 1.0,
            None => 0.0,
        }
    }

    /// The estimated probability that a reading scores raw above `raw`; `None` before the
    /// estimates have started or for a NaN.
    pub fn tail_probability(&self, raw: f64) -> Option<f64> {
        if !self.is_started() || raw.is_nan() {
            return None;
        }
        let phi = self.fraction();
        if raw > self.threshold {
            let Some((shape, scale)) = self.gpd() else {
                // Nothing ever seen above the threshold: rarer than 1 in the scores seen.
                return Some(1.0 / (self.weight + 1.0));
            };
            let y = (raw - self.threshold) / scale;
            if shape.abs() < 1e-9 {
                return Some(phi * (-y).exp());
            }
            let base = 1.0 + shape * y;
            // Beyond the end point of a bounded tail (ξ < 0): never expected.
            return Some(if base <= 0.0 { 0.0 } else { phi * base.powf(-1.0 / shape) });
        }
        let span = self.threshold - self.median;
        if span.is_nan() || span <= 0.0 {
            // Degenerate body (constant scores so far): at or below the threshold is typical.
            return Some(0.5);
        }
        // Log-linear through (median, 1/2) and (threshold, phi), mirrored below the median.
        let ratio = (phi / 0.5).clamp(f64::MIN_POSITIVE, 1.0);
        Some(if raw >= self.median {
            0.5 * ratio.powf((raw - self.median) / span)
        } else {
            1.0 - 0.5 * ratio.powf((self.median - raw) / span)
        })
    }

    /// Learn one raw score (after scoring it).
    pub fn learn(&mut self, raw: f64) {
        if !raw.is_finite() {
            return;
        }
        if self.learned == 0 && self.skipped == 0 && raw == 0.0 {
            // The detector is still in its warm-up (it scores exactly 0 with nothing learned).
            return;
        }
        if self.skipped < SKIP {
            self.skipped += 1;
            return;
        }
        if !self.is_started() {
            self.init.push(raw);
            self.learned += 1;
            if self.init.len() >= INIT_LEN {
                self.start();
            }
            return;
        }
        let x = raw.min(self.quantile(1.0 / CLIP_ODDS));
        self.learned += 1;
        let n = (self.learned as f64).min(TRACKING);
        let decay = if (self.learned as f64) <= MEMORY { 1.0 } else { 1.0 - 1.0 / MEMORY };
        let span = self.threshold - self.median;
        // Scale of the Robbins–Monro steps: 1 / density at the quantile is ~ scale / phi for
        // the GPD tail; fall back to the body's spread, then to the distance itself.
        let scale = match self.gpd() {
            Some((_, s)) if s > 0.0 => s,
            _ if span > 0.0 => span,
            _ => (x - self.threshold).abs(),
        };
        let spread = if span > 0.0 { span } else { scale };
        let above = x > self.threshold;
        self.weight = decay * self.weight + 1.0;
        self.excess_weight *= decay;
        self.excess_sum *= decay;
        self.excess_sq_sum *= decay;
        if above {
            let y = x - self.threshold;
            self.excess_weight += 1.0;
            self.excess_sum += y;
            self.excess_sq_sum += y * y;
        }
        self.threshold += scale / (TAIL_FRACTION * n) * (f64::from(u8::from(above)) - TAIL_FRACTION);
        // 1 / density at the median ~ 1.5 x (t − median) for Gaussian-like bodies.
        self.median += 1.5 * spread / n * (f64::from(u8::from(x > self.median)) - 0.5);
    }

    /// Start the estimates from the initial scores' empirical median and tail quantile.
    fn start(&mut self) {
        let mut sorted = std::mem::take(&mut self.init);
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        self.median = 0.5 * (sorted[(n - 1) / 2] + sorted[n / 2]);
        let excesses = ((n as f64 * TAIL_FRACTION).round() as usize).clamp(1, n - 1);
        self.threshold = sorted[n - 1 - excesses];
        for &x in &sorted {
            self.weight += 1.0;
            if x > self.threshold {
                let y = x - self.threshold;
                self.excess_weight += 1.0;
                self.excess_sum += y;
                self.excess_sq_sum += y * y;
            }
        }
        // `init` stays empty: its capacity is dropped with `sorted`.
    }

    /// Observed fraction of learned scores above the threshold.
    fn fraction(&self) -> f64 {
        if self.weight > 0.0 {
            (self.excess_weight / self.weight).min(0.5)
        } else {
            TAIL_FRACTION
        }
    }

    /// GPD (shape ξ, scale σ) of the excesses: moment estimate of ξ shrunk towards the prior,
    /// σ from the mean excess (mean = σ / (1 − ξ)). `None` without excesses.
    fn gpd(&self) -> Option<(f64, f64)> {
        if self.excess_weight.is_nan() || self.excess_weight <= 0.0 {
            return None;
        }
        let mean = self.excess_sum / self.excess_weight;
        let var = (self.excess_sq_sum / self.excess_weight - mean * mean).max(0.0);
        let moment = if var > 0.0 { 0.5 * (1.0 - mean * mean / var) } else { SHAPE_BOUNDS.0 };
        let moment = moment.clamp(SHAPE_BOUNDS.0, SHAPE_BOUNDS.1);
        let shape = (self.excess_weight * moment + SHAPE_PRIOR_WEIGHT * SHAPE_PRIOR) / (self.excess_weight + SHAPE_PRIOR_WEIGHT);
        let scale = mean * (1.0 - shape);
        (scale > 0.0).then_some((shape, scale))
    }

    /// The raw score whose tail probability is `p` < the tail fraction; infinite when the
    /// tail has no fit or is thinner than `p` (nothing to clip against: clipping at the
    /// threshold would keep every later score from ever counting as an excess).
    fn quantile(&self, p: f64) -> f64 {
        let phi = self.fraction();
        match self.gpd() {
            Some((shape, scale)) if p < phi => {
                let r = phi / p;
                let y = if shape.abs() < 1e-9 { r.ln() } else { (r.powf(shape) - 1.0) / shape };
                self.threshold + scale * y
            }
            _ => f64::INFINITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_pcg::Pcg64Mcg;

    /// |N(0, 1)| draws (Box-Muller), a Gaussian-tailed raw score.
    fn half_normals(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()).abs()
            })
            .collect()
    }

    fn trained(n: usize) -> Calibrator {
        let mut c = Calibrator::new();
        for x in half_normals(1, n) {
            c.learn(x);
        }
        c
    }

    #[test]
    fn scores_zero_until_started_then_in_range() {
        let mut c = Calibrator::new();
        for (i, x) in half_normals(2, SKIP as usize + INIT_LEN).into_iter().enumerate() {
            assert_eq!(c.score(1e9), 0.0, "not started after {i} scores");
            c.learn(x);
        }
        assert!(c.is_started());
        assert_eq!(c.score(1e9), 1.0);
        for raw in [-1.0, 0.0, 0.5, 2.0, 4.0, f64::INFINITY] {
            assert!((0.0..=1.0).contains(&c.score(raw)), "{raw}: {}", c.score(raw));
        }
        assert_eq!(c.score(f64::NAN), 0.0);
    }

    #[test]
    fn score_is_monotone_in_the_raw_score() {
        for n in [SKIP as usize + INIT_LEN, 500, 20_000] {
            let c = trained(n);
            let mut last = 0.0;
            for i in 0..=2_000 {
                let raw = -1.0 + i as f64 * 0.005;
                let s = c.score(raw);
                assert!(s >= last, "after {n}: score({raw}) = {s} < {last}");
                last = s;
            }
            // Strictly increasing through the body and the tail, so ranks are kept.
            assert!(c.score(1.0) < c.score(2.0) && c.score(2.0) < c.score(3.0) && c.score(3.0) < c.score(3.5), "after {n}");
        }
    }

    #[test]
    fn score_reads_as_the_tail_probability_of_the_raw_score() {
        // P(|Z| > 3.29) = 1e-3 and P(|Z| > 3.89) = 1e-4: scores 0.6 and 0.8, within a factor
        // of 2 in probability (0.06 in score).
        let c = trained(100_000);
        for (raw, want) in [(1.645, 0.2), (2.576, 0.4), (3.291, 0.6), (3.891, 0.8)] {
            let s = c.score(raw);
            assert!((s - want).abs() < 0.06, "score({raw}) = {s}, want ~{want}");
        }
    }

    #[test]
    fn warm_up_scores_do_not_enter() {
        let stream = half_normals(3, 5_000);
        let mut plain = Calibrator::new();
        let mut warmed = Calibrator::new();
        for _ in 0..SKIP {
            plain.learn(1.0);
        }
        // A detector's warm-up: zeros, then wild scores from a model of a handful of points.
        for _ in 0..250 {
            warmed.learn(0.0);
        }
        for i in 0..SKIP {
            warmed.learn(1e6 * f64::from(i + 1));
        }
        for &x in &stream {
            plain.learn(x);
            warmed.learn(x);
        }
        assert_eq!(plain, warmed);
        assert!(warmed.score(4.5) > 0.8, "a 4.5 sigma score is rare: {}", warmed.score(4.5));
    }

    #[test]
    fn state_stays_small() {
        let mut c = Calibrator::new();
        let mut max = 0;
        for (i, x) in half_normals(4, 120_000).into_iter().enumerate() {
            c.learn(x);
            if i % 7 == 0 || i < 200 {
                max = max.max(postcard::to_stdvec(&c).expect("serializable").len());
            }
        }
        // The initial buffer (64 f64) is the largest it ever gets; afterwards 6 f64 + counters.
        assert!(max <= 8 * INIT_LEN + 64, "{max} bytes");
        let after = postcard::to_stdvec(&c).expect("serializable").len();
        assert!(after <= 64, "{after} bytes once started");
    }

    #[test]
    fn restored_snapshot_continues_bit_identically() {
        let stream = half_normals(5, 60_000);
        // Mid-initialisation, just started, and past the memory (decaying sums).
        for cut in [SKIP as usize + 10, SKIP as usize + INIT_LEN + 1, 55_000] {
            let mut a = Calibrator::new();
            for &x in &stream[..cut] {
                a.learn(x);
            }
            let bytes = postcard::to_stdvec(&a).expect("serializable");
            let mut b: Calibrator = postcard::from_bytes(&bytes).expect("restorable");
            for &x in &stream[cut..(cut + 5_000).min(stream.len())] {
                assert_eq!(a.score(x).to_bits(), b.score(x).to_bits(), "cut {cut}");
                a.learn(x);
                b.learn(x);
            }
            assert_eq!(a, b);
        }
    }

    #[test]
    fn one_spike_does_not_hide_the_next() {
        let mut c = trained(300);
        assert!(c.score(12.0) >= 0.99, "{}", c.score(12.0));
        c.learn(12.0);
        assert!(c.score(12.0) >= 0.99, "after one spike: {}", c.score(12.0));
    }

    #[test]
    fn a_lasting_rise_of_the_scores_is_learned() {
        let mut c = trained(2_000);
        assert!(c.score(8.0) >= 0.99);
        // The detector's scale doubles for good: the calibration follows.
        for x in half_normals(6, 20_000) {
            c.learn(4.0 * x);
        }
        assert!(c.score(8.0) < 0.8, "{}", c.score(8.0));
    }

    #[test]
    fn constant_scores_then_a_change() {
        let mut c = Calibrator::new();
        for _ in 0..1_000 {
            c.learn(1.0);
        }
        assert!(c.score(1.0) < 0.1 && c.score(1.5) > 0.5, "{} {}", c.score(1.0), c.score(1.5));
        for x in half_normals(7, 5_000) {
            c.learn(2.0 + x);
        }
        assert!(c.score(3.0) < 0.6, "{}", c.score(3.0));
    }
}
