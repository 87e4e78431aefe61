//! `[kafka.settings]` from every layer: librdkafka's dotted names spelled in env names, quoted
//! `--set` keys, `*_file` secrets read from mounted files, and redaction of secret values
//! wherever the config is printed (see the parent module's docs for the user-facing rules).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;

/// Below this (after [`super::ENV_PREFIX`]), env names map to librdkafka settings: `_` = `.`.
pub const ENV_KAFKA_SETTINGS: &str = "KAFKA__SETTINGS__";
/// Suffix of a setting whose value is read from the file it names.
pub const FILE_SUFFIX: &str = "_file";
/// Shown instead of a secret setting's value.
pub const REDACTED: &str = "<redacted>";

/// `[kafka.settings]`: librdkafka properties by name. A map that redacts secret values
/// ([`is_secret_setting`]) when debug-printed.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaSettings(pub BTreeMap<String, String>);

impl std::ops::Deref for KafkaSettings {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KafkaSettings {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a KafkaSettings {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, if is_secret_setting(k) { REDACTED } else { v.as_str() }))).finish()
    }
}

/// Whether a librdkafka setting holds a secret (passwords, private keys, OAuth client
/// secrets and configs, Kerberos keytabs' passwords): its value is never printed.
pub fn is_secret_setting(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "ssl.key.pem", "ssl_key", "sasl.oauthbearer.config"].iter().any(|s| k.contains(s))
}

/// The config path of an env name (after [`super::ENV_PREFIX`]), as one string per level.
/// `KAFKA__SETTINGS__SASL_PASSWORD_FILE` → `kafka`, `settings`, `sasl.password_file`.
pub(super) fn env_key(name: &str) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let settings = ENV_KAFKA_SETTINGS.to_ascii_lowercase();
    match lower.strip_prefix(&settings) {
        Some(rest) => {
            let (base, file) = match rest.strip_suffix(FILE_SUFFIX) {
                Some(base) => (base, FILE_SUFFIX),
                None => (rest, ""),
            };
            vec!["kafka".into(), "settings".into(), format!("{}{file}", base.replace('_', "."))]
        }
        None => lower.split("__").map(str::to_string).collect(),
    }
}

/// The levels of a `--set` key, read as a TOML key so quoted parts keep their dots
/// (`kafka.settings."sasl.password"`).
pub(super) fn key_parts(key: &str) -> Result<Vec<String>, String> {
    let table = format!("{key} = 0").parse::<toml::Table>().map_err(|_| format!("`{key}` is not a TOML key"))?;
    let mut parts = Vec::new();
    let mut cur = &table;
    loop {
        let mut entries = cur.iter();
        let (name, value) = entries.next().ok_or("empty key")?;
        parts.push(name.clone());
        match value {
            toml::Value::Table(t) => cur = t,
            _ => return Ok(parts),
        }
    }
}

/// A `--set` flag as it may appear in an error: the value of a secret setting hidden.
pub(super) fn redact_override(o: &str) -> String {
    match o.split_once('=') {
        Some((k, _)) if is_secret_setting(k) => format!("{k}={REDACTED}"),
        _ => o.to_string(),
    }
}

/// Replace every `[kafka.settings]` key `x_file` by `x` = the named file's content, without
/// its trailing newline (`echo pw > file` and Kubernetes Secrets alike). Giving both `x` and
/// `x_file` is an error: which one wins would be a guess.
pub(super) fn resolve_setting_files(table: &mut toml::Table) -> Result<(), ConfigError> {
    let Some(settings) =
        table.get_mut("kafka").and_then(|k| k.as_table_mut()).and_then(|k| k.get_mut("settings")).and_then(|s| s.as_table_mut())
    else {
        return Ok(());
    };
    let files: Vec<String> = settings.keys().filter(|k| k.ends_with(FILE_SUFFIX)).cloned().collect();
    for key in files {
        let invalid = |reason: String| ConfigError::Invalid { key: format!("kafka.settings.\"{key}\""), reason };
        let base = key.trim_end_matches(FILE_SUFFIX).to_string();
        if settings.contains_key(&base) {
            return Err(invalid(format!("`{base}` is given too; give the value or the file, not both")));
        }
        let path = match settings.remove(&key) {
            Some(toml::Value::String(p)) => p,
            _ => return Err(invalid("must be a file path (a string)".into())),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
        settings.insert(base, toml::Value::String(text.trim_end_matches(['\n', '\r']).to_string()));
    }
    Ok(())
}
