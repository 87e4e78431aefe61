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

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::changelog::Changelog;
use super::tails::TailReader;
use crate::config::Config;
use crate::error::StateFailure;
use crate::partition::resume::{self, Restored, Tails};
use crate::partition::{ColdStore, KeyPipeline, Models, Resume, StateHooks};
use crate::state::codec::{self, Kind};
use crate::state::policy::{self, ChangelogVerdict, Checkpoints, Pending};
use crate::state::{KeyModel, StateError, StateStore};
use crate::telemetry::otel;
use crate::telemetry::WorkerStats;

/// Bound on a changelog restore during assignment.
const CHANGELOG_RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// [`StateHooks`] backed by the RocksDB store and the changelog topic.
pub struct StoreHooks {
    /// The worker's database.
    store: Arc<StateStore>,
    /// Changelog publishing/restoring, with the runtime to drive it from worker threads.
    changelog: Option<(Changelog, tokio::runtime::Handle)>,
    /// Reads the output tails (and the changelog's replay epoch) on assignment.
    tails: TailReader,
    /// When to snapshot each partition.
    checkpoints: Arc<Checkpoints>,
    /// Partitions whose changelog may lack changes (assigned since, or a publish failed):
    /// their next snapshot is full, and so is its publish. A delta publish is only complete
    /// on top of a complete changelog.
    changelog_behind: Mutex<HashSet<i32>>,
    /// Where snapshot timings and sizes are reported (`/metrics`, `/ready`).
    stats: Arc<WorkerStats>,
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
            store: Arc::new(store),
            changelog: Some((cl, tokio::runtime::Handle::current())),
            tails: TailReader::new(&config.kafka),
            checkpoints: Arc::new(
                Checkpoints::new(config.checkpoint_interval, config.checkpoint_every).with_full_every(config.state.full_snapshot_every),
            ),
            changelog_behind: Mutex::default(),
            stats: Arc::default(),
        })
    }

    /// Report snapshot timings and sizes to `stats` (the running worker's).
    pub fn with_stats(mut self, stats: Arc<WorkerStats>) -> Self {
        self.stats = stats;
        self
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

    /// Forget the partition's evicted pipelines: they belong to an earlier incarnation (see
    /// `partition::resident`). If that fails (logged), no snapshot is restored: rebuilding by
    /// replay is slow but exact, a snapshot mixed with newer evicted rows would not be.
    fn clear_spill(&self, topic: &str, partition: i32) -> bool {
        match self.store.clear_spill(topic, partition) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(partition, cause = %e, "cannot clear the evicted pipelines of an earlier owner");
                false
            }
        }
    }

    /// Write a snapshot (full: the resident pipelines and every evicted one; delta: the
    /// changed ones, resident or evicted) and publish the changed rows to the changelog (all
    /// of them for a full one whose partition's changelog is behind).
    fn write(&self, topic: &str, partition: i32, pending: &Pending) -> Result<(), StateError> {
        let span = otel::snapshot_span(topic, partition);
        let _in_span = span.enter();
        let t = Instant::now();
        let offset = pending.offset;
        span.record("offset", offset);
        // The changed evicted pipelines' rows, read from the spill as they are written (a
        // delta, and the changelog: twice then, instead of holding them all). No eviction
        // ran since the encoding (`partition::resident`): a row is the key's state at
        // `offset`. A row deleted since (its model started over) goes with the full snapshot
        // that deletion forces next.
        let mut evicted_keys: Vec<&String> = pending.evicted.iter().collect();
        evicted_keys.sort_unstable();
        let evicted = || {
            evicted_keys.iter().filter_map(|key| match self.store.unspill(topic, partition, key) {
                Ok(row) => row.map(|bytes| Ok(((*key).clone(), bytes))),
                Err(e) => Some(Err(e)),
            })
        };
        let resident = || pending.models.owned().map(Ok);
        // The changed rows, resident and evicted, are merged as they are written instead of
        // gathered into one more copy (the memory budget's fixed overhead, BENCHMARKS.md).
        let written = match pending.parent {
            None => self.store.write_merged_rows(topic, partition, offset, resident()),
            Some(parent) => self.store.write_delta_rows(topic, partition, offset, parent, merged(resident(), evicted())),
        };
        span.record("outcome", if written.is_ok() { "ok" } else { "error" });
        let info = written?;
        span.record("keys", info.keys as i64).record("bytes", info.bytes as i64);
        let took = t.elapsed();
        let ms = took.as_millis() as u64;
        tracing::debug!(partition, offset, keys = info.keys, bytes = info.bytes, depth = info.depth, ms, "snapshot written");
        self.stats.instruments.snapshot(topic, partition, took.as_secs_f64(), info.bytes);
        // Only an assigned partition reports (a revoked one's entry is gone).
        let assigned = self.stats.per_partition.lock().ok().and_then(|m| m.get(&(topic.to_string(), partition)).cloned());
        if let Some(p) = assigned {
            p.last_snapshot_ms.store(info.written_at_ms, Ordering::Relaxed);
            p.last_snapshot_us.store(took.as_micros() as u64, Ordering::Relaxed);
            p.last_snapshot_bytes.store(info.bytes, Ordering::Relaxed);
        }
        if let Some((cl, rt)) = &self.changelog {
            let behind = self.changelog_behind.lock().map_or(true, |b| b.contains(&partition));
            // Streamed a window at a time (`Changelog::publish_stream`): every changed row, or,
            // for a full snapshot whose partition's changelog is behind, every row of the
            // snapshot just written, read back page by page (resident and evicted).
            let published = match pending.parent {
                _ if !behind => rt.block_on(cl.publish_stream(partition, offset, merged(resident(), evicted()))),
                None => rt.block_on(cl.publish_stream(partition, offset, snapshot_rows(&self.store, &info))),
                Some(_) => match self.store.encoded_models(&info) {
                    Ok(all) => rt.block_on(cl.publish_encoded(partition, offset, all)),
                    Err(e) => {
                        tracing::warn!(partition, offset, cause = %e, "cannot read the snapshot back for the changelog");
                        return Ok(());
                    }
                },
            };
            if let Ok(mut b) = self.changelog_behind.lock() {
                match &published {
                    Ok(_) if pending.parent.is_none() || !behind => b.remove(&partition),
                    _ => b.insert(partition),
                };
            }
            if let Err(e) = published {
                tracing::warn!(partition, offset, cause = %e, "changelog publish failed");
            }
        }
        Ok(())
    }

    /// Whether the next snapshot of `partition` must be full for the changelog's sake.
    fn changelog_needs_full(&self, partition: i32) -> bool {
        self.changelog.is_some() && self.changelog_behind.lock().map_or(true, |b| b.contains(&partition))
    }
}

/// Rows read back from the store for the changelog, per page.
const READ_BACK_PAGE_BYTES: usize = super::changelog::PUBLISH_WINDOW_BYTES;

/// A row for the store or the changelog, or why it could not be read.
type Row = Result<(String, Vec<u8>), StateError>;

/// Two key-ordered row streams (with no key in both) as one, in key order; an error comes
/// out as soon as it is at the head of either.
fn merged(a: impl Iterator<Item = Row>, b: impl Iterator<Item = Row>) -> impl Iterator<Item = Row> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(Ok(x)), Some(Ok(y))) if y.0 < x.0 => b.next(),
        (Some(Ok(_)), Some(Err(_))) => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

/// Every row of the full snapshot `info`, read from the store a page at a time.
fn snapshot_rows<'s>(store: &'s StateStore, info: &'s crate::state::SnapshotInfo) -> impl Iterator<Item = Row> + 's {
    let (mut page, mut last, mut done) = (Vec::<(String, Vec<u8>)>::new().into_iter(), None::<String>, false);
    std::iter::from_fn(move || loop {
        if let Some(row) = page.next() {
            last = Some(row.0.clone());
            return Some(Ok(row));
        }
        if done {
            return None;
        }
        match store.rows_page(info, last.as_deref(), READ_BACK_PAGE_BYTES) {
            Ok(rows) if rows.is_empty() => done = true,
            Ok(rows) => page = rows.into_iter(),
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
        }
    })
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
        let state = Restored::parked_or(parked, epoch.current, || {
            // Not continuing with its own parked models: the spill is an earlier
            // incarnation's, and must not stand in for any sensor's state at the snapshot.
            self.clear_spill(topic, partition).then(|| self.restore(topic, partition, committed, epoch.stale)).flatten()
        });
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
        // Deltas may build on the local snapshot the models are at (not on changelog state).
        let depth = r.models.last_offset.and_then(|o| self.store.snapshot_info(topic, partition, o).ok().flatten()).map(|i| i.depth);
        self.checkpoints.assigned(partition, r.models.last_offset, depth);
        if let Ok(mut b) = self.changelog_behind.lock() {
            b.insert(partition);
        }
        r
    }

    fn after_batch(&self, topic: &str, partition: i32, models: &Models, delivered: Option<i64>) -> Result<(), StateFailure> {
        if self.changelog_needs_full(partition) {
            self.checkpoints.want_full(partition);
        }
        let Some(pending) = self.checkpoints.ready(partition, models, delivered)? else { return Ok(()) };
        let written = self.write(topic, partition, &pending);
        if let Err(StateError::MissingParent { parent, .. }) = &written {
            // The snapshot a delta builds on is gone (deleted by a `replay` meanwhile): the
            // next one is full. Not a failure of the store.
            tracing::warn!(partition, parent, "the snapshot a delta builds on is gone; writing a full one next");
            self.checkpoints.restart_full(partition);
            return Ok(());
        }
        self.checkpoints.written(partition, pending, written.is_ok());
        written.map_err(|e| StateFailure(e.to_string()))
    }

    fn on_revoke(&self, topic: &str, partition: i32, models: &Models) {
        let Some(applied) = models.last_offset else { return };
        if self.changelog_needs_full(partition) {
            self.checkpoints.want_full(partition);
        }
        let result = match self.checkpoints.revoked(partition, models) {
            Ok(None) => return,
            Ok(Some(pending)) => self.write(topic, partition, &pending).map_err(|e| e.to_string()),
            Err(e) => Err(e.0),
        };
        match result {
            Ok(()) => tracing::info!(partition, offset = applied, keys = models.keys.len(), "snapshot on revoke"),
            Err(e) => {
                tracing::error!(partition, offset = applied, cause = %e, "snapshot on revoke failed; the next owner replays from the previous one")
            }
        }
    }

    fn cold_store(&self, topic: &str, partition: i32) -> Option<Box<dyn ColdStore>> {
        Some(Box::new(SpillStore { store: self.store.clone(), checkpoints: self.checkpoints.clone(), topic: topic.into(), partition }))
    }
}

/// One partition's evicted pipelines in the store's `spill` family.
struct SpillStore {
    /// The worker's database.
    store: Arc<StateStore>,
    /// To hold evictions while a snapshot waits to be written.
    checkpoints: Arc<Checkpoints>,
    /// Input topic.
    topic: String,
    /// Input partition.
    partition: i32,
}

impl ColdStore for SpillStore {
    fn retain_evictable(&self, victims: &mut Vec<(&str, &KeyPipeline)>) {
        self.checkpoints.retain_evictable(self.partition, victims);
    }

    fn pending_bytes(&self) -> u64 {
        self.checkpoints.pending_bytes(self.partition)
    }

    fn evict(&mut self, models: &[(&str, &KeyPipeline)]) -> Result<(), StateFailure> {
        let mut rows = Vec::with_capacity(models.len());
        for (k, kp) in models {
            rows.push((k.to_string(), codec::encode(Kind::Model, kp).map_err(|e| StateFailure(format!("cannot encode {k:?}: {e}")))?));
        }
        self.store.spill(&self.topic, self.partition, &rows).map_err(|e| StateFailure(e.to_string()))
    }

    fn reload(&mut self, key: &str) -> Result<Option<KeyPipeline>, StateFailure> {
        let Some(raw) = self.store.unspill(&self.topic, self.partition, key).map_err(|e| StateFailure(e.to_string()))? else {
            return Ok(None);
        };
        codec::decode::<KeyPipeline>(Kind::Model, &raw).map(Some).map_err(|e| StateFailure(format!("evicted model of {key:?}: {e}")))
    }

    fn forget(&mut self, key: &str) -> Result<(), StateFailure> {
        self.store.forget_spilled(&self.topic, self.partition, key).map_err(|e| StateFailure(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(k: &str) -> Row {
        Ok((k.to_string(), k.as_bytes().to_vec()))
    }

    #[test]
    fn resident_and_evicted_rows_merge_in_key_order_and_an_error_stops_nothing_silently() {
        let keys = |it: &mut dyn Iterator<Item = Row>| it.map(|r| r.map(|(k, _)| k)).collect::<Vec<_>>();
        let got = keys(&mut merged([ok("a"), ok("c"), ok("e")].into_iter(), [ok("b"), ok("d"), ok("f"), ok("g")].into_iter()));
        let want: Vec<Result<String, String>> = ["a", "b", "c", "d", "e", "f", "g"].iter().map(|k| Ok(k.to_string())).collect();
        assert_eq!(got.into_iter().map(|r| r.map_err(|e| e.to_string())).collect::<Vec<_>>(), want);
        let bad = Err(StateError::InvalidOffset(-5));
        let got = keys(&mut merged([ok("a"), ok("z")].into_iter(), [ok("b"), bad].into_iter()));
        assert_eq!(got.len(), 4);
        assert!(got[2].is_err(), "the error comes out where it was met: {got:?}");
    }
}
