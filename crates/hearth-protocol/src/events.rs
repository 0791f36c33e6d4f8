use serde::{Deserialize, Serialize};

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token or a stop sequence matched.
    Stop,
    /// `max_tokens` was reached, or the context window is full.
    Length,
    /// The caller cancelled the request (explicitly or by disconnecting).
    Cancelled,
}

impl FinishReason {
    /// The value OpenAI's `finish_reason` field uses.
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "stop",
        }
    }
}

/// Token accounting for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV was reused from an earlier request (prefix caching).
    pub cached_tokens: usize,
}

impl Usage {
    pub fn total_tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }
}

/// What a producer emits while it generates. A stream is zero or more `Text` events followed by
/// exactly one terminal event: `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GenerationEvent {
    /// New text. Never empty, never ends inside a UTF-8 character, never contains any part of a
    /// matched stop sequence.
    Text { text: String, completion_tokens: usize },
    /// The generation ended normally (or was cancelled).
    Finished { reason: FinishReason, usage: Usage },
    /// The generation could not continue; `message` is safe to show to the caller.
    Failed { message: String },
}

impl GenerationEvent {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, GenerationEvent::Text { .. })
    }
}
