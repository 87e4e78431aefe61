//! Readings from a file: CSV with a header row, or JSON lines. One reading per row.
//!
//! The key column gives the sensor id; the timestamp column (optional) the reading time;
//! every other column is a feature when the value is a number and a label when it is text.
//! An empty cell (CSV) or a `null` (JSON) is a missing value: the feature is left out of that
//! reading and the worker decides what that means (a changed feature set is a dead letter).
//! Rows without a timestamp are stamped with the time they are read.
//! Values are sent as written, `NaN` included: judging them is the worker's job.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;

use crate::proto::SensorReading;

/// Names the timestamp column may have when `--timestamp-column` is not given.
const DEFAULT_TIMESTAMP_COLUMNS: [&str; 2] = ["timestamp_ms", "timestamp"];

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated values with a header row (RFC 4180 quoting).
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl FileFormat {
    /// The format a path's extension says.
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Ok(Self::Csv),
            Some("jsonl" | "ndjson" | "json") => Ok(Self::JsonLines),
            _ => anyhow::bail!("{}: unknown file type (expected .csv, .jsonl, .ndjson or .json)", path.display()),
        }
    }
}

/// An open readings file.
#[derive(Debug)]
pub struct ReadingsFile {
    /// File name, for error messages.
    name: String,
    /// Format.
    format: FileFormat,
    /// Remaining lines.
    lines: Lines<BufReader<File>>,
    /// Line number of the last line read (1-based).
    line_no: usize,
    /// CSV header.
    header: Vec<String>,
    /// Key column name.
    key: String,
    /// Timestamp column name, when there is one.
    timestamp: Option<String>,
    /// `--timestamp-column` was given explicitly (so it must be present).
    timestamp_required: bool,
}

impl ReadingsFile {
    /// Open `path`; for CSV, read and check the header.
    pub fn open(path: &Path, format: FileFormat, key: &str, timestamp: Option<&str>) -> anyhow::Result<Self> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| anyhow::anyhow!("cannot open {name}: {e}"))?;
        let mut lines = BufReader::new(file).lines();
        let mut header = Vec::new();
        let mut line_no = 0;
        let mut ts = timestamp.map(String::from);
        if format == FileFormat::Csv {
            let first = lines.next().ok_or_else(|| anyhow::anyhow!("{name}: empty file (expected a header row)"))??;
            line_no = 1;
            header = split_csv_line(first.trim_start_matches('\u{feff}')).map_err(|e| anyhow::anyhow!("{name}:1: {e}"))?;
            header.iter_mut().for_each(|h| *h = h.trim().to_string());
            anyhow::ensure!(header.iter().any(|h| h == key), "{name}: no key column `{key}` in the header ({})", header.join(", "));
            match &ts {
                Some(t) => anyhow::ensure!(header.iter().any(|h| h == t), "{name}: no timestamp column `{t}` in the header"),
                None => ts = DEFAULT_TIMESTAMP_COLUMNS.iter().find(|c| header.iter().any(|h| h == *c)).map(|c| (*c).to_string()),
            }
        }
        Ok(Self { name, format, lines, line_no, header, key: key.to_string(), timestamp_required: timestamp.is_some(), timestamp: ts })
    }

    /// The next reading; `None` at the end of the file. Blank lines are skipped. Errors name
    /// the file, line and column.
    pub fn next_reading(&mut self) -> Option<anyhow::Result<SensorReading>> {
        loop {
            let line = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => return Some(Err(anyhow::anyhow!("{}: read error after line {}: {e}", self.name, self.line_no))),
            };
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            let parsed = match self.format {
                FileFormat::Csv => self.parse_csv(&line),
                FileFormat::JsonLines => self.parse_json(&line),
            };
            return Some(parsed.map_err(|e| anyhow::anyhow!("{}:{}: {e}", self.name, self.line_no)));
        }
    }

    fn parse_csv(&self, line: &str) -> anyhow::Result<SensorReading> {
        let cells = split_csv_line(line)?;
        anyhow::ensure!(cells.len() == self.header.len(), "{} cells, but the header has {} columns", cells.len(), self.header.len());
        let mut r = SensorReading { source: "onad-stream-produce".into(), ..Default::default() };
        if self.timestamp.is_none() {
            r.timestamp_ms = super::tools::now_ms();
        }
        for (col, cell) in self.header.iter().zip(&cells) {
            let cell = cell.trim();
            if *col == self.key {
                anyhow::ensure!(!cell.is_empty(), "empty key column `{col}`");
                r.sensor_id = cell.to_string();
            } else if Some(col) == self.timestamp.as_ref() {
                r.timestamp_ms = parse_timestamp(cell).map_err(|e| anyhow::anyhow!("column `{col}`: {e}"))?;
            } else if cell.is_empty() {
                continue;
            } else if let Ok(v) = cell.parse::<f64>() {
                r.values.insert(col.clone(), v);
            } else {
                r.labels.insert(col.clone(), cell.to_string());
            }
        }
        Ok(r)
    }

    fn parse_json(&self, line: &str) -> anyhow::Result<SensorReading> {
        let obj: BTreeMap<String, serde_json::Value> = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("not a JSON object: {e}"))?;
        let mut r = SensorReading { source: "onad-stream-produce".into(), ..Default::default() };
        let mut has_key = false;
        let mut has_ts = false;
        for (field, value) in obj {
            use serde_json::Value;
            if field == self.key {
                r.sensor_id = match value {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    other => anyhow::bail!("key field `{field}` must be a string or number, not {other}"),
                };
                has_key = true;
            } else if Some(&field) == self.timestamp.as_ref()
                || (self.timestamp.is_none() && DEFAULT_TIMESTAMP_COLUMNS.contains(&field.as_str()))
            {
                let text = match &value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => anyhow::bail!("timestamp field `{field}` must be a string or number, not {other}"),
                };
                r.timestamp_ms = parse_timestamp(&text).map_err(|e| anyhow::anyhow!("field `{field}`: {e}"))?;
                has_ts = true;
            } else {
                match value {
                    Value::Null => {}
                    Value::Number(n) => {
                        let v = n.as_f64().ok_or_else(|| anyhow::anyhow!("field `{field}`: {n} is not a double"))?;
                        r.values.insert(field, v);
                    }
                    Value::String(s) => {
                        r.labels.insert(field, s);
                    }
                    Value::Bool(b) => {
                        r.labels.insert(field, b.to_string());
                    }
                    other => anyhow::bail!("field `{field}`: nested values are not supported ({other})"),
                }
            }
        }
        anyhow::ensure!(has_key && !r.sensor_id.is_empty(), "missing or empty key field `{}`", self.key);
        if self.timestamp_required && !has_ts {
            anyhow::bail!("missing timestamp field `{}`", self.timestamp.as_deref().unwrap_or_default());
        }
        if !has_ts {
            // Lines without a timestamp get the time of reading, as a file without the column.
            r.timestamp_ms = super::tools::now_ms();
        }
        Ok(r)
    }
}

/// Split one CSV line into cells (RFC 4180: `"` quotes a cell, `""` inside quotes is a quote).
/// Quoted cells spanning lines are not supported (one reading per line).
pub fn split_csv_line(line: &str) -> anyhow::Result<Vec<String>> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.trim().is_empty() && !was_quoted => {
                cell.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                cells.push(std::mem::take(&mut cell));
                was_quoted = false;
            }
            (false, c) => cell.push(c),
        }
    }
    anyhow::ensure!(!quoted, "unterminated quoted cell");
    cells.push(cell);
    Ok(cells)
}

/// Integer milliseconds since the epoch, or an RFC 3339 date-time
/// (`YYYY-MM-DD[T ]HH:MM:SS[.fraction](Z|±HH:MM)`; no offset = UTC).
pub fn parse_timestamp(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || anyhow::anyhow!("`{s}` is neither milliseconds since the epoch nor an RFC 3339 date-time");
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let first3 = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = first3.parse().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let hm = &rest[1..];
            if hm.len() != 5 || hm.as_bytes()[2] != b':' {
                return Err(bad());
            }
            let oh: i64 = hm[..2].parse().map_err(|_| bad())?;
            let om: i64 = hm[3..].parse().map_err(|_| bad())?;
            sign * (oh * 60 + om)
        }
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
    Ok(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_follow_rfc4180_quoting() {
        assert_eq!(split_csv_line("a,b,,c").unwrap(), ["a", "b", "", "c"]);
        assert_eq!(split_csv_line("\"x,y\",\"say \"\"hi\"\"\",3\r").unwrap(), ["x,y", "say \"hi\"", "3"]);
        assert!(split_csv_line("\"open,1").is_err());
    }

    #[test]
    fn timestamps_in_millis_or_rfc3339() {
        assert_eq!(parse_timestamp("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_timestamp("2024-02-29T12:34:56.789Z").unwrap(), 1_709_210_096_789);
        assert_eq!(parse_timestamp("2024-02-29T14:34:56.789+02:00").unwrap(), 1_709_210_096_789);
        assert_eq!(parse_timestamp("2024-02-29 12:34:56").unwrap(), 1_709_210_096_000);
        assert!(parse_timestamp("yesterday").is_err());
        assert!(parse_timestamp("2024-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn csv_rows_become_readings_with_features_labels_and_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, "sensor,timestamp,temp,site,load\ns1,1000,20.5,north,0.25\n\ns2,2000,,south,NaN\n").unwrap();
        let mut f = ReadingsFile::open(&path, FileFormat::Csv, "sensor", None).unwrap();
        let a = f.next_reading().unwrap().unwrap();
        assert_eq!((a.sensor_id.as_str(), a.timestamp_ms), ("s1", 1000));
        assert_eq!(a.values.len(), 2);
        assert_eq!(a.values["temp"], 20.5);
        assert_eq!(a.labels["site"], "north");
        let b = f.next_reading().unwrap().unwrap();
        assert_eq!(b.sensor_id, "s2");
        assert!(!b.values.contains_key("temp"), "an empty cell is a missing value");
        assert!(b.values["load"].is_nan(), "NaN is sent as written");
        assert!(f.next_reading().is_none());
    }

    #[test]
    fn csv_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, "sensor,temp\ns1,1\ns2\n").unwrap();
        assert!(ReadingsFile::open(&path, FileFormat::Csv, "id", None).unwrap_err().to_string().contains("no key column `id`"));
        let mut f = ReadingsFile::open(&path, FileFormat::Csv, "sensor", None).unwrap();
        assert!(f.next_reading().unwrap().is_ok());
        let err = f.next_reading().unwrap().unwrap_err().to_string();
        assert!(err.contains("r.csv:3"), "{err}");
    }

    #[test]
    fn json_lines_become_readings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"id\": 7, \"ts\": \"1970-01-01T00:00:01Z\", \"x\": 1.5, \"unit\": \"a\", \"y\": null}\n{\"x\": 2}\n")
            .unwrap();
        let mut f = ReadingsFile::open(&path, FileFormat::JsonLines, "id", Some("ts")).unwrap();
        let a = f.next_reading().unwrap().unwrap();
        assert_eq!((a.sensor_id.as_str(), a.timestamp_ms, a.values.len()), ("7", 1000, 1));
        assert_eq!(a.labels["unit"], "a");
        let err = f.next_reading().unwrap().unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("key field `id`"), "{err}");
    }
}
