//! The restore policy and the snapshot cadence: decisions over offsets and clocks, with no
//! I/O. `kafka::recovery` applies them to the store and the changelog topic.
//!
//! # Restore (committed offset C = the next record the group would read)
//! The newest local snapshot that decodes (offset S; corrupt ones are reported and skipped)
//! is the state, unless it is missing or behind C ([`needs_changelog`]): then the changelog's
//! state is used if it is newer and whole ([`judge_changelog`]). A changelog state with a
//! model ahead of its last marker is a publish torn half-way and is not used.
//!
//! # Snapshots and delivery
//! A snapshot is due every `checkpoint_interval` records or `checkpoint_secs` ([`due`]). A
//! snapshot at offset L may only be written once every output up to L is delivered: a crash
//! right after it would otherwise resume at L + 1 and lose the undelivered outputs. So when a
//! snapshot is due the models are *encoded* at once (the expensive part) and written when
//! the delivered offset reaches L (usually the next batch) — [`Checkpoints`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::changelog::ChangelogState;
use super::store::chain::MAX_DEPTH;
use super::{encode_packed, KeyModel, PackedRows};
use crate::error::StateFailure;
use crate::partition::Models;

/// Whether the changelog is worth reading on assignment: there is no local snapshot, or it
/// is behind the group's `committed` offset (another replica carried on meanwhile).
pub fn needs_changelog(local: Option<i64>, committed: Option<i64>) -> bool {
    match (local, committed) {
        (None, _) => true,
        (Some(s), Some(c)) => s + 1 < c,
        (Some(_), None) => false,
    }
}

/// What the changelog's state is worth next to a local snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangelogVerdict {
    /// Some records did not decode or a model is torn: not safe to use.
    Unusable,
    /// Newer than the local snapshot and whole: use it, at this marker offset.
    Newer(i64),
    /// A model is ahead of the last marker (a publish torn half-way): not used.
    TornAhead(i64),
    /// Not newer than the local snapshot (or empty).
    NotNewer,
}

/// Judge the changelog's state `st` against a local snapshot at `local`.
pub fn judge_changelog<T>(local: Option<i64>, st: &ChangelogState<T>) -> ChangelogVerdict {
    if !st.is_usable() {
        return ChangelogVerdict::Unusable;
    }
    match st.marker {
        Some(m) if local.is_none_or(|s| m > s) && st.models.iter().all(|r| r.offset <= m) => ChangelogVerdict::Newer(m),
        Some(m) if m > local.unwrap_or(-1) => ChangelogVerdict::TornAhead(m),
        _ => ChangelogVerdict::NotNewer,
    }
}

/// A partition's models as restored from a snapshot at `offset` (-1: nothing applied yet).
/// The replay epoch is set by the resume decision, not here.
pub fn models_at(offset: i64, keys: impl IntoIterator<Item = (String, KeyModel)>) -> Models {
    Models { keys: keys.into_iter().collect(), last_offset: (offset >= 0).then_some(offset), epoch: 0, changed: Default::default() }
}

/// Whether a snapshot is due: `applied` is the last offset applied, `last` the offset of the
/// last snapshot written (or restored), `elapsed` the time since.
pub fn due(interval: u64, every: Duration, applied: i64, last: Option<i64>, elapsed: Duration) -> bool {
    let since = applied - last.unwrap_or(-1);
    since as u64 >= interval || (since > 0 && elapsed >= every)
}

/// An encoded snapshot waiting for its outputs to be delivered.
#[derive(Debug)]
pub struct Pending {
    /// Last input offset applied to these models.
    pub offset: i64,
    /// (key, model envelope), in key order: every resident pipeline (full), or those
    /// changed since `parent` (delta). Packed: see [`PackedRows`].
    pub models: PackedRows,
    /// `None`: a full snapshot (with the evicted pipelines merged in by the store); else a
    /// delta of the snapshot at this offset ([`crate::state::store::chain`]).
    pub parent: Option<i64>,
    /// The changed pipelines that were not resident when it was encoded (evicted since their
    /// change): their rows are read from the spill when it is written (a delta's rows, and
    /// the changelog's, which wants every key changed since its last marker). In key order.
    pub evicted: Vec<String>,
}

/// Per-partition snapshot bookkeeping.
#[derive(Default)]
struct Progress {
    /// Offset of the last snapshot written (or restored).
    last: Option<i64>,
    /// When it was written (or the partition assigned).
    at: Option<Instant>,
    /// A due snapshot waiting for delivery.
    pending: Option<Pending>,
    /// Depth of the last snapshot (deltas down to its base); `None` when it is not known to
    /// be a local snapshot (restored from the changelog, or none): the next one is full.
    depth: Option<u32>,
    /// The next snapshot must be full (a delta could not be written).
    force_full: bool,
}

/// The snapshot cadence of every partition of a worker.
pub struct Checkpoints {
    /// `checkpoint_interval`.
    interval: u64,
    /// `checkpoint_secs`.
    every: Duration,
    /// Per input partition.
    progress: Mutex<HashMap<i32, Progress>>,
    /// A full snapshot after this many deltas (`state.full_snapshot_every`).
    full_every: u32,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints").field("interval", &self.interval).field("every", &self.every).finish()
    }
}

impl Checkpoints {
    /// A snapshot every `interval` records or `every`.
    pub fn new(interval: u64, every: Duration) -> Self {
        Self { interval, every, progress: Mutex::new(HashMap::new()), full_every: MAX_DEPTH }
    }

    /// A full snapshot after `n` deltas (1: only full snapshots).
    pub fn with_full_every(mut self, n: u32) -> Self {
        self.full_every = n.max(1);
        self
    }

    /// Heap bytes of `partition`'s encoded snapshot waiting to be written (0: none): the
    /// memory budget charges them, so that eviction makes room for them.
    pub fn pending_bytes(&self, partition: i32) -> u64 {
        self.progress.lock().map_or(0, |p| p.get(&partition).and_then(|p| p.pending.as_ref()).map_or(0, |pe| pe.models.heap_bytes()))
    }

    /// Of `victims` (sensors `partition` would evict now), keep those whose eviction cannot
    /// change the snapshot waiting to be written: that snapshot reads the spill rows of the
    /// sensors it did not encode (a full one: every sensor not resident when it was encoded;
    /// a delta: its [`Pending::evicted`]), which must stay states at or before its offset
    /// (`partition::resident`). Any other sensor may go: a full snapshot holds its encoded
    /// row (it wins over the spill), a delta holds it or does not need it.
    pub fn retain_evictable<T>(&self, partition: i32, victims: &mut Vec<(&str, T)>) {
        let Ok(all) = self.progress.lock() else {
            // A poisoned lock: evict nothing, which only postpones evictions.
            victims.clear();
            return;
        };
        let Some(pe) = all.get(&partition).and_then(|p| p.pending.as_ref()) else { return };
        match pe.parent {
            None => victims.retain(|(k, _)| pe.models.contains_key(k)),
            Some(_) => victims.retain(|(k, _)| pe.evicted.binary_search_by(|e| e.as_str().cmp(k)).is_err()),
        }
    }

    /// `partition` was assigned with state that has applied up to `last`; `depth` is that of
    /// the local snapshot at `last` if there is one (deltas may build on it).
    pub fn assigned(&self, partition: i32, last: Option<i64>, depth: Option<u32>) {
        if let Ok(mut p) = self.progress.lock() {
            p.insert(partition, Progress { last, at: Some(Instant::now()), pending: None, depth, force_full: false });
        }
    }

    /// After a batch: encode a snapshot of `models` if one is due, and hand back the pending
    /// one once every output up to it is `delivered` (then write it and call
    /// [`Checkpoints::written`]).
    pub fn ready(&self, partition: i32, models: &Models, delivered: Option<i64>) -> Result<Option<Pending>, StateFailure> {
        let Some(applied) = models.last_offset else { return Ok(None) };
        let Ok(mut all) = self.progress.lock() else { return Err(StateFailure("state bookkeeping poisoned".into())) };
        let p = all.entry(partition).or_default();
        let at = *p.at.get_or_insert_with(Instant::now);
        // Without a local base yet (fresh start, or changelog state), the first snapshot is
        // taken at once: a full one is needed, and it is cheapest while the models are few.
        let first = p.depth.is_none() && applied > p.last.unwrap_or(-1);
        if p.pending.is_none() && (first || due(self.interval, self.every, applied, p.last, at.elapsed())) {
            p.pending = Some(encode(partition, models, applied, p, self.full_every)?);
        }
        if p.pending.as_ref().is_some_and(|pe| delivered.is_some_and(|d| d >= pe.offset)) {
            return Ok(p.pending.take());
        }
        Ok(None)
    }

    /// The write of `pending` succeeded (`ok`) or failed; a failed one is kept for the retry
    /// (the models have moved on only if records were taken since, and the partition takes
    /// none while its state fails).
    pub fn written(&self, partition: i32, pending: Pending, ok: bool) {
        if let Ok(mut all) = self.progress.lock() {
            let p = all.entry(partition).or_default();
            if ok {
                p.last = Some(pending.offset);
                p.at = Some(Instant::now());
                p.depth = match pending.parent {
                    None => Some(0),
                    Some(_) => p.depth.map(|d| d + 1),
                };
            } else {
                p.pending = Some(pending);
            }
        }
    }

    /// The next snapshot of `partition` must be full.
    pub fn want_full(&self, partition: i32) {
        if let Ok(mut all) = self.progress.lock() {
            all.entry(partition).or_default().force_full = true;
        }
    }

    /// A delta of `partition` could not be written because its parent is gone: drop it and
    /// write a full snapshot when the next one is due (at once: nothing was written since).
    pub fn restart_full(&self, partition: i32) {
        if let Ok(mut all) = self.progress.lock() {
            let p = all.entry(partition).or_default();
            p.pending = None;
            p.force_full = true;
        }
    }

    /// `partition` is revoked: forget it, returning the last snapshot to write, of `models`
    /// as they are now (`None`: the last one written is at their offset already). A snapshot
    /// still pending was encoded before the latest changes were taken and is never written:
    /// the final one is then full.
    pub fn revoked(&self, partition: i32, models: &Models) -> Result<Option<Pending>, StateFailure> {
        let Some(applied) = models.last_offset else { return Ok(None) };
        let mut p = self.progress.lock().ok().and_then(|mut all| all.remove(&partition)).unwrap_or_default();
        if p.pending.is_none() && p.last == Some(applied) {
            return Ok(None);
        }
        p.force_full |= p.pending.is_some();
        encode(partition, models, applied, &mut p, self.full_every).map(Some)
    }
}

/// Encode the snapshot of `models` at `applied`: a delta of the last one when allowed, else
/// full (see [`crate::state::store::chain`]).
fn encode(partition: i32, models: &Models, applied: i64, p: &mut Progress, full_every: u32) -> Result<Pending, StateFailure> {
    let changed = models.changed.take();
    let full = changed.all || p.force_full || p.last.is_none() || p.depth.is_none_or(|d| d + 1 >= full_every);
    p.force_full = false;
    let err = |e: crate::state::StateError| StateFailure(e.to_string());
    let (resident, evicted): (Vec<String>, Vec<String>) = changed.keys.into_iter().partition(|k| models.keys.contains_key(k));
    if full {
        let encoded = encode_packed(partition, &models.keys).map_err(err)?;
        return Ok(Pending { offset: applied, models: encoded, parent: None, evicted });
    }
    let encoded = encode_packed(partition, resident.iter().filter_map(|k| models.keys.get_key_value(k))).map_err(err)?;
    Ok(Pending { offset: applied, models: encoded, parent: p.last, evicted })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::changelog::{encode_snapshot, Assembler};

    #[test]
    fn the_changelog_is_read_only_without_a_local_snapshot_or_behind_the_commit() {
        assert!(needs_changelog(None, None));
        assert!(needs_changelog(None, Some(10)));
        assert!(needs_changelog(Some(5), Some(10)), "another replica went on from 6 to 9");
        assert!(!needs_changelog(Some(9), Some(10)), "the local snapshot is right before the commit");
        assert!(!needs_changelog(Some(5), None));
    }

    fn changelog(publishes: &[(i64, &[(&str, u64)])]) -> ChangelogState<u64> {
        let mut asm = Assembler::new("cl", 0);
        for (offset, models) in publishes {
            for (k, v) in encode_snapshot(0, *offset, models.iter().map(|(k, v)| (*k, v)), 1000).expect("encodes") {
                asm.feed(k.as_bytes(), Some(&v));
            }
        }
        asm.finish()
    }

    #[test]
    fn a_newer_whole_changelog_state_wins_over_the_local_snapshot() {
        let st = changelog(&[(50, &[("a", 1)])]);
        assert_eq!(judge_changelog(Some(20), &st), ChangelogVerdict::Newer(50));
        assert_eq!(judge_changelog(None, &st), ChangelogVerdict::Newer(50));
        assert_eq!(judge_changelog(Some(50), &st), ChangelogVerdict::NotNewer);
    }

    #[test]
    fn a_model_ahead_of_the_last_marker_is_a_torn_publish_and_is_not_used() {
        let mut st = changelog(&[(50, &[("a", 1)])]);
        st.models[0].offset = 60;
        assert_eq!(judge_changelog(Some(20), &st), ChangelogVerdict::TornAhead(50));
    }

    #[test]
    fn a_changelog_with_rejected_records_is_unusable() {
        let mut st = changelog(&[(50, &[("a", 1)])]);
        st.rejected.push(crate::state::StateError::InvalidOffset(-2));
        assert_eq!(judge_changelog(None, &st), ChangelogVerdict::Unusable);
    }

    #[test]
    fn restored_models_at_minus_one_have_applied_nothing() {
        assert_eq!(models_at(-1, []).last_offset, None);
        assert_eq!(models_at(7, []).last_offset, Some(7));
    }

    #[test]
    fn a_snapshot_is_due_every_interval_records_or_every_period_with_new_records() {
        let every = Duration::from_secs(30);
        assert!(due(100, every, 99, None, Duration::ZERO), "100 records applied (0..=99)");
        assert!(!due(100, every, 98, None, Duration::ZERO));
        assert!(due(100, every, 150, Some(140), every), "time-based, with new records");
        assert!(!due(100, every, 140, Some(140), every), "nothing new: no snapshot");
    }

    fn models(last: i64) -> Models {
        Models { last_offset: Some(last), ..Models::default() }
    }

    #[test]
    fn a_due_snapshot_waits_until_its_outputs_are_delivered() {
        let c = Checkpoints::new(10, Duration::from_secs(3600));
        c.assigned(0, None, None);
        assert!(c.ready(0, &models(9), Some(5)).expect("bookkeeping").is_none(), "encoded, waiting for delivery");
        let pe = c.ready(0, &models(12), Some(9)).expect("bookkeeping").expect("delivered up to 9");
        assert_eq!(pe.offset, 9, "the snapshot taken when due, not the models since");
        c.written(0, pe, true);
        assert!(c.ready(0, &models(12), Some(12)).expect("bookkeeping").is_none(), "not due again yet");
    }

    #[test]
    fn a_failed_write_is_kept_for_the_retry() {
        let c = Checkpoints::new(1, Duration::from_secs(3600));
        let pe = c.ready(3, &models(4), Some(4)).expect("bookkeeping").expect("due and delivered");
        c.written(3, pe, false);
        let again = c.ready(3, &models(4), Some(4)).expect("bookkeeping").expect("retried");
        assert_eq!(again.offset, 4);
    }

    fn with_keys(last: i64, keys: &[&str], changed: &[&str]) -> Models {
        let f = crate::detect::PipelineSpec::default().check().expect("valid spec");
        let m = Models { last_offset: Some(last), ..Models::default() };
        let mut m = m;
        for k in keys {
            m.keys.insert(k.to_string(), KeyModel::new(vec!["x".into()], f.build(1, k)));
        }
        for k in changed {
            m.changed.mark(k);
        }
        m
    }

    #[test]
    fn a_pending_snapshot_pins_only_the_sensors_whose_evicted_rows_it_reads_and_is_charged() {
        let c = Checkpoints::new(1, Duration::from_secs(3600));
        let evictable = |victims: &[&str]| {
            let mut v: Vec<(&str, ())> = victims.iter().map(|k| (*k, ())).collect();
            c.retain_evictable(0, &mut v);
            v.into_iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(evictable(&["a", "z"]), vec!["a", "z"], "nothing pending: anything may go");
        assert_eq!(c.pending_bytes(0), 0);
        // A full snapshot encoded at 10 (a, b resident; c, d evicted), waiting for delivery:
        // it reads the spill rows of every sensor it did not encode, so c (reloaded since)
        // and e (new since) must stay; a and b are in it as encoded.
        assert!(c.ready(0, &with_keys(10, &["a", "b"], &["a", "c"]), None).expect("ok").is_none(), "waits for delivery");
        assert_eq!(evictable(&["a", "b", "c", "e"]), vec!["a", "b"]);
        assert!(c.pending_bytes(0) > 0, "its encoded bytes are charged while it waits");
        let pe = c.ready(0, &with_keys(10, &["a", "b"], &[]), Some(10)).expect("ok").expect("delivered");
        assert_eq!(pe.parent, None);
        c.written(0, pe, true);
        assert_eq!((c.pending_bytes(0), evictable(&["c", "e"]).len()), (0, 2), "written: nothing pinned, nothing charged");
        // A delta at 11 reads the spill rows of the changed sensors it did not encode (c).
        assert!(c.ready(0, &with_keys(11, &["a", "b"], &["b", "c"]), None).expect("ok").is_none());
        assert_eq!(evictable(&["a", "b", "c", "e"]), vec!["a", "b", "e"]);
    }

    #[test]
    fn snapshots_are_deltas_of_the_last_local_one_until_a_full_one_is_due() {
        let c = Checkpoints::new(1, Duration::from_secs(3600));
        c.assigned(0, Some(9), Some(0));
        // "c" changed and was evicted since: listed for the spill.
        let pe = c.ready(0, &with_keys(10, &["a", "b"], &["b", "c"]), Some(10)).expect("ok").expect("due");
        assert_eq!(pe.parent, Some(9));
        assert_eq!(pe.models.iter().map(|(k, _)| k).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(pe.evicted, vec!["c".to_string()]);
        c.written(0, pe, true);
        let mut offset = 11;
        for _ in 1..MAX_DEPTH - 1 {
            let pe = c.ready(0, &with_keys(offset, &["a"], &["a"]), Some(offset)).expect("ok").expect("due");
            assert!(pe.parent.is_some());
            c.written(0, pe, true);
            offset += 1;
        }
        let pe = c.ready(0, &with_keys(offset, &["a", "b"], &["a"]), Some(offset)).expect("ok").expect("due");
        assert_eq!((pe.parent, pe.models.len()), (None, 2), "full after MAX_DEPTH deltas");
        c.written(0, pe, true);

        let dropped = with_keys(offset + 1, &["a"], &["a"]);
        dropped.changed.mark_all();
        let pe = c.ready(0, &dropped, Some(offset + 1)).expect("ok").expect("due");
        assert_eq!(pe.parent, None, "a dropped pipeline forces a full snapshot");

        // Changelog state (no local snapshot at its offset): full.
        let c = Checkpoints::new(1, Duration::from_secs(3600));
        c.assigned(1, Some(50), None);
        assert_eq!(c.ready(1, &with_keys(51, &["a"], &["a"]), Some(51)).expect("ok").expect("due").parent, None);
    }

    #[test]
    fn the_revoke_snapshot_is_full_when_one_was_still_pending() {
        let c = Checkpoints::new(1, Duration::from_secs(3600));
        c.assigned(0, Some(9), Some(0));
        assert!(c.ready(0, &with_keys(10, &["a"], &["a"]), Some(9)).expect("ok").is_none(), "pending, not delivered");
        let pe = c.revoked(0, &with_keys(12, &["a", "b"], &["b"])).expect("ok").expect("a final snapshot");
        assert_eq!((pe.offset, pe.parent, pe.models.len()), (12, None, 2));
        let c = Checkpoints::new(1, Duration::from_secs(3600));
        c.assigned(0, Some(9), Some(0));
        assert!(c.revoked(0, &with_keys(9, &["a"], &[])).expect("ok").is_none(), "nothing new since the last one");
    }
}
