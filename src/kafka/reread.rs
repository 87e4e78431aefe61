//! What a partition thread does with outputs that librdkafka gave up on unsent or
//! unacknowledged (`MSG_TIMED_OUT` after `message.timeout.ms`, or purged after a freeze):
//! wait for the broker, then start the partition over from its state store and committed
//! offset, exactly as if it had just been assigned to this worker.
//!
//! Why not produce them again: an output whose request reached a paused broker before it
//! timed out may still be written when the broker resumes (librdkafka cannot say which), and
//! a copy produced now would be a duplicate. Started over, the partition reads its output
//! topics' tails after everything in flight has settled ([`super::recovery`]): whatever the
//! broker did write is not repeated, and what it did not is answered again.
//!
//! The output producer's delivery timeout is short on purpose (zombie fencing,
//! [`super::client`]): after a freeze that may have cost the partitions, librdkafka drops what
//! was queued instead of writing it behind the new owner's back.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::Offset;

use super::task::Shared;
use crate::partition::Resume;

/// How long one reachability check waits for the broker's metadata answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between reachability checks.
const PROBE_PAUSE: Duration = Duration::from_millis(200);
/// How long the seek to the re-read offset may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// How [`wait_for_broker`] ended.
pub enum Waited {
    /// The broker answers: start over.
    Reachable,
    /// The partition is being revoked (or the worker stops): give it up as it is.
    Stopped,
    /// Undelivered for longer than `kafka.delivery_retry_ms`: a fatal error.
    GaveUp,
}

/// Wait until the broker answers a metadata request for the input topic, the partition is
/// revoked (`stop`), or `kafka.delivery_retry_ms` has passed since `since`.
pub fn wait_for_broker<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    shared: &Shared,
    stop: &std::sync::atomic::AtomicBool,
    since: Instant,
) -> Waited {
    loop {
        if stop.load(Ordering::Acquire) || shared.stop.load(Ordering::Acquire) {
            return Waited::Stopped;
        }
        if since.elapsed() > shared.delivery_retry {
            return Waited::GaveUp;
        }
        if consumer.fetch_metadata(Some(&shared.topic), PROBE_TIMEOUT).is_ok() {
            return Waited::Reachable;
        }
        std::thread::sleep(PROBE_PAUSE);
    }
}

/// Restore `partition` as an assignment would (its state store, its output topics' tails,
/// the group's committed offset after committing what was delivered) and seek its queue to
/// where that resume starts; returns the resume and the committed offset it builds on.
pub fn start_over<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    shared: &Shared,
    partition: i32,
) -> Result<(Resume, Option<i64>), rdkafka::error::KafkaError> {
    let topic = &shared.topic;
    // What was delivered before the failure is committed first, so that the re-read starts
    // right after it rather than at an older commit.
    super::offsets::commit_stored(consumer);
    let committed = super::offsets::committed(consumer, topic, &[partition]).get(&partition).copied().flatten();
    let resume = shared.hooks.on_assign(topic, partition, None, committed);
    let start = resume.start_at.or(committed).map_or(Offset::Beginning, Offset::Offset);
    // Records fetched before the seek are of an older fetch version: librdkafka drops them.
    consumer.seek(topic, partition, start, SEEK_TIMEOUT)?;
    tracing::info!(partition, ?committed, ?start, "partition started over after undelivered outputs");
    Ok((resume, committed))
}
