//! Faults around the worker, through the real binary: a worker frozen past its session timeout
//! while another replica took its partitions (a zombie) writes nothing on waking; a broker
//! that stops answering for a while costs no record; a delivery that fails for good makes the
//! worker exit non-zero within its configured bound, and the restart loses nothing.
//!
//! Outages pause (SIGSTOP) a private Tansu started by the test ([`PrivateBroker`]); the shared
//! development broker is never paused.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const WAIT: Duration = Duration::from_secs(90);

fn wait_for(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Partitions a child worker owns now, by its log (assigned minus released).
fn owned(w: &ChildWorker) -> usize {
    let log = w.log();
    log.matches("partition assigned").count().saturating_sub(log.matches("partition released").count())
}

/// Steps `from..to` of 8 sensors on 4 partitions.
fn wave(from: usize, to: usize) -> Vec<In> {
    Fleet { prefix: "s", sensors: 8, partitions: 4, values: |j, i| vec![("temp", 20.0 + ((j * 7 + i * 3) % 11) as f64 * 0.01)] }
        .readings(from, to)
}

/// Readings sent steadily (one step of the fleet every 100 ms) until stopped.
struct Stream {
    /// Tells the sender to stop.
    stop: tokio::sync::oneshot::Sender<()>,
    /// The sender: every reading sent, by (partition, offset).
    task: tokio::task::JoinHandle<BTreeMap<(i32, i64), In>>,
}

impl Stream {
    fn start(config: &onad_stream::config::Config, from: usize) -> Self {
        let (stop, mut rx) = tokio::sync::oneshot::channel();
        let config = config.clone();
        let task = tokio::spawn(async move {
            let mut sent = BTreeMap::new();
            for j in from.. {
                send(&config, &mut sent, wave(j, j + 1)).await;
                tokio::select! {
                    _ = &mut rx => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            sent
        });
        Self { stop, task }
    }

    async fn stop(self) -> BTreeMap<(i32, i64), In> {
        let _ = self.stop.send(());
        self.task.await.expect("stream task")
    }
}

/// The burst of the zombie test ends before this step (8 readings a step).
const BURST_END: usize = 12_525;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_session_writes_nothing_when_it_wakes() {
    let mut s = Scenario::new("zombie", 4).await;
    let a = ChildWorker::start(&s.name, 4, "");
    let b = ChildWorker::start(&s.name, 4, "");
    tokio::task::block_in_place(|| {
        wait_for(WAIT, "workers A and B to split the 4 partitions", || {
            let (na, nb) = (owned(&a), owned(&b));
            na > 0 && nb > 0 && na + nb == 4
        })
    });
    s.send_and_score(wave(0, 25), "scores of the first wave").await;

    // A readings stream goes on from here: A freezes with fetches of its partitions under way.
    // A burst, and A freezes while answering it: with records fetched ahead (librdkafka
    // prefetches) and not yet answered, the case that wrote duplicates on waking.
    let burst = {
        let config = s.config.clone();
        tokio::spawn(async move {
            let mut sent = BTreeMap::new();
            send(&config, &mut sent, wave(25, BURST_END)).await;
            sent
        })
    };
    let first_of_burst = (wave(0, 25).len() / 4) as i64;
    tokio::task::block_in_place(|| {
        s.scores.until(WAIT, "the first scores of the burst", |seen| seen.iter().any(|o| o.source_offset >= Some(first_of_burst)))
    });
    // Outputs created before this instant were handed to librdkafka before the freeze.
    let stopped_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    a.signal("-STOP");
    s.inputs.extend(burst.await.expect("burst sender"));
    // Then a steady stream, whose records A's fetches of its lost partitions also return.
    let stream = Stream::start(&s.config, BURST_END);
    let frozen = Instant::now();
    tokio::task::block_in_place(|| wait_for(WAIT, "worker B to own all 4 partitions while A is frozen", || owned(&b) == 4));
    let session = Duration::from_millis(SESSION_TIMEOUT_MS);
    assert!(frozen.elapsed() > session, "B took over before A's session could time out");
    // As the report: 15 s, well past the session timeout.
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(frozen.elapsed())).await;

    // A wakes with fetch responses of its old partitions arriving and records in its queues:
    // it must write none of them, and learn that its partitions are lost.
    let revokes = a.log().matches("partitions revoked").count();
    a.signal("-CONT");
    tokio::task::block_in_place(|| {
        wait_for(WAIT, "A to learn that its partitions were lost", || a.log().matches("partitions revoked").count() > revokes)
    });
    // A's partition threads see the freeze when they come back (one may have been frozen in a
    // transaction commit, which returns once librdkafka's wait for it times out).
    tokio::task::block_in_place(|| {
        wait_for(WAIT, "A to see that it had been frozen", || a.log().contains("stalled past the session timeout"))
    });
    // Readings go on for a while after A woke (its fetches of the lost partitions answer).
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.inputs.extend(stream.stop().await);
    let want: std::collections::BTreeSet<(i32, i64)> = s.inputs.keys().copied().collect();
    tokio::task::block_in_place(|| {
        // By source: repeats must not count for readings not answered yet.
        s.scores.until(WAIT, "a score for every reading of the stream", |seen| {
            let got = by_source(seen);
            want.iter().all(|k| got.contains_key(k))
        });
        s.scores.read_for(Duration::from_secs(3));
    });
    let log = strip_ansi(&a.log());
    assert!(log.contains("lost=true"), "A's revoke was not a lost assignment:\n{log}");
    // Nothing A produced reached the scores topic after B took over. Outputs A had handed to
    // librdkafka before the freeze time out instead of being sent when A wakes, and A takes
    // nothing more; a produce request librdkafka had built before the freeze is written on
    // waking, before librdkafka checks its age, but B's `init_transactions` for the partition
    // (`kafka.transactional_outputs`, on by default) bumped the transactional id's epoch and
    // the broker refuses that request (README, "Zombies").
    let counts = by_source(&s.scores.seen);
    let created_before_freeze: std::collections::BTreeSet<(i32, i64)> = s
        .scores
        .seen
        .iter()
        .filter(|o| o.created_ms.is_some_and(|t| t <= stopped_ms))
        .filter_map(|o| Some((o.source_partition?, o.source_offset?)))
        .collect();
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(k, _)| *k).collect();
    let missing = s.inputs.keys().filter(|k| !counts.contains_key(k)).count();
    let late = repeated.iter().filter(|k| created_before_freeze.contains(k)).count();
    // How often the broker refused A's producer after B's init: the transactional fence at work
    // (0 when A had nothing in flight on waking, or sent it before B took over).
    let refused = log.matches("output transaction failed").count();
    eprintln!(
        "zombie freeze: {} readings, {} repeated outputs ({late} created before the freeze, source offsets {:?}..={:?}), {missing} without an output; A's transactions refused after the takeover: {refused}",
        s.inputs.len(),
        repeated.len(),
        repeated.first(),
        repeated.last(),
    );
    let events = |w: &ChildWorker| {
        let wanted = ["undelivered", "started over", "replaced", "stalled", "revoked", "assigned", "REQTMOUT", "restored", "transaction"];
        strip_ansi(&w.log()).lines().filter(|l| wanted.iter().any(|x| l.contains(x))).collect::<Vec<_>>().join("\n")
    };
    assert!(
        repeated.is_empty(),
        "outputs written twice ({} of them, {late} created before the freeze), first ones: {:?}\nA:\n{}\nB:\n{}",
        repeated.len(),
        repeated.iter().take(10).collect::<Vec<_>>(),
        events(&a),
        events(&b)
    );
    // Nothing lost: every reading answered, and nothing answered that was never sent.
    assert_eq!(missing, 0, "readings without an output");
    assert!(counts.keys().all(|k| s.inputs.contains_key(k)), "outputs for offsets that were never produced");
    drop((a, b));
}

/// Assert that the outputs of each partition were written in source-offset order.
fn assert_in_order(outs: &[Out]) {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for o in outs {
        let offset = o.source_offset.expect("source offset header");
        if let Some(prev) = last.insert(o.partition, offset) {
            assert!(offset > prev, "partition {}: output for offset {offset} written after the one for {prev}", o.partition);
        }
    }
}

/// A worker on `broker`, on the topics named after `name`, with `toml` as its config file.
fn worker_on(broker: &PrivateBroker, name: &str, toml: &str, state: &std::path::Path) -> ChildWorker {
    ChildWorker::start_with_sets(name, 4, toml, state, &[format!("kafka.bootstrap=\"{}\"", broker.bootstrap())])
}

/// A worker on a broker of its own (so that the test may pause it), with its first wave of
/// readings scored: the set-up of the outage tests.
struct Outage {
    broker: PrivateBroker,
    name: String,
    config: onad_stream::config::Config,
    state: tempfile::TempDir,
    scores: Collector,
    w: ChildWorker,
    inputs: BTreeMap<(i32, i64), In>,
}

impl Outage {
    /// Topics named after `prefix`, a worker with `toml` as its config file, the first wave
    /// sent and scored.
    async fn start(prefix: &str, toml: &str) -> Self {
        let broker = PrivateBroker::start();
        let name = unique(prefix);
        let config = config_on(broker.bootstrap(), &name, 4, &[]);
        create_topics(&config).await;
        let state = tempfile::tempdir().expect("state dir");
        let mut scores = Collector::on(broker.bootstrap(), &config.kafka.scores_topic, 4);
        let w = worker_on(&broker, &name, toml, state.path());
        let mut inputs = BTreeMap::new();
        send(&config, &mut inputs, wave(0, 25)).await;
        let n = inputs.len();
        tokio::task::block_in_place(|| scores.until(WAIT, "scores of the first wave", |s| s.len() >= n));
        Self { broker, name, config, state, scores, w, inputs }
    }

    /// Send the second wave and wait until the worker has taken all of it (by its
    /// `/metrics` at `metrics`; not a fixed sleep: the partition threads first publish their
    /// first snapshot to the changelog, which may linger too).
    async fn second_wave_taken(&mut self, metrics: &str) {
        send(&self.config, &mut self.inputs, wave(25, 50)).await;
        let n = self.inputs.len() as u64;
        tokio::task::block_in_place(|| {
            wait_for(WAIT, "the worker to take the second wave", || metric(metrics, "onad_records_consumed_total").is_some_and(|c| c >= n))
        });
    }
}

/// Outputs linger 2 s in the producer (so that some are in flight when the broker stops). They
/// time out after three quarters of the session timeout (4.5 s, zombie fencing); the partition then starts
/// over once the broker answers again (`kafka.delivery_retry_ms`, 300 s by default): a 30 s
/// outage is a retriable error.
const RETRYING: &str = "[kafka.settings]\n\"linger.ms\" = \"2000\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_paused_for_30_s_costs_no_reading_and_keeps_the_order() {
    let log = outage("outage", RETRYING, Duration::from_secs(30)).await;
    assert!(!log.contains("worker stopping on a fatal error"), "an outage shorter than kafka.delivery_retry_ms was fatal:\n{log}");
}

/// The same with the default settings: a transactional producer sends each round as soon as
/// its partition commits or takes the next one (`OutputProducer::send_now`), so what the
/// pause catches is in flight, not lingering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_paused_for_10_s_under_the_default_settings_costs_no_reading_and_keeps_the_order() {
    let log = outage("outagedef", "", Duration::from_secs(10)).await;
    assert!(!log.contains("worker stopping on a fatal error"), "an outage shorter than kafka.delivery_retry_ms was fatal:\n{log}");
}

/// Outputs linger 1 s and time out 1.5 s after they were produced: a broker paused for 3.5 s
/// (less than the 6 s session timeout, so the worker keeps its partitions) fails them.
const SHORT_TIMEOUT: &str = "[kafka.settings]\n\"linger.ms\" = \"1000\"\n\"message.timeout.ms\" = \"1500\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_timed_out_in_a_short_outage_are_answered_again_by_a_partition_that_starts_over() {
    let metrics = free_addr();
    let mut o = Outage::start("timedout", &format!("{SHORT_TIMEOUT}[telemetry]\nmetrics_addr = \"{metrics}\"\n")).await;
    // The second wave is taken and its outputs linger (1 s) when the broker stops: they time
    // out during the pause, and the worker keeps its partitions (the pause is shorter than
    // the session timeout).
    o.second_wave_taken(&metrics).await;
    let Outage { broker, config, mut scores, mut w, mut inputs, .. } = o;
    broker.pause();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(w.exited().is_none(), "the worker exited while the broker was unreachable:\n{}", w.log());
    broker.resume();
    send(&config, &mut inputs, wave(50, 75)).await;
    let n = inputs.len();
    tokio::task::block_in_place(|| {
        scores.until(WAIT, "a score for every reading sent before, during and after the outage", |s| s.len() >= n);
        scores.read_for(Duration::from_secs(3));
    });
    assert_exactly_once(&by_source(&scores.seen), &inputs);
    assert_in_order(&scores.seen);
    // The operator sees it: the outputs that timed out failed their transaction.
    let failed = metric(&metrics, "onad_output_transactions_failed_total");
    let committed = metric(&metrics, "onad_output_transactions_committed_total");
    let log = strip_ansi(&tokio::task::block_in_place(|| w.stop()));
    assert!(failed.is_some_and(|f| f >= 1), "no failed output transaction on /metrics ({failed:?}):\n{log}");
    assert!(committed.is_some_and(|c| c >= 1), "no committed output transaction on /metrics ({committed:?})");
    assert!(!log.contains("worker stopping on a fatal error"), "an outage shorter than kafka.delivery_retry_ms was fatal:\n{log}");
    assert!(
        log.contains("partition started over after undelivered outputs"),
        "no partition started over after its outputs timed out (the outage should have failed them):\n{log}"
    );
    assert!(!log.contains("lost=true"), "the worker lost its partitions in a 3.5 s outage:\n{log}");
}

/// A worker answering a steady stream while its private broker is paused for `pause`, with
/// `toml` as its config: every reading is scored exactly once and in order. Returns its log.
async fn outage(prefix: &str, toml: &str, pause: Duration) -> String {
    let Outage { broker, config, mut scores, mut w, mut inputs, .. } = Outage::start(prefix, toml).await;

    // Readings keep coming (the test's producer retries through the outage, as any client
    // would): some are in the worker's hands, their outputs in flight, when the broker stops.
    let stream = Stream::start(&config, 25);
    let first_of_stream = (wave(0, 25).len() / 4) as i64;
    // Scores of the stream arrive a linger after their readings were taken: from then on
    // the worker usually holds unsent outputs (when its fetches keep up with the stream).
    tokio::task::block_in_place(|| {
        scores.until(WAIT, "the first scores of the stream", |s| s.iter().any(|o| o.source_offset >= Some(first_of_stream)))
    });
    broker.pause();
    tokio::time::sleep(pause).await;
    assert!(w.exited().is_none(), "the worker exited while the broker was unreachable:\n{}", w.log());
    broker.resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    inputs.extend(stream.stop().await);
    let n = inputs.len();
    tokio::task::block_in_place(|| {
        scores.until(WAIT, "a score for every reading sent before, during and after the outage", |s| s.len() >= n);
        scores.read_for(Duration::from_secs(3));
    });
    assert_exactly_once(&by_source(&scores.seen), &inputs);
    assert_in_order(&scores.seen);
    strip_ansi(&tokio::task::block_in_place(|| w.stop()))
}

/// Outputs linger 2 s in the producer before being sent, time out 3 s after they were
/// produced (well before the worker could lose its session), and are not retried
/// (`delivery_retry_ms = 0`): a broker paused in between fails them for good.
const LINGERING: &str =
    "[kafka]\nfatal_exit_after_ms = 3000\ndelivery_retry_ms = 0\n[kafka.settings]\n\"linger.ms\" = \"2000\"\n\"message.timeout.ms\" = \"3000\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_failed_for_good_exits_non_zero_in_bounded_time_and_the_restart_loses_nothing() {
    let metrics = free_addr();
    let mut o = Outage::start("fatal", &format!("{LINGERING}[telemetry]\nmetrics_addr = \"{metrics}\"\n")).await;
    // The second wave is read and scored, its outputs wait in the producer (linger 2 s), and
    // the broker stops before they are sent.
    o.second_wave_taken(&metrics).await;
    let Outage { broker, name, state, mut scores, mut w, inputs, .. } = o;
    broker.pause();
    let paused = Instant::now();
    let (status, log) = tokio::task::block_in_place(|| w.wait_exit(Duration::from_secs(60), "the broker pause"));
    let took = paused.elapsed();
    eprintln!("worker exited {took:?} after the broker paused ({status})");
    let log = strip_ansi(&log);
    assert!(!status.success(), "the worker exited 0 after its outputs failed for good:\n{log}");
    // Transactional outputs (the default) name the output partition whose outputs timed out.
    assert!(
        log.contains("Message timed out") || log.contains("message(s) timed out on"),
        "the exit does not say which delivery failed:\n{log}"
    );
    // Outputs time out at most 3 s after the pause; then at most fatal_exit_after_ms (3 s).
    assert!(took < Duration::from_secs(25), "the worker took {took:?} to exit after a fatal delivery error:\n{log}");

    broker.resume();
    let restarted = worker_on(&broker, &name, "", state.path());
    let n = inputs.len();
    tokio::task::block_in_place(|| {
        scores.until(WAIT, "a score for every reading after the restart", |s| s.len() >= n);
        scores.read_for(Duration::from_secs(3));
    });
    assert_exactly_once(&by_source(&scores.seen), &inputs);
    tokio::task::block_in_place(|| restarted.stop());
}

/// Kill -9 a worker, restart it at once on the same state, and time the restart to its first
/// output; `sets` are extra `--set` overrides of both runs.
async fn restart_to_first_output(prefix: &str, sets: &[String]) -> Duration {
    let mut s = Scenario::new(prefix, 4).await;
    let start = |s: &Scenario| ChildWorker::start_with_sets(&s.name, 4, "", s.state.path(), sets);
    let w = start(&s);
    tokio::task::block_in_place(|| wait_for(WAIT, "the worker to own the 4 partitions", || owned(&w) == 4));
    s.send_and_score(wave(0, 25), "scores of the first wave").await;
    w.crash();
    let before = s.inputs.len();
    send(&s.config, &mut s.inputs, wave(25, 50)).await;
    let restarted = Instant::now();
    let w = start(&s);
    let first_new = (wave(0, 25).len() / 4) as i64;
    tokio::task::block_in_place(|| {
        s.scores.until(WAIT, "a first score after the restart", |seen| seen.iter().any(|o| o.source_offset >= Some(first_new)))
    });
    let took = restarted.elapsed();
    let n = s.inputs.len();
    assert!(n > before, "the second wave was not sent");
    tokio::task::block_in_place(|| {
        s.scores.until(WAIT, "a score for every reading after the restart", |seen| seen.len() >= n);
        s.scores.read_for(Duration::from_secs(2));
    });
    assert_exactly_once(&by_source(&s.scores.seen), &s.inputs);
    tokio::task::block_in_place(|| w.stop());
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_and_restarted_with_or_without_an_instance_id_loses_nothing() {
    let dynamic = restart_to_first_output("restart-dynamic", &[]).await;
    let id = unique("replica");
    let fixed = restart_to_first_output("restart-static", &[format!("kafka.instance_id=\"{id}\"")]).await;
    // The numbers README quotes (static membership, Fast restarts).
    eprintln!("restart to first output after kill -9: dynamic member {dynamic:.1?}, static member {fixed:.1?}");
}
