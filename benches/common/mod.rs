//! What the broker benchmarks share: the broker address and filling an input topic.

use std::collections::VecDeque;

use onad_stream::proto::SensorReading;
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// The broker the benchmarks use (`ONAD_TEST_BOOTSTRAP`, default the local one).
pub fn bootstrap() -> String {
    std::env::var("ONAD_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Produce every `(partition, reading)` to `topic` (key = sensor id) and wait until all are
/// delivered. A full local queue waits for the oldest delivery instead of failing, so any
/// number of readings fits through `queue_max_messages`.
pub async fn produce_readings(topic: &str, queue_max_messages: usize, readings: impl IntoIterator<Item = (i32, SensorReading)>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", queue_max_messages.to_string())
        .create()
        .expect("producer");
    let mut pending = VecDeque::new();
    for (partition, reading) in readings {
        let bytes = reading.encode_to_vec();
        let mut rec = FutureRecord::to(topic).key(&reading.sensor_id).payload(&bytes).partition(partition);
        loop {
            match producer.send_result(rec) {
                Ok(f) => break pending.push_back(f),
                Err((_, back)) => {
                    rec = back;
                    if let Some(f) = pending.pop_front() {
                        f.await.expect("producer alive").expect("delivered");
                    }
                }
            }
        }
    }
    for f in pending {
        f.await.expect("producer alive").expect("delivered");
    }
}
