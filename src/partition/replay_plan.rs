//! Checking a replay request against what each partition really holds, before anything is
//! written: a pure function of the request and the partition's bounds as read from the log.
//!
//! Operator mistakes this refuses (each once lost data):
//! - an offset beyond the partition's end: the group would sit past the last record and every
//!   reading produced until the log caught up would be skipped without a word;
//! - an offset below the log start (retention deleted it: the target does not exist);
//! - a timestamp lookup whose answer is not a record at or after T: some brokers (Tansu)
//!   answer offset 0 for a time after the last record, which would move the partition to its
//!   start. The answer is verified by reading the record it points at.
//!
//! Explicit offsets are applied whole or not at all (one wrong `P:O` refuses the command: it is
//! a typo or a misunderstanding, and half a replay is worse than none). A timestamp applies to
//! every partition: those without a record at or after T are left alone, and the command fails
//! only when no partition has one.

use std::collections::BTreeMap;
use std::fmt;

/// What a partition holds, read from the log itself (the broker's high watermark is not the
/// true end on every broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The first offset still in the log (log start).
    pub start: i64,
    /// One past the last record: the offset the next record will get.
    pub end: i64,
}

/// The broker's answer to an offsets-for-timestamp lookup, with the record it points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// The offset answered; `None` when the broker said "no such record" (end).
    pub offset: Option<i64>,
    /// The timestamp of the record at that offset, as read; `None` when there is no record
    /// there.
    pub record_ts: Option<i64>,
}

/// Why a partition's target is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `P:O` with O past the end.
    BeyondEnd {
        /// Partition.
        partition: i32,
        /// Requested next offset.
        requested: i64,
        /// The partition's bounds.
        bounds: Bounds,
    },
    /// `P:O` with O below the log start.
    BelowStart {
        /// Partition.
        partition: i32,
        /// Requested next offset.
        requested: i64,
        /// The partition's bounds.
        bounds: Bounds,
    },
    /// No record at or after T (the broker said so, or its answer does not check out).
    NoRecordAtOrAfter {
        /// Partition.
        partition: i32,
        /// Requested time, ms.
        t: i64,
        /// What the broker answered and what was found there, when it answered an offset.
        answered: Option<(i64, Option<i64>)>,
        /// The partition's bounds.
        bounds: Bounds,
    },
}

impl Refusal {
    /// The partition concerned.
    pub fn partition(&self) -> i32 {
        match self {
            Self::BeyondEnd { partition, .. } | Self::BelowStart { partition, .. } | Self::NoRecordAtOrAfter { partition, .. } => {
                *partition
            }
        }
    }
}

fn held(b: &Bounds) -> String {
    if b.end > b.start {
        format!("it holds offsets {}..={} (next offset {})", b.start, b.end - 1, b.end)
    } else {
        format!("it is empty (next offset {})", b.end)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BeyondEnd { partition, requested, bounds } => write!(
                f,
                "partition {partition}: offset {requested} is beyond the end of the partition: {}; the group would skip every reading \
                 until the log reaches {requested}",
                held(bounds)
            ),
            Self::BelowStart { partition, requested, bounds } => {
                write!(f, "partition {partition}: offset {requested} is below the log start (retention removed it): {}", held(bounds))
            }
            Self::NoRecordAtOrAfter { partition, t, answered, bounds } => {
                write!(f, "partition {partition}: no record at or after {t}; left alone")?;
                match answered {
                    Some((o, Some(ts))) => {
                        write!(f, " (the broker answered offset {o}, whose record has timestamp {ts} < {t}; {})", held(bounds))
                    }
                    Some((o, None)) => write!(f, " (the broker answered offset {o}, where there is no record; {})", held(bounds)),
                    None => write!(f, " ({})", held(bounds)),
                }
            }
        }
    }
}

/// Check `P:O` targets (next offsets). All valid: the targets; otherwise every refusal.
pub fn check_offsets(targets: &BTreeMap<i32, i64>, bounds: &BTreeMap<i32, Bounds>) -> Result<BTreeMap<i32, i64>, Vec<Refusal>> {
    let mut refused = Vec::new();
    for (&partition, &requested) in targets {
        // A partition without bounds is reported by the caller (not a partition of the topic).
        let Some(&b) = bounds.get(&partition) else { continue };
        if requested > b.end {
            refused.push(Refusal::BeyondEnd { partition, requested, bounds: b });
        } else if requested < b.start {
            refused.push(Refusal::BelowStart { partition, requested, bounds: b });
        }
    }
    if refused.is_empty() {
        Ok(targets.clone())
    } else {
        Err(refused)
    }
}

/// Check the answer of a timestamp lookup for one partition: the target offset, or why the
/// partition is left alone.
pub fn check_timestamp(partition: i32, t: i64, lookup: Lookup, bounds: Bounds) -> Result<i64, Refusal> {
    let refuse = |answered| Refusal::NoRecordAtOrAfter { partition, t, answered, bounds };
    let Some(o) = lookup.offset else { return Err(refuse(None)) };
    match lookup.record_ts {
        Some(ts) if ts >= t && o >= bounds.start && o < bounds.end => Ok(o),
        ts => Err(refuse(Some((o, ts)))),
    }
}

/// One partition's line of `replay --dry-run` (and of the report after a replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanLine {
    /// Partition.
    pub partition: i32,
    /// The group's committed offset now (`None`: the group has none).
    pub from: Option<i64>,
    /// The next offset after the replay.
    pub to: i64,
    /// `keep`, `rewind` or `reset`.
    pub action: &'static str,
    /// Replay epoch now and after (equal for `rewind`).
    pub epoch: (u32, u32),
}

impl fmt::Display for PlanLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = self.from.map_or_else(|| "none".to_string(), |o| o.to_string());
        write!(f, "partition {}: next offset {} -> {}, state {}, replay epoch ", self.partition, from, self.to, self.action)?;
        if self.epoch.0 == self.epoch.1 {
            write!(f, "{} (unchanged)", self.epoch.0)
        } else {
            write!(f, "{} -> {}", self.epoch.0, self.epoch.1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds { start: 0, end: 1974 };

    #[test]
    fn an_offset_beyond_the_end_refuses_the_whole_request_naming_partition_and_bounds() {
        let bounds = BTreeMap::from([(0, B), (2, B)]);
        let refused = check_offsets(&BTreeMap::from([(0, 100), (2, 2974)]), &bounds).expect_err("refused");
        assert_eq!(refused, vec![Refusal::BeyondEnd { partition: 2, requested: 2974, bounds: B }]);
        let msg = refused[0].to_string();
        assert!(
            msg.contains("partition 2") && msg.contains("2974") && msg.contains("0..=1973") && msg.contains("next offset 1974"),
            "{msg}"
        );
    }

    #[test]
    fn the_end_itself_and_the_log_start_are_valid_targets_and_below_the_start_is_not() {
        let bounds = BTreeMap::from([(1, Bounds { start: 50, end: 80 })]);
        assert_eq!(check_offsets(&BTreeMap::from([(1, 80)]), &bounds), Ok(BTreeMap::from([(1, 80)])));
        assert_eq!(check_offsets(&BTreeMap::from([(1, 50)]), &bounds), Ok(BTreeMap::from([(1, 50)])));
        let refused = check_offsets(&BTreeMap::from([(1, 49)]), &bounds).expect_err("below the start");
        assert!(matches!(refused[..], [Refusal::BelowStart { partition: 1, requested: 49, .. }]));
        assert!(refused[0].to_string().contains("below the log start"));
    }

    #[test]
    fn a_timestamp_answer_is_used_only_when_the_record_there_is_at_or_after_t() {
        let at = |offset, record_ts| Lookup { offset, record_ts };
        assert_eq!(check_timestamp(0, 1_000, at(Some(700), Some(1_000)), B), Ok(700));
        assert_eq!(check_timestamp(0, 1_000, at(Some(700), Some(1_050)), B), Ok(700));
        // Tansu answers 0 for a time after the last record: the record at 0 is older than T.
        let r = check_timestamp(3, 5_000, at(Some(0), Some(1_000)), B).expect_err("left alone");
        assert_eq!(r.partition(), 3);
        let msg = r.to_string();
        assert!(msg.contains("partition 3: no record at or after 5000; left alone") && msg.contains("offset 0"), "{msg}");
        // The broker says "end", or points where there is no record.
        assert!(check_timestamp(0, 5_000, at(None, None), B).is_err());
        assert!(check_timestamp(0, 5_000, at(Some(1974), None), B).is_err());
    }

    #[test]
    fn a_dry_run_line_says_from_to_action_and_epoch() {
        let line = PlanLine { partition: 2, from: Some(1974), to: 500, action: "keep", epoch: (1, 2) };
        assert_eq!(line.to_string(), "partition 2: next offset 1974 -> 500, state keep, replay epoch 1 -> 2");
        let line = PlanLine { partition: 0, from: None, to: 0, action: "rewind", epoch: (0, 0) };
        assert_eq!(line.to_string(), "partition 0: next offset none -> 0, state rewind, replay epoch 0 (unchanged)");
    }
}
