//! Snapshot write and restore: time and bytes for 1k, 10k and 100k keys.
//!
//! Model: one z-score pipeline per key over 4 features, warmed with 128 readings (so its
//! calibrator has started and holds only its summary numbers), the default thresholds. Each size is written
//! `ROUNDS` times as successive snapshots (history 4, so the later rounds also drop old
//! snapshots in the same batch, as in production) and restored `ROUNDS` times; the median is
//! reported. Real RocksDB in a temporary directory on the machine's disk.
//!
//! Run: `cargo bench --bench state_snapshot` (optionally `-- 1000 10000` for chosen sizes).

use std::time::{Duration, Instant};

use onad_stream::detect::{Pipeline, PipelineSpec};
use onad_stream::state::StateStore;

const ROUNDS: usize = 5;
const WARM_UP_READINGS: usize = 128;

fn models(n: usize) -> Vec<(String, Pipeline)> {
    let factory = PipelineSpec { learn_anomalies: false, ..PipelineSpec::default() }.check().expect("valid spec");
    (0..n)
        .map(|i| {
            let key = format!("sensor-{i:06}");
            let mut p = factory.build(4, &key);
            for t in 0..WARM_UP_READINGS {
                let v = (t * 31 + i * 7) as f64;
                p.process(&[v.sin(), (v * 0.7).cos(), (v * 0.13).sin() * 3.0, (t % 17) as f64]);
            }
            (key, p)
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1_000, 10_000, 100_000] } else { sizes };
    println!("keys,write_ms_median,restore_ms_median,snapshot_bytes,bytes_per_key,write_MB_per_s,restore_keys_per_s,db_dir_bytes");
    for n in sizes {
        let m = models(n);
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), 4).expect("open");
        let mut writes = Vec::new();
        let mut bytes = 0;
        for round in 0..ROUNDS {
            let t = Instant::now();
            let info =
                store.write_snapshot("bench", 0, (round as i64 + 1) * 1000, m.iter().map(|(k, p)| (k.as_str(), p))).expect("written");
            writes.push(t.elapsed());
            bytes = info.bytes;
        }
        let mut restores = Vec::new();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let r = store.restore::<Pipeline>("bench", 0, None).expect("readable");
            restores.push(t.elapsed());
            let snap = r.snapshot.expect("restored");
            assert_eq!(snap.models.len(), n);
        }
        let (w, r) = (median(writes), median(restores));
        drop(store);
        println!(
            "{n},{:.1},{:.1},{bytes},{},{:.0},{:.0},{}",
            w.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            bytes / n as u64,
            bytes as f64 / 1e6 / w.as_secs_f64(),
            n as f64 / r.as_secs_f64(),
            dir_bytes(dir.path())
        );
    }
}
