//! Where a partition resumes after assignment, and which of its records are answered
//! already: pure decisions over offsets and replay epochs, used by the worker on assignment
//! (`kafka::recovery`) and by `onad-stream replay` (the next epoch).
//!
//! # The facts
//! - C, the group's committed offset: the next record the group would read. Everything below
//!   it was delivered.
//! - The state: models parked by this worker when it last owned the partition, or a restored
//!   snapshot that has applied every record up to S, or nothing.
//! - The output tails ([`Tails`]): per output topic, the highest source offset already there,
//!   per replay epoch; and the newest replay epoch recorded in the changelog.
//! - The local replay epoch: the one this worker's state store last recorded.
//!
//! # The decision
//! - The current epoch is the newest of the local one and those in the tails. A newer one in
//!   the tails means a replay ran against another store: the local snapshots predate it and
//!   must not be used ([`Epoch::stale`]).
//! - Parked models continue (no seek) if they belong to the current epoch and end right
//!   before C; a snapshot resumes at S + 1; with no state, the partition is rebuilt from the
//!   start of the input (a new group just starts at the earliest).
//! - Records below C are learned without outputs; from C on, an output to topic T of a
//!   record at or below H_T (the highest source offset of the current epoch in T's tail) is
//!   not produced again. Per topic, because deliveries to different topics are not ordered
//!   with each other. Outputs of older epochs do not count: a replay asked for new answers.

use std::collections::BTreeMap;

use super::output::Dest;
use super::Models;

/// Where a partition starts after assignment: decided by [`super::StateHooks::on_assign`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resume {
    /// The state to start from.
    pub models: Models,
    /// First offset to read (e.g. snapshot offset + 1). `None`: the group's committed
    /// offset (or the earliest, for a new group).
    pub start_at: Option<i64>,
    /// Records below this offset are learned but produce no outputs (they were delivered
    /// before a crash). Their offsets are stored only from the group's committed offset on,
    /// so the commit never moves back. `None`: emit everything.
    pub emit_from: Option<i64>,
    /// Per output topic, the highest source offset already in it (state store, issue 4):
    /// an output to that topic of a record at or below it is not produced again. Per topic,
    /// because deliveries to different topics are not ordered with each other: a crash can
    /// leave a dead letter of offset 900 delivered and the score of offset 850 not.
    pub emitted: EmittedUpTo,
}

/// Highest source offset already present in each output topic (for this partition).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmittedUpTo {
    /// In `kafka.scores_topic`.
    pub scores: Option<i64>,
    /// In `kafka.alerts_topic`.
    pub alerts: Option<i64>,
    /// In `kafka.dead_letter_topic`.
    pub dead_letters: Option<i64>,
}

impl EmittedUpTo {
    /// Whether the output of input `offset` to `dest` is already there.
    pub fn contains(&self, dest: Dest, offset: i64) -> bool {
        let bound = match dest {
            Dest::Scores => self.scores,
            Dest::Alerts => self.alerts,
            Dest::DeadLetters => self.dead_letters,
        };
        bound.is_some_and(|b| offset <= b)
    }
}

/// Highest source offset per replay epoch, in one output partition's tail.
pub type TailOffsets = BTreeMap<u32, i64>;

/// What the ends of a partition's output and changelog partitions say (read by
/// `kafka::tails`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tails {
    /// Scores, alerts, dead letters: highest source offset per replay epoch.
    pub outputs: [TailOffsets; 3],
    /// The newest replay epoch record in the changelog's tail.
    pub changelog_epoch: Option<u32>,
}

impl Tails {
    /// The highest replay epoch in sight.
    pub fn epoch(&self) -> u32 {
        let outputs = self.outputs.iter().filter_map(|t| t.keys().next_back().copied()).max().unwrap_or(0);
        outputs.max(self.changelog_epoch.unwrap_or(0))
    }

    /// What the outputs already hold in `epoch`.
    pub fn emitted_in(&self, epoch: u32) -> EmittedUpTo {
        let [scores, alerts, dead_letters] = self.outputs.each_ref().map(|t| t.get(&epoch).copied());
        EmittedUpTo { scores, alerts, dead_letters }
    }
}

/// A partition's replay epoch, as far as can be seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// The epoch the partition is in now.
    pub current: u32,
    /// The local state store's snapshots predate it (a replay ran against another store):
    /// they must be dropped, not restored.
    pub stale: bool,
}

/// The current epoch from the `local` store's and the `tails`' (`None`: they could not be
/// read; then the local one stands, at the price of possible duplicates, never loss).
pub fn epoch(local: u32, tails: Option<&Tails>) -> Epoch {
    let current = tails.map_or(local, |t| local.max(t.epoch()));
    Epoch { current, stale: current > local }
}

/// The epoch a replay that gives the models new answers (`--state keep|reset`) moves the
/// partition to: above every epoch in sight, so its outputs are emitted again exactly once.
pub fn next_epoch(local: u32, tails: &Tails) -> u32 {
    local.max(tails.epoch()) + 1
}

/// Whether models this worker parked when the partition was revoked can simply continue:
/// they end right before the group's `committed` offset (no other member moved on meanwhile).
pub fn parked_continues(parked: &Models, committed: Option<i64>) -> bool {
    parked.last_offset.map(|l| l + 1) == committed
}

/// The state a partition resumes with.
#[derive(Debug, Clone, PartialEq)]
pub enum Restored {
    /// Models this worker kept in memory, contiguous with the committed offset.
    Parked(Models),
    /// A snapshot (local or the changelog's) that has applied every record up to its
    /// `last_offset`.
    Snapshot(Models),
    /// No usable state.
    Nothing,
}

impl Restored {
    /// Parked models if they belong to `epoch` (a replay since makes them stale), else what
    /// `restore` finds.
    pub fn parked_or(parked: Option<Models>, epoch: u32, restore: impl FnOnce() -> Option<Models>) -> Self {
        match parked.filter(|m| m.epoch == epoch) {
            Some(m) => Self::Parked(m),
            None => restore().map_or(Self::Nothing, Self::Snapshot),
        }
    }
}

/// Where a partition resumes: from `state`, given the group's `committed` offset, the output
/// `tails` (`None`: unreadable) and the current `epoch`.
pub fn resume(committed: Option<i64>, state: Restored, tails: Option<&Tails>, epoch: u32) -> Resume {
    let emitted = tails.map(|t| t.emitted_in(epoch)).unwrap_or_default();
    // Below the committed offset everything was delivered; from there on, what each output
    // topic already holds.
    let emit_from = committed;
    let (models, start_at) = match state {
        Restored::Parked(models) => (models, None),
        Restored::Snapshot(models) => {
            let start = models.last_offset.map_or(0, |s| s + 1);
            (Models { epoch, ..models }, Some(start))
        }
        // Rebuild by replaying the input from its start, silently up to what was emitted.
        Restored::Nothing => (Models { epoch, ..Models::default() }, committed.filter(|c| *c > 0).map(|_| 0)),
    };
    Resume { models, start_at, emit_from, emitted }
}

/// A partition whose group committed past its last record resumes at its `end` (as if the
/// group had committed the end), even when its state claims more (`replay` relabelled it
/// beyond the end): the records arriving below that claim are new. (Otherwise a snapshot
/// ahead of the committed offset is normal: the commit lags the snapshot, and those records
/// were delivered.)
pub fn at_end(resume: Resume, end: i64) -> Resume {
    if resume.start_at.is_none_or(|s| s > end) {
        Resume { start_at: Some(end), ..resume }
    } else {
        resume
    }
}

/// How a resumed partition treats each record it reads, from its [`Resume`].
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    /// Records below this offset produce no outputs.
    emit_from: Option<i64>,
    /// Outputs already in each output topic (not produced again).
    emitted: EmittedUpTo,
    /// The group's committed offset at assignment: offsets below it are never stored again.
    committed: Option<i64>,
    /// Whether a record has been seen since assignment (for the continuity check).
    started: bool,
}

impl Replay {
    /// The rules of a partition resumed as `resume` says, `committed` being the group's
    /// committed offset at assignment.
    pub fn new(resume: &Resume, committed: Option<i64>) -> Self {
        Self { emit_from: resume.emit_from, emitted: resume.emitted, committed, started: false }
    }

    /// On the first record only: the last offset the models applied, if `offset` does not
    /// follow it (records were skipped: retention, or an offset reset).
    pub fn gap_before(&mut self, offset: i64, last_applied: Option<i64>) -> Option<i64> {
        if std::mem::replace(&mut self.started, true) {
            return None;
        }
        last_applied.filter(|last| offset != last + 1)
    }

    /// Whether record `offset` was answered before (a crash): learned, no outputs.
    pub fn answered(&self, offset: i64) -> bool {
        self.emit_from.is_some_and(|e| offset < e)
    }

    /// Whether an answered record's offset may be stored: not below the committed offset,
    /// so the commit never moves back.
    pub fn stores(&self, offset: i64) -> bool {
        self.committed.is_none_or(|c| offset >= c)
    }

    /// Whether the output of record `offset` to `dest` is to be produced (it is not in
    /// `dest`'s tail yet).
    pub fn emits(&self, dest: Dest, offset: i64) -> bool {
        !self.emitted.contains(dest, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tails(scores: &[(u32, i64)], alerts: &[(u32, i64)], dead: &[(u32, i64)], changelog: Option<u32>) -> Tails {
        let m = |v: &[(u32, i64)]| v.iter().copied().collect::<TailOffsets>();
        Tails { outputs: [m(scores), m(alerts), m(dead)], changelog_epoch: changelog }
    }

    fn models(last: Option<i64>, epoch: u32) -> Models {
        Models { last_offset: last, epoch, ..Models::default() }
    }

    #[test]
    fn a_snapshot_resumes_right_after_its_offset_and_outputs_resume_at_the_commit() {
        let r = resume(Some(120), Restored::Snapshot(models(Some(99), 0)), Some(&Tails::default()), 0);
        assert_eq!((r.start_at, r.emit_from), (Some(100), Some(120)));
        assert_eq!(r.models.last_offset, Some(99));
    }

    #[test]
    fn parked_models_continue_from_the_committed_offset_without_a_seek() {
        let r = resume(Some(100), Restored::Parked(models(Some(99), 2)), None, 2);
        assert_eq!((r.start_at, r.emit_from), (None, Some(100)));
        assert_eq!(r.models, models(Some(99), 2));
    }

    #[test]
    fn parked_models_continue_only_if_they_end_right_before_the_commit() {
        assert!(parked_continues(&models(Some(99), 0), Some(100)));
        assert!(!parked_continues(&models(Some(99), 0), Some(150)), "another member moved on");
        assert!(!parked_continues(&models(None, 0), Some(0)));
    }

    #[test]
    fn parked_models_of_an_older_epoch_are_dropped_for_the_restored_state() {
        let parked = Some(models(Some(99), 1));
        assert_eq!(Restored::parked_or(parked.clone(), 1, || None), Restored::Parked(models(Some(99), 1)));
        assert_eq!(Restored::parked_or(parked, 2, || Some(models(Some(50), 0))), Restored::Snapshot(models(Some(50), 0)));
        assert_eq!(Restored::parked_or(None, 0, || None), Restored::Nothing);
    }

    #[test]
    fn without_state_an_existing_group_rebuilds_from_the_start_of_the_input() {
        let r = resume(Some(500), Restored::Nothing, None, 3);
        assert_eq!((r.start_at, r.emit_from), (Some(0), Some(500)));
        assert_eq!(r.models, models(None, 3), "fresh models, in the current epoch");
    }

    #[test]
    fn without_state_a_new_group_starts_where_the_consumer_would() {
        assert_eq!(resume(None, Restored::Nothing, None, 0).start_at, None);
        assert_eq!(resume(Some(0), Restored::Nothing, None, 0).start_at, None, "committed at 0: nothing to rebuild");
    }

    #[test]
    fn an_empty_snapshot_resumes_at_the_start_of_the_input() {
        assert_eq!(resume(Some(7), Restored::Snapshot(models(None, 0)), None, 0).start_at, Some(0));
    }

    #[test]
    fn a_restored_snapshot_takes_the_current_epoch() {
        let r = resume(None, Restored::Snapshot(models(Some(9), 0)), None, 4);
        assert_eq!(r.models.epoch, 4);
    }

    #[test]
    fn what_the_outputs_hold_in_the_current_epoch_is_not_emitted_again_per_topic() {
        let t = tails(&[(0, 850), (1, 40)], &[(0, 700)], &[(0, 900)], None);
        let r = resume(Some(800), Restored::Parked(models(Some(799), 0)), Some(&t), 0);
        assert_eq!(r.emitted, EmittedUpTo { scores: Some(850), alerts: Some(700), dead_letters: Some(900) });
        let r = resume(Some(800), Restored::Parked(models(Some(799), 1)), Some(&t), 1);
        assert_eq!(r.emitted, EmittedUpTo { scores: Some(40), alerts: None, dead_letters: None }, "older epochs do not count");
    }

    #[test]
    fn unreadable_tails_suppress_nothing_beyond_the_commit() {
        let r = resume(Some(800), Restored::Parked(models(Some(799), 0)), None, 0);
        assert_eq!(r.emitted, EmittedUpTo::default());
    }

    #[test]
    fn a_newer_epoch_in_the_tails_makes_the_local_snapshots_stale() {
        assert_eq!(epoch(1, Some(&tails(&[(2, 5)], &[], &[], None))), Epoch { current: 2, stale: true });
        assert_eq!(epoch(1, Some(&tails(&[], &[], &[], Some(3)))), Epoch { current: 3, stale: true }, "the changelog's record counts");
        assert_eq!(epoch(2, Some(&tails(&[(1, 5)], &[], &[], None))), Epoch { current: 2, stale: false });
        assert_eq!(epoch(2, None), Epoch { current: 2, stale: false }, "unreadable tails: the local epoch stands");
    }

    #[test]
    fn a_replay_moves_above_every_epoch_in_sight() {
        assert_eq!(next_epoch(0, &Tails::default()), 1);
        assert_eq!(next_epoch(1, &tails(&[(4, 5)], &[], &[], Some(2))), 5);
        assert_eq!(next_epoch(6, &tails(&[(4, 5)], &[], &[], None)), 7);
    }

    #[test]
    fn a_group_committed_past_the_end_resumes_at_the_end_even_if_its_state_claims_more() {
        let claims = |start_at| Resume { start_at, ..Resume::default() };
        assert_eq!(at_end(claims(Some(120)), 100).start_at, Some(100), "relabelled beyond the end");
        assert_eq!(at_end(claims(None), 100).start_at, Some(100));
        assert_eq!(at_end(claims(Some(40)), 100).start_at, Some(40), "an older snapshot still replays its gap");
    }

    #[test]
    fn records_below_the_resume_point_are_learned_silently_and_stored_only_from_the_commit() {
        let r = Replay::new(&Resume { emit_from: Some(12), ..Resume::default() }, Some(10));
        assert!(r.answered(11) && !r.answered(12));
        assert!(!r.stores(9) && r.stores(10), "the commit never moves back");
    }

    #[test]
    fn outputs_already_in_their_topic_are_skipped_per_topic() {
        let emitted = EmittedUpTo { scores: Some(850), alerts: None, dead_letters: Some(900) };
        let r = Replay::new(&Resume { emitted, ..Resume::default() }, None);
        assert!(!r.emits(Dest::Scores, 850) && r.emits(Dest::Scores, 851));
        assert!(r.emits(Dest::Alerts, 0));
        assert!(!r.emits(Dest::DeadLetters, 900));
    }

    #[test]
    fn only_the_first_record_is_checked_for_a_gap() {
        let mut r = Replay::new(&Resume::default(), None);
        assert_eq!(r.gap_before(20, Some(9)), Some(9), "records 10..20 were skipped");
        assert_eq!(r.gap_before(40, Some(20)), None, "checked once");
        let mut r = Replay::new(&Resume::default(), None);
        assert_eq!(r.gap_before(10, Some(9)), None);
    }
}
