//! OpenAI's response objects, for both endpoints, whole and as stream chunks.

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

/// Which endpoint's object shapes to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    Chat,
    Completions,
}

/// Builds one request's response objects.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    pub surface: Surface,
    pub header: Header,
}

impl Encoder {
    fn envelope(&self, object: &'static str, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut envelope = json!({
            "id": self.header.id,
            "object": object,
            "created": self.header.created,
            "model": self.header.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            envelope["usage"] = usage;
        }
        envelope
    }

    fn chunk_object(&self) -> &'static str {
        match self.surface {
            Surface::Chat => "chat.completion.chunk",
            Surface::Completions => "text_completion",
        }
    }

    /// The whole, non-streamed response.
    pub(crate) fn complete(&self, text: String, finish_reason: &str, used: &Usage) -> Value {
        let choice = match self.surface {
            Surface::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
            Surface::Completions => {
                json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason })
            }
        };
        let object = match self.surface {
            Surface::Chat => "chat.completion",
            Surface::Completions => "text_completion",
        };
        self.envelope(object, vec![choice], Some(usage(used)))
    }

    fn chunk(&self, choice: Value) -> Value {
        self.envelope(self.chunk_object(), vec![choice], None)
    }

    /// The chunk that opens a chat stream (it names the role); completions have none.
    pub(crate) fn opening_chunk(&self) -> Option<Value> {
        (self.surface == Surface::Chat).then(|| {
            self.chunk(json!({
                "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null,
            }))
        })
    }

    pub(crate) fn text_chunk(&self, text: &str) -> Value {
        match self.surface {
            Surface::Chat => self.chunk(json!({
                "index": 0, "delta": { "content": text }, "logprobs": null, "finish_reason": null,
            })),
            Surface::Completions => self.chunk(
                json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": null }),
            ),
        }
    }

    pub(crate) fn finish_chunk(&self, finish_reason: &str) -> Value {
        match self.surface {
            Surface::Chat => self.chunk(json!({
                "index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason,
            })),
            Surface::Completions => self.chunk(
                json!({ "index": 0, "text": "", "logprobs": null, "finish_reason": finish_reason }),
            ),
        }
    }

    /// The last chunk when `stream_options.include_usage` is set: no choices, only usage.
    pub(crate) fn usage_chunk(&self, used: &Usage) -> Value {
        self.envelope(self.chunk_object(), Vec::new(), Some(usage(used)))
    }
}
