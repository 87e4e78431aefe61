//! `onad-stream score`, run as the real binary on files written by the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onad-stream"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// KNN behind a scaler, anomaly threshold 0.25 (1 in ~18 readings): the shifted rows of
/// [`csv_readings`] come every 50 readings of a sensor, so the calibrated score (a rarity)
/// puts them at ~1 in 40 (score ~0.33), far from the default 0.8 (1 in 10,000).
fn knn_config(dir: &Path) -> PathBuf {
    write(
        dir,
        "knn.toml",
        "model_type = \"knn\"\n[model_params]\nk = 5\nwindow_size = 200\n\n[[preprocessing_steps]]\ntype = \"scaler\"\n\n[thresholds]\nanomaly = 0.25\nmedium = 0.25\n",
    )
}

/// Deterministic readings: two sensors, three features on very different scales, every 50th
/// reading of each sensor shifted far out (label 1).
fn csv_readings(rows: usize) -> String {
    let mut s = String::from("timestamp,sensor,temp,pressure,vibration,label\n");
    let mut state = 12345u64;
    let mut noise = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0
    };
    for i in 0..rows {
        let sensor = if i % 2 == 0 { "s-1" } else { "s-2" };
        let anomaly = (i / 2) % 50 == 49;
        let shift = if anomaly { 8.0 } else { 0.0 };
        let temp = 20.0 + noise() + shift;
        let pressure = 1000.0 + 30.0 * (noise() + shift);
        let vibration = 0.01 * (noise() + shift);
        s.push_str(&format!("{},{sensor},{temp},{pressure},{vibration},{}\n", 1_700_000_000_000u64 + i as u64, anomaly as u8));
    }
    s
}

fn run(args: &[&str]) -> Output {
    bin().args(args).env_remove("ONAD_CONFIG").output().expect("run onad-stream")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn summary_value(stderr: &str, line_suffix: &str, metric: &str) -> f64 {
    let line = stderr.lines().find(|l| l.ends_with(line_suffix)).unwrap_or_else(|| panic!("no `{line_suffix}` line in:\n{stderr}"));
    let after = line.split(metric).nth(1).unwrap_or_else(|| panic!("no {metric} in `{line}`"));
    after
        .trim_start_matches(':')
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad {metric} in `{line}`"))
}

#[test]
fn csv_with_key_and_label_scores_every_row_per_sensor_and_reports_auc() {
    let dir = tempfile::tempdir().unwrap();
    let config = knn_config(dir.path());
    let input = write(dir.path(), "readings.csv", &csv_readings(4000));
    let out_path = dir.path().join("scores.jsonl");
    let o = run(&[
        "score",
        "--config",
        config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--key",
        "sensor",
        "--label",
        "label",
        "--output",
        out_path.to_str().unwrap(),
        "--eval-after",
        "400",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "score failed:\n{err}");
    let lines: Vec<Value> =
        std::fs::read_to_string(&out_path).unwrap().lines().map(|l| serde_json::from_str(l).expect("each output line is JSON")).collect();
    assert_eq!(lines.len(), 4000, "one score line per row");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["row"], i + 1);
        let score = l["score"].as_f64().expect("score");
        assert!((0.0..=1.0).contains(&score), "calibrated score in [0, 1]: {l}");
        assert!(l["raw_score"].as_f64().is_some() && l["is_anomaly"].is_boolean() && l["severity"].is_string(), "{l}");
    }
    assert_eq!(lines[0]["key"], "s-1");
    assert_eq!(lines[1]["key"], "s-2");
    // The shifted readings of each sensor are found by its own pipeline.
    let roc = summary_value(&err, "(raw_score)", "ROC-AUC");
    assert!(roc > 0.95, "ROC-AUC of raw scores {roc}:\n{err}");
    assert!(summary_value(&err, "(raw_score)", "PR-AUC") > 0.5, "{err}");
    assert!(err.contains("keys: 2"), "two sensors, two pipelines:\n{err}");
    assert!(err.contains("points/s") && err.contains("state bytes"), "{err}");
    let flagged = lines.iter().filter(|l| l["is_anomaly"] == true).count();
    assert!(flagged > 0, "some rows cross the anomaly threshold");
}

#[test]
fn non_numeric_value_stops_with_an_error_naming_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = knn_config(dir.path());
    let input = write(dir.path(), "bad.csv", "a,b\n1,2\n3,4\n5,oops\n7,8\n");
    let o = run(&["score", "--config", config.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!o.status.success(), "a bad row must fail the run");
    assert!(err.contains("row 3") && err.contains("line 4") && err.contains("`b`") && err.contains("oops"), "{err}");
}

#[test]
fn jsonl_input_goes_to_stdout_and_rejects_a_changed_feature_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "z.toml", "model_type = \"zscore\"\n");
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!("{{\"id\": \"m\", \"x\": {}, \"y\": {}, \"timestamp_ms\": {i}}}\n", (i % 7) as f64, (i % 5) as f64 * 2.0));
    }
    let input = write(dir.path(), "r.jsonl", &text);
    let o = run(&["score", "--config", config.to_str().unwrap(), "--input", input.to_str().unwrap(), "--key", "id"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 300);
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["key"], "m");
    assert_eq!(last["row"], 300);

    text.push_str("{\"id\": \"m\", \"x\": 1, \"z\": 2}\n");
    let input = write(dir.path(), "r2.jsonl", &text);
    let o = run(&["score", "--config", config.to_str().unwrap(), "--input", input.to_str().unwrap(), "--key", "id"]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("row 301") && err.contains("`z`"), "{err}");
}

#[test]
fn unknown_label_column_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = knn_config(dir.path());
    let input = write(dir.path(), "r.csv", "a,b\n1,2\n");
    let o = run(&["score", "--config", config.to_str().unwrap(), "--input", input.to_str().unwrap(), "--label", "truth"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no column `truth`"), "{}", stderr(&o));
}

#[test]
fn arima_finds_the_anomaly_of_the_public_ucr_series_and_prints_bands() {
    // UCR anomaly archive no. 135 (vendored from aeon's wheel, see its LICENSE file):
    // `timestamp,value,is_anomaly`, 12 anomalous readings of 7,501.
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "arima.toml", "model_type = \"arima\"\n");
    let input = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ucr_135_internal_bleeding16_test.csv");
    let out_path = dir.path().join("scores.jsonl");
    let o = run(&[
        "score",
        "--config",
        config.to_str().unwrap(),
        "--input",
        input,
        "--label",
        "is_anomaly",
        "--eval-after",
        "2048",
        "-o",
        out_path.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(summary_value(&err, "(raw_score)", "ROC-AUC") > 0.95, "{err}");
    let lines: Vec<Value> =
        std::fs::read_to_string(&out_path).unwrap().lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 7_501);
    let last = &lines[7_500]["bands"][0];
    let (lower, expected, upper) = (last["lower"].as_f64().unwrap(), last["expected"].as_f64().unwrap(), last["upper"].as_f64().unwrap());
    assert!(lower < expected && expected < upper, "{last}");
    assert!(lines[10].get("bands").is_none(), "no band while the model warms up");
}
