//! OpenTelemetry for `run`: traces and metrics over OTLP (HTTP/protobuf), off by default.
//!
//! On when `telemetry.otlp_endpoint` is set (a base URL; `/v1/traces` and `/v1/metrics` are
//! appended as the OTLP spec says), or else when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is. The exporter itself reads the other standard
//! variables (`OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_BSP_*`).
//!
//! Spans come from `tracing` through `tracing-opentelemetry`. The worker's spans are built
//! here ([`batch_span`], [`span`]) and are [`Span::none`] while OpenTelemetry is off: one
//! relaxed load per batch, so the off path costs nothing measurable and adds nothing to logs.
//! While on, each span carries a `trace_id` field, so log lines inside it name their trace.
//! Counts are recorded as `i64`: the exporter sends a `u64` attribute as a string.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::WorkerStats;
use crate::config::TelemetryConfig;

/// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "onad-stream";
/// Longest wait for the last spans and metrics to be exported on shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Instrumentation scope of the worker's spans and metrics.
const SCOPE: &str = "onad-stream";

/// An exported counter: name, description, how to read it.
type Counter = (&'static str, &'static str, fn(&WorkerStats) -> u64);

/// Whether spans are exported (set once by [`Otel::start`]).
static ON: AtomicBool = AtomicBool::new(false);

/// True while OpenTelemetry exports spans.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The OTLP base endpoint configured, if any: the config key, then the standard variables.
/// `None`: OpenTelemetry stays off.
pub fn endpoint(config: &TelemetryConfig) -> Option<String> {
    if !config.otlp_endpoint.trim().is_empty() {
        return Some(config.otlp_endpoint.trim().trim_end_matches('/').to_string());
    }
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
}

/// The running exporters; dropping this flushes and shuts them down (do it outside the
/// tokio runtime: the blocking HTTP client must not be dropped inside one).
pub struct Otel {
    /// Span pipeline (batching, on its own thread).
    traces: SdkTracerProvider,
    /// Metric pipeline (periodic reader, on its own thread).
    metrics: SdkMeterProvider,
}

impl Otel {
    /// Build the exporters for `config`; `None` when OpenTelemetry is off.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Self>, String> {
        let Some(base) = endpoint(config) else { return Ok(None) };
        // With the endpoint from the config, give each signal its path; otherwise leave the
        // exporter to the standard variables (it appends the paths itself).
        let from_config = !config.otlp_endpoint.trim().is_empty();
        let mut spans = SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
        let mut metrics = MetricExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
        if from_config {
            spans = spans.with_endpoint(format!("{base}/v1/traces"));
            metrics = metrics.with_endpoint(format!("{base}/v1/metrics"));
        }
        let spans = spans.build().map_err(|e| format!("OTLP span exporter for {base}: {e}"))?;
        let metrics = metrics.build().map_err(|e| format!("OTLP metric exporter for {base}: {e}"))?;
        let resource = resource();
        let traces = SdkTracerProvider::builder().with_batch_exporter(spans).with_resource(resource.clone()).build();
        let metrics = SdkMeterProvider::builder().with_periodic_exporter(metrics).with_resource(resource).build();
        ON.store(true, Ordering::Relaxed);
        Ok(Some(Self { traces, metrics }))
    }

    /// The `tracing` layer turning spans into OTel spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.traces.tracer(SCOPE))
    }

    /// Export the worker's main counters and gauges as OTel metrics (read from `stats` at
    /// each export, so the hot path does nothing more).
    pub fn watch(&self, topic: &str, stats: Arc<WorkerStats>) {
        let meter = self.metrics.meter(SCOPE);
        let topic: Arc<str> = topic.into();
        let counters: [Counter; 6] = [
            ("onad.records.consumed", "Input records taken from Kafka", |s| s.consumed.load(Ordering::Relaxed)),
            ("onad.readings.scored", "Readings scored", |s| s.scored.load(Ordering::Relaxed)),
            ("onad.anomalies", "Anomaly alerts emitted", |s| s.alerts.load(Ordering::Relaxed)),
            ("onad.dead_letters", "Records sent to dead letters", |s| s.dead_letters.load(Ordering::Relaxed)),
            ("onad.records.acknowledged", "Input records whose outputs are delivered", |s| s.acknowledged.load(Ordering::Relaxed)),
            ("onad.rebalances", "Rebalance callbacks served", |s| s.rebalances.load(Ordering::Relaxed)),
        ];
        for (name, description, read) in counters {
            let (stats, topic) = (stats.clone(), topic.clone());
            // Registered callbacks live as long as the provider; the handle is not needed.
            let _ = meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| o.observe(read(&stats), &[KeyValue::new("topic", topic.to_string())]))
                .build();
        }
        let s = stats.clone();
        let _ = meter
            .u64_observable_gauge("onad.partitions")
            .with_description("Input partitions owned")
            .with_callback(move |o| o.observe(s.partitions.load(Ordering::Relaxed), &[]))
            .build();
        let _ = meter
            .i64_observable_gauge("onad.consumer.lag")
            .with_description("Consumer lag per partition, records (librdkafka statistics)")
            .with_callback(move |o| {
                for ((t, p), ps) in stats.partitions_now() {
                    let lag = ps.lag.load(Ordering::Relaxed);
                    if lag >= 0 {
                        o.observe(lag, &[KeyValue::new("topic", t), KeyValue::new("partition", i64::from(p))]);
                    }
                }
            })
            .build();
    }
}

impl Drop for Otel {
    fn drop(&mut self) {
        ON.store(false, Ordering::Relaxed);
        if let Err(e) = self.traces.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            eprintln!("onad-stream: flushing OpenTelemetry spans failed: {e}");
        }
        if let Err(e) = self.metrics.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            eprintln!("onad-stream: flushing OpenTelemetry metrics failed: {e}");
        }
    }
}

/// `service.name` from the standard variables, else [`DEFAULT_SERVICE_NAME`].
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|s| s.contains("service.name="));
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}

/// Record the span's trace id in its `trace_id` field, so that log lines inside it carry it.
fn with_trace_id(span: Span) -> Span {
    let id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(id));
    span
}

/// The span of one batch of a partition thread (a consumer span); fill `last_offset`,
/// `records` and `outcome` with [`Span::record`] before dropping it. [`Span::none`] while off.
#[inline]
pub fn batch_span(topic: &str, partition: i32, first_offset: i64) -> Span {
    if !enabled() {
        return Span::none();
    }
    with_trace_id(tracing::info_span!(
        "onad.batch",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        topic,
        partition,
        first_offset,
        last_offset = tracing::field::Empty,
        records = tracing::field::Empty,
        outcome = tracing::field::Empty,
    ))
}

/// The span of one snapshot write of a partition (fill `offset`, `keys`, `bytes`, `outcome`).
pub fn snapshot_span(topic: &str, partition: i32) -> Span {
    if !enabled() {
        return Span::none();
    }
    let e = tracing::field::Empty;
    with_trace_id(tracing::info_span!("onad.snapshot", trace_id = e, topic, partition, offset = e, keys = e, bytes = e, outcome = e))
}

/// The span of a partition's restore on assignment (fill `source`: snapshot / parked / none,
/// `offset`: the restored models' last offset or -1, `keys`).
pub fn restore_span(topic: &str, partition: i32) -> Span {
    if !enabled() {
        return Span::none();
    }
    let e = tracing::field::Empty;
    with_trace_id(tracing::info_span!("onad.restore", trace_id = e, topic, partition, source = e, offset = e, keys = e))
}

/// The span of one rebalance callback: `kind` is `assign`, `revoke` or `error`; `partitions`
/// are those of `topic` in the callback's list.
pub fn rebalance_span(kind: &'static str, topic: &str, partitions: &[i32]) -> Span {
    if !enabled() {
        return Span::none();
    }
    let partitions = format!("{partitions:?}");
    with_trace_id(tracing::info_span!("onad.rebalance", trace_id = tracing::field::Empty, kind, topic, partitions))
}
