//! OpenAI `chat.completion.chunk` streams ↔ canonical events.

use std::collections::BTreeSet;

use serde_json::Value;

use super::convert::{usage_from_wire, usage_to_wire};
use super::{
    ChatCompletion, ChatCompletionChunk, ChunkChoice, Delta, ErrorBody, ErrorDetail, FunctionChunk,
    ToolCallChunk,
};
use crate::canonical::{CanonicalEvent, ErrorKind, StopReason, StreamError, TokenUsage};
use crate::wire::{to_json, DecodeError, SseFrame};

const FORMAT: &str = "OpenAI";

/// Reads an OpenAI-style stream. `finish_reason` and the usage chunk arrive separately (usage
/// last, after `finish_reason`), so both are held and emitted together at `[DONE]`.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    tools: BTreeSet<u32>,
    finish: Option<StopReason>,
    usage: Option<TokenUsage>,
    done: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one SSE event's `data`.
    pub fn push(&mut self, data: &str) -> Result<Vec<CanonicalEvent>, DecodeError> {
        let data = data.trim();
        if self.done || data.is_empty() {
            return Ok(Vec::new());
        }
        if data == "[DONE]" {
            return self.end();
        }
        // Text inside a string has its quotes escaped, so an unescaped `"error"` is a key or the
        // bare string value "error"; chunks without one cannot carry an in-band error and are
        // parsed straight into the typed chunk (a `Value` tree first cost an allocation per
        // field on every chunk). The rare rest takes the general path, which decides exactly.
        let chunk: ChatCompletionChunk = if data.contains("\"error\"") {
            let value: Value = serde_json::from_str(data).map_err(malformed)?;
            if let Some(error) = value.get("error") {
                self.done = true;
                return Ok(vec![in_band_error(error)]);
            }
            serde_json::from_value(value).map_err(malformed)?
        } else {
            serde_json::from_str(data).map_err(malformed)?
        };
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(CanonicalEvent::MessageStart { model: chunk.model.clone() });
        }
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage_from_wire(usage));
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            self.push_choice(choice, &mut out)?;
        }
        Ok(out)
    }

    fn push_choice(
        &mut self,
        choice: ChunkChoice,
        out: &mut Vec<CanonicalEvent>,
    ) -> Result<(), DecodeError> {
        if let Some(text) = choice.delta.reasoning_content.filter(|t| !t.is_empty()) {
            out.push(CanonicalEvent::ReasoningDelta { text });
        }
        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
            out.push(CanonicalEvent::TextDelta { text });
        }
        for call in choice.delta.tool_calls {
            self.push_tool_call(call, out)?;
        }
        if let Some(reason) = choice.finish_reason {
            self.finish = Some(StopReason::from_openai(&reason));
        }
        Ok(())
    }

    fn push_tool_call(
        &mut self,
        call: ToolCallChunk,
        out: &mut Vec<CanonicalEvent>,
    ) -> Result<(), DecodeError> {
        let index = call.index;
        let function = call.function.unwrap_or_default();
        if self.tools.insert(index) {
            let name = function.name.filter(|n| !n.is_empty()).ok_or_else(|| {
                malformed(format!("tool call {index} starts without a function name"))
            })?;
            // Some OpenAI-compatible servers omit the id; callers still need one to answer.
            let id = call.id.unwrap_or_else(|| format!("call_{index}"));
            out.push(CanonicalEvent::ToolCallStart { index, id, name });
        }
        if let Some(arguments) = function.arguments.filter(|a| !a.is_empty()) {
            out.push(CanonicalEvent::ToolCallDelta { index, arguments });
        }
        Ok(())
    }

    /// Decodes a whole `chat.completion` object as the stream it stands for: some
    /// OpenAI-compatible servers ignore `stream: true` and answer in one JSON body. The events
    /// (through the terminal one) are those the equivalent stream would have decoded to.
    pub fn push_whole(&mut self, body: &str) -> Result<Vec<CanonicalEvent>, DecodeError> {
        let value: Value = serde_json::from_str(body).map_err(malformed)?;
        if let Some(error) = value.get("error") {
            self.done = true;
            return Ok(vec![in_band_error(error)]);
        }
        let completion: ChatCompletion = serde_json::from_value(value).map_err(malformed)?;
        let mut out = vec![CanonicalEvent::MessageStart { model: completion.model }];
        self.started = true;
        self.usage = completion.usage.as_ref().map(usage_from_wire);
        for choice in completion.choices.into_iter().filter(|c| c.index == 0) {
            let tool_calls =
                choice.message.tool_calls.into_iter().zip(0..).map(|(call, index)| ToolCallChunk {
                    index,
                    id: Some(call.id),
                    kind: Some(call.kind),
                    function: Some(FunctionChunk {
                        name: Some(call.function.name),
                        arguments: Some(call.function.arguments),
                    }),
                });
            let delta = Delta {
                role: None,
                content: choice.message.content,
                reasoning_content: choice.message.reasoning_content,
                tool_calls: tool_calls.collect(),
            };
            let chunk = ChunkChoice { index: 0, delta, finish_reason: choice.finish_reason };
            self.push_choice(chunk, &mut out)?;
        }
        out.extend(self.end()?);
        Ok(out)
    }

    /// Call at the end of the byte stream. Some compatible servers end after the finish chunk
    /// without `[DONE]`; that is a complete answer. Anything else was cut short.
    pub fn finish(&mut self) -> Result<Vec<CanonicalEvent>, DecodeError> {
        if self.done {
            return Ok(Vec::new());
        }
        self.end()
    }

    fn end(&mut self) -> Result<Vec<CanonicalEvent>, DecodeError> {
        self.done = true;
        let reason = self.finish.ok_or(DecodeError::Truncated { format: FORMAT })?;
        let mut out = Vec::new();
        if let Some(usage) = self.usage {
            out.push(CanonicalEvent::Usage { usage });
        }
        out.push(CanonicalEvent::Finish { reason });
        Ok(out)
    }
}

fn malformed(e: impl ToString) -> DecodeError {
    DecodeError::Malformed { format: FORMAT, message: e.to_string() }
}

fn in_band_error(error: &Value) -> CanonicalEvent {
    let message = error.get("message").and_then(Value::as_str).unwrap_or("upstream error");
    CanonicalEvent::error(ErrorKind::Upstream, message)
}

/// Writes canonical events as OpenAI chunks, ending with `data: [DONE]`. With `include_usage`
/// (the caller's `stream_options.include_usage`), a last chunk with empty `choices` carries usage.
#[derive(Debug)]
pub struct StreamEncoder {
    header: StreamHeader,
    usage: Option<TokenUsage>,
}

/// What every chunk of one OpenAI stream (chat or completion) shares, and whether the stream
/// ends with a usage chunk (the caller's `stream_options.include_usage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub id: String,
    pub model: String,
    pub created: i64,
    pub include_usage: bool,
}

impl StreamEncoder {
    pub fn new(header: StreamHeader) -> Self {
        Self { header, usage: None }
    }

    pub fn encode(&mut self, event: &CanonicalEvent) -> Vec<SseFrame> {
        match event {
            CanonicalEvent::MessageStart { .. } => {
                vec![self.delta(Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Default::default()
                })]
            }
            CanonicalEvent::TextDelta { text } => {
                vec![self.delta(Delta { content: Some(text.clone()), ..Default::default() })]
            }
            CanonicalEvent::ReasoningDelta { text } => {
                vec![self
                    .delta(Delta { reasoning_content: Some(text.clone()), ..Default::default() })]
            }
            CanonicalEvent::ToolCallStart { index, id, name } => {
                let call = ToolCallChunk {
                    index: *index,
                    id: Some(id.clone()),
                    kind: Some("function".into()),
                    function: Some(FunctionChunk {
                        name: Some(name.clone()),
                        arguments: Some(String::new()),
                    }),
                };
                vec![self.delta(Delta { tool_calls: vec![call], ..Default::default() })]
            }
            CanonicalEvent::ToolCallDelta { index, arguments } => {
                let call = ToolCallChunk {
                    index: *index,
                    function: Some(FunctionChunk {
                        name: None,
                        arguments: Some(arguments.clone()),
                    }),
                    ..Default::default()
                };
                vec![self.delta(Delta { tool_calls: vec![call], ..Default::default() })]
            }
            CanonicalEvent::Usage { usage } => {
                self.usage = Some(*usage);
                Vec::new()
            }
            CanonicalEvent::Finish { reason } => self.finish(*reason),
            CanonicalEvent::Error { error } => vec![error_frame(error)],
        }
    }

    fn finish(&self, reason: StopReason) -> Vec<SseFrame> {
        let mut last = self.chunk(Delta::default());
        last.choices[0].finish_reason = Some(reason.as_openai().into());
        let mut frames = vec![SseFrame::data(to_json(&last))];
        if self.header.include_usage {
            let mut usage_chunk = self.chunk(Delta::default());
            usage_chunk.choices.clear();
            usage_chunk.usage = Some(usage_to_wire(&self.usage.unwrap_or_default()));
            frames.push(SseFrame::data(to_json(&usage_chunk)));
        }
        frames.push(SseFrame::data("[DONE]".into()));
        frames
    }

    fn delta(&self, delta: Delta) -> SseFrame {
        SseFrame::data(to_json(&self.chunk(delta)))
    }

    fn chunk(&self, delta: Delta) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.header.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.header.created,
            model: self.header.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason: None }],
            usage: None,
        }
    }
}

/// An error after the stream began: OpenAI's in-stream error object, and no `[DONE]`, so no
/// client mistakes a cut answer for a complete one.
pub(super) fn error_frame(error: &StreamError) -> SseFrame {
    let kind = match error.kind {
        ErrorKind::InvalidRequest => "invalid_request_error",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Overloaded => "rate_limit_exceeded",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Upstream | ErrorKind::Internal => "server_error",
    };
    let body = ErrorBody {
        error: ErrorDetail { message: error.message.clone(), kind: Some(kind.into()), code: None },
    };
    SseFrame::data(to_json(&body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_all(datas: &[Value]) -> Result<Vec<CanonicalEvent>, DecodeError> {
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        for data in datas {
            out.extend(d.push(&data.to_string())?);
        }
        out.extend(d.push("[DONE]")?);
        Ok(out)
    }

    #[test]
    fn decodes_text_tool_fragments_finish_and_usage() {
        let events = decode_all(&[
            json!({"model": "gpt", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 2}}}),
        ])
        .unwrap();
        assert_eq!(
            events,
            vec![
                CanonicalEvent::MessageStart { model: "gpt".into() },
                CanonicalEvent::TextDelta { text: "Hi".into() },
                CanonicalEvent::ToolCallStart { index: 0, id: "c1".into(), name: "f".into() },
                CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"a\"".into() },
                CanonicalEvent::ToolCallDelta { index: 0, arguments: ":1}".into() },
                CanonicalEvent::Usage {
                    usage: TokenUsage { input_tokens: 5, output_tokens: 3, cached_input_tokens: 2 }
                },
                CanonicalEvent::Finish { reason: StopReason::ToolCalls },
            ]
        );
    }

    #[test]
    fn a_cut_stream_and_garbage_are_errors() {
        let mut d = StreamDecoder::new();
        d.push(&json!({"choices": [{"index": 0, "delta": {"content": "a"}}]}).to_string()).unwrap();
        assert_eq!(d.finish(), Err(DecodeError::Truncated { format: FORMAT }));
        assert!(matches!(
            StreamDecoder::new().push("{not json"),
            Err(DecodeError::Malformed { .. })
        ));
        let err = StreamDecoder::new().push(r#"{"error": {"message": "boom"}}"#).unwrap();
        assert!(matches!(&err[0], CanonicalEvent::Error { error } if error.message == "boom"));
    }

    #[test]
    fn the_word_error_in_content_is_content() {
        let chunk = json!({"choices": [{"index": 0, "delta": {"content": "an \"error\": here"}}]});
        let events = StreamDecoder::new().push(&chunk.to_string()).unwrap();
        assert!(events.iter().any(
            |e| matches!(e, CanonicalEvent::TextDelta { text } if text == "an \"error\": here")
        ));
        // A chunk carrying an error key alongside is still the in-band error it was before.
        let both = json!({"choices": [], "error": {"message": "late"}});
        let events = StreamDecoder::new().push(&both.to_string()).unwrap();
        assert!(matches!(&events[0], CanonicalEvent::Error { error } if error.message == "late"));
    }

    #[test]
    fn encoder_output_decodes_back_to_the_same_events() {
        let events = vec![
            CanonicalEvent::MessageStart { model: "m".into() },
            CanonicalEvent::TextDelta { text: "x".into() },
            CanonicalEvent::ToolCallStart { index: 0, id: "c".into(), name: "f".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "{}".into() },
            CanonicalEvent::Usage {
                usage: TokenUsage { input_tokens: 1, output_tokens: 2, cached_input_tokens: 0 },
            },
            CanonicalEvent::Finish { reason: StopReason::ToolCalls },
        ];
        let mut enc = StreamEncoder::new(StreamHeader {
            id: "id".into(),
            model: "m".into(),
            created: 0,
            include_usage: true,
        });
        let frames: Vec<SseFrame> = events.iter().flat_map(|e| enc.encode(e)).collect();
        assert_eq!(frames.last().unwrap().data, "[DONE]");
        let mut dec = StreamDecoder::new();
        let back: Vec<CanonicalEvent> =
            frames.iter().flat_map(|f| dec.push(&f.data).unwrap()).collect();
        assert_eq!(back, events);
    }

    #[test]
    fn errors_are_sent_without_done() {
        let mut enc = StreamEncoder::new(StreamHeader {
            id: "id".into(),
            model: "m".into(),
            created: 0,
            include_usage: false,
        });
        let frames = enc.encode(&CanonicalEvent::error(ErrorKind::Timeout, "stalled"));
        assert_eq!(frames.len(), 1);
        assert!(frames[0].data.contains("stalled"));
    }

    #[test]
    fn a_whole_completion_decodes_as_its_stream_would() {
        let body = json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Hi",
                "tool_calls": [{"id": "call_a", "type": "function",
                    "function": {"name": "f", "arguments": "{\"x\":1}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        });
        let events = StreamDecoder::new().push_whole(&body.to_string()).unwrap();
        let usage = TokenUsage { input_tokens: 5, output_tokens: 2, ..Default::default() };
        assert_eq!(
            events,
            [
                CanonicalEvent::MessageStart { model: "m".into() },
                CanonicalEvent::TextDelta { text: "Hi".into() },
                CanonicalEvent::ToolCallStart { index: 0, id: "call_a".into(), name: "f".into() },
                CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"x\":1}".into() },
                CanonicalEvent::Usage { usage },
                CanonicalEvent::Finish { reason: StopReason::ToolCalls },
            ]
        );
        let error = json!({"error": {"message": "bad key"}}).to_string();
        assert!(matches!(
            &StreamDecoder::new().push_whole(&error).unwrap()[..],
            [CanonicalEvent::Error { error }] if error.message == "bad key"
        ));
    }
}
