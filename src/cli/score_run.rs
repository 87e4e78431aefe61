//! One configuration's run over the rows of a file: the pipelines per key, the counters of
//! the summary, and (for `--plot` and `--alerts-per-day`) the scored rows.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::score_input::Row;
use crate::detect::metrics::{pr_auc, roc_auc};
use crate::detect::{Pipeline, PipelineFactory, Scored, Severity};

/// What a run keeps of each row beyond its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Counters and AUC inputs only.
    Nothing,
    /// Scores, labels and times (for `--alerts-per-day`).
    Scores,
    /// Scores and feature values (for `--plot`).
    Values,
}

/// One scored row, as the plot and the alert budget need it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index of the row's key in [`Run::keys`].
    pub key: usize,
    /// Data row number in the file, from 1.
    pub row: usize,
    /// Feature values (empty unless [`Keep::Values`]).
    pub values: Vec<f64>,
    /// Calibrated score.
    pub score: f64,
    /// Above `thresholds.anomaly`.
    pub is_anomaly: bool,
    /// Ground truth, with `--label`.
    pub label: Option<bool>,
    /// Reading time (ms since the epoch), when the file has one.
    pub ts: Option<i64>,
}

/// One configuration's pipelines over a file, and what its summary needs.
pub struct Run<'a> {
    factory: &'a PipelineFactory,
    pipelines: HashMap<String, Pipeline>,
    /// Key names, in order of first appearance ([`Record::key`] indexes this).
    pub keys: Vec<String>,
    key_index: HashMap<String, usize>,
    /// Rows scored.
    pub rows: usize,
    /// Anomalies by severity: low, medium, high, critical.
    pub alerts: [usize; 4],
    /// (score, raw_score, label) of each labelled row.
    labelled: Vec<(f64, f64, bool)>,
    /// Time spent in the pipelines (not reading the file), for points/s.
    pub busy: Duration,
    keep: Keep,
    /// The rows kept (see [`Keep`]).
    pub records: Vec<Record>,
}

impl<'a> Run<'a> {
    /// A run of `factory`'s pipelines keeping `keep` of each row.
    pub fn new(factory: &'a PipelineFactory, keep: Keep) -> Self {
        Self {
            factory,
            pipelines: HashMap::new(),
            keys: Vec::new(),
            key_index: HashMap::new(),
            rows: 0,
            alerts: [0; 4],
            labelled: Vec::new(),
            busy: Duration::ZERO,
            keep,
            records: Vec::new(),
        }
    }

    /// Score `row` with its key's pipeline (built on first sight), then learn it.
    pub fn process(&mut self, row: &Row) -> anyhow::Result<Scored> {
        self.rows += 1;
        let started = Instant::now();
        let pipeline = match self.pipelines.get_mut(&row.key) {
            Some(p) => p,
            None => {
                let p = self
                    .factory
                    .try_build(row.values.len(), &row.key)
                    .with_context(|| format!("cannot build the pipeline for {} features", row.values.len()))?;
                self.key_index.insert(row.key.clone(), self.keys.len());
                self.keys.push(row.key.clone());
                self.pipelines.entry(row.key.clone()).or_insert(p)
            }
        };
        let s = pipeline.process_at(&row.values, row.ts);
        self.busy += started.elapsed();
        if s.is_anomaly {
            self.alerts[severity_rank(s.severity)] += 1;
        }
        if let Some(l) = row.label {
            self.labelled.push((s.score, s.raw_score, l));
        }
        if self.keep != Keep::Nothing {
            let key = self.key_index.get(&row.key).copied().unwrap_or_default();
            let values = if self.keep == Keep::Values { row.values.clone() } else { Vec::new() };
            self.records.push(Record {
                key,
                row: self.rows,
                values,
                score: s.score,
                is_anomaly: s.is_anomaly,
                label: row.label,
                ts: row.ts,
            });
        }
        Ok(s)
    }

    /// Serialized bytes of every pipeline (what the state store would hold).
    pub fn state_bytes(&self) -> anyhow::Result<usize> {
        let mut bytes = 0;
        for p in self.pipelines.values() {
            bytes += postcard::to_stdvec(p).context("cannot serialize a pipeline")?.len();
        }
        Ok(bytes)
    }

    /// Rows per second of pipeline time.
    pub fn points_per_sec(&self) -> f64 {
        self.rows as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    /// ROC-AUC and PR-AUC of the calibrated and of the raw score over the labelled rows after
    /// the first `eval_after`; `None` without labels or without both classes.
    pub fn aucs(&self, eval_after: usize) -> Option<Aucs> {
        let eval = &self.labelled[eval_after.min(self.labelled.len())..];
        let labels: Vec<bool> = eval.iter().map(|e| e.2).collect();
        let score: Vec<f64> = eval.iter().map(|e| e.0).collect();
        let raw: Vec<f64> = eval.iter().map(|e| e.1).collect();
        Some(Aucs {
            rows: labels.len(),
            positives: labels.iter().filter(|l| **l).count(),
            score: (roc_auc(&score, &labels)?, pr_auc(&score, &labels)?),
            raw: (roc_auc(&raw, &labels)?, pr_auc(&raw, &labels)?),
        })
    }

    /// Print the summary lines (`rows: ...`, and the AUCs with labels).
    pub fn summary(&self, err: &mut dyn Write, elapsed: Duration, eval_after: usize) -> anyhow::Result<()> {
        let state_bytes = self.state_bytes()?;
        let [low, medium, high, critical] = self.alerts;
        writeln!(
            err,
            "rows: {}  keys: {}  anomalies: {} (low {low}, medium {medium}, high {high}, critical {critical})  points/s: {:.0}  state bytes: {} ({} per key)",
            self.rows,
            self.pipelines.len(),
            self.alerts.iter().sum::<usize>(),
            self.rows as f64 / elapsed.as_secs_f64().max(1e-9),
            state_bytes,
            state_bytes / self.pipelines.len().max(1),
        )?;
        if self.labelled.is_empty() {
            return Ok(());
        }
        match self.aucs(eval_after) {
            None => {
                let evaluated = self.labelled.len().saturating_sub(eval_after);
                let positives = self.labelled.iter().skip(eval_after).filter(|l| l.2).count();
                writeln!(err, "AUC: undefined ({positives} anomalies among {evaluated} evaluated rows)")?;
            }
            Some(a) => writeln!(
                err,
                "evaluated rows: {} (after {eval_after})  anomalies: {}\nROC-AUC: {:.4}  PR-AUC: {:.4}  (score)\nROC-AUC: {:.4}  PR-AUC: {:.4}  (raw_score)",
                a.rows, a.positives, a.score.0, a.score.1, a.raw.0, a.raw.1,
            )?,
        }
        Ok(())
    }
}

/// Ranking quality of a run against the labels.
#[derive(Debug, Clone, Copy)]
pub struct Aucs {
    /// Rows evaluated.
    pub rows: usize,
    /// Labelled anomalies among them.
    pub positives: usize,
    /// (ROC-AUC, PR-AUC) of the calibrated score.
    pub score: (f64, f64),
    /// (ROC-AUC, PR-AUC) of the raw score.
    pub raw: (f64, f64),
}

/// Index of a severity in [`Run::alerts`].
fn severity_rank(s: Severity) -> usize {
    match s {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

/// The severity as the score lines and alerts spell it.
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}
