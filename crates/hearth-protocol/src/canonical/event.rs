//! The canonical stream event: what every producer (a provider adapter, the local engine) emits
//! and every entry-surface encoder consumes.
//!
//! A well-formed stream is: one `MessageStart`; any number of `ReasoningDelta`, `TextDelta`,
//! `ToolCallStart`, `ToolCallDelta` and `Usage` events; then exactly one terminal event, `Finish` or `Error`.
//! Each `Usage` is a cumulative snapshot that replaces the previous one, so a stream cut short
//! still tells what was consumed up to that point.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CanonicalEvent {
    /// The producer accepted the request. `model` is the model that answers (for an upstream
    /// route, the provider's model name).
    MessageStart {
        model: String,
    },
    TextDelta {
        text: String,
    },
    /// The model's reasoning before its answer (a local model's `<think>` text, an upstream's
    /// thinking or `reasoning_content`), shown apart from the answer.
    ReasoningDelta {
        text: String,
    },
    /// A tool call begins. `index` counts tool calls from 0 within this response.
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// A fragment of a tool call's JSON arguments; the fragments concatenate to the whole.
    ToolCallDelta {
        index: u32,
        arguments: String,
    },
    Usage {
        usage: TokenUsage,
    },
    Finish {
        reason: StopReason,
    },
    /// The stream failed; nothing follows. `message` is safe to show to the caller.
    Error {
        error: StreamError,
    },
}

impl CanonicalEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Finish { .. } | Self::Error { .. })
    }

    /// True for events that carry part of the answer (or end it). The router commits to a
    /// route at the first such event: before it, failing over is invisible to the caller.
    pub fn is_content(&self) -> bool {
        matches!(
            self,
            Self::TextDelta { .. }
                | Self::ReasoningDelta { .. }
                | Self::ToolCallStart { .. }
                | Self::ToolCallDelta { .. }
                | Self::Finish { .. }
        )
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Error { error: StreamError::new(kind, message) }
    }
}

/// Token counts. `input_tokens` includes `cached_input_tokens` (OpenAI's convention); adapters
/// for formats that count them apart (Anthropic) convert both ways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
}

impl TokenUsage {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Input tokens that were not read from a cache.
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens.saturating_sub(self.cached_input_tokens)
    }
}

/// Why a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A natural end or a stop sequence.
    Stop,
    /// The token limit was reached.
    Length,
    /// The model stopped to have its tool calls run.
    ToolCalls,
    /// The provider withheld or cut the content.
    ContentFilter,
}

impl StopReason {
    /// OpenAI's `finish_reason` value.
    pub fn as_openai(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
        }
    }

    /// OpenAI's `finish_reason`; unknown values read as a natural stop.
    pub fn from_openai(value: &str) -> Self {
        match value {
            "length" => Self::Length,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            _ => Self::Stop,
        }
    }

    /// Anthropic's `stop_reason` value.
    pub fn as_anthropic(self) -> &'static str {
        match self {
            Self::Stop => "end_turn",
            Self::Length => "max_tokens",
            Self::ToolCalls => "tool_use",
            Self::ContentFilter => "refusal",
        }
    }

    /// Anthropic's `stop_reason`: `end_turn`, `stop_sequence` and `pause_turn` all end a turn.
    pub fn from_anthropic(value: &str) -> Self {
        match value {
            "max_tokens" | "model_context_window_exceeded" => Self::Length,
            "tool_use" => Self::ToolCalls,
            "refusal" => Self::ContentFilter,
            _ => Self::Stop,
        }
    }

    /// Gemini's `finishReason`. Gemini has no tool-call reason: calls end with `STOP`.
    pub fn as_gemini(self) -> &'static str {
        match self {
            Self::Stop | Self::ToolCalls => "STOP",
            Self::Length => "MAX_TOKENS",
            Self::ContentFilter => "SAFETY",
        }
    }

    pub fn from_gemini(value: &str) -> Self {
        match value {
            "MAX_TOKENS" => Self::Length,
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
            | "IMAGE_SAFETY" => Self::ContentFilter,
            _ => Self::Stop,
        }
    }
}

/// Why a stream failed, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself was refused (a 4xx from the provider, or unsupported input).
    InvalidRequest,
    /// The provider failed or sent something unreadable.
    Upstream,
    /// The provider went silent past a timeout.
    Timeout,
    /// Every route is busy or rate-limited.
    Overloaded,
    /// The caller (or an operator) cancelled the run.
    Cancelled,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct StreamError {
    pub kind: ErrorKind,
    pub message: String,
    /// The request field at fault, in canonical names (`prompt`, `max_tokens`), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// A machine-readable reason callers act on (`context_length_exceeded`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl StreamError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), param: None, code: None }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_stop_reasons_map_to_canonical() {
        assert_eq!(StopReason::from_anthropic("end_turn"), StopReason::Stop);
        assert_eq!(StopReason::from_anthropic("stop_sequence"), StopReason::Stop);
        assert_eq!(StopReason::from_anthropic("max_tokens"), StopReason::Length);
        assert_eq!(StopReason::from_anthropic("tool_use"), StopReason::ToolCalls);
        for r in [StopReason::Stop, StopReason::Length, StopReason::ToolCalls] {
            assert_eq!(StopReason::from_anthropic(r.as_anthropic()), r);
            assert_eq!(StopReason::from_openai(r.as_openai()), r);
        }
    }

    #[test]
    fn events_serialize_with_a_type_tag() {
        let ev = CanonicalEvent::TextDelta { text: "hi".into() };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json, serde_json::json!({"type": "text_delta", "text": "hi"}));
    }

    #[test]
    fn usage_counts_cached_tokens_inside_input() {
        let u = TokenUsage { input_tokens: 10, output_tokens: 5, cached_input_tokens: 4 };
        assert_eq!(u.uncached_input_tokens(), 6);
        assert_eq!(u.total_tokens(), 15);
    }
}
