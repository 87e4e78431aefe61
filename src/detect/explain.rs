//! Which features made a reading anomalous: the `top_features` of every detector.
//!
//! Meaning, for every detector: the features whose values account for the reading's raw
//! score, largest first, at most [`TOP_FEATURES`], only those with a positive part.
//! - Detectors that score per feature say so themselves ([`super::Detector::contributions`]):
//!   z-score (|z|), `mad` (|robust z|), `holt_winters` / `arima` (|standardized residual|),
//!   `moving_*` (each feature's score), KNN and Mahalanobis (their per-feature terms, in
//!   `pipeline.rs`).
//! - For the others (isolation forest, half-space trees, RS-Hash, adaptive SVM, and any
//!   detector behind PCA / random projection, whose coordinates are not input features) the
//!   pipeline measures it by occlusion (Zeiler & Fergus 2014, applied to one feature of a
//!   tabular point): contribution of feature j = raw(x) − raw(x with x_j set to the model's
//!   typical value, [`super::Detector::reference`]). A feature whose typical value would not
//!   lower the score did not make the reading anomalous and is left out. It costs one score
//!   per feature, on anomalies only.

/// Features reported per anomaly.
pub const TOP_FEATURES: usize = 3;

/// The `TOP_FEATURES` largest positive weights, as (feature index, weight), largest first.
pub fn top(weights: &[f64]) -> Vec<(usize, f64)> {
    let mut top: Vec<(usize, f64)> = weights.iter().copied().enumerate().filter(|(_, w)| *w > 0.0 && w.is_finite()).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(TOP_FEATURES);
    top
}

/// Occlusion contributions of each feature of `x`: `raw − score(x with x_j := reference_j)`,
/// written into `out`. A NaN reference value leaves its feature at 0.
pub fn occlusion(x: &[f64], raw: f64, reference: &[f64], mut score: impl FnMut(&[f64]) -> f64, out: &mut Vec<f64>) {
    out.clear();
    let mut probe = x.to_vec();
    for j in 0..x.len() {
        let Some(r) = reference.get(j).copied().filter(|r| r.is_finite()) else {
            out.push(0.0);
            continue;
        };
        probe[j] = r;
        out.push(raw - score(&probe));
        probe[j] = x[j];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keeps_the_three_largest_positive_weights() {
        assert_eq!(top(&[0.5, -1.0, 3.0, 0.0, 2.0, 1.0]), vec![(2, 3.0), (4, 2.0), (5, 1.0)]);
        assert!(top(&[0.0, -2.0, f64::NAN]).is_empty());
    }

    #[test]
    fn every_detector_names_the_feature_that_made_the_reading_anomalous() {
        use crate::detect::pipeline::MODEL_TYPES;
        use crate::detect::synthetic::{generate, StreamKind, StreamSpec};
        use crate::detect::testutil::spec;
        let s = generate(&StreamSpec { len: 3_000, dim: 4, outlier_rate: 0.0, ..StreamSpec::benchmark(StreamKind::ShiftAll, 5) });
        for model in MODEL_TYPES {
            let steps: &[(&str, &[(&str, crate::detect::ParamValue)])] =
                if ["knn", "adaptive_svm"].contains(model) { &[("scaler", &[])] } else { &[] };
            let mut spec = spec(model, &[], steps);
            // Explain every reading, so that the probe's explanation is computed whatever its score.
            spec.thresholds.anomaly = 0.0;
            let mut p = spec.check().expect("valid").build(4, "k");
            for x in &s.points {
                p.process(x);
            }
            let r = p.process(&[0.1, -0.2, 9.0, 0.3]);
            assert!(r.is_anomaly, "{model}: a +9 sigma reading");
            assert_eq!(r.top_features.first().map(|f| f.0), Some(2), "{model}: {:?}", r.top_features);
            assert!(r.top_features.iter().all(|f| f.1 > 0.0), "{model}: {:?}", r.top_features);
        }
    }

    #[test]
    fn occlusion_credits_the_feature_whose_typical_value_removes_the_score() {
        // A score that only looks at feature 1.
        let score = |p: &[f64]| (p[1] - 10.0).abs();
        let mut out = Vec::new();
        let x = [3.0, 50.0, 7.0];
        occlusion(&x, score(&x), &[0.0, 10.0, f64::NAN], score, &mut out);
        assert_eq!(out, vec![0.0, 40.0, 0.0]);
    }
}
