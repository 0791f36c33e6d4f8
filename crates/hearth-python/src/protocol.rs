//! Hearth's worker protocol: how the daemon and a Python worker (`worker.py`) talk.
//!
//! One JSON object per line. The daemon writes [`Command`]s to the worker's stdin; the worker
//! writes [`Message`]s to the file descriptor that was its stdout when it started (it points its
//! own stdout at stderr, so stray output can never corrupt the protocol). Every message about a
//! prediction carries its `id`; a worker runs several at once when its predictor is async.
//!
//! The life of a worker: it loads the predictor and runs `setup()`, then sends `ready` (with the
//! input and output schemas Cog's SDK derived from the predictor's signature) or `setup_failed`.
//! Each `predict` is answered by `invalid` (the SDK refused the input) or `accepted`, then any
//! number of `log` and `output` messages, then exactly one of `done`, `failed` or `cancelled`.
//! `log` messages with no id come from setup or from the worker itself.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this daemon speaks; `ready` says the worker's.
pub const PROTOCOL_VERSION: u32 = 1;

/// Daemon → worker.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Run a prediction. File inputs are already local paths.
    Predict { id: String, input: Value },
    /// Stop a prediction: Cog's `CancelationException` in a sync predictor, task cancellation
    /// in an async one.
    Cancel { id: String },
    /// Finish and exit.
    Shutdown,
}

/// Worker → daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Ready {
        protocol: u32,
        schema: Schema,
        is_async: bool,
        setup_time: f64,
    },
    SetupFailed {
        error: String,
        #[serde(default)]
        traceback: String,
    },
    Log {
        id: Option<String>,
        source: String,
        data: String,
    },
    Invalid {
        id: String,
        error: String,
    },
    Accepted {
        id: String,
    },
    /// One item of an iterator output.
    Output {
        id: String,
        chunk: Value,
    },
    Done {
        id: String,
        /// `null` for an iterator output (its items came as `output` messages).
        output: Value,
        predict_time: f64,
    },
    Failed {
        id: String,
        error: String,
        #[serde(default)]
        traceback: String,
    },
    Cancelled {
        id: String,
    },
}

/// What Cog's SDK read off the predictor's signature, and the worker off its source: the
/// parts of the OpenAPI document `cog build` writes that depend on the predictor.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Schema {
    /// The OpenAPI `Input` component.
    pub input: Value,
    /// The OpenAPI `Output` component.
    pub output: Value,
    /// Further components: one enum per input with `choices`, named after the input.
    #[serde(default)]
    pub components: serde_json::Map<String, Value>,
    /// Whether the output is an iterator, so predictions can stream their items.
    pub streams: bool,
    /// Whether `@cog.streaming` marks the predictor (and its output is an iterator): Cog's
    /// server answers `Accept: text/event-stream` only then, and says so in `x-cog-streaming`.
    #[serde(default)]
    pub streaming: bool,
    /// The version of Cog's SDK in the environment, which the document's `info` names.
    #[serde(default)]
    pub cog_version: String,
}

/// How a secret input reads wherever a prediction's input is shown or stored.
pub const REDACTED: &str = "**********";

impl Schema {
    /// Names of the inputs that are files (`Path`/`File`: `format: uri`), which the daemon
    /// fetches before a prediction.
    pub fn file_inputs(&self) -> impl Iterator<Item = (&str, bool)> {
        let properties = self.input.get("properties").and_then(Value::as_object);
        properties.into_iter().flatten().filter_map(|(name, property)| {
            let is_uri = |p: &Value| p.get("format").and_then(Value::as_str) == Some("uri");
            if is_uri(property) {
                Some((name.as_str(), false))
            } else if property.get("items").is_some_and(is_uri) {
                Some((name.as_str(), true))
            } else {
                None
            }
        })
    }

    /// Names of the secret inputs, which are never logged.
    pub fn secret_inputs(&self) -> impl Iterator<Item = &str> {
        let properties = self.input.get("properties").and_then(Value::as_object);
        properties.into_iter().flatten().filter_map(|(name, property)| {
            (property.get("x-cog-secret") == Some(&Value::Bool(true))).then_some(name.as_str())
        })
    }

    /// `input` as it may be shown or stored: each secret input given replaced by
    /// [`REDACTED`], as Cog's `Secret` prints.
    pub fn redacted(&self, input: &Value) -> Value {
        let mut shown = input.clone();
        for secret in self.secret_inputs() {
            if let Some(value) = shown.get_mut(secret).filter(|v| !v.is_null()) {
                *value = Value::String(REDACTED.to_owned());
            }
        }
        shown
    }
}
