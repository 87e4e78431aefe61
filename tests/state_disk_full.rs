//! A full disk under the real binary: `onad-stream run` keeps its RocksDB on a small tmpfs
//! that the test fills mid-stream. The partitions pause (their committed offsets stand
//! still), `/health` answers 503 naming the cause, and once space is freed the worker saves
//! its state again, turns healthy and finishes: every input offset has exactly one output, and
//! every score equals an uninterrupted run's. The process never exits on its own.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const PARTITIONS: i32 = 2;
const SENSORS: usize = 20;

const FLEET: Fleet = Fleet {
    prefix: "dev",
    sensors: SENSORS,
    partitions: PARTITIONS,
    values: |j, i| {
        let t = (j * 11 + i * 5) as f64;
        vec![("temp", 20.0 + t.sin()), ("rpm", 3.0 + (t * 0.3).cos())]
    },
};

/// Poll `/health` until its status is `want` (bounded); returns the body.
fn health_becomes(addr: &str, want: u16, limit: Duration, worker: &ChildWorker) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = http_get(addr, "/health");
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/health still {status} ({body:?}) after {limit:?}, want {want}:\n{}", worker.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_the_partitions_holds_offsets_reports_unhealthy_and_recovers_without_loss() {
    let name = unique("diskfull");
    let config = config(&name, PARTITIONS, &[]);
    create_topics(&config).await;
    let disk = SmallDisk::mount(32);
    let addr = free_addr();
    let toml = format!("checkpoint_interval = 100\n[state]\ncheckpoint_secs = 1\n[telemetry]\nmetrics_addr = \"{addr}\"\n");
    let worker = ChildWorker::start_with_state(&name, PARTITIONS, &toml, &disk.dir.path().join("state"));
    worker.wait_log("serving /metrics and /health", Duration::from_secs(30));
    let mut inputs = BTreeMap::new();
    let mut scores = Collector::new(&config.kafka.scores_topic, PARTITIONS);
    let wait_scores = |scores: &mut Collector, n: usize, what: &str, worker: &ChildWorker| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while scores.seen.len() < n {
            assert!(Instant::now() < deadline, "{what}: {} of {n} scores:\n{}", scores.seen.len(), worker.log());
            scores.read_for(Duration::from_millis(200));
        }
    };

    // With space: processed, snapshotted, healthy.
    send(&config, &mut inputs, FLEET.readings(0, 50)).await;
    wait_scores(&mut scores, inputs.len(), "before the disk fills", &worker);
    let body = health_becomes(&addr, 200, Duration::from_secs(10), &worker);
    assert!(body.contains("\"status\":\"healthy\""), "{body}");

    // Disk full: the next snapshot fails; the worker stays up but says why it is unhealthy.
    let filler = disk.fill();
    send(&config, &mut inputs, FLEET.readings(50, 550)).await;
    let body = health_becomes(&addr, 503, Duration::from_secs(60), &worker);
    assert!(body.contains("cannot be saved") && body.contains("No space left"), "{body}");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(metrics.lines().any(|l| l.starts_with("onad_state_failing_partitions{") && !l.ends_with(" 0")), "{metrics}");

    // Paused: over a span in which no partition saved its state again (RocksDB may free
    // some of its own files and let a write through: then the partition rightly carries on
    // until the next one fails, and the test looks at a later span), the worker takes no
    // record (not even new ones, sent during the span), answers nothing new and commits
    // nothing.
    let metric = |name: &str| metric(&addr, name).unwrap_or_else(|| panic!("{name} missing from /metrics"));
    let distinct = |scores: &Collector| by_source(&scores.seen).len();
    let offsets = || committed(&config.kafka.group_id, &config.kafka.input_topic, PARTITIONS);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut next = 550;
    loop {
        assert!(Instant::now() < deadline, "no 3 s span with every failing partition held:\n{}", worker.log());
        health_becomes(&addr, 503, Duration::from_secs(60), &worker);
        // Let in-flight outputs land and their offsets be committed (auto-commit: 1 s).
        scores.read_for(Duration::from_secs(2));
        let before = (metric("onad_state_recoveries_total"), metric("onad_records_consumed_total"), distinct(&scores), offsets());
        send(&config, &mut inputs, FLEET.readings(next, next + 10)).await;
        next += 10;
        scores.read_for(Duration::from_secs(3));
        let after = (metric("onad_state_recoveries_total"), metric("onad_records_consumed_total"), distinct(&scores), offsets());
        if before.0 != after.0 || http_get(&addr, "/health").0 != 503 {
            continue;
        }
        assert_eq!(after.1, before.1, "records taken while state could not be saved");
        assert_eq!(after.2, before.2, "outputs produced while state could not be saved");
        assert_eq!(after.3, before.3, "offsets committed while state could not be saved");
        break;
    }
    assert!(distinct(&scores) < inputs.len(), "every input answered although the state could not be saved");

    // Space again: the retry writes the snapshot, the worker is healthy and finishes.
    filler.free();
    health_becomes(&addr, 200, Duration::from_secs(60), &worker);
    wait_scores(&mut scores, inputs.len(), "after the disk was freed", &worker);
    scores.read_for(Duration::from_secs(2));
    let (status, log) = worker.terminate(Duration::from_secs(60));
    assert!(status.success(), "worker exit {status}:\n{log}");
    assert!(log.contains("state cannot be saved") && log.contains("state saved again"), "{log}");

    assert_exactly_once(&by_source(&scores.seen), &inputs);
    assert_scores(&scores_of(&scores.seen), &reference(&config, &inputs), "the uninterrupted run");
}
