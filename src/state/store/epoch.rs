//! A partition's replay epoch, in the `meta` family beside its snapshots ([`super`]).

use rocksdb::WriteBatch;

use super::{epoch_key, StateStore, CF_META};
use crate::state::codec::{self, Kind};
use crate::state::StateError;

impl StateStore {
    /// The partition's replay epoch (0 until a `replay --state keep|reset`).
    pub fn epoch(&self, topic: &str, partition: i32) -> Result<u32, StateError> {
        let key = epoch_key(topic, partition);
        let raw = self.with_db(|db| {
            db.get_cf(Self::cf(db, CF_META), &key).map_err(|source| StateError::Read { topic: topic.into(), partition, source })
        })?;
        match raw {
            None => Ok(0),
            Some(v) => codec::decode::<u32>(Kind::ReplayEpoch, &v).map_err(|source| StateError::Corrupt {
                topic: topic.into(),
                partition,
                offset: -1,
                key: Some("(replay epoch)".into()),
                source,
            }),
        }
    }

    /// Record the partition's replay epoch.
    pub fn set_epoch(&self, topic: &str, partition: i32, epoch: u32) -> Result<(), StateError> {
        let value = codec::encode(Kind::ReplayEpoch, &epoch).map_err(|source| StateError::Encode {
            partition,
            key: "(replay epoch)".into(),
            source,
        })?;
        let mut batch = WriteBatch::default();
        self.recover()?;
        self.with_db(|db| {
            batch.put_cf(Self::cf(db, CF_META), epoch_key(topic, partition), &value);
            Ok(())
        })?;
        self.write_batch(batch, |source| StateError::Write { topic: topic.into(), partition, offset: -1, source })
    }
}
