//! LRU order and exact scores under eviction, on the Processor with an in-memory cold store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost::Message;

use super::*;
use crate::config::Config;
use crate::partition::{Dest, InputRecord, Models, Processor, ProcessorConfig};
use crate::proto::{ScoredReading, SensorReading};

/// A cold store in a shared map (postcard bytes, as the real one stores them).
#[derive(Clone, Default)]
struct MapCold {
    rows: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// While false, nothing may be evicted (a snapshot is pending).
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Bytes of a snapshot waiting to be written, as the real store reports them.
    pending: Arc<std::sync::atomic::AtomicU64>,
}

impl ColdStore for MapCold {
    fn retain_evictable(&self, victims: &mut Vec<(&str, &KeyPipeline)>) {
        if self.closed.load(Ordering::Relaxed) {
            victims.clear();
        }
    }
    fn pending_bytes(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }
    fn evict(&mut self, models: &[(&str, &KeyPipeline)]) -> Result<(), StateFailure> {
        let mut rows = self.rows.lock().expect("lock");
        for (k, kp) in models {
            rows.insert(k.to_string(), postcard::to_stdvec(kp).expect("encodes"));
        }
        Ok(())
    }
    fn reload(&mut self, key: &str) -> Result<Option<KeyPipeline>, StateFailure> {
        let rows = self.rows.lock().expect("lock");
        Ok(rows.get(key).map(|b| postcard::from_bytes(b).expect("decodes")))
    }
    fn forget(&mut self, key: &str) -> Result<(), StateFailure> {
        self.rows.lock().expect("lock").remove(key);
        Ok(())
    }
}

fn processor(budget: MemoryBudget, cold: Option<MapCold>) -> (Processor, Arc<PartitionStats>) {
    let c = Config::load_from(None, &[], &[]).expect("default config");
    let pc = ProcessorConfig { budget: Arc::new(budget), ..ProcessorConfig::new(&c, true) };
    let stats = Arc::new(PartitionStats::default());
    let cold = cold.map(|c| Box::new(c) as Box<dyn ColdStore>);
    (Processor::with_cold("in".into(), 0, Arc::new(pc), Models::default(), cold, stats.clone()), stats)
}

fn reading(id: &str, t: i64, v: f64) -> Vec<u8> {
    SensorReading {
        sensor_id: id.into(),
        timestamp_ms: t,
        values: [("temp".to_string(), v), ("rpm".to_string(), (v * 0.7).cos())].into_iter().collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The ScoredReading bytes of every record of `input`, keeping the budget after every
/// `batch` records as the partition thread does.
fn run(p: &mut Processor, input: &[(String, Vec<u8>)], batch: usize) -> Vec<Vec<u8>> {
    let mut scores = Vec::new();
    let mut out = Vec::new();
    for (i, (key, value)) in input.iter().enumerate() {
        out.clear();
        p.process(InputRecord { key: Some(key.as_bytes()), value: Some(value), offset: i as i64 }, 0, &mut out);
        scores.extend(out.iter().filter(|r| r.dest == Dest::Scores).map(|r| r.payload.clone()));
        if (i + 1) % batch == 0 {
            p.keep_budget().expect("evicts");
        }
    }
    scores
}

/// 300 sensors, each seen again and again in a shuffled order (so evicted ones come back).
fn fleet() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for round in 0..40u64 {
        for i in 0..300u64 {
            let j = (i * 7919 + round * 104_729) % 300;
            let id = format!("s-{j}");
            let x = ((round * 13 + j) as f64).sin() + if (round + j) % 37 == 0 { 6.0 } else { 0.0 };
            v.push((id.clone(), reading(&id, round as i64, x)));
        }
    }
    v
}

#[test]
fn scores_under_a_tiny_budget_are_bit_identical_to_an_unlimited_one() {
    let input = fleet();
    let (mut free, free_stats) = processor(MemoryBudget::unlimited(), Some(MapCold::default()));
    let expected = run(&mut free, &input, 16);
    assert_eq!(free_stats.evictions.load(Ordering::Relaxed), 0);

    // Room for about 20 of the 300 pipelines.
    let one = free.resident().bytes_of(&input[0].0).expect("resident");
    let cold = MapCold::default();
    let (mut tight, stats) = processor(MemoryBudget::from_bytes(one * 20), Some(cold.clone()));
    let got = run(&mut tight, &input, 16);

    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(
            g == e,
            "reading {i} scored differently after eviction: {:?} vs {:?}",
            ScoredReading::decode(&g[..]),
            ScoredReading::decode(&e[..])
        );
    }
    let (evictions, reloads) = (stats.evictions.load(Ordering::Relaxed), stats.reloads.load(Ordering::Relaxed));
    assert!(evictions > 1000 && reloads > 1000, "evictions {evictions}, reloads {reloads}");
    assert!(tight.resident().resident() <= 40, "{} resident", tight.resident().resident());
    assert_eq!(stats.models.load(Ordering::Relaxed), 300, "every sensor counted, resident or evicted");
    assert_eq!(stats.models_resident.load(Ordering::Relaxed), tight.models().keys.len() as u64);
    assert!(stats.model_bytes.load(Ordering::Relaxed) <= one * 22, "model bytes stay near the budget");
}

#[test]
fn the_least_recently_used_sensor_goes_first() {
    let cold = MapCold::default();
    let (mut p, stats) = processor(MemoryBudget::unlimited(), Some(cold.clone()));
    let input: Vec<(String, Vec<u8>)> =
        ["a", "b", "c", "d", "b", "a"].iter().enumerate().map(|(t, k)| (k.to_string(), reading(k, t as i64, 1.0))).collect();
    run(&mut p, &input, 100);
    assert_eq!(p.resident().lru_order(), vec!["c", "d", "b", "a"]);
    let each = p.resident().bytes_of("c").expect("resident");

    // Shrink the budget to three pipelines (minus the 1% headroom): c must go, then d.
    let (mut q, _) = processor(MemoryBudget::from_bytes(each * 3 + each / 2), Some(cold.clone()));
    run(&mut q, &input, 100);
    q.keep_budget().expect("evicts");
    assert_eq!(q.resident().lru_order(), vec!["d", "b", "a"]);
    assert!(cold.rows.lock().expect("lock").contains_key("c"));
    assert!(!q.models().keys.contains_key("c"));

    // A pending snapshot holds evictions back.
    let cold = MapCold::default();
    let (mut r, rs) = processor(MemoryBudget::from_bytes(each + each / 2), Some(cold.clone()));
    cold.closed.store(true, Ordering::Relaxed);
    run(&mut r, &input, 100);
    assert_eq!(r.keep_budget().expect("no error"), 0);
    assert_eq!(r.resident().resident(), 4);
    cold.closed.store(false, Ordering::Relaxed);
    assert_eq!(r.keep_budget().expect("evicts"), 3);
    assert_eq!(r.resident().lru_order(), vec!["a"]);
    assert_eq!(rs.evictions.load(Ordering::Relaxed), 3);
    assert_eq!(stats.reloads.load(Ordering::Relaxed), 0);

    // "c" comes back with its counters on its next reading.
    let mut out = Vec::new();
    r.process(InputRecord { key: Some(b"c"), value: Some(&reading("c", 9, 1.0)), offset: 9 }, 0, &mut out);
    let s = ScoredReading::decode(&out[0].payload[..]).expect("scored");
    assert_eq!(s.counters.expect("counters").processed, 2);
    assert_eq!(rs.reloads.load(Ordering::Relaxed), 1);
    assert_eq!(r.resident().lru_order().last(), Some(&"c"));
}

#[test]
fn without_a_cold_store_nothing_is_evicted_and_it_is_reported() {
    let (mut p, stats) = processor(MemoryBudget::from_bytes(1), None);
    let input: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("k{i}"), reading(&format!("k{i}"), 0, 1.0))).collect();
    run(&mut p, &input, 100);
    assert_eq!(p.keep_budget().expect("no error"), 0);
    assert!(p.over_budget_without_store());
    assert_eq!(p.models().keys.len(), 5);
    assert_eq!(stats.evictions.load(Ordering::Relaxed), 0);
}

#[test]
fn a_waiting_snapshot_is_charged_to_the_budget_and_eviction_makes_room_for_it() {
    let input: Vec<(String, Vec<u8>)> = (0..8).map(|i| (format!("s{i}"), reading(&format!("s{i}"), 1, i as f64))).collect();
    let (mut free, _) = processor(MemoryBudget::unlimited(), None);
    run(&mut free, &input, 8);
    let one = free.resident().bytes_of("s0").expect("resident");
    let cold = MapCold::default();
    let (mut p, _) = processor(MemoryBudget::from_bytes(one * 10), Some(cold.clone()));
    run(&mut p, &input, 8);
    assert_eq!(p.resident().resident(), 8, "8 pipelines and their changed keys fit in 10");
    // A snapshot of 4 pipelines' worth waits: the oldest sensors make room for it.
    cold.pending.store(one * 4, Ordering::Relaxed);
    let n = p.keep_budget().expect("evicts");
    assert!((2..=3).contains(&n), "evicted {n}: 2 pipelines' worth and the 1% headroom");
    assert_eq!(p.resident().resident(), 8 - n);
    let oldest = format!("s{n}");
    assert_eq!(p.resident().lru_order().first(), Some(&oldest.as_str()), "the least recently used went first");
    // Written: its charge is returned, nothing more is evicted.
    cold.pending.store(0, Ordering::Relaxed);
    let resident = p.resident().resident();
    assert_eq!(p.keep_budget().expect("no error"), 0);
    assert_eq!(p.resident().resident(), resident);
}
