//! Whether a broker answers, for `/ready`: [`WorkerStats::broker_down_since_ms`].
//!
//! librdkafka's error callback reports `AllBrokersDown` / `BrokerTransportFailure` when
//! connections fail, but a broker that stops answering on an open connection (a paused
//! process, a network partition without resets) fails no connection for a long time. So a
//! probe thread asks the consumer's own client for metadata every [`PROBE_EVERY`]: an answer
//! within [`PROBE_TIMEOUT`] clears the flag, none sets it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;

use super::driver::Consumer;
use super::task::Shared;
use crate::telemetry::WorkerStats;

/// How often the probe asks.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long an answer may take before the broker counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Unix time now, ms.
fn now_ms() -> u64 {
    crate::telemetry::health::now_ms()
}

/// No broker answered (`why`): set the flag, unless already set (logged once per outage).
pub fn mark_down(stats: &WorkerStats, bootstrap: &str, why: &str) {
    if stats.broker_down_since_ms.compare_exchange(0, now_ms(), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
        tracing::warn!(bootstrap, cause = why, "no Kafka broker reachable; /ready answers 503 until one is");
    }
}

/// A broker answered: clear the flag.
pub fn mark_up(stats: &WorkerStats) {
    let since = stats.broker_down_since_ms.swap(0, Ordering::AcqRel);
    if since != 0 {
        tracing::info!(down_for_ms = now_ms().saturating_sub(since), "a Kafka broker is reachable again");
    }
}

/// Start the probe on `consumer`; it ends when the worker stops or the consumer is gone.
pub fn spawn(consumer: Weak<Consumer>, shared: Arc<Shared>, bootstrap: String) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("onad-probe".into()).spawn(move || {
        while !shared.stop.load(Ordering::Acquire) {
            let Some(c) = consumer.upgrade() else { return };
            let answer = super::admin::topic_partitions(c.client(), &shared.topic, PROBE_TIMEOUT);
            // Not held while waiting: the driver's drop of the consumer must close it.
            drop(c);
            match answer {
                Ok(_) => mark_up(&shared.stats),
                Err(e) => mark_down(&shared.stats, &bootstrap, &e.to_string()),
            }
            let next = Instant::now() + PROBE_EVERY;
            while Instant::now() < next && !shared.stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

/// Whether retrying can cure a start-up failure: the broker unreachable, slow or electing
/// leaders, a name not resolving yet. Not: a missing input topic, too few partitions, bad
/// settings, failed authentication, a refused topic creation.
pub fn retriable(e: &super::AdminError) -> bool {
    use rdkafka::error::KafkaError as K;
    use rdkafka::types::RDKafkaErrorCode as C;
    let super::AdminError::Client(k) = e else { return false };
    let code = match k {
        K::MetadataFetch(c) | K::AdminOp(c) => *c,
        _ => return false,
    };
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::Resolve
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::BrokerNotAvailable
            | C::NotController
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::TimedOutQueue
    )
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;

    use super::*;
    use crate::kafka::AdminError;

    #[test]
    fn only_what_retrying_can_cure_is_retried() {
        assert!(retriable(&AdminError::Client(KafkaError::MetadataFetch(C::BrokerTransportFailure))));
        assert!(retriable(&AdminError::Client(KafkaError::MetadataFetch(C::OperationTimedOut))));
        assert!(!retriable(&AdminError::Client(KafkaError::MetadataFetch(C::SaslAuthenticationFailed))));
        assert!(!retriable(&AdminError::Client(KafkaError::ClientCreation("bad setting".into()))));
        assert!(!retriable(&AdminError::MissingInput("in".into())));
    }

    #[test]
    fn an_outage_is_marked_once_and_cleared() {
        let stats = WorkerStats::default();
        mark_down(&stats, "k:1", "refused");
        let since = stats.broker_down_since_ms.load(Ordering::Relaxed);
        assert!(since > 0);
        mark_down(&stats, "k:1", "still refused");
        assert_eq!(stats.broker_down_since_ms.load(Ordering::Relaxed), since, "the outage keeps its start");
        mark_up(&stats);
        assert_eq!(stats.broker_down_since_ms.load(Ordering::Relaxed), 0);
    }
}
