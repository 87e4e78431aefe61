//! Which of a partition's circuit breakers are open, and which of those are half-open (their
//! trial is due), for the partition's stats (`breakers_open`, `breakers_half_open`).
//!
//! A breaker times its open state in event time (`ops::breaker`), so "the timeout has passed"
//! needs an event-time clock: the partition's, the latest reading timestamp it scored. An open
//! breaker whose timeout has passed on that clock is half-open: the sensor's next reading goes
//! to the main detector as the trial. (Within `Breaker` itself the half-open state lasts one
//! reading, so counting `BreakerState::HalfOpen` between readings would always give 0.)
//! Only open breakers are tracked, so the count costs nothing for healthy sensors.

use std::collections::BTreeMap;

use crate::ops::breaker::{Breaker, BreakerParams, BreakerState};

/// The open breakers of one partition.
#[derive(Debug, Default)]
pub struct OpenBreakers {
    /// Sensor id → event time (ms) its breaker last opened, for every open breaker.
    opened_at: BTreeMap<String, i64>,
    /// The partition's event-time clock: the latest reading timestamp scored (`None` before
    /// the first).
    clock_ms: Option<i64>,
}

impl OpenBreakers {
    /// The open breakers among `breakers` (a restored partition's sensors).
    pub fn from_breakers<'a>(breakers: impl Iterator<Item = (&'a String, &'a Breaker)>) -> Self {
        let opened_at = breakers.filter(|(_, b)| b.state() != BreakerState::Closed).map(|(id, b)| (id.clone(), b.opened_at_ms())).collect();
        Self { opened_at, clock_ms: None }
    }

    /// After `sensor`'s reading at `ts_ms` went through its breaker (`was_open`: the breaker
    /// was open before it).
    pub fn observe(&mut self, sensor: &str, was_open: bool, breaker: &Breaker, ts_ms: i64) {
        self.clock_ms = Some(self.clock_ms.map_or(ts_ms, |c| c.max(ts_ms)));
        let open = breaker.state() != BreakerState::Closed;
        match (was_open, open) {
            (false, false) => {}
            (_, true) => match self.opened_at.get_mut(sensor) {
                Some(t) => *t = breaker.opened_at_ms(),
                None => {
                    self.opened_at.insert(sensor.to_owned(), breaker.opened_at_ms());
                }
            },
            (true, false) => {
                self.opened_at.remove(sensor);
            }
        }
    }

    /// Breakers open now (whether or not their trial is due).
    pub fn open(&self) -> u64 {
        self.opened_at.len() as u64
    }

    /// Open breakers whose timeout has passed on the partition's event-time clock: their
    /// sensor's next reading is the trial.
    pub fn half_open(&self, p: &BreakerParams) -> u64 {
        let Some(clock) = self.clock_ms else { return 0 };
        self.opened_at.values().filter(|&&t| p.trial_due(t, clock)).count() as u64
    }
}
