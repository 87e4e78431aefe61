//! What the user tools (`produce`, `tail`, `demo`) share: topic lookup, the reading sender
//! with delivery accounting, rate pacing and Ctrl-C. Their clients come from
//! [`crate::kafka::client`], like every other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::kafka::{admin, client};
use crate::proto::SensorReading;

/// How long a metadata request may take before the broker is called unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the producer may take to deliver what is still queued when a tool ends.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The partition count of `topic`, or an error that says how to create it.
pub fn partition_count(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i32> {
    let partitions = admin::topic_partitions(consumer.client(), topic, METADATA_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("cannot read metadata of topic `{topic}`: {e}"))?;
    match partitions {
        Some(p) => Ok(p.len() as i32),
        None => anyhow::bail!(
            "topic `{topic}` does not exist (create it with `onad-stream topics create`, or start the worker, which creates its topics)"
        ),
    }
}

/// Delivery accounting of a producer.
#[derive(Debug, Default)]
pub struct DeliveryCounts {
    /// Records acknowledged by the broker.
    pub delivered: AtomicU64,
    /// Records that failed for good.
    pub failed: AtomicU64,
    /// The first failure, for the error message.
    pub first_error: Mutex<Option<String>>,
}

/// Producer context that counts deliveries.
#[derive(Debug, Default, Clone)]
pub struct Counting(pub Arc<DeliveryCounts>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.0.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// Sends readings to one topic, keyed by sensor id, and counts what the broker acknowledged.
pub struct ReadingSender {
    /// The producer (polled on every send, so delivery callbacks run on this thread).
    producer: BaseProducer<Counting>,
    /// Target topic.
    topic: String,
    /// Delivery counters (shared with the context).
    counts: Arc<DeliveryCounts>,
    /// Reusable encode buffer.
    buf: Vec<u8>,
    /// Records handed to the producer.
    pub sent: u64,
}

impl ReadingSender {
    /// A sender to `topic` with the producer of `kafka`. Fails with a clear message when the
    /// topic does not exist.
    pub fn new(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        // A metadata-only client: the admin role's settings.
        let probe: BaseConsumer = client::admin(kafka).create()?;
        partition_count(&probe, topic)?;
        drop(probe);
        let counts = Arc::new(DeliveryCounts::default());
        let producer: BaseProducer<Counting> = client::producer(kafka).create_with_context(Counting(counts.clone()))?;
        Ok(Self { producer, topic: topic.to_string(), counts, buf: Vec::with_capacity(256), sent: 0 })
    }

    /// Queue one reading (key = its sensor id), waiting while the local queue is full.
    pub fn send(&mut self, reading: &SensorReading) -> anyhow::Result<()> {
        self.buf.clear();
        reading.encode(&mut self.buf)?;
        loop {
            let record = BaseRecord::to(&self.topic).key(reading.sensor_id.as_bytes()).payload(&self.buf);
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => anyhow::bail!("cannot produce to `{}`: {e}", self.topic),
            }
        }
        self.sent += 1;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Records acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.counts.delivered.load(Ordering::Relaxed)
    }

    /// Deliver what is queued (bounded by [`FLUSH_TIMEOUT`]); error if any record failed.
    pub fn finish(self) -> anyhow::Result<u64> {
        self.producer.flush(FLUSH_TIMEOUT).map_err(|e| anyhow::anyhow!("flushing to `{}`: {e}", self.topic))?;
        let failed = self.counts.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = self.counts.first_error.lock().ok().and_then(|f| f.clone()).unwrap_or_default();
            anyhow::bail!("{failed} of {} readings were not delivered to `{}` (first error: {first})", self.sent, self.topic);
        }
        Ok(self.delivered())
    }
}

/// Paces a loop at `rate` items per second (unlimited when `None`).
#[derive(Debug)]
pub struct Pacer {
    /// Target items per second.
    rate: Option<f64>,
    /// When the first item went.
    start: Instant,
}

impl Pacer {
    /// A pacer starting now.
    pub fn new(rate: Option<f64>) -> Self {
        Self { rate: rate.filter(|r| *r > 0.0), start: Instant::now() }
    }

    /// Sleep until item number `i` (0-based) is due. Sleeps only when at least a millisecond
    /// ahead, so high rates cost no syscall per item.
    pub fn wait_for(&self, i: u64) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
    }
}

/// A flag set by the first Ctrl-C (SIGINT) or SIGTERM, so a tool can stop cleanly and still
/// flush or print its summary.
pub fn stop_on_signal() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        let signalled = rt.block_on(async {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut term) = signal(SignalKind::terminate()) else { return false };
                tokio::select! {
                    r = tokio::signal::ctrl_c() => r.is_ok(),
                    _ = term.recv() => true,
                }
            }
            #[cfg(not(unix))]
            tokio::signal::ctrl_c().await.is_ok()
        });
        if signalled {
            f.store(true, Ordering::SeqCst);
        }
    });
    flag
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
