//! Test helpers shared by the model files (compiled in tests only).

use super::params::{ParamValue, Params};
use super::pipeline::{Pipeline, PipelineSpec, StepSpec};
use super::Detector;

/// A deterministic pseudo-random stream: `dim` features, roughly N(0, 1) (sum of uniforms from
/// a 64-bit LCG), with every 97th point shifted by +6 on all features.
pub fn stream(n: usize, dim: usize) -> Vec<Vec<f64>> {
    let mut state = 0x853c_49e6_748f_ea9bu64;
    let mut uniform = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            (0..dim)
                .map(|_| {
                    let z = (0..12).map(|_| uniform()).sum::<f64>() - 6.0;
                    if i % 97 == 96 {
                        z + 6.0
                    } else {
                        z
                    }
                })
                .collect()
        })
        .collect()
}

/// A pipeline spec for `model_type` with `params` and `steps` (name, params).
pub fn spec(model_type: &str, params: &[(&str, ParamValue)], steps: &[(&str, &[(&str, ParamValue)])]) -> PipelineSpec {
    let to_params = |ps: &[(&str, ParamValue)]| ps.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<Params>();
    PipelineSpec {
        model_type: model_type.into(),
        model_params: to_params(params),
        preprocessing_steps: steps.iter().map(|(k, p)| StepSpec { kind: k.to_string(), params: to_params(p) }).collect(),
        ..PipelineSpec::default()
    }
}

/// A detector's fused `learn_score_one` gives, on every point, the bits `learn_one` then
/// `score_one` give, and leaves the same state (the [`Detector`] contract).
pub fn assert_learn_score_equals_learn_then_score<D: Detector + Clone + PartialEq + std::fmt::Debug>(detector: D, points: &[Vec<f64>]) {
    let (mut fused, mut apart) = (detector.clone(), detector);
    for (i, x) in points.iter().enumerate() {
        let score = fused.learn_score_one(x);
        apart.learn_one(x);
        assert_eq!(score.to_bits(), apart.score_one(x).to_bits(), "point {i}");
    }
    assert_eq!(fused, apart, "state after {} points", points.len());
}

/// Run `warm` points, snapshot with postcard, restore, and check that the original and the
/// restored copy give bit-identical raw and calibrated scores on the next `cont` points.
pub fn assert_restore_continues_bit_identically(spec: &PipelineSpec, dim: usize, warm: usize, cont: usize) {
    let factory = spec.check().expect("valid spec");
    let mut a: Pipeline = factory.try_build(dim, "sensor-7").expect("buildable");
    let data = stream(warm + cont, dim);
    for x in &data[..warm] {
        a.process(x);
    }
    let bytes = postcard::to_stdvec(&a).expect("serializable");
    let mut b: Pipeline = postcard::from_bytes(&bytes).expect("restorable");
    let mut nonzero = 0;
    for (i, x) in data[warm..].iter().enumerate() {
        let (sa, sb) = (a.process(x), b.process(x));
        assert_eq!(sa.raw_score.to_bits(), sb.raw_score.to_bits(), "raw score differs at continuation point {i}");
        assert_eq!(sa.score.to_bits(), sb.score.to_bits(), "score differs at continuation point {i}");
        if sa.raw_score != 0.0 {
            nonzero += 1;
        }
    }
    assert!(nonzero > cont / 2, "the model should be scoring after warm-up ({nonzero} non-zero of {cont})");
}
