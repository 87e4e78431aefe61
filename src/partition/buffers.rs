//! What a [`super::Processor`] reuses from one record to the next, so that scoring a valid
//! reading allocates nothing per feature or per output (issue 12: malloc/free was ~20% of the
//! worker's samples).

use super::decode::Entry;
use super::OutRecord;
use crate::proto::SensorReading;

/// A processor's reused buffers.
#[derive(Default)]
pub struct Buffers {
    /// The dense feature vector handed to the pipeline.
    pub x: Vec<f64>,
    /// The last valid reading: the next record is decoded into it (`decode::decode_into`),
    /// keeping its strings and, while the feature names stay the same, its feature map.
    pub reading: SensorReading,
    /// Decoding scratch space (`decode::decode_into`).
    pub entries: Vec<Entry>,
    /// Output records whose buffers the next outputs are built in (`output::recycle`).
    pub spare: Vec<OutRecord>,
}
