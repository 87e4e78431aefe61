//! librdkafka settings of the worker's clients. The `[kafka.settings]` passthrough is applied
//! last, so a deployment can override anything here (security, timeouts, a mock cluster).

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// `fetch.queue.backoff.ms`: librdkafka's default (1 s) stalls a partition for a second each
/// time its local queue passes `queued.min.messages`; 10 ms quadruples throughput here
/// (design.md, Brokers).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// Auto-commit interval: commits carry only offsets stored after delivery, so committing
/// often costs little and shortens replay after a crash (librdkafka's default is 5 s).
pub const AUTO_COMMIT_INTERVAL_MS: &str = "1000";
/// Producer linger: small batches keep the end-to-end latency low at modest rates.
pub const LINGER_MS: &str = "5";

fn base(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap);
    c
}

fn passthrough(mut c: ClientConfig, k: &KafkaConfig) -> ClientConfig {
    for (key, value) in &k.settings {
        c.set(key, value);
    }
    c
}

/// The group consumer: offsets are stored by the worker only after delivery
/// (`enable.auto.offset.store=false`) and committed by auto-commit, on revoke and on shutdown.
pub fn consumer(k: &KafkaConfig) -> ClientConfig {
    let mut c = base(k);
    let heartbeat = (k.session_timeout_ms / 5).max(100);
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS)
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning: `latest` is unreliable on Tansu (design.md)
        // and would silently skip readings produced before the first worker joined.
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", heartbeat.to_string())
        .set("enable.partition.eof", "false")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    passthrough(c, k)
}

/// The output producer: idempotent, so retries neither duplicate nor reorder within a
/// partition.
pub fn producer(k: &KafkaConfig) -> ClientConfig {
    let mut c = base(k);
    c.set("enable.idempotence", "true").set("linger.ms", LINGER_MS);
    passthrough(c, k)
}

/// The admin client (topic creation, metadata).
pub fn admin(k: &KafkaConfig) -> ClientConfig {
    let mut c = base(k);
    // Topics are created on purpose, with the right partition count, never as a side effect.
    c.set("allow.auto.create.topics", "false");
    passthrough(c, k)
}
