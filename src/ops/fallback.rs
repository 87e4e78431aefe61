//! Scoring one reading behind the sensor's circuit breaker, with a warm fallback detector
//! (ONAD's `ResilientAnomalyDetector.process_with_resilience`, made exact).
//!
//! A failure of the main pipeline is one of:
//! - a panic inside it, caught here with `catch_unwind`: the pipeline may be half-updated,
//!   so it is **discarded** and the sensor's main model starts over (its breaker and fallback
//!   are kept);
//! - a non-finite raw score ([`Pipeline::try_process_at`]): in score-then-learn order the
//!   model is untouched (nothing is calibrated or learned); with `learn_first` the detector
//!   has learned the point already, so the model is discarded as after a panic.
//!
//! The fallback pipeline (default: the streaming z-score, with the main pipeline's thresholds
//! and learning order) scores *and learns every reading the main pipeline scores*, so that it
//! is warm (calibrated, with the sensor's statistics) the moment it is needed; that output is
//! discarded. When the main pipeline failed on the reading or the breaker is open, the
//! fallback scores the reading *without learning it* (what broke the main detector must not
//! poison the fallback: 1e200 would overflow its running variance for good), and its output
//! is marked degraded, with the reason. A reading never disappears: when both fail, or no
//! fallback is configured, the verdict is [`Verdict::Failed`] and the partition writes a
//! `PROCESSING` dead letter with the reason.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};

use super::breaker::{Breaker, BreakerParams, BreakerState, Route, Transition};
use crate::detect::{Pipeline, PipelineFactory, ScoreError, Scored};

/// Checked `[resilience]` settings, shared by every partition of a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Resilience {
    /// Breaker window, threshold and open timeout.
    pub breaker: BreakerParams,
    /// Builds a sensor's fallback pipeline; `None` for `fallback = "none"`.
    pub fallback: Option<PipelineFactory>,
}

/// One sensor's breaker and warm fallback: part of its snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    /// The sensor's circuit breaker.
    pub breaker: Breaker,
    /// The fallback pipeline, built on the sensor's first reading when one is configured.
    pub fallback: Option<Pipeline>,
    /// Why the main pipeline last failed, while the breaker is open (for degraded reasons).
    pub cause: String,
}

/// Who scored a reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The main pipeline.
    Main(Scored),
    /// The fallback pipeline, with the reason the main one did not score.
    Degraded(Scored, String),
    /// Nobody could: the reading goes to dead letters with this reason.
    Failed(String),
}

/// A scored reading and what it did to the breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct Guarded {
    /// The outcome.
    pub verdict: Verdict,
    /// The breaker's change of state, if any.
    pub transition: Transition,
}

/// What the main pipeline needs to be scored or rebuilt.
pub struct Main<'a> {
    /// Builds a fresh main pipeline when the old one must be discarded.
    pub factory: &'a PipelineFactory,
    /// Name of the main detector (for reasons).
    pub name: &'a str,
    /// The sensor's main pipeline.
    pub pipeline: &'a mut Pipeline,
}

/// Score `x` (a reading of sensor `key` taken at `ts_ms`) behind the sensor's breaker.
pub fn score(r: &Resilience, main: Main<'_>, guard: &mut Guard, key: &str, x: &[f64], ts_ms: i64) -> Guarded {
    let route = guard.breaker.route(&r.breaker, ts_ms);
    let failure = match route {
        Route::Fallback => {
            let (failures, window) = (guard.breaker.failures(), r.breaker.window);
            let since = if failures > 0 { format!(" ({failures} of the last {window} readings failed)") } else { String::new() };
            format!("circuit breaker of `{}` open{since}: {}", main.name, guard.cause)
        }
        Route::Main | Route::Trial => match protect(|| main.pipeline.try_process_at(x, Some(ts_ms))) {
            Ok(Ok(s)) => {
                let transition = guard.breaker.record(&r.breaker, ts_ms, true);
                if guard.breaker.state() == BreakerState::Closed {
                    guard.cause.clear();
                }
                // Keep the fallback warm: it learns what the main detector scored.
                let _ = fallback(r, guard, key, x, ts_ms, true);
                return Guarded { verdict: Verdict::Main(s), transition };
            }
            Ok(Err(ScoreError::NonFinite { raw, learned })) => {
                if learned {
                    *main.pipeline = main.factory.build(x.len(), key);
                }
                let restart = if learned { "; it had learned the reading, so its model starts over" } else { "" };
                guard.cause = format!("`{}` gave a non-finite raw score ({raw}){restart}", main.name);
                guard.cause.clone()
            }
            Err(panic) => {
                *main.pipeline = main.factory.build(x.len(), key);
                guard.cause = format!("`{}` panicked ({panic}); its model starts over", main.name);
                guard.cause.clone()
            }
        },
    };
    let transition = match route {
        Route::Fallback => Transition::None,
        Route::Main | Route::Trial => guard.breaker.record(&r.breaker, ts_ms, false),
    };
    let failure = match (route, transition) {
        (Route::Trial, _) => format!("trial reading failed, circuit breaker open again: {failure}"),
        (_, Transition::Opened) => format!("{failure}; circuit breaker opened"),
        _ => failure,
    };
    let verdict = match (fallback(r, guard, key, x, ts_ms, false), &r.fallback) {
        (Some(Ok(s)), Some(f)) => Verdict::Degraded(s, format!("{failure}; scored by the fallback `{}`", f.detector_name())),
        (Some(Err(why)), _) => Verdict::Failed(format!("{failure}; the fallback failed too: {why}")),
        (None, _) | (_, None) => Verdict::Failed(format!("{failure}; no fallback (resilience.fallback = \"none\")")),
    };
    Guarded { verdict, transition }
}

/// Run the fallback on `x`, building it on first use; `None` without one. With `learn` it
/// scores and learns (kept warm on what the main detector scored); without, it only scores:
/// whatever made the main detector fail (huge values, a broken sensor) must not poison the
/// fallback too, so while the main one fails the fallback answers from the sensor's last
/// healthy statistics.
fn fallback(r: &Resilience, guard: &mut Guard, key: &str, x: &[f64], ts_ms: i64, learn: bool) -> Option<Result<Scored, String>> {
    let Some(factory) = &r.fallback else {
        // Configured off since the snapshot was taken: drop its state.
        guard.fallback = None;
        return None;
    };
    let fb = guard.fallback.get_or_insert_with(|| factory.build(x.len(), key));
    let run = || if learn { fb.try_process_at(x, Some(ts_ms)) } else { fb.try_score_at(x, Some(ts_ms)) };
    let out = match protect(run) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("`{}`: {e}", factory.detector_name())),
        Err(panic) => {
            // Possibly half-updated: start the fallback over on the next reading.
            guard.fallback = None;
            Err(format!("`{}` panicked ({panic})", factory.detector_name()))
        }
    };
    Some(out)
}

/// Run `f`, turning a panic into its message.
fn protect<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|cause| {
        cause.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| cause.downcast_ref::<String>().cloned()).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::PipelineSpec;

    fn factory(model: &str) -> PipelineFactory {
        PipelineSpec { model_type: model.into(), ..PipelineSpec::default() }.check().expect("valid spec")
    }

    fn resilience(fallback: Option<&str>) -> Resilience {
        Resilience { breaker: BreakerParams { window: 4, threshold: 0.5, open_timeout_ms: 1000 }, fallback: fallback.map(factory) }
    }

    fn step(r: &Resilience, f: &PipelineFactory, p: &mut Pipeline, g: &mut Guard, v: f64, ts: i64) -> Guarded {
        score(r, Main { factory: f, name: f.detector_name(), pipeline: p }, g, "s", &[v, v + 1.0], ts)
    }

    #[test]
    fn a_healthy_reading_is_scored_by_the_main_pipeline_and_the_fallback_learns_it_too() {
        let (r, f) = (resilience(Some("zscore")), factory("knn"));
        let (mut p, mut g) = (f.build(2, "s"), Guard::default());
        let out = step(&r, &f, &mut p, &mut g, 1.0, 0);
        assert!(matches!(out.verdict, Verdict::Main(_)));
        assert!(g.fallback.is_some(), "the fallback is built and warmed on the first reading");
    }

    #[test]
    fn a_non_finite_score_is_a_failure_scored_by_the_fallback_with_the_reason() {
        let (r, f) = (resilience(Some("zscore")), factory("knn"));
        let (mut p, mut g) = (f.build(2, "s"), Guard::default());
        for i in 0..50 {
            step(&r, &f, &mut p, &mut g, (i % 5) as f64, i);
        }
        let before = postcard::to_allocvec(&p).expect("encodes");
        let fallback_before = postcard::to_allocvec(&g.fallback).expect("encodes");
        let out = step(&r, &f, &mut p, &mut g, 1e200, 50);
        assert_eq!(postcard::to_allocvec(&g.fallback).expect("encodes"), fallback_before, "the fallback does not learn a failed reading");
        let Verdict::Degraded(s, why) = out.verdict else { panic!("expected a degraded score, got {:?}", out.verdict) };
        assert!(s.score.is_finite());
        assert!(why.contains("non-finite raw score") && why.contains("fallback `zscore`"), "{why}");
        assert_eq!(postcard::to_allocvec(&p).expect("encodes"), before, "score-then-learn: the failed main pipeline is untouched");
        assert_eq!(g.breaker.failures(), 1);
    }

    #[test]
    fn an_open_breaker_skips_the_main_pipeline_until_a_trial_closes_it() {
        let (r, f) = (resilience(Some("zscore")), factory("knn"));
        let (mut p, mut g) = (f.build(2, "s"), Guard::default());
        for i in 0..50 {
            step(&r, &f, &mut p, &mut g, (i % 5) as f64, i);
        }
        step(&r, &f, &mut p, &mut g, 1e200, 100);
        step(&r, &f, &mut p, &mut g, 1e200, 101);
        let out = step(&r, &f, &mut p, &mut g, 1e200, 102);
        assert_eq!(out.transition, Transition::Opened, "3 of 4 is above 50%");
        let before = postcard::to_allocvec(&p).expect("encodes");
        let out = step(&r, &f, &mut p, &mut g, 2.0, 500);
        let Verdict::Degraded(_, why) = out.verdict else { panic!("open breaker must degrade") };
        assert!(why.starts_with("circuit breaker of `knn` open"), "{why}");
        assert_eq!(postcard::to_allocvec(&p).expect("encodes"), before, "an open breaker does not call the main pipeline");
        let out = step(&r, &f, &mut p, &mut g, 2.0, 1102);
        assert_eq!(out.transition, Transition::Closed, "a healthy trial after the timeout closes it");
        assert!(matches!(out.verdict, Verdict::Main(_)));
        assert!(g.cause.is_empty());
    }

    #[test]
    fn without_a_fallback_a_failure_is_failed_with_the_reason() {
        let (r, f) = (resilience(None), factory("knn"));
        let (mut p, mut g) = (f.build(2, "s"), Guard::default());
        for i in 0..50 {
            step(&r, &f, &mut p, &mut g, (i % 5) as f64, i);
        }
        let out = step(&r, &f, &mut p, &mut g, 1e200, 50);
        let Verdict::Failed(why) = out.verdict else { panic!("expected failed") };
        assert!(why.contains("non-finite") && why.contains("resilience.fallback = \"none\""), "{why}");
        assert!(g.fallback.is_none());
    }

    #[test]
    fn with_learn_first_a_non_finite_score_starts_the_main_model_over() {
        let r = resilience(Some("zscore"));
        let f = PipelineSpec { model_type: "knn".into(), learn_first: true, ..PipelineSpec::default() }.check().expect("valid spec");
        let (mut p, mut g) = (f.build(2, "s"), Guard::default());
        for i in 0..50 {
            step(&r, &f, &mut p, &mut g, (i % 5) as f64, i);
        }
        let out = step(&r, &f, &mut p, &mut g, 1e200, 50);
        let Verdict::Degraded(_, why) = out.verdict else { panic!("expected a degraded score, got {:?}", out.verdict) };
        assert!(why.contains("it had learned the reading, so its model starts over"), "{why}");
        let fresh = postcard::to_allocvec(&f.build(2, "s")).expect("encodes");
        assert_eq!(postcard::to_allocvec(&p).expect("encodes"), fresh, "the poisoned model is discarded");
    }

    #[test]
    fn a_panic_is_caught_with_its_message() {
        // No detector panics on valid input; a panic can only come from a bug, so the
        // boundary itself is what is tested here.
        assert_eq!(protect(|| -> u8 { panic!("boom") }), Err("boom".to_string()));
        assert_eq!(protect(|| -> u8 { panic!("{}", 7) }), Err("7".to_string()));
        assert_eq!(protect(|| 3u8), Ok(3));
    }
}
