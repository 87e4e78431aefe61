//! The one place that builds librdkafka client settings: one function per client role, every
//! non-default setting named once, here, with its reason (style.md, convention 12). Everything
//! else in the crate asks this module for a [`ClientConfig`].
//!
//! Roles: the group [`consumer`] of the worker, the idempotent [`producer`] (outputs, the
//! changelog, `produce`), the [`admin`] client (metadata, topic creation), the [`reader`]
//! (assign-only: output tails, the changelog, `tail`, the demo's view, `replay`'s group
//! offsets) and the embedded [`mock_cluster`] of the demo.
//!
//! The `[kafka.settings]` passthrough is applied after the role's settings, so a deployment
//! can override anything here (security, timeouts, a mock cluster) — except what a reader
//! is: its group id, no commits and no end-of-partition events are applied last.

use rdkafka::ClientConfig;

use crate::config::{KafkaConfig, KafkaProfile};

/// `fetch.queue.backoff.ms`: librdkafka's default (1 s) stalls a partition for a second each
/// time its local queue passes `queued.min.messages`; 10 ms quadruples throughput here
/// (design.md, Brokers).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// Auto-commit interval: commits carry only offsets stored after delivery, so committing
/// often costs little and shortens replay after a crash (librdkafka's default is 5 s).
pub const AUTO_COMMIT_INTERVAL_MS: &str = "1000";
/// Key partitioner of the producer: Java clients hash keys with murmur2, so the same sensor
/// lands on the same partition whichever client produced it. (Outputs and the changelog name
/// their partition, so only keyed records — `produce`, the demo — are affected.)
pub const PARTITIONER: &str = "murmur2_random";
/// `statistics.interval.ms` of the group consumer: librdkafka's statistics carry each
/// partition's `consumer_lag` (the worker's lag metric and `/ready`'s per-partition lag; the
/// broker's watermarks are not used, design.md). Parsing them costs well under a millisecond
/// per interval; `[kafka.settings]` may override it.
pub const STATISTICS_INTERVAL_MS: &str = "5000";
/// `max.in.flight.requests.per.connection` of the output producer (librdkafka: 1,000,000,
/// capped at 5 by idempotence). With more than one request in flight, librdkafka's broker
/// thread busy-loops whenever a partition's requests in flight hold 5 or more outputs and
/// outputs older than `linger.ms` are queued behind them (`rd_kafka_toppar_producer_serve`
/// sets the next wake-up to *now*, then the idempotent cap, `5 - messages in flight`, forbids
/// sending): the slower the broker answers, the more CPU the worker burns beside it (55-63% of
/// the worker's samples under load, BENCHMARKS.md, "Worker throughput, second pass"). With
/// one, the next request waits in the connection's queue, which librdkafka counts as
/// backpressure: the thread sleeps until the answer and the outputs gather into a fuller
/// request. (A producer serving one partition alone, as a transactional one does, has no other
/// request to wait there and still loops: `super::held` keeps its outputs until it is
/// answered.) Measured beside the bare loop: CPU per reading 6.8 -> 3.6 µs and 165k -> 282k
/// readings/s (no-scoring, medians of 3). Order and the idempotent producer's guarantees are
/// unchanged; `[kafka.settings]` may override it.
pub const OUTPUT_MAX_IN_FLIGHT: &str = "1";
/// `compression.type` of the output producer (librdkafka: none). An output carries its
/// `ScoredReading` and four source headers, whose names and topic repeat from output to
/// output in a request, so lz4 shrinks requests for little CPU: the broker stores and serves
/// fewer bytes (beside the worker on 2 cores, the local broker's CPU per reading fell from
/// 1.03-1.15 to 0.52-0.57 µs) and librdkafka copies fewer (BENCHMARKS.md, "Compressed
/// outputs and fuller rounds"). Every Kafka client decompresses on its own; lz4 is in every
/// librdkafka build (zstd needs a library this build does not link). `[kafka.settings]` may
/// override it.
pub const OUTPUT_COMPRESSION: &str = "lz4";
/// `linger.ms` of a transactional output producer, whatever `kafka.profile`: its outputs
/// reach it a round at a time (`super::held`), and the partition thread sends a round when it
/// commits or when the next round is ready (`OutputProducer::send_now`, librdkafka's flush),
/// so this only bounds how long a round waits otherwise. With the latency profile's 1 ms, a
/// round that took longer than that to hand over (several thousand outputs, on a busy
/// machine 5-14 ms) went out in two requests, and librdkafka's broker thread spun on the
/// second until the first was answered ([`OUTPUT_MAX_IN_FLIGHT`]): 280,000 zero-timeout
/// polls for 600,000 readings (no-scoring), ~10,000 with this (BENCHMARKS.md, "The spinning
/// broker thread, again"). A `linger.ms` set in `[kafka.settings]` is honoured instead
/// ([`lingers_as_set`]): the producer then waits it out, and is not told.
pub const HELD_LINGER_MS: &str = "20";
/// Which side of the worker's traffic a [`profile`] setting is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The group consumer.
    Consumer,
    /// The producer.
    Producer,
}

/// `kafka.profile`'s settings for `side`, applied before `[kafka.settings]` (which override
/// them). Only waiting and batching: `message.timeout.ms` and the prefetch caps
/// (`queued.max.messages.kbytes`) are not a profile's business.
///
/// - `latency`: `fetch.wait.max.ms` 5 (librdkafka's 500 holds a fetch of a quiet partition
///   for half a second where the broker does not answer early, as librdkafka's mock cluster
///   does not: a reading arriving then waits out the rest of the wait; 5 rather than 10 took
///   the mock's p99 from ~22 to ~18 ms at 5,000 readings/s, for ~2% of a core more of an idle
///   Tansu per worker, BENCHMARKS.md "Latency: the fetch wait"), `linger.ms` 1 (a record waits
///   at most a millisecond for company; under load batches fill while earlier requests are in
///   flight anyway) and `socket.nagle.disable` (no 40 ms Nagle delay on small requests).
/// - `throughput`: `fetch.wait.max.ms` 100 and `fetch.min.bytes` 64 KiB (fewer, fuller
///   fetches), `linger.ms` 20 and `batch.num.messages` 100,000 bounded by `batch.size` 4 MiB
///   (fewer, fuller produce requests).
fn profile(c: &mut ClientConfig, side: Side, p: KafkaProfile) {
    let settings: &[(&str, &str)] = match (p, side) {
        (KafkaProfile::Latency, Side::Consumer) => &[("fetch.wait.max.ms", "5"), ("socket.nagle.disable", "true")],
        (KafkaProfile::Latency, Side::Producer) => &[("linger.ms", "1"), ("socket.nagle.disable", "true")],
        (KafkaProfile::Throughput, Side::Consumer) => &[("fetch.wait.max.ms", "100"), ("fetch.min.bytes", "65536")],
        (KafkaProfile::Throughput, Side::Producer) => &[("linger.ms", "20"), ("batch.num.messages", "100000"), ("batch.size", "4194304")],
    };
    for (key, value) in settings {
        c.set(*key, *value);
    }
}

/// The consumer's prefetch per assigned partition (`queued.max.messages.kbytes`, split
/// partition queues) is `memory_limit_mb` / this: 4 MiB at 512 MiB. librdkafka's default,
/// 64 MiB per partition, would be half the budget over four partitions.
pub const PREFETCH_BUDGET_SHARE: u64 = 128;
/// Bounds of that prefetch, in KiB: at least 1 MiB (a few fetches), at most librdkafka's
/// default.
pub const PREFETCH_KBYTES: (u64, u64) = (1 << 10, 64 << 10);
/// `queued.min.messages` (librdkafka: 100,000 per partition): the kbytes bound counts
/// payload bytes only, and each queued message costs a few hundred bytes of librdkafka's
/// own besides. 10,000 is still more than a second of input for a busy partition here.
pub const PREFETCH_MESSAGES: u64 = 10_000;
/// `queue.buffering.backpressure.threshold` of the output producer (librdkafka's default,
/// named for the zombie bound): librdkafka builds a produce request only while fewer than this
/// many built requests wait unsent on the broker connection. A request built but not yet
/// written when the process freezes is sent on waking, before librdkafka checks whether it
/// expired ([`zombie_fence`]); with 1, at most one such request (one output partition, at most
/// `batch.size` bytes) exists per broker connection.
pub const OUTPUT_UNSENT_REQUESTS: &str = "1";
/// Brokers for the demo's embedded mock cluster.
pub const MOCK_BROKERS: &str = "1";

/// What every role shares: the bootstrap servers, and no topic created as a side effect.
fn base(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap)
        // Topics are created on purpose, with the right partition count (and the changelog
        // compacted), by `admin`; a metadata request or a produce must never create one.
        .set("allow.auto.create.topics", "false");
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
    let heartbeat = k.heartbeat_ms();
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
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    profile(&mut c, Side::Consumer, k.profile);
    // Static membership (KIP-345): a restarted replica with the same id takes its partitions
    // back without waiting for its old session to expire, where the broker honours it.
    if !k.instance_id.is_empty() {
        c.set("group.instance.id", &k.instance_id);
    }
    passthrough(c, k)
}

/// The group consumer's prefetch bounded by the memory budget (see [`PREFETCH_BUDGET_SHARE`]
/// and [`PREFETCH_MESSAGES`]); a value from `[kafka.settings]` is kept.
pub fn bounded_prefetch(mut c: ClientConfig, memory_limit_mb: u64) -> ClientConfig {
    let kbytes = (memory_limit_mb.saturating_mul(1024) / PREFETCH_BUDGET_SHARE).clamp(PREFETCH_KBYTES.0, PREFETCH_KBYTES.1);
    for (key, value) in [("queued.max.messages.kbytes", kbytes), ("queued.min.messages", PREFETCH_MESSAGES)] {
        if c.get(key).is_none() {
            c.set(key, value.to_string());
        }
    }
    c
}

/// The producer: idempotent, so retries neither duplicate nor reorder within a partition
/// (the outputs' effectively-once argument and the changelog's marker-after-chunks order
/// rest on it).
pub fn producer(k: &KafkaConfig) -> ClientConfig {
    passthrough(idempotent(k), k)
}

/// The producer of the worker's outputs (scores, alerts, dead letters): [`producer`] with one
/// request in flight ([`OUTPUT_MAX_IN_FLIGHT`]), compressed ([`OUTPUT_COMPRESSION`]), whose
/// deliveries time out within a freeze that may cost the partitions ([`zombie_fence`]).
/// The changelog keeps librdkafka's default: a late snapshot is fenced by its epoch.
pub fn output_producer(k: &KafkaConfig) -> ClientConfig {
    passthrough(output_settings(k), k)
}

/// [`output_producer`]'s own settings, before the passthrough.
fn output_settings(k: &KafkaConfig) -> ClientConfig {
    let mut c = idempotent(k);
    c.set("max.in.flight.requests.per.connection", OUTPUT_MAX_IN_FLIGHT).set("compression.type", OUTPUT_COMPRESSION);
    zombie_fence(&mut c, k);
    c
}

/// Whether `[kafka.settings]` sets the producers' linger (`linger.ms` or its alias
/// `queue.buffering.max.ms`): a transactional output producer then waits it out as librdkafka
/// does, instead of [`HELD_LINGER_MS`] and being told when a round is complete.
pub fn lingers_as_set(k: &KafkaConfig) -> bool {
    ["linger.ms", "queue.buffering.max.ms"].iter().any(|key| k.settings.contains_key(*key))
}

/// The transactional id of input partition `partition`'s outputs: the same for every worker
/// of the group, so that each new owner's `init_transactions` fences the previous one
/// (`kafka.transactional_outputs`).
pub fn transactional_id(k: &KafkaConfig, partition: i32) -> String {
    format!("{}.{}.{partition}", k.group_id, k.input_topic)
}

/// [`output_producer`] for input partition `partition`'s outputs alone, in transactions
/// ([`transactional_id`]).
pub fn transactional_output_producer(k: &KafkaConfig, partition: i32) -> ClientConfig {
    let mut c = output_settings(k);
    c.set("linger.ms", HELD_LINGER_MS);
    let mut c = passthrough(c, k);
    c.set("transactional.id", transactional_id(k, partition));
    c
}

fn idempotent(k: &KafkaConfig) -> ClientConfig {
    let mut c = base(k);
    c.set("enable.idempotence", "true").set("partitioner", PARTITIONER);
    profile(&mut c, Side::Producer, k.profile);
    c
}

/// Zombie fencing: the output producer's `message.timeout.ms` is
/// [`KafkaConfig::delivery_timeout_ms`], below the shortest freeze that may cost the
/// partitions ([`KafkaConfig::max_delivery_timeout_ms`]; config validation rejects a
/// `[kafka.settings]` override above it). Every output a frozen worker had handed to
/// librdkafka is then older than its delivery timeout when librdkafka's threads wake, and
/// librdkafka's broker thread scans its queues for expired messages before it builds the next
/// produce request (`rd_kafka_toppar_producer_serve`): they fail with `MSG_TIMED_OUT` instead
/// of being written after the new owner answered the same readings. The partition thread then
/// gives them to the new owner, or re-reads them if the partition is still its own (task.rs).
///
/// What this cannot fence: a request already *built* when the process froze but not yet
/// written to the socket. On waking, the broker thread serves its socket
/// (`rd_kafka_transport_io_serve`, which sends queued requests without looking at their age)
/// before its timeout scan of built requests (`rd_kafka_broker_timeout_scan`), so that request
/// is written, and appended behind the new owner's outputs (README, "Zombies", has the
/// measured case). [`OUTPUT_UNSENT_REQUESTS`] bounds it to one request per broker connection.
fn zombie_fence(c: &mut ClientConfig, k: &KafkaConfig) {
    c.set("message.timeout.ms", k.delivery_timeout_ms().to_string()).set("queue.buffering.backpressure.threshold", OUTPUT_UNSENT_REQUESTS);
}

/// The admin client (topic creation, metadata).
pub fn admin(k: &KafkaConfig) -> ClientConfig {
    passthrough(base(k), k)
}

/// A reader: a consumer that only `assign`s partitions and reads them (output tails, the
/// changelog, `tail`, the demo's view) or reads and sets a group's offsets explicitly
/// (`replay`). librdkafka wants a `group` even then; a reader never joins it and never
/// commits on its own.
pub fn reader(k: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = passthrough(base(k), k);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        // End-of-partition events would read as errors to a reader that waits for records.
        .set("enable.partition.eof", "false")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    c
}

/// A client that starts librdkafka's embedded mock cluster (the demo; design.md, Brokers)
/// and keeps it alive while it lives; the other roles then use its bootstrap servers.
pub fn mock_cluster() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("test.mock.num.brokers", MOCK_BROKERS);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka() -> KafkaConfig {
        let mut k = KafkaConfig::default();
        k.settings.insert("linger.ms".into(), "50".into());
        k.settings.insert("enable.auto.commit".into(), "true".into());
        k
    }

    #[test]
    fn passthrough_settings_override_the_role_settings() {
        assert_eq!(producer(&kafka()).get("linger.ms"), Some("50"));
        assert_eq!(consumer(&kafka()).get("enable.auto.commit"), Some("true"));
    }

    #[test]
    fn the_profile_sets_waits_and_batches_and_settings_still_win() {
        let mut k = KafkaConfig::default();
        assert_eq!(k.profile, KafkaProfile::Latency);
        assert_eq!((consumer(&k).get("fetch.wait.max.ms"), producer(&k).get("linger.ms")), (Some("5"), Some("1")));
        k.profile = KafkaProfile::Throughput;
        assert_eq!((consumer(&k).get("fetch.wait.max.ms"), producer(&k).get("linger.ms")), (Some("100"), Some("20")));
        k.settings.insert("fetch.wait.max.ms".into(), "250".into());
        assert_eq!(consumer(&k).get("fetch.wait.max.ms"), Some("250"));
        for c in [consumer(&k), producer(&k)] {
            assert_eq!((c.get("message.timeout.ms"), c.get("queued.max.messages.kbytes")), (None, None));
        }
    }

    #[test]
    fn a_reader_never_commits_whatever_the_passthrough_says() {
        let r = reader(&kafka(), "g");
        assert_eq!((r.get("group.id"), r.get("enable.auto.commit")), (Some("g"), Some("false")));
    }

    #[test]
    fn an_instance_id_makes_the_consumer_a_static_member() {
        let mut k = KafkaConfig::default();
        assert_eq!(consumer(&k).get("group.instance.id"), None);
        k.instance_id = "onad-stream-0".into();
        assert_eq!(consumer(&k).get("group.instance.id"), Some("onad-stream-0"));
        assert_eq!(reader(&k, "g").get("group.instance.id"), None);
    }

    #[test]
    fn the_prefetch_is_bounded_by_the_memory_budget_unless_set() {
        let c = bounded_prefetch(consumer(&KafkaConfig::default()), 512);
        assert_eq!((c.get("queued.max.messages.kbytes"), c.get("queued.min.messages")), (Some("4096"), Some("10000")));
        assert_eq!(bounded_prefetch(consumer(&KafkaConfig::default()), 1).get("queued.max.messages.kbytes"), Some("1024"));
        let mut k = KafkaConfig::default();
        k.settings.insert("queued.max.messages.kbytes".into(), "65536".into());
        assert_eq!(bounded_prefetch(consumer(&k), 512).get("queued.max.messages.kbytes"), Some("65536"), "the passthrough wins");
    }

    #[test]
    fn no_role_creates_topics_as_a_side_effect() {
        let k = kafka();
        for c in [consumer(&k), producer(&k), admin(&k), reader(&k, "g")] {
            assert_eq!(c.get("allow.auto.create.topics"), Some("false"));
        }
    }

    #[test]
    fn only_the_output_producer_times_deliveries_out_within_three_quarters_of_the_session() {
        let k = KafkaConfig { session_timeout_ms: 6000, ..KafkaConfig::default() };
        assert_eq!(output_producer(&k).get("message.timeout.ms"), Some("4500"));
        assert_eq!(output_producer(&k).get("queue.buffering.backpressure.threshold"), Some("1"), "one unsent request at most");
        assert_eq!(producer(&k).get("message.timeout.ms"), None, "the changelog keeps librdkafka's default");
        assert_eq!(output_producer(&k).get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn the_output_producer_keeps_one_request_in_flight_unless_the_passthrough_says_otherwise() {
        let mut k = KafkaConfig::default();
        assert_eq!(output_producer(&k).get("max.in.flight.requests.per.connection"), Some("1"));
        assert_eq!(producer(&k).get("max.in.flight.requests.per.connection"), None, "the changelog producer is not the hot path");
        k.settings.insert("max.in.flight.requests.per.connection".into(), "5".into());
        assert_eq!(output_producer(&k).get("max.in.flight.requests.per.connection"), Some("5"));
    }

    #[test]
    fn outputs_are_compressed_unless_the_passthrough_says_otherwise() {
        let mut k = KafkaConfig::default();
        assert_eq!(output_producer(&k).get("compression.type"), Some("lz4"));
        assert_eq!(transactional_output_producer(&k, 0).get("compression.type"), Some("lz4"));
        assert_eq!(producer(&k).get("compression.type"), None, "the changelog producer keeps librdkafka's default");
        k.settings.insert("compression.type".into(), "none".into());
        assert_eq!(output_producer(&k).get("compression.type"), Some("none"));
    }

    #[test]
    fn a_transactional_output_producer_lingers_long_in_every_profile_unless_the_passthrough_says_otherwise() {
        let mut k = KafkaConfig::default();
        for profile in [KafkaProfile::Latency, KafkaProfile::Throughput] {
            k.profile = profile;
            assert_eq!(transactional_output_producer(&k, 3).get("linger.ms"), Some(HELD_LINGER_MS));
            assert_eq!(transactional_output_producer(&k, 3).get("transactional.id"), Some(transactional_id(&k, 3).as_str()));
        }
        k.profile = KafkaProfile::Latency;
        assert_eq!(output_producer(&k).get("linger.ms"), Some("1"), "the shared output producer keeps the profile's");
        k.settings.insert("linger.ms".into(), "7".into());
        assert_eq!(transactional_output_producer(&k, 3).get("linger.ms"), Some("7"));
    }
}
