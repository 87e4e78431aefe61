//! Quality benchmark: prequential ROC-AUC / PR-AUC of every registered detector on the
//! synthetic streams (a)-(g) of `detect::synthetic` and on a public labelled series (UCR
//! anomaly archive no. 135, `tests/fixtures/ucr_135_internal_bleeding16_test.csv`, vendored
//! from the aeon wheel with its licence), printed as a markdown table.
//!
//! Every point is processed with its timestamp (`Pipeline::process_at`), as the worker does;
//! the time-series detectors also run configured with the synthetic streams' season (288
//! readings, one day).
//!
//! Protocol (as ONAD's reference numbers were measured): 20,000 points per stream, learn then
//! score each point (`learn_first = true`, unless `QUALITY_ORDER` says otherwise), AUC after the first 2,048 points, over the raw
//! scores (first table) and over the calibrated scores in [0, 1] that thresholds compare
//! (second table; the rcf3 peer has no calibrator). Detectors run at their default
//! parameters; the distance- and kernel-based ones behind a StandardScaler (`scaler`), as one
//! would configure them. The `rcf3` crate's OnlineIForest (the fastest Rust peer) runs on the
//! same streams for comparison.
//! Points/s is the whole pipeline (transforms, detector, calibrator), one core, per second of
//! the thread's CPU time (the development machine is shared; descheduled time is not counted).
//!
//! Run: `cargo bench --bench quality` (`QUALITY_ORDER=score_then_learn` runs our detectors
//! in the worker's default order instead; the rcf3 rows are always update-and-score; env
//! `QUALITY_POINTS` overrides the stream length; `QUALITY_DUMP_DIR=dir` also writes each
//! stream as `dir/<stream>.csv`, features then label, for `benches/onad_oifor.py`, which runs
//! ONAD 0.3.0's forest on the same streams).

use onad_stream::detect::metrics::{pr_auc, roc_auc};
use onad_stream::detect::pipeline::MODEL_TYPES;
use onad_stream::detect::synthetic::{generate, LabelledStream, StreamKind, StreamSpec};
use onad_stream::detect::{ParamValue, Params, PipelineSpec, StepSpec};

/// Points scored before AUC is counted.
const SKIP: usize = 2_048;
/// Stream seed (fixed: the table must be reproducible).
const SEED: u64 = 20_240_721;
/// Detectors that are configured behind a StandardScaler.
const SCALED: &[&str] = &["knn", "adaptive_svm"];
/// The public series (timestamp = reading index, one value, label), compiled in.
const UCR_135: &str = include_str!("../tests/fixtures/ucr_135_internal_bleeding16_test.csv");
/// Name of the public series in the table.
const UCR_NAME: &str = "ucr_135 (public)";

/// The UCR series as a stream: one feature, a reading a second.
fn ucr_135() -> LabelledStream {
    let (mut points, mut labels, mut timestamps_ms) = (Vec::new(), Vec::new(), Vec::new());
    for (i, line) in UCR_135.lines().skip(1).enumerate() {
        let f: Vec<&str> = line.trim().split(',').collect();
        let value: f64 = f[1].parse().expect("UCR fixture: numeric value");
        points.push(vec![value]);
        labels.push(f[2].trim() == "1");
        timestamps_ms.push(onad_stream::detect::synthetic::START_MS + i as i64 * 1_000);
    }
    LabelledStream { points, labels, timestamps_ms }
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

/// CPU seconds used by this thread so far (Linux `CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_secs() -> f64 {
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on x86_64/aarch64 Linux)
    // and 3 is CLOCK_THREAD_CPUTIME_ID.
    let rc = unsafe { clock_gettime(3, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One row of the tables: (ROC, PR) per stream of the raw and of the calibrated score, and
/// the rate.
struct Row {
    name: String,
    aucs: Vec<Option<(f64, f64)>>,
    calibrated: Vec<Option<(f64, f64)>>,
    points_per_sec: f64,
}

fn aucs(scores: &[f64], stream: &LabelledStream) -> Option<(f64, f64)> {
    let skip = SKIP.min(scores.len());
    Some((roc_auc(&scores[skip..], &stream.labels[skip..])?, pr_auc(&scores[skip..], &stream.labels[skip..])?))
}

/// ONAD's learn-then-score order, unless `QUALITY_ORDER=score_then_learn` (the worker's).
fn learn_first() -> bool {
    std::env::var("QUALITY_ORDER").map_or(true, |v| v != "score_then_learn")
}

fn run_model(model: &str, params: &[(&str, ParamValue)], streams: &[LabelledStream]) -> Result<Row, String> {
    let steps = if SCALED.contains(&model) { vec![StepSpec { kind: "scaler".into(), params: Params::new() }] } else { Vec::new() };
    let mut name = if steps.is_empty() { model.to_string() } else { format!("scaler \\| {model}") };
    if !params.is_empty() {
        let value = |v: &ParamValue| match v {
            ParamValue::Int(i) => i.to_string(),
            ParamValue::Float(f) => f.to_string(),
            ParamValue::Str(s) => format!("\"{s}\""),
            other => format!("{other:?}"),
        };
        let given: Vec<String> = params.iter().map(|(k, v)| format!("{k} = {}", value(v))).collect();
        name = format!("{name} ({})", given.join(", "));
    }
    let spec = PipelineSpec {
        model_type: model.to_string(),
        model_params: params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        preprocessing_steps: steps,
        learn_first: learn_first(),
        seed: 1,
        ..PipelineSpec::default()
    };
    let factory = spec.check().map_err(|e| format!("{name}: {e}"))?;
    let (mut rows, mut calibrated) = (Vec::new(), Vec::new());
    let (mut points, mut secs) = (0usize, 0.0);
    for stream in streams {
        let mut pipeline = factory.build(stream.points[0].len(), "bench");
        let mut raw = Vec::with_capacity(stream.points.len());
        let mut scores = Vec::with_capacity(stream.points.len());
        let start = thread_cpu_secs();
        for (x, ts) in stream.points.iter().zip(&stream.timestamps_ms) {
            let scored = pipeline.process_at(x, Some(*ts));
            raw.push(scored.raw_score);
            scores.push(scored.score);
        }
        secs += thread_cpu_secs() - start;
        points += stream.points.len();
        rows.push(aucs(&raw, stream));
        calibrated.push(aucs(&scores, stream));
    }
    Ok(Row { name, aucs: rows, calibrated, points_per_sec: points as f64 / secs })
}

fn run_rcf3(num_trees: usize, streams: &[LabelledStream]) -> Row {
    let mut rows = Vec::new();
    let (mut points, mut secs) = (0usize, 0.0);
    for stream in streams {
        let dim = stream.points[0].len();
        let Ok(mut forest) = rcf3::OnlineIForest::builder(dim).num_trees(num_trees).seed(1).build() else {
            rows.push(None);
            continue;
        };
        let data: Vec<Vec<f32>> = stream.points.iter().map(|p| p.iter().map(|v| *v as f32).collect()).collect();
        let start = thread_cpu_secs();
        let scores: Vec<f64> = data.iter().map(|x| forest.update_and_score(x).unwrap_or(f64::NAN)).collect();
        secs += thread_cpu_secs() - start;
        points += data.len();
        rows.push(aucs(&scores, stream));
    }
    Row {
        name: format!("rcf3 OnlineIForest ({num_trees} trees, peer)"),
        calibrated: vec![None; rows.len()],
        aucs: rows,
        points_per_sec: points as f64 / secs,
    }
}

fn main() {
    let len = std::env::var("QUALITY_POINTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut streams: Vec<LabelledStream> =
        StreamKind::ALL.iter().map(|kind| generate(&StreamSpec { len, ..StreamSpec::benchmark(*kind, SEED) })).collect();
    if let Ok(dir) = std::env::var("QUALITY_DUMP_DIR") {
        for (kind, stream) in StreamKind::ALL.iter().zip(&streams) {
            let mut csv = String::new();
            for (x, label) in stream.points.iter().zip(&stream.labels) {
                let row: Vec<String> = x.iter().map(|v| format!("{v:?}")).collect();
                csv.push_str(&format!("{},{}\n", row.join(","), *label as u8));
            }
            let path = std::path::Path::new(&dir).join(format!("{}.csv", kind.name()));
            if let Err(e) = std::fs::write(&path, csv) {
                eprintln!("cannot write {}: {e}", path.display());
            }
        }
    }
    streams.push(ucr_135());
    let mut rows = Vec::new();
    let daily = [("season_length", ParamValue::Int(288))];
    // ONAD's MovingMedian score (ours with `score = "shift"` equals it within 1e-6 on one
    // feature, tests/detect_parity.rs), and the time-series detectors told the synthetic
    // streams' season.
    let shift = [("score", ParamValue::Str("shift".into()))];
    let configured: [(&str, &[(&str, ParamValue)]); 3] = [("moving_median", &shift), ("holt_winters", &daily), ("arima", &daily)];
    let runs = MODEL_TYPES.iter().map(|m| (*m, &[][..])).chain(configured);
    for (model, params) in runs {
        match run_model(model, params, &streams) {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("skipped {e}"),
        }
    }
    rows.push(run_rcf3(32, &streams));
    rows.push(run_rcf3(100, &streams));

    let mut header: Vec<String> = StreamKind::ALL.iter().map(|k| k.name().to_string()).collect();
    header.push(UCR_NAME.to_string());
    let cells = |aucs: &[Option<(f64, f64)>]| -> String {
        let cells: Vec<String> = aucs
            .iter()
            .map(|a| match a {
                Some((roc, pr)) => format!("{roc:.3} / {pr:.3}"),
                None => "n/a".to_string(),
            })
            .collect();
        cells.join(" | ")
    };
    let order = if learn_first() { "learn, then score" } else { "score, then learn" };
    println!("Prequential ({order}), {len} points per stream, AUC after the first {SKIP}; ROC-AUC / PR-AUC.\n");
    println!("Raw score:\n");
    println!("| detector | {} | points/s |", header.join(" | "));
    println!("|---|{}---:|", "---|".repeat(header.len()));
    for row in &rows {
        println!("| {} | {} | {:.0} |", row.name, cells(&row.aucs), row.points_per_sec);
    }
    println!("\nCalibrated score (what the thresholds compare):\n");
    println!("| detector | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(header.len()));
    for row in rows.iter().filter(|r| r.calibrated.iter().any(Option::is_some)) {
        println!("| {} | {} |", row.name, cells(&row.calibrated));
    }
}
