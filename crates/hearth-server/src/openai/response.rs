//! OpenAI's `text_completion` objects for `/v1/completions`, whole and as stream chunks. (Chat
//! completions go through the gateway and use the protocol crate's wire encoders.)

use hearth_protocol::Usage;
use serde_json::{json, Value};

/// `usage`, with the cached part of the prompt under `prompt_tokens_details`.
pub(crate) fn usage(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens(),
        "prompt_tokens_details": { "cached_tokens": usage.cached_tokens },
    })
}

/// What every response and chunk of one request shares.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    pub id: String,
    pub created: i64,
    pub model: String,
}

impl Header {
    pub(crate) fn new(id_prefix: &str, model: &str) -> Self {
        Self {
            id: format!("{id_prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: chrono::Utc::now().timestamp(),
            model: model.to_owned(),
        }
    }
}

/// Builds one request's response objects.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    pub header: Header,
}

impl Encoder {
    fn envelope(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut envelope = json!({
            "id": self.header.id,
            "object": "text_completion",
            "created": self.header.created,
            "model": self.header.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            envelope["usage"] = usage;
        }
        envelope
    }

    fn choice(text: &str, finish_reason: Option<&str>) -> Value {
        json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason })
    }

    /// The whole, non-streamed response.
    pub(crate) fn complete(&self, text: String, finish_reason: &str, used: &Usage) -> Value {
        self.envelope(vec![Self::choice(&text, Some(finish_reason))], Some(usage(used)))
    }

    pub(crate) fn text_chunk(&self, text: &str) -> Value {
        self.envelope(vec![Self::choice(text, None)], None)
    }

    pub(crate) fn finish_chunk(&self, finish_reason: &str) -> Value {
        self.envelope(vec![Self::choice("", Some(finish_reason))], None)
    }

    /// The last chunk when `stream_options.include_usage` is set: no choices, only usage.
    pub(crate) fn usage_chunk(&self, used: &Usage) -> Value {
        self.envelope(Vec::new(), Some(usage(used)))
    }
}
