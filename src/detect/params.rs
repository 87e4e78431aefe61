//! Untyped model parameters as they come from config, and the errors of checking them.
//!
//! Each model turns `Params` into its own checked parameter struct once (`check`), naming the
//! offending key on failure, so the hot path never re-validates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One parameter value from config (TOML/JSON), before it is checked by a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (e.g. `type = "adaptive"`).
    Str(String),
    /// A list (e.g. `gamma_bounds = [0.001, 100.0]`).
    List(Vec<ParamValue>),
}

/// Named parameters of one model or transform.
pub type Params = BTreeMap<String, ParamValue>;

/// A model specification that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The model or step name is not known.
    #[error("unknown {what} `{name}` (known: {known})")]
    UnknownName {
        /// "model_type" or "preprocessing step".
        what: &'static str,
        /// The name given.
        name: String,
        /// Comma-separated list of accepted names.
        known: String,
    },
    /// A parameter the model does not take.
    #[error("{model}: unknown parameter `{key}`")]
    UnknownParam {
        /// Model or step name.
        model: String,
        /// The parameter name given.
        key: String,
    },
    /// A parameter of the wrong type or out of range.
    #[error("{model}: invalid `{key}`: {reason}")]
    InvalidParam {
        /// Model or step name.
        model: String,
        /// The parameter name.
        key: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// Reads typed values out of `Params`, recording which keys were used so that leftovers can be
/// reported as unknown.
pub struct ParamReader<'a> {
    model: &'a str,
    params: &'a Params,
    used: Vec<&'a str>,
}

impl<'a> ParamReader<'a> {
    /// Start reading `params` for `model` (used in error messages).
    pub fn new(model: &'a str, params: &'a Params) -> Self {
        Self { model, params, used: Vec::new() }
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> SpecError {
        SpecError::InvalidParam { model: self.model.to_string(), key: key.to_string(), reason: reason.into() }
    }

    fn take(&mut self, key: &'a str) -> Option<&'a ParamValue> {
        self.used.push(key);
        self.params.get(key)
    }

    /// A float (integers are accepted) or `default`.
    pub fn f64(&mut self, key: &'a str, default: f64) -> Result<f64, SpecError> {
        match self.take(key) {
            None => Ok(default),
            Some(ParamValue::Float(v)) if v.is_finite() => Ok(*v),
            Some(ParamValue::Int(v)) => Ok(*v as f64),
            Some(other) => Err(self.invalid(key, format!("expected a finite number, got {other:?}"))),
        }
    }

    /// A non-negative integer or `default`.
    pub fn usize(&mut self, key: &'a str, default: usize) -> Result<usize, SpecError> {
        match self.take(key) {
            None => Ok(default),
            Some(ParamValue::Int(v)) if *v >= 0 => Ok(*v as usize),
            Some(other) => Err(self.invalid(key, format!("expected a non-negative integer, got {other:?}"))),
        }
    }

    /// A u64 (e.g. a seed) or `default`.
    pub fn u64(&mut self, key: &'a str, default: u64) -> Result<u64, SpecError> {
        self.usize(key, default as usize).map(|v| v as u64)
    }

    /// A boolean or `default`.
    pub fn bool(&mut self, key: &'a str, default: bool) -> Result<bool, SpecError> {
        match self.take(key) {
            None => Ok(default),
            Some(ParamValue::Bool(v)) => Ok(*v),
            Some(other) => Err(self.invalid(key, format!("expected true or false, got {other:?}"))),
        }
    }

    /// A string or `default`.
    pub fn str(&mut self, key: &'a str, default: &str) -> Result<String, SpecError> {
        match self.take(key) {
            None => Ok(default.to_string()),
            Some(ParamValue::Str(v)) => Ok(v.clone()),
            Some(other) => Err(self.invalid(key, format!("expected a string, got {other:?}"))),
        }
    }

    /// A pair of numbers `[a, b]` or `default`.
    pub fn pair(&mut self, key: &'a str, default: (f64, f64)) -> Result<(f64, f64), SpecError> {
        let num = |v: &ParamValue| match v {
            ParamValue::Float(f) if f.is_finite() => Some(*f),
            ParamValue::Int(i) => Some(*i as f64),
            _ => None,
        };
        match self.take(key) {
            None => Ok(default),
            Some(ParamValue::List(l)) if l.len() == 2 => match (num(&l[0]), num(&l[1])) {
                (Some(a), Some(b)) => Ok((a, b)),
                _ => Err(self.invalid(key, "expected two finite numbers")),
            },
            Some(other) => Err(self.invalid(key, format!("expected [low, high], got {other:?}"))),
        }
    }

    /// Build an `InvalidParam` error for `key` (for range checks done by the caller).
    pub fn error(&self, key: &str, reason: impl Into<String>) -> SpecError {
        self.invalid(key, reason)
    }

    /// Fail on any key that was never read.
    pub fn finish(self) -> Result<(), SpecError> {
        for key in self.params.keys() {
            if !self.used.iter().any(|u| u == key) {
                return Err(SpecError::UnknownParam { model: self.model.to_string(), key: key.clone() });
            }
        }
        Ok(())
    }
}
