//! The learn-order rules of a pipeline (`learn_first`, `learn_anomalies`), which decide what a
//! score and so a threshold mean, checked on concrete readings through the z-score detector
//! (per feature |x - mean| / population std of the readings it has learned).

use super::pipeline::Pipeline;
use super::testutil::spec;

/// A one-feature z-score pipeline with the given learn order.
fn zscore(learn_first: bool, learn_anomalies: bool) -> Pipeline {
    let mut s = spec("zscore", &[], &[]);
    s.learn_first = learn_first;
    s.learn_anomalies = learn_anomalies;
    s.check().expect("valid spec").build(1, "sensor")
}

/// `n` ordinary readings: a slow wave in [-1, 1].
fn wave(n: usize) -> Vec<[f64; 1]> {
    (0..n).map(|i| [(i as f64 * 0.7).sin()]).collect()
}

/// Whether two pipelines' detectors have learned the same readings: they give the same raw
/// score, bit for bit, to a probe neither learns.
fn same_model(a: &mut Pipeline, b: &mut Pipeline) -> bool {
    let probe = [0.25];
    a.peek_raw_score(&probe).to_bits() == b.peek_raw_score(&probe).to_bits()
}

#[test]
fn by_default_a_reading_is_scored_against_the_readings_before_it() {
    // After 0 and 2: mean 1, std 1, so 4 is |4 - 1| / 1 = 3 standard deviations out.
    let mut p = zscore(false, true);
    p.process(&[0.0]);
    p.process(&[2.0]);
    assert_eq!(p.process(&[4.0]).raw_score, 3.0);
}

#[test]
fn learn_first_scores_a_reading_against_a_model_that_already_contains_it() {
    // ONAD's order: 4 is learned first (mean 2, std sqrt(8/3)), so it is only
    // |4 - 2| / sqrt(8/3) = sqrt(1.5) standard deviations out: an outlier masks itself.
    let mut p = zscore(true, true);
    p.process(&[0.0]);
    p.process(&[2.0]);
    let raw = p.process(&[4.0]).raw_score;
    assert!((raw - 1.5f64.sqrt()).abs() < 1e-12, "{raw}");
    // Either way the model ends up having learned the same three readings.
    let mut q = zscore(false, true);
    for x in [0.0, 2.0, 4.0] {
        q.process(&[x]);
    }
    assert!(same_model(&mut p, &mut q), "both orders learn every reading once");
}

#[test]
fn learn_anomalies_false_keeps_a_flagged_reading_out_of_the_model_and_true_learns_it() {
    for learn_anomalies in [false, true] {
        let (mut subject, mut twin) = (zscore(false, learn_anomalies), zscore(false, learn_anomalies));
        for x in wave(300) {
            subject.process(&x);
            twin.process(&x);
        }
        let spike = subject.process(&[1000.0]);
        assert!(spike.is_anomaly, "a reading 1000 wave heights out is flagged (score {})", spike.score);
        assert_eq!(
            same_model(&mut subject, &mut twin),
            !learn_anomalies,
            "learn_anomalies = {learn_anomalies}: the model {} the flagged reading",
            if learn_anomalies { "learns" } else { "is left without" }
        );
    }
}

#[test]
fn learn_anomalies_false_still_learns_readings_below_the_threshold() {
    let (mut subject, mut twin) = (zscore(false, false), zscore(false, false));
    for x in wave(300) {
        subject.process(&x);
        twin.process(&x);
    }
    let ordinary = subject.process(&[0.1]);
    assert!(!ordinary.is_anomaly, "0.1 is an ordinary reading (score {})", ordinary.score);
    assert!(!same_model(&mut subject, &mut twin), "the ordinary reading was learned");
    twin.process(&[0.1]);
    assert!(same_model(&mut subject, &mut twin));
}

#[test]
fn with_learn_first_a_reading_is_learned_before_it_is_judged_so_learn_anomalies_cannot_exclude_it() {
    let (mut subject, mut twin) = (zscore(true, false), zscore(true, false));
    for x in wave(300) {
        subject.process(&x);
        twin.process(&x);
    }
    let spike = subject.process(&[1000.0]);
    assert!(spike.is_anomaly, "still flagged, although learned first (score {})", spike.score);
    assert!(!same_model(&mut subject, &mut twin), "the flagged reading is in the model: it was learned before it was scored");
}
