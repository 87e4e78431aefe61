//! Topic administration, the one path that creates topics and reads topic metadata: the
//! worker's output topics must exist with at least the input topic's partition count
//! (because the outputs of input partition p go to partition p), and the changelog topic is
//! created compacted with the input's partition count.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

pub use crate::error::AdminError;

use crate::config::KafkaConfig;

/// How long metadata and topic creation may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A shared admin client.
pub type Admin = Arc<AdminClient<DefaultClientContext>>;

/// A topic to create.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec<'a> {
    /// Name.
    pub name: &'a str,
    /// Partition count.
    pub partitions: usize,
    /// `cleanup.policy=compact` (the changelog: the latest record per key is what counts).
    pub compacted: bool,
}

impl<'a> TopicSpec<'a> {
    /// A topic with the broker's default cleanup policy.
    pub fn new(name: &'a str, partitions: usize) -> Self {
        Self { name, partitions, compacted: false }
    }
}

/// The partition ids of `topic`, or `None` when it does not exist. Blocking.
///
/// Asks for every topic, not this one: a metadata request naming a missing topic makes some
/// brokers (Tansu, Kafka with `auto.create.topics.enable`) create it with default settings.
/// Every metadata request of the crate goes through here.
pub fn topic_partitions<C: ClientContext>(client: &Client<C>, topic: &str, timeout: Duration) -> Result<Option<Vec<i32>>, KafkaError> {
    let md = client.fetch_metadata(None, timeout)?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(None);
    }
    Ok(Some(t.partitions().iter().map(|p| p.id()).collect()))
}

/// Partition count of `topic`, or `None` when it does not exist.
pub async fn partition_count(admin: &Admin, topic: &str) -> Result<Option<usize>, AdminError> {
    // Metadata is a blocking call; keep it off the reactor.
    let (a, t) = (admin.clone(), topic.to_string());
    let ids = tokio::task::spawn_blocking(move || topic_partitions(a.inner(), &t, ADMIN_TIMEOUT))
        .await
        .map_err(|e| AdminError::Create { topic: topic.to_string(), reason: format!("metadata task failed: {e}") })??;
    Ok(ids.map(|p| p.len()))
}

/// Create `topics`; an already existing topic is not an error.
pub async fn create_topics(admin: &Admin, k: &KafkaConfig, topics: &[TopicSpec<'_>]) -> Result<(), AdminError> {
    if topics.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let n = NewTopic::new(t.name, t.partitions as i32, TopicReplication::Fixed(k.replication_factor));
            if t.compacted {
                n.set("cleanup.policy", "compact")
            } else {
                n
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    for r in admin.create_topics(&new, &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Create { topic, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// Create `topics` (name, partitions) with the broker's default cleanup policy; an already
/// existing topic is not an error.
pub async fn create(admin: &Admin, k: &KafkaConfig, topics: &[(&str, usize)]) -> Result<(), AdminError> {
    let specs: Vec<TopicSpec<'_>> = topics.iter().map(|(name, n)| TopicSpec::new(name, *n)).collect();
    create_topics(admin, k, &specs).await
}

/// A connected admin client.
pub fn client(k: &KafkaConfig) -> Result<Admin, AdminError> {
    Ok(Arc::new(super::client::admin(k).create()?))
}

/// The worker's start-up check: the input topic exists; each output topic exists with at
/// least its partition count (missing ones are created with exactly that count).
/// Returns the input's partition count.
pub async fn ensure_output_topics(k: &KafkaConfig) -> Result<usize, AdminError> {
    let admin = client(k)?;
    let need = match partition_count(&admin, &k.input_topic).await {
        Ok(n) => n,
        // librdkafka reports a refused TLS handshake as a bare transport failure (its log
        // line is not surfaced by the admin client): find out why, and name the setting.
        Err(e) => return Err(super::tls::explain(k, e).await),
    };
    let need = need.ok_or_else(|| AdminError::MissingInput(k.input_topic.clone()))?;
    let mut missing = Vec::new();
    for topic in [&k.scores_topic, &k.alerts_topic, &k.dead_letter_topic] {
        match partition_count(&admin, topic).await? {
            None => missing.push((topic.as_str(), need)),
            Some(has) if has < need => {
                return Err(AdminError::TooFewPartitions { topic: topic.clone(), has, input: k.input_topic.clone(), need })
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        tracing::info!(topics = ?missing, "creating missing output topics");
    }
    create(&admin, k, &missing).await?;
    Ok(need)
}

/// Create the compacted changelog `topic` with `partitions` partitions (one per input
/// partition) if it is missing.
pub async fn ensure_changelog(k: &KafkaConfig, topic: &str, partitions: usize) -> Result<(), AdminError> {
    let admin = client(k)?;
    create_topics(&admin, k, &[TopicSpec { name: topic, partitions, compacted: true }]).await
}

/// librdkafka's embedded mock cluster (the demo; design.md, Brokers) with its topics. It
/// cannot create topics through the admin API, so they are made with its own
/// `create_topic`. The cluster lives as long as this value.
pub struct MockCluster {
    /// The client that owns the cluster.
    _holder: BaseProducer,
    /// Its bootstrap servers.
    bootstrap: String,
}

impl MockCluster {
    /// Start a one-broker cluster holding `topics`, each with `partitions` partitions.
    pub fn start(topics: &[&str], partitions: i32) -> Result<Self, KafkaError> {
        let holder: BaseProducer = super::client::mock_cluster().create()?;
        // A borrowed handle: dropping it leaves the cluster to `holder`.
        let bootstrap = {
            let mock = holder
                .client()
                .mock_cluster()
                .ok_or_else(|| KafkaError::ClientCreation("librdkafka did not start a mock cluster".into()))?;
            for topic in topics {
                mock.create_topic(topic, partitions, 1)?;
            }
            mock.bootstrap_servers()
        };
        // SAFETY: the handle comes from a live client that owns a mock cluster (checked
        // non-null); the call only sets an integer on it.
        unsafe {
            let mc = rdkafka_sys::rd_kafka_handle_mock_cluster(holder.client().native_ptr());
            if !mc.is_null() {
                // The mock group coordinator otherwise waits 3 s before the first assignment.
                rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, 0);
            }
        }
        Ok(Self { _holder: holder, bootstrap })
    }

    /// Where clients find it.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

/// `onad-stream topics create`: the input topic with `kafka.partitions` partitions (kept as
/// it is when it already exists), then the output topics as the worker would create them.
pub async fn create_all(k: &KafkaConfig) -> Result<usize, AdminError> {
    let admin = client(k)?;
    let exists = match partition_count(&admin, &k.input_topic).await {
        Ok(n) => n.is_some(),
        Err(e) => return Err(super::tls::explain(k, e).await),
    };
    if !exists {
        create(&admin, k, &[(&k.input_topic, k.partitions as usize)]).await?;
    }
    ensure_output_topics(k).await
}
