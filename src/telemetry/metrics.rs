//! Prometheus metrics and the health endpoint, declared in one place.
//!
//! The worker's counters are the atomics of [`WorkerStats`] (the hot path already keeps
//! them); this module names them for Prometheus and serves them. Labels are `topic` (the
//! input topic) only, never a sensor id (unbounded cardinality). The text exposition format is
//! written by hand: it is a few lines, and a metrics crate would not earn its place for this.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::stats::WorkerStats;

/// How a [`WorkerStats`] counter is exposed: name, type, help, and where to read it.
struct Exposed {
    /// Metric name.
    name: &'static str,
    /// `counter` or `gauge`.
    kind: &'static str,
    /// One-line help text.
    help: &'static str,
    /// The field it reads.
    read: fn(&WorkerStats) -> &AtomicU64,
}

/// Every worker metric. Names say what they count.
const EXPOSED: &[Exposed] = &[
    Exposed { name: "onad_records_consumed_total", kind: "counter", help: "Input records taken from Kafka.", read: |s| &s.consumed },
    Exposed { name: "onad_readings_scored_total", kind: "counter", help: "Readings scored (one ScoredReading each).", read: |s| &s.scored },
    Exposed { name: "onad_alerts_total", kind: "counter", help: "Anomaly alerts emitted.", read: |s| &s.alerts },
    Exposed { name: "onad_dead_letters_total", kind: "counter", help: "Records sent to the dead-letter topic.", read: |s| &s.dead_letters },
    Exposed {
        name: "onad_records_acknowledged_total",
        kind: "counter",
        help: "Input records whose outputs were delivered and whose offset was stored.",
        read: |s| &s.acknowledged,
    },
    Exposed {
        name: "onad_records_replayed_total",
        kind: "counter",
        help: "Records re-applied to restored state without outputs.",
        read: |s| &s.replayed,
    },
    Exposed { name: "onad_rebalances_total", kind: "counter", help: "Rebalance callbacks served.", read: |s| &s.rebalances },
    Exposed {
        name: "onad_state_failing_partitions",
        kind: "gauge",
        help: "Partitions paused because their state cannot be saved (non-zero: unhealthy).",
        read: |s| &s.state_failing,
    },
    Exposed {
        name: "onad_state_write_failures_total",
        kind: "counter",
        help: "Snapshot writes that failed (each retry counts).",
        read: |s| &s.state_write_failures,
    },
    Exposed {
        name: "onad_state_recoveries_total",
        kind: "counter",
        help: "Times a paused partition saved its state again and carried on.",
        read: |s| &s.state_recoveries,
    },
    Exposed {
        name: "onad_partitions_resumed_at_end_total",
        kind: "counter",
        help: "Partitions assigned with a committed offset beyond their last record, resumed at the end.",
        read: |s| &s.past_end_resets,
    },
    Exposed { name: "onad_assigned_partitions", kind: "gauge", help: "Input partitions this worker owns now.", read: |s| &s.partitions },
];

/// What `/metrics` and `/health` report.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The running worker's input topic and counters, once it started.
    worker: Mutex<Option<(String, Arc<WorkerStats>)>>,
    /// Whether the worker is up and consuming (for /health).
    healthy: AtomicBool,
}

impl Metrics {
    /// Report `stats` of a worker consuming `topic`.
    pub fn watch_worker(&self, topic: &str, stats: Arc<WorkerStats>) {
        if let Ok(mut w) = self.worker.lock() {
            *w = Some((topic.to_string(), stats));
        }
    }

    /// Mark the worker healthy (consuming) or not.
    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
    }

    /// Whether /health answers 200.
    pub fn is_healthy(&self) -> bool {
        self.unhealthy_reason().is_none()
    }

    /// Why /health answers 503, if it does.
    pub fn unhealthy_reason(&self) -> Option<String> {
        if !self.healthy.load(Ordering::Relaxed) {
            return Some("not consuming".into());
        }
        let worker = self.worker.lock().ok().and_then(|w| w.clone());
        worker.and_then(|(_, stats)| stats.unhealthy_reason())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let worker = self.worker.lock().ok().and_then(|w| w.clone());
        if let Some((topic, stats)) = worker {
            let topic = escape(&topic);
            for e in EXPOSED {
                let v = (e.read)(&stats).load(Ordering::Relaxed);
                let _ = writeln!(out, "# HELP {n} {h}\n# TYPE {n} {k}\n{n}{{topic=\"{topic}\"}} {v}", n = e.name, h = e.help, k = e.kind);
            }
            write_by_kind(&mut out, &topic, &stats);
        }
        let _ =
            writeln!(out, "# HELP onad_up 1 when the worker is consuming.\n# TYPE onad_up gauge\nonad_up {}", u8::from(self.is_healthy()));
        out
    }
}

/// Counters with a `kind` label: dead letters by error kind, security events by kind.
fn write_by_kind(out: &mut String, topic: &str, stats: &WorkerStats) {
    let n = "onad_dead_letters_by_kind_total";
    let _ = writeln!(out, "# HELP {n} Records sent to the dead-letter topic, by error kind.\n# TYPE {n} counter");
    for (kind, c) in super::stats::DEAD_LETTER_KINDS.iter().zip(&stats.dead_letters_by_kind).skip(1) {
        let _ = writeln!(out, "{n}{{topic=\"{topic}\",kind=\"{kind}\"}} {}", c.load(Ordering::Relaxed));
    }
    let n = "onad_security_events_total";
    let _ = writeln!(out, "# HELP {n} Rejected readings pointing at a hostile or broken producer, by kind.\n# TYPE {n} counter");
    for (kind, c) in super::stats::SecurityEvent::NAMES.iter().zip(&stats.security_events) {
        let _ = writeln!(out, "{n}{{topic=\"{topic}\",kind=\"{kind}\"}} {}", c.load(Ordering::Relaxed));
    }
}

/// Escape a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serve `GET /metrics` (Prometheus text format), `GET /health` (200 when healthy, else 503
/// with the reason: not consuming, or state that cannot be saved) and `GET /live` (200 while
/// the process serves) on `addr` until the returned task is aborted. Returns the bound address (port 0 picks
/// one).
pub async fn serve(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // Read up to the end of the request line (the rest is ignored).
                let mut buf = [0u8; 1024];
                let mut n = 0;
                let read_line = async {
                    while n < buf.len() && !buf[..n].contains(&b'\n') {
                        match stream.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                    }
                };
                if tokio::time::timeout(std::time::Duration::from_secs(5), read_line).await.is_err() {
                    return;
                }
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                    // Liveness: the process answers. A restart cures none of what makes
                    // /health fail (a full disk would only turn into a crash loop).
                    "/live" | "/livez" => ("200 OK", "text/plain", "alive\n".to_string()),
                    "/health" | "/healthz" | "/ready" => match metrics.unhealthy_reason() {
                        None => ("200 OK", "text/plain", "ok\n".to_string()),
                        Some(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                    },
                    _ => ("404 Not Found", "text/plain", "try /metrics, /health or /live\n".to_string()),
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
    fn exposition_names_every_worker_counter_with_its_topic() {
        let m = Metrics::default();
        let stats = Arc::new(WorkerStats::default());
        stats.scored.fetch_add(5, Ordering::Relaxed);
        stats.partitions.store(2, Ordering::Relaxed);
        m.watch_worker("in\"put", stats);
        let text = m.render();
        assert!(text.contains("# TYPE onad_readings_scored_total counter"), "{text}");
        assert!(text.contains("onad_readings_scored_total{topic=\"in\\\"put\"} 5"), "{text}");
        assert!(text.contains("# TYPE onad_assigned_partitions gauge\nonad_assigned_partitions{topic=\"in\\\"put\"} 2"), "{text}");
        assert!(text.contains("onad_up 0"), "{text}");
    }

    #[tokio::test]
    async fn endpoint_serves_metrics_and_health() {
        let m = Arc::new(Metrics::default());
        let stats = Arc::new(WorkerStats::default());
        m.watch_worker("t", stats.clone());
        let (addr, task) = serve("127.0.0.1:0", m.clone()).await.unwrap();
        async fn get(addr: SocketAddr, path: &str) -> String {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 503"));
        m.set_healthy(true);
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
        // State that cannot be saved makes the worker unhealthy, saying why.
        stats.state_failing.store(1, Ordering::Relaxed);
        *stats.state_error.lock().unwrap() = Some("partition 3: disk full".into());
        let body = get(addr, "/health").await;
        assert!(body.starts_with("HTTP/1.1 503") && body.contains("partition 3: disk full"), "{body}");
        stats.state_failing.store(0, Ordering::Relaxed);
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
        stats.consumed.fetch_add(7, Ordering::Relaxed);
        let body = get(addr, "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("onad_records_consumed_total{topic=\"t\"} 7"), "{body}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
