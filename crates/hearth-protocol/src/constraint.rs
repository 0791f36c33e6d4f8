//! What a generated text must be, enforced token by token by the engine (structured outputs:
//! OpenAI's `response_format`; later a forced tool call's arguments).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A grammar the output must match, whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConstraint {
    /// A JSON value valid against this JSON Schema. `name` and `strict` are the caller's, kept
    /// for an upstream provider that takes them (OpenAI's `json_schema`); the local engine
    /// always enforces the schema.
    JsonSchema {
        schema: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// Text matching this regular expression, entirely.
    Regex { pattern: String },
    /// Text in the language of this Lark grammar.
    Lark { grammar: String },
}

impl OutputConstraint {
    /// A JSON Schema constraint with no name of its own.
    pub fn schema(schema: Value) -> Self {
        OutputConstraint::JsonSchema { schema, name: None, strict: None }
    }

    /// The JSON Schema of a JSON constraint.
    pub fn json_schema(&self) -> Option<Value> {
        match self {
            OutputConstraint::JsonSchema { schema, .. } => Some(schema.clone()),
            OutputConstraint::JsonObject => Some(serde_json::json!({ "type": "object" })),
            OutputConstraint::Regex { .. } | OutputConstraint::Lark { .. } => None,
        }
    }
}
