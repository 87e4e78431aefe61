//! OpenTelemetry through the real binary and broker: `onad-stream run` with
//! `telemetry.otlp_endpoint` pointing at an in-test OTLP/HTTP receiver exports a span per
//! batch (topic, partition, first/last offset, records, outcome), per rebalance, restore and
//! snapshot, its main counters as OTLP metrics, and its log lines inside a span carry the
//! span's trace id. The standard `OTEL_*` variables alone do the same.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{fleet, HttpSink, Scenario};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const PARTITIONS: i32 = 2;

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn int(attrs: &[KeyValue], key: &str) -> i64 {
    match attr(attrs, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("attribute {key} is not an integer: {other:?} in {attrs:?}"),
    }
}

fn string(attrs: &[KeyValue], key: &str) -> String {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("attribute {key} is not a string: {other:?} in {attrs:?}"),
    }
}

/// Every span of the trace exports received, with its resource's `service.name`.
fn spans(received: &[(String, Vec<u8>)]) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for (_, body) in received.iter().filter(|(p, _)| p == "/v1/traces") {
        let req = ExportTraceServiceRequest::decode(&body[..]).expect("a /v1/traces body is an ExportTraceServiceRequest");
        for rs in req.resource_spans {
            let service = rs.resource.as_ref().map(|r| string(&r.attributes, "service.name")).unwrap_or_default();
            for ss in rs.scope_spans {
                out.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
    }
    out
}

/// The last value of the sum metric `name` (summed over its data points) in the metrics received.
fn last_sum(received: &[(String, Vec<u8>)], name: &str) -> Option<u64> {
    let mut last = None;
    for (_, body) in received.iter().filter(|(p, _)| p == "/v1/metrics") {
        let req = ExportMetricsServiceRequest::decode(&body[..]).expect("a /v1/metrics body is an ExportMetricsServiceRequest");
        for m in req.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).filter(|m| m.name == name) {
            if let Some(Data::Sum(sum)) = &m.data {
                let total = sum
                    .data_points
                    .iter()
                    .map(|p| match p.value {
                        Some(number_data_point::Value::AsInt(i)) => i as u64,
                        Some(number_data_point::Value::AsDouble(d)) => d as u64,
                        None => 0,
                    })
                    .sum();
                last = Some(total);
            }
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_exports_its_batch_rebalance_restore_and_snapshot_spans_and_counters_over_otlp() {
    let receiver = HttpSink::start();
    let mut s = Scenario::new("otel", PARTITIONS).await;
    let readings = fleet(4, PARTITIONS, 50, None);
    let total = readings.len() as u64;
    let sets = vec![format!("telemetry.otlp_endpoint=\"{}\"", receiver.url())];
    let worker = common::ChildWorker::start_with_sets(&s.name, PARTITIONS, "", s.state.path(), &sets);
    s.send_and_score(readings, "a score for every reading").await;
    // SIGTERM: the worker drains, snapshots on revoke and flushes its spans and metrics.
    let log = worker.stop();
    assert!(log.contains("exporting traces and metrics over OTLP"), "{log}");

    let received = receiver.until(Duration::from_secs(30), "exported spans", |r| r.iter().any(|(p, _)| p == "/v1/traces"));
    let spans = spans(&received);
    assert!(spans.iter().all(|(service, _)| service == "onad-stream"), "service.name of every span is onad-stream");
    let topic = s.config.kafka.input_topic.clone();

    // Batches: per partition they cover every offset once, in order, each with its attributes.
    let mut batches: BTreeMap<i64, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for (_, span) in spans.iter().filter(|(_, s)| s.name == "onad.batch") {
        let a = &span.attributes;
        assert_eq!(string(a, "topic"), topic);
        assert_eq!(string(a, "outcome"), "ok");
        let (first, last, records) = (int(a, "first_offset"), int(a, "last_offset"), int(a, "records"));
        assert_eq!(last - first + 1, records, "a batch's records are its offsets (no gaps on a fresh topic): {a:?}");
        batches.entry(int(a, "partition")).or_default().push((first, last, records));
    }
    let per_partition = total as i64 / i64::from(PARTITIONS);
    for p in 0..i64::from(PARTITIONS) {
        let mut b = batches.get(&p).cloned().unwrap_or_else(|| panic!("no batch span of partition {p}"));
        b.sort();
        let mut next = 0;
        for (first, last, _) in &b {
            assert_eq!(*first, next, "partition {p}: batches {b:?} leave a gap or overlap");
            next = last + 1;
        }
        assert_eq!(next, per_partition, "partition {p}: batches {b:?} cover every reading");
    }

    // A rebalance span (assign) is the parent of the restore span of each partition.
    let assign = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "onad.rebalance" && string(&s.attributes, "kind") == "assign")
        .expect("an assign rebalance span");
    assert_eq!(string(&assign.attributes, "topic"), topic);
    let restores: Vec<&Span> = spans.iter().map(|(_, s)| s).filter(|s| s.name == "onad.restore").collect();
    let mut restored: Vec<i64> = restores.iter().map(|s| int(&s.attributes, "partition")).collect();
    restored.sort();
    assert_eq!(restored, (0..i64::from(PARTITIONS)).collect::<Vec<_>>(), "one restore span per partition");
    for r in &restores {
        assert_eq!(r.parent_span_id, assign.span_id, "a restore span is a child of its rebalance");
        assert_eq!(r.trace_id, assign.trace_id);
        assert_eq!(string(&r.attributes, "source"), "none", "fresh topics: nothing to restore");
    }

    // The snapshot written on revoke (shutdown), with what it wrote.
    let snapshots: Vec<&Span> = spans.iter().map(|(_, s)| s).filter(|s| s.name == "onad.snapshot").collect();
    assert!(!snapshots.is_empty(), "a snapshot span (on revoke at shutdown)");
    for snap in &snapshots {
        assert_eq!(string(&snap.attributes, "outcome"), "ok");
        assert!(int(&snap.attributes, "keys") > 0 && int(&snap.attributes, "bytes") > 0, "{:?}", snap.attributes);
    }

    // Log lines inside a span name its trace id (the assignment's, here).
    let trace_id: String = assign.trace_id.iter().map(|b| format!("{b:02x}")).collect();
    let log = common::strip_ansi(&log);
    let line = log.lines().find(|l| l.contains("partition assigned")).unwrap_or_else(|| panic!("no `partition assigned` line:\n{log}"));
    assert!(line.contains(&format!("trace_id={trace_id}")), "`{line}` does not carry the rebalance's trace id {trace_id}");

    // Metrics: the final export on shutdown holds the counters' end values.
    let received = receiver.until(Duration::from_secs(30), "exported metrics", |r| last_sum(r, "onad.records.consumed").is_some());
    assert_eq!(last_sum(&received, "onad.records.consumed"), Some(total), "consumed counter over OTLP");
    assert_eq!(last_sum(&received, "onad.readings.scored"), Some(total), "scored counter over OTLP");
    assert_eq!(last_sum(&received, "onad.dead_letters"), Some(0), "dead-letter counter over OTLP");
}

/// The standard variables alone turn export on: `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_SERVICE_NAME`, and `OTEL_METRIC_EXPORT_INTERVAL` (metrics arrive while it runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_otel_variables_turn_export_on_and_name_the_service() {
    let receiver = HttpSink::start();
    let s = Scenario::new("otelenv", 1).await;
    let readings = fleet(3, 1, 20, None);
    let total = readings.len() as u64;
    common::produce(&s.config, readings).await;
    let log = tempfile::NamedTempFile::new().expect("temp log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_onad-stream"));
    cmd.arg("run");
    for o in common::overrides(&s.name, 1) {
        cmd.arg("--set").arg(o);
    }
    let child = cmd
        .arg("--set")
        .arg(format!("state.path={:?}", s.state.path().display().to_string()))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url())
        .env("OTEL_SERVICE_NAME", "onad-env-test")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().expect("reopen log"))
        .spawn()
        .expect("start onad-stream run");
    let mut child = KillOnDrop(child);
    // Both while it runs: the periodic exports (no shutdown flush, it is killed afterwards).
    let received = receiver.until(Duration::from_secs(60), "the consumed counter at its end value and batch spans", |r| {
        last_sum(r, "onad.records.consumed") == Some(total) && spans(r).iter().any(|(_, s)| s.name == "onad.batch")
    });
    let exited = child.0.try_wait().expect("worker status");
    drop(child);
    assert!(exited.is_none(), "the worker exited early:\n{}", std::fs::read_to_string(log.path()).unwrap_or_default());
    let services: std::collections::BTreeSet<String> = spans(&received).into_iter().map(|(service, _)| service).collect();
    assert_eq!(services.into_iter().collect::<Vec<_>>(), ["onad-env-test"], "OTEL_SERVICE_NAME names the service");
}

/// Kills the worker when the test ends, whether it passes or panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
