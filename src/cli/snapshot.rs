//! `onad-stream snapshot`: look inside the state store.
//!
//! `snapshot inspect` opens the store read-only (no lock: it works next to a running worker)
//! and prints, per partition, every stored snapshot (offset, age, keys, bytes); with
//! `--partition` the keys of its newest snapshot with their bytes; with `--key` that key's
//! model as a JSON summary (long arrays shortened to their length and first items).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::ConfigArgs;
use crate::state::{codec, Kind, SnapshotInfo, StateStore};

/// Arguments of `onad-stream snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Configuration (`state.path` says where the store is).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: SnapshotAction,
}

/// `snapshot` actions.
#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// List partitions, snapshots, keys and sizes; dump one key's model summary as JSON.
    Inspect(InspectArgs),
}

/// Arguments of `snapshot inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Only this input partition; lists its keys.
    #[arg(long, env = "ONAD_INSPECT_PARTITION")]
    pub partition: Option<i32>,
    /// Dump this key's model (needs `--partition`).
    #[arg(long, env = "ONAD_INSPECT_KEY", requires = "partition")]
    pub key: Option<String>,
    /// Input topic (default: `kafka.input_topic`).
    #[arg(long, env = "ONAD_INSPECT_TOPIC")]
    pub topic: Option<String>,
    /// Snapshot offset to look at (default: the newest).
    #[arg(long, env = "ONAD_INSPECT_OFFSET")]
    pub offset: Option<i64>,
    /// Print JSON lines instead of a table.
    #[arg(long, env = "ONAD_INSPECT_JSON")]
    pub json: bool,
}

/// Run the subcommand.
pub fn main(args: SnapshotArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    match args.action {
        SnapshotAction::Inspect(a) => inspect(&config, &a),
    }
}

fn age(info: &SnapshotInfo) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let secs = now.saturating_sub(info.written_at_ms) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn inspect(config: &crate::config::Config, a: &InspectArgs) -> anyhow::Result<()> {
    let path = &config.state.path;
    let store = StateStore::open_read_only(path).with_context(|| format!("state.path = {}", path.display()))?;
    let topic = a.topic.clone().unwrap_or_else(|| config.kafka.input_topic.clone());
    let Some(partition) = a.partition else {
        return list_partitions(&store, a.json);
    };
    let snapshots = store.snapshots(&topic, partition)?;
    let chosen = snapshots.iter().filter_map(|s| s.as_ref().ok()).find(|s| a.offset.is_none_or(|o| s.offset == o));
    let Some(info) = chosen else {
        anyhow::bail!(
            "no readable snapshot of {topic}[{partition}]{} in {}",
            a.offset.map(|o| format!(" at offset {o}")).unwrap_or_default(),
            path.display()
        );
    };
    match &a.key {
        Some(key) => dump_key(&store, info, key),
        None => list_keys(&store, info, a.json),
    }
}

fn list_partitions(store: &StateStore, json: bool) -> anyhow::Result<()> {
    let partitions = store.partitions()?;
    if !json {
        println!(
            "{:<24} {:>9} {:>6} {:>12} {:>8} {:>9} {:>12} {:>10}",
            "TOPIC", "PARTITION", "EPOCH", "OFFSET", "AGE", "KEYS", "BYTES", "BYTES/KEY"
        );
    }
    for (topic, partition) in partitions {
        // The replay epoch (raised by `replay --state keep|reset`).
        let epoch = store.epoch(&topic, partition)?;
        for entry in store.snapshots(&topic, partition)? {
            match entry {
                Ok(s) if json => println!(
                    "{}",
                    serde_json::json!({"topic": s.topic, "partition": s.partition, "replay_epoch": epoch, "offset": s.offset, "written_at_ms": s.written_at_ms, "age": age(&s), "keys": s.keys, "bytes": s.bytes})
                ),
                Ok(s) => println!(
                    "{:<24} {:>9} {:>6} {:>12} {:>8} {:>9} {:>12} {:>10}",
                    s.topic,
                    s.partition,
                    epoch,
                    s.offset,
                    age(&s),
                    s.keys,
                    s.bytes,
                    s.bytes.checked_div(s.keys).unwrap_or(0)
                ),
                Err(e) if json => println!("{}", serde_json::json!({"topic": topic, "partition": partition, "error": e.to_string()})),
                Err(e) => println!("{topic:<24} {partition:>9} CORRUPT: {e}"),
            }
        }
    }
    Ok(())
}

fn list_keys(store: &StateStore, info: &SnapshotInfo, json: bool) -> anyhow::Result<()> {
    let keys = store.key_sizes(info)?;
    if json {
        for (k, b) in keys {
            println!("{}", serde_json::json!({"key": k, "bytes": b, "offset": info.offset}));
        }
    } else {
        println!(
            "{}[{}] snapshot at offset {} ({} ago): {} keys, {} bytes",
            info.topic,
            info.partition,
            info.offset,
            age(info),
            info.keys,
            info.bytes
        );
        println!("{:<40} {:>10}", "KEY", "BYTES");
        for (k, b) in keys {
            println!("{k:<40} {b:>10}");
        }
    }
    Ok(())
}

fn dump_key(store: &StateStore, info: &SnapshotInfo, key: &str) -> anyhow::Result<()> {
    let Some(bytes) = store.model_bytes(info, key)? else {
        anyhow::bail!("no key {key:?} in the snapshot of {}[{}] at offset {}", info.topic, info.partition, info.offset);
    };
    let model: crate::state::KeyModel = codec::decode(Kind::Model, &bytes).map_err(|source| crate::state::StateError::Corrupt {
        topic: info.topic.clone(),
        partition: info.partition,
        offset: info.offset,
        key: Some(key.into()),
        source,
    })?;
    let summary = serde_json::json!({
        "topic": info.topic, "partition": info.partition, "snapshot_offset": info.offset,
        "snapshot_age": age(info), "key": key, "bytes": bytes.len(),
        "model": shorten(serde_json::to_value(&model)?),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// Arrays longer than this are summarised.
const MAX_ARRAY: usize = 8;

/// Replace long arrays by `{"len": n, "head": [first items]}` (a KNN window or a
/// forest's nodes are thousands of numbers; the summary shows structure, not data).
fn shorten(v: Value) -> Value {
    match v {
        Value::Array(items) if items.len() > MAX_ARRAY => {
            let len = items.len();
            let head: Vec<Value> = items.into_iter().take(4).map(shorten).collect();
            serde_json::json!({"len": len, "head": head})
        }
        Value::Array(items) => Value::Array(items.into_iter().map(shorten).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, shorten(v))).collect()),
        other => other,
    }
}
