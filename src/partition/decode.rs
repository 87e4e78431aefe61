//! Input record bytes -> `SensorReading`, in the configured `kafka.input_format`.
//!
//! - `protobuf` (default): the bare `SensorReading` message.
//! - `confluent`: Confluent Schema Registry framing as written by Confluent's
//!   `KafkaProtobufSerializer`: magic byte 0, the 4-byte big-endian schema id, the message
//!   indexes (a zig-zag varint count, then that many zig-zag varints; the common `[0]` is the
//!   single byte 0), then the protobuf message. The schema id is not looked up (no registry
//!   client): the indexes must be `[0]`, `SensorReading` being the first message of
//!   `proto/onad/v1/readings.proto`, the schema such producers register.
//! - `json`: the proto3 canonical JSON mapping (`{"sensorId": "s1", "timestampMs": "17",
//!   "values": {"t": 1.5}}`): lowerCamelCase or original field names, int64 as a string or a
//!   number, doubles as numbers or `"NaN"` / `"Infinity"` / `"-Infinity"` (which validation
//!   then rejects, naming the feature), unknown fields an error.
//! - `auto`: per record, by its first byte: 0 is Confluent framing (a protobuf message never
//!   starts with 0: field number 0 does not exist), `{` (after whitespace) is JSON, anything
//!   else plain protobuf.
//!
//! Every failure is a `DECODE` rejection naming the format and what is wrong.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use serde::Deserialize;

use crate::ops::validate::Rejection;
use crate::proto::{ErrorKind, SensorReading};

pub use crate::config::InputFormat;

/// Confluent's wire-format magic byte.
pub const CONFLUENT_MAGIC: u8 = 0;
/// Magic byte and schema id.
const CONFLUENT_HEADER: usize = 5;

fn decode_error(message: String) -> Rejection {
    Rejection::new(ErrorKind::Decode, message)
}

/// Decode `bytes` as `format`.
pub fn decode(bytes: &[u8], format: InputFormat) -> Result<SensorReading, Rejection> {
    match format {
        InputFormat::Protobuf => protobuf(bytes),
        InputFormat::Confluent => confluent(bytes),
        InputFormat::Json => json(bytes),
        InputFormat::Auto => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(&CONFLUENT_MAGIC) if bytes.first() == Some(&CONFLUENT_MAGIC) => confluent(bytes),
            Some(b'{') => json(bytes),
            _ => protobuf(bytes),
        },
    }
}

/// Decode `bytes` as `format` into `reading`, reusing its strings and, when the reading has
/// the same feature names as the last one decoded into it, its feature map: a plain
/// protobuf reading then costs no allocation per feature (`decode` allocates a `String` per
/// feature name). `entries` is scratch space kept by the caller. The result is exactly
/// `decode`'s (anything the fast path does not handle is decoded by `decode`).
pub fn decode_into(bytes: &[u8], format: InputFormat, reading: &mut SensorReading, entries: &mut Vec<Entry>) -> Result<(), Rejection> {
    let plain = match format {
        InputFormat::Protobuf => true,
        InputFormat::Auto => !matches!(bytes.iter().find(|b| !b.is_ascii_whitespace()), Some(&CONFLUENT_MAGIC | b'{')),
        InputFormat::Confluent | InputFormat::Json => false,
    };
    if !(plain && protobuf_into(bytes, reading, entries).is_some()) {
        *reading = decode(bytes, format)?;
    }
    Ok(())
}

/// A feature of the reading being decoded: its name's byte range in the record, its value.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Start of the name in the record.
    start: usize,
    /// End of the name.
    end: usize,
    /// The value.
    value: f64,
}

/// A length-delimited field's bytes at the front of `buf`.
fn len_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(prost::encoding::decode_varint(buf).ok()?).ok()?;
    let (field, rest) = (buf.get(..len)?, buf.get(len..)?);
    *buf = rest;
    Some(field)
}

/// Replace `s` by `bytes` (UTF-8 checked, as prost does), keeping its capacity.
fn set_str(s: &mut String, bytes: &[u8]) -> Option<()> {
    s.clear();
    s.push_str(std::str::from_utf8(bytes).ok()?);
    Some(())
}

/// The fast path of [`decode_into`]: fields 1-4 of `SensorReading` with their proto3 wire
/// types, map entries of a key and a double. `None` for anything else — labels, unknown
/// fields, invalid or truncated input — which `decode` then handles, errors included.
fn protobuf_into(bytes: &[u8], r: &mut SensorReading, entries: &mut Vec<Entry>) -> Option<()> {
    use prost::encoding::decode_varint;
    // Proto3: an absent field is its default.
    r.sensor_id.clear();
    r.timestamp_ms = 0;
    r.source.clear();
    r.labels.clear();
    entries.clear();
    let base = bytes.as_ptr() as usize;
    let mut buf = bytes;
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).ok()?;
        match key {
            // (field 1, length-delimited): sensor_id.
            0x0a => set_str(&mut r.sensor_id, len_delimited(&mut buf)?)?,
            // (2, varint): timestamp_ms; int64 is the varint's bits, as prost reads it.
            0x10 => r.timestamp_ms = decode_varint(&mut buf).ok()? as i64,
            // (3, length-delimited): one entry of `values`.
            0x1a => {
                let mut entry = len_delimited(&mut buf)?;
                let (mut start, mut end, mut value) = (0, 0, 0.0);
                while !entry.is_empty() {
                    match decode_varint(&mut entry).ok()? {
                        0x0a => {
                            let name = len_delimited(&mut entry)?;
                            std::str::from_utf8(name).ok()?;
                            start = name.as_ptr() as usize - base;
                            end = start + name.len();
                        }
                        0x11 => {
                            let (v, rest) = (entry.get(..8)?, entry.get(8..)?);
                            value = f64::from_le_bytes(v.try_into().ok()?);
                            entry = rest;
                        }
                        _ => return None,
                    }
                }
                entries.push(Entry { start, end, value });
            }
            // (4, length-delimited): source.
            0x22 => set_str(&mut r.source, len_delimited(&mut buf)?)?,
            _ => return None,
        }
    }
    let name = |e: &Entry| &bytes[e.start..e.end];
    // A map's entries may come in any order and repeat a key (the last one wins): sort by
    // name (the BTreeMap's order), stably, and keep the last of each run.
    entries.sort_by(|a, b| name(a).cmp(name(b)));
    let mut kept = 0;
    for i in 0..entries.len() {
        if i + 1 < entries.len() && name(&entries[i]) == name(&entries[i + 1]) {
            continue;
        }
        entries[kept] = entries[i];
        kept += 1;
    }
    entries.truncate(kept);
    let same = r.values.len() == entries.len() && r.values.keys().zip(entries.iter()).all(|(k, e)| k.as_bytes() == name(e));
    if same {
        for (v, e) in r.values.values_mut().zip(entries.iter()) {
            *v = e.value;
        }
    } else {
        r.values.clear();
        for e in entries.iter() {
            // Checked as UTF-8 above.
            r.values.insert(String::from_utf8_lossy(name(e)).into_owned(), e.value);
        }
    }
    Some(())
}

fn protobuf(bytes: &[u8]) -> Result<SensorReading, Rejection> {
    SensorReading::decode(bytes).map_err(|e| decode_error(format!("not a SensorReading: {e}")))
}

/// A zig-zag varint (Confluent's `ByteUtils.readVarint`) at the front of `bytes`.
fn zigzag(bytes: &mut &[u8]) -> Option<i64> {
    let raw = prost::encoding::decode_varint(bytes).ok()?;
    Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn confluent(bytes: &[u8]) -> Result<SensorReading, Rejection> {
    if bytes.len() < CONFLUENT_HEADER + 1 || bytes[0] != CONFLUENT_MAGIC {
        return Err(decode_error(format!(
            "not Confluent Schema Registry framing (kafka.input_format): want magic byte 0, a 4-byte schema id and message indexes, got {} bytes starting {:02x?}",
            bytes.len(),
            &bytes[..bytes.len().min(CONFLUENT_HEADER)]
        )));
    }
    let schema_id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let mut rest = &bytes[CONFLUENT_HEADER..];
    let bad = |what: &str| decode_error(format!("Confluent framing (schema id {schema_id}): {what}"));
    let count = zigzag(&mut rest).ok_or_else(|| bad("truncated message-index count"))?;
    // Count 0 is the short form of the index path [0].
    if count != 0 {
        if !(1..=16).contains(&count) {
            return Err(bad(&format!("message-index count {count} is not a sane nesting depth")));
        }
        let mut path = Vec::with_capacity(count as usize);
        for _ in 0..count {
            path.push(zigzag(&mut rest).ok_or_else(|| bad("truncated message indexes"))?);
        }
        if path != [0] {
            return Err(bad(&format!(
                "message indexes {path:?} name another message than SensorReading (index [0] of onad/v1/readings.proto)"
            )));
        }
    }
    SensorReading::decode(rest).map_err(|e| bad(&format!("payload is not a SensorReading: {e}")))
}

/// `SensorReading` in the proto3 canonical JSON mapping.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReading {
    #[serde(default, rename = "sensorId", alias = "sensor_id")]
    sensor_id: String,
    #[serde(default, rename = "timestampMs", alias = "timestamp_ms")]
    timestamp_ms: Option<serde_json::Value>,
    // `serde_json::Value`, not an untagged enum of number-or-string: with serde_json's
    // `arbitrary_precision` (on for snapshots) an untagged enum never matches a number.
    #[serde(default)]
    values: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    source: String,
    #[serde(default)]
    labels: HashMap<String, String>,
}

fn json(bytes: &[u8]) -> Result<SensorReading, Rejection> {
    let bad = |what: String| decode_error(format!("not a SensorReading in proto3 JSON: {what}"));
    let r: JsonReading = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    // int64 is a string in canonical proto3 JSON; a number is accepted too.
    let timestamp_ms = match &r.timestamp_ms {
        None | Some(serde_json::Value::Null) => Some(0),
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(t)) => t.parse().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| bad(format!("timestampMs {} is not an int64", r.timestamp_ms.as_ref().map(|v| v.to_string()).unwrap_or_default())))?;
    let mut values = HashMap::with_capacity(r.values.len());
    for (name, v) in r.values {
        let x = match &v {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(t) => match t.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                other => other.parse().ok(),
            },
            _ => None,
        };
        values.insert(name.clone(), x.ok_or_else(|| bad(format!("value of feature {name:?} is {v}, not a number")))?);
    }
    Ok(SensorReading {
        sensor_id: r.sensor_id,
        timestamp_ms,
        values: values.into_iter().collect(),
        source: r.source,
        labels: r.labels.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SensorReading {
        SensorReading {
            sensor_id: "s1".into(),
            timestamp_ms: 1_700_000_000_123,
            values: [("t".to_string(), 1.5), ("rpm".to_string(), -3.0)].into(),
            source: "plc".into(),
            ..Default::default()
        }
    }

    fn framed(indexes: &[u8], r: &SensorReading) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 0, 42];
        v.extend_from_slice(indexes);
        v.extend(r.encode_to_vec());
        v
    }

    #[test]
    fn confluent_framing_short_and_long_index_forms_decode() {
        let r = sample();
        assert_eq!(decode(&framed(&[0], &r), InputFormat::Confluent).unwrap(), r);
        // Count 1 (zig-zag 2), index 0.
        assert_eq!(decode(&framed(&[2, 0], &r), InputFormat::Confluent).unwrap(), r);
        assert_eq!(decode(&framed(&[0], &r), InputFormat::Auto).unwrap(), r);
        let e = decode(&framed(&[2, 2], &r), InputFormat::Confluent).unwrap_err();
        assert!(e.message.contains("[1]") && e.message.contains("schema id 42"), "{e}");
        let e = decode(&r.encode_to_vec(), InputFormat::Confluent).unwrap_err();
        assert!(e.message.contains("magic byte"), "{e}");
        assert_eq!(decode(&[0, 0, 0, 0, 1, 0x7f], InputFormat::Confluent).unwrap_err().kind, ErrorKind::Decode);
    }

    #[test]
    fn canonical_json_decodes_with_either_field_spelling() {
        let r = sample();
        let canonical = br#"{"sensorId":"s1","timestampMs":"1700000000123","values":{"t":1.5,"rpm":-3},"source":"plc"}"#;
        assert_eq!(decode(canonical, InputFormat::Json).unwrap(), r);
        let original = br#" {"sensor_id":"s1","timestamp_ms":1700000000123,"values":{"t":"1.5","rpm":-3.0},"source":"plc"}"#;
        assert_eq!(decode(original, InputFormat::Auto).unwrap(), r);
        let nan = decode(br#"{"sensorId":"s1","values":{"t":"NaN"}}"#, InputFormat::Json).unwrap();
        assert!(nan.values["t"].is_nan());
        let e = decode(br#"{"sensorId":"s1","valuez":{}}"#, InputFormat::Json).unwrap_err();
        assert!(e.message.contains("valuez"), "{e}");
        let e = decode(br#"{"sensorId":"s1","values":{"t":"warm"}}"#, InputFormat::Json).unwrap_err();
        assert!(e.message.contains("\"t\""), "{e}");
    }

    #[test]
    fn auto_falls_back_to_plain_protobuf() {
        let r = sample();
        assert_eq!(decode(&r.encode_to_vec(), InputFormat::Auto).unwrap(), r);
        assert_eq!(decode(b"\xff\xff\xff", InputFormat::Auto).unwrap_err().kind, ErrorKind::Decode);
    }

    #[test]
    fn decode_into_reuses_the_buffers_and_agrees_with_decode() {
        let mut r = SensorReading::default();
        let mut entries = Vec::new();
        let mut cases: Vec<Vec<u8>> = vec![sample().encode_to_vec(), Vec::new()];
        // Features in another order, a repeated key (the last wins), an entry without a
        // value, labels, an unknown field, invalid UTF-8, truncation, JSON and framing.
        let entry = |k: &[u8], v: Option<f64>| {
            let mut e = vec![0x0a, k.len() as u8];
            e.extend_from_slice(k);
            if let Some(v) = v {
                e.push(0x11);
                e.extend_from_slice(&v.to_le_bytes());
            }
            let mut f = vec![0x1a, e.len() as u8];
            f.extend(e);
            f
        };
        let mut odd = vec![0x0a, 2, b's', b'2'];
        odd.extend(entry(b"z", Some(1.0)));
        odd.extend(entry(b"a", Some(2.0)));
        odd.extend(entry(b"z", Some(3.0)));
        odd.extend(entry(b"m", None));
        cases.push(odd.clone());
        let mut labelled = sample();
        labelled.labels.insert("site".into(), "north".into());
        cases.push(labelled.encode_to_vec());
        let mut unknown = sample().encode_to_vec();
        unknown.extend([0x30, 7]);
        cases.push(unknown);
        let mut bad_utf8 = vec![0x0a, 1, 0xff];
        bad_utf8.extend(entry(b"a", Some(1.0)));
        cases.push(bad_utf8);
        cases.push(entry(&[0xc3], Some(1.0)));
        let full = sample().encode_to_vec();
        cases.extend((0..full.len()).map(|n| full[..n].to_vec()));
        cases.push(br#"{"sensorId":"s1","values":{"t":1}}"#.to_vec());
        cases.push(framed(&[0], &sample()));
        // Random bytes, seeded.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len % 40)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            cases.push(bytes);
        }
        for format in [InputFormat::Protobuf, InputFormat::Auto] {
            // Twice over, so that each case also follows every other one in the same buffers.
            for bytes in cases.iter().chain(cases.iter().rev()) {
                let want = decode(bytes, format);
                let got = decode_into(bytes, format, &mut r, &mut entries).map(|()| r.clone());
                match (&want, &got) {
                    (Ok(a), Ok(b)) => assert!(
                        a.sensor_id == b.sensor_id
                            && a.timestamp_ms == b.timestamp_ms
                            && a.source == b.source
                            && a.labels == b.labels
                            && a.values.len() == b.values.len()
                            && a.values.iter().zip(&b.values).all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits()),
                        "{bytes:02x?}: {a:?} vs {b:?}"
                    ),
                    (Err(a), Err(b)) => assert_eq!((a.kind, &a.message), (b.kind, &b.message), "{bytes:02x?}"),
                    _ => panic!("{bytes:02x?}: decode {want:?}, decode_into {got:?}"),
                }
            }
        }
        let odd = decode(&odd, InputFormat::Protobuf).unwrap();
        assert_eq!(odd.values.into_iter().collect::<Vec<_>>(), [("a".to_string(), 2.0), ("m".to_string(), 0.0), ("z".to_string(), 3.0)]);
    }
}
