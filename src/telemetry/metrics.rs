//! Prometheus metrics and the health endpoint, declared in one place.
//!
//! Counters are plain atomics: the hot path takes a handle once per partition
//! ([`CounterVec::with`]) and then only does a relaxed `fetch_add`. Labels are `topic`,
//! `partition` and small fixed sets (`severity`, `kind`), never a sensor id (unbounded
//! cardinality). The text exposition format is written by hand: it is a few lines, and a
//! metrics crate would not earn its place for this.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A family of counters sharing a name and label names.
#[derive(Debug)]
pub struct CounterVec {
    /// Metric name (`onad_..._total`).
    name: &'static str,
    /// One-line help text.
    help: &'static str,
    /// Label names, in order.
    labels: &'static [&'static str],
    /// Label values -> counter.
    series: Mutex<BTreeMap<Vec<String>, Arc<AtomicU64>>>,
}

impl CounterVec {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self { name, help, labels, series: Mutex::new(BTreeMap::new()) }
    }

    /// The counter for these label values (in the order of the label names), created at 0.
    /// Keep the handle: it is the cheap path.
    pub fn with(&self, values: &[&str]) -> Arc<AtomicU64> {
        debug_assert_eq!(values.len(), self.labels.len(), "{}: wrong number of label values", self.name);
        let key: Vec<String> = values.iter().map(|v| (*v).to_string()).collect();
        match self.series.lock() {
            Ok(mut s) => s.entry(key).or_default().clone(),
            // A poisoned map only means another thread panicked mid-insert; count anyway.
            Err(p) => p.into_inner().entry(key).or_default().clone(),
        }
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter", self.name, self.help, self.name);
        let series = match self.series.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        for (values, counter) in series {
            let _ = writeln!(out, "{}{} {}", self.name, label_set(self.labels, &values), counter.load(Ordering::Relaxed));
        }
    }
}

/// A gauge without labels.
#[derive(Debug)]
pub struct Gauge {
    /// Metric name.
    name: &'static str,
    /// One-line help text.
    help: &'static str,
    /// Current value.
    value: AtomicI64,
}

impl Gauge {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self { name, help, value: AtomicI64::new(0) }
    }

    /// Set the value.
    pub fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
    }

    /// Add (or subtract) from the value.
    pub fn add(&self, d: i64) {
        self.value.fetch_add(d, Ordering::Relaxed);
    }

    /// The value now.
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge\n{} {}", self.name, self.help, self.name, self.name, self.get());
    }
}

/// Every metric of the worker.
#[derive(Debug)]
pub struct Metrics {
    /// Input records taken from Kafka.
    pub records_consumed: CounterVec,
    /// Readings scored (one ScoredReading each).
    pub readings_scored: CounterVec,
    /// Readings scored by a fallback detector.
    pub readings_degraded: CounterVec,
    /// Anomaly alerts emitted.
    pub alerts: CounterVec,
    /// Records sent to dead letters.
    pub dead_letters: CounterVec,
    /// Input offsets acknowledged (outputs delivered, offset stored).
    pub records_acknowledged: CounterVec,
    /// Partition snapshots written.
    pub snapshots_written: CounterVec,
    /// Rebalance callbacks served.
    pub rebalances: CounterVec,
    /// Partitions currently assigned to this worker.
    pub assigned_partitions: Gauge,
    /// Sensor pipelines currently held in memory.
    pub pipelines: Gauge,
    /// Whether the worker is up and consuming (for /health).
    healthy: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all at zero, unhealthy until [`Metrics::set_healthy`].
    pub const fn new() -> Self {
        const TP: &[&str] = &["topic", "partition"];
        Self {
            records_consumed: CounterVec::new("onad_records_consumed_total", "Input records taken from Kafka.", TP),
            readings_scored: CounterVec::new("onad_readings_scored_total", "Readings scored (one ScoredReading each).", TP),
            readings_degraded: CounterVec::new(
                "onad_readings_degraded_total",
                "Readings scored by a fallback detector.",
                TP,
            ),
            alerts: CounterVec::new("onad_alerts_total", "Anomaly alerts emitted, by severity.", &["topic", "partition", "severity"]),
            dead_letters: CounterVec::new(
                "onad_dead_letters_total",
                "Records sent to the dead-letter topic, by error kind.",
                &["topic", "partition", "kind"],
            ),
            records_acknowledged: CounterVec::new(
                "onad_records_acknowledged_total",
                "Input records whose outputs were delivered and whose offset was stored.",
                TP,
            ),
            snapshots_written: CounterVec::new("onad_snapshots_written_total", "Partition state snapshots written.", TP),
            rebalances: CounterVec::new("onad_rebalances_total", "Rebalance events served, by kind.", &["kind"]),
            assigned_partitions: Gauge::new("onad_assigned_partitions", "Input partitions assigned to this worker."),
            pipelines: Gauge::new("onad_pipelines", "Sensor pipelines held in memory."),
            healthy: AtomicBool::new(false),
        }
    }

    /// Mark the worker healthy (consuming) or not.
    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
    }

    /// Whether /health answers 200.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        for c in [
            &self.records_consumed,
            &self.readings_scored,
            &self.readings_degraded,
            &self.alerts,
            &self.dead_letters,
            &self.records_acknowledged,
            &self.snapshots_written,
            &self.rebalances,
        ] {
            c.render(&mut out);
        }
        self.assigned_partitions.render(&mut out);
        self.pipelines.render(&mut out);
        let _ = writeln!(out, "# HELP onad_up 1 when the worker is consuming.\n# TYPE onad_up gauge\nonad_up {}", u8::from(self.is_healthy()));
        out
    }
}

/// The process-wide metrics.
pub static METRICS: Metrics = Metrics::new();

fn label_set(names: &[&str], values: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(s, "{n}=\"{v}\"");
    }
    s.push('}');
    s
}

/// Serve `GET /metrics` (Prometheus text format) and `GET /health` (200 when healthy, else
/// 503) on `addr` until the task is dropped. Returns the bound address (port 0 picks one).
pub async fn serve(addr: &str, metrics: &'static Metrics) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                // One read holds the request line of any scraper; the rest is ignored.
                let n = match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                    "/health" | "/healthz" | "/ready" if metrics.is_healthy() => ("200 OK", "text/plain", "ok\n".to_string()),
                    "/health" | "/healthz" | "/ready" => ("503 Service Unavailable", "text/plain", "starting or stopping\n".to_string()),
                    _ => ("404 Not Found", "text/plain", "try /metrics or /health\n".to_string()),
                };
                let head =
                    format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_labelled_series() {
        let m = Metrics::new();
        m.readings_scored.with(&["in", "3"]).fetch_add(5, Ordering::Relaxed);
        m.alerts.with(&["in", "3", "CRITICAL"]).fetch_add(1, Ordering::Relaxed);
        m.assigned_partitions.set(2);
        let text = m.render();
        assert!(text.contains("# TYPE onad_readings_scored_total counter"), "{text}");
        assert!(text.contains("onad_readings_scored_total{topic=\"in\",partition=\"3\"} 5"), "{text}");
        assert!(text.contains("onad_alerts_total{topic=\"in\",partition=\"3\",severity=\"CRITICAL\"} 1"), "{text}");
        assert!(text.contains("onad_assigned_partitions 2"), "{text}");
        assert!(text.contains("onad_up 0"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_set(&["t"], &["a\"b\\c".into()]), "{t=\"a\\\"b\\\\c\"}");
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_and_health() {
        static M: Metrics = Metrics::new();
        let (addr, task) = serve("127.0.0.1:0", &M).await.unwrap();
        async fn get(addr: SocketAddr, path: &str) -> String {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 503"));
        M.set_healthy(true);
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
        M.records_consumed.with(&["t", "0"]).fetch_add(7, Ordering::Relaxed);
        let body = get(addr, "/metrics").await;
        assert!(body.contains("onad_records_consumed_total{topic=\"t\",partition=\"0\"} 7"), "{body}");
        task.abort();
    }
}
