//! A circuit breaker per sensor pipeline (ONAD's `ResilientAnomalyDetector`, made exact).
//!
//! The breaker watches the outcome of the main detector on each reading of one sensor. A
//! failure is a panic of the detector, a detector error or a non-finite raw score (the
//! partition decides; this module only counts). States:
//!
//! - **Closed**: readings go to the main detector. The outcomes of the last `error_window`
//!   readings are kept as bits; when more than `error_threshold × error_window` of them are
//!   failures, the breaker opens. The denominator is the window, not the readings seen so far,
//!   so a new sensor's first failure does not open it.
//! - **Open**: readings skip the main detector and go to the fallback (degraded), until
//!   `open_timeout` has passed in *event time*: the reading's own timestamp minus the
//!   timestamp of the reading that opened it. Event time, not wall clock, so that a snapshot
//!   restored and replayed continues bit-identically; a reading older than the opening
//!   reading never counts as the timeout passing.
//! - **Half-open**: the first reading past the timeout is a trial for the main detector:
//!   success closes the breaker (with an empty window), failure opens it again from that
//!   reading's timestamp. The trial is decided within the reading, so between readings a
//!   breaker is only ever closed or open.
//!
//! State is plain serde data, part of each sensor's snapshot. A healthy sensor's window
//! holds no bits at all (allocated on the first failure in memory, freed when the last one
//! leaves the window), so the breaker costs a few bytes per sensor.

use serde::{Deserialize, Serialize};

/// Checked breaker settings (from `[resilience]`), shared by every sensor of a worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerParams {
    /// Readings whose outcomes are remembered (at least 1).
    pub window: u32,
    /// Fraction of the window that must fail, strictly exceeded, to open (in [0, 1)).
    pub threshold: f64,
    /// Event time (ms) the breaker stays open before a trial reading.
    pub open_timeout_ms: i64,
}

impl BreakerParams {
    /// Failures in the window at which the breaker opens: the least count above
    /// `threshold × window`.
    fn trip_at(&self) -> u32 {
        let limit = self.threshold * f64::from(self.window);
        // `limit` is in [0, window): floor + 1 is the least integer strictly above it.
        (limit.floor() as u32).saturating_add(1).min(self.window)
    }

    /// Whether a breaker opened at event time `opened_at_ms` has waited its timeout at event
    /// time `ts_ms`: a reading taken then is the half-open trial.
    pub fn trial_due(&self, opened_at_ms: i64, ts_ms: i64) -> bool {
        ts_ms.saturating_sub(opened_at_ms) >= self.open_timeout_ms
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BreakerState {
    /// The main detector scores.
    #[default]
    Closed,
    /// The fallback scores until the timeout passes.
    Open,
    /// A trial reading is with the main detector (only within one reading).
    HalfOpen,
}

/// Who scores the reading at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The main detector, breaker closed.
    Main,
    /// The main detector, as the half-open trial.
    Trial,
    /// The fallback: the breaker is open.
    Fallback,
}

/// What a recorded outcome did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// No change of state.
    None,
    /// Closed (or a failed trial) -> open.
    Opened,
    /// A successful trial closed it.
    Closed,
}

/// One sensor's circuit breaker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    /// Current state.
    state: BreakerState,
    /// Outcome bits of the last `window` readings (1 = failure), `window` bits in 64-bit
    /// words; empty while no failure is in the window (a healthy sensor stores nothing).
    bits: Vec<u64>,
    /// Next bit to overwrite, in [0, window).
    pos: u32,
    /// Failures among the window's bits.
    failures: u32,
    /// Event time (reading timestamp, ms) of the reading that opened the breaker.
    opened_at_ms: i64,
}

impl Breaker {
    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Failures among the last `window` readings.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Event time (ms) of the reading that (last) opened the breaker; meaningful while open.
    pub fn opened_at_ms(&self) -> i64 {
        self.opened_at_ms
    }

    /// Who scores a reading taken at `ts_ms`. An open breaker whose timeout has passed turns
    /// half-open: this reading is the trial and must be [`Self::record`]ed.
    pub fn route(&mut self, p: &BreakerParams, ts_ms: i64) -> Route {
        match self.state {
            BreakerState::Closed => Route::Main,
            BreakerState::HalfOpen => Route::Trial,
            BreakerState::Open => {
                if p.trial_due(self.opened_at_ms, ts_ms) {
                    self.state = BreakerState::HalfOpen;
                    Route::Trial
                } else {
                    Route::Fallback
                }
            }
        }
    }

    /// Record the main detector's outcome on the reading taken at `ts_ms` (routed `Main` or
    /// `Trial`; readings routed to the fallback are not outcomes of the main detector).
    pub fn record(&mut self, p: &BreakerParams, ts_ms: i64, ok: bool) -> Transition {
        match self.state {
            BreakerState::Closed => {
                self.push(p.window, !ok);
                if self.failures >= p.trip_at() {
                    self.open(ts_ms);
                    Transition::Opened
                } else {
                    Transition::None
                }
            }
            BreakerState::HalfOpen if ok => {
                *self = Breaker::default();
                Transition::Closed
            }
            BreakerState::HalfOpen | BreakerState::Open => {
                self.open(ts_ms);
                Transition::Opened
            }
        }
    }

    fn open(&mut self, ts_ms: i64) {
        self.state = BreakerState::Open;
        self.opened_at_ms = ts_ms;
    }

    /// Shift one outcome into the window.
    fn push(&mut self, window: u32, failed: bool) {
        let window = window.max(1);
        let words = window.div_ceil(64) as usize;
        if self.pos >= window || (!self.bits.is_empty() && self.bits.len() != words) {
            // The window was resized by a config change since the snapshot: start it over.
            self.bits.clear();
            self.failures = 0;
            self.pos = 0;
        }
        let (word, bit) = ((self.pos / 64) as usize, self.pos % 64);
        if self.bits.is_empty() && failed {
            self.bits = vec![0; words];
        }
        if let Some(w) = self.bits.get_mut(word) {
            let was = (*w >> bit) & 1 == 1;
            if was != failed {
                *w ^= 1 << bit;
                if failed {
                    self.failures += 1;
                } else {
                    self.failures -= 1;
                }
            }
        }
        if self.failures == 0 {
            self.bits = Vec::new();
        }
        self.pos = (self.pos + 1) % window;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Window 10, opens above 50% (6 failures), 1 s open in event time.
    const P: BreakerParams = BreakerParams { window: 10, threshold: 0.5, open_timeout_ms: 1000 };

    fn feed(b: &mut Breaker, outcomes: &[bool], ts: i64) -> Vec<Transition> {
        outcomes
            .iter()
            .map(|ok| {
                assert_eq!(b.route(&P, ts), Route::Main, "closed breaker routes to the main detector");
                b.record(&P, ts, *ok)
            })
            .collect()
    }

    #[test]
    fn a_new_breaker_is_closed_and_routes_to_the_main_detector() {
        let mut b = Breaker::default();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.route(&P, 0), Route::Main);
    }

    #[test]
    fn failures_up_to_the_threshold_keep_it_closed() {
        let mut b = Breaker::default();
        let t = feed(&mut b, &[false, false, false, false, false], 0);
        assert!(t.iter().all(|t| *t == Transition::None));
        assert_eq!((b.state(), b.failures()), (BreakerState::Closed, 5), "5 of 10 is not above 50%");
    }

    #[test]
    fn failures_above_the_threshold_of_the_window_open_it() {
        let mut b = Breaker::default();
        let t = feed(&mut b, &[false; 6], 0);
        assert_eq!(t[5], Transition::Opened, "the 6th failure of 10 is above 50%");
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn successes_push_old_failures_out_of_the_window() {
        let mut b = Breaker::default();
        feed(&mut b, &[false; 5], 0);
        feed(&mut b, &[true; 10], 0);
        assert_eq!(b.failures(), 0, "failures older than the window are forgotten");
        assert!(b.bits.is_empty(), "a window without failures stores nothing");
        let t = feed(&mut b, &[false; 5], 0);
        assert!(t.iter().all(|t| *t == Transition::None));
    }

    #[test]
    fn a_threshold_of_zero_opens_on_the_first_failure() {
        let p = BreakerParams { threshold: 0.0, ..P };
        let mut b = Breaker::default();
        assert_eq!(b.record(&p, 0, false), Transition::Opened);
    }

    #[test]
    fn an_open_breaker_routes_to_the_fallback_until_the_timeout_passes_in_event_time() {
        let mut b = Breaker::default();
        feed(&mut b, &[false; 6], 5_000);
        assert_eq!(b.route(&P, 5_000), Route::Fallback);
        assert_eq!(b.route(&P, 5_999), Route::Fallback, "999 ms of event time is not the 1 s timeout");
        assert_eq!(b.route(&P, 4_000), Route::Fallback, "a late reading does not pass the timeout");
        assert_eq!(b.route(&P, 6_000), Route::Trial, "the first reading past the timeout is a trial");
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn a_successful_trial_closes_it_with_an_empty_window() {
        let mut b = Breaker::default();
        feed(&mut b, &[false; 6], 0);
        assert_eq!(b.route(&P, 1_000), Route::Trial);
        assert_eq!(b.record(&P, 1_000, true), Transition::Closed);
        assert_eq!((b.state(), b.failures()), (BreakerState::Closed, 0));
        assert_eq!(b, Breaker::default(), "closing forgets everything");
    }

    #[test]
    fn a_failed_trial_reopens_it_from_the_trial_reading() {
        let mut b = Breaker::default();
        feed(&mut b, &[false; 6], 0);
        assert_eq!(b.route(&P, 1_500), Route::Trial);
        assert_eq!(b.record(&P, 1_500, false), Transition::Opened);
        assert_eq!(b.route(&P, 2_000), Route::Fallback, "the timeout starts again at the failed trial");
        assert_eq!(b.route(&P, 2_500), Route::Trial);
    }

    #[test]
    fn a_window_above_64_readings_counts_across_words() {
        let p = BreakerParams { window: 200, threshold: 0.1, open_timeout_ms: 0 };
        let mut b = Breaker::default();
        for i in 0..200 {
            assert_eq!(b.record(&p, 0, i % 10 != 0), Transition::None, "20 of 200 is not above 10%");
        }
        assert_eq!(b.failures(), 20);
        assert_eq!(b.record(&p, 0, false), Transition::None, "failure replaces a failure: still 20");
        assert_eq!(b.record(&p, 0, false), Transition::Opened, "21 of 200 is above 10%");
    }

    #[test]
    fn a_window_resized_by_a_config_change_starts_over() {
        let mut b = Breaker::default();
        feed(&mut b, &[false; 5], 0);
        let wider = BreakerParams { window: 100, ..P };
        assert_eq!(b.record(&wider, 0, true), Transition::None);
        assert_eq!(b.failures(), 0, "the old window's failures are dropped with it");
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut b = Breaker::default();
        feed(&mut b, &[false, true, false], 0);
        let bytes = postcard::to_allocvec(&b).expect("encodes");
        let back: Breaker = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, b);
    }
}
