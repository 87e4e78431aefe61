//! The worker's state hooks: restore on assignment, snapshot every `checkpoint_interval`
//! readings / `checkpoint_secs`, on revoke and on shutdown, publish to the changelog, and find
//! what was already emitted so that a restart does not emit it twice.
//!
//! Wiring only: the decisions are pure and tested where they belong — where a partition
//! resumes and what is answered already in [`crate::partition::resume`], which state to
//! restore and when to snapshot in [`crate::state::policy`]; the RocksDB store is
//! [`crate::state::StateStore`]; the Kafka reads are [`super::changelog`] and
//! [`super::tails`].
//!
//! # Recovery on assignment (committed offset C = the next record the group would read)
//! 1. Models parked by this worker, in the current replay epoch and contiguous with C: carry
//!    on.
//! 2. Else the newest local snapshot that decodes (offset S); if it is missing or behind C,
//!    the changelog's state when that is newer.
//! 3. Resume at S + 1 (no state at all: at the start of the input, "rebuild by replay"),
//!    learning without outputs every record below C, and not producing an output to topic T
//!    of a record at or below H_T, the highest source offset of the current epoch found in
//!    the tail of this partition of T. So outputs delivered before a crash but not yet
//!    committed are not emitted again: effectively-once without broker transactions. What
//!    remains: a zombie member that lost its session but still produces can add duplicates
//!    (recognisable by their source offset header).
//!
//! A failed snapshot write is returned to the worker as [`StateFailure`], which pauses the
//! partition before offsets pass the lost snapshot.

use std::time::{Duration, Instant};

use super::changelog::Changelog;
use super::tails::TailReader;
use crate::config::Config;
use crate::error::StateFailure;
use crate::partition::resume::{self, Restored, Tails};
use crate::partition::{Models, Resume, StateHooks};
use crate::state::policy::{self, ChangelogVerdict, Checkpoints};
use crate::state::{encode_models, KeyModel, StateError, StateStore};
use crate::telemetry::otel;

/// Bound on a changelog restore during assignment.
const CHANGELOG_RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// [`StateHooks`] backed by the RocksDB store and the changelog topic.
pub struct StoreHooks {
    /// The worker's database.
    store: StateStore,
    /// Changelog publishing/restoring, with the runtime to drive it from worker threads.
    changelog: Option<(Changelog, tokio::runtime::Handle)>,
    /// Reads the output tails (and the changelog's replay epoch) on assignment.
    tails: TailReader,
    /// When to snapshot each partition.
    checkpoints: Checkpoints,
}

impl std::fmt::Debug for StoreHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHooks").field("store", &self.store).finish()
    }
}

impl StoreHooks {
    /// Open `state.path` and, with a runtime handle, the changelog topic (created compacted
    /// with the input's partition count if missing). Call from inside the worker's runtime.
    pub async fn open(config: &Config, partitions: i32) -> Result<Self, StateError> {
        let store = StateStore::open(&config.state.path, config.state.snapshot_history)?;
        let cl = Changelog::new(&config.kafka, &config.kafka.changelog_topic)?;
        cl.ensure_topic(partitions).await?;
        Ok(Self {
            store,
            changelog: Some((cl, tokio::runtime::Handle::current())),
            tails: TailReader::new(&config.kafka),
            checkpoints: Checkpoints::new(config.checkpoint_interval, config.checkpoint_every),
        })
    }

    /// The store (for inspection in tests).
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// The newest usable state of a partition: local snapshot, or the changelog's if newer
    /// (only the changelog's when the local snapshots predate a replay: `stale`).
    fn restore(&self, topic: &str, partition: i32, committed: Option<i64>, stale: bool) -> Option<Models> {
        let local = match (!stale).then(|| self.store.restore::<KeyModel>(topic, partition, None)) {
            None => None,
            Some(Ok(r)) => {
                for e in &r.rejected {
                    tracing::warn!(partition, cause = %e, "skipping unusable snapshot");
                }
                r.snapshot.map(|s| (s.info.offset, s.models))
            }
            Some(Err(e)) => {
                tracing::error!(partition, cause = %e, "state store unreadable; trying the changelog");
                None
            }
        };
        let local_offset = local.as_ref().map(|(o, _)| *o);
        let mut best = local;
        if policy::needs_changelog(local_offset, committed) {
            if let Some((cl, rt)) = &self.changelog {
                match rt.block_on(cl.restore::<KeyModel>(partition, CHANGELOG_RESTORE_TIMEOUT)) {
                    Ok(st) => match policy::judge_changelog(local_offset, &st) {
                        ChangelogVerdict::Unusable => {
                            for e in &st.rejected {
                                tracing::warn!(partition, cause = %e, "changelog record unusable");
                            }
                        }
                        ChangelogVerdict::Newer(m) => {
                            tracing::info!(partition, offset = m, keys = st.models.len(), ?local_offset, "restoring from the changelog");
                            best = Some((m, st.models.into_iter().map(|r| (r.key, r.model)).collect()));
                        }
                        ChangelogVerdict::TornAhead(m) => {
                            tracing::warn!(partition, marker = m, "changelog holds models ahead of its marker (torn publish); not used");
                        }
                        ChangelogVerdict::NotNewer => {}
                    },
                    Err(e) => tracing::warn!(partition, cause = %e, "changelog restore failed"),
                }
            }
        }
        best.map(|(offset, models)| policy::models_at(offset, models))
    }

    /// This store's replay epoch of `partition` (0 if unreadable).
    fn local_epoch(&self, topic: &str, partition: i32) -> u32 {
        self.store.epoch(topic, partition).unwrap_or_else(|e| {
            tracing::error!(partition, cause = %e, "cannot read the replay epoch; assuming 0");
            0
        })
    }

    /// The output and changelog tails of `partition`; `None` (logged) when they cannot be read.
    fn tails(&self, partition: i32) -> Option<Tails> {
        self.tails
            .read(partition)
            .map_err(|e| {
                // Without them a restart may duplicate outputs (still recognisable by their
                // source offset header): at-least-once, never loss.
                tracing::warn!(partition, cause = %e, "cannot read the output tails; duplicates possible");
            })
            .ok()
    }

    /// A replay raised the epoch elsewhere: this store's snapshots predate it. They go (a
    /// later restore must not pick one up), then the epoch is recorded; a crash in between
    /// only repeats this.
    fn drop_stale(&self, topic: &str, partition: i32, local: u32, epoch: u32) {
        tracing::warn!(partition, local, epoch, "a replay raised the epoch elsewhere: this store's snapshots predate it and are dropped");
        if let Err(e) = self.store.delete_after(topic, partition, None).and_then(|_| self.store.set_epoch(topic, partition, epoch)) {
            tracing::error!(partition, cause = %e, "cannot drop the snapshots from before the replay");
        }
    }

    /// Write an encoded snapshot and publish it to the changelog.
    fn write(&self, topic: &str, partition: i32, offset: i64, models: &[(String, Vec<u8>)]) -> Result<(), StateError> {
        let span = otel::snapshot_span(topic, partition);
        let _in_span = span.enter();
        let t = Instant::now();
        let written = self.store.write_encoded(topic, partition, offset, models.iter().cloned().map(Ok));
        span.record("offset", offset).record("outcome", if written.is_ok() { "ok" } else { "error" });
        let info = written?;
        span.record("keys", info.keys as i64).record("bytes", info.bytes as i64);
        tracing::debug!(partition, offset, keys = info.keys, bytes = info.bytes, ms = t.elapsed().as_millis() as u64, "snapshot written");
        if let Some((cl, rt)) = &self.changelog {
            // The local snapshot is what recovery needs; a changelog failure only costs a
            // longer replay on another replica, so it is reported, not fatal.
            if let Err(e) = rt.block_on(cl.publish_encoded(partition, offset, models.to_vec())) {
                tracing::warn!(partition, offset, cause = %e, "changelog publish failed");
            }
        }
        Ok(())
    }
}

impl StateHooks for StoreHooks {
    fn on_assign(&self, topic: &str, partition: i32, parked: Option<Models>, committed: Option<i64>) -> Resume {
        let span = otel::restore_span(topic, partition);
        let _in_span = span.enter();
        let local = self.local_epoch(topic, partition);
        let tails = self.tails(partition);
        let epoch = resume::epoch(local, tails.as_ref());
        if epoch.stale {
            self.drop_stale(topic, partition, local, epoch.current);
        }
        let state = Restored::parked_or(parked, epoch.current, || self.restore(topic, partition, committed, epoch.stale));
        let (snapshot, nothing) = (matches!(state, Restored::Snapshot(_)), matches!(state, Restored::Nothing));
        let r = resume::resume(committed, state, tails.as_ref(), epoch.current);
        if snapshot {
            let (keys, emitted) = (r.models.keys.len(), r.emitted);
            tracing::info!(partition, snapshot = ?r.models.last_offset, keys, ?committed, ?emitted, "restored state");
        } else if nothing && r.start_at.is_some() {
            tracing::warn!(partition, ?committed, "no usable state: rebuilding the models from the start of the input");
        }
        let source = if snapshot {
            "snapshot"
        } else if nothing {
            "none"
        } else {
            "parked"
        };
        span.record("source", source).record("keys", r.models.keys.len() as i64).record("offset", r.models.last_offset.unwrap_or(-1));
        self.checkpoints.assigned(partition, r.models.last_offset);
        r
    }

    fn after_batch(&self, topic: &str, partition: i32, models: &Models, delivered: Option<i64>) -> Result<(), StateFailure> {
        let Some(pending) = self.checkpoints.ready(partition, models, delivered)? else { return Ok(()) };
        let written = self.write(topic, partition, pending.offset, &pending.models);
        self.checkpoints.written(partition, pending, written.is_ok());
        written.map_err(|e| StateFailure(e.to_string()))
    }

    fn on_revoke(&self, topic: &str, partition: i32, models: &Models) {
        let Some(applied) = models.last_offset else { return };
        if self.checkpoints.revoked(partition) == Some(applied) {
            return;
        }
        let result = encode_models(partition, &models.keys).and_then(|m| self.write(topic, partition, applied, &m));
        match result {
            Ok(()) => tracing::info!(partition, offset = applied, keys = models.keys.len(), "snapshot on revoke"),
            Err(e) => {
                tracing::error!(partition, offset = applied, cause = %e, "snapshot on revoke failed; the next owner replays from the previous one")
            }
        }
    }
}
