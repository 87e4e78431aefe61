//! Parity with ONAD 0.3.0: the same streams, the same outputs.
//!
//! `tests/fixtures/onad_parity.json` holds ONAD's outputs, written by `scripts/onad_fixtures.py`
//! (its header says how to regenerate them). The streams are regenerated here with the script's
//! integer generator; each case's checksum proves the two generators agree before any output is
//! compared.
//!
//! Deterministic transforms and KNN must match within 1e-6; randomized detectors must reach a
//! prequential ROC-AUC within 0.01 of ONAD's, or better.

use onad_stream::detect::metrics::roc_auc;
use onad_stream::detect::transform::{
    IncrementalPca, IncrementalPcaParams, MinMaxScaler, MinMaxScalerParams, StandardScaler, StandardScalerParams,
};
use onad_stream::detect::{ParamValue, Params, PipelineSpec, StepSpec, Transformer};
use serde_json::Value;

const TOLERANCE: f64 = 1e-6;

/// The fixture, compiled in: the binary does not depend on where the checkout was when it
/// was built (the shared target dir outlives clones), and cargo rebuilds it when it changes.
const FIXTURE: &str = include_str!("fixtures/onad_parity.json");

fn fixture() -> Value {
    serde_json::from_str(FIXTURE).expect("fixture is JSON")
}

fn case<'a>(fx: &'a Value, name: &str) -> &'a Value {
    fx["cases"].get(name).unwrap_or_else(|| panic!("fixture has no case `{name}`; regenerate it"))
}

/// splitmix64 -> 53-bit uniforms -> Irwin-Hall(12) - 6, as `Stream` in the script.
struct Stream(u64);

impl Stream {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    fn normal(&mut self) -> f64 {
        let mut s = 0.0;
        for _ in 0..12 {
            s += self.uniform();
        }
        s - 6.0
    }
}

/// The stream a case describes, with labels (all 0 where the stream has none).
fn stream(desc: &Value) -> (Vec<Vec<f64>>, Vec<bool>) {
    let seed = desc["seed"].as_u64().expect("seed");
    let n = desc["n"].as_u64().expect("n") as usize;
    let mut g = Stream(seed);
    match desc["kind"].as_str().expect("kind") {
        "mixed" => {
            let rows = (0..n)
                .map(|i| {
                    let v: Vec<f64> = (0..5).map(|_| g.normal()).collect();
                    let (a, b, c, d, e) = (v[0], v[1], v[2], v[3], v[4]);
                    vec![a, 50.0 + 8.0 * b, 3.0, if i < 100 { 0.0 } else { c }, 2.0 * e + 0.5 * d, 2.0 * e - 0.5 * d]
                })
                .collect();
            (rows, vec![false; n])
        }
        "latent" => {
            let loadings = [[0.5, 0.5, 0.5, 0.5, 0.0, 0.0], [0.5, -0.5, 0.0, 0.0, 0.5, -0.5], [0.0, 0.0, 0.5, -0.5, 0.5, 0.5]];
            let scales = [3.0, 2.0, 1.0];
            let rows = (0..n)
                .map(|_| {
                    let f: Vec<f64> = scales.iter().map(|s| s * g.normal()).collect();
                    let noise: Vec<f64> = (0..6).map(|_| 0.125 * g.normal()).collect();
                    (0..6)
                        .map(|j| {
                            // Python's sum() starts from integer 0: 0 + a == a exactly.
                            let mut s = 0.0;
                            for k in 0..3 {
                                s += f[k] * loadings[k][j];
                            }
                            s + noise[j] + 1.0
                        })
                        .collect()
                })
                .collect();
            (rows, vec![false; n])
        }
        "gaussian" => {
            let dim = desc["dim"].as_u64().expect("dim") as usize;
            let shift = desc["shift"].as_f64().expect("shift");
            let one = desc["one_feature"].as_bool().expect("one_feature");
            let mut rows = Vec::with_capacity(n);
            let mut labels = Vec::with_capacity(n);
            for _ in 0..n {
                let mut row: Vec<f64> = (0..dim).map(|_| g.normal()).collect();
                let pick = g.next_u64();
                let feature = (g.next_u64() % dim as u64) as usize;
                let outlier = pick % 100 == 0; // (is_multiple_of needs Rust 1.87)
                if outlier {
                    if one {
                        row[feature] += shift;
                    } else {
                        row.iter_mut().for_each(|v| *v += shift);
                    }
                }
                rows.push(row);
                labels.push(outlier);
            }
            if desc["dyadic"].as_bool() == Some(true) {
                for row in &mut rows {
                    row.iter_mut().for_each(|v| *v = (*v * 16.0 + 0.5).floor() / 16.0);
                }
            }
            (rows, labels)
        }
        other => panic!("unknown stream kind {other}"),
    }
}

/// The case's stream, after checking its checksum against the script's.
fn checked_stream(c: &Value) -> (Vec<Vec<f64>>, Vec<bool>) {
    let (rows, labels) = stream(&c["stream"]);
    let mut sum = 0.0;
    for row in &rows {
        for v in row {
            sum += v;
        }
    }
    // Compared as IEEE bits (an exact JSON integer): float parsing may not round-trip the last bit.
    let want = c["checksum_bits"].as_u64().expect("checksum_bits");
    assert_eq!(sum.to_bits(), want, "stream generator differs from the script's: checksum {sum} vs {}", f64::from_bits(want));
    (rows, labels)
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn spec(model_type: &str, params: Params, steps: Vec<StepSpec>, learn_first: bool) -> PipelineSpec {
    PipelineSpec {
        model_type: model_type.into(),
        model_params: params,
        preprocessing_steps: steps,
        learn_first,
        seed: 7,
        ..PipelineSpec::default()
    }
}

fn int_params(pairs: &[(&str, &Value)]) -> Params {
    pairs.iter().map(|(k, v)| (k.to_string(), ParamValue::Int(v.as_i64().expect("integer param")))).collect()
}

fn assert_transform_matches(name: &str, t: &mut dyn Transformer, up_to_sign: bool) {
    let fx = fixture();
    let c = case(&fx, name);
    let (rows, _) = checked_stream(c);
    let want = c["outputs"].as_array().expect("outputs");
    let mut out = Vec::new();
    let mut worst = 0.0f64;
    for (i, (x, w)) in rows.iter().zip(want).enumerate() {
        t.learn_one(x);
        t.transform_one(x, &mut out);
        let w = numbers(w);
        assert_eq!(out.len(), w.len(), "{name}: width at row {i}");
        for (j, (a, b)) in out.iter().zip(&w).enumerate() {
            let err = if up_to_sign { (a.abs() - b.abs()).abs() } else { (a - b).abs() };
            assert!(err <= TOLERANCE, "{name}: row {i} feature {j}: ours {a}, ONAD {b}");
            worst = worst.max(err);
        }
    }
    eprintln!("{name}: {} rows, largest difference {worst:e}", rows.len());
}

#[test]
fn standard_scaler_matches_onad_within_1e6() {
    let mut t = StandardScaler::new(StandardScalerParams { with_std: true }, 6);
    assert_transform_matches("standard_scaler", &mut t, false);
}

#[test]
fn minmax_scaler_matches_onad_within_1e6() {
    let mut t = MinMaxScaler::new(MinMaxScalerParams { feature_range: (0.0, 1.0) }, 6);
    assert_transform_matches("minmax_scaler", &mut t, false);
}

fn pca_case(name: &str) {
    let fx = fixture();
    let c = case(&fx, name);
    let p = &c["params"];
    let params = IncrementalPcaParams {
        n_components: p["n_components"].as_u64().expect("n_components") as usize,
        n0: p["n0"].as_u64().expect("n0") as usize,
        tol: 1e-7,
        forgetting_factor: p.get("forgetting_factor").and_then(Value::as_f64),
    };
    let mut t = IncrementalPca::new(params, 6);
    // Eigenvectors have no intrinsic sign: ONAD's come from LAPACK's general `eig`, ours are
    // oriented (largest loading positive), so projections agree up to sign.
    assert_transform_matches(name, &mut t, true);
    let want = numbers(&c["eigenvalues"]);
    for (a, b) in t.eigenvalues().iter().zip(&want) {
        assert!((a - b).abs() <= TOLERANCE * b.abs().max(1.0), "{name}: eigenvalue ours {a}, ONAD {b}");
    }
}

#[test]
fn incremental_pca_matches_onad_within_1e6() {
    pca_case("pca_stationary");
}

#[test]
fn incremental_pca_with_forgetting_factor_matches_onad_within_1e6() {
    pca_case("pca_forgetting");
}

/// Score-then-learn KNN scores through a real pipeline (optionally behind a scaler).
fn knn_scores(c: &Value, rows: &[Vec<f64>], scaler: bool) -> Vec<f64> {
    let p = &c["params"];
    let params = int_params(&[("k", &p["k"]), ("window_size", &p["window_size"]), ("warm_up", &p["warm_up"])]);
    let steps = if scaler { vec![StepSpec { kind: "scaler".into(), params: Params::new() }] } else { Vec::new() };
    let factory = spec("knn", params, steps, false).check().expect("valid knn spec");
    let mut pipeline = factory.try_build(rows[0].len(), "parity").expect("buildable");
    rows.iter().map(|x| pipeline.process(x).raw_score).collect()
}

#[test]
fn knn_matches_onad_bit_for_bit_after_float32_rounding_on_dyadic_stream() {
    let fx = fixture();
    let c = case(&fx, "knn_dyadic");
    let (rows, _) = checked_stream(c);
    let ours = knn_scores(c, &rows, false);
    let want = numbers(&c["scores"]);
    assert_eq!(ours.len(), want.len());
    for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
        // ONAD (faiss) computes in float32; on multiples of 1/16 every step is exact except the
        // final mean, so our float64 score rounded to float32 is ONAD's score exactly.
        assert_eq!((*a as f32).to_bits(), (*b as f32).to_bits(), "row {i}: ours {a}, ONAD {b}");
        assert!((a - b).abs() <= TOLERANCE * b.abs().max(1.0), "row {i}: ours {a}, ONAD {b}");
    }
    assert!(want.iter().filter(|s| **s > 0.0).count() > 1000, "the case must exercise scoring");
}

fn assert_knn_close(name: &str, scaler: bool) {
    let fx = fixture();
    let c = case(&fx, name);
    let (rows, _) = checked_stream(c);
    let first = c["first_scored_row"].as_u64().unwrap_or(0) as usize;
    let ours = knn_scores(c, &rows, scaler);
    let want = numbers(&c["scores"]);
    assert_eq!(ours.len() - first, want.len());
    let mut worst = 0.0f64;
    for (i, (a, b)) in ours[first..].iter().zip(&want).enumerate() {
        // Relative: ONAD's float32 arithmetic carries ~1e-7 relative error.
        let err = (a - b).abs() / b.abs().max(1.0);
        assert!(err <= TOLERANCE, "{name}: row {}: ours {a}, ONAD {b}", i + first);
        worst = worst.max(err);
    }
    eprintln!("{name}: largest relative difference {worst:e}");
}

#[test]
fn knn_matches_onad_within_1e6_on_float_stream() {
    assert_knn_close("knn_float", false);
}

#[test]
fn scaler_then_knn_pipeline_matches_onad_within_1e6() {
    assert_knn_close("scaler_knn", true);
}

/// Prequential AUC of `model_type` (defaults, learn-then-score as the script) on the case's
/// stream; returns (ours, ONAD's).
fn auc_pair(name: &str, model_type: &str, params: Params) -> (f64, f64) {
    let fx = fixture();
    let c = case(&fx, name);
    let (rows, labels) = checked_stream(c);
    let skip = c["skip"].as_u64().expect("skip") as usize;
    let factory = spec(model_type, params, Vec::new(), true).check().expect("valid spec");
    let mut pipeline = factory.try_build(rows[0].len(), "parity").expect("buildable");
    let scores: Vec<f64> = rows.iter().map(|x| pipeline.process(x).raw_score).collect();
    let ours = roc_auc(&scores[skip..], &labels[skip..]).expect("both classes present");
    let onad = c["auc"].as_f64().expect("auc");
    eprintln!("{name}: ROC-AUC ours {ours:.4}, ONAD {onad:.4}");
    (ours, onad)
}

#[test]
fn adaptive_svm_auc_is_within_001_of_onad_or_better_on_shift_all_features() {
    let (ours, onad) = auc_pair("auc_svm_a", "adaptive_svm", Params::new());
    assert!(ours >= onad - 0.01, "ROC-AUC ours {ours}, ONAD {onad}");
}

#[test]
fn adaptive_svm_auc_is_within_001_of_onad_or_better_on_shift_one_feature() {
    let (ours, onad) = auc_pair("auc_svm_b", "adaptive_svm", Params::new());
    assert!(ours >= onad - 0.01, "ROC-AUC ours {ours}, ONAD {onad}");
}

#[test]
fn knn_auc_matches_onad_on_both_shift_streams() {
    let k10 = || {
        let mut p = Params::new();
        p.insert("k".into(), ParamValue::Int(10));
        p.insert("window_size".into(), ParamValue::Int(1000));
        p.insert("warm_up".into(), ParamValue::Int(10));
        p
    };
    for name in ["auc_knn_a", "auc_knn_b"] {
        let (ours, onad) = auc_pair(name, "knn", k10());
        // The same scores up to float32 rounding, so the same ranking up to near-ties.
        assert!((ours - onad).abs() <= 0.001, "{name}: ROC-AUC ours {ours}, ONAD {onad}");
    }
}

#[test]
fn isolation_forest_auc_is_within_001_of_onad_or_better_on_both_shift_streams() {
    for name in ["auc_forest_a", "auc_forest_b"] {
        let (ours, onad) = auc_pair(name, "isolation_forest", Params::new());
        assert!(ours >= onad - 0.01, "{name}: ROC-AUC ours {ours}, ONAD {onad}");
    }
}

/// Score-then-learn raw scores of `model_type` with an integer `window_size` over the case's
/// stream, compared with ONAD's within 1e-6 (relative above 1).
fn assert_stat_matches(name: &str, model_type: &str) {
    let fx = fixture();
    let c = case(&fx, name);
    let (rows, _) = checked_stream(c);
    let mut params = int_params(&[("window_size", &c["params"]["window_size"])]);
    if model_type == "moving_median" {
        // ONAD's MovingMedian scores the change of the median (our `score = "shift"`).
        params.insert("score".into(), ParamValue::Str("shift".into()));
    }
    let factory = spec(model_type, params, Vec::new(), false).check().expect("valid spec");
    let mut pipeline = factory.try_build(rows[0].len(), "parity").expect("buildable");
    let want = numbers(&c["scores"]);
    // Below d + 1 points ONAD inverts a singular covariance (scores ~1e16 of rounding noise);
    // ours scores 0 there. Compared from the first full-rank window on.
    let first = if model_type == "mahalanobis" { rows[0].len() + 1 } else { 0 };
    let mut worst = 0.0f64;
    for (i, (x, b)) in rows.iter().zip(&want).enumerate() {
        let a = pipeline.process(x).raw_score;
        if i < first {
            assert_eq!(a, 0.0, "{name}: row {i}: too few points for a covariance");
            continue;
        }
        let err = (a - b).abs() / b.abs().max(1.0);
        assert!(err <= TOLERANCE, "{name}: row {i}: ours {a}, ONAD {b}");
        worst = worst.max(err);
    }
    assert!(want.iter().filter(|s| **s != 0.0).count() > want.len() / 2, "{name}: the case must exercise scoring");
    eprintln!("{name}: largest relative difference {worst:e}");
}

#[test]
fn moving_mahalanobis_matches_onad_within_1e6() {
    assert_stat_matches("mahalanobis", "mahalanobis");
}

#[test]
fn moving_average_variance_and_median_match_onad_within_1e6() {
    assert_stat_matches("moving_average", "moving_average");
    assert_stat_matches("moving_variance", "moving_variance");
    assert_stat_matches("moving_median", "moving_median");
}
