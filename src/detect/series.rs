//! Shared parts of the time-series detectors (`holt_winters`, `arima`, `mad`): the step clock
//! that turns reading timestamps into model steps, the robust residual scale, and the
//! per-feature band ([`Band`]) that explained outputs carry.
//!
//! # Timestamps
//! A forecasting model advances in *steps* (one expected reading each). [`StepClock`] maps a
//! reading's `timestamp_ms` to a step number:
//! - The sampling interval is `interval_ms` when given; otherwise the median of the first
//!   [`INTERVAL_SAMPLES`] positive gaps between learned readings (until then every learned
//!   reading is one step). Jitter below half an interval rounds away.
//! - A reading `k > 1` steps after the last learned one is a gap of `k - 1` missing readings:
//!   the detector forecasts `k` steps ahead (seasonal phase stays aligned with absolute time,
//!   so no phase reset is needed); a gap above `max_gap_steps` resets level/history (keeping
//!   the seasonal profile, coefficients and scale) and scores that reading 0.
//! - A reading at or before the last learned timestamp (out of order or duplicate) is scored
//!   but not learned, so a late reading never rewinds the model: it is compared with the
//!   model's estimate at the last learned step (Holt–Winters: level + trend + that step's
//!   seasonal offset; ARIMA: the last learned, cleaned value), one step's band wide. (This is
//!   also what a learn-then-score pipeline, `learn_first = true`, scores a reading against.)
//! - Without a timestamp (`None`, or a value <= 0, which producers send when they have none)
//!   every reading is one step: the clock counts readings.

use serde::{Deserialize, Serialize};

/// Positive gaps sampled to infer the sampling interval.
pub const INTERVAL_SAMPLES: usize = 8;

/// The expected value of one feature and its prediction band, before the reading is learned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Band {
    /// The model's expected (forecast or central) value of the feature.
    pub expected: f64,
    /// Lower bound of the band: `expected - band_z * scale`.
    pub lower: f64,
    /// Upper bound of the band: `expected + band_z * scale`.
    pub upper: f64,
    /// Signed standardized residual `(value - expected) / scale` ("5.1 sigma above").
    pub deviation: f64,
}

impl Band {
    /// The band of `value` around `expected` with scale `scale` and half-width `z * scale`.
    pub fn new(value: f64, expected: f64, scale: f64, z: f64) -> Self {
        let deviation = if scale > 0.0 { (value - expected) / scale } else { 0.0 };
        Self { expected, lower: expected - z * scale, upper: expected + z * scale, deviation }
    }
}

/// Maps reading timestamps (or reading counts) to model steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepClock {
    /// Use timestamps at all (`use_timestamps`); false counts readings.
    use_timestamps: bool,
    /// Sampling interval in ms; 0 while still being inferred.
    interval_ms: i64,
    /// Positive gaps seen while inferring the interval.
    gaps: Vec<i64>,
    /// Timestamp (or reading count) and step of the last learned reading.
    last: Option<(i64, i64)>,
    /// The last learned reading had a timestamp (its `last.0` is one, not a count).
    last_real: bool,
    /// Readings seen (the step of a reading without a timestamp).
    seen: i64,
    /// Step of the current reading (set by [`Self::set_time`]).
    cur_step: i64,
    /// Timestamp of the current reading, when it has one.
    cur_ts: Option<i64>,
    /// `set_time` was called for the current reading (not yet consumed by `learned`).
    fresh: bool,
}

/// Where the current reading stands relative to the last learned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No reading learned yet.
    First,
    /// `k >= 1` steps after the last learned reading.
    Ahead(i64),
    /// At or before the last learned reading: score, do not learn.
    Late,
}

impl StepClock {
    /// A clock; `interval_ms = 0` infers the interval from the data.
    pub fn new(use_timestamps: bool, interval_ms: i64) -> Self {
        Self { use_timestamps, interval_ms, ..Self::default() }
    }

    /// Set the current reading's timestamp (`None` or <= 0: no timestamp).
    pub fn set_time(&mut self, ts_ms: Option<i64>) {
        self.seen += 1;
        self.fresh = true;
        let ts = ts_ms.filter(|t| self.use_timestamps && *t > 0);
        self.cur_ts = ts;
        self.cur_step = match (ts, self.last) {
            (None, _) => self.seen,
            (Some(_), None) => 0,
            // The first timestamp after readings without one: the next step.
            (Some(_), Some((_, ls))) if !self.last_real => ls + 1,
            (Some(t), Some((lt, ls))) => {
                if t <= lt {
                    ls
                } else if self.interval_ms > 0 {
                    let k = ((t - lt) as f64 / self.interval_ms as f64).round() as i64;
                    ls + k.max(1)
                } else {
                    ls + 1
                }
            }
        };
    }

    /// Make sure the current reading has a step: readings fed without [`Self::set_time`]
    /// (direct `learn_one` / `score_one` calls) count as one step each.
    pub fn ensure_fresh(&mut self) {
        if !self.fresh {
            self.set_time(None);
        }
    }

    /// Where the current reading stands.
    pub fn step(&self) -> Step {
        match self.last {
            None => Step::First,
            Some((lt, ls)) => {
                let late = match self.cur_ts {
                    Some(t) => self.last_real && t <= lt,
                    None => self.cur_step <= ls,
                };
                if late {
                    Step::Late
                } else {
                    Step::Ahead((self.cur_step - ls).max(1))
                }
            }
        }
    }

    /// The current reading's absolute step (for the seasonal phase).
    pub fn cur_step(&self) -> i64 {
        self.cur_step
    }

    /// Record that the current reading was learned.
    pub fn learned(&mut self) {
        self.fresh = false;
        let ts = self.cur_ts.unwrap_or(self.cur_step);
        if let (Some(t), Some((lt, _)), true) = (self.cur_ts, self.last, self.last_real) {
            if self.interval_ms == 0 && t > lt {
                self.gaps.push(t - lt);
                if self.gaps.len() >= INTERVAL_SAMPLES {
                    self.gaps.sort_unstable();
                    self.interval_ms = self.gaps[self.gaps.len() / 2].max(1);
                    self.gaps = Vec::new();
                }
            }
        }
        self.last = Some((ts, self.cur_step));
        self.last_real = self.cur_ts.is_some();
    }

    /// The current reading was scored but not learned.
    pub fn skipped(&mut self) {
        self.fresh = false;
    }
}

/// Tuning constant of the biweight rho in the scale update (Gelper, Fried & Croux 2010).
const BIWEIGHT_C: f64 = 2.52;
/// E[rho_c(Z)] for standard normal Z at c = 2.52 (numerical integration), making the scale
/// consistent for Gaussian residuals.
const BIWEIGHT_E: f64 = 0.323_993_138_497_410_6;
/// Huber constant used to clean observations before they are learned.
pub const HUBER_K: f64 = 2.0;

/// A running residual scale, robust to the outliers the detector is looking for.
///
/// Gelper, Fried & Croux (2010), "Robust forecasting with exponential and Holt-Winters
/// smoothing", J. Forecasting 29: sigma^2 <- lambda * rho(e / sigma) / E[rho] * sigma^2 +
/// (1 - lambda) * sigma^2 with the bounded biweight rho, so one spike raises the scale by a
/// bounded factor. The first `warm_up` residuals give the starting value (their RMS).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RobustScale {
    /// Current variance estimate (0 until warmed up).
    var: f64,
    /// Residuals seen in warm-up.
    n: u32,
    /// Sum of squared warm-up residuals.
    sum_sq: f64,
}

impl RobustScale {
    /// The scale (standard deviation), 0 before warm-up ends.
    pub fn sigma(&self) -> f64 {
        self.var.sqrt()
    }

    /// Whether the scale is usable.
    pub fn ready(&self) -> bool {
        self.var > 0.0
    }

    /// Huber-clean a residual: `psi(e / sigma) * sigma` (the residual itself before warm-up).
    pub fn clean(&self, e: f64) -> f64 {
        if !self.ready() {
            return e;
        }
        let s = self.sigma();
        e.clamp(-HUBER_K * s, HUBER_K * s)
    }

    /// Learn one residual with smoothing `lambda` after `warm_up` residuals.
    pub fn update(&mut self, e: f64, lambda: f64, warm_up: u32) {
        if !self.ready() {
            self.n += 1;
            self.sum_sq += e * e;
            if self.n >= warm_up.max(2) {
                let var = self.sum_sq / self.n as f64;
                // A flat series has no scale; keep collecting until it moves.
                if var > 0.0 {
                    self.var = var;
                }
            }
            return;
        }
        let x = e / self.var.sqrt();
        let rho = if x.abs() <= BIWEIGHT_C {
            let u = 1.0 - (x / BIWEIGHT_C).powi(2);
            BIWEIGHT_C * BIWEIGHT_C / 6.0 * (1.0 - u * u * u)
        } else {
            BIWEIGHT_C * BIWEIGHT_C / 6.0
        };
        self.var *= 1.0 - lambda + lambda * rho / BIWEIGHT_E;
        // Keep a strictly positive floor relative to nothing (a perfectly predictable stretch
        // must not collapse the scale to 0 and make the next tiny residual infinite).
        self.var = self.var.max(f64::MIN_POSITIVE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_become_steps_with_gaps_and_late_readings() {
        let mut c = StepClock::new(true, 0);
        c.set_time(Some(1_000));
        assert_eq!(c.step(), Step::First);
        c.learned();
        for i in 2..=9 {
            c.set_time(Some(i * 1_000 + 3));
            assert_eq!(c.step(), Step::Ahead(1));
            c.learned();
        }
        // Interval inferred (1 s); a reading 3 s later is 3 steps ahead.
        c.set_time(Some(12_000));
        assert_eq!(c.step(), Step::Ahead(3));
        c.learned();
        c.set_time(Some(11_500));
        assert_eq!(c.step(), Step::Late);
        c.skipped();
        c.set_time(Some(12_000));
        assert_eq!(c.step(), Step::Late, "a duplicate timestamp is not learned twice");
        c.set_time(Some(13_100));
        assert_eq!(c.step(), Step::Ahead(1));
    }

    #[test]
    fn a_first_reading_at_time_zero_does_not_hide_the_next_one() {
        let mut c = StepClock::new(true, 0);
        c.set_time(Some(0));
        c.learned();
        c.set_time(Some(1));
        assert_eq!(c.step(), Step::Ahead(1));
    }

    #[test]
    fn readings_without_timestamps_count_as_steps() {
        let mut c = StepClock::new(true, 0);
        for i in 0..5 {
            c.set_time(if i % 2 == 0 { None } else { Some(0) });
            if i > 0 {
                assert_eq!(c.step(), Step::Ahead(1));
            }
            c.learned();
        }
    }

    #[test]
    fn one_spike_moves_the_robust_scale_by_a_bounded_factor() {
        let mut s = RobustScale::default();
        for i in 0..50 {
            s.update(if i % 2 == 0 { 1.0 } else { -1.0 }, 0.05, 10);
        }
        let before = s.sigma();
        s.update(1e6, 0.05, 10);
        assert!(s.sigma() / before < 1.1, "{} -> {}", before, s.sigma());
    }
}
