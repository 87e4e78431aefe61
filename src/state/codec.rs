//! The snapshot envelope: a fixed header (magic, version, kind, length, CRC-32) around the
//! postcard bytes of plain data.
//!
//! Decoding is data only (serde + postcard), never code: the opposite of ONAD's pickle, which
//! runs whatever the file says. Every way a stored value can be wrong (cut short, a flipped
//! bit, written by a newer release, a value of another kind) is a distinct [`CodecError`];
//! the store adds the partition and key it was reading (see `StateError::Corrupt`).
//!
//! Layout (little-endian), 16 bytes of header then the payload:
//!
//! | bytes | field    | meaning                                                       |
//! |-------|----------|---------------------------------------------------------------|
//! | 0..4  | magic    | `b"ONSS"` (onad-stream state)                                  |
//! | 4     | version  | envelope + payload schema version, [`VERSION`]                |
//! | 5     | kind     | what the payload is, [`Kind`]                                  |
//! | 6..8  | reserved | zero; a future flag (e.g. compression) must bump the version  |
//! | 8..12 | length   | payload length in bytes                                       |
//! | 12..16| crc32    | CRC-32 (IEEE) of bytes 0..12 and the payload                   |

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First four bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"ONSS";
/// The only version this build writes and reads. Bump it when the payload layout of any
/// kind changes (postcard is not self-describing: a changed struct would otherwise decode
/// to garbage or fail obscurely), and keep a decoder for the previous one.
///
/// 2: a pipeline's calibrator is a peaks-over-threshold summary instead of a window of 2,000
/// raw scores. There is no decoder for 1 (pre-release): a version-1 snapshot is an
/// `UnknownVersion`, handled like any unreadable snapshot (changelog, else rebuild).
///
/// 3: a sensor's entry (`KeyPipeline`) also holds its circuit breaker, its warm fallback
/// pipeline and the time of its last alert (issue 9). Versions 1 and 2 are an
/// `UnknownVersion`, handled as above: after an upgrade from 2, partitions rebuild their
/// models from the input (or restore from a changelog written by version 3).
pub const VERSION: u8 = 3;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;

/// What an envelope holds, so that a value read from the wrong place is caught.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// One key's model (a pipeline, or whatever the worker stores per key).
    Model = 1,
    /// The metadata of one partition snapshot (offset, key count, time).
    SnapshotMeta = 2,
    /// One record of the changelog topic (a chunk of one key's model envelope).
    ChangelogChunk = 3,
    /// The end-of-snapshot marker of the changelog topic.
    ChangelogMarker = 4,
    /// A partition's replay epoch in the store.
    ReplayEpoch = 5,
}

impl Kind {
    /// The kind of a header byte, if known.
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Model),
            2 => Some(Kind::SnapshotMeta),
            3 => Some(Kind::ChangelogChunk),
            4 => Some(Kind::ChangelogMarker),
            5 => Some(Kind::ReplayEpoch),
            _ => None,
        }
    }
}

/// Why bytes are not a valid envelope of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than a header: the value was cut short.
    #[error("truncated: {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// Not an onad-stream envelope at all.
    #[error("bad magic {found:02x?} (expected {MAGIC:02x?})")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// Written by a release with another layout.
    #[error("unknown snapshot version {found} (this build reads version {VERSION})")]
    UnknownVersion {
        /// The version byte.
        found: u8,
    },
    /// A value of another kind (or an unknown kind).
    #[error("wrong kind {found} (expected {expected:?})")]
    WrongKind {
        /// What the caller asked for.
        expected: Kind,
        /// The kind byte found.
        found: u8,
    },
    /// The payload is shorter or longer than the header says: truncated or padded.
    #[error("length mismatch: header says {declared} payload bytes, {actual} present")]
    Length {
        /// Length in the header.
        declared: usize,
        /// Bytes after the header.
        actual: usize,
    },
    /// The bytes changed after they were written (bit flip, torn write).
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes present.
        computed: u32,
    },
    /// The checksum matched but the payload does not decode as the expected type: a bug, or
    /// a payload change without a version bump.
    #[error("payload does not decode: {0}")]
    Payload(String),
    /// The value could not be serialized (a bug: plain data always serializes).
    #[error("payload does not encode: {0}")]
    Encode(String),
    /// The payload is larger than the 4 GiB a header can describe.
    #[error("payload of {0} bytes is too large for an envelope")]
    TooLarge(usize),
}

/// Serialize `value` with postcard and wrap it in an envelope of `kind`.
pub fn encode<T: Serialize + ?Sized>(kind: Kind, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(value, out).map_err(|e| CodecError::Encode(e.to_string()))?;
    seal(kind, out)
}

/// Wrap already-serialized bytes (used to re-wrap chunks without re-encoding).
pub fn encode_bytes(kind: Kind, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(payload);
    seal(kind, out)
}

/// Fill in the header of `buf`, whose payload starts at [`HEADER_LEN`].
fn seal(kind: Kind, mut buf: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    let len = buf.len() - HEADER_LEN;
    let len32 = u32::try_from(len).map_err(|_| CodecError::TooLarge(len))?;
    buf[0..4].copy_from_slice(&MAGIC);
    buf[4] = VERSION;
    buf[5] = kind as u8;
    buf[6..8].copy_from_slice(&[0, 0]);
    buf[8..12].copy_from_slice(&len32.to_le_bytes());
    let crc = checksum(&buf[0..12], &buf[HEADER_LEN..]);
    buf[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// CRC-32 of the first 12 header bytes and the payload.
fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// Check the envelope of `bytes` and return its payload.
pub fn open(kind: Kind, bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&bytes[0..4]);
    if magic != MAGIC {
        return Err(CodecError::BadMagic { found: magic });
    }
    if bytes[4] != VERSION {
        return Err(CodecError::UnknownVersion { found: bytes[4] });
    }
    if Kind::from_byte(bytes[5]) != Some(kind) {
        return Err(CodecError::WrongKind { expected: kind, found: bytes[5] });
    }
    let declared = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let payload = &bytes[HEADER_LEN..];
    if declared != payload.len() {
        return Err(CodecError::Length { declared, actual: payload.len() });
    }
    let stored = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let computed = checksum(&bytes[0..12], payload);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(payload)
}

/// Check the envelope of `bytes` and decode its payload as `T`.
pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, CodecError> {
    let payload = open(kind, bytes)?;
    postcard::from_bytes(payload).map_err(|e| CodecError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Pipeline;
    use crate::detect::PipelineSpec;

    fn pipeline() -> Pipeline {
        let spec = PipelineSpec { learn_anomalies: false, seed: 7, ..PipelineSpec::default() };
        let mut p = spec.check().expect("valid spec").build(3, "s-1");
        for i in 0..300 {
            let v = i as f64;
            p.process(&[v.sin(), v.cos(), (v * 0.1).tan()]);
        }
        p
    }

    #[test]
    fn pipeline_round_trips_bit_identically() {
        let p = pipeline();
        let bytes = encode(Kind::Model, &p).expect("encodes");
        let mut back: Pipeline = decode(Kind::Model, &bytes).expect("decodes");
        // Compare state bytes (Pipeline's PartialEq also compares its scratch buffers).
        assert!(encode(Kind::Model, &back).expect("encodes") == bytes, "decoded pipeline re-encodes to the same bytes");
        let mut p = p;
        let x = [0.3, -0.2, 4.0];
        assert_eq!(back.process(&x), p.process(&x), "restored pipeline scores identically");
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(Kind::Model, &pipeline()).expect("encodes");
        for cut in 0..bytes.len() {
            let err = decode::<Pipeline>(Kind::Model, &bytes[..cut]).expect_err("truncated must fail");
            assert!(matches!(err, CodecError::TooShort { .. } | CodecError::Length { .. }), "cut at {cut}: unexpected {err:?}");
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(Kind::Model, &pipeline()).expect("encodes");
        // Every bit of the header and a stride through the payload (all bits would be slow).
        let positions = (0..HEADER_LEN * 8).chain((HEADER_LEN * 8..bytes.len() * 8).step_by(13));
        for bit in positions {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode::<Pipeline>(Kind::Model, &b).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn unknown_version_and_wrong_kind_are_typed() {
        let mut bytes = encode(Kind::Model, &pipeline()).expect("encodes");
        assert!(matches!(decode::<Pipeline>(Kind::SnapshotMeta, &bytes), Err(CodecError::WrongKind { found: 1, .. })));
        bytes[4] = 9;
        assert_eq!(decode::<Pipeline>(Kind::Model, &bytes).unwrap_err(), CodecError::UnknownVersion { found: 9 });
        assert!(matches!(decode::<Pipeline>(Kind::Model, b"garbage, not an envelope"), Err(CodecError::BadMagic { .. })));
    }

    #[test]
    fn valid_envelope_of_another_type_is_a_payload_error() {
        let bytes = encode(Kind::Model, &(1u8, 2u8)).expect("encodes");
        assert!(matches!(decode::<Pipeline>(Kind::Model, &bytes), Err(CodecError::Payload(_))));
    }
}
