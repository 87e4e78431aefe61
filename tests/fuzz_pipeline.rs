//! Fuzzing decode -> validate -> rate limit -> pipeline: seeded random inputs — arbitrary
//! bytes, mutated encodings, Confluent-framed and JSON records, and structurally valid
//! readings with extreme content (huge, NaN, infinite, denormal and signed-zero values, 0 and
//! max+1 features, Unicode, empty and over-long ids, extreme timestamps, wrong keys) — through
//! the worker's own `Processor` with every detector. Each input must end as exactly one score
//! or exactly one dead letter, and nothing may panic (a detector panic the processor catches
//! counts as a failure too: it is a `PROCESSING` dead letter of a valid reading).
//!
//! The suite runs a short version; `scripts/fuzz` runs >= 1,000,000 inputs
//! (`ONAD_FUZZ_INPUTS`, seed `ONAD_FUZZ_SEED`) and prints inputs/s.

use std::sync::Arc;
use std::time::Instant;

use onad_stream::config::Config;
use onad_stream::partition::decode::InputFormat;
use onad_stream::partition::{Dest, InputRecord, Models, Outcome, Processor, ProcessorConfig};
use onad_stream::proto::{ErrorKind, SensorReading};
use prost::Message as _;
use rand::{Rng, RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// Inputs of the suite's short run.
const SHORT_RUN: u64 = 12_000;
/// The worker's clock as the fuzzed processors see it.
const NOW_MS: i64 = 1_700_000_000_000;
/// Detectors (and one with transforms) the inputs are spread over.
const MODELS: &[&[&str]] = &[
    &["model_type=\"zscore\""],
    &["model_type=\"isolation_forest\""],
    &["model_type=\"half_space_trees\""],
    &["model_type=\"rshash\""],
    &["model_type=\"knn\"", "model_params.window_size=64"],
    &["model_type=\"adaptive_svm\""],
    &["model_type=\"mahalanobis\"", "model_params.window_size=64"],
    &["model_type=\"moving_average\""],
    &["model_type=\"moving_median\""],
    &["model_type=\"holt_winters\""],
    &["model_type=\"arima\""],
    &["model_type=\"mad\""],
    &["model_type=\"zscore\"", "preprocessing_steps=[{type=\"scaler\"}, {type=\"pca\", params={n_components=1}}]"],
];

/// Values that break naive arithmetic.
const EXTREMES: &[f64] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    f64::MAX,
    -f64::MAX,
    f64::MIN_POSITIVE,
    5e-324,
    -5e-324,
    1e308,
    1e-308,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    1e15,
    -1e15,
];

fn value(rng: &mut Pcg64Mcg) -> f64 {
    match rng.random_range(0..4) {
        0 => EXTREMES[rng.random_range(0..EXTREMES.len())],
        1 => f64::from_bits(rng.next_u64()),
        _ => rng.random_range(-10.0..10.0),
    }
}

fn id(rng: &mut Pcg64Mcg) -> String {
    match rng.random_range(0..10) {
        0 => String::new(),
        1 => "é".repeat(rng.random_range(1..200)),
        2 => (0..rng.random_range(1..4)).map(|_| char::from_u32(rng.random_range(0..0x11000)).unwrap_or('x')).collect(),
        3 => "s".repeat(if rng.random_bool(0.5) { 256 } else { 257 }),
        _ => format!("sensor-{}", rng.random_range(0..40)),
    }
}

fn reading(rng: &mut Pcg64Mcg) -> SensorReading {
    let sensor_id = id(rng);
    // Mostly a stable feature set per sensor, so pipelines learn and then meet extremes.
    let n = match rng.random_range(0..20) {
        0 => 0,
        1 => 1024,
        2 => 1025,
        _ => 1 + sensor_id.len() % 4,
    };
    let mut values = std::collections::BTreeMap::new();
    for i in 0..n {
        let name = if rng.random_range(0..50) == 0 { id(rng) } else { format!("f{i}") };
        values.insert(name, value(rng));
    }
    let timestamp_ms = match rng.random_range(0..8) {
        0 => i64::MIN,
        1 => i64::MAX,
        2 => 0,
        3 => rng.random(),
        _ => NOW_MS + rng.random_range(-1_000_000..1_000_000),
    };
    let source = format!("src-{}", rng.random_range(0..3));
    SensorReading { sensor_id, timestamp_ms, values: values.into_iter().collect(), source, ..Default::default() }
}

/// One fuzz input: key and value bytes.
fn input(rng: &mut Pcg64Mcg) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let r = reading(rng);
    let key = match rng.random_range(0..12) {
        0 => None,
        1 => Some(b"other".to_vec()),
        _ => Some(r.sensor_id.clone().into_bytes()),
    };
    let value = match rng.random_range(0..10) {
        0 => None,
        1 => {
            let longest = if rng.random_bool(0.1) { 4096 } else { 48 };
            let mut b = vec![0u8; rng.random_range(0..longest)];
            rng.fill_bytes(&mut b);
            Some(b)
        }
        2 => {
            // A valid encoding, mutated: bit flips and a truncation.
            let mut b = r.encode_to_vec();
            for _ in 0..rng.random_range(1..4) {
                if !b.is_empty() {
                    let i = rng.random_range(0..b.len());
                    b[i] ^= 1 << rng.random_range(0..8);
                }
            }
            b.truncate(rng.random_range(0..=b.len()));
            Some(b)
        }
        3 => {
            let mut b = vec![0, 0, 0, 0, rng.random(), if rng.random_bool(0.8) { 0 } else { rng.random() }];
            b.extend(r.encode_to_vec());
            Some(b)
        }
        4 => {
            let values: Vec<String> = r
                .values
                .iter()
                .map(|(k, v)| format!("{:?}:{}", k, if v.is_finite() { v.to_string() } else { format!("\"{v}\"") }))
                .collect();
            let j = format!(r#"{{"sensorId":{:?},"timestampMs":"{}","values":{{{}}}}}"#, r.sensor_id, r.timestamp_ms, values.join(","));
            let mut j = j.into_bytes();
            if rng.random_bool(0.1) {
                j.truncate(rng.random_range(0..=j.len()));
            }
            Some(j)
        }
        _ => Some(r.encode_to_vec()),
    };
    (key, value)
}

/// Run `inputs` fuzz inputs from `seed`; returns (scored, dead letters, inputs/s).
fn fuzz(inputs: u64, seed: u64) -> (u64, u64, f64) {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut processors: Vec<Processor> = MODELS
        .iter()
        .map(|sets| {
            let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            sets.extend(
                [
                    "validation.allow_unicode=true",
                    "validation.max_future_ms=3600000",
                    "validation.rate_limit.per_minute=600000",
                    "validation.rate_limit.burst=50",
                    "validation.rate_limit.max_sources=2",
                ]
                .map(String::from),
            );
            let c = Config::load_from(None, &[], &sets).unwrap_or_else(|e| panic!("fuzz config {sets:?}: {e}"));
            let pc = ProcessorConfig { input_format: InputFormat::Auto, ..ProcessorConfig::new(&c, true) };
            Processor::new("fuzz".into(), 0, Arc::new(pc), Models::default())
        })
        .collect();
    let (mut scored, mut dead) = (0u64, 0u64);
    let mut out = Vec::new();
    let started = Instant::now();
    for offset in 0..inputs as i64 {
        let (key, value) = input(&mut rng);
        let p = &mut processors[offset as usize % MODELS.len()];
        out.clear();
        let rec = InputRecord { key: key.as_deref(), value: value.as_deref(), offset };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.process(rec, NOW_MS, &mut out)))
            .unwrap_or_else(|_| panic!("panic on input {offset} (seed {seed}): key {key:?}, value {value:?}"));
        let scores = out.iter().filter(|r| r.dest == Dest::Scores).count();
        let letters = out.iter().filter(|r| r.dest == Dest::DeadLetters).count();
        match outcome {
            Outcome::Scored { .. } => {
                assert_eq!((scores, letters), (1, 0), "input {offset} (seed {seed}) scored without exactly one score");
                scored += 1;
            }
            Outcome::DeadLetter(kind) => {
                assert_eq!((scores, letters), (0, 1), "input {offset} (seed {seed}) dead-lettered without exactly one dead letter");
                assert_ne!(
                    kind,
                    ErrorKind::Processing,
                    "a detector panicked on input {offset} (seed {seed}, {:?}): value {value:?}",
                    MODELS[offset as usize % MODELS.len()]
                );
                dead += 1;
            }
        }
    }
    (scored, dead, inputs as f64 / started.elapsed().as_secs_f64())
}

#[test]
fn arbitrary_and_extreme_inputs_each_end_as_one_score_or_one_dead_letter_without_panics() {
    let inputs = std::env::var("ONAD_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(SHORT_RUN);
    let seed = std::env::var("ONAD_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(11);
    let (scored, dead, rate) = fuzz(inputs, seed);
    assert_eq!(scored + dead, inputs);
    assert!(
        scored > inputs / 10,
        "too few inputs got through to a pipeline ({scored} of {inputs}): the fuzzer is not reaching the detectors"
    );
    println!("fuzz: {inputs} inputs (seed {seed}): {scored} scored, {dead} dead letters, 0 panics, {rate:.0} inputs/s");
}
