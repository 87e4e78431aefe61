//! The ops-alert monitor of `run`: every `monitoring.interval_secs` it samples the worker's
//! counters ([`WorkerStats`], the process's resident memory), lets [`super::rules`] judge
//! them, and sends each firing three ways: a log line, the `publish` callback (the
//! `OpsAlert` record on `monitoring.ops_alerts_topic`, wired by `cli::run`, since Kafka is
//! not this leaf's business) and a POST to `monitoring.webhook_url`.
//!
//! A webhook POST is fire-and-forget with a timeout: a slow or failing receiver is logged and
//! never retried (the cooldown already bounds how often a rule can speak), and it never delays
//! the next evaluation.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::rules::{Evaluator, Firing, Sample, Severity};
use super::WorkerStats;
use crate::config::MonitoringConfig;

/// One firing with where and when it happened: what the log, the ops topic and the webhook say.
#[derive(Debug, Clone)]
pub struct OpsAlert {
    /// The rule and its measurement.
    pub firing: Firing,
    /// `host/pid` of this worker.
    pub instance: String,
    /// The worker's consumer group.
    pub group_id: String,
    /// Wall clock of the firing, ms since epoch.
    pub fired_at_ms: i64,
}

/// Sends an alert to the ops topic (enqueue only; must not block).
pub type Publish = Box<dyn Fn(&OpsAlert) + Send + Sync>;

/// The monitor task's parts.
pub struct Monitor {
    /// Rules, cooldown, interval, webhook.
    config: MonitoringConfig,
    /// The counters it samples.
    stats: Arc<WorkerStats>,
    /// `host/pid`.
    instance: String,
    /// Consumer group.
    group_id: String,
    /// The ops-topic sender, when a topic is configured.
    publish: Option<Publish>,
    /// HTTP client of the webhook, when one is configured.
    webhook: Option<reqwest::Client>,
}

impl Monitor {
    /// A monitor of `stats` for group `group_id`; `publish` sends to the ops topic.
    pub fn new(config: MonitoringConfig, stats: Arc<WorkerStats>, group_id: &str, publish: Option<Publish>) -> Result<Self, String> {
        let webhook = if config.webhook_url.is_empty() {
            None
        } else {
            let timeout = Duration::from_millis(config.webhook_timeout_ms);
            Some(reqwest::Client::builder().timeout(timeout).build().map_err(|e| format!("webhook client: {e}"))?)
        };
        Ok(Self { config, stats, instance: instance(), group_id: group_id.to_string(), publish, webhook })
    }

    /// Evaluate every interval until the task is dropped (aborted by `run` on shutdown).
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(Duration::from_secs(self.config.interval_secs));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rules = Evaluator::new(self.config.clone());
        let started = Instant::now();
        loop {
            ticks.tick().await;
            for firing in rules.observe(self.sample(started.elapsed())) {
                self.send(firing);
            }
        }
    }

    /// The counters now.
    fn sample(&self, at: Duration) -> Sample {
        let s = &self.stats;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let lags: Vec<i64> = s.partitions_now().iter().map(|(_, p)| p.lag.load(Ordering::Relaxed)).collect();
        // Unknown (-1) for any owned partition makes the total unknown: a partial sum would
        // read as a lag drop or rise that did not happen.
        let lag = if lags.is_empty() || lags.iter().any(|l| *l < 0) { None } else { Some(lags.iter().map(|l| *l as u64).sum()) };
        Sample {
            at,
            consumed: g(&s.consumed),
            scored: g(&s.scored),
            anomalies: g(&s.alerts),
            dead_letters: g(&s.dead_letters),
            processing_us: g(&s.processing_us),
            rss_mb: rss_mb(),
            lag,
        }
    }

    /// Log, publish and POST one firing.
    fn send(&self, firing: Firing) {
        let fired_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default();
        let alert = OpsAlert { firing, instance: self.instance.clone(), group_id: self.group_id.clone(), fired_at_ms };
        let f = &alert.firing;
        match f.severity {
            Severity::Critical => tracing::error!(alert = f.name, value = f.value, threshold = f.threshold, "ops alert: {}", f.message),
            Severity::Warning => tracing::warn!(alert = f.name, value = f.value, threshold = f.threshold, "ops alert: {}", f.message),
        }
        if let Some(publish) = &self.publish {
            publish(&alert);
        }
        if let Some(client) = &self.webhook {
            let request = client.post(&self.config.webhook_url).json(&webhook_body(&alert));
            let (url, name) = (self.config.webhook_url.clone(), f.name);
            tokio::spawn(async move {
                match request.send().await.and_then(|r| r.error_for_status()) {
                    Ok(_) => tracing::debug!(alert = name, "ops alert posted to the webhook"),
                    Err(e) => tracing::warn!(alert = name, %url, cause = %e, "ops alert webhook failed (not retried)"),
                }
            });
        }
    }
}

/// The webhook's JSON: Slack's `text` (incoming webhooks need only it) plus the fields.
pub fn webhook_body(a: &OpsAlert) -> serde_json::Value {
    let f = &a.firing;
    serde_json::json!({
        "text": format!("[{}] onad-stream {} on {} (group {}): {}", f.severity.as_str(), f.name, a.instance, a.group_id, f.message),
        "name": f.name,
        "severity": f.severity.as_str(),
        "value": f.value,
        "threshold": f.threshold,
        "message": f.message,
        "instance": a.instance,
        "group_id": a.group_id,
        "fired_at_ms": a.fired_at_ms,
    })
}

/// `host/pid`: the pod name in Kubernetes (its host name), and the process.
fn instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}

/// The process's resident set size, MB (Linux `/proc`; None elsewhere).
fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_body_has_a_slack_text_and_every_field() {
        let firing = Firing {
            name: "high_memory",
            severity: Severity::Critical,
            value: 1500.0,
            threshold: 1000.0,
            message: "memory usage 1500.0 MB above 1000.0 MB".into(),
        };
        let a = OpsAlert { firing, instance: "worker-0/7".into(), group_id: "g".into(), fired_at_ms: 42 };
        let v = webhook_body(&a);
        assert_eq!(v["text"], "[critical] onad-stream high_memory on worker-0/7 (group g): memory usage 1500.0 MB above 1000.0 MB");
        assert_eq!(
            (v["name"].as_str(), v["severity"].as_str(), v["value"].as_f64(), v["threshold"].as_f64()),
            (Some("high_memory"), Some("critical"), Some(1500.0), Some(1000.0))
        );
        assert_eq!((v["instance"].as_str(), v["group_id"].as_str(), v["fired_at_ms"].as_i64()), (Some("worker-0/7"), Some("g"), Some(42)));
    }

    #[test]
    fn resident_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_mb().is_some_and(|mb| mb > 0.0));
        }
    }
}
