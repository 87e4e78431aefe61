//! Configuration: a TOML file, overridden by environment variables, overridden by flags,
//! checked once into [`Config`].
//!
//! Layers, lowest first:
//! 1. built-in defaults (named constants below; ONAD's where they mirror ONAD);
//! 2. the TOML file given by `--config` / `ONAD_CONFIG` (optional);
//! 3. environment variables `ONAD__<SECTION>__<KEY>` (`ONAD__KAFKA__BOOTSTRAP=host:9092`,
//!    `ONAD__MODEL_TYPE=knn`), keys lower-cased, `__` separating levels;
//! 4. `--set section.key=value` flags (repeatable), and the dedicated flags of each command.
//!    The key is a TOML key, so a quoted part may hold dots:
//!    `--set 'kafka.settings."sasl.password"=…'`.
//!
//! librdkafka settings (`[kafka.settings]`) have dotted names, which `__` nesting cannot
//! spell, so below `ONAD__KAFKA__SETTINGS__` a single `_` stands for a dot:
//! `ONAD__KAFKA__SETTINGS__SASL_PASSWORD` sets `sasl.password` (no librdkafka property has an
//! underscore in its name). Any setting `x` may instead be given as `x_file`, a path whose
//! content (without the trailing newline) is the value — how Kubernetes mounts a Secret:
//! `ONAD__KAFKA__SETTINGS__SASL_PASSWORD_FILE=/run/secrets/kafka/password`. Secret settings
//! ([`is_secret_setting`]) are redacted from `Debug` output, so a logged config leaks nothing.
//!
//! Values from env and flags are parsed as TOML values (`10`, `0.5`, `true`, `[1, 2]`), falling
//! back to a plain string. Unknown keys and impossible values are errors that name the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::detect::{Params, PipelineFactory, PipelineSpec, StepSpec, Thresholds};

mod settings;
use settings::{env_key, key_parts, redact_override, resolve_setting_files};
pub use settings::{is_secret_setting, KafkaSettings, ENV_KAFKA_SETTINGS, FILE_SUFFIX, REDACTED};

/// ONAD's `AnomalyDetectionConfig.memory_limit_mb` default.
pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 1000;
/// ONAD's `AnomalyDetectionConfig.checkpoint_interval` default (readings per partition).
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 10_000;
/// Seconds between time-based snapshots of a partition.
pub const DEFAULT_CHECKPOINT_SECS: u64 = 30;
/// Snapshots kept per partition (for `replay --state rewind` and corruption fallback).
pub const DEFAULT_SNAPSHOT_HISTORY: usize = 4;
/// `state.full_snapshot_every` default: a full snapshot after this many deltas.
pub const DEFAULT_FULL_SNAPSHOT_EVERY: u32 = 16;
/// Session timeout: librdkafka's default is 45 s, which makes a group join wait ~23 s on the
/// development broker; 10 s keeps failover quick while tolerating GC-free pauses.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 10_000;
/// After a fatal Kafka error (a delivery that failed for good, a fatal idempotent-producer
/// error), how long the worker may spend draining before it exits non-zero anyway: long enough
/// for `/ready` to report the reason, short enough that the orchestrator restarts it promptly
/// (a drain against a paused broker can otherwise hang for `message.timeout.ms` and longer).
pub const DEFAULT_FATAL_EXIT_AFTER_MS: u64 = 10_000;
/// How long a partition whose outputs time out undelivered (a broker outage) keeps re-reading
/// them while waiting for the broker before that is fatal: librdkafka's own default delivery
/// timeout, the outage the worker rode out before its outputs' timeout became a zombie fence.
pub const DEFAULT_DELIVERY_RETRY_MS: u64 = 300_000;
/// Default `kafka.transaction_interval_ms`: how long an output transaction stays open at most
/// (Kafka Streams' `commit.interval.ms` under exactly-once is 100 ms too).
pub const DEFAULT_TRANSACTION_INTERVAL_MS: u64 = 100;
/// The output producer's `message.timeout.ms` as a share (numerator, denominator) of
/// `session_timeout_ms` (zombie fencing, [`KafkaConfig::delivery_timeout_ms`]): below the
/// bound of four fifths ([`KafkaConfig::max_delivery_timeout_ms`]) with a margin, and as long
/// as that allows, since a request that times out at a slow but live broker may still be
/// written after its partition started over.
pub const DELIVERY_TIMEOUT_SHARE_OF_SESSION: (u64, u64) = (3, 4);
/// librdkafka settings that set the output producer's delivery timeout.
const DELIVERY_TIMEOUT_SETTINGS: [&str; 2] = ["message.timeout.ms", "delivery.timeout.ms"];
/// Features a reading may carry (a reading with more goes to dead letters).
pub const DEFAULT_MAX_FEATURES: usize = 1024;
/// Longest sensor id accepted.
pub const DEFAULT_MAX_SENSOR_ID_BYTES: usize = 256;
/// Largest input record accepted, in bytes.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// ONAD's `ResilientAnomalyDetector.error_window`: readings whose outcomes a breaker weighs.
pub const DEFAULT_ERROR_WINDOW: u32 = 100;
/// ONAD's `error_threshold`: a breaker opens when more than 10% of its window failed.
pub const DEFAULT_ERROR_THRESHOLD: f64 = 0.1;
/// ONAD's `circuit_breaker_timeout` (300 s), here in event time (reading timestamps).
pub const DEFAULT_OPEN_TIMEOUT: &str = "5m";
/// The fallback detector of an open breaker (ONAD's "simple statistical" fallback).
pub const DEFAULT_FALLBACK: &str = "zscore";
/// Per-sensor alert cooldown: 0 keeps one alert per anomalous reading.
pub const DEFAULT_ALERT_COOLDOWN: &str = "0s";
/// `/ready` fails when the consumer was last polled longer ago than this (seconds). The
/// driver polls every 100 ms; a rebalance that restores state blocks the poll, so this
/// leaves room for a restore of a few large partitions.
pub const DEFAULT_READY_MAX_POLL_AGE_SECS: u64 = 30;
/// Seconds between evaluations of the operational alert rules.
pub const DEFAULT_MONITOR_INTERVAL_SECS: u64 = 10;
/// Seconds an ops alert stays quiet after firing (the seed's `alert_cooldown`, 5 minutes).
pub const DEFAULT_MONITOR_COOLDOWN_SECS: u64 = 300;
/// The seed's `slow_processing`: average processing time per record, ms (0.1 s).
pub const DEFAULT_SLOW_PROCESSING_MS: f64 = 100.0;
/// The seed's `high_error_rate`: dead letters per record consumed.
pub const DEFAULT_HIGH_ERROR_RATE: f64 = 0.05;
/// The seed's `high_anomaly_rate` (its usage example): anomalies per reading scored.
pub const DEFAULT_HIGH_ANOMALY_RATE: f64 = 0.15;
/// `low_anomaly_rate`: anomalies per reading scored. Not the seed's 0.001: with the calibrated
/// default `anomaly = 0.8` a healthy sensor flags about 1 reading in 10,000, so 0.001 would fire
/// all the time; 1e-5 (ten times below the promise) means the detector stopped flagging.
pub const DEFAULT_LOW_ANOMALY_RATE: f64 = 1e-5;
/// The seed's `high_memory`: resident set size, MB.
pub const DEFAULT_HIGH_MEMORY_MB: f64 = 1000.0;
/// The seed's `low_throughput`: records per second (only while there is a backlog).
pub const DEFAULT_LOW_THROUGHPUT: f64 = 10.0;
/// Consecutive evaluations the total lag must grow in for `lag_growing`.
pub const DEFAULT_LAG_GROWING_INTERVALS: u32 = 3;
/// Fewest records in an interval for the rate rules to judge it (fewer say nothing).
pub const DEFAULT_MONITOR_MIN_RECORDS: u64 = 100;
/// Timeout of one webhook POST.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 5_000;
/// Longest feature name accepted, in bytes.
pub const DEFAULT_MAX_FEATURE_NAME_BYTES: usize = 128;
/// Environment variable prefix of config overrides.
pub const ENV_PREFIX: &str = "ONAD__";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    #[error("config: {0}")]
    Parse(String),
    /// A `--set` flag or env var that is not `key=value` or names a non-table path.
    #[error("config override `{0}`: {1}")]
    Override(String, String),
    /// A value out of range.
    #[error("config: invalid `{key}`: {reason}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The model section does not describe a buildable pipeline.
    #[error("config: {0}")]
    Model(#[from] crate::detect::SpecError),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Detector name, as ONAD's `model_type`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Detector parameters, as ONAD's `model_params`.
    #[serde(default)]
    pub model_params: Params,
    /// Transforms before the detector, as ONAD's `preprocessing_steps`.
    #[serde(default)]
    pub preprocessing_steps: Vec<StepSpec>,
    /// Score bounds in [0, 1].
    #[serde(default)]
    pub thresholds: Thresholds,
    /// ONAD's `memory_limit_mb`: budget for all pipelines of this worker (all partitions
    /// together). Over it, least-recently-used sensors' pipelines are written to the state
    /// store and dropped from memory, and loaded back on their next reading
    /// (`partition::resident`).
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// ONAD's `checkpoint_interval`: readings per partition between snapshots.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// Learn each reading before scoring it (ONAD's snippet). Default: score, then learn.
    #[serde(default)]
    pub learn_first: bool,
    /// Learn readings flagged as anomalies too.
    #[serde(default = "yes")]
    pub learn_anomalies: bool,
    /// Base seed of every random choice.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Kafka connection and topics.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// State store.
    #[serde(default)]
    pub state: StateConfig,
    /// Logs, metrics, health.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Input validation limits.
    #[serde(default)]
    pub validation: ValidationConfig,
    /// Circuit breaker and fallback per sensor pipeline.
    #[serde(default)]
    pub resilience: ResilienceConfig,
    /// `AnomalyAlert` de-duplication.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Operational alerts about the worker itself.
    #[serde(default)]
    pub monitoring: MonitoringConfig,
}

fn default_model_type() -> String {
    PipelineSpec::default().model_type
}
fn default_memory_limit_mb() -> u64 {
    DEFAULT_MEMORY_LIMIT_MB
}
fn default_checkpoint_interval() -> u64 {
    DEFAULT_CHECKPOINT_INTERVAL
}
fn default_seed() -> u64 {
    PipelineSpec::default().seed
}
fn yes() -> bool {
    true
}

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Consumer group of the workers.
    pub group_id: String,
    /// Topic of `SensorReading`s (key = sensor id).
    pub input_topic: String,
    /// Topic of `ScoredReading`s.
    pub scores_topic: String,
    /// Topic of `AnomalyAlert`s.
    pub alerts_topic: String,
    /// Topic of `DeadLetter`s.
    pub dead_letter_topic: String,
    /// Compacted topic of state snapshots (handoff between replicas).
    pub changelog_topic: String,
    /// Consumer `session.timeout.ms`.
    pub session_timeout_ms: u64,
    /// Static group membership (KIP-345): the consumer's `group.instance.id`, stable across
    /// restarts of the same replica (the StatefulSet pod name), so that a restarted replica
    /// takes its partitions back without waiting for its old session to expire where the
    /// broker honours it. Empty: dynamic membership. Unique per live replica.
    pub instance_id: String,
    /// Milliseconds between a fatal Kafka error and the worker's non-zero exit at the latest.
    pub fatal_exit_after_ms: u64,
    /// Milliseconds a partition keeps re-reading outputs that timed out undelivered (a broker
    /// outage) before the failure is fatal.
    pub delivery_retry_ms: u64,
    /// Produce each input partition's outputs in Kafka transactions, with a transactional id
    /// of its own (`<group_id>.<input_topic>.<partition>`): a new owner's `init_transactions`
    /// fences the partition's previous owner at the broker, so a worker that lost its
    /// partitions while frozen cannot append a single output afterwards (README, "Zombies").
    pub transactional_outputs: bool,
    /// Milliseconds an output transaction stays open at most (it is committed sooner when
    /// many outputs wait or the partition's queue runs dry); offsets and snapshots cover
    /// committed outputs only.
    pub transaction_interval_ms: u64,
    /// Replication factor for topics the worker creates.
    pub replication_factor: i32,
    /// Partitions of the input topic when `topics create` makes it.
    pub partitions: i32,
    /// Encoding of input records: `protobuf`, `confluent` (Schema Registry framing), `json`
    /// (proto3 canonical JSON) or `auto` (detected per record).
    pub input_format: InputFormat,
    /// `latency` (default) or `throughput`: how the consumer and producer wait and batch
    /// (`kafka::client::profile` names each setting); `settings` still override them.
    pub profile: KafkaProfile,
    /// Extra librdkafka settings, passed through unchanged to consumer and producer
    /// (e.g. `"security.protocol" = "SASL_SSL"`). They override the worker's own. A key
    /// `x_file` is replaced by `x` with the named file's content when the config is loaded.
    pub settings: KafkaSettings,
}

impl KafkaConfig {
    /// The consumer's `heartbeat.interval.ms`: a fifth of the session timeout.
    pub fn heartbeat_ms(&self) -> u64 {
        (self.session_timeout_ms / 5).max(100)
    }

    /// The output producer's `message.timeout.ms`: a `[kafka.settings]` value if one is set
    /// (validated not to exceed [`Self::max_delivery_timeout_ms`]), else
    /// [`DELIVERY_TIMEOUT_SHARE_OF_SESSION`] of the session timeout. Unparsable values count
    /// as unbounded (librdkafka rejects them anyway).
    pub fn delivery_timeout_ms(&self) -> u64 {
        let set = DELIVERY_TIMEOUT_SETTINGS.iter().filter_map(|key| self.settings.get(*key)).next();
        match set {
            Some(v) => v.trim().parse().unwrap_or(u64::MAX),
            None => self.session_timeout_ms * DELIVERY_TIMEOUT_SHARE_OF_SESSION.0 / DELIVERY_TIMEOUT_SHARE_OF_SESSION.1,
        }
    }

    /// The longest delivery timeout that keeps zombie fencing closed: a member frozen for the
    /// session timeout less one heartbeat interval may already have lost its partitions, so
    /// every output queued before such a freeze must have expired when it wakes.
    pub fn max_delivery_timeout_ms(&self) -> u64 {
        self.session_timeout_ms.saturating_sub(self.heartbeat_ms()).saturating_sub(1)
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            group_id: "onad-stream".into(),
            input_topic: "sensor-readings".into(),
            scores_topic: "sensor-scores".into(),
            alerts_topic: "sensor-alerts".into(),
            dead_letter_topic: "sensor-dead-letters".into(),
            changelog_topic: "onad-stream-changelog".into(),
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            instance_id: String::new(),
            fatal_exit_after_ms: DEFAULT_FATAL_EXIT_AFTER_MS,
            delivery_retry_ms: DEFAULT_DELIVERY_RETRY_MS,
            transactional_outputs: true,
            transaction_interval_ms: DEFAULT_TRANSACTION_INTERVAL_MS,
            replication_factor: 1,
            partitions: 4,
            input_format: Default::default(),
            profile: KafkaProfile::default(),
            settings: KafkaSettings::default(),
        }
    }
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory of this worker's RocksDB database.
    pub path: PathBuf,
    /// Seconds between time-based snapshots of a partition.
    pub checkpoint_secs: u64,
    /// Snapshots kept per partition.
    pub snapshot_history: usize,
    /// Snapshots are incremental (only the sensors changed since the previous one); every
    /// this many a full one is written (1: every snapshot full).
    pub full_snapshot_every: u32,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            path: "./onad-state".into(),
            checkpoint_secs: DEFAULT_CHECKPOINT_SECS,
            snapshot_history: DEFAULT_SNAPSHOT_HISTORY,
            full_snapshot_every: DEFAULT_FULL_SNAPSHOT_EVERY,
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `RUST_LOG`-style filter.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Address of the HTTP endpoint (`/metrics`, `/ready` = `/health`, `/live`); empty
    /// disables it.
    pub metrics_addr: String,
    /// `/ready` answers 503 when the consumer's last poll is older than this, seconds.
    pub ready_max_poll_age_secs: u64,
    /// OTLP/HTTP base URL (`http://collector:4318`) for traces and metrics of `run`; empty:
    /// the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `..._TRACES_ENDPOINT` decide, and without
    /// them OpenTelemetry is off.
    pub otlp_endpoint: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: "text".into(),
            metrics_addr: String::new(),
            ready_max_poll_age_secs: DEFAULT_READY_MAX_POLL_AGE_SECS,
            otlp_endpoint: String::new(),
        }
    }
}

/// `[monitoring]`: the seed's `MonitoringService` thresholds, evaluated by `run` every
/// `interval_secs` over the counters of that interval. A threshold of 0 disables its rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// Evaluate the rules at all.
    pub enabled: bool,
    /// Seconds between evaluations.
    pub interval_secs: u64,
    /// Seconds a rule stays quiet after firing.
    pub cooldown_secs: u64,
    /// Average processing time per record above this (ms) fires `slow_processing`.
    pub slow_processing_ms: f64,
    /// Dead letters per consumed record above this fires `high_error_rate`.
    pub high_error_rate: f64,
    /// Anomalies per scored reading above this fires `high_anomaly_rate`.
    pub high_anomaly_rate: f64,
    /// Anomalies per scored reading below this fires `low_anomaly_rate`.
    pub low_anomaly_rate: f64,
    /// Resident memory above this (MB) fires `high_memory`.
    pub high_memory_mb: f64,
    /// Records per second below this while the consumer lags fires `low_throughput`.
    pub low_throughput: f64,
    /// Total consumer lag growing over this many evaluations in a row fires `lag_growing`.
    pub lag_growing_intervals: u32,
    /// Fewest records an interval needs before the rate rules judge it.
    pub min_records: u64,
    /// Topic the `OpsAlert` records go to (created with one partition); empty: not published.
    pub ops_alerts_topic: String,
    /// URL each firing is POSTed to as JSON with a Slack-compatible `text`; empty: none.
    pub webhook_url: String,
    /// Timeout of one webhook POST, ms (a failed POST is logged, not retried).
    pub webhook_timeout_ms: u64,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: DEFAULT_MONITOR_INTERVAL_SECS,
            cooldown_secs: DEFAULT_MONITOR_COOLDOWN_SECS,
            slow_processing_ms: DEFAULT_SLOW_PROCESSING_MS,
            high_error_rate: DEFAULT_HIGH_ERROR_RATE,
            high_anomaly_rate: DEFAULT_HIGH_ANOMALY_RATE,
            low_anomaly_rate: DEFAULT_LOW_ANOMALY_RATE,
            high_memory_mb: DEFAULT_HIGH_MEMORY_MB,
            low_throughput: DEFAULT_LOW_THROUGHPUT,
            lag_growing_intervals: DEFAULT_LAG_GROWING_INTERVALS,
            min_records: DEFAULT_MONITOR_MIN_RECORDS,
            ops_alerts_topic: String::new(),
            webhook_url: String::new(),
            webhook_timeout_ms: DEFAULT_WEBHOOK_TIMEOUT_MS,
        }
    }
}

/// `[validation]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Most features one reading may carry.
    pub max_features: usize,
    /// Longest sensor id, in bytes.
    pub max_sensor_id_bytes: usize,
    /// Largest input record, in bytes.
    pub max_record_bytes: usize,
    /// Longest feature name, in bytes.
    pub max_feature_name_bytes: usize,
    /// Admit Unicode letters and digits in sensor ids and feature names (besides ASCII
    /// letters, digits and `_-.:/@`).
    pub allow_unicode: bool,
    /// Smallest value a feature may take; unset = any finite value.
    pub min_value: Option<f64>,
    /// Largest value a feature may take; unset = any finite value.
    pub max_value: Option<f64>,
    /// How far (ms) a reading's timestamp may be ahead of the worker's clock; 0 = no bound.
    pub max_future_ms: i64,
    /// How far (ms) a reading's timestamp may be behind the worker's clock; 0 = no bound.
    pub max_past_ms: i64,
    /// `[validation.rate_limit]`: token buckets per reading `source`.
    pub rate_limit: RateLimitConfig,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            max_features: DEFAULT_MAX_FEATURES,
            max_sensor_id_bytes: DEFAULT_MAX_SENSOR_ID_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_feature_name_bytes: DEFAULT_MAX_FEATURE_NAME_BYTES,
            allow_unicode: false,
            min_value: None,
            max_value: None,
            max_future_ms: 0,
            max_past_ms: 0,
            rate_limit: Default::default(),
        }
    }
}

/// `[resilience]`: a circuit breaker per sensor pipeline (see `ops::breaker`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    /// Readings (per sensor) whose main-detector outcomes the breaker weighs.
    pub error_window: u32,
    /// Fraction of `error_window` that must fail, strictly exceeded, to open the breaker.
    pub error_threshold: f64,
    /// How long a breaker stays open before a trial reading, in event time (the readings'
    /// timestamps), e.g. `"30s"`, `"5m"`.
    pub open_timeout: String,
    /// Detector that scores while a breaker is open (a `model_type` with its default
    /// parameters, kept warm on every reading), or `"none"`: failed readings then go to
    /// dead letters of kind PROCESSING.
    pub fallback: String,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            error_window: DEFAULT_ERROR_WINDOW,
            error_threshold: DEFAULT_ERROR_THRESHOLD,
            open_timeout: DEFAULT_OPEN_TIMEOUT.into(),
            fallback: DEFAULT_FALLBACK.into(),
        }
    }
}

/// `[alerts]`: what becomes an `AnomalyAlert`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Per sensor, in event time: after an alert, anomalous readings within this long of it
    /// raise no further alert (their `ScoredReading`s still say `is_anomaly = true`).
    /// `"0s"` (the default): every anomalous reading raises one.
    pub cooldown: String,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { cooldown: DEFAULT_ALERT_COOLDOWN.into() }
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The values as given (after layering).
    pub raw: RawConfig,
    /// The pipeline factory built from the model section.
    pub pipeline: PipelineFactory,
    /// `state.checkpoint_secs` as a duration.
    pub checkpoint_every: Duration,
    /// `resilience.open_timeout`, checked.
    pub open_timeout: Duration,
    /// Builds fallback pipelines (`resilience.fallback`); `None` for `"none"`.
    pub fallback: Option<PipelineFactory>,
    /// `alerts.cooldown`, checked.
    pub alert_cooldown: Duration,
}

impl std::ops::Deref for Config {
    type Target = RawConfig;
    fn deref(&self) -> &RawConfig {
        &self.raw
    }
}

impl Config {
    /// Layer defaults, `file`, the process environment and `overrides` (`key=value`), then check.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env, overrides)
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_from(file: Option<&Path>, env: &[(String, String)], overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Parse(e.to_string()))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            if let Some(path) = name.strip_prefix(ENV_PREFIX) {
                set_parts(&mut table, env_key(path), value).map_err(|e| ConfigError::Override(name.clone(), e))?;
            }
        }
        for o in overrides {
            let (key, value) = o.split_once('=').ok_or_else(|| ConfigError::Override(o.clone(), "expected key=value".into()))?;
            let parts = key_parts(key.trim()).map_err(|e| ConfigError::Override(redact_override(o), e))?;
            set_parts(&mut table, parts, value.trim()).map_err(|e| ConfigError::Override(redact_override(o), e))?;
        }
        resolve_setting_files(&mut table)?;
        let raw: RawConfig = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        Self::check(raw)
    }

    /// Check a raw configuration.
    pub fn check(raw: RawConfig) -> Result<Self, ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid { key: key.into(), reason: reason.into() };
        if raw.checkpoint_interval == 0 {
            return Err(invalid("checkpoint_interval", "must be at least 1"));
        }
        if raw.memory_limit_mb == 0 {
            return Err(invalid("memory_limit_mb", "must be at least 1"));
        }
        let k = &raw.kafka;
        for (key, v) in [
            ("kafka.bootstrap", &k.bootstrap),
            ("kafka.group_id", &k.group_id),
            ("kafka.input_topic", &k.input_topic),
            ("kafka.scores_topic", &k.scores_topic),
            ("kafka.alerts_topic", &k.alerts_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
            ("kafka.changelog_topic", &k.changelog_topic),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        let outputs = [&k.scores_topic, &k.alerts_topic, &k.dead_letter_topic, &k.changelog_topic];
        if outputs.contains(&&k.input_topic) {
            return Err(invalid("kafka.input_topic", "must differ from every output topic"));
        }
        if k.session_timeout_ms < 1000 {
            return Err(invalid("kafka.session_timeout_ms", "must be at least 1000"));
        }
        if k.fatal_exit_after_ms < 1 {
            return Err(invalid("kafka.fatal_exit_after_ms", "must be at least 1"));
        }
        let (bound, chosen) = (k.max_delivery_timeout_ms(), k.delivery_timeout_ms());
        if chosen > bound {
            return Err(invalid(
                "kafka.settings.\"message.timeout.ms\"",
                &format!("is {chosen}, above {bound} (session_timeout_ms less one heartbeat interval): outputs queued before a freeze that costs the partitions would be written after their new owner answered them; leave it unset (the worker uses three quarters of the session timeout) or lower it"),
            ));
        }
        if k.instance_id.trim() != k.instance_id {
            return Err(invalid("kafka.instance_id", "must not start or end with white space"));
        }
        if k.partitions < 1 {
            return Err(invalid("kafka.partitions", "must be at least 1"));
        }
        if k.replication_factor < 1 {
            return Err(invalid("kafka.replication_factor", "must be at least 1"));
        }
        if raw.state.full_snapshot_every < 1 {
            return Err(invalid("state.full_snapshot_every", "must be at least 1"));
        }
        if raw.state.snapshot_history < 1 {
            return Err(invalid("state.snapshot_history", "must be at least 1"));
        }
        if raw.state.checkpoint_secs < 1 {
            return Err(invalid("state.checkpoint_secs", "must be at least 1"));
        }
        if !matches!(raw.telemetry.log_format.as_str(), "text" | "json") {
            return Err(invalid("telemetry.log_format", "must be `text` or `json`"));
        }
        if raw.telemetry.ready_max_poll_age_secs < 1 {
            return Err(invalid("telemetry.ready_max_poll_age_secs", "must be at least 1"));
        }
        let m = &raw.monitoring;
        if m.interval_secs < 1 {
            return Err(invalid("monitoring.interval_secs", "must be at least 1"));
        }
        if m.webhook_timeout_ms < 1 {
            return Err(invalid("monitoring.webhook_timeout_ms", "must be at least 1"));
        }
        for (key, v) in [
            ("monitoring.slow_processing_ms", m.slow_processing_ms),
            ("monitoring.high_error_rate", m.high_error_rate),
            ("monitoring.high_anomaly_rate", m.high_anomaly_rate),
            ("monitoring.low_anomaly_rate", m.low_anomaly_rate),
            ("monitoring.high_memory_mb", m.high_memory_mb),
            ("monitoring.low_throughput", m.low_throughput),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(key, "must be a finite number >= 0 (0 disables the rule)"));
            }
        }
        if outputs.contains(&&m.ops_alerts_topic) || m.ops_alerts_topic == k.input_topic {
            return Err(invalid("monitoring.ops_alerts_topic", "must differ from the input and output topics"));
        }
        let url = &m.webhook_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid("monitoring.webhook_url", "must be an http:// or https:// URL"));
        }
        let v = &raw.validation;
        if v.max_features < 1 || v.max_sensor_id_bytes < 1 || v.max_record_bytes < 16 {
            return Err(invalid("validation", "limits must be positive (max_record_bytes >= 16)"));
        }
        if v.max_feature_name_bytes < 1 {
            return Err(invalid("validation.max_feature_name_bytes", "must be at least 1"));
        }
        if v.max_future_ms < 0 || v.max_past_ms < 0 {
            return Err(invalid("validation.max_future_ms", "max_future_ms and max_past_ms must be >= 0 (0 = no bound)"));
        }
        if v.min_value.is_some_and(|x| x.is_nan()) || v.max_value.is_some_and(|x| x.is_nan()) {
            return Err(invalid("validation.min_value", "min_value and max_value must be numbers, not NaN"));
        }
        if let (Some(lo), Some(hi)) = (v.min_value, v.max_value) {
            if lo > hi {
                return Err(invalid("validation.min_value", "must be at most validation.max_value"));
            }
        }
        if v.rate_limit.max_sources < 1 {
            return Err(invalid("validation.rate_limit.max_sources", "must be at least 1"));
        }
        let spec = PipelineSpec {
            model_type: raw.model_type.clone(),
            model_params: raw.model_params.clone(),
            preprocessing_steps: raw.preprocessing_steps.clone(),
            thresholds: raw.thresholds,
            learn_first: raw.learn_first,
            learn_anomalies: raw.learn_anomalies,
            seed: raw.seed,
        };
        let pipeline = spec.check()?;
        let r = &raw.resilience;
        if r.error_window < 1 {
            return Err(invalid("resilience.error_window", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&r.error_threshold) {
            return Err(invalid("resilience.error_threshold", "must be in [0, 1)"));
        }
        let open_timeout = parse_duration("resilience.open_timeout", &r.open_timeout)?;
        // The fallback: the model's thresholds and learning order, default parameters, no
        // preprocessing (a z-score is already per-feature scale-free).
        let fallback = match r.fallback.as_str() {
            "none" => None,
            model => Some(
                PipelineSpec { model_type: model.into(), model_params: Params::new(), preprocessing_steps: Vec::new(), ..spec }
                    .check()
                    .map_err(|e| invalid("resilience.fallback", &format!("{e} (or \"none\")")))?,
            ),
        };
        let alert_cooldown = parse_duration("alerts.cooldown", &raw.alerts.cooldown)?;
        let checkpoint_every = Duration::from_secs(raw.state.checkpoint_secs);
        Ok(Self { raw, pipeline, checkpoint_every, open_timeout, fallback, alert_cooldown })
    }
}

/// A non-negative duration such as `"30s"`, `"5m"`, `"1h 30m"` or `"0"`, naming `key` when
/// it is not one.
fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { key: key.into(), reason };
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d: jiff::SignedDuration =
        text.trim().parse().map_err(|e| invalid(format!("`{text}` is not a duration like \"30s\" or \"5m\": {e}")))?;
    Duration::try_from(d).map_err(|_| invalid(format!("`{text}` is negative")))
}

/// Set the key `parts` in `table` to `value` parsed as a TOML value (or a string). A
/// librdkafka setting is always a string: `linger.ms=50` or a password `12345` stays text.
fn set_parts(table: &mut toml::Table, mut parts: Vec<String>, value: &str) -> Result<(), String> {
    let parsed = format!("v = {value}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v"));
    let is_setting = parts.len() == 3 && parts[0] == "kafka" && parts[1] == "settings";
    let parsed = match parsed {
        Some(v) if !is_setting || v.is_str() => v,
        _ => toml::Value::String(value.to_string()),
    };
    let last = parts.pop().filter(|s| !s.is_empty()).ok_or("empty key")?;
    let mut cur = table;
    for part in parts {
        let entry = cur.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    cur.insert(last, parsed);
    Ok(())
}

/// `kafka.input_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// A bare protobuf `SensorReading`.
    #[default]
    Protobuf,
    /// Confluent Schema Registry framed protobuf.
    Confluent,
    /// The proto3 canonical JSON mapping of `SensorReading`.
    Json,
    /// Detected per record (Confluent, JSON or plain protobuf).
    Auto,
}

/// `kafka.profile`: what librdkafka's waiting and batching is tuned for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaProfile {
    /// Short waits: a reading is fetched, scored and its outputs sent within milliseconds
    /// at moderate rates; under load librdkafka still batches what queued meanwhile. The
    /// default: the worker raises alerts, and measured throughput was not lower (BENCHMARKS.md).
    #[default]
    Latency,
    /// Longer linger and fetch waits: fuller batches and fewer requests, for backfills and
    /// replays where no one waits on a single reading.
    Throughput,
}

/// Buckets kept per partition when `rate_limit.max_sources` is not set.
pub const DEFAULT_MAX_SOURCES: usize = 10_000;

/// `[validation.rate_limit]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Readings a minute per source, on average; 0 turns rate limiting off.
    pub per_minute: u32,
    /// Readings a source may send at once above the average; 0 = `per_minute`.
    pub burst: u32,
    /// Sources whose buckets are kept per partition (least recently used evicted).
    pub max_sources: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { per_minute: 0, burst: 0, max_sources: DEFAULT_MAX_SOURCES }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml_text).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load_from(Some(&path), &env, &sets)
    }

    #[test]
    fn example_config_is_valid() {
        let c = Config::load_from(Some(Path::new("config/example.toml")), &[], &[]).unwrap();
        assert_eq!(c.kafka.input_topic, "sensor-readings");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = load("[kafka]\nbootstrapp = \"x\"\n", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("bootstrapp"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let c = load("[kafka]\ngroup_id = \"file\"\n", &[("ONAD__KAFKA__GROUP_ID", "env")], &[]).unwrap();
        assert_eq!(c.kafka.group_id, "env");
        let c = load("[kafka]\ngroup_id = \"file\"\n", &[("ONAD__KAFKA__GROUP_ID", "env")], &["kafka.group_id=flag"]).unwrap();
        assert_eq!(c.kafka.group_id, "flag");
        let c = load("", &[("ONAD__CHECKPOINT_INTERVAL", "7")], &[]).unwrap();
        assert_eq!(c.checkpoint_interval, 7);
    }

    #[test]
    fn impossible_values_name_the_key() {
        let err = load("[thresholds]\nhigh = 1.5\n", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("high"), "{err}");
        let err = load("checkpoint_interval = 0\n", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("checkpoint_interval"), "{err}");
        let err = load("model_type = \"nope\"\n", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let err = load("[model_params]\nwarm_upp = 3\n", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("warm_upp"), "{err}");
    }

    #[test]
    fn resilience_and_alert_cooldown_default_to_onad_and_one_alert_per_anomaly() {
        let c = load("", &[], &[]).unwrap();
        assert_eq!((c.resilience.error_window, c.resilience.error_threshold), (100, 0.1));
        assert_eq!(c.open_timeout, Duration::from_secs(300));
        assert_eq!(c.fallback.as_ref().map(|f| f.detector_name()), Some("zscore"));
        assert_eq!(c.alert_cooldown, Duration::ZERO);
        let c = load("[resilience]\nfallback = \"none\"\nopen_timeout = \"1m 30s\"\n[alerts]\ncooldown = \"5m\"\n", &[], &[]).unwrap();
        assert!(c.fallback.is_none());
        assert_eq!(c.open_timeout, Duration::from_secs(90));
        assert_eq!(c.alert_cooldown, Duration::from_secs(300));
    }

    #[test]
    fn impossible_resilience_values_name_the_key() {
        for (text, key) in [
            ("[resilience]\nerror_window = 0\n", "resilience.error_window"),
            ("[resilience]\nerror_threshold = 1.0\n", "resilience.error_threshold"),
            ("[resilience]\nopen_timeout = \"soon\"\n", "resilience.open_timeout"),
            ("[resilience]\nfallback = \"zscorre\"\n", "resilience.fallback"),
            ("[alerts]\ncooldown = \"-5m\"\n", "alerts.cooldown"),
            ("[alerts]\ncooldwn = \"5m\"\n", "cooldwn"),
        ] {
            let err = load(text, &[], &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn monitoring_keys_are_checked_and_name_the_key() {
        let c = load("[monitoring]\ncooldown_secs = 60\nwebhook_url = \"https://hooks.slack.com/x\"\n", &[], &[]).unwrap();
        assert_eq!((c.monitoring.cooldown_secs, c.monitoring.high_error_rate), (60, DEFAULT_HIGH_ERROR_RATE));
        for (bad, key) in [
            ("[monitoring]\nhigh_error_rate = -0.1\n", "monitoring.high_error_rate"),
            ("[monitoring]\nwebhook_url = \"hooks.slack.com\"\n", "monitoring.webhook_url"),
            ("[monitoring]\ninterval_secs = 0\n", "monitoring.interval_secs"),
            ("[monitoring]\nops_alerts_topic = \"sensor-scores\"\n", "monitoring.ops_alerts_topic"),
            ("[monitoring]\ncooldown = 5\n", "cooldown"),
        ] {
            let err = load(bad, &[], &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        let c = load("", &[], &["telemetry.otlp_endpoint=\"http://127.0.0.1:4318\""]).unwrap();
        assert_eq!(c.telemetry.otlp_endpoint, "http://127.0.0.1:4318");
    }

    #[test]
    fn model_and_step_params_from_the_file_env_and_flags_are_read_by_name() {
        let file = "model_type = \"knn\"\n[model_params]\nk = 5\n[[preprocessing_steps]]\ntype = \"pca\"\nparams = { n_components = 2 }\n";
        assert!(load(file, &[("ONAD__MODEL_PARAMS__WINDOW_SIZE", "50")], &["model_params.warm_up=7"]).is_ok());
        let err = load(file, &[], &["model_params.k=\"five\""]).unwrap_err().to_string();
        assert!(err.contains("knn: invalid `k`: invalid type: string \"five\""), "{err}");
        let err = load(&file.replace("n_components = 2", "n_components = 2, tol = \"small\""), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("pca: invalid `tol`"), "{err}");
        let err = load(&file.replace("type = \"pca\"", "type = \"pcaa\""), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("unknown preprocessing step `pcaa`"), "{err}");
    }

    #[test]
    fn librdkafka_settings_come_from_env_with_underscores_as_dots_and_from_quoted_set_keys() {
        let c = load(
            "",
            &[("ONAD__KAFKA__SETTINGS__SASL_PASSWORD", "12345"), ("ONAD__KAFKA__SETTINGS__SECURITY_PROTOCOL", "SASL_SSL")],
            &["kafka.settings.\"sasl.username\"=alice", "kafka.settings.\"linger.ms\"=50"],
        )
        .unwrap();
        let s = &c.kafka.settings;
        assert_eq!(s.get("sasl.password").map(String::as_str), Some("12345"));
        assert_eq!(s.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert_eq!(s.get("sasl.username").map(String::as_str), Some("alice"));
        assert_eq!(s.get("linger.ms").map(String::as_str), Some("50"));
    }

    #[test]
    fn a_file_setting_reads_the_secret_from_the_mounted_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "s3cr=t pw\n").unwrap();
        let path = secret.display().to_string();
        let c = load("", &[("ONAD__KAFKA__SETTINGS__SASL_PASSWORD_FILE", &path)], &[]).unwrap();
        assert_eq!(c.kafka.settings.get("sasl.password").map(String::as_str), Some("s3cr=t pw"));
        assert!(!c.kafka.settings.contains_key("sasl.password_file"));
        let c = load(&format!("[kafka.settings]\n\"sasl.password_file\" = {path:?}\n"), &[], &[]).unwrap();
        assert_eq!(c.kafka.settings.get("sasl.password").map(String::as_str), Some("s3cr=t pw"));
        let err = load("", &[("ONAD__KAFKA__SETTINGS__SASL_PASSWORD_FILE", "/nonexistent/pw")], &[]).unwrap_err().to_string();
        assert!(err.contains("sasl.password_file") && err.contains("/nonexistent/pw"), "{err}");
        let err = load("", &[("ONAD__KAFKA__SETTINGS__SASL_PASSWORD_FILE", &path)], &["kafka.settings.\"sasl.password\"=x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn secret_settings_are_redacted_from_debug_output() {
        let c = load("", &[("ONAD__KAFKA__SETTINGS__SASL_PASSWORD", "hunter2-secret")], &["kafka.settings.\"ssl.key.password\"=kp-secret"])
            .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2-secret") && !printed.contains("kp-secret"), "{printed}");
        assert!(printed.contains("sasl.password") && printed.contains(REDACTED), "{printed}");
        let err = load("", &[], &["kafka.settings.\"sasl.password\"=pw-in-error", "kafka.settings.x.y=1"]).unwrap_err().to_string();
        assert!(!err.contains("pw-in-error"), "{err}");
    }

    #[test]
    fn a_delivery_timeout_that_would_reopen_the_zombie_gap_is_rejected() {
        let c = load("[kafka]\nsession_timeout_ms = 6000\n", &[], &[]).unwrap();
        assert_eq!((c.kafka.delivery_timeout_ms(), c.kafka.max_delivery_timeout_ms()), (4500, 4799));
        let ok = load("[kafka]\nsession_timeout_ms = 6000\n[kafka.settings]\n\"message.timeout.ms\" = \"4000\"\n", &[], &[]).unwrap();
        assert_eq!(ok.kafka.delivery_timeout_ms(), 4000);
        for key in ["message.timeout.ms", "delivery.timeout.ms"] {
            let err = load(&format!("[kafka]\nsession_timeout_ms = 6000\n[kafka.settings]\n\"{key}\" = \"120000\"\n"), &[], &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("message.timeout.ms") && err.contains("120000") && err.contains("4799"), "{err}");
        }
    }
}
