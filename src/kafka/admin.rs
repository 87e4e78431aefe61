//! Topic administration: the worker's output topics must exist with at least the input
//! topic's partition count, because the outputs of input partition p go to partition p.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// How long metadata and topic creation may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A shared admin client.
pub type Admin = Arc<AdminClient<DefaultClientContext>>;

/// A topic problem that stops the worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The client could not be created or the broker did not answer.
    #[error("kafka admin: {0}")]
    Client(#[from] KafkaError),
    /// The input topic does not exist.
    #[error("input topic `{0}` does not exist; create it with `onad-stream topics create` (kafka.partitions sets its partition count)")]
    MissingInput(String),
    /// An output topic has fewer partitions than the input.
    #[error("output topic `{topic}` has {has} partitions but input topic `{input}` has {need}; outputs of input partition p go to partition p, so add partitions to `{topic}` (or delete it and let the worker recreate it)")]
    TooFewPartitions {
        /// Output topic.
        topic: String,
        /// Its partition count.
        has: usize,
        /// Input topic.
        input: String,
        /// The input's partition count.
        need: usize,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic `{topic}`: {reason}")]
    Create {
        /// Topic.
        topic: String,
        /// Broker's answer.
        reason: String,
    },
}

/// Partition count of `topic`, or `None` when it does not exist.
pub async fn partition_count(admin: &Admin, topic: &str) -> Result<Option<usize>, AdminError> {
    // Metadata is a blocking call; keep it off the reactor.
    // Ask for every topic, not this one: a metadata request naming a missing topic makes some
    // brokers (Tansu, Kafka with auto.create.topics.enable) create it with default settings.
    let a = admin.clone();
    let md = tokio::task::spawn_blocking(move || a.inner().fetch_metadata(None, ADMIN_TIMEOUT))
        .await
        .map_err(|e| AdminError::Create { topic: topic.to_string(), reason: format!("metadata task failed: {e}") })??;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(None);
    }
    Ok(Some(t.partitions().len()))
}

/// Create `topics` (name, partitions); an already existing topic is not an error.
pub async fn create(admin: &Admin, k: &KafkaConfig, topics: &[(&str, usize)]) -> Result<(), AdminError> {
    if topics.is_empty() {
        return Ok(());
    }
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, n)| NewTopic::new(name, *n as i32, TopicReplication::Fixed(k.replication_factor))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    for r in admin.create_topics(&new, &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Create { topic, reason: code.to_string() }),
        }
    }
    Ok(())
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
    let need = partition_count(&admin, &k.input_topic).await?.ok_or_else(|| AdminError::MissingInput(k.input_topic.clone()))?;
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

/// `onad-stream topics create`: the input topic with `kafka.partitions` partitions (kept as
/// it is when it already exists), then the output topics as the worker would create them.
pub async fn create_all(k: &KafkaConfig) -> Result<usize, AdminError> {
    let admin = client(k)?;
    if partition_count(&admin, &k.input_topic).await?.is_none() {
        create(&admin, k, &[(&k.input_topic, k.partitions as usize)]).await?;
    }
    ensure_output_topics(k).await
}
