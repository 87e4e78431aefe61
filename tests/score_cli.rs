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

/// `onad-stream synth`: the labelled synthetic fleet as CSV (`timestamp_ms,sensor,...,label`).
fn synth(dir: &Path, rows: usize, sensors: usize) -> PathBuf {
    let path = dir.join(format!("fleet-{rows}.csv"));
    let o = run(&["synth", "-o", path.to_str().unwrap(), "--rows", &rows.to_string(), "--sensors", &sensors.to_string()]);
    assert!(o.status.success(), "synth failed:\n{}", stderr(&o));
    path
}

/// Alerts (`is_anomaly`) among the score lines of `path`.
fn flagged_lines(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).expect("score lines");
    text.lines().filter(|l| serde_json::from_str::<Value>(l).expect("JSON line")["is_anomaly"] == true).count()
}

#[test]
fn plot_draws_a_png_and_an_svg_of_the_asked_size_with_lines_bands_and_marks() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = synth(dir.path(), 6000, 3);
    let scores = dir.path().join("scores.jsonl");
    let png_path = dir.path().join("run.png");
    let (fleet, scores_s) = (fleet.to_str().unwrap(), scores.to_str().unwrap());
    let args = ["score", "--input", fleet, "--key", "sensor", "--label", "label", "-o", scores_s, "--plot-size", "900x600"];
    let o = run(&[&args[..], &["--plot", png_path.to_str().unwrap()]].concat());
    assert!(o.status.success(), "score --plot failed:\n{}", stderr(&o));
    assert!(flagged_lines(&scores) > 0, "the fleet's spikes are flagged");

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_path).expect("the PNG is written")));
    let mut reader = decoder.read_info().expect("a valid PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    assert_eq!((info.width, info.height), (900, 600), "the asked size");
    assert_eq!(info.color_type, png::ColorType::Rgb, "plotters writes RGB");
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(3).collect();
    let white = pixels.iter().filter(|p| **p == [255, 255, 255]).count();
    let flag_red = pixels.iter().filter(|p| **p == [213, 0, 0]).count();
    let colours: std::collections::HashSet<&[u8]> = pixels.iter().copied().collect();
    assert!(white < pixels.len() * 95 / 100, "lines and bands cover the canvas: {white} of {} white", pixels.len());
    assert!(flag_red > 50, "flagged readings are drawn as red dots ({flag_red} red pixels)");
    assert!(colours.len() > 20, "features, score, bands, text: {} colours", colours.len());

    let svg_path = dir.path().join("run.svg");
    let o = run(&[&args[..], &["--plot", svg_path.to_str().unwrap(), "--plot-sensors", "2"]].concat());
    assert!(o.status.success(), "score --plot .svg failed:\n{}", stderr(&o));
    let svg = std::fs::read_to_string(&svg_path).expect("the SVG is written");
    assert!(svg.starts_with("<svg width=\"900\" height=\"600\""), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.trim_end().ends_with("</svg>"), "a complete document");
    assert_eq!(svg.matches("features, each scaled to its range").count(), 2, "one panel pair per sensor asked");
    assert!(svg.contains("sensor-00") && svg.contains("critical &gt; 0.99"), "sensor names and severity bands are labelled");
    assert!(svg.matches("<circle").count() > 0 && svg.contains("fill=\"#D50000\""), "flagged readings are marked");
    assert!(svg.matches("<polyline").count() >= 2 * 4, "3 feature lines and the score line per sensor");
    let o = run(&[&args[..], &["--plot", "run.gif"]].concat());
    assert!(!o.status.success() && stderr(&o).contains(".svg or .png"), "{}", stderr(&o));
}

#[test]
fn compare_scores_every_config_in_one_pass_and_all_detectors() {
    let dir = tempfile::tempdir().unwrap();
    let knn = knn_config(dir.path());
    let z = write(dir.path(), "z.toml", "model_type = \"zscore\"\n");
    let input = write(dir.path(), "readings.csv", &csv_readings(3000));
    let (knn, z, input) = (knn.to_str().unwrap(), z.to_str().unwrap(), input.to_str().unwrap());
    let o = run(&[
        "compare",
        "--input",
        input,
        "--key",
        "sensor",
        "--label",
        "label",
        "--eval-after",
        "400",
        "--config",
        knn,
        "--config",
        z,
        "--all-detectors",
    ]);
    assert!(o.status.success(), "compare failed:\n{}", stderr(&o));
    let table = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| config"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 2 + 13, "two configs and the 13 detectors at defaults:\n{table}");
    assert_eq!((rows[0][1], rows[0][2]), ("knn", "knn"), "{table}");
    assert_eq!((rows[1][1], rows[1][2]), ("z", "zscore"), "{table}");
    assert!(rows[2][1].ends_with("(defaults)"), "{table}");
    for r in &rows {
        let roc: f64 = r[3].parse().unwrap_or_else(|_| panic!("ROC-AUC of {r:?}:\n{table}"));
        let pr: f64 = r[4].parse().unwrap_or_else(|_| panic!("PR-AUC of {r:?}"));
        assert!((0.0..=1.0).contains(&roc) && (0.0..=1.0).contains(&pr), "{r:?}");
        assert!(r[5].contains(" / "), "alerts by severity: {r:?}");
        assert!(r[6].parse::<f64>().unwrap() > 0.0 && r[7].parse::<usize>().unwrap() > 0, "points/s and state bytes: {r:?}");
    }
    let knn_roc: f64 = rows[0][3].parse().unwrap();
    assert!(knn_roc > 0.9, "the scaled KNN finds the shifted rows:\n{table}");
    assert!(table.contains("3000 rows") && table.contains("2 sensors"), "{table}");
    let o = run(&["compare", "--input", input]);
    assert!(!o.status.success() && stderr(&o).contains("nothing to compare"), "{}", stderr(&o));
}

#[test]
fn alerts_per_day_prints_thresholds_that_give_that_budget_when_pasted_into_the_config() {
    let dir = tempfile::tempdir().unwrap();
    // 30,000 readings 6 s apart: 2.08 days of 10 sensors.
    let fleet = synth(dir.path(), 30_000, 10);
    let fleet = fleet.to_str().unwrap();
    // Flagged readings are not learned: the threshold changes the models, so the budget
    // search has to re-run the rows per candidate threshold.
    let base = "model_type = \"zscore\"\nlearn_anomalies = false\n";
    let config = write(dir.path(), "z.toml", base);
    let per_day = 12.0;
    let o = run(&[
        "score",
        "-c",
        config.to_str().unwrap(),
        "--input",
        fleet,
        "--key",
        "sensor",
        "--label",
        "label",
        "-o",
        "/dev/null",
        "--alerts-per-day",
        "12",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let section: Vec<&str> = err.lines().skip_while(|l| *l != "[thresholds]").take(5).collect();
    assert_eq!(section.len(), 5, "a [thresholds] section with four keys:\n{err}");
    assert!(err.contains("recall") && err.contains("precision"), "with labels, what the budget would have caught:\n{err}");

    let tuned = write(dir.path(), "tuned.toml", &format!("{base}{}\n", section.join("\n")));
    let scores = dir.path().join("scores.jsonl");
    let o = run(&[
        "score",
        "-c",
        tuned.to_str().unwrap(),
        "--input",
        fleet,
        "--key",
        "sensor",
        "--label",
        "label",
        "-o",
        scores.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "the pasted section is a valid config:\n{}", stderr(&o));
    let days = 30_000.0 * 6.0 / 86_400.0;
    let got = flagged_lines(&scores) as f64 / days;
    assert!((per_day * 0.7..=per_day * 1.3).contains(&got), "{got:.1} alerts/day with the printed thresholds, asked {per_day}:\n{err}");

    let o = run(&["score", "--input", fleet, "--key", "sensor", "--timestamp", "none", "-o", "/dev/null", "--alerts-per-day", "5"]);
    assert!(!o.status.success() && stderr(&o).contains("--rate"), "no timestamps, no rate: {}", stderr(&o));
}

#[test]
fn progress_stays_off_stderr_when_it_is_not_a_terminal_and_quiet_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = synth(dir.path(), 20_000, 5);
    for quiet in [&[][..], &["--quiet"][..]] {
        let o = run(&[&["score", "--input", fleet.to_str().unwrap(), "--key", "sensor", "-o", "/dev/null"][..], quiet].concat());
        let err = stderr(&o);
        assert!(o.status.success(), "{err}");
        assert!(!err.contains('\r') && !err.contains('\u{1b}') && !err.contains("ETA"), "no bar off a terminal: {err:?}");
        assert_eq!(err.lines().count(), 1, "only the summary: {err:?}");
    }
}

/// Writes `rows` of [`csv_readings`] as Parquet with the `parquet` crate (the optional
/// dependency, in scope with `--features parquet`): a TIMESTAMP(MILLIS)
/// time, a UTF-8 key, double features and a boolean label, snappy-compressed (pandas' default).
#[cfg(feature = "parquet")]
fn write_parquet(path: &Path, rows: usize) {
    use parquet::basic::Compression;
    use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let text = csv_readings(rows);
    let cells: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let schema = "message readings { required int64 timestamp (TIMESTAMP(MILLIS,true)); required binary sensor (UTF8); \
                  required double temp; required double pressure; required double vibration; required boolean label; }";
    let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut writer = SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut index = 0;
    while let Some(mut col) = group.next_column().unwrap() {
        let column: Vec<&str> = cells.iter().map(|c| c[index]).collect();
        match index {
            0 => col.typed::<Int64Type>().write_batch(&column.iter().map(|v| v.parse().unwrap()).collect::<Vec<i64>>(), None, None),
            1 => col.typed::<ByteArrayType>().write_batch(&column.iter().map(|v| ByteArray::from(*v)).collect::<Vec<_>>(), None, None),
            5 => col.typed::<BoolType>().write_batch(&column.iter().map(|v| *v == "1").collect::<Vec<_>>(), None, None),
            _ => col.typed::<DoubleType>().write_batch(&column.iter().map(|v| v.parse().unwrap()).collect::<Vec<f64>>(), None, None),
        }
        .unwrap();
        col.close().unwrap();
        index += 1;
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[cfg(feature = "parquet")]
#[test]
fn parquet_input_scores_exactly_like_the_same_rows_as_csv() {
    let dir = tempfile::tempdir().unwrap();
    let config = knn_config(dir.path());
    let csv = write(dir.path(), "readings.csv", &csv_readings(2000));
    let parquet = dir.path().join("readings.parquet");
    write_parquet(&parquet, 2000);
    let score = |input: &Path| {
        let o = run(&["score", "-c", config.to_str().unwrap(), "--input", input.to_str().unwrap(), "--key", "sensor", "--label", "label"]);
        assert!(o.status.success(), "score {} failed:\n{}", input.display(), stderr(&o));
        let err = stderr(&o);
        (String::from_utf8(o.stdout).unwrap(), err.lines().filter(|l| l.starts_with("ROC-AUC")).map(String::from).collect::<Vec<_>>())
    };
    let (from_csv, auc_csv) = score(&csv);
    let (from_parquet, auc_parquet) = score(&parquet);
    assert_eq!(from_parquet.lines().count(), 2000);
    assert_eq!(from_parquet, from_csv, "same rows, same roles (key, label, TIMESTAMP column), same scores");
    assert_eq!(auc_parquet, auc_csv);
    assert!(!auc_csv.is_empty());
}

#[cfg(not(feature = "parquet"))]
#[test]
fn parquet_input_without_the_feature_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "r.parquet", "PAR1");
    let o = run(&["score", "--input", input.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("--features parquet"), "{}", stderr(&o));
}
