//! Speed benchmark: learn + score of one point, d = 10, one core, at steady state.
//!
//! - `pipeline/<model>`: `Pipeline::process` of every registered detector at its defaults
//!   (score, calibrate, learn: what the worker pays per reading).
//! - `oifor/<setting>`: our Online Isolation Forest against the `rcf3` crate's OnlineIForest with
//!   the same parameters (trees, window 2048, max_leaf_samples 32): ours in ONAD's
//!   learn-then-score order (fused) and in score-then-learn order, rcf3's `update_and_score`.
//!
//! Every model first learns 20,000 points of stream (a), so windows are full, then the
//! benchmark cycles through 4,096 further points. Before the benchmarks the state size of each
//! model (postcard bytes, what a snapshot stores) is printed.
//!
//! Run: `cargo bench --bench detectors -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use onad_stream::detect::forest::{IsolationForestParams, OnlineIsolationForest};
use onad_stream::detect::pipeline::MODEL_TYPES;
use onad_stream::detect::synthetic::{generate, StreamKind, StreamSpec};
use onad_stream::detect::{Detector, Params, PipelineSpec, Thresholds};

const DIM: usize = 10;
const WARM: usize = 20_000;
const CYCLE: usize = 4_096;

fn points() -> Vec<Vec<f64>> {
    generate(&StreamSpec { len: WARM + CYCLE, dim: DIM, ..StreamSpec::benchmark(StreamKind::ShiftAll, 99) }).points
}

fn spec(model: &str) -> PipelineSpec {
    PipelineSpec {
        model_type: model.to_string(),
        model_params: Params::new(),
        preprocessing_steps: Vec::new(),
        thresholds: Thresholds::default(),
        learn_first: false,
        learn_anomalies: true,
        seed: 1,
    }
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

fn benches(c: &mut Criterion) {
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
}

criterion_group!(detectors, benches);
criterion_main!(detectors);
