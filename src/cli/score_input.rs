//! The rows `score` and `compare` read: CSV (header row), JSON lines, and with the `parquet`
//! feature Parquet, all with the same column roles (key, label, timestamps, features).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

use super::progress::Progress;
use super::readings_file::{csv_error, csv_line, csv_reader, is_blank, parse_timestamp};

/// One readable row.
pub struct Row {
    /// Sensor id ("" without `--key`).
    pub key: String,
    /// Features in the fixed order.
    pub values: Vec<f64>,
    /// Ground truth, when `--label` is given.
    pub label: Option<bool>,
    /// The reading's time in ms since the epoch, from the first timestamp column present.
    pub ts: Option<i64>,
}

/// Which columns play which role.
pub struct Roles {
    /// The sensor id column.
    pub key: Option<String>,
    /// The ground-truth column.
    pub label: Option<String>,
    /// Columns that are not features; the first one present is the reading's time.
    pub skip: Vec<String>,
}

impl Roles {
    /// The roles `args` name.
    pub fn from_args(args: &InputArgs) -> Self {
        Self {
            key: args.key.clone(),
            label: args.label.clone(),
            skip: if args.timestamp.is_empty() { vec!["timestamp".into(), "timestamp_ms".into()] } else { args.timestamp.clone() },
        }
    }

    /// Whether column `name` is a feature.
    pub fn is_feature(&self, name: &str) -> bool {
        Some(name) != self.key.as_deref() && Some(name) != self.label.as_deref() && !self.skip.iter().any(|s| s == name)
    }
}

/// Parse a label value (1/0, true/false, yes/no, anomaly/normal; empty is 0).
pub fn parse_label(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "anomaly" => Some(true),
        "0" | "0.0" | "false" | "no" | "normal" | "" => Some(false),
        _ => None,
    }
}

/// The input of `score` and `compare`.
#[derive(Debug, Clone, Args)]
pub struct InputArgs {
    /// Readings: `.csv` (header row), `.jsonl` / `.json` (one object per line), or with the
    /// `parquet` cargo feature `.parquet`.
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
    /// Leave the first N rows out of the AUC summary (model warm-up).
    #[arg(long, default_value_t = 0, env = "ONAD_SCORE_EVAL_AFTER")]
    pub eval_after: usize,
    /// No progress bar (it is only drawn when stderr is a terminal anyway).
    #[arg(long, short = 'q', env = "ONAD_QUIET")]
    pub quiet: bool,
}

/// Read every row of `args.input` in file order into `f`, with a progress bar on a terminal;
/// returns the feature names in their fixed order.
pub fn read_input(args: &InputArgs, f: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<Vec<String>> {
    let roles = Roles::from_args(args);
    let path = &args.input;
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    if ext == "parquet" {
        return read_parquet(path, &roles, args.quiet, f);
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let progress = Progress::new(size, "rows", args.quiet);
    let counted = Counted { inner: file, progress: progress.clone() };
    let started = Instant::now();
    let mut rows = 0u64;
    let mut f = f;
    let mut each = |row: Row| {
        rows += 1;
        if rows % 4096 == 0 {
            progress.set_count(rows, rows as f64 / started.elapsed().as_secs_f64().max(1e-9));
        }
        f(row)
    };
    let names = if matches!(ext.as_str(), "jsonl" | "json" | "ndjson") {
        read_jsonl(BufReader::new(counted), &roles, &mut each)
    } else {
        read_csv(counted, &roles, &mut each)
    };
    progress.finish();
    names
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path, roles: &Roles, quiet: bool, f: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<Vec<String>> {
    super::score_parquet::read(path, roles, quiet, f)
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path, _: &Roles, _: bool, _: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<Vec<String>> {
    bail!("{}: this binary was built without Parquet support; rebuild with `cargo build --features parquet`", path.display())
}

/// A reader that advances the progress bar by the bytes it reads.
struct Counted<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Read a CSV with a header row; returns the feature names.
pub fn read_csv(reader: impl Read, roles: &Roles, mut f: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<Vec<String>> {
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
    Ok(features.iter().map(|&i| header[i].clone()).collect())
}

/// A finite number.
pub fn parse_feature(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Read JSON lines; returns the feature names (the first row's keys).
pub fn read_jsonl(reader: impl BufRead, roles: &Roles, mut f: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<Vec<String>> {
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
    Ok(names.unwrap_or_default())
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
