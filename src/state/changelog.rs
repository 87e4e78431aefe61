//! The changelog's record format: snapshots published to a compacted topic, so that a replica
//! that takes a partition over (and has no local snapshot, or an older one) continues with the
//! previous owner's models instead of fresh ones (Kafka Streams' approach).
//!
//! This module is the format and its decoding only, plain data in and out, testable without a
//! broker; `kafka::changelog` moves these records to and from the topic (and creates it,
//! compacted). The seam is the record: everything that knows what a key or a value means is
//! here, everything that knows a producer or a consumer is there.
//!
//! # Records
//! Changelog partition p holds input partition p (the topic has the input's partition
//! count). Every value is a checked envelope ([`super::codec`]).
//! - `"<p>/<sensor>"` -> [`Kind::ChangelogChunk`]: one key's model envelope (the same bytes
//!   as in RocksDB) tagged with the snapshot offset. A model larger than the record limit is
//!   split: chunk 0 under `"<p>/<sensor>"`, chunk i under `"<p>#<i>/<sensor>"` (the partition
//!   part cannot contain `#`, so keys never collide whatever the sensor id).
//! - `"<p>/"` -> [`Kind::ChangelogMarker`]: written after the chunks of a snapshot; "every key
//!   that changed up to offset S has been published".
//! - `"<p>#epoch/"` -> [`Kind::ReplayEpoch`]: the partition's replay epoch, written by
//!   `replay --state keep|reset` after the state it chose; a worker reads it in the tail of
//!   the partition on assignment, so a replica whose local snapshots predate the replay knows.
//! - `"<p>#end/"` -> [`Kind::ChangelogMarker`] with a random nonce: written by a reader before
//!   it reads, so it knows where the log ends. Tansu's high watermark is not the true end
//!   (design.md), and an idle gap is a guess; a record we appended ourselves is a fact.
//!
//! # Consistency
//! Compaction keeps the latest record per key, and a publisher can die half-way through a
//! snapshot, so the restored set may mix snapshots. Every record therefore carries the offset
//! its model has applied. A restore resumes the partition at the last complete marker S + 1
//! and feeds a reading at offset o of key k to k's model only if o is above k's own offset:
//! keys published ahead of S (a torn later publish) skip what they have already applied, and
//! keys not republished since an earlier marker had no reading since (a publisher must send
//! at least every key changed since its previous marker).

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::codec::{self, CodecError, Kind};
use super::StateError;

/// Largest model bytes per record: under the 1 MB default of `message.max.bytes` (producer
/// and broker) with room for the key, the chunk header and the record overhead.
pub const DEFAULT_MAX_CHUNK_BYTES: usize = 900_000;

/// A chunk record's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChunkRecord {
    /// Input partition.
    partition: i32,
    /// Sensor key.
    key: String,
    /// Last input offset applied to this model.
    offset: i64,
    /// Chunk index, 0-based.
    index: u32,
    /// Chunks of this model.
    count: u32,
    /// This chunk of the model's envelope bytes.
    bytes: Vec<u8>,
}

/// A marker record's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MarkerRecord {
    /// Input partition.
    partition: i32,
    /// Snapshot offset (for an end marker: -1).
    offset: i64,
    /// Keys published with this snapshot (for an end marker: 0).
    keys: u64,
    /// The reader's nonce (for a snapshot marker: 0).
    nonce: u64,
}

/// The record key of chunk `index` of `key` in partition `partition`.
fn chunk_key(partition: i32, key: &str, index: u32) -> String {
    if index == 0 {
        format!("{partition}/{key}")
    } else {
        format!("{partition}#{index}/{key}")
    }
}

fn snapshot_marker_key(partition: i32) -> String {
    format!("{partition}/")
}

fn end_marker_key(partition: i32) -> String {
    format!("{partition}#end/")
}

/// The record key of the replay epoch of `partition`.
pub fn epoch_key(partition: i32) -> String {
    format!("{partition}#epoch/")
}

/// The records (key, value) that publish `models` of `partition` at `offset`, marker last.
pub fn encode_snapshot<'a, K, T, I>(
    partition: i32,
    offset: i64,
    models: I,
    max_chunk_bytes: usize,
) -> Result<Vec<(String, Vec<u8>)>, StateError>
where
    K: AsRef<str>,
    T: Serialize + 'a,
    I: IntoIterator<Item = (K, &'a T)>,
{
    let encoded = models.into_iter().map(|(key, model)| {
        let key = key.as_ref();
        codec::encode(Kind::Model, model).map(|v| (key.to_string(), v)).map_err(|source| StateError::Encode {
            partition,
            key: key.into(),
            source,
        })
    });
    encode_encoded(partition, offset, encoded, max_chunk_bytes)
}

/// As [`encode_snapshot`], with models already in their envelopes.
pub fn encode_encoded<I>(partition: i32, offset: i64, models: I, max_chunk_bytes: usize) -> Result<Vec<(String, Vec<u8>)>, StateError>
where
    I: IntoIterator<Item = Result<(String, Vec<u8>), StateError>>,
{
    let mut out = Vec::new();
    let mut keys = 0u64;
    for entry in models {
        let (key, bytes) = entry?;
        encode_model(partition, offset, &key, &bytes, max_chunk_bytes, &mut out)?;
        keys += 1;
    }
    out.push(snapshot_marker(partition, offset, keys)?);
    Ok(out)
}

/// Append the chunk records of one key's model envelope `bytes` (published with the snapshot
/// at `offset`) to `out`: a publisher that streams a snapshot calls this per key and
/// [`snapshot_marker`] after the last, instead of building every record at once.
pub fn encode_model(
    partition: i32,
    offset: i64,
    key: &str,
    bytes: &[u8],
    max_chunk_bytes: usize,
    out: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), StateError> {
    let max_chunk_bytes = max_chunk_bytes.max(1);
    let encode_err = |source| StateError::Encode { partition, key: key.into(), source };
    let count = bytes.len().div_ceil(max_chunk_bytes).max(1) as u32;
    for (index, part) in bytes.chunks(max_chunk_bytes).enumerate() {
        let rec = ChunkRecord { partition, key: key.into(), offset, index: index as u32, count, bytes: part.to_vec() };
        out.push((chunk_key(partition, key, index as u32), codec::encode(Kind::ChangelogChunk, &rec).map_err(encode_err)?));
    }
    Ok(())
}

/// The marker record that closes a snapshot of `keys` keys at `offset` (after their chunks).
pub fn snapshot_marker(partition: i32, offset: i64, keys: u64) -> Result<(String, Vec<u8>), StateError> {
    let marker = MarkerRecord { partition, offset, keys, nonce: 0 };
    let value =
        codec::encode(Kind::ChangelogMarker, &marker).map_err(|source| StateError::Encode { partition, key: String::new(), source })?;
    Ok((snapshot_marker_key(partition), value))
}

/// One key's model as restored from the changelog.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredModel<T> {
    /// Sensor key.
    pub key: String,
    /// Last input offset this model has applied: feed it only readings above this.
    pub offset: i64,
    /// The model.
    pub model: T,
}

/// A partition's state as the changelog has it.
#[derive(Debug)]
pub struct ChangelogState<T> {
    /// Input partition.
    pub partition: i32,
    /// Offset of the last complete snapshot marker: resume at `marker + 1` (at the start of
    /// the retained input if `None`).
    pub marker: Option<i64>,
    /// The models, in key order.
    pub models: Vec<RestoredModel<T>>,
    /// Keys whose records were corrupt or torn (a model split into chunks of different
    /// snapshots). If not empty, the state is not safe to use: the caller falls back.
    pub rejected: Vec<StateError>,
}

impl<T> ChangelogState<T> {
    /// The offset to resume the input partition at.
    pub fn resume_at(&self) -> i64 {
        self.marker.map_or(0, |m| m + 1)
    }

    /// Whether every record decoded (the state may be used).
    pub fn is_usable(&self) -> bool {
        self.rejected.is_empty()
    }
}

/// Collects changelog records of one partition in log order, the latest per record key
/// winning (what compaction would leave), and decodes them at the end.
#[derive(Debug)]
pub struct Assembler {
    /// Input (= changelog) partition.
    partition: i32,
    /// The changelog topic (for messages).
    topic: String,
    /// Latest value per record key; `None` for a tombstone.
    latest: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Assembler {
    /// An empty assembler for `partition` of `topic`.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self { partition, topic: topic.into(), latest: HashMap::new() }
    }

    /// Take one record (in log order). Returns the nonce if it is an end marker.
    pub fn feed(&mut self, key: &[u8], value: Option<&[u8]>) -> Option<u64> {
        if key == end_marker_key(self.partition).as_bytes() {
            return value.and_then(|v| codec::decode::<MarkerRecord>(Kind::ChangelogMarker, v).ok()).map(|m| m.nonce);
        }
        self.latest.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        None
    }

    /// The record keys currently live (not deleted), as compaction would leave them.
    pub fn live_keys(self) -> Vec<String> {
        self.latest.into_iter().filter(|(_, v)| v.is_some()).map(|(k, _)| String::from_utf8_lossy(&k).into_owned()).collect()
    }

    /// Decode what was collected.
    pub fn finish<T: DeserializeOwned>(self) -> ChangelogState<T> {
        let corrupt = |key: String, source: CodecError| StateError::Corrupt {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: -1,
            key: Some(key),
            source,
        };
        let mut rejected = Vec::new();
        let mut marker = None;
        let mut chunks: HashMap<String, Vec<ChunkRecord>> = HashMap::new();
        let marker_key = snapshot_marker_key(self.partition);
        let epoch_key = epoch_key(self.partition);
        for (k, v) in &self.latest {
            let Some(v) = v else { continue };
            let key = String::from_utf8_lossy(k).into_owned();
            if key == epoch_key {
                continue;
            }
            if key == marker_key {
                match codec::decode::<MarkerRecord>(Kind::ChangelogMarker, v) {
                    Ok(m) => marker = Some(m.offset),
                    Err(source) => rejected.push(corrupt(key, source)),
                }
                continue;
            }
            match codec::decode::<ChunkRecord>(Kind::ChangelogChunk, v) {
                Ok(rec) if rec.partition == self.partition => chunks.entry(rec.key.clone()).or_default().push(rec),
                Ok(rec) => rejected.push(corrupt(
                    key,
                    CodecError::Payload(format!("record of partition {} in partition {}", rec.partition, self.partition)),
                )),
                Err(source) => rejected.push(corrupt(key, source)),
            }
        }
        let mut models = Vec::with_capacity(chunks.len());
        for (key, mut parts) in chunks {
            parts.sort_by_key(|c| c.index);
            let head = (parts[0].offset, parts[0].count);
            // Stale higher chunks of a model that later shrank are ignored (count says so).
            parts.retain(|c| c.index < head.1);
            let whole =
                parts.len() == head.1 as usize && parts.iter().enumerate().all(|(i, c)| c.index == i as u32 && (c.offset, c.count) == head);
            if !whole {
                rejected.push(corrupt(
                    key,
                    CodecError::Payload(format!("torn model: chunks of different snapshots (chunk 0 at offset {})", head.0)),
                ));
                continue;
            }
            let bytes: Vec<u8> = parts.into_iter().flat_map(|c| c.bytes).collect();
            match codec::decode::<T>(Kind::Model, &bytes) {
                Ok(model) => models.push(RestoredModel { key, offset: head.0, model }),
                Err(source) => rejected.push(StateError::Corrupt {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    offset: head.0,
                    key: Some(key),
                    source,
                }),
            }
        }
        models.sort_by(|a, b| a.key.cmp(&b.key));
        ChangelogState { partition: self.partition, marker, models, rejected }
    }
}

/// The record (key, value) a reader appends before reading `partition` from the beginning:
/// reading it back (same `nonce`) proves the end of the log is reached.
pub fn end_marker(partition: i32, nonce: u64) -> Result<(String, Vec<u8>), StateError> {
    let marker = MarkerRecord { partition, offset: -1, keys: 0, nonce };
    let value = codec::encode(Kind::ChangelogMarker, &marker).map_err(|source| StateError::Encode {
        partition,
        key: end_marker_key(partition),
        source,
    })?;
    Ok((end_marker_key(partition), value))
}

/// The record (key, value) of the replay epoch of `partition`.
pub fn epoch_record(partition: i32, epoch: u32) -> Result<(String, Vec<u8>), StateError> {
    let value =
        codec::encode(Kind::ReplayEpoch, &epoch).map_err(|source| StateError::Encode { partition, key: epoch_key(partition), source })?;
    Ok((epoch_key(partition), value))
}

/// The replay epoch in the value of an [`epoch_key`] record.
pub fn decode_epoch(value: &[u8]) -> Result<u32, CodecError> {
    codec::decode::<u32>(Kind::ReplayEpoch, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(asm: &mut Assembler, records: &[(String, Vec<u8>)]) {
        for (k, v) in records {
            asm.feed(k.as_bytes(), Some(v));
        }
    }

    #[test]
    fn latest_record_per_key_wins_and_marker_gives_the_resume_offset() {
        let a: Vec<(String, u64)> = vec![("s1".into(), 1), ("s2".into(), 2)];
        let b: Vec<(String, u64)> = vec![("s1".into(), 10)];
        let mut asm = Assembler::new("cl", 3);
        feed_all(&mut asm, &encode_snapshot(3, 100, a.iter().map(|(k, v)| (k, v)), 1000).expect("encodes"));
        feed_all(&mut asm, &encode_snapshot(3, 200, b.iter().map(|(k, v)| (k, v)), 1000).expect("encodes"));
        let st = asm.finish::<u64>();
        assert!(st.is_usable(), "{:?}", st.rejected);
        assert_eq!(st.marker, Some(200));
        assert_eq!(st.resume_at(), 201);
        assert_eq!(
            st.models,
            vec![RestoredModel { key: "s1".into(), offset: 200, model: 10 }, RestoredModel { key: "s2".into(), offset: 100, model: 2 }]
        );
    }

    #[test]
    fn large_models_are_chunked_and_reassembled() {
        let big: Vec<u32> = (0..5000).collect();
        let models = [("a/b#1".to_string(), big.clone()), ("a".to_string(), vec![7])];
        let records = encode_snapshot(0, 5, models.iter().map(|(k, v)| (k, v)), 1024).expect("encodes");
        assert!(records.len() > 10, "split into chunks");
        assert!(records.iter().all(|(_, v)| v.len() <= 1024 + 64), "every record under the limit");
        let keys: std::collections::HashSet<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys.len(), records.len(), "record keys are unique");
        let mut asm = Assembler::new("cl", 0);
        feed_all(&mut asm, &records);
        let st = asm.finish::<Vec<u32>>();
        assert!(st.is_usable(), "{:?}", st.rejected);
        assert_eq!(st.models.iter().find(|m| m.key == "a/b#1").map(|m| &m.model), Some(&big));
    }

    #[test]
    fn torn_publish_is_usable_per_key_but_torn_chunks_are_rejected() {
        let v1: Vec<(String, Vec<u32>)> = vec![("k".into(), (0..600).collect()), ("j".into(), vec![1])];
        let v2: Vec<(String, Vec<u32>)> = vec![("k".into(), (0..600).rev().collect()), ("j".into(), vec![2])];
        let r1 = encode_snapshot(1, 50, v1.iter().map(|(k, v)| (k, v)), 512).expect("encodes");
        let r2 = encode_snapshot(1, 90, v2.iter().map(|(k, v)| (k, v)), 512).expect("encodes");
        // The publisher of snapshot 90 died after j and the first chunk of k ("j" sorts
        // after "k" here only because we reorder; take chunk 0 of k and all of j).
        let mut asm = Assembler::new("cl", 1);
        feed_all(&mut asm, &r1);
        let torn: Vec<(String, Vec<u8>)> = r2.iter().filter(|(k, _)| k == "1/k" || k == "1/j").cloned().collect();
        feed_all(&mut asm, &torn);
        let st = asm.finish::<Vec<u32>>();
        assert_eq!(st.marker, Some(50), "the snapshot-90 marker never landed");
        assert_eq!(
            st.models.iter().map(|m| (m.key.as_str(), m.offset)).collect::<Vec<_>>(),
            vec![("j", 90)],
            "j is ahead of the marker and says so"
        );
        assert_eq!(st.rejected.len(), 1);
        assert!(st.rejected[0].to_string().contains("torn"), "{}", st.rejected[0]);
        assert!(!st.is_usable());
    }

    #[test]
    fn bit_flip_in_a_record_is_rejected_with_its_key() {
        let m: Vec<(String, u64)> = vec![("s9".into(), 9)];
        let mut records = encode_snapshot(2, 1, m.iter().map(|(k, v)| (k, v)), 1000).expect("encodes");
        let last = records[0].1.len() - 1;
        records[0].1[last] ^= 1;
        let mut asm = Assembler::new("cl", 2);
        feed_all(&mut asm, &records);
        let st = asm.finish::<u64>();
        assert!(!st.is_usable());
        assert!(st.rejected[0].to_string().contains("2/s9"), "{}", st.rejected[0]);
    }
}
