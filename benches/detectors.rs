//! Speed benchmark: learn + score of one point, d = 10, one core, at steady state.
//!
//! - `pipeline/<model>`: `Pipeline::process` of every registered detector at its defaults
//!   (score, calibrate, learn: what the worker pays per reading).
//! - `oifor/<setting>`: our Online Isolation Forest against the `rcf3` crate's OnlineIForest with
//!   the same parameters (trees, window 2048, max_leaf_samples 32): ours in ONAD's
//!   learn-then-score order (fused) and in score-then-learn order, rcf3's `update_and_score`.
//!
//! - `timeseries_d4/<model>`: `Pipeline::process_at` (with the reading's timestamp, as the
//!   worker calls it) of the time-series detectors and of `zscore` for scale, at 4 features on
//!   the seasonal stream (e), a reading every 5 minutes; `_season288` = `season_length = 288`.
//!
//! - `processor/<model>/fallback_<zscore|none>`: `Processor::process` of one encoded reading
//!   (decode, validate, score behind the circuit breaker, build outputs) with the warm
//!   fallback on (the default) and off: the fallback's cost per reading.
//!
//! Every model first learns 20,000 points of stream (a), so windows are full, then the
//! benchmark cycles through 4,096 further points. Before the benchmarks the state size of each
//! model (postcard bytes, what a snapshot stores) is printed.
//!
//! Time is the CPU time of the benchmark thread (`CLOCK_THREAD_CPUTIME_ID`), not wall time:
//! the development machine's 2 cores are shared with other jobs, and time the thread spends
//! descheduled says nothing about the code. (Cache contention from other jobs still shows.)
//!
//! Run: `cargo bench --bench detectors -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onad_stream::detect::forest::{IsolationForestParams, OnlineIsolationForest};
use onad_stream::detect::pipeline::MODEL_TYPES;
use onad_stream::detect::synthetic::{generate, StreamKind, StreamSpec, START_MS};
use onad_stream::detect::{Detector, ParamValue, Params, PipelineSpec};

const DIM: usize = 10;
const WARM: usize = 20_000;
const CYCLE: usize = 4_096;

/// Thread CPU time as a criterion measurement, in nanoseconds.
struct CpuTime;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// Linux's `CLOCK_THREAD_CPUTIME_ID`.
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

fn thread_cpu_ns() -> u64 {
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on x86_64/aarch64 Linux)
    // and the clock id is a constant the kernel knows.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Formats nanoseconds of CPU time, and throughput as elements per CPU-second.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "µs")
        } else {
            (1e-6, "ms")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, _typical: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        let per = match throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Bits(n) => *n as f64,
        };
        values.iter_mut().for_each(|v| *v = per * 1e9 / *v / 1e3);
        "Kelem/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn points() -> Vec<Vec<f64>> {
    generate(&StreamSpec { len: WARM + CYCLE, dim: DIM, ..StreamSpec::benchmark(StreamKind::ShiftAll, 99) }).points
}

fn spec(model: &str) -> PipelineSpec {
    PipelineSpec { model_type: model.to_string(), seed: 1, ..PipelineSpec::default() }
}

fn rcf3_forest(trees: usize, pts: &[Vec<f32>]) -> rcf3::OnlineIForest {
    let mut f = rcf3::OnlineIForest::builder(DIM)
        .num_trees(trees)
        .window_size(2048)
        .max_leaf_samples(32)
        .seed(1)
        .build()
        .expect("valid rcf3 parameters");
    for x in &pts[..WARM] {
        f.update_and_score(x).expect("finite point of the right width");
    }
    f
}

fn our_forest(trees: usize, pts: &[Vec<f64>]) -> OnlineIsolationForest {
    let p = IsolationForestParams { num_trees: trees, window_size: 2048, max_leaf_samples: 32, ..Default::default() };
    let mut f = OnlineIsolationForest::new(p, DIM, 1);
    for x in &pts[..WARM] {
        f.learn_score_one(x);
    }
    f
}

fn report_state_sizes(pts: &[Vec<f64>], pts32: &[Vec<f32>]) {
    println!("State bytes at defaults after {WARM} points (postcard):");
    for model in MODEL_TYPES {
        let Ok(factory) = spec(model).check() else { continue };
        let mut p = factory.build(DIM, "bench");
        for x in &pts[..WARM] {
            p.process(x);
        }
        let bytes = postcard::to_stdvec(&p).map(|b| b.len()).unwrap_or(0);
        println!("  pipeline/{model}: {bytes} bytes");
    }
    for trees in [32, 100] {
        let ours = postcard::to_stdvec(&our_forest(trees, pts)).map(|b| b.len()).unwrap_or(0);
        let peer = postcard::to_stdvec(&rcf3_forest(trees, pts32)).map(|b| b.len()).unwrap_or(0);
        println!("  oifor {trees} trees: ours {ours} bytes, rcf3 {peer} bytes");
    }
}

fn benches(c: &mut Criterion<CpuTime>) {
    let pts = points();
    let pts32: Vec<Vec<f32>> = pts.iter().map(|p| p.iter().map(|v| *v as f32).collect()).collect();
    report_state_sizes(&pts, &pts32);

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    for model in MODEL_TYPES {
        let Ok(factory) = spec(model).check() else { continue };
        let mut p = factory.build(DIM, "bench");
        for x in &pts[..WARM] {
            p.process(x);
        }
        let mut i = 0;
        group.bench_function(*model, |b| {
            b.iter(|| {
                i = (i + 1) % CYCLE;
                black_box(p.process(&pts[WARM + i]).score)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("oifor");
    group.throughput(Throughput::Elements(1));
    for trees in [32, 100] {
        let mut ours = our_forest(trees, &pts);
        let mut i = 0;
        group.bench_function(format!("ours_learn_then_score/{trees}_trees_w2048"), |b| {
            b.iter(|| {
                i = (i + 1) % CYCLE;
                black_box(ours.learn_score_one(&pts[WARM + i]))
            })
        });
        let mut ours = our_forest(trees, &pts);
        group.bench_function(format!("ours_score_then_learn/{trees}_trees_w2048"), |b| {
            b.iter(|| {
                i = (i + 1) % CYCLE;
                let x = &pts[WARM + i];
                let s = ours.score_one(x);
                ours.learn_one(x);
                black_box(s)
            })
        });
        let mut peer = rcf3_forest(trees, &pts32);
        group.bench_function(format!("rcf3_update_and_score/{trees}_trees_w2048"), |b| {
            b.iter(|| {
                i = (i + 1) % CYCLE;
                black_box(peer.update_and_score(&pts32[WARM + i]).unwrap_or(0.0))
            })
        });
    }
    group.finish();

    timeseries(c);
    processor(c, &pts);
}

/// `Processor::process` of one encoded reading (decode, validate, route, score behind the
/// breaker, build the outputs): what the warm fallback adds per reading, with the default
/// `resilience.fallback = "zscore"` against `"none"`.
fn processor(c: &mut Criterion<CpuTime>, pts: &[Vec<f64>]) {
    use onad_stream::config::Config;
    use onad_stream::partition::{InputRecord, Models, Processor, ProcessorConfig};
    use prost::Message as _;
    let readings: Vec<Vec<u8>> = pts
        .iter()
        .enumerate()
        .map(|(t, x)| {
            let values = x.iter().enumerate().map(|(j, v)| (format!("f{j}"), *v)).collect();
            let r = onad_stream::proto::SensorReading {
                sensor_id: "bench".into(),
                timestamp_ms: START_MS + t as i64 * 1000,
                values,
                ..Default::default()
            };
            r.encode_to_vec()
        })
        .collect();
    let mut group = c.benchmark_group("processor");
    group.throughput(Throughput::Elements(1));
    for model in ["zscore", "knn", "isolation_forest"] {
        for fallback in ["zscore", "none"] {
            let sets = [format!("model_type=\"{model}\""), format!("resilience.fallback=\"{fallback}\""), "seed=1".to_string()];
            let config = Config::load_from(None, &[], &sets).expect("bench config");
            let pc = std::sync::Arc::new(ProcessorConfig::new(&config, true));
            let mut p = Processor::new("bench".into(), 0, pc, Models::default());
            let mut out = Vec::new();
            let mut offset = 0i64;
            for r in &readings[..WARM] {
                out.clear();
                p.process(InputRecord { key: Some(b"bench"), value: Some(r), offset }, 0, &mut out);
                offset += 1;
            }
            let bytes = postcard::to_stdvec(p.models()).map(|b| b.len()).unwrap_or(0);
            println!("  processor/{model}/fallback_{fallback}: one sensor's state {bytes} bytes (postcard)");
            let mut i = 0;
            group.bench_function(format!("{model}/fallback_{fallback}"), |b| {
                b.iter(|| {
                    i = (i + 1) % CYCLE;
                    offset += 1;
                    out.clear();
                    black_box(p.process(InputRecord { key: Some(b"bench"), value: Some(&readings[WARM + i]), offset }, 0, &mut out))
                })
            });
        }
    }
    group.finish();
}

/// The time-series detectors at 4 features, fed timestamps that keep increasing.
fn timeseries(c: &mut Criterion<CpuTime>) {
    let s = generate(&StreamSpec { len: WARM + CYCLE, ..StreamSpec::benchmark(StreamKind::SeasonalSpikes, 99) });
    let dim = s.points[0].len();
    let daily = || Params::from([("season_length".to_string(), ParamValue::Int(288))]);
    let runs = [
        ("holt_winters", "holt_winters", Params::new()),
        ("holt_winters_season288", "holt_winters", daily()),
        ("arima", "arima", Params::new()),
        ("arima_season288", "arima", daily()),
        ("mad", "mad", Params::new()),
        ("zscore", "zscore", Params::new()),
    ];
    let mut group = c.benchmark_group("timeseries_d4");
    group.throughput(Throughput::Elements(1));
    for (name, model, params) in runs {
        let Ok(factory) = PipelineSpec { model_params: params, ..spec(model) }.check() else { continue };
        let mut p = factory.build(dim, "bench");
        let mut t: i64 = 0;
        let ts = |t: i64| START_MS + t * 300_000;
        for x in &s.points[..WARM] {
            p.process_at(x, Some(ts(t)));
            t += 1;
        }
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % CYCLE;
                t += 1;
                black_box(p.process_at(&s.points[WARM + i], Some(ts(t))).score)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = detectors;
    config = Criterion::default().with_measurement(CpuTime);
    targets = benches
}
criterion_main!(detectors);
