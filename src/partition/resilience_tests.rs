//! The processor behind circuit breakers: what a sensor whose detector fails gets, what the
//! others get, what survives a snapshot, and the per-sensor alert cooldown.

use prost::Message;

use super::*;
use crate::config::Config;
use crate::proto::{AnomalyAlert, DeadLetter, ScoredReading, SensorReading};

/// A processor with KNN as the main detector (its squared distances overflow on 1e200) and
/// the `--set` overrides `sets`.
fn processor(sets: &[&str]) -> Processor {
    let mut all = vec!["model_type=\"knn\"".to_string(), "resilience.error_window=4".into(), "resilience.error_threshold=0.5".into()];
    all.extend(sets.iter().map(|s| s.to_string()));
    let c = Config::load_from(None, &[], &all).expect("test config");
    Processor::new("in".into(), 0, Arc::new(ProcessorConfig::new(&c, true)), Models::default())
}

fn reading(id: &str, ts: i64, v: f64) -> Vec<u8> {
    SensorReading {
        sensor_id: id.into(),
        timestamp_ms: ts,
        values: [("a".to_string(), v), ("b".to_string(), v * 0.5)].into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Process sensor `id`'s reading `v` at `ts` (offset = ts); its outputs.
fn run(p: &mut Processor, id: &str, ts: i64, v: f64) -> (Outcome, Vec<OutRecord>) {
    let mut out = Vec::new();
    let value = reading(id, ts, v);
    let o = p.process(InputRecord { key: Some(id.as_bytes()), value: Some(&value), offset: ts }, 0, &mut out);
    (o, out)
}

fn scored(out: &[OutRecord]) -> ScoredReading {
    let r = out.iter().find(|r| r.dest == Dest::Scores).expect("a ScoredReading");
    ScoredReading::decode(&r.payload[..]).expect("decodes")
}

/// 120 healthy readings of `id`, 0.5 s apart from `t0` (ms): enough to calibrate.
fn healthy(p: &mut Processor, id: &str, t0: i64) {
    for i in 0..120 {
        let (_, out) = run(p, id, t0 + i * 500, 10.0 + (i % 7) as f64 * 0.1);
        assert!(!scored(&out).degraded, "healthy reading {i} of {id} degraded");
    }
}

#[test]
fn a_failing_detector_degrades_its_sensor_only_until_a_healthy_trial_closes_the_breaker() {
    let mut p = processor(&["resilience.open_timeout=\"10s\""]);
    healthy(&mut p, "bad", 0);
    healthy(&mut p, "good", 0);
    // 1e200 is finite (validation accepts it) but KNN's squared distances overflow.
    let (o, out) = run(&mut p, "bad", 60_000, 1e200);
    assert!(matches!(o, Outcome::Scored { .. }), "a failed reading is still scored, by the fallback");
    let s = scored(&out);
    assert!(s.degraded && s.detector == "zscore", "{s:?}");
    assert!(s.degraded_reason.contains("`knn` gave a non-finite raw score (inf)"), "{}", s.degraded_reason);
    assert_eq!(p.breakers_open(), 0, "1 failure of 4 is not above 50%");
    run(&mut p, "bad", 61_000, 1e200);
    let (_, out) = run(&mut p, "bad", 62_000, 1e200);
    assert!(scored(&out).degraded_reason.contains("circuit breaker opened"), "{}", scored(&out).degraded_reason);
    assert_eq!(p.breakers_open(), 1);
    // Open: even healthy readings of the sensor are degraded until 10 s of event time passed.
    let (_, out) = run(&mut p, "bad", 63_000, 10.0);
    assert!(scored(&out).degraded_reason.starts_with("circuit breaker of `knn` open (3 of the last 4 readings failed)"));
    // Other sensors of the partition are unaffected.
    let (_, out) = run(&mut p, "good", 63_000, 10.0);
    assert!(!scored(&out).degraded && scored(&out).detector == "knn");
    // The trial: a healthy reading 10 s after the opening one closes the breaker.
    let (_, out) = run(&mut p, "bad", 72_000, 10.2);
    let s = scored(&out);
    assert!(!s.degraded && s.detector == "knn" && s.degraded_reason.is_empty(), "{s:?}");
    assert_eq!(p.breakers_open(), 0);
    assert_eq!(p.degraded(), 4, "three failed readings and one while open");
    assert_eq!(p.models().keys["bad"].processed, 125, "degraded readings count as processed");
}

#[test]
fn an_open_breaker_is_half_open_once_the_partitions_event_time_passes_its_timeout() {
    let mut p = processor(&["resilience.open_timeout=\"10s\""]);
    healthy(&mut p, "bad", 0);
    healthy(&mut p, "good", 0);
    for t in [60_000, 61_000, 62_000] {
        run(&mut p, "bad", t, 1e200);
    }
    assert_eq!((p.breakers_open(), p.breakers_half_open()), (1, 0), "open since 62 s");
    run(&mut p, "good", 71_999, 10.0);
    assert_eq!(p.breakers_half_open(), 0, "1 ms short of the 10 s timeout");
    // `bad` is quiet; the partition's clock (another sensor's reading) passes its timeout.
    run(&mut p, "good", 72_000, 10.0);
    assert_eq!((p.breakers_open(), p.breakers_half_open()), (1, 1), "half-open: still open, trial due");
    let (_, out) = run(&mut p, "bad", 72_500, 1e200);
    assert!(scored(&out).degraded_reason.starts_with("trial reading failed"), "{}", scored(&out).degraded_reason);
    assert_eq!((p.breakers_open(), p.breakers_half_open()), (1, 0), "a failed trial opens it again from 72.5 s");
    let (_, out) = run(&mut p, "bad", 82_500, 10.0);
    assert!(!scored(&out).degraded, "a healthy trial closes it");
    assert_eq!((p.breakers_open(), p.breakers_half_open()), (0, 0));
}

#[test]
fn a_restored_open_breaker_turns_half_open_on_the_restored_partitions_clock() {
    let mut p = processor(&["resilience.open_timeout=\"10s\""]);
    healthy(&mut p, "bad", 0);
    healthy(&mut p, "good", 0);
    for t in [60_000, 61_000, 62_000] {
        run(&mut p, "bad", t, 1e200);
    }
    let snapshot: Models = postcard::from_bytes(&postcard::to_allocvec(p.models()).expect("encodes")).expect("decodes");
    let mut q = Processor::new("in".into(), 0, p.config.clone(), snapshot);
    assert_eq!((q.breakers_open(), q.breakers_half_open()), (1, 0), "no reading yet: no clock");
    run(&mut q, "good", 73_000, 10.0);
    assert_eq!(q.breakers_half_open(), 1, "opened at 62 s (from the snapshot), clock at 73 s");
}

#[test]
fn a_failed_trial_keeps_the_breaker_open() {
    let mut p = processor(&["resilience.open_timeout=\"10s\""]);
    healthy(&mut p, "bad", 0);
    for t in [60_000, 61_000, 62_000] {
        run(&mut p, "bad", t, 1e200);
    }
    let (_, out) = run(&mut p, "bad", 72_000, 1e200);
    assert!(scored(&out).degraded_reason.starts_with("trial reading failed"), "{}", scored(&out).degraded_reason);
    assert_eq!(p.breakers_open(), 1);
    let (_, out) = run(&mut p, "bad", 75_000, 10.0);
    assert!(scored(&out).degraded, "open again for 10 s from the failed trial");
}

#[test]
fn anomalies_scored_by_the_fallback_raise_degraded_alerts() {
    let mut p = processor(&[]);
    healthy(&mut p, "bad", 0);
    let (o, out) = run(&mut p, "bad", 60_000, 1e200);
    assert_eq!(o, Outcome::Scored { anomaly: true });
    let alert = out.iter().find(|r| r.dest == Dest::Alerts).expect("the fallback flags 1e200 as an anomaly");
    let a = AnomalyAlert::decode(&alert.payload[..]).expect("decodes");
    assert!(a.degraded && a.detector == "zscore", "{a:?}");
}

#[test]
fn without_a_fallback_a_failed_reading_is_a_processing_dead_letter_with_the_reason() {
    let mut p = processor(&["resilience.fallback=\"none\"", "resilience.open_timeout=\"10s\""]);
    healthy(&mut p, "bad", 0);
    let (o, out) = run(&mut p, "bad", 60_000, 1e200);
    assert_eq!(o, Outcome::DeadLetter(ErrorKind::Processing));
    let d = DeadLetter::decode(&out[0].payload[..]).expect("decodes");
    assert!(d.error_message.contains("non-finite raw score") && d.error_message.contains("no fallback"), "{}", d.error_message);
    assert_eq!(d.original_value, reading("bad", 60_000, 1e200), "the dead letter keeps the reading");
    run(&mut p, "bad", 61_000, 1e200);
    run(&mut p, "bad", 62_000, 1e200);
    let (o, out) = run(&mut p, "bad", 63_000, 10.0);
    assert_eq!(o, Outcome::DeadLetter(ErrorKind::Processing), "open without a fallback: dead letters");
    assert!(DeadLetter::decode(&out[0].payload[..]).expect("decodes").error_message.contains("circuit breaker of `knn` open"));
    assert!(p.models().keys["bad"].guard.fallback.is_none(), "no fallback state is kept");
}

#[test]
fn a_snapshot_with_an_open_breaker_continues_bit_identically() {
    let mut p = processor(&["resilience.open_timeout=\"10s\""]);
    healthy(&mut p, "bad", 0);
    healthy(&mut p, "good", 0);
    for t in [60_000, 61_000, 62_000] {
        run(&mut p, "bad", t, 1e200);
    }
    assert_eq!(p.breakers_open(), 1);
    let bytes = postcard::to_allocvec(p.models()).expect("encodes");
    let models: Models = postcard::from_bytes(&bytes).expect("decodes");
    let mut q = Processor::new("in".into(), 0, p.config.clone(), models);
    assert_eq!(q.breakers_open(), 1, "the restored processor counts the open breaker");
    // The same continuation: open, a trial, closed again, with the other sensor alongside.
    for (i, t) in (63_000..80_000).step_by(500).enumerate() {
        let v = if i == 3 { 1e200 } else { 10.0 + (i % 5) as f64 * 0.1 };
        for id in ["bad", "good"] {
            let (a, b) = (run(&mut p, id, t, v), run(&mut q, id, t, v));
            assert_eq!(a, b, "{id} at {t}: restored outputs differ");
        }
    }
    assert_eq!(p.breakers_open(), 0, "the continuation closed the breaker");
    assert_eq!(postcard::to_allocvec(q.models()).expect("encodes"), postcard::to_allocvec(p.models()).expect("encodes"));
}

#[test]
fn an_alert_cooldown_keeps_one_alert_per_sensor_per_cooldown_in_event_time() {
    let mut p = processor(&["model_type=\"zscore\"", "alerts.cooldown=\"5m\""]);
    healthy(&mut p, "s1", 0);
    healthy(&mut p, "s2", 0);
    let alerts = |out: &[OutRecord]| out.iter().filter(|r| r.dest == Dest::Alerts).count();
    let (o, out) = run(&mut p, "s1", 100_000, 1e6);
    assert_eq!((o, alerts(&out)), (Outcome::Scored { anomaly: true }, 1), "the first anomaly alerts");
    let (o, out) = run(&mut p, "s1", 101_000, 1e9);
    assert_eq!(o, Outcome::Scored { anomaly: false }, "within 5 min of the alert: no alert");
    assert_eq!(alerts(&out), 0);
    assert!(scored(&out).is_anomaly, "the suppressed alert's reading is still scored as an anomaly");
    let (_, out) = run(&mut p, "s2", 101_000, 1e6);
    assert_eq!(alerts(&out), 1, "the cooldown is per sensor");
    let (_, out) = run(&mut p, "s1", 400_000, 1e12);
    assert_eq!(alerts(&out), 1, "5 min after the last alert, alerts again");
}
