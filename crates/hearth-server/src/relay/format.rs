//! The wire format a run's stream is written in. It is stored with the run (in the gateway's run
//! store, as JSON the gateway does not read), so that a caller who resumes, on this replica or
//! another sharing the store, gets the rest in the format its first connection used.

use hearth_protocol::wire::responses::{self, ResponseHeader};
use hearth_protocol::wire::{anthropic, openai, SseFrame};
use hearth_protocol::CanonicalEvent;
use serde::{Deserialize, Serialize};

/// Enough to rebuild a run's encoder from scratch. Encoders hold state (Anthropic's open block,
/// OpenAI's usage until the end), so a resume replays the run's earlier events into a fresh
/// encoder and drops what it writes for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub(crate) enum StreamFormat {
    /// OpenAI `chat.completion.chunk`s, ending with `[DONE]`.
    OpenAiChat(OpenAiChat),
    /// OpenAI `text_completion` chunks (`/v1/completions`), ending with `[DONE]`.
    OpenAiCompletion(OpenAiChat),
    /// Anthropic's `message_start` … `message_stop` events.
    Anthropic(AnthropicMessage),
    /// OpenAI's Responses API events, `response.created` … `response.completed`.
    Responses(ResponseHeader),
    /// The run API's own: each canonical event as JSON, its SSE event name the event's `type`.
    Run,
}

/// What every chunk (and the whole answer) of one OpenAI chat completion or completion shares.
/// Ids derive from the run id, so a chunk id in a client's log leads to the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpenAiChat {
    pub id: String,
    pub created: i64,
    /// The model id the caller asked for; the route serving it is in `x-hearth-route`.
    pub model: String,
    pub include_usage: bool,
}

impl OpenAiChat {
    pub(crate) fn new(run_id: &str, model: &str, include_usage: bool) -> Self {
        Self::with_prefix("chatcmpl", run_id, model, include_usage)
    }

    /// For `/v1/completions`, whose ids start `cmpl-`.
    pub(crate) fn completion(run_id: &str, model: &str, include_usage: bool) -> Self {
        Self::with_prefix("cmpl", run_id, model, include_usage)
    }

    /// The protocol encoders' view of it.
    pub(crate) fn header(&self) -> openai::StreamHeader {
        openai::StreamHeader {
            id: self.id.clone(),
            model: self.model.clone(),
            created: self.created,
            include_usage: self.include_usage,
        }
    }

    fn with_prefix(prefix: &str, run_id: &str, model: &str, include_usage: bool) -> Self {
        Self {
            id: format!("{prefix}-{}", run_suffix(run_id)),
            created: chrono::Utc::now().timestamp(),
            model: model.to_owned(),
            include_usage,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AnthropicMessage {
    pub id: String,
    pub model: String,
}

impl AnthropicMessage {
    pub(crate) fn new(run_id: &str, model: &str) -> Self {
        Self { id: format!("msg_{}", run_suffix(run_id)), model: model.to_owned() }
    }
}

impl StreamFormat {
    /// As stored with the run.
    pub(crate) fn to_stored(&self) -> String {
        // Plain data with string keys: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The stored format, or the run API's own for a run stored without one (or with one this
    /// version does not know).
    pub(crate) fn from_stored(stored: Option<&str>) -> Self {
        stored.and_then(|s| serde_json::from_str(s).ok()).unwrap_or(Self::Run)
    }

    pub(crate) fn encoder(&self) -> Encoder {
        match self {
            Self::OpenAiChat(c) => Encoder::OpenAiChat(openai::StreamEncoder::new(c.header())),
            Self::OpenAiCompletion(c) => {
                Encoder::OpenAiCompletion(openai::CompletionStreamEncoder::new(c.header()))
            }
            Self::Anthropic(m) => {
                Encoder::Anthropic(anthropic::StreamEncoder::new(m.id.as_str(), m.model.as_str()))
            }
            Self::Responses(header) => {
                Encoder::Responses(Box::new(responses::StreamEncoder::new(header.clone())))
            }
            Self::Run => Encoder::Run,
        }
    }
}

fn run_suffix(run_id: &str) -> &str {
    run_id.strip_prefix("run_").unwrap_or(run_id)
}

/// Canonical events → the SSE frames of one format.
pub(crate) enum Encoder {
    OpenAiChat(openai::StreamEncoder),
    OpenAiCompletion(openai::CompletionStreamEncoder),
    Anthropic(anthropic::StreamEncoder),
    /// Boxed: it holds the whole response object as it grows.
    Responses(Box<responses::StreamEncoder>),
    Run,
}

impl Encoder {
    pub(crate) fn encode(&mut self, event: &CanonicalEvent) -> Vec<SseFrame> {
        match self {
            Self::OpenAiChat(encoder) => encoder.encode(event),
            Self::OpenAiCompletion(encoder) => encoder.encode(event),
            Self::Anthropic(encoder) => encoder.encode(event),
            Self::Responses(encoder) => encoder.encode(event),
            Self::Run => vec![run_frame(event)],
        }
    }
}

fn run_frame(event: &CanonicalEvent) -> SseFrame {
    let name = match event {
        CanonicalEvent::MessageStart { .. } => "message_start",
        CanonicalEvent::TextDelta { .. } => "text_delta",
        CanonicalEvent::ReasoningDelta { .. } => "reasoning_delta",
        CanonicalEvent::ToolCallStart { .. } => "tool_call_start",
        CanonicalEvent::ToolCallDelta { .. } => "tool_call_delta",
        CanonicalEvent::Usage { .. } => "usage",
        CanonicalEvent::Finish { .. } => "finish",
        CanonicalEvent::Error { .. } => "error",
    };
    // Plain data with string keys: serializing cannot fail.
    SseFrame::named(name, serde_json::to_string(event).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::StopReason;

    #[test]
    fn formats_survive_being_stored() {
        let formats = [
            StreamFormat::OpenAiChat(OpenAiChat::new("run_a", "m", true)),
            StreamFormat::OpenAiCompletion(OpenAiChat::completion("run_a", "m", false)),
            StreamFormat::Anthropic(AnthropicMessage::new("run_a", "m")),
            StreamFormat::Responses(ResponseHeader {
                id: "resp_a".into(),
                created_at: 1,
                model: "m".into(),
                settings: serde_json::json!({"store": true}).as_object().cloned().unwrap(),
            }),
            StreamFormat::Run,
        ];
        for format in formats {
            assert_eq!(StreamFormat::from_stored(Some(&format.to_stored())), format);
        }
        assert_eq!(StreamFormat::from_stored(None), StreamFormat::Run);
        assert_eq!(StreamFormat::from_stored(Some("{\"format\":\"future\"}")), StreamFormat::Run);
    }

    #[test]
    fn run_frames_carry_the_canonical_event_named_by_its_type() {
        let frames = StreamFormat::Run
            .encoder()
            .encode(&CanonicalEvent::Finish { reason: StopReason::Length });
        assert_eq!(frames[0].event, Some("finish"));
        assert_eq!(frames[0].data, r#"{"type":"finish","reason":"length"}"#);
        assert_eq!(AnthropicMessage::new("run_abc", "m").id, "msg_abc");
        assert_eq!(OpenAiChat::new("run_abc", "m", false).id, "chatcmpl-abc");
    }
}
