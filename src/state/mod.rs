//! Durable state: the RocksDB snapshot store, the snapshot codec, the changelog's record
//! format and the restore policy. No Kafka client here: `kafka::changelog` moves the
//! changelog's records and `kafka::recovery` applies the [`policy`] on assignment.
//!
//! This is the only module that touches RocksDB. A *snapshot* of an input partition is every
//! key's model plus the last input offset applied to them, written all or nothing (chunks, its
//! meta record last: [`store::StateStore::write_snapshot`]); a bounded history of them per partition serves
//! `replay --state rewind` and the fallback past a corrupt snapshot. Every stored value is a
//! checked envelope ([`codec`]); the [`changelog`] records carry the same bytes to a compacted
//! topic so that another replica can take a partition over with its model.

pub mod changelog;
pub mod codec;
pub mod packed;
pub mod policy;
pub mod store;

pub use codec::{CodecError, Kind};
pub use packed::PackedRows;

/// Models already in their envelopes, by key (what snapshots and the changelog move around
/// without knowing the model type).
pub type EncodedModels = Vec<(String, Vec<u8>)>;
pub use store::{Restored, Snapshot, SnapshotInfo, StateStore};

/// What can go wrong with durable state. Every variant names the partition (and the key
/// where there is one), so a report says exactly what was lost or skipped.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened (missing permissions, a read-only or full disk, or
    /// another worker holding the directory's lock).
    #[error("cannot open state store at {path}: {source}")]
    Open {
        /// `state.path`.
        path: std::path::PathBuf,
        /// RocksDB's reason.
        source: rocksdb::Error,
    },
    /// The database is closed: a write failed and reopening it failed too (still full, or
    /// gone). The next write tries to reopen it again.
    #[error("state store at {path} is closed after a failed write (reopened on the next write)")]
    Closed {
        /// `state.path`.
        path: std::path::PathBuf,
    },
    /// `state.path` could not be created.
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        /// `state.path`.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A snapshot could not be written. The caller must stop committing offsets past the
    /// last snapshot that did succeed and report unhealthy: nothing is lost, the input is
    /// replayed from there.
    #[error("failed to write snapshot of {topic}[{partition}] at offset {offset}: {source}")]
    Write {
        /// Input topic.
        topic: String,
        /// Input partition.
        partition: i32,
        /// Offset the snapshot would have recorded.
        offset: i64,
        /// RocksDB's reason.
        source: rocksdb::Error,
    },
    /// Reading the store failed (I/O error, or RocksDB's own block checksum caught damage).
    #[error("failed to read state of {topic}[{partition}]: {source}")]
    Read {
        /// Input topic.
        topic: String,
        /// Input partition.
        partition: i32,
        /// RocksDB's reason.
        source: rocksdb::Error,
    },
    /// A stored value failed its envelope check or did not decode.
    #[error("corrupt snapshot of {topic}[{partition}] at offset {offset}, {}: {source}", key.as_deref().map_or("snapshot metadata".to_string(), |k| format!("key {k:?}")))]
    Corrupt {
        /// Input topic.
        topic: String,
        /// Input partition.
        partition: i32,
        /// Offset of the snapshot.
        offset: i64,
        /// The key whose value is bad; `None` for the snapshot's metadata.
        key: Option<String>,
        /// What is wrong with the bytes.
        source: CodecError,
    },
    /// A snapshot holds fewer or more keys than its metadata recorded.
    #[error("incomplete snapshot of {topic}[{partition}] at offset {offset}: metadata says {expected} keys, found {found}")]
    Incomplete {
        /// Input topic.
        topic: String,
        /// Input partition.
        partition: i32,
        /// Offset of the snapshot.
        offset: i64,
        /// Keys recorded in the metadata.
        expected: u64,
        /// Keys present.
        found: u64,
    },
    /// A delta snapshot's parent is missing or not below it (see `store::chain`).
    #[error("snapshot of {topic}[{partition}] at offset {offset} is a delta of the snapshot at {parent}, which is missing")]
    MissingParent {
        /// Input topic.
        topic: String,
        /// Input partition.
        partition: i32,
        /// Offset of the delta.
        offset: i64,
        /// Offset of the snapshot it builds on.
        parent: i64,
    },
    /// A model could not be encoded (a bug: models are plain data).
    #[error("cannot encode the model of key {key:?} of partition {partition}: {source}")]
    Encode {
        /// Input partition.
        partition: i32,
        /// Sensor key.
        key: String,
        /// Why.
        source: CodecError,
    },
    /// An offset that cannot be a snapshot's (below -1).
    #[error("invalid snapshot offset {0}: must be >= -1 (the last input offset applied)")]
    InvalidOffset(i64),
    /// The changelog topic could not be written or read.
    #[error("changelog {topic}[{partition}]: {reason}")]
    Changelog {
        /// Changelog topic.
        topic: String,
        /// Partition (= input partition).
        partition: i32,
        /// What failed.
        reason: String,
    },
}

/// The per-key model the worker stores (one seam: the worker's own per-key type goes here
/// if it wraps the pipeline with more state).
pub type KeyModel = crate::partition::KeyPipeline;

/// As [`encode_models`], packed into two buffers ([`PackedRows`]): a snapshot waiting to be
/// written.
pub fn encode_packed<'a>(partition: i32, models: impl IntoIterator<Item = (&'a String, &'a KeyModel)>) -> Result<PackedRows, StateError> {
    let mut rows = PackedRows::default();
    for (k, m) in models {
        let v = codec::encode(Kind::Model, m).map_err(|source| StateError::Encode { partition, key: k.clone(), source })?;
        rows.push(k, &v);
    }
    Ok(rows)
}

/// Every key's model of `partition` in its envelope, for a snapshot or the changelog.
pub fn encode_models<'a>(
    partition: i32,
    models: impl IntoIterator<Item = (&'a String, &'a KeyModel)>,
) -> Result<EncodedModels, StateError> {
    models
        .into_iter()
        .map(|(k, m)| {
            codec::encode(Kind::Model, m).map(|v| (k.clone(), v)).map_err(|source| StateError::Encode { partition, key: k.clone(), source })
        })
        .collect()
}
