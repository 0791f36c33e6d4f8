//! Gemini SSE streams (`alt=sse`) ↔ canonical events. Each record is a whole
//! `GenerateContentResponse`; there is no `[DONE]`: the record with a `finishReason` ends it.

use serde_json::Value;

use super::convert::{usage_from_wire, usage_to_wire};
use super::{
    Candidate, Content, ErrorBody, ErrorDetail, FunctionCall, GenerateContentResponse, Part,
};
use crate::canonical::{
    parse_arguments, CanonicalEvent, ErrorKind, StopReason, StreamError, TokenUsage,
};
use crate::wire::{to_json, DecodeError, SseFrame};

const FORMAT: &str = "Gemini";

#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    num_tools: u32,
    usage: Option<TokenUsage>,
    finish: Option<StopReason>,
    done: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one record.
    pub fn push(&mut self, data: &str) -> Result<Vec<CanonicalEvent>, DecodeError> {
        if self.done || data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let value: Value = serde_json::from_str(data).map_err(malformed)?;
        if value.get("error").is_some() {
            self.done = true;
            let body: ErrorBody = serde_json::from_value(value).map_err(malformed)?;
            return Ok(vec![CanonicalEvent::Error { error: error_from_wire(&body.error) }]);
        }
        let record: GenerateContentResponse = serde_json::from_value(value).map_err(malformed)?;
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let model = record.model_version.clone().unwrap_or_default();
            out.push(CanonicalEvent::MessageStart { model });
        }
        self.push_usage(&record, &mut out);
        if let Some(candidate) = record.candidates.into_iter().find(|c| c.index == 0) {
            self.push_candidate(candidate, &mut out);
        } else if record.prompt_feedback.and_then(|f| f.block_reason).is_some() {
            self.finish = Some(StopReason::ContentFilter);
        }
        Ok(out)
    }

    /// Usage arrives on many records; the first (input known) is emitted at once so a cut
    /// stream still bills its input, the last one at the end.
    fn push_usage(&mut self, record: &GenerateContentResponse, out: &mut Vec<CanonicalEvent>) {
        if let Some(usage) = &record.usage_metadata {
            let first = self.usage.is_none();
            self.usage = Some(usage_from_wire(usage));
            if first {
                out.push(CanonicalEvent::Usage { usage: usage_from_wire(usage) });
            }
        }
    }

    fn push_candidate(&mut self, candidate: Candidate, out: &mut Vec<CanonicalEvent>) {
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            if part.thought == Some(true) {
                continue;
            }
            if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                out.push(CanonicalEvent::TextDelta { text });
            }
            if let Some(call) = part.function_call {
                self.push_call(call, out);
            }
        }
        if let Some(reason) = candidate.finish_reason {
            self.finish = Some(StopReason::from_gemini(&reason));
        }
    }

    /// Gemini sends a call whole: one start and one argument fragment.
    fn push_call(&mut self, call: FunctionCall, out: &mut Vec<CanonicalEvent>) {
        let index = self.num_tools;
        self.num_tools += 1;
        let id = call.id.unwrap_or_else(|| format!("call_{index}"));
        out.push(CanonicalEvent::ToolCallStart { index, id, name: call.name });
        let args = if call.args.is_null() { "{}".to_string() } else { call.args.to_string() };
        out.push(CanonicalEvent::ToolCallDelta { index, arguments: args });
    }

    /// Call at the end of the byte stream; complete only if a record carried a finish reason.
    pub fn finish(&mut self) -> Result<Vec<CanonicalEvent>, DecodeError> {
        if self.done {
            return Ok(Vec::new());
        }
        self.done = true;
        let mut reason = self.finish.ok_or(DecodeError::Truncated { format: FORMAT })?;
        // Gemini ends tool calls with STOP; canonical callers expect `tool_calls`.
        if reason == StopReason::Stop && self.num_tools > 0 {
            reason = StopReason::ToolCalls;
        }
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

fn error_from_wire(error: &ErrorDetail) -> StreamError {
    let kind = match error.code {
        429 | 503 => ErrorKind::Overloaded,
        400..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::Upstream,
    };
    StreamError::new(kind, error.message.clone())
}

/// Writes canonical events as Gemini records. Gemini sends each function call whole, so tool
/// calls are held until the end and sent in the final record with the finish reason and usage.
#[derive(Debug)]
pub struct StreamEncoder {
    response_id: String,
    model: String,
    tools: Vec<(String, String)>,
    usage: TokenUsage,
}

impl StreamEncoder {
    pub fn new(response_id: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            response_id: response_id.into(),
            model: model.into(),
            tools: Vec::new(),
            usage: TokenUsage::default(),
        }
    }

    pub fn encode(&mut self, event: &CanonicalEvent) -> Vec<SseFrame> {
        match event {
            CanonicalEvent::MessageStart { .. } => Vec::new(),
            CanonicalEvent::TextDelta { text } => {
                vec![self.record(vec![Part::text(text.clone())], None, None)]
            }
            CanonicalEvent::ReasoningDelta { text } => {
                let thought = Part { thought: Some(true), ..Part::text(text.clone()) };
                vec![self.record(vec![thought], None, None)]
            }
            CanonicalEvent::ToolCallStart { index, name, .. } => {
                let at = *index as usize;
                if self.tools.len() <= at {
                    self.tools.resize(at + 1, Default::default());
                }
                self.tools[at].0.clone_from(name);
                Vec::new()
            }
            CanonicalEvent::ToolCallDelta { index, arguments } => {
                if let Some(tool) = self.tools.get_mut(*index as usize) {
                    tool.1.push_str(arguments);
                }
                Vec::new()
            }
            CanonicalEvent::Usage { usage } => {
                self.usage = *usage;
                Vec::new()
            }
            CanonicalEvent::Finish { reason } => vec![self.finish(*reason)],
            CanonicalEvent::Error { error } => vec![error_frame(error)],
        }
    }

    fn finish(&mut self, reason: StopReason) -> SseFrame {
        let mut parts: Vec<Part> = std::mem::take(&mut self.tools)
            .into_iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, args)| Part {
                function_call: Some(FunctionCall { id: None, name, args: parse_arguments(args) }),
                ..Default::default()
            })
            .collect();
        if parts.is_empty() {
            // Clients read `parts`; a final record without any is treated as empty output.
            parts.push(Part::text(""));
        }
        self.record(parts, Some(reason), Some(self.usage))
    }

    fn record(
        &self,
        parts: Vec<Part>,
        reason: Option<StopReason>,
        usage: Option<TokenUsage>,
    ) -> SseFrame {
        let record = GenerateContentResponse {
            candidates: vec![Candidate {
                content: Some(Content { role: Some("model".into()), parts }),
                finish_reason: reason.map(|r| r.as_gemini().to_string()),
                index: 0,
            }],
            usage_metadata: usage.as_ref().map(usage_to_wire),
            model_version: Some(self.model.clone()),
            response_id: Some(self.response_id.clone()),
            prompt_feedback: None,
        };
        SseFrame::data(to_json(&record))
    }
}

fn error_frame(error: &StreamError) -> SseFrame {
    let (code, status) = match error.kind {
        ErrorKind::InvalidRequest => (400, "INVALID_ARGUMENT"),
        ErrorKind::Overloaded => (429, "RESOURCE_EXHAUSTED"),
        ErrorKind::Timeout => (504, "DEADLINE_EXCEEDED"),
        ErrorKind::Cancelled => (499, "CANCELLED"),
        ErrorKind::Upstream => (502, "UNAVAILABLE"),
        ErrorKind::Internal => (500, "INTERNAL"),
    };
    let body = ErrorBody {
        error: ErrorDetail { code, message: error.message.clone(), status: status.into() },
    };
    SseFrame::data(to_json(&body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_records_with_calls_and_final_usage() {
        let mut d = StreamDecoder::new();
        let records = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hm", "thought": true}, {"text": "Hi"}]}, "index": 0}],
                   "usageMetadata": {"promptTokenCount": 4}, "modelVersion": "gemini-x"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP", "index": 0}],
                   "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6, "totalTokenCount": 10}}),
        ];
        let mut events: Vec<_> =
            records.iter().flat_map(|r| d.push(&r.to_string()).unwrap()).collect();
        events.extend(d.finish().unwrap());
        let usage = |o| TokenUsage { input_tokens: 4, output_tokens: o, cached_input_tokens: 0 };
        assert_eq!(
            events,
            vec![
                CanonicalEvent::MessageStart { model: "gemini-x".into() },
                CanonicalEvent::Usage { usage: usage(0) },
                CanonicalEvent::TextDelta { text: "Hi".into() },
                CanonicalEvent::ToolCallStart { index: 0, id: "call_0".into(), name: "f".into() },
                CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"a\":1}".into() },
                CanonicalEvent::Usage { usage: usage(6) },
                CanonicalEvent::Finish { reason: StopReason::ToolCalls },
            ]
        );
    }

    #[test]
    fn a_stream_without_finish_reason_is_truncated() {
        let mut d = StreamDecoder::new();
        d.push(&json!({"candidates": [{"content": {"parts": [{"text": "a"}]}}]}).to_string())
            .unwrap();
        assert_eq!(d.finish(), Err(DecodeError::Truncated { format: FORMAT }));
        let mut d = StreamDecoder::new();
        let ev = d
            .push(r#"{"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}"#)
            .unwrap();
        assert_eq!(ev, vec![CanonicalEvent::error(ErrorKind::Overloaded, "busy")]);
    }

    #[test]
    fn encoder_output_decodes_back_to_the_same_answer() {
        let usage = TokenUsage { input_tokens: 3, output_tokens: 5, cached_input_tokens: 1 };
        let events = [
            CanonicalEvent::MessageStart { model: "g".into() },
            CanonicalEvent::TextDelta { text: "a".into() },
            CanonicalEvent::ToolCallStart { index: 0, id: "x".into(), name: "f".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"k\":".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "2}".into() },
            CanonicalEvent::Usage { usage },
            CanonicalEvent::Finish { reason: StopReason::ToolCalls },
        ];
        let mut enc = StreamEncoder::new("r", "g");
        let frames: Vec<SseFrame> = events.iter().flat_map(|e| enc.encode(e)).collect();
        assert_eq!(frames.len(), 2);
        let mut dec = StreamDecoder::new();
        let mut back: Vec<_> = frames.iter().flat_map(|f| dec.push(&f.data).unwrap()).collect();
        back.extend(dec.finish().unwrap());
        // The final record carries usage before its parts: a first usage snapshot comes first.
        let n = back.len();
        assert_eq!(
            back[n - 4],
            CanonicalEvent::ToolCallStart { index: 0, id: "call_0".into(), name: "f".into() }
        );
        assert_eq!(
            back[n - 3],
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"k\":2}".into() }
        );
        assert_eq!(back.last(), Some(&CanonicalEvent::Finish { reason: StopReason::ToolCalls }));
        assert_eq!(back[back.len() - 2], CanonicalEvent::Usage { usage });
    }
}
