//! `onad-stream replay`: move a consumer group back (or forward) on the input topic and say
//! what happens to the models.
//!
//! Like `kafka-consumer-groups --reset-offsets`, the group's workers must be stopped (the
//! command refuses while the group has members). Then, per target partition (next offset O):
//! - `--state keep`: the newest snapshot is relabelled as having applied O - 1, so the models
//!   carry on from where they were and learn the replayed readings again.
//! - `--state rewind`: snapshots after O - 1 are deleted; the worker restores the nearest one
//!   at or before O - 1 and replays the gap with outputs suppressed, so the models are the
//!   ones the original run had at O and the replay reproduces its scores. With no such
//!   snapshot the worker rebuilds from the start of the retained input.
//! - `--state reset`: an empty snapshot at O - 1: fresh models from O.
//!
//! `keep` and `reset` also raise the partition's replay epoch: every output carries it (header
//! `onad-replay-epoch`, and in `alert_id`), and a worker suppresses re-emission only of
//! outputs of the current epoch, so the replayed offsets get their new scores exactly once
//! (crashes included), told apart from the originals by the epoch.
//!
//! The local store is `state.path` and the changelog topic is rewritten to match, with the
//! new epoch last: a replica whose store holds an older epoch (the replay ran elsewhere)
//! sees the newer one in the changelog's or the outputs' tail on assignment, ignores its own
//! snapshots (they predate the replay) and restores the changelog's.
//!
//! Backfill without disturbing the live group: give the backfill its own group, output
//! topics, changelog topic and store, and pass the same settings to `replay` and `run`, e.g.
//! `S="--set kafka.group_id=\"backfill\" --set kafka.changelog_topic=\"backfill-changelog\"
//! --set kafka.scores_topic=\"scores-backfill\" ... --set state.path=\"./backfill-state\""`,
//! then `replay $S --to-timestamp T --state reset` and `run $S`. `replay` only touches the
//! group, changelog and store of its configuration: `--group` must be `kafka.group_id`
//! (naming another group while keeping this configuration's changelog and store would
//! rewrite the live group's state).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::progress::Progress;
use super::ConfigArgs;
use crate::config::Config;
use crate::kafka::changelog::Changelog;
use crate::kafka::tails::TailReader;
use crate::kafka::{admin, bounds, client, offsets};
use crate::partition::replay_plan::{self, Bounds, Lookup, PlanLine};
use crate::partition::resume;
use crate::state::{encode_models, KeyModel, StateStore};

/// Broker round trips (metadata, group list, offsets for times, commit).
const BROKER_TIMEOUT: Duration = Duration::from_secs(20);

/// What happens to the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateMode {
    /// Keep the current models; they learn the replayed readings again.
    Keep,
    /// The models as they were at the target (nearest snapshot, then replay of the gap).
    Rewind,
    /// Fresh models from the target.
    Reset,
}

/// Arguments of `onad-stream replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Consumer group to move (default: `kafka.group_id`).
    #[arg(long, env = "ONAD_REPLAY_GROUP")]
    pub group: Option<String>,
    /// Target as PARTITION:OFFSET, the next offset to read (repeatable; other partitions
    /// are left alone).
    #[arg(
        long = "to-offset",
        value_name = "P:O",
        env = "ONAD_REPLAY_TO_OFFSET",
        value_delimiter = ',',
        conflicts_with = "to_timestamp",
        required_unless_present = "to_timestamp"
    )]
    pub to_offset: Vec<String>,
    /// Target as a time (ms since the epoch), for every partition: the first record at or
    /// after it. On Tansu this is the broker's append time, not the record's CreateTime.
    #[arg(long = "to-timestamp", value_name = "MS", env = "ONAD_REPLAY_TO_TIMESTAMP")]
    pub to_timestamp: Option<i64>,
    /// What happens to the models.
    #[arg(long, value_enum, env = "ONAD_REPLAY_STATE")]
    pub state: StateMode,
    /// Do not touch the changelog topic (e.g. it is not used).
    #[arg(long, env = "ONAD_REPLAY_NO_CHANGELOG")]
    pub no_changelog: bool,
    /// Print the plan (per partition: from, to, state action, replay epoch) and change nothing.
    #[arg(long, env = "ONAD_REPLAY_DRY_RUN")]
    pub dry_run: bool,
    /// No progress bar over the partitions (it is only drawn when stderr is a terminal).
    #[arg(long, short = 'q', env = "ONAD_QUIET")]
    pub quiet: bool,
}

/// Run the subcommand.
pub fn main(args: ReplayArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(replay(&config, &args))
}

fn parse_targets(specs: &[String]) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut out = BTreeMap::new();
    for s in specs {
        let (p, o) = s.split_once(':').with_context(|| format!("--to-offset {s:?}: expected PARTITION:OFFSET"))?;
        let p: i32 = p.trim().parse().with_context(|| format!("--to-offset {s:?}: bad partition"))?;
        let o: i64 = o.trim().parse().with_context(|| format!("--to-offset {s:?}: bad offset"))?;
        if p < 0 || o < 0 {
            bail!("--to-offset {s:?}: partition and offset must be >= 0");
        }
        out.insert(p, o);
    }
    Ok(out)
}

async fn replay(config: &Config, args: &ReplayArgs) -> anyhow::Result<()> {
    let topic = config.kafka.input_topic.clone();
    let group = args.group.clone().unwrap_or_else(|| config.kafka.group_id.clone());
    if group != config.kafka.group_id {
        bail!(
            "--group {group:?} is not kafka.group_id ({:?}): the changelog topic and state.path of this configuration belong to that group; \
             set kafka.group_id, kafka.changelog_topic and state.path to the ones group {group:?} runs with",
            config.kafka.group_id
        );
    }
    // A reader under the group's id: it reads and sets the group's offsets, never joins.
    let consumer: BaseConsumer = client::reader(&config.kafka, &group).create().context("creating the consumer")?;

    // The group must be empty: a live member would overwrite the reset with its own commits.
    match consumer.fetch_group_list(Some(&group), BROKER_TIMEOUT) {
        Ok(list) => {
            if let Some(g) = list.groups().iter().find(|g| g.name() == group) {
                if !g.members().is_empty() && args.dry_run {
                    eprintln!("warning: group {group:?} has {} active member(s); a real replay would be refused", g.members().len());
                } else if !g.members().is_empty() {
                    bail!(
                        "group {group:?} has {} active member(s): stop its workers first (as kafka-consumer-groups requires)",
                        g.members().len()
                    );
                }
            }
        }
        Err(e) => eprintln!("warning: cannot list group {group:?} ({e}); make sure its workers are stopped"),
    }

    let partitions = admin::topic_partitions(consumer.client(), &topic, BROKER_TIMEOUT)
        .context("fetching topic metadata")?
        .with_context(|| format!("input topic {topic:?} not found"))?;
    for p in args.to_offset.iter().filter_map(|s| s.split_once(':')).filter_map(|(p, _)| p.trim().parse::<i32>().ok()) {
        if !partitions.contains(&p) {
            bail!("partition {p} is not a partition of {topic:?} (it has {})", partitions.len());
        }
    }
    // Every target is checked against what the partition holds before anything is written.
    let tail = bounds::reader(&config.kafka);
    let bounds = bounds::bounds(&tail, &topic, &partitions).context("reading the bounds of the input partitions")?;
    let targets = match args.to_timestamp {
        Some(ts) => timestamp_targets(&consumer, &tail, &topic, &partitions, &bounds, ts)?,
        None => replay_plan::check_offsets(&parse_targets(&args.to_offset)?, &bounds).map_err(|refused| {
            let lines: Vec<String> = refused.iter().map(|r| format!("  {r}")).collect();
            anyhow::anyhow!("refused, nothing changed:\n{}", lines.join("\n"))
        })?,
    };
    if args.dry_run {
        return dry_run(config, args, &consumer, &targets);
    }
    // The outputs' tails say which replay epochs exist; a backfill's topics may not yet.
    admin::ensure_output_topics(&config.kafka).await.context("checking the output topics")?;

    // State first: if it fails, the offsets are untouched and the command can be rerun.
    let store = StateStore::open(&config.state.path, config.state.snapshot_history)
        .with_context(|| format!("opening state.path {} (is a worker still running on it?)", config.state.path.display()))?;
    let changelog = if args.no_changelog {
        None
    } else {
        let cl = Changelog::new(&config.kafka, &config.kafka.changelog_topic)?;
        // A backfill's changelog does not exist before its first worker runs.
        cl.ensure_topic(partitions.len() as i32).await?;
        Some(cl)
    };
    let tails = TailReader::new(&config.kafka);
    // Restoring a partition's snapshot and rewriting its changelog take a while each.
    let progress = Progress::new(Some(targets.len() as u64), "partitions", args.quiet);
    for (&p, &o) in &targets {
        progress.inc(1);
        if let (StateMode::Keep, Some(cl)) = (args.state, &changelog) {
            seed_from_changelog(&store, cl, &topic, p).await?;
        }
        let report = apply_state(&store, &topic, p, o, args.state)?;
        let published = match (&changelog, &report.models) {
            (Some(cl), Some(models)) => {
                let r = cl.replace(p, report.offset, models.clone(), BROKER_TIMEOUT).await;
                match r {
                    Ok(pub_) => format!("changelog rewritten ({} records)", pub_.records),
                    Err(e) => bail!("partition {p}: local state updated but the changelog was not: {e}; rerun the command"),
                }
            }
            (Some(_), None) => "changelog untouched".to_string(),
            (None, _) => "changelog skipped".to_string(),
        };
        // New models give new scores: a new replay epoch makes the worker emit them although
        // the outputs already hold answers for these offsets (`rewind` reproduces those).
        let epoch = if args.state == StateMode::Rewind {
            String::new()
        } else {
            // Above every epoch in sight: this store's, and those in the outputs' and the
            // changelog's tails (an earlier replay may have run against another store).
            let seen = tails.read(p).map_err(|e| anyhow::anyhow!("partition {p}: reading the output tails: {e}"))?;
            let e = resume::next_epoch(store.epoch(&topic, p)?, &seen);
            store.set_epoch(&topic, p, e)?;
            if let Some(cl) = &changelog {
                cl.publish_epoch(p, e)
                    .await
                    .with_context(|| format!("partition {p}: publishing replay epoch {e} to the changelog; rerun the command"))?;
            }
            format!("; replay epoch {e}: outputs from offset {o} on are emitted again")
        };
        println!("{topic}[{p}] -> next offset {o}: {} ({published}){epoch}", report.summary);
    }

    progress.finish();
    offsets::reset_group(&consumer, &topic, &targets, BROKER_TIMEOUT)
        .with_context(|| format!("committing the new offsets of group {group:?}"))?;
    println!("group {group:?} now starts {topic} at {}", targets.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(", "));
    Ok(())
}

/// `--to-timestamp T`: per partition, the broker's answer, verified by reading the record it
/// points at. Partitions without a record at or after T are left alone (and say so); an error
/// when none has one.
fn timestamp_targets(
    consumer: &BaseConsumer,
    tail: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    bounds: &BTreeMap<i32, Bounds>,
    ts: i64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let found =
        offsets::offsets_for_time(consumer, topic, partitions, ts, BROKER_TIMEOUT).context("looking up offsets for the timestamp")?;
    let answered: BTreeMap<i32, i64> =
        found.into_iter().filter_map(|(p, o)| if let Offset::Offset(o) = o { Some((p, o)) } else { None }).collect();
    let record_ts = bounds::timestamps_at(tail, topic, &answered).context("reading the records the lookup points at")?;
    let mut out = BTreeMap::new();
    for &p in partitions {
        let Some(&b) = bounds.get(&p) else { continue };
        let lookup = Lookup { offset: answered.get(&p).copied(), record_ts: record_ts.get(&p).copied().flatten() };
        match replay_plan::check_timestamp(p, ts, lookup, b) {
            Ok(o) => {
                out.insert(p, o);
            }
            Err(why) => eprintln!("{why}"),
        }
    }
    if out.is_empty() {
        bail!("no partition of {topic:?} has a record at or after {ts}: nothing changed");
    }
    Ok(out)
}

/// `--dry-run`: what the replay would do, per partition; nothing is written.
fn dry_run(config: &Config, args: &ReplayArgs, consumer: &BaseConsumer, targets: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
    let topic = &config.kafka.input_topic;
    let mut tpl = TopicPartitionList::new();
    for p in targets.keys() {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, BROKER_TIMEOUT).context("reading the group's committed offsets")?;
    let from = |p: i32| committed.elements().iter().find(|e| e.partition() == p).and_then(|e| e.offset().to_raw()).filter(|o| *o >= 0);
    // Read-only: a dry run may look at the store of a running worker.
    let store = StateStore::open_read_only(&config.state.path).ok();
    let tails = TailReader::new(&config.kafka);
    let action = match args.state {
        StateMode::Keep => "keep",
        StateMode::Rewind => "rewind",
        StateMode::Reset => "reset",
    };
    println!("dry run: nothing is changed");
    for (&p, &to) in targets {
        let local = store.as_ref().and_then(|s| s.epoch(topic, p).ok()).unwrap_or(0);
        // Unreadable tails count as none (the command itself would fail on them).
        let seen = tails.read(p).unwrap_or_default();
        let now = resume::epoch(local, Some(&seen)).current;
        let after = if args.state == StateMode::Rewind { now } else { resume::next_epoch(local, &seen) };
        println!("{}", PlanLine { partition: p, from: from(p), to, action, epoch: (now, after) });
    }
    Ok(())
}

/// `--state keep` on a store without a usable snapshot of partition `p` (the replay runs on
/// another machine than the partition's last owner): copy the changelog's state into the
/// store, so that the models kept are the group's, not fresh ones.
async fn seed_from_changelog(store: &StateStore, cl: &Changelog, topic: &str, p: i32) -> anyhow::Result<()> {
    if store.restore::<KeyModel>(topic, p, None)?.snapshot.is_some() {
        return Ok(());
    }
    let st = cl.restore::<KeyModel>(p, BROKER_TIMEOUT).await.with_context(|| format!("partition {p}: reading the changelog"))?;
    let Some(marker) = st.marker else { return Ok(()) };
    if !st.is_usable() {
        bail!(
            "partition {p}: no snapshot in this store and the changelog's state is unusable ({}); use --state reset or rewind",
            st.rejected.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
        );
    }
    let models = encode_models(p, st.models.iter().map(|m| (&m.key, &m.model)))?;
    store.write_encoded(topic, p, marker, models.into_iter().map(Ok))?;
    println!("{topic}[{p}]: no snapshot in this store; took the changelog's state at offset {marker} ({} keys)", st.models.len());
    Ok(())
}

/// What `apply_state` did to one partition.
struct StateReport {
    /// Human summary.
    summary: String,
    /// The snapshot offset the changelog must now say.
    offset: i64,
    /// The models the changelog must now hold (`None`: leave it).
    models: Option<Vec<(String, Vec<u8>)>>,
}

/// Make the local store of partition `p` match `mode` for a restart at next offset `o`.
fn apply_state(store: &StateStore, topic: &str, p: i32, o: i64, mode: StateMode) -> anyhow::Result<StateReport> {
    let target = o - 1;
    // The newest readable snapshot satisfying `fits`, with its models' envelopes.
    let newest = |fits: &dyn Fn(i64) -> bool| -> anyhow::Result<Option<(i64, crate::state::EncodedModels)>> {
        for s in store.snapshots(topic, p)? {
            let Ok(info) = s else { continue };
            if !fits(info.offset) {
                continue;
            }
            match store.encoded_models(&info) {
                Ok(m) => return Ok(Some((info.offset, m))),
                Err(e) => eprintln!("skipping unreadable snapshot: {e}"),
            }
        }
        Ok(None)
    };
    Ok(match mode {
        StateMode::Reset => {
            store.delete_after(topic, p, None)?;
            store.write_encoded(topic, p, target, std::iter::empty())?;
            StateReport { summary: "state reset (empty snapshot)".into(), offset: target, models: Some(Vec::new()) }
        }
        StateMode::Keep => match newest(&|_| true)? {
            Some((from, models)) => {
                // Written as the partition's state now: the newer snapshots go in the same batch,
                // and this one is not pruned as the "oldest" (the store orders by meaning).
                store.write_encoded(topic, p, target, models.iter().cloned().map(Ok))?;
                StateReport {
                    summary: format!("kept the models of snapshot {from} ({} keys), relabelled as applied up to {target}", models.len()),
                    offset: target,
                    models: Some(models),
                }
            }
            None => StateReport { summary: "no snapshot to keep: the worker starts fresh".into(), offset: target, models: None },
        },
        StateMode::Rewind => match newest(&|off| off <= target)? {
            Some((at, models)) => {
                store.delete_after(topic, p, Some(at))?;
                StateReport {
                    summary: format!("rewound to snapshot {at} ({} keys); the worker replays {}..{target} silently", models.len(), at + 1),
                    offset: at,
                    models: Some(models),
                }
            }
            None => {
                // An empty state at -1 = "nothing applied": the worker replays the input from
                // its start (silently up to the target), which is the rewound state.
                store.delete_after(topic, p, None)?;
                store.write_encoded(topic, p, -1, std::iter::empty())?;
                StateReport {
                    summary: format!("no snapshot at or before {target}: the worker rebuilds from the start of the input"),
                    offset: -1,
                    models: Some(Vec::new()),
                }
            }
        },
    })
}
