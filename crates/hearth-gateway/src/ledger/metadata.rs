//! Caller metadata: a small JSON object of scalar values that the ledger groups spend by.
//! Anything else is refused with an error that names the problem, never silently trimmed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const MAX_METADATA_ENTRIES: usize = 5;
/// Keys and string values are grouping labels, not payloads.
const MAX_KEY_LEN: usize = 64;
const MAX_STRING_LEN: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallerMetadata(BTreeMap<String, Value>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("metadata has {0} entries; at most {MAX_METADATA_ENTRIES} are allowed")]
    TooManyEntries(usize),
    #[error("metadata key `{0}` must be 1 to {MAX_KEY_LEN} characters")]
    BadKey(String),
    #[error("metadata `{key}` must be a string, number or boolean, got {found}")]
    BadValue { key: String, found: &'static str },
    #[error("metadata `{0}` is longer than {MAX_STRING_LEN} characters")]
    ValueTooLong(String),
}

impl CallerMetadata {
    /// Validates `value`: an object of at most five string, number or boolean entries.
    pub fn from_json(value: &Value) -> Result<Self, MetadataError> {
        let object = value.as_object().ok_or(MetadataError::NotAnObject(kind(value)))?;
        if object.len() > MAX_METADATA_ENTRIES {
            return Err(MetadataError::TooManyEntries(object.len()));
        }
        let mut entries = BTreeMap::new();
        for (key, value) in object {
            if key.is_empty() || key.chars().count() > MAX_KEY_LEN {
                return Err(MetadataError::BadKey(key.clone()));
            }
            match value {
                Value::String(s) if s.chars().count() > MAX_STRING_LEN => {
                    return Err(MetadataError::ValueTooLong(key.clone()));
                }
                Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
                other => {
                    return Err(MetadataError::BadValue { key: key.clone(), found: kind(other) })
                }
            }
            entries.insert(key.clone(), value.clone());
        }
        Ok(Self(entries))
    }

    /// Parses and validates a JSON text (e.g. a request header's value).
    pub fn parse(text: &str) -> Result<Self, MetadataError> {
        let value: Value =
            serde_json::from_str(text).map_err(|_| MetadataError::NotAnObject("invalid JSON"))?;
        Self::from_json(&value)
    }

    /// These entries with `over`'s on top (an API key's metadata over the caller's), still at
    /// most [`MAX_METADATA_ENTRIES`].
    pub fn overlaid(mut self, over: &CallerMetadata) -> Result<Self, MetadataError> {
        self.0.extend(over.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        if self.0.len() > MAX_METADATA_ENTRIES {
            return Err(MetadataError::TooManyEntries(self.0.len()));
        }
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Entries with their values as grouping text: strings as they are, numbers and booleans
    /// in their JSON form.
    pub fn labels(&self) -> impl Iterator<Item = (&str, String)> {
        self.0.iter().map(|(k, v)| {
            let label = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.as_str(), label)
        })
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_are_accepted_and_labelled() {
        let m = CallerMetadata::from_json(&json!({"team": "a", "n": 3, "beta": true})).unwrap();
        let labels: Vec<_> = m.labels().collect();
        assert_eq!(labels, vec![("beta", "true".into()), ("n", "3".into()), ("team", "a".into())]);
    }

    #[test]
    fn every_problem_is_named() {
        let six = json!({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1});
        assert_eq!(CallerMetadata::from_json(&six), Err(MetadataError::TooManyEntries(6)));
        assert_eq!(
            CallerMetadata::from_json(&json!([1])),
            Err(MetadataError::NotAnObject("an array"))
        );
        let nested = CallerMetadata::from_json(&json!({"x": {"y": 1}})).unwrap_err();
        assert_eq!(
            nested.to_string(),
            "metadata `x` must be a string, number or boolean, got an object"
        );
        assert!(matches!(
            CallerMetadata::from_json(&json!({"x": null})),
            Err(MetadataError::BadValue { .. })
        ));
        assert!(matches!(
            CallerMetadata::from_json(&json!({"": 1})),
            Err(MetadataError::BadKey(_))
        ));
        let long = json!({"x": "y".repeat(300)});
        assert_eq!(CallerMetadata::from_json(&long), Err(MetadataError::ValueTooLong("x".into())));
        assert_eq!(CallerMetadata::parse("{"), Err(MetadataError::NotAnObject("invalid JSON")));
    }
}
