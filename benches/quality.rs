//! Quality benchmark: prequential ROC-AUC / PR-AUC of every registered detector on the
//! synthetic streams (a)-(d) of `detect::synthetic`, printed as a markdown table.
//!
//! Protocol (as ONAD's reference numbers were measured): 20,000 points per stream, learn then
//! score each point (`learn_first = true`), AUC after the first 2,048 points, over the raw
//! scores (first table) and over the calibrated scores in [0, 1] that thresholds compare
//! (second table; the rcf3 peer has no calibrator). Detectors run at their default
//! parameters; the distance- and kernel-based ones behind a StandardScaler (`scaler`), as one
//! would configure them. The `rcf3` crate's OnlineIForest (the fastest Rust peer) runs on the
//! same streams for comparison.
//! Points/s is the whole pipeline (transforms, detector, calibrator), one core, per second of
//! the thread's CPU time (the development machine is shared; descheduled time is not counted).
//!
//! Run: `cargo bench --bench quality` (env `QUALITY_POINTS` overrides the stream length;
//! `QUALITY_DUMP_DIR=dir` also writes each stream as `dir/<stream>.csv`, features then label,
//! for `benches/onad_oifor.py`, which runs ONAD 0.3.0's forest on the same streams).

use onad_stream::detect::metrics::{pr_auc, roc_auc};
use onad_stream::detect::pipeline::MODEL_TYPES;
use onad_stream::detect::synthetic::{generate, LabelledStream, StreamKind, StreamSpec};
use onad_stream::detect::{Params, PipelineSpec, StepSpec};

/// Points scored before AUC is counted.
const SKIP: usize = 2_048;
/// Stream seed (fixed: the table must be reproducible).
const SEED: u64 = 20_240_721;
/// Detectors that are configured behind a StandardScaler.
const SCALED: &[&str] = &["knn", "adaptive_svm"];

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

fn run_model(model: &str, streams: &[LabelledStream]) -> Result<Row, String> {
    let steps = if SCALED.contains(&model) { vec![StepSpec { kind: "scaler".into(), params: Params::new() }] } else { Vec::new() };
    let name = if steps.is_empty() { model.to_string() } else { format!("scaler \\| {model}") };
    let spec =
        PipelineSpec { model_type: model.to_string(), preprocessing_steps: steps, learn_first: true, seed: 1, ..PipelineSpec::default() };
    let factory = spec.check().map_err(|e| format!("{name}: {e}"))?;
    let (mut rows, mut calibrated) = (Vec::new(), Vec::new());
    let (mut points, mut secs) = (0usize, 0.0);
    for stream in streams {
        let mut pipeline = factory.build(stream.points[0].len(), "bench");
        let mut raw = Vec::with_capacity(stream.points.len());
        let mut scores = Vec::with_capacity(stream.points.len());
        let start = thread_cpu_secs();
        for x in &stream.points {
            let scored = pipeline.process(x);
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
    let streams: Vec<LabelledStream> =
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
    let mut rows = Vec::new();
    for model in MODEL_TYPES {
        match run_model(model, &streams) {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("skipped {e}"),
        }
    }
    rows.push(run_rcf3(32, &streams));
    rows.push(run_rcf3(100, &streams));

    let header: Vec<String> = StreamKind::ALL.iter().map(|k| k.name().to_string()).collect();
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
    println!("Prequential (learn, then score), {len} points per stream, AUC after the first {SKIP}; ROC-AUC / PR-AUC.\n");
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
