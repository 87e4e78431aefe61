//! Untyped model parameters as they come from config, and the errors of checking them.
//!
//! A configuration is checked once, in two steps, so the hot path never re-validates:
//! 1. serde reads `model_type` + `model_params` (and each step's `type` + `params`) into a
//!    tagged enum with one variant per model (`pipeline::ModelSpec`) or step
//!    (`transform::StepParamsSpec`), whose struct has the defaults and `deny_unknown_fields`:
//!    an unknown key or a value of the wrong type fails here, naming the key ([`read_tagged`]);
//! 2. the variant's `check` does every range check, in one place per model, and returns the
//!    model's checked parameters (`KnnSpec::check` -> `KnnParams`).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
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
    #[error("{model}: unknown parameter `{key}` ({known})")]
    UnknownParam {
        /// Model or step name.
        model: String,
        /// The parameter name given.
        key: String,
        /// The parameters the model takes ("expected one of `a`, `b`").
        known: String,
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

/// Read `params` as the tagged enum `T`: `tag = name` picks the variant, `content = params`
/// fills its struct (serde: `deny_unknown_fields`, defaults, types). An unknown `name` is
/// [`SpecError::UnknownName`] listing `known`; an unknown key or a value of the wrong type is
/// [`SpecError::UnknownParam`] / [`SpecError::InvalidParam`] naming the key.
pub(crate) fn read_tagged<T: DeserializeOwned>(
    (tag, what, known): (&'static str, &'static str, &[&str]),
    content: &'static str,
    name: &str,
    params: &Params,
) -> Result<T, SpecError> {
    // The tag first, so that serde picks the variant before it sees the content and reads the
    // content straight into the variant's struct (the path to an error stays known).
    let fields = [(tag, serde_json::Value::String(name.to_string())), (content, params_value(name, params)?)];
    let de = serde::de::value::MapDeserializer::<_, serde_json::Error>::new(fields.into_iter());
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == tag {
            return SpecError::UnknownName { what, name: name.to_string(), known: known.join(", ") };
        }
        let key = path.strip_prefix(content).map(|k| k.trim_start_matches('.')).filter(|k| !k.is_empty()).unwrap_or(content);
        param_error(name, key, e.into_inner().to_string())
    })
}

/// Read `params` as the struct `T` of the model or step `name` (one variant's content of
/// [`read_tagged`]; for tests of one model's parameters).
#[cfg(test)]
pub(crate) fn read_params<T: DeserializeOwned>(name: &str, params: &Params) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(params_value(name, params)?).map_err(|e| {
        let key = e.path().to_string();
        param_error(name, &key, e.into_inner().to_string())
    })
}

/// `params` as a `serde_json::Value`, the deserializer of an in-memory map. `ParamValue` is
/// untagged, so it converts one to one (a non-finite float becomes `null`, which no
/// parameter's type accepts).
fn params_value(name: &str, params: &Params) -> Result<serde_json::Value, SpecError> {
    serde_json::to_value(params).map_err(|e| SpecError::InvalidParam { model: name.to_string(), key: String::new(), reason: e.to_string() })
}

/// The error serde gave for `key` of `model`: serde words an unknown key "unknown field `k`,
/// expected one of ..." (its `de::Error::unknown_field`), the one case not about the value.
fn param_error(model: &str, key: &str, reason: String) -> SpecError {
    match reason.strip_prefix("unknown field ") {
        Some(rest) => SpecError::UnknownParam {
            model: model.to_string(),
            key: key.to_string(),
            known: rest.split_once(", ").map_or(rest, |(_, known)| known).to_string(),
        },
        None => SpecError::InvalidParam { model: model.to_string(), key: key.to_string(), reason },
    }
}

/// A closure building [`SpecError::InvalidParam`] for `model`, for range checks.
pub(crate) fn invalid(model: &'static str) -> impl Fn(&str, String) -> SpecError {
    move |key, reason| SpecError::InvalidParam { model: model.to_string(), key: key.to_string(), reason }
}

#[cfg(test)]
mod tests {
    use crate::detect::testutil::spec;
    use crate::detect::ParamValue as V;

    fn error(model: &str, key: &str, value: V) -> String {
        spec(model, &[(key, value)], &[]).check().unwrap_err().to_string()
    }

    #[test]
    fn an_unknown_parameter_is_an_error_naming_it_and_the_known_ones() {
        let err = error("knn", "kk", V::Int(3));
        assert_eq!(err, "knn: unknown parameter `kk` (expected one of `k`, `window_size`, `warm_up`)");
    }

    #[test]
    fn a_parameter_of_the_wrong_type_is_an_error_naming_the_key() {
        for (model, key, value) in [
            ("knn", "k", V::Str("five".into())),
            ("knn", "k", V::Float(5.5)),
            ("knn", "window_size", V::Int(-1)),
            ("zscore", "warm_up", V::Bool(true)),
            ("adaptive_svm", "nu", V::Float(f64::NAN)),
            ("adaptive_svm", "gamma_bounds", V::List(vec![V::Int(1), V::Int(2), V::Int(3)])),
            ("isolation_forest", "type", V::Str("bushy".into())),
            ("moving_median", "abs_diff", V::Int(1)),
        ] {
            let err = error(model, key, value);
            assert!(err.starts_with(&format!("{model}: invalid `{key}`: ")), "{model}.{key}: {err}");
        }
    }

    #[test]
    fn integers_are_accepted_where_a_float_is_expected() {
        let f = spec("adaptive_svm", &[("nu", V::Int(1)), ("gamma_bounds", V::List(vec![V::Int(1), V::Float(2.5)]))], &[]);
        assert!(f.check().is_ok());
    }

    #[test]
    fn an_unknown_model_or_step_lists_the_known_names() {
        let err = spec("knnn", &[], &[]).check().unwrap_err().to_string();
        assert!(err.starts_with("unknown model_type `knnn` (known: zscore, "), "{err}");
        let err = spec("knn", &[], &[("scaller", &[])]).check().unwrap_err().to_string();
        assert!(err.starts_with("unknown preprocessing step `scaller` (known: scaler, "), "{err}");
        let err = spec("knn", &[], &[("pca", &[("n_component", V::Int(2))])]).check().unwrap_err().to_string();
        assert!(err.starts_with("pca: unknown parameter `n_component`"), "{err}");
    }
}
