//! `onad-stream score`: backtest a configuration on a file of readings.
//!
//! Runs the configured pipeline prequentially over a CSV (header row), JSON-lines or (feature
//! `parquet`) Parquet file, one pipeline per `--key` value (or one for the whole file), exactly
//! as the worker would: each row is scored, then learned, in file order. Features are the
//! columns other than the key, label and timestamp columns, in header order (JSON: the first
//! row's key order, fixed from then on). One JSON line per row goes to `--output` (or stdout):
//! `{"row", "key", "score", "raw_score", "is_anomaly", "severity"}`, `row` counting data rows
//! from 1, plus `"bands"` (`expected`, `lower`, `upper`, `deviation` per feature) for the
//! time-series detectors. The first timestamp column present (ms since the epoch or an RFC
//! 3339 date-time, UTC without an offset: `2014-04-10 00:00:00`) is the reading's time, as
//! `timestamp_ms` is in the worker. A summary (rows, alerts by severity, points/s, state
//! bytes; with `--label` ROC-AUC and PR-AUC of the calibrated and of the raw score) goes to
//! stderr. A row that cannot be read (a missing or non-numeric feature, NaN, a bad label)
//! stops the run with an error naming the row and column; nothing is silently skipped.
//!
//! `--plot` draws the run (`plot.rs`); `--alerts-per-day` prints the `[thresholds]` that
//! would have given that many alerts on this history (`budget.rs`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::score_input::{read_input, InputArgs, Row};
use super::score_run::{severity_name, Keep, Record, Run};
use super::{budget, plot, ConfigArgs};
use crate::detect::Scored;

/// Arguments of `onad-stream score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The readings and their column roles.
    #[command(flatten)]
    pub input: InputArgs,
    /// Where to write the score lines (default: stdout).
    #[arg(long, short = 'o', env = "ONAD_SCORE_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Draw the run into this `.svg` or `.png`: per sensor, its features, the calibrated score
    /// over the severity bands, flagged readings and (with `--label`) the true anomalies.
    #[arg(long, env = "ONAD_SCORE_PLOT")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub plot_opts: plot::PlotOpts,
    /// Print the `[thresholds]` section that would have given about N alerts per day on this
    /// file (days from the timestamp column, or `--rate`).
    #[arg(long, env = "ONAD_SCORE_ALERTS_PER_DAY")]
    pub alerts_per_day: Option<f64>,
    /// Readings per second, for `--alerts-per-day` on a file without timestamps.
    #[arg(long, env = "ONAD_SCORE_RATE", requires = "alerts_per_day")]
    pub rate: Option<f64>,
}

/// Run the subcommand.
pub fn main(args: ScoreArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    if let Some(n) = args.alerts_per_day {
        anyhow::ensure!(n.is_finite() && n > 0.0, "--alerts-per-day must be a positive number");
    }
    if let Some(r) = args.rate {
        anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be a positive number");
    }
    if let Some(p) = &args.plot {
        plot::check_path(p)?;
    }
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(File::create(path).with_context(|| format!("cannot create {}", path.display()))?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    // Without `learn_anomalies` the threshold changes what is learned: the budget search
    // re-runs the rows, so it needs their values.
    let rescoring = args.alerts_per_day.is_some() && !config.raw.learn_anomalies;
    let keep = if args.plot.is_some() || rescoring {
        Keep::Values
    } else if args.alerts_per_day.is_some() {
        Keep::Scores
    } else {
        Keep::Nothing
    };
    let mut run = Run::new(&config.pipeline, keep);
    let started = Instant::now();
    let features = read_input(&args.input, |row| {
        let s = run.process(&row)?;
        write_line(&mut *out, run.rows, &row.key, &s)
    })?;
    out.flush()?;
    let mut err = std::io::stderr().lock();
    run.summary(&mut err, started.elapsed(), args.input.eval_after)?;
    if let Some(path) = &args.plot {
        plot::draw(path, &args.plot_opts, &run, &features, &config.raw.thresholds, args.input.label.is_some())?;
        writeln!(err, "plot: {}", path.display())?;
    }
    if let Some(n) = args.alerts_per_day {
        let report = if rescoring {
            budget::thresholds_with_feedback(&run.records, n, args.rate, |t| rescore(&args.config, &run, t))?
        } else {
            budget::thresholds_for(&run.records, n, args.rate)?
        };
        write!(err, "{report}")?;
    }
    Ok(())
}

/// The rows `run` kept, scored again by its configuration with `thresholds.anomaly = t`.
fn rescore(config: &ConfigArgs, run: &Run, t: f64) -> anyhow::Result<Vec<Record>> {
    let mut args = config.clone();
    args.overrides.push(format!("thresholds.anomaly={t:?}"));
    let config = args.load()?;
    let mut again = Run::new(&config.pipeline, Keep::Scores);
    for r in &run.records {
        let key = run.keys.get(r.key).cloned().unwrap_or_default();
        again.process(&Row { key, values: r.values.clone(), label: r.label, ts: r.ts })?;
    }
    Ok(again.records)
}

fn write_line(out: &mut dyn Write, row: usize, key: &str, s: &Scored) -> anyhow::Result<()> {
    let mut line = serde_json::json!({
        "row": row,
        "key": key,
        "score": s.score,
        "raw_score": s.raw_score,
        "is_anomaly": s.is_anomaly,
        "severity": severity_name(s.severity),
    });
    if !s.bands.is_empty() {
        line["bands"] = s
            .bands
            .iter()
            .map(|b| serde_json::json!({"expected": b.expected, "lower": b.lower, "upper": b.upper, "deviation": b.deviation}))
            .collect();
    }
    writeln!(out, "{line}")?;
    Ok(())
}
