//! `arima`: online ARIMA(p, d, q) per feature, optionally with a seasonal difference.
//!
//! Method: the series is differenced (`y_t - y_{t-m}` when `season_length = m > 0`, then `d`
//! ordinary differences, d <= 2) to `z_t`, and `z_t` is modelled as ARMA(p, q) with an
//! intercept, `z_t = c + sum_i phi_i z_{t-i} + sum_j theta_j e_{t-j} + e_t`, fitted by recursive
//! least squares with exponential forgetting on the regressors `[1, z_{t-1..t-p},
//! e_{t-1..t-q}]`, the past one-step errors standing in for the unobserved innovations: the
//! extended least squares / pseudo-linear regression estimator of Ljung & Söderström (1983),
//! "Theory and Practice of Recursive Identification", ch. 3 (RLS itself: Plackett 1950). Liu,
//! Hoi, Zhao & Sun (2016), "Online ARIMA Algorithms for Time Series Prediction", AAAI, fit the
//! same kind of model with online Newton steps; RLS is the exact second-order version.
//!
//! Robustness (Gelper, Fried & Croux 2010): each learned value is Huber-cleaned against the
//! forecast (`y* = yhat + psi(e / sigma) sigma`, k = 2) before it enters the histories and the
//! regression, and `sigma` is the biweight-rho running scale ([`RobustScale`]), so a spike is
//! flagged once and does not echo through the differences and lags.
//!
//! Score semantics: raw score = the largest |standardized one-step residual| `|y - yhat| /
//! (sigma sqrt(k))` over features (k = steps since the last learned reading; the sqrt(k)
//! widening over a gap is the random-walk approximation, exact for d = 1 with no ARMA terms).
//! Range [0, inf); 0 until `warm_up` forecasts have been made. Band per feature: `yhat +-
//! band_z sigma sqrt(k)`. Timestamps ([`super::series`]): missing readings in a gap are filled
//! with the forecast (not learned); a gap above `max_gap_steps` restarts the histories (the
//! coefficients and the scale are kept); late readings are scored, not learned.
//! Deterministic, no RNG.

use serde::{Deserialize, Serialize};

use super::params::{invalid, SpecError};
use super::series::{Band, RobustScale, Step, StepClock};
use super::Detector;

/// Initial diagonal of the RLS inverse-covariance matrix (a vague prior on the coefficients).
const P0: f64 = 1e3;
/// Anti-windup: while the trace of P is above this, forgetting is suspended (a stretch with
/// no excitation would otherwise grow P without bound).
const MAX_TRACE: f64 = 1e8;
/// Largest p + q.
const MAX_ORDER: usize = 16;

/// Checked parameters of [`Arima`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArimaParams {
    /// AR order.
    pub p: usize,
    /// Order of ordinary differencing (0, 1 or 2).
    pub d: usize,
    /// MA order.
    pub q: usize,
    /// Seasonal difference lag in readings; 0 = none.
    pub season_length: usize,
    /// RLS forgetting factor in (0, 1] (1 = no forgetting).
    pub forgetting: f64,
    /// Smoothing of the robust residual scale.
    pub scale_smoothing: f64,
    /// Forecasts made before scoring (RLS settling + the scale's start).
    pub warm_up: usize,
    /// Half-width of the band in scales.
    pub band_z: f64,
    /// Use the readings' timestamps.
    pub use_timestamps: bool,
    /// Sampling interval in ms; 0 = inferred.
    pub interval_ms: i64,
    /// A gap of more steps than this restarts the histories.
    pub max_gap_steps: usize,
}

/// `arima`'s `model_params` as config writes them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArimaSpec {
    /// See [`ArimaParams::p`].
    pub p: usize,
    /// See [`ArimaParams::d`].
    pub d: usize,
    /// See [`ArimaParams::q`].
    pub q: usize,
    /// See [`ArimaParams::season_length`].
    pub season_length: usize,
    /// See [`ArimaParams::forgetting`].
    pub forgetting: f64,
    /// See [`ArimaParams::scale_smoothing`].
    pub scale_smoothing: f64,
    /// See [`ArimaParams::warm_up`].
    pub warm_up: usize,
    /// See [`ArimaParams::band_z`].
    pub band_z: f64,
    /// See [`ArimaParams::use_timestamps`].
    pub use_timestamps: bool,
    /// See [`ArimaParams::interval_ms`]; unsigned so that a negative interval is a type error
    /// naming the key.
    pub interval_ms: u64,
    /// See [`ArimaParams::max_gap_steps`]; `None` = max(2 `season_length`, 100), since the
    /// default depends on the season.
    pub max_gap_steps: Option<usize>,
}

impl Default for ArimaSpec {
    fn default() -> Self {
        Self {
            p: 2,
            d: 0,
            q: 1,
            season_length: 0,
            forgetting: 0.999,
            scale_smoothing: 0.05,
            warm_up: 30,
            band_z: 3.0,
            use_timestamps: true,
            interval_ms: 0,
            max_gap_steps: None,
        }
    }
}

impl ArimaSpec {
    /// Check `arima` parameters from config.
    pub fn check(self) -> Result<ArimaParams, SpecError> {
        let bad = invalid("arima");
        let Self { p, d, q, season_length, forgetting, scale_smoothing, warm_up, band_z, use_timestamps, interval_ms, max_gap_steps } =
            self;
        let max_gap_steps = max_gap_steps.unwrap_or((2 * season_length).max(100));
        if d > 2 {
            return Err(bad("d", "must be 0, 1 or 2".into()));
        }
        if p + q > MAX_ORDER {
            return Err(bad("p", format!("p + q must be at most {MAX_ORDER}")));
        }
        if !(forgetting > 0.0 && forgetting <= 1.0) {
            return Err(bad("forgetting", "must be in (0, 1]".into()));
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
        Ok(ArimaParams { p, d, q, season_length, forgetting, scale_smoothing, warm_up, band_z, use_timestamps, interval_ms, max_gap_steps })
    }
}

/// A fixed-capacity history, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ring {
    /// Values, as a circular buffer.
    buf: Vec<f64>,
    /// Slot of the newest value.
    head: usize,
    /// Values held (up to the capacity).
    len: usize,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Self { buf: vec![0.0; cap], head: 0, len: 0 }
    }

    fn push(&mut self, v: f64) {
        let cap = self.buf.len();
        if cap == 0 {
            return;
        }
        self.head = (self.head + 1) % cap;
        self.buf[self.head] = v;
        self.len = (self.len + 1).min(cap);
    }

    /// The `i`-th newest value (0 = newest); 0 when not held.
    fn get(&self, i: usize) -> f64 {
        let cap = self.buf.len();
        if i >= self.len {
            return 0.0;
        }
        self.buf[(self.head + cap - i) % cap]
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

/// One feature's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Feature {
    /// Raw (cleaned) values, newest first: d + season_length of them (at least 1).
    y: Ring,
    /// Differenced (cleaned) values, newest first: p of them.
    z: Ring,
    /// Past (cleaned) one-step errors, newest first: q of them.
    e: Ring,
    /// Coefficients `[c, phi_1..p, theta_1..q]`.
    coef: Vec<f64>,
    /// RLS inverse-covariance matrix, row-major n x n.
    cov: Vec<f64>,
    /// Robust residual scale.
    scale: RobustScale,
}

/// Online ARIMA per feature (plain data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arima {
    /// Checked parameters.
    params: ArimaParams,
    /// One model per feature.
    features: Vec<Feature>,
    /// Readings learned since the last (re)start.
    filled: usize,
    /// Forecasts made (learned readings with a forecast), for the warm-up.
    forecasts: u64,
    /// Timestamps to steps.
    clock: StepClock,
    /// Regressor buffer (not state).
    #[serde(skip)]
    phi: Vec<f64>,
    /// RLS scratch P phi (not state).
    #[serde(skip)]
    p_phi: Vec<f64>,
}

/// Binomial coefficients of the ordinary difference of order d (d <= 2).
const DIFF: [&[f64]; 3] = [&[1.0], &[1.0, -1.0], &[1.0, -2.0, 1.0]];

impl Arima {
    /// A detector over `dim` features.
    pub fn new(params: ArimaParams, dim: usize) -> Self {
        let n = 1 + params.p + params.q;
        let mut cov = vec![0.0; n * n];
        for i in 0..n {
            cov[i * n + i] = P0;
        }
        let feature = Feature {
            // At least the last value, which a late reading is compared with.
            y: Ring::new((params.d + params.season_length).max(1)),
            z: Ring::new(params.p),
            e: Ring::new(params.q),
            coef: vec![0.0; n],
            cov,
            scale: RobustScale::default(),
        };
        let clock = StepClock::new(params.use_timestamps, params.interval_ms);
        Self { features: vec![feature; dim], filled: 0, forecasts: 0, clock, params, phi: Vec::new(), p_phi: Vec::new() }
    }

    /// Readings needed before the regressors are defined.
    fn history_len(&self) -> usize {
        self.params.d + self.params.season_length + self.params.p
    }

    /// `z_t` for `y_t = y0` given the history `y` (newest first).
    fn diff(params: &ArimaParams, y: &Ring, y0: f64) -> f64 {
        let m = params.season_length;
        let at = |j: usize| if j == 0 { y0 } else { y.get(j - 1) };
        DIFF[params.d].iter().enumerate().map(|(i, c)| c * (at(i) - if m > 0 { at(i + m) } else { 0.0 })).sum()
    }

    /// One-step forecast `(yhat, zhat)` of feature `f`.
    fn forecast_one(params: &ArimaParams, f: &Feature) -> (f64, f64) {
        let (p, q) = (params.p, params.q);
        let mut zhat = f.coef[0];
        for i in 0..p {
            zhat += f.coef[1 + i] * f.z.get(i);
        }
        for j in 0..q {
            zhat += f.coef[1 + p + j] * f.e.get(j);
        }
        (zhat - Self::diff(params, &f.y, 0.0), zhat)
    }

    /// Push an observation `y` (already cleaned), its differenced value and error.
    fn push(params: &ArimaParams, f: &mut Feature, y: f64, e: f64) {
        let z = Self::diff(params, &f.y, y);
        f.z.push(z);
        f.e.push(e);
        f.y.push(y);
    }

    /// Forecast of feature `j`, `k` steps after the last learned reading.
    fn forecast(&self, j: usize, k: i64) -> f64 {
        let f = &self.features[j];
        if k <= 1 {
            return Self::forecast_one(&self.params, f).0;
        }
        // A gap: roll a copy forward, filling the missing readings with forecasts.
        let mut g = f.clone();
        for _ in 1..k {
            let (yhat, _) = Self::forecast_one(&self.params, &g);
            Self::push(&self.params, &mut g, yhat, 0.0);
        }
        Self::forecast_one(&self.params, &g).0
    }

    /// Steps ahead of the current reading, or `None` while it cannot be scored.
    fn horizon(&self) -> Option<i64> {
        if self.filled < self.history_len() || self.forecasts < self.params.warm_up as u64 {
            return None;
        }
        match self.clock.step() {
            Step::First => None,
            Step::Late => Some(1),
            Step::Ahead(k) if k as usize > self.params.max_gap_steps => None,
            Step::Ahead(k) => Some(k),
        }
    }

    fn for_each_residual(&self, x: &[f64], mut f: impl FnMut(usize, f64, f64, f64)) {
        if x.len() != self.features.len() {
            return;
        }
        let Some(k) = self.horizon() else { return };
        let widen = (k as f64).sqrt();
        for (j, v) in x.iter().enumerate() {
            let feat = &self.features[j];
            if !feat.scale.ready() {
                continue;
            }
            let yhat = if k == 1 && self.clock.step() == Step::Late {
                // A late reading is compared with the estimate at the last learned step.
                feat.y.get(0)
            } else {
                self.forecast(j, k)
            };
            let sigma = feat.scale.sigma() * widen;
            f(j, *v, yhat, sigma);
        }
    }
}

/// RLS update of `f` with regressors `phi` and a-priori error `err`; `p_phi` is scratch.
fn rls(f: &mut Feature, phi: &[f64], p_phi: &mut Vec<f64>, lambda: f64, err: f64) {
    let n = phi.len();
    p_phi.clear();
    for r in 0..n {
        p_phi.push((0..n).map(|c| f.cov[r * n + c] * phi[c]).sum());
    }
    let denom = lambda + phi.iter().zip(p_phi.iter()).map(|(a, b)| a * b).sum::<f64>();
    if !(denom.is_finite() && denom > 0.0) {
        return;
    }
    for (c, k) in f.coef.iter_mut().zip(p_phi.iter()) {
        *c += k / denom * err;
    }
    let trace: f64 = (0..n).map(|i| f.cov[i * n + i]).sum();
    let forget = if trace > MAX_TRACE { 1.0 } else { lambda };
    for r in 0..n {
        for c in 0..n {
            f.cov[r * n + c] = (f.cov[r * n + c] - p_phi[r] * p_phi[c] / denom) / forget;
        }
    }
    if !f.coef.iter().all(|c| c.is_finite()) {
        // Numerical breakdown: start the coefficients over rather than emit NaN forever.
        f.coef.iter_mut().for_each(|c| *c = 0.0);
        f.cov.iter_mut().enumerate().for_each(|(i, c)| *c = if i % (n + 1) == 0 { P0 } else { 0.0 });
    }
}

impl Detector for Arima {
    fn set_time(&mut self, ts_ms: Option<i64>) {
        self.clock.set_time(ts_ms);
    }

    fn learn_one(&mut self, x: &[f64]) {
        self.clock.ensure_fresh();
        if x.len() != self.features.len() {
            self.clock.skipped();
            return;
        }
        let k = match self.clock.step() {
            Step::Late => {
                self.clock.skipped();
                return;
            }
            Step::First => 1,
            Step::Ahead(k) => k,
        };
        if k as usize > self.params.max_gap_steps {
            // A long gap: the lags are stale. Coefficients and scale describe the sensor and stay.
            for f in &mut self.features {
                f.y.clear();
                f.z.clear();
                f.e.clear();
            }
            self.filled = 0;
        }
        let ready = self.filled >= self.history_len();
        let (p, q) = (self.params.p, self.params.q);
        let (smoothing, warm_up) = (self.params.scale_smoothing, self.params.warm_up as u32);
        let params = &self.params;
        for (j, f) in self.features.iter_mut().enumerate() {
            if ready && k > 1 {
                for _ in 1..k {
                    let (yhat, _) = Self::forecast_one(params, f);
                    Self::push(params, f, yhat, 0.0);
                }
            }
            if ready {
                let (yhat, _) = Self::forecast_one(params, f);
                let e = x[j] - yhat;
                let e_clean = f.scale.clean(e);
                f.scale.update(e, smoothing, warm_up);
                self.phi.clear();
                self.phi.push(1.0);
                self.phi.extend((0..p).map(|i| f.z.get(i)));
                self.phi.extend((0..q).map(|i| f.e.get(i)));
                rls(f, &self.phi, &mut self.p_phi, params.forgetting, e_clean);
                Self::push(params, f, yhat + e_clean, e_clean);
            } else {
                Self::push(params, f, x[j], 0.0);
            }
        }
        if ready {
            self.forecasts += 1;
        } else {
            self.filled += 1;
        }
        self.clock.learned();
    }

    fn score_one(&mut self, x: &[f64]) -> f64 {
        let mut best = 0.0f64;
        self.for_each_residual(x, |_, v, yhat, sigma| {
            if sigma > 0.0 {
                best = best.max(((v - yhat) / sigma).abs());
            }
        });
        best
    }

    fn bands(&self, x: &[f64], out: &mut Vec<Band>) -> bool {
        out.clear();
        let z = self.params.band_z;
        self.for_each_residual(x, |_, v, yhat, sigma| out.push(Band::new(v, yhat, sigma, z)));
        if out.len() != x.len() {
            out.clear();
            return false;
        }
        true
    }

    fn contributions(&self, x: &[f64], out: &mut Vec<f64>) -> bool {
        out.clear();
        out.resize(x.len(), 0.0);
        self.for_each_residual(x, |j, v, yhat, sigma| {
            if sigma > 0.0 {
                out[j] = ((v - yhat) / sigma).abs();
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::params::read_params;
    use crate::detect::testutil::{assert_restore_continues_bit_identically, spec};
    use crate::detect::{ParamValue, Params};

    fn arima(params: &[(&str, ParamValue)]) -> Arima {
        let p: Params = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Arima::new(read_params::<ArimaSpec>("arima", &p).unwrap().check().unwrap(), 1)
    }

    #[test]
    fn parameter_errors_name_the_key() {
        for (key, value, want) in [
            ("d", ParamValue::Int(3), "arima: invalid `d`: must be 0, 1 or 2"),
            ("p", ParamValue::Int(16), "arima: invalid `p`: p + q must be at most 16"),
            ("forgetting", ParamValue::Float(0.0), "arima: invalid `forgetting`: must be in (0, 1]"),
        ] {
            assert_eq!(spec("arima", &[(key, value)], &[]).check().unwrap_err().to_string(), want);
        }
        let err = spec("arima", &[("q", ParamValue::Float(1.5))], &[]).check().unwrap_err().to_string();
        assert!(err.starts_with("arima: invalid `q`: "), "{err}");
    }

    /// An AR(2) series: x_t = 1.2 x_{t-1} - 0.5 x_{t-2} + noise, plus 50.
    fn ar2(n: usize) -> Vec<f64> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut noise = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut x = vec![0.0, 0.0];
        for t in 2..n {
            x.push(1.2 * x[t - 1] - 0.5 * x[t - 2] + noise());
        }
        x.into_iter().map(|v| v + 50.0).collect()
    }

    #[test]
    fn rls_recovers_ar2_coefficients_and_a_spike_scores_high() {
        let mut m = arima(&[("p", ParamValue::Int(2)), ("d", ParamValue::Int(0)), ("q", ParamValue::Int(0))]);
        let xs = ar2(3_000);
        for x in &xs {
            m.learn_one(&[*x]);
        }
        let c = &m.features[0].coef;
        assert!((c[1] - 1.2).abs() < 0.05 && (c[2] + 0.5).abs() < 0.05, "{c:?}");
        m.set_time(None);
        let mut bands = Vec::new();
        let next = 1.2 * (xs[2999] - 50.0) - 0.5 * (xs[2998] - 50.0) + 50.0;
        assert!(m.bands(&[next], &mut bands));
        assert!((bands[0].expected - next).abs() < 0.1, "{bands:?} vs {next}");
        assert!(m.score_one(&[next]) < 1.0);
        assert!(m.score_one(&[next + 5.0]) > 10.0);
    }

    #[test]
    fn differencing_follows_a_trend_and_a_spike_does_not_echo() {
        let mut m = arima(&[("d", ParamValue::Int(1))]);
        let line = |t: usize| 3.0 * t as f64 + ((t * 31 % 7) as f64 - 3.0) * 0.1;
        for t in 0..500 {
            m.learn_one(&[line(t)]);
        }
        m.set_time(None);
        assert!(m.score_one(&[line(500)]) < 4.0);
        m.learn_one(&[line(500) + 100.0]);
        m.set_time(None);
        assert!(m.score_one(&[line(501)]) < 5.0, "after a spike the next normal value is normal");
    }

    #[test]
    fn snapshot_restore_continues_bit_identically() {
        for params in [vec![], vec![("season_length", ParamValue::Int(12)), ("d", ParamValue::Int(0))]] {
            assert_restore_continues_bit_identically(&spec("arima", &params, &[]), 3, 300, 300);
        }
    }
}
