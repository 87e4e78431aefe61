//! `score --input x.parquet` (cargo feature `parquet`): the rows of a Parquet file, with the
//! column roles of CSV (key, label, timestamps, the rest features).
//!
//! Read with the `parquet` crate's record reader (no arrow): flat schemas only, the shape
//! sensor history is kept in. Features are numeric columns (integers, floats, decimals), the
//! key a string or integer, the label a boolean, number or label text, the timestamp an
//! integer in ms, a Parquet TIMESTAMP (millis or micros) or an RFC 3339 string. A null
//! feature, key or timestamp stops the run with an error naming the row and column, as in CSV.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use super::progress::Progress;
use super::readings_file::parse_timestamp;
use super::score_input::{parse_feature, parse_label, Roles, Row};

/// Read every row of the Parquet file at `path` into `f`; returns the feature names.
pub fn read(path: &Path, roles: &Roles, quiet: bool, mut f: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<Vec<String>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = SerializedFileReader::new(file).with_context(|| format!("{}: not a Parquet file", path.display()))?;
    let meta = reader.metadata().file_metadata();
    let header: Vec<String> = meta.schema_descr().root_schema().get_fields().iter().map(|t| t.name().to_string()).collect();
    let total = u64::try_from(meta.num_rows()).ok();
    let col = |name: &Option<String>| -> anyhow::Result<Option<usize>> {
        match name {
            None => Ok(None),
            Some(n) => header.iter().position(|h| h == n).map(Some).ok_or_else(|| anyhow::anyhow!("no column `{n}` in the schema")),
        }
    };
    let key_col = col(&roles.key)?;
    let label_col = col(&roles.label)?;
    let ts_col = roles.skip.iter().find_map(|name| header.iter().position(|h| h == name));
    let features: Vec<usize> = (0..header.len()).filter(|i| roles.is_feature(&header[*i])).collect();
    if features.is_empty() {
        bail!("no feature columns in the schema {header:?}");
    }
    let progress = Progress::new(total, "rows", quiet);
    let started = Instant::now();
    let mut row_no = 0u64;
    for row in reader.into_iter() {
        row_no += 1;
        let row = row.with_context(|| format!("row {row_no}: cannot be read"))?;
        let cells: Vec<&Field> = row.get_column_iter().map(|(_, v)| v).collect();
        if cells.len() != header.len() {
            bail!("row {row_no}: {} columns, the schema has {} (nested schemas are not supported)", cells.len(), header.len());
        }
        let at = |i: usize| format!("row {row_no}: column `{}`", header[i]);
        let mut values = Vec::with_capacity(features.len());
        for &i in &features {
            values.push(number(cells[i]).ok_or_else(|| anyhow::anyhow!("{}: {} is not a finite number", at(i), cells[i]))?);
        }
        let label = match label_col {
            None => None,
            Some(i) => Some(
                match cells[i] {
                    Field::Bool(b) => Some(*b),
                    Field::Str(s) => parse_label(s),
                    Field::Null => Some(false),
                    other => number(other).map(|v| v != 0.0),
                }
                .ok_or_else(|| anyhow::anyhow!("{}: label {} is not 1/0 or true/false", at(i), cells[i]))?,
            ),
        };
        let key = match key_col {
            None => String::new(),
            Some(i) => match cells[i] {
                Field::Str(s) => s.clone(),
                Field::Null => bail!("{}: the key is null", at(i)),
                other => other.to_string(),
            },
        };
        let ts = match ts_col {
            None => None,
            Some(i) => Some(match cells[i] {
                Field::TimestampMillis(ms) => *ms,
                Field::TimestampMicros(us) => us.div_euclid(1000),
                Field::Long(ms) => *ms,
                Field::Int(ms) => i64::from(*ms),
                Field::Str(s) => parse_timestamp(s).map_err(|e| anyhow::anyhow!("{}: {e}", at(i)))?,
                other => bail!("{}: timestamp {other} is not ms since the epoch, a TIMESTAMP or a date-time", at(i)),
            }),
        };
        f(Row { key, values, label, ts })?;
        if row_no % 4096 == 0 {
            progress.inc(4096);
            progress.set_count(row_no, row_no as f64 / started.elapsed().as_secs_f64().max(1e-9));
        }
    }
    progress.finish();
    if row_no == 0 {
        bail!("the input has no rows");
    }
    Ok(features.iter().map(|&i| header[i].clone()).collect())
}

/// A finite number from a numeric cell (or a numeric string, as CSV allows).
fn number(field: &Field) -> Option<f64> {
    let v = match field {
        Field::Byte(v) => f64::from(*v),
        Field::Short(v) => f64::from(*v),
        Field::Int(v) => f64::from(*v),
        // Integers beyond 2^53 lose precision as f64, as they do when CSV text is parsed.
        Field::Long(v) => *v as f64,
        Field::UByte(v) => f64::from(*v),
        Field::UShort(v) => f64::from(*v),
        Field::UInt(v) => f64::from(*v),
        Field::ULong(v) => *v as f64,
        Field::Float16(v) => f64::from(*v),
        Field::Float(v) => f64::from(*v),
        Field::Double(v) => *v,
        Field::Str(s) => return parse_feature(s),
        Field::Decimal(_) => return parse_feature(&field.to_string()),
        _ => return None,
    };
    Some(v).filter(|v| v.is_finite())
}
