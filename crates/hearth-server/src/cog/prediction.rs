//! The prediction object Cog returns and sends in webhooks and SSE `completed` events.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
}

impl Status {
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Canceled)
    }
}

/// What a prediction cost, in Replicate's metric names; times are seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Metrics {
    pub predict_time: f64,
    /// Token counts and time to first token: language models only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_token_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_token_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_first_token: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Prediction {
    pub id: String,
    /// The model as the caller named it, for Replicate's API (Cog's object has no model).
    #[serde(skip)]
    pub model: Option<String>,
    pub status: Status,
    pub input: Value,
    /// The output so far: for a streaming prediction a list with one item per chunk (Cog's
    /// iterator output: for a language model, one per engine text event), else the value.
    pub output: Option<Value>,
    pub logs: String,
    pub error: Option<String>,
    #[serde(serialize_with = "serialize_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_timestamp")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_timestamp")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

impl Prediction {
    pub(crate) fn new(id: String, input: Value) -> Self {
        Self {
            id,
            model: None,
            status: Status::Starting,
            input,
            output: None,
            logs: String::new(),
            error: None,
            created_at: Some(Utc::now()),
            started_at: None,
            completed_at: None,
            metrics: None,
        }
    }

    /// What is kept of a finished prediction whose request asked that nothing be
    /// (`x-hearth-collect-log: false`): its id, status, times and metrics; never its input,
    /// output, logs or error text (a predictor's error may quote its input).
    pub(crate) fn without_content(&self) -> Self {
        let error = self.error.as_ref().map(|_| {
            "the prediction failed (its details were not kept: x-hearth-collect-log: false)".into()
        });
        Self {
            input: Value::Object(Default::default()),
            output: None,
            logs: String::new(),
            error,
            ..self.clone()
        }
    }
}

/// RFC 3339 with microseconds, as Cog writes them.
fn serialize_timestamp<S: Serializer>(
    value: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(t) => serializer.serialize_str(&timestamp(*t)),
        None => serializer.serialize_none(),
    }
}

/// RFC 3339 with microseconds, as Cog writes its times.
pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
