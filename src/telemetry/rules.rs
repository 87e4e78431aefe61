//! The operational alert rules (the seed's `MonitoringService` thresholds) and their cooldown,
//! as a pure function of successive counter samples: no clock, no I/O. [`super::monitor`]
//! takes the samples and sends what fires.
//!
//! Each evaluation compares a sample with the previous one, so the rates are those of the last
//! interval (the seed averages its last 100 observations; an interval is the same idea in
//! time). Rate rules judge an interval only with enough records in it (`min_records`), so a
//! quiet stream does not fire them; `low_anomaly_rate` also needs enough readings that a single
//! anomaly would have cleared its threshold.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::MonitoringConfig;

/// How urgent a firing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Worth a look.
    Warning,
    /// Needs the operator now.
    Critical,
}

impl Severity {
    /// Lower-case name (logs, webhook).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// The worker's counters at one moment (cumulative counters only grow).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Time since the monitor started.
    pub at: Duration,
    /// Input records taken.
    pub consumed: u64,
    /// Readings scored.
    pub scored: u64,
    /// Anomalies flagged.
    pub anomalies: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Time spent processing batches, µs.
    pub processing_us: u64,
    /// Resident memory, MB (None where unknown).
    pub rss_mb: Option<f64>,
    /// Total consumer lag of the owned partitions, records (None where unknown).
    pub lag: Option<u64>,
}

/// One rule that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// Rule name (`high_error_rate`, ...).
    pub name: &'static str,
    /// How urgent.
    pub severity: Severity,
    /// Measured value.
    pub value: f64,
    /// Threshold it crossed.
    pub threshold: f64,
    /// One line for humans.
    pub message: String,
}

/// The rules, their cooldown and what they remember between samples.
#[derive(Debug)]
pub struct Evaluator {
    /// Thresholds (0 disables a rule).
    config: MonitoringConfig,
    /// The previous sample.
    last: Option<Sample>,
    /// Evaluations in a row in which the total lag grew.
    lag_rises: u32,
    /// When each rule last fired.
    fired: HashMap<&'static str, Duration>,
}

impl Evaluator {
    /// Rules from `config`.
    pub fn new(config: MonitoringConfig) -> Self {
        Self { config, last: None, lag_rises: 0, fired: HashMap::new() }
    }

    /// Judge `now` against the previous sample; returns the rules that fire and are not in
    /// their cooldown.
    pub fn observe(&mut self, now: Sample) -> Vec<Firing> {
        let candidates = self.conditions(&now);
        self.last = Some(now);
        let cooldown = Duration::from_secs(self.config.cooldown_secs);
        candidates
            .into_iter()
            .filter(|f| match self.fired.get(f.name) {
                Some(at) if now.at.saturating_sub(*at) < cooldown => false,
                _ => {
                    self.fired.insert(f.name, now.at);
                    true
                }
            })
            .collect()
    }

    /// Every rule whose condition holds now, cooldown aside.
    fn conditions(&mut self, now: &Sample) -> Vec<Firing> {
        let c = &self.config;
        let mut out = Vec::new();
        let mut fire = |name, severity, value: f64, threshold: f64, message: String| {
            out.push(Firing { name, severity, value, threshold, message });
        };
        if let Some(mb) = now.rss_mb {
            if c.high_memory_mb > 0.0 && mb > c.high_memory_mb {
                fire(
                    "high_memory",
                    Severity::Critical,
                    mb,
                    c.high_memory_mb,
                    format!("memory usage {mb:.1} MB above {:.1} MB", c.high_memory_mb),
                );
            }
        }
        let Some(last) = self.last else { return out };
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let consumed = d(now.consumed, last.consumed);
        let scored = d(now.scored, last.scored);
        let secs = now.at.saturating_sub(last.at).as_secs_f64();
        let min = c.min_records.max(1);
        if consumed >= min {
            let ms = d(now.processing_us, last.processing_us) as f64 / 1000.0 / consumed as f64;
            if c.slow_processing_ms > 0.0 && ms > c.slow_processing_ms {
                fire(
                    "slow_processing",
                    Severity::Warning,
                    ms,
                    c.slow_processing_ms,
                    format!("average processing time {ms:.3} ms per record above {} ms", c.slow_processing_ms),
                );
            }
            let rate = d(now.dead_letters, last.dead_letters) as f64 / consumed as f64;
            if c.high_error_rate > 0.0 && rate > c.high_error_rate {
                fire(
                    "high_error_rate",
                    Severity::Critical,
                    rate,
                    c.high_error_rate,
                    format!("dead-letter rate {:.1}% of {consumed} records above {:.1}%", rate * 100.0, c.high_error_rate * 100.0),
                );
            }
        }
        if scored >= min {
            let rate = d(now.anomalies, last.anomalies) as f64 / scored as f64;
            if c.high_anomaly_rate > 0.0 && rate > c.high_anomaly_rate {
                fire(
                    "high_anomaly_rate",
                    Severity::Warning,
                    rate,
                    c.high_anomaly_rate,
                    format!("anomaly rate {:.2}% of {scored} readings above {:.2}%", rate * 100.0, c.high_anomaly_rate * 100.0),
                );
            }
            // Below 1/threshold readings, zero anomalies cannot tell "too few" from chance.
            let enough = c.low_anomaly_rate > 0.0 && scored as f64 * c.low_anomaly_rate >= 1.0;
            if enough && rate < c.low_anomaly_rate {
                fire(
                    "low_anomaly_rate",
                    Severity::Warning,
                    rate,
                    c.low_anomaly_rate,
                    format!("anomaly rate {:.3}% of {scored} readings below {:.3}%", rate * 100.0, c.low_anomaly_rate * 100.0),
                );
            }
        }
        // An idle stream is not a slow one: throughput is judged only while records wait.
        if let (Some(lag), true) = (now.lag, secs > 0.0) {
            let per_sec = consumed as f64 / secs;
            if lag > 0 && c.low_throughput > 0.0 && per_sec < c.low_throughput {
                fire(
                    "low_throughput",
                    Severity::Warning,
                    per_sec,
                    c.low_throughput,
                    format!("throughput {per_sec:.1} records/s below {} with {lag} records waiting", c.low_throughput),
                );
            }
        }
        match (now.lag, last.lag) {
            (Some(lag), Some(before)) if lag > before => self.lag_rises += 1,
            _ => self.lag_rises = 0,
        }
        let n = self.config.lag_growing_intervals;
        if n > 0 && self.lag_rises >= n {
            let lag = now.lag.unwrap_or_default();
            out.push(Firing {
                name: "lag_growing",
                severity: Severity::Warning,
                value: lag as f64,
                threshold: f64::from(n),
                message: format!("consumer lag grew {} evaluations in a row, to {lag} records", self.lag_rises),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MonitoringConfig {
        // The seed's low_anomaly_rate (0.001; the default is lower), so 1,000 readings judge it.
        MonitoringConfig { min_records: 100, cooldown_secs: 300, low_anomaly_rate: 0.001, ..MonitoringConfig::default() }
    }

    fn at(secs: u64) -> Sample {
        Sample { at: Duration::from_secs(secs), ..Sample::default() }
    }

    fn names(f: &[Firing]) -> Vec<&'static str> {
        f.iter().map(|f| f.name).collect()
    }

    /// 1000 records per 10 s, 1% anomalies, nothing wrong.
    fn healthy(i: u64) -> Sample {
        Sample {
            consumed: 1000 * i,
            scored: 1000 * i,
            anomalies: 10 * i,
            processing_us: 20_000 * i,
            rss_mb: Some(100.0),
            lag: Some(0),
            ..at(10 * i)
        }
    }

    #[test]
    fn a_healthy_stream_fires_nothing() {
        let mut e = Evaluator::new(config());
        for i in 0..20 {
            assert!(e.observe(healthy(i)).is_empty(), "sample {i}");
        }
    }

    #[test]
    fn high_error_rate_fires_once_per_cooldown_and_again_after_it() {
        let mut e = Evaluator::new(config());
        let bad = |i: u64| Sample { dead_letters: 100 * i, ..healthy(i) };
        assert!(e.observe(bad(0)).is_empty(), "first sample has no interval");
        let f = e.observe(bad(1));
        assert_eq!(names(&f), ["high_error_rate"]);
        assert_eq!((f[0].value, f[0].threshold, f[0].severity), (0.1, 0.05, Severity::Critical));
        // 10 s .. 300 s later: in the cooldown.
        for i in 2..31 {
            assert!(e.observe(bad(i)).is_empty(), "sample {i} is inside the cooldown");
        }
        assert_eq!(names(&e.observe(bad(31))), ["high_error_rate"], "310 s after the first firing");
    }

    #[test]
    fn rules_have_independent_cooldowns() {
        let mut e = Evaluator::new(config());
        e.observe(healthy(0));
        assert_eq!(names(&e.observe(Sample { dead_letters: 100, ..healthy(1) })), ["high_error_rate"]);
        let f = e.observe(Sample { dead_letters: 200, anomalies: 1000, ..healthy(2) });
        assert_eq!(names(&f), ["high_anomaly_rate"], "a new rule fires during another's cooldown");
    }

    #[test]
    fn too_few_records_say_nothing() {
        let mut e = Evaluator::new(config());
        e.observe(at(0));
        let few = Sample { consumed: 99, scored: 50, dead_letters: 49, anomalies: 50, processing_us: 99_000_000, ..at(10) };
        assert!(e.observe(few).is_empty());
    }

    #[test]
    fn slow_processing_and_anomaly_rates() {
        let mut e = Evaluator::new(config());
        e.observe(healthy(0));
        let slow = Sample { processing_us: 150_000_000, ..healthy(1) };
        let f = e.observe(slow);
        assert_eq!(names(&f), ["slow_processing"]);
        assert_eq!(f[0].value, 150.0);

        let mut e = Evaluator::new(config());
        e.observe(healthy(0));
        assert_eq!(names(&e.observe(Sample { anomalies: 0, scored: 999, ..healthy(1) })), Vec::<&str>::new(), "999 < 1/0.001 readings");
        let mut e = Evaluator::new(config());
        e.observe(healthy(0));
        let f = e.observe(Sample { anomalies: 0, ..healthy(1) });
        assert_eq!(names(&f), ["low_anomaly_rate"]);
        assert_eq!(f[0].value, 0.0);
    }

    #[test]
    fn memory_is_judged_on_every_sample() {
        let mut e = Evaluator::new(config());
        let f = e.observe(Sample { rss_mb: Some(1500.0), ..at(0) });
        assert_eq!(names(&f), ["high_memory"]);
        assert_eq!(f[0].value, 1500.0);
        assert!(e.observe(Sample { rss_mb: None, ..at(10) }).is_empty(), "unknown memory says nothing");
    }

    #[test]
    fn low_throughput_only_with_a_backlog() {
        let mut e = Evaluator::new(config());
        e.observe(at(0));
        assert!(e.observe(Sample { consumed: 5, lag: Some(0), ..at(10) }).is_empty(), "idle, nothing waiting");
        let f = e.observe(Sample { consumed: 10, lag: Some(500), ..at(20) });
        assert_eq!(names(&f), ["low_throughput"]);
        assert_eq!(f[0].value, 0.5);
    }

    #[test]
    fn lag_growing_needs_consecutive_rises() {
        let mut e = Evaluator::new(MonitoringConfig { low_throughput: 0.0, ..config() });
        let lag = |secs, lag| Sample { lag: Some(lag), ..at(secs) };
        assert!(e.observe(lag(0, 10)).is_empty());
        assert!(e.observe(lag(10, 20)).is_empty());
        assert!(e.observe(lag(20, 30)).is_empty());
        assert!(e.observe(lag(30, 30)).is_empty(), "a flat interval resets the count");
        assert!(e.observe(lag(40, 40)).is_empty());
        assert!(e.observe(lag(50, 50)).is_empty());
        let f = e.observe(lag(60, 60));
        assert_eq!(names(&f), ["lag_growing"]);
        assert_eq!((f[0].value, f[0].threshold), (60.0, 3.0));
    }

    #[test]
    fn a_zero_threshold_disables_its_rule() {
        let off = MonitoringConfig { high_error_rate: 0.0, high_memory_mb: 0.0, ..config() };
        let mut e = Evaluator::new(off);
        e.observe(Sample { rss_mb: Some(1e6), ..healthy(0) });
        assert!(e.observe(Sample { dead_letters: 1000, rss_mb: Some(1e6), ..healthy(1) }).is_empty());
    }
}
