//! What `/ready` (and its alias `/health`) says, decided from the worker's shared health fields
//! ([`WorkerStats`]): the seed's `healthy` / `degraded` / `unhealthy`, with reasons, and what
//! each assigned partition reports.
//!
//! Ready (200) means the worker does its job: the consumer group is joined, the driver polled
//! in the last `ready_max_poll_age_secs`, a broker answers, no partition's state fails to save
//! and no fatal error was seen. `degraded` is still ready: some pipelines are scored by their
//! fallback detector while their circuit breaker is open.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::stats::WorkerStats;

/// Unix time now, milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The readiness rules' settings.
#[derive(Debug, Clone)]
pub struct HealthRules {
    /// Longest time since the driver's last poll that still counts as consuming.
    pub max_poll_age: Duration,
    /// The bootstrap servers (named in the reason when no broker answers).
    pub bootstrap: String,
}

impl Default for HealthRules {
    fn default() -> Self {
        Self { max_poll_age: Duration::from_secs(crate::config::DEFAULT_READY_MAX_POLL_AGE_SECS), bootstrap: String::new() }
    }
}

/// The seed's health states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Consuming, every pipeline on its own detector.
    Healthy,
    /// Consuming, some pipelines on their fallback detector (still ready).
    Degraded,
    /// Not ready: see the reasons.
    Unhealthy,
}

/// One assigned partition, as `/ready` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// Input topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Always true: only assigned partitions are listed.
    pub assigned: bool,
    /// Consumer lag in records (librdkafka statistics); `null` until known.
    pub lag: Option<i64>,
    /// Circuit breakers open now.
    pub breakers_open: u64,
    /// Circuit breakers half-open now.
    pub breakers_half_open: u64,
    /// Seconds since the last snapshot; `null` before the first.
    pub last_snapshot_age_secs: Option<f64>,
    /// Sensor pipelines of the partition.
    pub models: u64,
    /// Sensor pipelines held in memory.
    pub models_resident: u64,
}

/// The body of `/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: Status,
    /// Why it is not healthy (empty when healthy).
    pub reasons: Vec<String>,
    /// The consumer group is joined.
    pub group_joined: bool,
    /// Milliseconds since the driver's last poll; `null` before the first.
    pub last_poll_age_ms: Option<u64>,
    /// Milliseconds since no broker answers; `null` while one does.
    pub broker_down_ms: Option<u64>,
    /// Every assigned partition.
    pub partitions: Vec<PartitionReport>,
}

impl Report {
    /// The HTTP status `/ready` answers with: 503 only when unhealthy.
    pub fn http_status(&self) -> u16 {
        if self.status == Status::Unhealthy {
            503
        } else {
            200
        }
    }
}

/// Decides readiness from a worker's shared health fields.
#[derive(Debug)]
pub struct Health {
    /// The worker's counters and health fields.
    stats: Arc<WorkerStats>,
    /// The rules' settings.
    rules: HealthRules,
}

impl Health {
    /// Readiness of the worker with `stats`.
    pub fn new(stats: Arc<WorkerStats>, rules: HealthRules) -> Self {
        Self { stats, rules }
    }

    /// The report now.
    pub fn report(&self) -> Report {
        self.report_at(now_ms())
    }

    /// The report at `now` (Unix ms).
    pub fn report_at(&self, now: u64) -> Report {
        let s = &self.stats;
        let mut reasons = Vec::new();
        if let Some(fatal) = s.fatal_reason.lock().ok().and_then(|f| f.clone()) {
            reasons.push(format!("fatal error, exiting: {fatal}"));
        }
        let down = s.broker_down_since_ms.load(Ordering::Relaxed);
        let broker_down_ms = (down != 0).then(|| now.saturating_sub(down));
        if let Some(ms) = broker_down_ms {
            reasons.push(format!("no Kafka broker reachable at {} for {:.1} s", self.rules.bootstrap, ms as f64 / 1000.0));
        }
        let group_joined = s.group_joined.load(Ordering::Relaxed);
        if !group_joined {
            reasons.push("consumer group not joined".into());
        }
        let last = s.last_poll_ms.load(Ordering::Relaxed);
        let last_poll_age_ms = (last != 0).then(|| now.saturating_sub(last));
        match last_poll_age_ms {
            None => reasons.push("no poll of the consumer yet".into()),
            Some(age) if age > self.rules.max_poll_age.as_millis() as u64 => reasons.push(format!(
                "last poll of the consumer {:.1} s ago (limit {} s)",
                age as f64 / 1000.0,
                self.rules.max_poll_age.as_secs()
            )),
            Some(_) => {}
        }
        if let Some(why) = s.unhealthy_reason() {
            reasons.push(why);
        }
        let unhealthy = !reasons.is_empty();
        let partitions: Vec<PartitionReport> = s
            .partitions_now()
            .into_iter()
            .map(|((topic, partition), p)| {
                let lag = p.lag.load(Ordering::Relaxed);
                let snap = p.last_snapshot_ms.load(Ordering::Relaxed);
                PartitionReport {
                    topic,
                    partition,
                    assigned: true,
                    lag: (lag >= 0).then_some(lag),
                    breakers_open: p.breakers_open.load(Ordering::Relaxed),
                    breakers_half_open: p.breakers_half_open.load(Ordering::Relaxed),
                    last_snapshot_age_secs: (snap != 0).then(|| now.saturating_sub(snap) as f64 / 1000.0),
                    models: p.models.load(Ordering::Relaxed),
                    models_resident: p.models_resident.load(Ordering::Relaxed),
                }
            })
            .collect();
        let open: u64 = partitions.iter().map(|p| p.breakers_open).sum();
        if open > 0 {
            reasons.push(format!("{open} circuit breaker(s) open: their sensors are scored by the fallback detector"));
        }
        let status = if unhealthy {
            Status::Unhealthy
        } else if open > 0 {
            Status::Degraded
        } else {
            Status::Healthy
        };
        Report { status, reasons, group_joined, last_poll_age_ms, broker_down_ms, partitions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consuming(now: u64) -> Arc<WorkerStats> {
        let s = Arc::new(WorkerStats::default());
        s.group_joined.store(true, Ordering::Relaxed);
        s.last_poll_ms.store(now - 50, Ordering::Relaxed);
        s
    }

    #[test]
    fn ready_only_when_joined_polling_reachable_and_saving() {
        let now = 1_000_000;
        let rules = HealthRules { max_poll_age: Duration::from_secs(10), bootstrap: "k:9092".into() };
        let stats = consuming(now);
        let health = Health::new(stats.clone(), rules);
        let r = health.report_at(now);
        assert_eq!((r.status, r.http_status(), r.reasons.len()), (Status::Healthy, 200, 0), "{r:?}");

        stats.broker_down_since_ms.store(now - 3000, Ordering::Relaxed);
        let r = health.report_at(now);
        assert_eq!(r.http_status(), 503);
        assert!(r.reasons[0].contains("no Kafka broker reachable at k:9092 for 3.0 s"), "{r:?}");
        stats.broker_down_since_ms.store(0, Ordering::Relaxed);

        stats.last_poll_ms.store(now - 11_000, Ordering::Relaxed);
        assert!(health.report_at(now).reasons[0].contains("last poll of the consumer 11.0 s ago"));
        stats.last_poll_ms.store(now, Ordering::Relaxed);

        stats.group_joined.store(false, Ordering::Relaxed);
        assert_eq!(health.report_at(now).reasons, vec!["consumer group not joined".to_string()]);
        stats.group_joined.store(true, Ordering::Relaxed);

        stats.state_failing.store(1, Ordering::Relaxed);
        assert_eq!(health.report_at(now).status, Status::Unhealthy);
    }

    #[test]
    fn an_open_breaker_is_degraded_but_ready_and_partitions_are_listed() {
        let now = 5_000_000;
        let stats = consuming(now);
        let p = stats.partition("in", 2);
        p.breakers_open.store(2, Ordering::Relaxed);
        p.lag.store(-1, Ordering::Relaxed);
        p.last_snapshot_ms.store(now - 1500, Ordering::Relaxed);
        let r = Health::new(stats, HealthRules::default()).report_at(now);
        assert_eq!((r.status, r.http_status()), (Status::Degraded, 200));
        let json = serde_json::to_value(&r).expect("report serializes");
        assert_eq!(json["status"], "degraded");
        assert_eq!(json["partitions"][0]["partition"], 2);
        assert_eq!(json["partitions"][0]["breakers_open"], 2);
        assert!(json["partitions"][0]["lag"].is_null());
        assert_eq!(json["partitions"][0]["last_snapshot_age_secs"].as_f64(), Some(1.5));
    }
}
