//! The changelog against the real broker: a snapshot published by one replica is restored by
//! another, latest record per key wins, the end of the log is found by an appended marker
//! (not Tansu's high watermark), and `replace` rewrites a partition's state (replay).

mod common;

use std::time::Duration;

use common::{bootstrap, unique};
use onad_stream::config::KafkaConfig;
use onad_stream::detect::{Pipeline, PipelineSpec};
use onad_stream::kafka::changelog::Changelog;

const WAIT: Duration = Duration::from_secs(30);

fn base() -> KafkaConfig {
    KafkaConfig { bootstrap: bootstrap(), ..KafkaConfig::default() }
}

fn models(n: usize, steps: usize) -> Vec<(String, Pipeline)> {
    let f = PipelineSpec { learn_anomalies: false, seed: 11, ..PipelineSpec::default() }.check().expect("valid spec");
    (0..n)
        .map(|i| {
            let key = format!("dev/{i}");
            let mut p = f.build(3, &key);
            for t in 0..steps {
                let v = (t + 13 * i) as f64;
                p.process(&[v.sin(), v.cos(), (v * 0.2).sin()]);
            }
            (key, p)
        })
        .collect()
}

fn bytes(p: &Pipeline) -> Vec<u8> {
    postcard::to_stdvec(p).expect("encodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_restores_the_published_models_from_the_changelog() {
    let topic = unique("changelog");
    let writer = Changelog::new(&base(), &topic).expect("producer");
    writer.ensure_topic(4).await.expect("topic created");

    let first = models(40, 50);
    let second = models(10, 80); // keys dev/0..dev/9 learned more
    writer.publish(2, 999, first.iter().map(|(k, p)| (k.as_str(), p))).await.expect("published");
    writer.publish(2, 1999, second.iter().map(|(k, p)| (k.as_str(), p))).await.expect("published");
    writer.publish(1, 5, first[..3].iter().map(|(k, p)| (k.as_str(), p))).await.expect("published");

    // A different client (another replica) reads it back.
    let reader = Changelog::new(&base(), &topic).expect("producer");
    let st = reader.restore::<Pipeline>(2, WAIT).await.expect("restored");
    assert!(st.is_usable(), "{:?}", st.rejected);
    assert_eq!(st.marker, Some(1999));
    assert_eq!(st.resume_at(), 2000);
    assert_eq!(st.models.len(), 40, "every key of partition 2, none of partition 1");
    for m in &st.models {
        let i: usize = m.key.trim_start_matches("dev/").parse().expect("key");
        let (want, offset) = if i < 10 { (&second[i].1, 1999) } else { (&first[i].1, 999) };
        assert_eq!(m.offset, offset, "key {}", m.key);
        assert!(bytes(&m.model) == bytes(want), "key {} restored a different model", m.key);
    }

    // Partition 0 has nothing: restore finds the end (its own marker) and returns no state.
    let empty = reader.restore::<Pipeline>(0, WAIT).await.expect("restored");
    assert!(empty.models.is_empty() && empty.marker.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_larger_than_a_record_are_chunked_through_the_broker() {
    let topic = unique("changelog-chunks");
    // A z-score model is ~150 bytes (its calibrator is a few numbers): 40-byte chunks give
    // several chunks per model.
    let cl = Changelog::new(&base(), &topic).expect("producer").with_max_chunk_bytes(40);
    cl.ensure_topic(1).await.expect("topic created");
    let m = models(5, 400);
    let published = cl.publish(0, 77, m.iter().map(|(k, p)| (k.as_str(), p))).await.expect("published");
    assert!(published.records > 5 * 3, "chunked into {} records", published.records);
    let st = cl.restore::<Pipeline>(0, WAIT).await.expect("restored");
    assert!(st.is_usable(), "{:?}", st.rejected);
    assert_eq!(st.models.len(), 5);
    for (got, (k, want)) in st.models.iter().zip(&m) {
        assert_eq!(&got.key, k);
        assert!(bytes(&got.model) == bytes(want));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_rewrites_the_partition_state_and_deletes_other_keys() {
    let topic = unique("changelog-replace");
    let cl = Changelog::new(&base(), &topic).expect("producer");
    cl.ensure_topic(1).await.expect("topic created");
    let m = models(6, 30);
    cl.publish(0, 500, m.iter().map(|(k, p)| (k.as_str(), p))).await.expect("published");

    // Rewind to a state with only 2 keys at offset 200.
    let older = models(2, 10);
    let encoded: Vec<(String, Vec<u8>)> = older
        .iter()
        .map(|(k, p)| (k.clone(), onad_stream::state::codec::encode(onad_stream::state::Kind::Model, p).expect("encodes")))
        .collect();
    cl.replace(0, 200, encoded, WAIT).await.expect("replaced");
    let st = cl.restore::<Pipeline>(0, WAIT).await.expect("restored");
    assert!(st.is_usable(), "{:?}", st.rejected);
    assert_eq!(st.marker, Some(200));
    assert_eq!(st.models.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), vec!["dev/0", "dev/1"]);
    assert!(st.models.iter().all(|m| m.offset == 200));

    // Reset: no models, marker at -1 (resume from the start with fresh models).
    cl.replace(0, -1, Vec::new(), WAIT).await.expect("replaced");
    let st = cl.restore::<Pipeline>(0, WAIT).await.expect("restored");
    assert!(st.models.is_empty());
    assert_eq!((st.marker, st.resume_at()), (Some(-1), 0));
}
