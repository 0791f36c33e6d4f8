//! What a generated text must be, enforced token by token by the engine (structured outputs:
//! OpenAI's `response_format`; later a forced tool call's arguments).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A grammar the output must match, whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConstraint {
    /// A JSON value valid against this JSON Schema.
    JsonSchema { schema: Value },
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// Text matching this regular expression, entirely.
    Regex { pattern: String },
    /// Text in the language of this Lark grammar.
    Lark { grammar: String },
}

impl OutputConstraint {
    /// The JSON Schema of a JSON constraint.
    pub fn json_schema(&self) -> Option<Value> {
        match self {
            OutputConstraint::JsonSchema { schema } => Some(schema.clone()),
            OutputConstraint::JsonObject => Some(serde_json::json!({ "type": "object" })),
            OutputConstraint::Regex { .. } | OutputConstraint::Lark { .. } => None,
        }
    }
}
