//! `holt_winters`: online additive Holt–Winters forecasting per feature, robustified.
//!
//! Recursions: Holt (1957) and Winters (1960), additive trend and season of `season_length`
//! readings (0 = no season): forecast k steps ahead `yhat = l + k b + s[phase]`, then
//! `l <- a (y* - s) + (1 - a)(l + b)`, `b <- b' (l_new - l) + (1 - b') b`,
//! `s <- g (y* - l_new) + (1 - g) s`. Robust form of Gelper, Fried & Croux (2010, J.
//! Forecasting 29): the learned value is the cleaned `y* = yhat + psi(e / sigma) sigma` (Huber,
//! k = 2), so a spike does not drag the level, and `sigma` is their biweight-rho scale
//! ([`RobustScale`]). A level shift is absorbed at 2 sigma per step (a few alerts, then the
//! new level).
//!
//! Smoothing parameters: given (`alpha`, `beta`, `gamma`) they stay fixed; any not given is
//! fitted online per feature by projected stochastic gradient descent on the squared
//! standardized one-step error, the forecast's derivative carried through the level and trend
//! recursions (and, for `gamma`, each seasonal slot) as in real-time recurrent learning
//! (Williams & Zipser 1989), neglecting the seasonal slots' dependence on `alpha` and `beta`.
//!
//! Initialisation: the first season (or `warm_up` readings without season) fills the seasonal
//! profile and the level (mean), trend 0; then `warm_up` residuals start the scale. Scores are
//! 0 until then.
//!
//! Score semantics: raw score = the largest |standardized residual| `|y - yhat| / sigma_k` over
//! features, where `sigma_k = sigma * sqrt(1 + (k - 1) a^2)` widens the band over a gap of k
//! steps. Range [0, inf). Band per feature: `yhat +- band_z * sigma_k`. Timestamps: see
//! [`super::series`] (gaps forecast k steps ahead with the season aligned to absolute time; a
//! gap above `max_gap_steps` restarts level and trend from the next reading; late readings are
//! scored, not learned). Deterministic, no RNG.

use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::series::{Band, RobustScale, Step, StepClock};
use super::Detector;

/// Bounds of fitted smoothing parameters.
const ALPHA_RANGE: (f64, f64) = (0.01, 0.9);
const BETA_RANGE: (f64, f64) = (0.0, 0.2);
const GAMMA_RANGE: (f64, f64) = (0.01, 0.9);
/// Starting values of fitted parameters.
const ALPHA0: f64 = 0.2;
const BETA0: f64 = 0.01;
const GAMMA0: f64 = 0.1;
/// Largest change of a fitted parameter in one step (keeps SGD stable on wild residuals).
const MAX_PARAM_STEP: f64 = 0.01;

/// Checked parameters of [`HoltWinters`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoltWintersParams {
    /// Season length in readings (steps); 0 = no seasonal component.
    pub season_length: usize,
    /// Level smoothing; `None` = fitted online.
    pub alpha: Option<f64>,
    /// Trend smoothing; `None` = fitted online.
    pub beta: Option<f64>,
    /// Seasonal smoothing; `None` = fitted online.
    pub gamma: Option<f64>,
    /// Learning rate of the online fit.
    pub learning_rate: f64,
    /// Smoothing of the robust residual scale.
    pub scale_smoothing: f64,
    /// Residuals that start the scale (and readings before the first forecast without season).
    pub warm_up: usize,
    /// Half-width of the band in scales (3 = "3 sigma").
    pub band_z: f64,
    /// Use the readings' timestamps (false: every reading is one step).
    pub use_timestamps: bool,
    /// Sampling interval in ms; 0 = inferred from the first gaps.
    pub interval_ms: i64,
    /// A gap of more steps than this restarts level and trend.
    pub max_gap_steps: usize,
}

/// `holt_winters`'s `model_params` as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoltWintersSpec {
    /// See [`HoltWintersParams::season_length`].
    pub season_length: usize,
    /// See [`HoltWintersParams::alpha`]; absent = fitted online.
    pub alpha: Option<f64>,
    /// See [`HoltWintersParams::beta`]; absent = fitted online.
    pub beta: Option<f64>,
    /// See [`HoltWintersParams::gamma`]; absent = fitted online.
    pub gamma: Option<f64>,
    /// See [`HoltWintersParams::learning_rate`].
    pub learning_rate: f64,
    /// See [`HoltWintersParams::scale_smoothing`].
    pub scale_smoothing: f64,
    /// See [`HoltWintersParams::warm_up`].
    pub warm_up: usize,
    /// See [`HoltWintersParams::band_z`].
    pub band_z: f64,
    /// See [`HoltWintersParams::use_timestamps`].
    pub use_timestamps: bool,
    /// See [`HoltWintersParams::interval_ms`]; unsigned so that a negative interval is a type
    /// error naming the key.
    pub interval_ms: u64,
    /// See [`HoltWintersParams::max_gap_steps`]; `None` = max(2 `season_length`, 100), since
    /// the default depends on the season.
    pub max_gap_steps: Option<usize>,
}

impl Default for HoltWintersSpec {
    fn default() -> Self {
        Self {
            season_length: 0,
            alpha: None,
            beta: None,
            gamma: None,
            learning_rate: 0.001,
            scale_smoothing: 0.05,
            warm_up: 20,
            band_z: 3.0,
            use_timestamps: true,
            interval_ms: 0,
            max_gap_steps: None,
        }
    }
}

impl HoltWintersSpec {
    /// Check `holt_winters` parameters from config.
    pub fn check(self) -> Result<HoltWintersParams, SpecError> {
        let bad = invalid("holt_winters");
        let Self {
            season_length,
            alpha,
            beta,
            gamma,
            learning_rate,
            scale_smoothing,
            warm_up,
            band_z,
            use_timestamps,
            interval_ms,
            max_gap_steps,
        } = self;
        for (key, v) in [("alpha", alpha), ("beta", beta), ("gamma", gamma)] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                return Err(bad(key, format!("{v} is outside [0, 1]")));
            }
        }
        let max_gap_steps = max_gap_steps.unwrap_or((2 * season_length).max(100));
        if !(0.0..=1.0).contains(&learning_rate) {
            return Err(bad("learning_rate", "must be in [0, 1]".into()));
        }
        if !(scale_smoothing > 0.0 && scale_smoothing < 1.0) {
            return Err(bad("scale_smoothing", "must be in (0, 1)".into()));
        }
        if warm_up < 2 {
            return Err(bad("warm_up", "must be at least 2".into()));
        }
        if band_z <= 0.0 {
            return Err(bad("band_z", "must be positive".into()));
        }
        if max_gap_steps == 0 {
            return Err(bad("max_gap_steps", "must be positive".into()));
        }
        let interval_ms = i64::try_from(interval_ms).map_err(|_| bad("interval_ms", format!("{interval_ms} is too large")))?;
        Ok(HoltWintersParams {
            season_length,
            alpha,
            beta,
            gamma,
            learning_rate,
            scale_smoothing,
            warm_up,
            band_z,
            use_timestamps,
            interval_ms,
            max_gap_steps,
        })
    }
}

/// One feature's Holt–Winters state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Feature {
    /// Level.
    level: f64,
    /// Trend per step.
    trend: f64,
    /// Seasonal offsets by phase (empty without season).
    season: Vec<f64>,
    /// Smoothing parameters (alpha, beta, gamma), fixed or fitted.
    theta: [f64; 3],
    /// d level / d theta.
    d_level: [f64; 3],
    /// d trend / d theta.
    d_trend: [f64; 3],
    /// d season[phase] / d gamma, per phase.
    d_season: Vec<f64>,
    /// Robust residual scale.
    scale: RobustScale,
}

/// Online additive Holt–Winters per feature (plain data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoltWinters {
    /// Checked parameters.
    params: HoltWintersParams,
    /// One state per feature.
    features: Vec<Feature>,
    /// Readings learned since the last (re)start: the first season initialises.
    n: u64,
    /// Sum per feature of the readings of the initialisation period.
    init_sum: Vec<f64>,
    /// Timestamps to steps.
    clock: StepClock,
}

impl HoltWinters {
    /// A detector over `dim` features.
    pub fn new(params: HoltWintersParams, dim: usize) -> Self {
        let m = params.season_length;
        let theta = [params.alpha.unwrap_or(ALPHA0), params.beta.unwrap_or(BETA0), params.gamma.unwrap_or(GAMMA0)];
        let feature = Feature {
            level: 0.0,
            trend: 0.0,
            season: vec![0.0; m],
            theta,
            d_level: [0.0; 3],
            d_trend: [0.0; 3],
            d_season: vec![0.0; m],
            scale: RobustScale::default(),
        };
        let clock = StepClock::new(params.use_timestamps, params.interval_ms);
        Self { features: vec![feature; dim], n: 0, init_sum: vec![0.0; dim], clock, params }
    }

    /// Readings that initialise level and season: a season (or `warm_up` readings); after a
    /// restart, when the profile and scale are known, one reading sets the level again.
    fn init_len(&self) -> u64 {
        if self.features.first().is_some_and(|f| f.scale.ready()) {
            1
        } else if self.params.season_length > 0 {
            self.params.season_length as u64
        } else {
            self.params.warm_up as u64
        }
    }

    fn phase(&self) -> usize {
        let m = self.params.season_length as i64;
        if m == 0 {
            0
        } else {
            self.clock.cur_step().rem_euclid(m) as usize
        }
    }

    /// Steps ahead of the current reading, or `None` when it cannot be forecast (warming up,
    /// or after a gap that restarts the level).
    fn horizon(&self) -> Option<i64> {
        if self.n < self.init_len() {
            return None;
        }
        match self.clock.step() {
            Step::First => None,
            Step::Late => Some(1),
            Step::Ahead(k) if k as usize > self.params.max_gap_steps => None,
            Step::Ahead(k) => Some(k),
        }
    }

    /// Forecast and band scale of feature `j` at horizon `k`.
    fn forecast(&self, j: usize, k: i64, phase: usize) -> (f64, f64) {
        let f = &self.features[j];
        let s = f.season.get(phase).copied().unwrap_or(0.0);
        let yhat = f.level + k as f64 * f.trend + s;
        let a = f.theta[0];
        let sigma = f.scale.sigma() * (1.0 + (k - 1) as f64 * a * a).sqrt();
        (yhat, sigma)
    }

    /// Per-feature signed standardized residuals of `x` (0 where there is no forecast yet).
    pub fn residuals(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.resize(x.len(), 0.0);
        let Some(k) = self.horizon() else { return };
        let phase = self.phase();
        for (j, (v, o)) in x.iter().zip(out.iter_mut()).enumerate().take(self.features.len()) {
            let (yhat, sigma) = self.forecast(j, k, phase);
            if self.features[j].scale.ready() && sigma > 0.0 {
                *o = (v - yhat) / sigma;
            }
        }
    }

    /// Expected value and band of each feature of `x`; false while there is no forecast.
    fn feature_bands(&self, x: &[f64], out: &mut Vec<Band>) -> bool {
        out.clear();
        let Some(k) = self.horizon() else { return false };
        if x.len() != self.features.len() || !self.features.iter().all(|f| f.scale.ready()) {
            return false;
        }
        let phase = self.phase();
        for (j, v) in x.iter().enumerate() {
            let (yhat, sigma) = self.forecast(j, k, phase);
            out.push(Band::new(*v, yhat, sigma, self.params.band_z));
        }
        true
    }

    fn restart(&mut self) {
        self.n = 0;
        self.init_sum.iter_mut().for_each(|s| *s = 0.0);
    }
}

impl Detector for HoltWinters {
    fn set_time(&mut self, ts_ms: Option<i64>) {
        self.clock.set_time(ts_ms);
    }

    fn bands(&self, x: &[f64], out: &mut Vec<Band>) -> bool {
        self.feature_bands(x, out)
    }

    fn contributions(&self, x: &[f64], out: &mut Vec<f64>) -> bool {
        self.residuals(x, out);
        out.iter_mut().for_each(|r| *r = r.abs());
        true
    }

    fn learn_one(&mut self, x: &[f64]) {
        self.clock.ensure_fresh();
        if x.len() != self.features.len() {
            self.clock.skipped();
            return;
        }
        let step = self.clock.step();
        if step == Step::Late {
            self.clock.skipped();
            return;
        }
        if let Step::Ahead(k) = step {
            if k as usize > self.params.max_gap_steps && self.n >= self.init_len() {
                // A long gap: level and trend are stale; the seasonal profile is kept.
                self.restart();
            }
        }
        let m = self.params.season_length;
        let phase = self.phase();
        let init = self.init_len();
        if self.n < init {
            // Initialisation period: the season's slots take the raw values, the level is
            // their mean at the end. After a restart (season known) the slots keep their
            // profile and only the level is re-estimated from deseasonalised values.
            let restarted = self.features.first().is_some_and(|f| f.scale.ready());
            for (j, v) in x.iter().enumerate() {
                let f = &mut self.features[j];
                let s = f.season.get(phase).copied().unwrap_or(0.0);
                if m > 0 && !restarted {
                    f.season[phase] = *v;
                    self.init_sum[j] += v;
                } else {
                    self.init_sum[j] += v - s;
                }
            }
            self.n += 1;
            if self.n == init {
                for (j, f) in self.features.iter_mut().enumerate() {
                    let restarted = f.scale.ready();
                    f.level = self.init_sum[j] / init as f64;
                    f.trend = 0.0;
                    if m > 0 && !restarted {
                        let level = f.level;
                        f.season.iter_mut().for_each(|s| *s -= level);
                    }
                    f.d_level = [0.0; 3];
                    f.d_trend = [0.0; 3];
                }
            }
            self.clock.learned();
            return;
        }
        let k = match step {
            Step::Ahead(k) => k,
            _ => 1,
        };
        let p = &self.params;
        let fit = [p.alpha.is_none(), p.beta.is_none(), p.gamma.is_none() && m > 0];
        for (j, v) in x.iter().enumerate() {
            let f = &mut self.features[j];
            // Skipped steps: the level follows the trend; no seasonal update.
            if k > 1 {
                let skipped = (k - 1) as f64;
                f.level += skipped * f.trend;
                for i in 0..3 {
                    f.d_level[i] += skipped * f.d_trend[i];
                }
            }
            let s = if m > 0 { f.season[phase] } else { 0.0 };
            let yhat = f.level + f.trend + s;
            let e = v - yhat;
            let ready = f.scale.ready();
            let e_clean = f.scale.clean(e);
            f.scale.update(e, p.scale_smoothing, p.warm_up as u32);
            let y = yhat + e_clean;
            let [a, b, g] = f.theta;
            // Derivatives of the forecast with respect to (alpha, beta, gamma).
            let ds = if m > 0 { f.d_season[phase] } else { 0.0 };
            let grad_yhat = [f.d_level[0] + f.d_trend[0], f.d_level[1] + f.d_trend[1], f.d_level[2] + f.d_trend[2] + ds];
            // Recursions (value and derivatives) with the cleaned observation.
            let (l0, b0) = (f.level, f.trend);
            let level = a * (y - s) + (1.0 - a) * (l0 + b0);
            let dl = [
                (y - s) - (l0 + b0) + (1.0 - a) * (f.d_level[0] + f.d_trend[0]),
                (1.0 - a) * (f.d_level[1] + f.d_trend[1]),
                -a * ds + (1.0 - a) * (f.d_level[2] + f.d_trend[2]),
            ];
            let trend = b * (level - l0) + (1.0 - b) * b0;
            let dt = [
                b * (dl[0] - f.d_level[0]) + (1.0 - b) * f.d_trend[0],
                (level - l0) - b0 + b * (dl[1] - f.d_level[1]) + (1.0 - b) * f.d_trend[1],
                b * (dl[2] - f.d_level[2]) + (1.0 - b) * f.d_trend[2],
            ];
            if m > 0 {
                f.season[phase] = g * (y - level) + (1.0 - g) * s;
                f.d_season[phase] = (y - level) - s - g * dl[2] + (1.0 - g) * ds;
            }
            f.level = level;
            f.trend = trend;
            f.d_level = dl;
            f.d_trend = dt;
            // Online fit: d/dtheta of (e / sigma)^2 / 2 = -(e / sigma^2) d yhat / d theta.
            if ready && p.learning_rate > 0.0 {
                let var = f.scale.sigma().powi(2);
                let ranges = [ALPHA_RANGE, BETA_RANGE, GAMMA_RANGE];
                for i in 0..3 {
                    if fit[i] {
                        let step = (p.learning_rate * e_clean / var * grad_yhat[i]).clamp(-MAX_PARAM_STEP, MAX_PARAM_STEP);
                        if step.is_finite() {
                            f.theta[i] = (f.theta[i] + step).clamp(ranges[i].0, ranges[i].1);
                        }
                    }
                }
                // Derivatives are local: keep them bounded so one wild stretch cannot blow up
                // the fit.
                for d in f.d_level.iter_mut().chain(f.d_trend.iter_mut()) {
                    if !d.is_finite() {
                        *d = 0.0;
                    }
                }
            }
        }
        self.n += 1;
        self.clock.learned();
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        if x.len() != self.features.len() {
            return 0.0;
        }
        let Some(k) = self.horizon() else { return 0.0 };
        let phase = self.phase();
        let mut best = 0.0f64;
        for (j, v) in x.iter().enumerate() {
            if !self.features[j].scale.ready() {
                continue;
            }
            let (yhat, sigma) = self.forecast(j, k, phase);
            if sigma > 0.0 {
                best = best.max(((v - yhat) / sigma).abs());
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::params::read_params;
    use crate::detect::testutil::{assert_restore_continues_bit_identically, spec};
    use crate::detect::{ParamValue, Params};

    fn seasonal(i: usize) -> f64 {
        let phase = (i % 24) as f64 / 24.0 * std::f64::consts::TAU;
        20.0 + 10.0 * phase.sin() + 0.3 * ((i * 7919 % 13) as f64 / 13.0 - 0.5)
    }

    fn hw(params: &[(&str, ParamValue)]) -> HoltWinters {
        let p: Params = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        HoltWinters::new(read_params::<HoltWintersSpec>("holt_winters", &p).unwrap().check().unwrap(), 1)
    }

    #[test]
    fn parameter_errors_name_the_key() {
        for (key, value, want) in [
            ("alpha", ParamValue::Float(1.5), "holt_winters: invalid `alpha`: 1.5 is outside [0, 1]"),
            ("warm_up", ParamValue::Int(1), "holt_winters: invalid `warm_up`: must be at least 2"),
            ("max_gap_steps", ParamValue::Int(0), "holt_winters: invalid `max_gap_steps`: must be positive"),
        ] {
            assert_eq!(spec("holt_winters", &[(key, value)], &[]).check().unwrap_err().to_string(), want);
        }
        let err = spec("holt_winters", &[("interval_ms", ParamValue::Int(-1))], &[]).check().unwrap_err().to_string();
        assert!(err.starts_with("holt_winters: invalid `interval_ms`: "), "{err}");
        let err = spec("holt_winters", &[("season", ParamValue::Int(24))], &[]).check().unwrap_err().to_string();
        assert!(err.starts_with("holt_winters: unknown parameter `season`"), "{err}");
    }

    #[test]
    fn max_gap_steps_defaults_to_two_seasons_and_at_least_100() {
        let p = |season_length| HoltWintersSpec { season_length, ..HoltWintersSpec::default() }.check().unwrap().max_gap_steps;
        assert_eq!((p(0), p(24), p(288)), (100, 100, 576));
    }

    #[test]
    fn a_seasonal_series_is_forecast_within_its_band_and_a_contextual_spike_is_not() {
        let mut m = hw(&[("season_length", ParamValue::Int(24))]);
        for i in 0..24 * 30 {
            m.learn_one(&[seasonal(i)]);
        }
        let i = 24 * 30;
        // A normal reading scores low; the same value half a season later is far off.
        let normal = seasonal(i);
        m.set_time(None);
        let mut bands = Vec::new();
        assert!(m.bands(&[normal], &mut bands));
        assert!((bands[0].expected - normal).abs() < 1.0, "{bands:?} vs {normal}");
        assert!(m.score_one(&[normal]) < 3.0);
        let out_of_phase = seasonal(i + 6);
        assert!(m.score_one(&[out_of_phase]) > 10.0, "a value normal at another time of day must be flagged");
    }

    #[test]
    fn fitted_parameters_stay_in_range_and_given_ones_stay_fixed() {
        let mut fitted = hw(&[("season_length", ParamValue::Int(24))]);
        let mut fixed = hw(&[("season_length", ParamValue::Int(24)), ("alpha", ParamValue::Float(0.5))]);
        for i in 0..5_000 {
            let x = [seasonal(i) + if i % 500 == 499 { 30.0 } else { 0.0 }];
            fitted.learn_one(&x);
            fixed.learn_one(&x);
        }
        let t = fitted.features[0].theta;
        assert!((ALPHA_RANGE.0..=ALPHA_RANGE.1).contains(&t[0]) && (GAMMA_RANGE.0..=GAMMA_RANGE.1).contains(&t[2]), "{t:?}");
        assert_eq!(fixed.features[0].theta[0], 0.5);
    }

    #[test]
    fn a_gap_keeps_the_season_aligned_with_time_and_late_readings_are_not_learned() {
        let mut m = hw(&[("season_length", ParamValue::Int(24))]);
        let ts = |i: usize| 1_000_000 + i as i64 * 60_000;
        for i in 0..24 * 20 {
            m.set_time(Some(ts(i)));
            m.learn_one(&[seasonal(i)]);
        }
        // Skip 7 readings: the value due 8 steps later is expected, not the next one's.
        let i = 24 * 20 + 7;
        m.set_time(Some(ts(i)));
        assert!(m.score_one(&[seasonal(i)]) < 3.0);
        assert!(m.score_one(&[seasonal(24 * 20)]) > 3.0);
        m.learn_one(&[seasonal(i)]);
        let before = m.clone();
        m.set_time(Some(ts(i - 3)));
        m.learn_one(&[1e6]);
        assert_eq!(m.features, before.features, "a late reading does not change the model");
    }

    #[test]
    fn snapshot_restore_continues_bit_identically() {
        for params in [vec![("season_length", ParamValue::Int(12))], vec![("alpha", ParamValue::Float(0.3))]] {
            assert_restore_continues_bit_identically(&spec("holt_winters", &params, &[]), 3, 300, 300);
        }
    }
}
