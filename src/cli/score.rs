//! `onad-stream score`: backtest a configuration on a file of readings.
//!
//! Runs the configured pipeline prequentially over a CSV (header row) or JSON-lines file, one
//! pipeline per `--key` value (or one for the whole file), exactly as the worker would: each
//! row is scored, then learned, in file order. Features are the CSV columns (JSON keys) other
//! than the key, label and timestamp columns, in header order (JSON: the first row's key order,
//! fixed from then on). One JSON line per row goes to `--output` (or stdout):
//! `{"row", "key", "score", "raw_score", "is_anomaly", "severity"}`, `row` counting data rows
//! from 1, plus `"bands"` (`expected`, `lower`, `upper`, `deviation` per feature) for the
//! time-series detectors. The first timestamp column present (ms since the epoch or an RFC
//! 3339 date-time, UTC without an offset: `2014-04-10 00:00:00`) is the reading's time, as `timestamp_ms` is in
//! the worker. With `--label`, a summary (ROC-AUC and PR-AUC of the calibrated and of the raw
//! score, points/s, state bytes) goes to stderr. A row that cannot be read (a missing or
//! non-numeric feature, NaN, a bad label) stops the run with an error naming the row and
//! column; nothing is silently skipped.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

use super::readings_file::{csv_error, csv_line, csv_reader, is_blank, parse_timestamp};
use super::ConfigArgs;
use crate::detect::metrics::{pr_auc, roc_auc};
use crate::detect::{Pipeline, PipelineFactory, Severity};

/// Arguments of `onad-stream score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Readings: `.csv` (header row) or `.jsonl` / `.json` (one object per line).
    #[arg(long, env = "ONAD_SCORE_INPUT")]
    pub input: PathBuf,
    /// Column holding the sensor id: one pipeline per distinct value (default: one pipeline).
    #[arg(long, env = "ONAD_SCORE_KEY")]
    pub key: Option<String>,
    /// Column holding the ground truth (1/0, true/false): enables the ROC-AUC / PR-AUC summary.
    #[arg(long, env = "ONAD_SCORE_LABEL")]
    pub label: Option<String>,
    /// Column(s) that are not features (repeatable; default: `timestamp` and `timestamp_ms`).
    #[arg(long = "timestamp", env = "ONAD_SCORE_TIMESTAMP", value_delimiter = ',')]
    pub timestamp: Vec<String>,
    /// Where to write the score lines (default: stdout).
    #[arg(long, short = 'o', env = "ONAD_SCORE_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Leave the first N rows out of the AUC summary (model warm-up).
    #[arg(long, default_value_t = 0, env = "ONAD_SCORE_EVAL_AFTER")]
    pub eval_after: usize,
}

/// One readable row.
struct Row {
    /// Sensor id ("" without `--key`).
    key: String,
    /// Features in the fixed order.
    values: Vec<f64>,
    /// Ground truth, when `--label` is given.
    label: Option<bool>,
    /// The reading's time in ms since the epoch, from the first timestamp column present.
    ts: Option<i64>,
}

/// Which columns play which role.
struct Roles {
    key: Option<String>,
    label: Option<String>,
    skip: Vec<String>,
}

impl Roles {
    fn is_feature(&self, name: &str) -> bool {
        Some(name) != self.key.as_deref() && Some(name) != self.label.as_deref() && !self.skip.iter().any(|s| s == name)
    }
}

/// Run the subcommand.
pub fn main(args: ScoreArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let roles = Roles {
        key: args.key.clone(),
        label: args.label.clone(),
        skip: if args.timestamp.is_empty() { vec!["timestamp".into(), "timestamp_ms".into()] } else { args.timestamp.clone() },
    };
    let file = File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    let reader = BufReader::new(file);
    let is_json = matches!(args.input.extension().and_then(|e| e.to_str()), Some("jsonl" | "json" | "ndjson"));
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(File::create(path).with_context(|| format!("cannot create {}", path.display()))?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let mut run = Run::new(&config.pipeline);
    let started = Instant::now();
    if is_json {
        read_jsonl(reader, &roles, |row| run.score(row, &mut out))?;
    } else {
        read_csv(reader, &roles, |row| run.score(row, &mut out))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    out.flush()?;
    run.summary(elapsed, args.eval_after)
}

/// The pipelines and what the summary needs.
struct Run<'a> {
    factory: &'a PipelineFactory,
    pipelines: HashMap<String, Pipeline>,
    rows: usize,
    anomalies: usize,
    /// (score, raw_score, label) of each labelled row.
    labelled: Vec<(f64, f64, bool)>,
}

impl<'a> Run<'a> {
    fn new(factory: &'a PipelineFactory) -> Self {
        Self { factory, pipelines: HashMap::new(), rows: 0, anomalies: 0, labelled: Vec::new() }
    }

    fn score(&mut self, row: Row, out: &mut dyn Write) -> anyhow::Result<()> {
        self.rows += 1;
        let pipeline = match self.pipelines.get_mut(&row.key) {
            Some(p) => p,
            None => {
                let p = self
                    .factory
                    .try_build(row.values.len(), &row.key)
                    .with_context(|| format!("cannot build the pipeline for {} features", row.values.len()))?;
                self.pipelines.entry(row.key.clone()).or_insert(p)
            }
        };
        let s = pipeline.process_at(&row.values, row.ts);
        if s.is_anomaly {
            self.anomalies += 1;
        }
        if let Some(l) = row.label {
            self.labelled.push((s.score, s.raw_score, l));
        }
        let line = serde_json::json!({
            "row": self.rows,
            "key": row.key,
            "score": s.score,
            "raw_score": s.raw_score,
            "is_anomaly": s.is_anomaly,
            "severity": severity_name(s.severity),
        });
        let mut line = line;
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

    fn summary(&self, elapsed: f64, eval_after: usize) -> anyhow::Result<()> {
        let mut state_bytes = 0usize;
        for p in self.pipelines.values() {
            state_bytes += postcard::to_stdvec(p).context("cannot serialize a pipeline")?.len();
        }
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "rows: {}  keys: {}  anomalies: {}  points/s: {:.0}  state bytes: {} ({} per key)",
            self.rows,
            self.pipelines.len(),
            self.anomalies,
            self.rows as f64 / elapsed.max(1e-9),
            state_bytes,
            state_bytes / self.pipelines.len().max(1),
        )?;
        if self.labelled.is_empty() {
            return Ok(());
        }
        let eval = &self.labelled[eval_after.min(self.labelled.len())..];
        let labels: Vec<bool> = eval.iter().map(|e| e.2).collect();
        let positives = labels.iter().filter(|l| **l).count();
        let score: Vec<f64> = eval.iter().map(|e| e.0).collect();
        let raw: Vec<f64> = eval.iter().map(|e| e.1).collect();
        let (Some(roc_s), Some(pr_s), Some(roc_r), Some(pr_r)) =
            (roc_auc(&score, &labels), pr_auc(&score, &labels), roc_auc(&raw, &labels), pr_auc(&raw, &labels))
        else {
            writeln!(err, "AUC: undefined ({positives} anomalies among {} evaluated rows)", labels.len())?;
            return Ok(());
        };
        writeln!(
            err,
            "evaluated rows: {} (after {eval_after})  anomalies: {positives}\nROC-AUC: {:.4}  PR-AUC: {:.4}  (score)\nROC-AUC: {:.4}  PR-AUC: {:.4}  (raw_score)",
            labels.len(),
            roc_s,
            pr_s,
            roc_r,
            pr_r,
        )?;
        Ok(())
    }
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// Parse a label value.
fn parse_label(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "anomaly" => Some(true),
        "0" | "0.0" | "false" | "no" | "normal" | "" => Some(false),
        _ => None,
    }
}

fn read_csv(reader: impl Read, roles: &Roles, mut f: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut reader = csv_reader(reader);
    let header: Vec<String> =
        reader.headers().map_err(|e| anyhow::anyhow!("header: {}", csv_error(&e)))?.iter().map(String::from).collect();
    if header.is_empty() {
        bail!("the input is empty (a CSV needs a header row)");
    }
    let col = |name: &Option<String>| -> anyhow::Result<Option<usize>> {
        match name {
            None => Ok(None),
            Some(n) => header.iter().position(|h| h == n).map(Some).ok_or_else(|| anyhow::anyhow!("no column `{n}` in the header")),
        }
    };
    let key_col = col(&roles.key)?;
    let label_col = col(&roles.label)?;
    let ts_col = roles.skip.iter().find_map(|name| header.iter().position(|h| h == name));
    let features: Vec<usize> = (0..header.len()).filter(|i| roles.is_feature(&header[*i])).collect();
    if features.is_empty() {
        bail!("no feature columns in the header {header:?}");
    }
    let mut row_no = 0;
    for record in reader.into_records() {
        let fields = record.map_err(|e| anyhow::anyhow!("row {}: {}", row_no + 1, csv_error(&e)))?;
        if is_blank(&fields) {
            continue;
        }
        row_no += 1;
        let at = || format!("row {row_no} (line {})", csv_line(&fields));
        if fields.len() != header.len() {
            bail!("{}: {} fields, the header has {}", at(), fields.len(), header.len());
        }
        let mut values = Vec::with_capacity(features.len());
        for &i in &features {
            values.push(
                parse_feature(&fields[i])
                    .ok_or_else(|| anyhow::anyhow!("{}: column `{}`: `{}` is not a finite number", at(), header[i], &fields[i]))?,
            );
        }
        let label = match label_col {
            Some(i) => {
                Some(parse_label(&fields[i]).ok_or_else(|| anyhow::anyhow!("{}: label `{}` is not 1/0 or true/false", at(), &fields[i]))?)
            }
            None => None,
        };
        let key = key_col.map(|i| fields[i].to_string()).unwrap_or_default();
        let ts = match ts_col {
            Some(i) => Some(parse_timestamp(&fields[i]).map_err(|e| anyhow::anyhow!("{}: timestamp: {e}", at()))?),
            None => None,
        };
        f(Row { key, values, label, ts })?;
    }
    Ok(())
}

fn parse_feature(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn read_jsonl(reader: impl BufRead, roles: &Roles, mut f: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<()> {
    use serde_json::Value;
    let mut names: Option<Vec<String>> = None;
    let mut row_no = 0;
    for (line_idx, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read line {}", line_idx + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        row_no += 1;
        let at = || format!("row {row_no} (line {})", line_idx + 1);
        let obj: serde_json::Map<String, Value> =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{}: not a JSON object: {e}", at()))?;
        let features = names.get_or_insert_with(|| obj.keys().filter(|k| roles.is_feature(k)).cloned().collect());
        if features.is_empty() {
            bail!("{}: no feature keys", at());
        }
        let extra = obj.keys().find(|k| roles.is_feature(k) && !features.contains(k));
        if let Some(k) = extra {
            bail!("{}: key `{k}` is not among the features fixed by the first row ({})", at(), features.join(", "));
        }
        let mut values = Vec::with_capacity(features.len());
        for name in features.iter() {
            let v = match obj.get(name) {
                Some(Value::Number(n)) => n.as_f64().filter(|v| v.is_finite()),
                Some(Value::String(s)) => parse_feature(s),
                _ => None,
            };
            values.push(v.ok_or_else(|| anyhow::anyhow!("{}: `{name}` is missing or not a finite number", at()))?);
        }
        let label = match &roles.label {
            None => None,
            Some(name) => Some(
                match obj.get(name) {
                    Some(Value::Bool(b)) => Some(*b),
                    Some(Value::Number(n)) => n.as_f64().map(|v| v != 0.0),
                    Some(Value::String(s)) => parse_label(s),
                    _ => None,
                }
                .ok_or_else(|| anyhow::anyhow!("{}: label `{name}` is missing or not 1/0 or true/false", at()))?,
            ),
        };
        let key = match &roles.key {
            None => String::new(),
            Some(name) => match obj.get(name) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => bail!("{}: key `{name}` is missing", at()),
            },
        };
        let ts = match roles.skip.iter().find_map(|name| obj.get(name)) {
            None => None,
            Some(v) => Some(
                match v {
                    Value::Number(n) => n.as_f64().filter(|t| t.is_finite()).map(|t| t as i64),
                    Value::String(s) => parse_timestamp(s).ok(),
                    _ => None,
                }
                .ok_or_else(|| anyhow::anyhow!("{}: timestamp {v} is not ms since the epoch or a date-time", at()))?,
            ),
        };
        f(Row { key, values, label, ts })?;
    }
    if row_no == 0 {
        bail!("the input has no rows");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows `read_csv` gives for `text` (key column `k`, no label).
    fn rows(text: &str) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
        let roles = Roles { key: Some("k".into()), label: None, skip: vec![] };
        let mut rows = Vec::new();
        read_csv(text.as_bytes(), &roles, |r| {
            rows.push((r.key, r.values));
            Ok(())
        })?;
        Ok(rows)
    }

    #[test]
    fn csv_quoted_cells_may_hold_commas_quotes_and_line_breaks() {
        let rows = rows("k,x,y\n\"b,c\",1,2\n\"d\"\"e\",3,4\n\"two\nlines\", 5 ,6\n").unwrap();
        let keys: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(keys, ["b,c", "d\"e", "two\nlines"]);
        assert_eq!(rows[2].1, [5.0, 6.0], "cells are trimmed");
    }

    #[test]
    fn csv_row_errors_name_the_row_and_its_first_line() {
        let err = rows("k,x\n\"a\nb\",1\nc\n").unwrap_err().to_string();
        assert!(err.starts_with("row 2 (line 4): 1 fields, the header has 2"), "{err}");
    }

    #[test]
    fn the_first_timestamp_column_is_the_readings_time_in_ms_or_as_a_utc_date_time() {
        let roles = Roles { key: None, label: None, skip: vec!["timestamp".into()] };
        let mut ts = Vec::new();
        let text = "timestamp,x\n1700000000123,1\n1970-01-01 00:04:40.000,2\n2014-04-10 00:00:00,3\n2026-01-01T00:00:00.5Z,4\n";
        read_csv(text.as_bytes(), &roles, |r| {
            ts.push(r.ts);
            Ok(())
        })
        .unwrap();
        assert_eq!(ts, [Some(1_700_000_000_123), Some(280_000), Some(1_397_088_000_000), Some(1_767_225_600_500)]);
        let err = read_csv("timestamp,x\nyesterday,1\n".as_bytes(), &roles, |_| Ok(())).unwrap_err().to_string();
        assert!(err.starts_with("row 1 (line 2): timestamp: "), "{err}");
    }
}
