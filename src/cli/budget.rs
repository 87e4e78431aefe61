//! `score --alerts-per-day N`: the `[thresholds]` that would have raised about N alerts per
//! day on the scored history, ready to paste into a config.
//!
//! Operators think in alerts per day, not in calibrated scores. The file's history says how
//! many days it spans (its timestamps, or rows / `--rate`); the anomaly threshold is then the
//! score just below the N × days highest scores, so `score > anomaly` selects them. Severity
//! bands split those alerts: `medium` = `anomaly`, `high` keeps the top quarter of them,
//! `critical` the top twentieth (the order of `[thresholds]` stays medium <= high <=
//! critical). With `learn_anomalies = true` the models do not depend on the thresholds and
//! the threshold is read off the run's scores; with the default `false` a flagged reading is
//! not learned, so the search re-runs the configuration over the same rows per candidate
//! threshold. Either way, re-scoring with the printed section gives the count printed.

use std::fmt::Write as _;

use super::score_run::Record;

/// Share of the alerts above `high`.
const HIGH_SHARE: f64 = 0.25;
/// Share of the alerts above `critical`.
const CRITICAL_SHARE: f64 = 0.05;
/// Milliseconds in a day.
const DAY_MS: f64 = 86_400_000.0;

/// The report for a configuration whose models do not depend on the thresholds
/// (`learn_anomalies = true`): the anomaly threshold is read off this run's scores.
pub fn thresholds_for(records: &[Record], per_day: f64, rate: Option<f64>) -> anyhow::Result<String> {
    let (days, target) = budget(records, per_day, rate)?;
    let anomaly = nearest_count(&sorted_scores(records), target);
    report(records, per_day, days, target, anomaly)
}

/// The report when the thresholds change what the models learn (`learn_anomalies = false`:
/// a flagged reading is not learned, so a lower threshold keeps the models tighter and flags
/// more). `rescore(t)` runs the configuration again over the same rows with
/// `thresholds.anomaly = t`; a bisection finds the threshold whose own run raises the budget,
/// so the printed section reproduces it when pasted.
pub fn thresholds_with_feedback(
    records: &[Record],
    per_day: f64,
    rate: Option<f64>,
    mut rescore: impl FnMut(f64) -> anyhow::Result<Vec<Record>>,
) -> anyhow::Result<String> {
    let (days, target) = budget(records, per_day, rate)?;
    let alerts = |rs: &[Record]| rs.iter().filter(|r| r.is_anomaly).count();
    // Alerts fall as the threshold rises; keep the bracket [lo, hi] with alerts(lo) > target
    // >= alerts(hi), starting from the scale's ends.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut best = (hi, rescore(hi)?);
    for _ in 0..BISECTIONS {
        let mid = (lo + hi) / 2.0;
        let run = rescore(mid)?;
        let n = alerts(&run);
        // Nearest to the budget; among equals the higher threshold (fewer false alarms).
        let (miss, best_miss) = (n.abs_diff(target), alerts(&best.1).abs_diff(target));
        if miss < best_miss || (miss == best_miss && mid > best.0) {
            best = (mid, run);
        }
        if n > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (anomaly, records) = best;
    report(&records, per_day, days, target, anomaly)
}

/// Bisection steps of [`thresholds_with_feedback`]: 2^-14 of the score scale, finer than the
/// calibrated scores of neighbouring ranks on histories of millions of rows.
const BISECTIONS: usize = 14;

/// Days of history the rows span, and the alerts `per_day` asks for over them.
fn budget(records: &[Record], per_day: f64, rate: Option<f64>) -> anyhow::Result<(f64, usize)> {
    anyhow::ensure!(!records.is_empty(), "--alerts-per-day: the file has no rows");
    let days = match rate {
        Some(r) => records.len() as f64 / r / 86_400.0,
        None => {
            let (lo, hi) = records.iter().filter_map(|r| r.ts).fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
            anyhow::ensure!(lo <= hi, "--alerts-per-day needs a timestamp column in the file (see --timestamp) or --rate");
            // n readings at a steady interval cover n intervals, not n - 1.
            let n = records.len() as f64;
            (hi - lo) as f64 / DAY_MS * n / (n - 1.0).max(1.0)
        }
    };
    anyhow::ensure!(days > 0.0, "--alerts-per-day: the file's timestamps span no time; give --rate");
    Ok((days, (per_day * days).round() as usize))
}

/// Scores, highest first.
fn sorted_scores(records: &[Record]) -> Vec<f64> {
    let mut scores: Vec<f64> = records.iter().map(|r| r.score).collect();
    scores.sort_by(|a, b| b.total_cmp(a));
    scores
}

/// The threshold whose count of `score > it` is nearest to k: the (k+1)-th highest score
/// keeps at most the k highest, fewer when scores tie there (calibrated scores saturate at
/// 1.0); the next lower distinct score keeps the whole tied group, more than k.
fn nearest_count(scores: &[f64], k: usize) -> f64 {
    let Some(&at) = scores.get(k) else { return 0.0 };
    let kept = scores.partition_point(|s| *s > at);
    let tied_end = scores.partition_point(|s| *s >= at);
    match scores.get(tied_end) {
        Some(&lower) if tied_end - k < k - kept => lower,
        _ => at,
    }
}

/// The comment block and the `[thresholds]` section for `anomaly` on `records`' scores.
fn report(records: &[Record], per_day: f64, days: f64, target: usize, anomaly: f64) -> anyhow::Result<String> {
    let scores = sorted_scores(records);
    let high = nearest_count(&scores, (target as f64 * HIGH_SHARE).round() as usize).max(anomaly);
    let critical = nearest_count(&scores, (target as f64 * CRITICAL_SHARE).round() as usize).max(high);
    let over = |t: f64| records.iter().filter(|r| r.score > t).count();
    let alerts = over(anomaly);
    let (n_high, n_critical) = (over(high), over(critical));
    let mut s = String::new();
    writeln!(
        s,
        "# [thresholds] for ~{per_day} alerts/day: {alerts} alerts over {days:.2} days of history ({:.1}/day): medium {}, high {}, critical {}",
        alerts as f64 / days,
        alerts - n_high,
        n_high - n_critical,
        n_critical,
    )?;
    if alerts.abs_diff(target) * 10 > target.max(10) {
        writeln!(
            s,
            "# (not the {target} asked: {} rows share the score {anomaly})",
            records.iter().filter(|r| r.score == anomaly).count()
        )?;
    }
    let labelled: Vec<(bool, bool)> = records.iter().filter_map(|r| r.label.map(|l| (r.score > anomaly, l))).collect();
    if !labelled.is_empty() {
        let positives = labelled.iter().filter(|(_, l)| *l).count();
        let hits = labelled.iter().filter(|(a, l)| *a && *l).count();
        let flagged = labelled.iter().filter(|(a, _)| *a).count();
        writeln!(
            s,
            "# on the labelled rows: recall {:.3} ({hits} of {positives} anomalies), precision {:.3} ({hits} of {flagged} alerts)",
            hits as f64 / positives.max(1) as f64,
            hits as f64 / flagged.max(1) as f64,
        )?;
    }
    // `{:?}` prints the shortest text that reads back as the same f64 (and `1.0`, not `1`), so
    // the pasted section reproduces the count exactly.
    writeln!(s, "[thresholds]\nanomaly = {anomaly:?}\nmedium = {anomaly:?}\nhigh = {high:?}\ncritical = {critical:?}")?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, score: f64, label: bool) -> Record {
        Record { key: 0, row: i + 1, values: Vec::new(), score, is_anomaly: false, label: Some(label), ts: Some(i as i64 * 60_000) }
    }

    #[test]
    fn the_threshold_keeps_the_budgeted_number_of_highest_scores() {
        // 2 days of one reading a minute; scores i / n, the top 1% labelled.
        let n = 2 * 1440;
        let records: Vec<Record> = (0..n).map(|i| rec(i, i as f64 / n as f64, i >= n - n / 100)).collect();
        let text = thresholds_for(&records, 10.0, None).unwrap();
        let value = |k: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{k} = "))).unwrap();
            line.split(" = ").nth(1).unwrap().parse().unwrap()
        };
        let anomaly = value("anomaly");
        assert_eq!(records.iter().filter(|r| r.score > anomaly).count(), 20, "{text}");
        assert!(anomaly <= value("high") && value("high") <= value("critical"), "{text}");
        assert_eq!(records.iter().filter(|r| r.score > value("high")).count(), 5, "{text}");
        assert!(text.contains("recall 0.714 (20 of 28 anomalies), precision 1.000"), "{text}");
    }

    #[test]
    fn without_timestamps_the_rate_gives_the_days() {
        let records: Vec<Record> = (0..1000).map(|i| Record { ts: None, ..rec(i, i as f64 / 1000.0, false) }).collect();
        assert!(thresholds_for(&records, 5.0, None).unwrap_err().to_string().contains("--rate"));
        // 1000 readings at 1/86.4 s = 1 day.
        let text = thresholds_for(&records, 5.0, Some(1000.0 / 86_400.0)).unwrap();
        assert!(text.contains(" 5 alerts over 1.00 days"), "{text}");
    }
}
