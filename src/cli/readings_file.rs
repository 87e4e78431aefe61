//! Readings from a file: CSV with a header row, or JSON lines. One reading per row.
//!
//! The key column gives the sensor id; the timestamp column (optional) the reading time;
//! every other column is a feature when the value is a number and a label when it is text.
//! An empty cell (CSV) or a `null` (JSON) is a missing value: the feature is left out of that
//! reading and the worker decides what that means (a changed feature set is a dead letter).
//! Rows without a timestamp are stamped with the time they are read.
//! Values are sent as written, `NaN` included: judging them is the worker's job.
//!
//! CSV is read by the `csv` crate (RFC 4180: a quoted cell may hold commas, `""` quotes and
//! line breaks); timestamps by `jiff`.

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
    /// Comma-separated values with a header row (RFC 4180 quoting, cells may span lines).
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
    /// The rest of the file.
    rows: Rows,
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
        let mut header = Vec::new();
        let mut ts = timestamp.map(String::from);
        let rows = match format {
            FileFormat::JsonLines => Rows::Json { lines: BufReader::new(file).lines(), line_no: 0 },
            FileFormat::Csv => {
                let mut reader = csv_reader(file);
                let first = reader.headers().map_err(|e| anyhow::anyhow!("{name}: {}", csv_error(&e)))?;
                anyhow::ensure!(!first.is_empty(), "{name}: empty file (expected a header row)");
                header = first.iter().map(|h| h.trim_start_matches('\u{feff}').to_string()).collect();
                Rows::Csv(Box::new(reader))
            }
        };
        if format == FileFormat::Csv {
            anyhow::ensure!(header.iter().any(|h| h == key), "{name}: no key column `{key}` in the header ({})", header.join(", "));
            match &ts {
                Some(t) => anyhow::ensure!(header.iter().any(|h| h == t), "{name}: no timestamp column `{t}` in the header"),
                None => ts = DEFAULT_TIMESTAMP_COLUMNS.iter().find(|c| header.iter().any(|h| h == *c)).map(|c| (*c).to_string()),
            }
        }
        Ok(Self { name, rows, header, key: key.to_string(), timestamp_required: timestamp.is_some(), timestamp: ts })
    }

    /// The next reading; `None` at the end of the file. Blank lines are skipped. Errors name
    /// the file and line (the first line of a CSV row that spans lines) and the column.
    pub fn next_reading(&mut self) -> Option<anyhow::Result<SensorReading>> {
        loop {
            let (line_no, parsed) = match &mut self.rows {
                Rows::Csv(reader) => {
                    let mut record = csv::StringRecord::new();
                    match reader.read_record(&mut record) {
                        Err(e) => return Some(Err(anyhow::anyhow!("{}: {}", self.name, csv_error(&e)))),
                        Ok(false) => return None,
                        Ok(true) if is_blank(&record) => continue,
                        Ok(true) => (csv_line(&record), self.parse_csv(&record)),
                    }
                }
                Rows::Json { lines, line_no } => {
                    let line = match lines.next()? {
                        Ok(l) => l,
                        Err(e) => return Some(Err(anyhow::anyhow!("{}: read error after line {line_no}: {e}", self.name))),
                    };
                    *line_no += 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let n = *line_no;
                    (n, self.parse_json(&line))
                }
            };
            return Some(parsed.map_err(|e| anyhow::anyhow!("{}:{line_no}: {e}", self.name)));
        }
    }

    fn parse_csv(&self, cells: &csv::StringRecord) -> anyhow::Result<SensorReading> {
        anyhow::ensure!(cells.len() == self.header.len(), "{} cells, but the header has {} columns", cells.len(), self.header.len());
        let mut r = SensorReading { source: "onad-stream-produce".into(), ..Default::default() };
        if self.timestamp.is_none() {
            r.timestamp_ms = super::tools::now_ms();
        }
        for (col, cell) in self.header.iter().zip(cells) {
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

/// What is left to read of a file.
#[derive(Debug)]
enum Rows {
    /// CSV records after the header (boxed: the reader keeps its buffers inline).
    Csv(Box<csv::Reader<File>>),
    /// JSON lines, and the number of the last line read (1-based).
    Json { lines: Lines<BufReader<File>>, line_no: u64 },
}

/// A CSV reader as both readers of the CLI want it: a header row, RFC 4180 quoting (a quoted
/// cell may span lines), cells trimmed, and rows of any width (the caller names the row whose
/// width differs from the header's, in its own words).
pub fn csv_reader<R: std::io::Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(input)
}

/// A CSV record holding nothing but blanks (a blank line): skipped, as in JSON lines.
pub fn is_blank(record: &csv::StringRecord) -> bool {
    record.iter().all(str::is_empty) && record.len() <= 1
}

/// The (1-based) line a CSV record starts on.
pub fn csv_line(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, csv::Position::line)
}

/// A CSV error with its line in the file's words (`line 3: ...`).
pub fn csv_error(e: &csv::Error) -> String {
    match e.position() {
        Some(p) => format!("line {}: {e}", p.line()),
        None => e.to_string(),
    }
}

/// Integer milliseconds since the epoch, or an RFC 3339 date-time (`2024-02-29T12:34:56.789Z`,
/// `...+02:00`); without an offset (`2024-02-29 12:34:56`, `2024-02-29`) it is UTC.
/// Fractions below a millisecond are cut (toward the past).
pub fn parse_timestamp(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let instant = match s.parse::<jiff::Timestamp>() {
        Ok(t) => Ok(t),
        // No offset: the civil date-time read as UTC.
        Err(e) => s.parse::<jiff::civil::DateTime>().and_then(|dt| jiff::tz::Offset::UTC.to_timestamp(dt)).map_err(|_| e),
    };
    let instant = instant.map_err(|e| anyhow::anyhow!("`{s}` is neither milliseconds since the epoch nor an RFC 3339 date-time ({e})"))?;
    i64::try_from(instant.as_nanosecond().div_euclid(1_000_000)).map_err(|e| anyhow::anyhow!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cells of every CSV record after a header row `h`.
    fn csv_cells(text: &str) -> Vec<Vec<String>> {
        let text = format!("h\n{text}");
        let records = csv_reader(text.as_bytes()).into_records();
        records.map(|r| r.unwrap().iter().map(String::from).collect()).collect()
    }

    #[test]
    fn csv_cells_follow_rfc4180_quoting() {
        assert_eq!(csv_cells("a,b,,c"), [["a", "b", "", "c"]]);
        assert_eq!(csv_cells("\"x,y\",\"say \"\"hi\"\"\",3\r"), [["x,y", "say \"hi\"", "3"]]);
    }

    #[test]
    fn an_unterminated_quote_is_an_error_naming_its_line() {
        // RFC 4180: the quoted cell runs to the end of the file, so the row is one cell short.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, "sensor,temp\ns0,1\n\"open,1\ns2,2\n").unwrap();
        let mut f = ReadingsFile::open(&path, FileFormat::Csv, "sensor", None).unwrap();
        assert!(f.next_reading().unwrap().is_ok());
        let err = f.next_reading().unwrap().unwrap_err().to_string();
        assert!(err.contains("r.csv:3:") && err.contains("1 cells"), "{err}");
    }

    #[test]
    fn a_quoted_csv_cell_may_span_lines_and_errors_name_the_row_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, "sensor,note,temp\ns1,\"first line\nsecond, with a comma\",20.5\ns2,plain,21\ns3\n").unwrap();
        let mut f = ReadingsFile::open(&path, FileFormat::Csv, "sensor", None).unwrap();
        let a = f.next_reading().unwrap().unwrap();
        assert_eq!(a.sensor_id, "s1");
        assert_eq!(a.labels["note"], "first line\nsecond, with a comma");
        assert_eq!(a.values["temp"], 20.5);
        let b = f.next_reading().unwrap().unwrap();
        assert_eq!((b.sensor_id.as_str(), b.values["temp"]), ("s2", 21.0));
        let err = f.next_reading().unwrap().unwrap_err().to_string();
        assert!(err.contains("r.csv:5:"), "the row of s3 starts on line 5: {err}");
    }

    #[test]
    fn timestamps_in_millis_or_rfc3339() {
        assert_eq!(parse_timestamp("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_timestamp("2024-02-29T12:34:56.789Z").unwrap(), 1_709_210_096_789);
        assert_eq!(parse_timestamp("2024-02-29T14:34:56.789+02:00").unwrap(), 1_709_210_096_789);
        assert_eq!(parse_timestamp("2024-02-29 12:34:56").unwrap(), 1_709_210_096_000);
        assert_eq!(parse_timestamp("2024-02-29t12:34:56.789z").unwrap(), 1_709_210_096_789);
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.9996Z").unwrap(), -1, "sub-millisecond fractions are cut toward the past");
        assert!(parse_timestamp("yesterday").is_err());
        assert!(parse_timestamp("2024-13-01T00:00:00Z").is_err());
        assert!(parse_timestamp("2023-02-29T00:00:00Z").is_err(), "not a leap year");
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
