//! The worker's state hooks: restore on assignment, snapshot every `checkpoint_interval`
//! readings / `checkpoint_secs`, on revoke and on shutdown, publish to the changelog, and find
//! what was already emitted so that a restart does not emit it twice.
//!
//! # Recovery on assignment (committed offset C = the next record the group would read)
//! 1. Models parked by this worker and contiguous with C: carry on.
//! 2. Else the newest local snapshot that decodes (offset S; corrupt ones are reported and
//!    skipped); if it is missing or behind C, the changelog's state when that is newer.
//! 3. Resume at S + 1 (no state at all: at the start of the input, "rebuild by replay"),
//!    learning without outputs every record below C, and not producing an output to topic T
//!    of a record at or below H_T, the highest source offset found in the tail of this
//!    partition of T (scores, alerts, dead letters; per topic, because deliveries to
//!    different topics are not ordered with each other, while the idempotent producer keeps
//!    them ordered within one partition). So outputs delivered before a crash but not yet
//!    committed are not emitted again: effectively-once without broker transactions. What
//!    remains: a zombie member that lost its session but still produces can add duplicates
//!    (recognisable by their source offset header).
//!
//! # Snapshots and delivery
//! A snapshot at offset L may only be written once every output up to L is delivered: a
//! crash right after it would otherwise resume at L + 1 and lose the undelivered outputs. So
//! when a snapshot is due the models are *encoded* at once (the expensive part) and written
//! when the delivered offset reaches L (usually the next batch). A failed write is returned
//! to the worker as [`StateFailure`], which stops it before offsets pass the lost snapshot.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::changelog::Changelog;
use super::codec::{self, Kind};
use super::{StateError, StateStore};
use crate::config::Config;
use crate::partition::output::{HEADER_REPLAY_EPOCH, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use crate::partition::{EmittedUpTo, KeyPipeline, Models, Resume, StateFailure, StateHooks};

/// Bound on a changelog restore during assignment.
const CHANGELOG_RESTORE_TIMEOUT: Duration = Duration::from_secs(30);
/// Records read back from the end of an output partition to find the last source offset.
const TAIL_RECORDS: i64 = 2_000;
/// The tail is read until nothing arrives for this long (this worker now owns the partition,
/// so nothing else should be writing to it; Tansu's high watermark is not the true end).
const TAIL_IDLE: Duration = Duration::from_millis(1_000);
/// Hard bound on reading a tail.
const TAIL_TIMEOUT: Duration = Duration::from_secs(20);

/// An encoded snapshot waiting for its outputs to be delivered.
struct Pending {
    /// Last input offset applied to these models.
    offset: i64,
    /// (key, model envelope).
    models: Vec<(String, Vec<u8>)>,
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
}

/// [`StateHooks`] backed by the RocksDB store and the changelog topic.
pub struct StoreHooks {
    /// The worker's database.
    store: StateStore,
    /// Changelog publishing/restoring, with the runtime to drive it from worker threads.
    changelog: Option<(Changelog, tokio::runtime::Handle)>,
    /// `checkpoint_interval`.
    interval: u64,
    /// `checkpoint_secs`.
    every: Duration,
    /// Settings for reading output tails.
    tail_config: ClientConfig,
    /// Scores, alerts and dead-letter topics.
    output_topics: [String; 3],
    /// The changelog topic (its tail holds the replay epoch).
    changelog_topic: String,
    /// Per input partition.
    progress: Mutex<HashMap<i32, Progress>>,
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
        let base = crate::kafka::client::admin(&config.kafka);
        let cl = Changelog::new(&base, &config.kafka.changelog_topic)?;
        cl.ensure_topic(&base, partitions, config.kafka.replication_factor).await?;
        let tail_config = tail_config(&base);
        Ok(Self {
            store,
            changelog: Some((cl, tokio::runtime::Handle::current())),
            interval: config.checkpoint_interval,
            every: config.checkpoint_every,
            tail_config,
            output_topics: [config.kafka.scores_topic.clone(), config.kafka.alerts_topic.clone(), config.kafka.dead_letter_topic.clone()],
            changelog_topic: config.kafka.changelog_topic.clone(),
            progress: Mutex::new(HashMap::new()),
        })
    }

    /// The store (for inspection in tests).
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    fn set_progress(&self, partition: i32, last: Option<i64>) {
        if let Ok(mut p) = self.progress.lock() {
            p.insert(partition, Progress { last, at: Some(Instant::now()), pending: None });
        }
    }

    /// The newest usable state of a partition: local snapshot, or the changelog's if newer
    /// (only the changelog's when the local snapshots predate a replay: `stale`).
    fn restore(&self, topic: &str, partition: i32, committed: Option<i64>, stale: bool) -> Option<Models> {
        let local = match (!stale).then(|| self.store.restore::<KeyPipeline>(topic, partition, None)) {
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
        let behind = match (local_offset, committed) {
            (None, _) => true,
            (Some(s), Some(c)) => s + 1 < c,
            (Some(_), None) => false,
        };
        let mut best = local;
        if behind {
            if let Some((cl, rt)) = &self.changelog {
                match rt.block_on(cl.restore::<KeyPipeline>(partition, CHANGELOG_RESTORE_TIMEOUT)) {
                    Ok(st) if !st.is_usable() => {
                        for e in &st.rejected {
                            tracing::warn!(partition, cause = %e, "changelog record unusable");
                        }
                    }
                    Ok(st) => match st.marker {
                        Some(m) if local_offset.is_none_or(|s| m > s) && st.models.iter().all(|r| r.offset <= m) => {
                            tracing::info!(partition, offset = m, keys = st.models.len(), ?local_offset, "restoring from the changelog");
                            best = Some((m, st.models.into_iter().map(|r| (r.key, r.model)).collect()));
                        }
                        Some(m) if m > local_offset.unwrap_or(-1) => {
                            tracing::warn!(partition, marker = m, "changelog holds models ahead of its marker (torn publish); not used");
                        }
                        _ => {}
                    },
                    Err(e) => tracing::warn!(partition, cause = %e, "changelog restore failed"),
                }
            }
        }
        best.map(|(offset, models)| Models { keys: models.into_iter().collect(), last_offset: (offset >= 0).then_some(offset), epoch: 0 })
    }

    /// The partition's replay epoch (the newest of this store's, the changelog's and the
    /// outputs'), whether this store's snapshots predate it, and the highest source offset
    /// already in each output topic for `partition` in that epoch (outputs of an earlier
    /// epoch are answers from before a replay, which asked for new ones).
    fn emitted(&self, topic: &str, partition: i32) -> (u32, bool, EmittedUpTo) {
        let local = match self.store.epoch(topic, partition) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(partition, cause = %e, "cannot read the replay epoch; assuming 0");
                0
            }
        };
        match read_tails(&self.tail_config, &self.output_topics, &self.changelog_topic, partition) {
            Ok(tails) => {
                let epoch = local.max(tails.epoch());
                let stale = epoch > local;
                if stale {
                    // The replay ran against another store: this one's snapshots predate it.
                    // They go (a later restore must not pick one up), then the epoch is
                    // recorded; a crash in between only repeats this.
                    tracing::warn!(
                        partition,
                        local,
                        epoch,
                        "a replay raised the epoch elsewhere: this store's snapshots predate it and are dropped"
                    );
                    if let Err(e) =
                        self.store.delete_after(topic, partition, None).and_then(|_| self.store.set_epoch(topic, partition, epoch))
                    {
                        tracing::error!(partition, cause = %e, "cannot drop the snapshots from before the replay");
                    }
                }
                let [scores, alerts, dead_letters] = tails.outputs.map(|t| t.get(&epoch).copied());
                (epoch, stale, EmittedUpTo { scores, alerts, dead_letters })
            }
            Err(e) => {
                // Without it a restart may duplicate outputs (still recognisable by their
                // source offset header): at-least-once, never loss.
                tracing::warn!(partition, cause = %e, "cannot read the output tails; duplicates possible");
                (local, false, EmittedUpTo::default())
            }
        }
    }

    /// Encode `models` for a snapshot.
    fn encode(partition: i32, models: &Models) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        models
            .keys
            .iter()
            .map(|(k, m)| {
                codec::encode(Kind::Model, m).map(|v| (k.clone(), v)).map_err(|source| StateError::Encode {
                    partition,
                    key: k.clone(),
                    source,
                })
            })
            .collect()
    }

    /// Write an encoded snapshot and publish it to the changelog.
    fn write(&self, topic: &str, partition: i32, offset: i64, models: &[(String, Vec<u8>)]) -> Result<(), StateError> {
        let t = Instant::now();
        let info = self.store.write_encoded(topic, partition, offset, models.iter().cloned().map(Ok))?;
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
        // Below the committed offset everything was delivered; from there on, what each
        // output topic already holds.
        let (epoch, stale, emitted) = self.emitted(topic, partition);
        let emit_from = committed;
        if let Some(models) = parked.filter(|m| m.epoch == epoch) {
            self.set_progress(partition, models.last_offset);
            return Resume { models, start_at: None, emit_from, emitted };
        }
        match self.restore(topic, partition, committed, stale).map(|m| Models { epoch, ..m }) {
            Some(models) => {
                let start = models.last_offset.map_or(0, |s| s + 1);
                tracing::info!(partition, snapshot = ?models.last_offset, keys = models.keys.len(), ?committed, ?emitted, "restored state");
                self.set_progress(partition, models.last_offset);
                Resume { models, start_at: Some(start), emit_from, emitted }
            }
            None => {
                self.set_progress(partition, None);
                // No state: rebuild by replaying the input from its start, silently up to
                // what was already emitted (a brand-new group just starts at the earliest).
                let start_at = committed.filter(|c| *c > 0).map(|_| 0);
                if start_at.is_some() {
                    tracing::warn!(partition, ?committed, "no usable state: rebuilding the models from the start of the input");
                }
                Resume { models: Models { epoch, ..Models::default() }, start_at, emit_from, emitted }
            }
        }
    }

    fn after_batch(&self, topic: &str, partition: i32, models: &Models, delivered: Option<i64>) -> Result<(), StateFailure> {
        let Some(applied) = models.last_offset else { return Ok(()) };
        let mut ready = None;
        {
            let Ok(mut all) = self.progress.lock() else { return Err(StateFailure("state bookkeeping poisoned".into())) };
            let p = all.entry(partition).or_default();
            let at = *p.at.get_or_insert_with(Instant::now);
            if p.pending.is_none() {
                let since = applied - p.last.unwrap_or(-1);
                if since as u64 >= self.interval || (since > 0 && at.elapsed() >= self.every) {
                    let encoded = Self::encode(partition, models).map_err(|e| StateFailure(e.to_string()))?;
                    p.pending = Some(Pending { offset: applied, models: encoded });
                }
            }
            if p.pending.as_ref().is_some_and(|pe| delivered.is_some_and(|d| d >= pe.offset)) {
                ready = p.pending.take();
            }
        }
        if let Some(pe) = ready {
            let offset = pe.offset;
            let written = self.write(topic, partition, offset, &pe.models);
            if let Ok(mut all) = self.progress.lock() {
                let p = all.entry(partition).or_default();
                if written.is_ok() {
                    p.last = Some(offset);
                    p.at = Some(Instant::now());
                } else {
                    // Kept for the retry: the models have moved on only if records were
                    // taken since, and the partition takes none while its state fails.
                    p.pending = Some(pe);
                }
            }
            written.map_err(|e| StateFailure(e.to_string()))?;
        }
        Ok(())
    }

    fn on_revoke(&self, topic: &str, partition: i32, models: &Models) {
        let Some(applied) = models.last_offset else { return };
        let last = self.progress.lock().ok().and_then(|mut all| all.remove(&partition)).and_then(|p| p.last);
        if last == Some(applied) {
            return;
        }
        let result = Self::encode(partition, models).and_then(|m| self.write(topic, partition, applied, &m));
        match result {
            Ok(()) => tracing::info!(partition, offset = applied, keys = models.keys.len(), "snapshot on revoke"),
            Err(e) => {
                tracing::error!(partition, offset = applied, cause = %e, "snapshot on revoke failed; the next owner replays from the previous one")
            }
        }
    }
}

/// Highest source offset per replay epoch, in one output partition's tail.
type TailOffsets = std::collections::BTreeMap<u32, i64>;

/// What the ends of a partition's output and changelog partitions say.
#[derive(Debug, Default)]
pub(crate) struct Tails {
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
}

/// Client settings of a tail reader.
pub(crate) fn tail_config(base: &ClientConfig) -> ClientConfig {
    let mut c = base.clone();
    c.set("group.id", "onad-stream-tail-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.queue.backoff.ms", "10");
    c
}

/// Read the last records of partition `partition` of each of `outputs` (scores, alerts, dead
/// letters: the source-offset header per replay epoch, a missing epoch header being 0) and of
/// `changelog` (its replay epoch record).
pub(crate) fn read_tails(config: &ClientConfig, outputs: &[String; 3], changelog: &str, partition: i32) -> Result<Tails, String> {
    let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for t in outputs.iter().map(String::as_str).chain([changelog]) {
        let (low, high) =
            consumer.fetch_watermarks(t, partition, Duration::from_secs(10)).map_err(|e| format!("{t}[{partition}] watermarks: {e}"))?;
        if high <= low {
            continue;
        }
        // High may be the first offset of the last batch + 1 (Tansu), so read on to the end.
        tpl.add_partition_offset(t, partition, Offset::Offset((high - TAIL_RECORDS).max(low))).map_err(|e| e.to_string())?;
    }
    let mut tails = Tails::default();
    if tpl.count() == 0 {
        return Ok(tails);
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let epoch_key = super::changelog::epoch_key(partition);
    let started = Instant::now();
    let mut last_record = Instant::now();
    while started.elapsed() < TAIL_TIMEOUT && last_record.elapsed() < TAIL_IDLE {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => return Err(format!("reading output tails: {e}")),
            Some(Ok(m)) => {
                last_record = Instant::now();
                if m.topic() == changelog {
                    if m.key() == Some(epoch_key.as_bytes()) {
                        match m.payload().map(|v| codec::decode::<u32>(Kind::ReplayEpoch, v)) {
                            Some(Ok(e)) => tails.changelog_epoch = Some(e),
                            Some(Err(e)) => tracing::warn!(partition, cause = %e, "unreadable replay epoch record in the changelog"),
                            None => {}
                        }
                    }
                    continue;
                }
                let Some(i) = outputs.iter().position(|t| t == m.topic()) else { continue };
                let Some(headers) = m.headers() else { continue };
                let (mut p, mut o, mut epoch) = (None, None, 0);
                for h in headers.iter() {
                    let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
                    match h.key {
                        HEADER_SOURCE_PARTITION => p = v.and_then(|v| v.parse::<i32>().ok()),
                        HEADER_SOURCE_OFFSET => o = v.and_then(|v| v.parse::<i64>().ok()),
                        HEADER_REPLAY_EPOCH => epoch = v.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0),
                        _ => {}
                    }
                }
                if let (Some(p), Some(o)) = (p, o) {
                    if p == partition {
                        let h = tails.outputs[i].entry(epoch).or_insert(o);
                        *h = (*h).max(o);
                    }
                }
            }
        }
    }
    if started.elapsed() >= TAIL_TIMEOUT {
        return Err(format!("output tails still moving after {TAIL_TIMEOUT:?} (another writer?)"));
    }
    Ok(tails)
}
