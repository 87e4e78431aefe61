//! The worker's HTTP endpoint (axum, on the worker's tokio runtime):
//!
//! - `GET /live` (`/livez`): 200 while the process serves. A restart cures none of what makes
//!   `/ready` fail (a full disk, an unreachable broker), so liveness asks for nothing more.
//! - `GET /ready` (aliases `/health`, `/healthz`): 200 when [`Health`] says healthy or
//!   degraded, else 503; the body is the JSON [`super::health::Report`].
//! - `GET /metrics`: the Prometheus text exposition of [`Metrics`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::health::Health;
use super::metrics::{Metrics, CONTENT_TYPE};

/// What the endpoint serves.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `/ready`.
    pub health: Arc<Health>,
}

async fn live() -> &'static str {
    "alive\n"
}

async fn ready(axum::extract::State(e): axum::extract::State<Endpoint>) -> Response {
    let report = e.health.report();
    let code = StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = serde_json::to_string(&report).unwrap_or_else(|err| format!("{{\"status\":\"unhealthy\",\"reasons\":[\"{err}\"]}}"));
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(axum::extract::State(e): axum::extract::State<Endpoint>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], e.metrics.render()).into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "try /metrics, /ready (or /health) or /live\n")
}

/// The routes of the endpoint.
pub fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/livez", get(live))
        .route("/ready", get(ready))
        .route("/health", get(ready))
        .route("/healthz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(endpoint)
}

/// Serve `endpoint` on `addr` until the returned task is aborted. Returns the bound address
/// (port 0 picks one).
pub async fn serve(addr: &str, endpoint: Endpoint) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(endpoint);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(cause = %e, "the metrics and health endpoint stopped");
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::telemetry::health::HealthRules;
    use crate::telemetry::WorkerStats;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_live_ready_with_reasons_and_metrics() {
        let stats = Arc::new(WorkerStats::default());
        let health = Arc::new(Health::new(stats.clone(), HealthRules::default()));
        let metrics = Arc::new(Metrics::new("t", stats.clone(), health.clone()));
        let (addr, task) = serve("127.0.0.1:0", Endpoint { metrics, health }).await.expect("serve");
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
        let body = get(addr, "/ready").await;
        assert!(body.starts_with("HTTP/1.1 503") && body.contains("consumer group not joined"), "{body}");
        stats.group_joined.store(true, Ordering::Relaxed);
        stats.last_poll_ms.store(crate::telemetry::health::now_ms(), Ordering::Relaxed);
        let body = get(addr, "/health").await;
        assert!(body.starts_with("HTTP/1.1 200") && body.contains("\"status\":\"healthy\""), "{body}");
        stats.consumed.fetch_add(7, Ordering::Relaxed);
        let body = get(addr, "/metrics").await;
        assert!(body.contains("onad_records_consumed_total{topic=\"t\"} 7") && body.contains("onad_ready 1"), "{body}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
