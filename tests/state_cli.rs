//! `onad-stream snapshot inspect` on a real store: partitions with offsets, keys and bytes;
//! one key's model as JSON; works while a worker holds the store's lock.

use onad_stream::detect::PipelineSpec;
use onad_stream::partition::KeyPipeline;
use onad_stream::state::StateStore;

fn inspect(state: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onad-stream"))
        .args(["snapshot", "inspect"])
        .args(args)
        .args(["--set", &format!("state.path={:?}", state.display().to_string()), "--set", "kafka.input_topic=\"plant-in\""])
        .output()
        .expect("run snapshot inspect");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn snapshot_inspect_lists_partitions_keys_and_dumps_a_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let factory = PipelineSpec { learn_anomalies: false, seed: 1, ..PipelineSpec::default() }.check().expect("valid spec");
    let models: Vec<(String, KeyPipeline)> = (0..3)
        .map(|i| {
            let mut pipeline = factory.build(2, &format!("pump-{i}"));
            for t in 0..50 {
                pipeline.process(&[t as f64, (t * i) as f64]);
            }
            (format!("pump-{i}"), KeyPipeline { processed: 50, ..KeyPipeline::new(vec!["flow".into(), "temp".into()], pipeline) })
        })
        .collect();
    let store = StateStore::open(dir.path(), 4).expect("open");
    store.write_snapshot("plant-in", 1, 120, models.iter().map(|(k, m)| (k.as_str(), m))).expect("written");
    store.write_snapshot("plant-in", 1, 240, models.iter().map(|(k, m)| (k.as_str(), m))).expect("written");
    store.set_epoch("plant-in", 1, 2).expect("epoch written");
    // The store stays open (locked), as with a running worker.

    let (ok, text) = inspect(dir.path(), &["--json"]);
    assert!(ok, "{text}");
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!((rows[0]["partition"].as_i64(), rows[0]["offset"].as_i64(), rows[0]["keys"].as_u64()), (Some(1), Some(240), Some(3)));
    assert_eq!(rows[0]["replay_epoch"].as_u64(), Some(2), "{text}");
    assert!(rows[0]["bytes"].as_u64().unwrap_or(0) > 100);

    let (ok, text) = inspect(dir.path(), &["--partition", "1"]);
    assert!(ok && text.contains("pump-2") && text.contains("offset 240"), "{text}");

    let (ok, text) = inspect(dir.path(), &["--partition", "1", "--key", "pump-1"]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["key"], "pump-1");
    assert_eq!(v["snapshot_offset"], 240);
    assert_eq!(v["model"]["features"], serde_json::json!(["flow", "temp"]));
    assert_eq!(v["model"]["processed"], 50);

    let (ok, text) = inspect(dir.path(), &["--partition", "1", "--key", "nope"]);
    assert!(!ok && text.contains("no key \"nope\""), "{text}");
}

#[test]
fn snapshot_inspect_dumps_every_model_type_and_transform() {
    // Models hold u128 RNG states and long arrays: each must come out as JSON (this failed
    // with "number out of range" for isolation_forest).
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path(), 4).expect("open");
    let steps = r#"preprocessing_steps=[{type="scaler"},{type="minmax"},{type="pca",params={n_components=2}},{type="random_projection",params={n_components=2}}]"#;
    let pipelines: Vec<(String, Vec<String>)> = onad_stream::detect::pipeline::MODEL_TYPES
        .iter()
        .map(|m| (m.to_string(), vec![format!("model_type=\"{m}\"")]))
        .chain([("all-transforms".to_string(), vec!["model_type=\"knn\"".to_string(), steps.to_string()])])
        .collect();
    let models: Vec<(String, KeyPipeline)> = pipelines
        .iter()
        .map(|(name, sets)| {
            let config = onad_stream::config::Config::load_from(None, &[], sets).expect("valid config");
            let mut pipeline = config.pipeline.build(3, name);
            for t in 0..300 {
                let t = t as f64;
                pipeline.process(&[t.sin(), (t * 0.3).cos(), t % 7.0]);
            }
            (name.clone(), KeyPipeline { processed: 300, ..KeyPipeline::new(vec!["a".into(), "b".into(), "c".into()], pipeline) })
        })
        .collect();
    store.write_snapshot("plant-in", 0, 299, models.iter().map(|(k, m)| (k.as_str(), m))).expect("written");
    for (name, _) in &pipelines {
        let (ok, text) = inspect(dir.path(), &["--partition", "0", "--key", name]);
        assert!(ok, "snapshot inspect --key {name}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {text}"));
        assert_eq!(v["key"], name.as_str());
        assert_eq!(v["model"]["processed"], 300, "{name}: {text}");
        assert!(v["model"]["pipeline"].is_object(), "{name}: the pipeline is dumped: {text}");
    }
}
