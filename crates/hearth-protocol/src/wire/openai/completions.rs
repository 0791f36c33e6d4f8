//! OpenAI's legacy completions (`POST /v1/completions`): `text_completion` objects, whole and
//! as a stream. The request side is not here: a completion is a canonical request with a
//! [`crate::RawPrompt`], which the edge builds from its own fields.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::convert::usage_to_wire;
use super::stream::{error_frame, StreamHeader};
use super::Usage;
use crate::canonical::{CanonicalEvent, CanonicalResponse, StopReason, TokenUsage};
use crate::wire::{to_json, SseFrame};

const OBJECT: &str = "text_completion";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextCompletion {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<TextChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    /// Always `null`: log probabilities are refused at the edge.
    pub logprobs: Option<Value>,
    pub finish_reason: Option<String>,
}

/// The whole answer: `id`, `model` and `created` as the stream's chunks carry them.
pub fn completion_from_canonical(
    resp: &CanonicalResponse,
    id: &str,
    model: &str,
    created: i64,
) -> TextCompletion {
    let text = resp.text().unwrap_or_default();
    let mut completion = envelope(id, model, created, text, Some(resp.stop_reason));
    completion.usage = Some(usage_to_wire(&resp.usage));
    completion
}

fn envelope(
    id: &str,
    model: &str,
    created: i64,
    text: String,
    finish: Option<StopReason>,
) -> TextCompletion {
    TextCompletion {
        id: id.to_owned(),
        object: OBJECT.into(),
        created,
        model: model.to_owned(),
        choices: vec![TextChoice {
            index: 0,
            text,
            logprobs: None,
            finish_reason: finish.map(|r| r.as_openai().into()),
        }],
        usage: None,
    }
}

/// Writes canonical events as `text_completion` chunks: one per text delta, then one with the
/// finish reason, (with `include_usage`) one with no choices and the usage, then
/// `data: [DONE]`. An error ends the stream with OpenAI's error object and no `[DONE]`.
#[derive(Debug)]
pub struct CompletionStreamEncoder {
    header: StreamHeader,
    usage: Option<TokenUsage>,
}

impl CompletionStreamEncoder {
    pub fn new(header: StreamHeader) -> Self {
        Self { header, usage: None }
    }

    pub fn encode(&mut self, event: &CanonicalEvent) -> Vec<SseFrame> {
        match event {
            CanonicalEvent::TextDelta { text } => vec![self.chunk(text.clone(), None)],
            CanonicalEvent::Usage { usage } => {
                self.usage = Some(*usage);
                Vec::new()
            }
            CanonicalEvent::Finish { reason } => {
                let mut frames = vec![self.chunk(String::new(), Some(*reason))];
                if self.header.include_usage {
                    let mut last = self.envelope(String::new(), None);
                    last.choices.clear();
                    last.usage = Some(usage_to_wire(&self.usage.unwrap_or_default()));
                    frames.push(SseFrame::data(to_json(&last)));
                }
                frames.push(SseFrame::data("[DONE]".into()));
                frames
            }
            CanonicalEvent::Error { error } => vec![error_frame(error)],
            // A raw-prompt completion has no role chunk and no tool calls.
            CanonicalEvent::MessageStart { .. }
            | CanonicalEvent::ReasoningDelta { .. }
            | CanonicalEvent::ToolCallStart { .. }
            | CanonicalEvent::ToolCallDelta { .. } => Vec::new(),
        }
    }

    fn envelope(&self, text: String, finish: Option<StopReason>) -> TextCompletion {
        let h = &self.header;
        envelope(&h.id, &h.model, h.created, text, finish)
    }

    fn chunk(&self, text: String, finish: Option<StopReason>) -> SseFrame {
        SseFrame::data(to_json(&self.envelope(text, finish)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{ErrorKind, StreamError};

    fn header(include_usage: bool) -> StreamHeader {
        StreamHeader { id: "cmpl-1".into(), model: "m".into(), created: 7, include_usage }
    }

    fn json(frame: &SseFrame) -> Value {
        serde_json::from_str(&frame.data).unwrap()
    }

    #[test]
    fn a_stream_is_text_chunks_a_finish_chunk_usage_and_done() {
        let mut encoder = CompletionStreamEncoder::new(header(true));
        let usage = TokenUsage { input_tokens: 3, output_tokens: 2, cached_input_tokens: 1 };
        let events = [
            CanonicalEvent::MessageStart { model: "m".into() },
            CanonicalEvent::TextDelta { text: "Hi".into() },
            CanonicalEvent::Usage { usage },
            CanonicalEvent::Finish { reason: StopReason::Length },
        ];
        let frames: Vec<SseFrame> = events.iter().flat_map(|e| encoder.encode(e)).collect();
        assert_eq!(frames.len(), 4);
        let text = json(&frames[0]);
        assert_eq!(
            (text["object"].as_str(), text["choices"][0]["text"].as_str()),
            (Some(OBJECT), Some("Hi"))
        );
        assert_eq!(text["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(json(&frames[1])["choices"][0]["finish_reason"], "length");
        let last = json(&frames[2]);
        assert_eq!(last["choices"], serde_json::json!([]));
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        assert_eq!(frames[3].data, "[DONE]");
    }

    #[test]
    fn an_error_ends_the_stream_without_done() {
        let mut encoder = CompletionStreamEncoder::new(header(false));
        let error = StreamError::new(ErrorKind::Upstream, "boom");
        let frames = encoder.encode(&CanonicalEvent::Error { error });
        assert_eq!(frames.len(), 1);
        assert_eq!(json(&frames[0])["error"]["message"], "boom");
    }

    #[test]
    fn a_whole_answer_carries_text_reason_and_usage() {
        let resp = CanonicalResponse {
            reasoning: None,
            model: "route-model".into(),
            content: vec![crate::ContentBlock::Text { text: "Hello".into() }],
            stop_reason: StopReason::Stop,
            usage: TokenUsage { input_tokens: 4, output_tokens: 1, cached_input_tokens: 0 },
        };
        let whole = completion_from_canonical(&resp, "cmpl-1", "asked", 7);
        assert_eq!((whole.model.as_str(), whole.choices[0].text.as_str()), ("asked", "Hello"));
        assert_eq!(whole.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(whole.usage.unwrap().total_tokens, 5);
    }
}
