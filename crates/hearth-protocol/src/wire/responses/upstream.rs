//! The Responses API as a provider adapter speaks it: canonical → the request sent to OpenAI's
//! `/v1/responses`, and its typed stream events → canonical events.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    CreateResponse, Input, InputContent, InputItem, TextConfig, TextFormat, Tool,
    ToolChoice as WireToolChoice,
};
use crate::canonical::{
    CanonicalEvent, CanonicalRequest, ContentBlock, ErrorKind, Message, MessageRole, StopReason,
    StreamError, TokenUsage, ToolChoice,
};
use crate::wire::openai::arguments_text;
use crate::wire::DecodeError;
use crate::OutputConstraint;

const FORMAT: &str = "OpenAI Responses";

/// Canonical → the body of a streamed call. Nothing is stored upstream (`store: false`):
/// Hearth keeps the conversation, so any route can continue it.
pub fn from_canonical(req: &CanonicalRequest, model: &str) -> CreateResponse {
    let mut items = Vec::new();
    for message in &req.messages {
        push_items(message, &mut items);
    }
    CreateResponse {
        model: model.to_owned(),
        input: Input::Items(
            items.into_iter().map(|i| serde_json::to_value(i).unwrap_or_default()).collect(),
        ),
        instructions: req.system.clone(),
        tools: req
            .tools
            .iter()
            .map(|t| Tool {
                kind: "function".into(),
                name: Some(t.name.clone()),
                description: t.description.clone(),
                parameters: Some(t.parameters.clone()),
                // The Responses API makes function tools strict unless told otherwise; strict
                // mode refuses schemas that chat completions take, and canonical tools are not
                // strict.
                strict: Some(false),
            })
            .collect(),
        tool_choice: req.tool_choice.as_ref().map(tool_choice_to_wire),
        parallel_tool_calls: req.parallel_tool_calls.filter(|_| !req.tools.is_empty()),
        text: req.response_format.as_ref().and_then(text_format_to_wire),
        max_output_tokens: req.max_tokens,
        temperature: req.sampling.temperature,
        top_p: req.sampling.top_p,
        store: Some(false),
        stream: Some(true),
        ..Default::default()
    }
}

fn push_items(message: &Message, items: &mut Vec<InputItem>) {
    let role = match message.role {
        MessageRole::User => "user",
        MessageRole::Assistant => "assistant",
    };
    for block in &message.content {
        items.push(match block {
            ContentBlock::Text { text } => {
                InputItem::Message { role: role.into(), content: InputContent::Text(text.clone()) }
            }
            ContentBlock::ToolUse { id, name, input } => InputItem::FunctionCall {
                call_id: id.clone(),
                name: name.clone(),
                arguments: arguments_text(input),
            },
            ContentBlock::ToolResult { tool_use_id, content, .. } => {
                InputItem::FunctionCallOutput {
                    call_id: tool_use_id.clone(),
                    output: InputContent::Text(content.clone()),
                }
            }
        });
    }
}

fn tool_choice_to_wire(choice: &ToolChoice) -> WireToolChoice {
    match choice {
        ToolChoice::Tool { name } => {
            WireToolChoice::Named { kind: "function".into(), name: Some(name.clone()) }
        }
        mode => WireToolChoice::Mode(mode.openai_mode().unwrap_or("auto").into()),
    }
}

/// OpenAI's API has no grammar formats; the router never sends those upstream.
fn text_format_to_wire(constraint: &OutputConstraint) -> Option<TextConfig> {
    let format = match constraint {
        OutputConstraint::JsonObject => TextFormat::JsonObject,
        OutputConstraint::JsonSchema { schema, name, strict } => TextFormat::JsonSchema {
            name: name.clone().unwrap_or_else(|| "response".into()),
            schema: (schema != &Value::Bool(true)).then(|| schema.clone()),
            description: None,
            strict: *strict,
        },
        OutputConstraint::Regex { .. } | OutputConstraint::Lark { .. } => return None,
    };
    Some(TextConfig { format: Some(format) })
}

/// Reads a Responses stream. A call's arguments arrive as deltas keyed by the call's output
/// index; the end comes with `response.completed` (or `incomplete`, or `failed`).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    /// A function call's output index → its canonical tool-call index, and whether any of its
    /// arguments came as deltas.
    calls: BTreeMap<u64, (u32, bool)>,
    done: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one SSE event's `data`.
    pub fn push(&mut self, data: &str) -> Result<Vec<CanonicalEvent>, DecodeError> {
        let data = data.trim();
        if self.done || data.is_empty() || data == "[DONE]" {
            return Ok(Vec::new());
        }
        let event: Value = serde_json::from_str(data).map_err(malformed)?;
        let kind = event["type"].as_str().unwrap_or_default();
        let mut out = Vec::new();
        if !self.started && kind != "error" {
            self.started = true;
            let model = event["response"]["model"].as_str().unwrap_or_default().to_owned();
            out.push(CanonicalEvent::MessageStart { model });
        }
        match kind {
            "response.output_text.delta" => {
                out.push(CanonicalEvent::TextDelta { text: text(&event, "delta") })
            }
            "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
                out.push(CanonicalEvent::ReasoningDelta { text: text(&event, "delta") })
            }
            "response.output_item.added" if event["item"]["type"] == "function_call" => {
                let index = self.calls.len() as u32;
                self.calls.insert(output_index(&event), (index, false));
                let item = &event["item"];
                out.push(CanonicalEvent::ToolCallStart {
                    index,
                    id: text(item, "call_id"),
                    name: text(item, "name"),
                });
            }
            "response.function_call_arguments.delta" => {
                if let Some((index, streamed)) = self.calls.get_mut(&output_index(&event)) {
                    *streamed = true;
                    out.push(CanonicalEvent::ToolCallDelta {
                        index: *index,
                        arguments: text(&event, "delta"),
                    });
                }
            }
            // A call whose arguments came whole, with no deltas.
            "response.function_call_arguments.done" => {
                if let Some((index, false)) = self.calls.get(&output_index(&event)).copied() {
                    out.push(CanonicalEvent::ToolCallDelta {
                        index,
                        arguments: text(&event, "arguments"),
                    });
                }
            }
            "response.completed" | "response.incomplete" => {
                out.extend(self.end(&event["response"]))
            }
            "response.failed" => {
                self.done = true;
                out.push(in_band_error(&event["response"]["error"]));
            }
            "error" => {
                self.done = true;
                out.push(in_band_error(&event));
            }
            _ => {}
        }
        Ok(out)
    }

    /// Called at the end of the body: a stream cut before its final event is an error.
    pub fn finish(&mut self) -> Result<Vec<CanonicalEvent>, DecodeError> {
        if self.done {
            Ok(Vec::new())
        } else {
            Err(DecodeError::Truncated { format: FORMAT })
        }
    }

    fn end(&mut self, response: &Value) -> Vec<CanonicalEvent> {
        self.done = true;
        let reason = match response["incomplete_details"]["reason"].as_str() {
            Some("max_output_tokens") => StopReason::Length,
            Some("content_filter") => StopReason::ContentFilter,
            _ if !self.calls.is_empty() => StopReason::ToolCalls,
            _ => StopReason::Stop,
        };
        let mut out = Vec::new();
        let usage = &response["usage"];
        if usage.is_object() {
            let count = |v: &Value| v.as_u64().unwrap_or(0);
            out.push(CanonicalEvent::Usage {
                usage: TokenUsage {
                    input_tokens: count(&usage["input_tokens"]),
                    output_tokens: count(&usage["output_tokens"]),
                    cached_input_tokens: count(&usage["input_tokens_details"]["cached_tokens"]),
                },
            });
        }
        out.push(CanonicalEvent::Finish { reason });
        out
    }
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_owned()
}

fn output_index(event: &Value) -> u64 {
    event["output_index"].as_u64().unwrap_or(0)
}

fn malformed(e: impl ToString) -> DecodeError {
    DecodeError::Malformed { format: FORMAT, message: e.to_string() }
}

/// `{"code", "message"}`, from a failed response or an `error` event.
fn in_band_error(error: &Value) -> CanonicalEvent {
    let message = error["message"].as_str().unwrap_or("the provider reported an error");
    let kind = match error["code"].as_str() {
        Some("rate_limit_exceeded") => ErrorKind::Overloaded,
        Some("invalid_prompt") => ErrorKind::InvalidRequest,
        _ => ErrorKind::Upstream,
    };
    let mut stream_error = StreamError::new(kind, message);
    if let Some(code) = error["code"].as_str() {
        stream_error = stream_error.with_code(code);
    }
    CanonicalEvent::Error { error: stream_error }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{ResponseHeader, StreamEncoder};
    use super::*;

    #[test]
    fn a_canonical_request_becomes_items() {
        let request = CanonicalRequest {
            model: "x".into(),
            system: Some("be kind".into()),
            messages: vec![
                Message::text(MessageRole::User, "weather?"),
                Message {
                    role: MessageRole::Assistant,
                    content: vec![ContentBlock::ToolUse {
                        id: "c1".into(),
                        name: "w".into(),
                        input: json!({"a": 1}),
                    }],
                },
                Message {
                    role: MessageRole::User,
                    content: vec![ContentBlock::ToolResult {
                        tool_use_id: "c1".into(),
                        content: "rain".into(),
                        is_error: false,
                    }],
                },
            ],
            max_tokens: Some(5),
            ..Default::default()
        };
        let body = serde_json::to_value(from_canonical(&request, "gpt")).unwrap();
        assert_eq!(body["instructions"], "be kind");
        assert_eq!(body["max_output_tokens"], 5);
        assert_eq!((body["store"].clone(), body["stream"].clone()), (json!(false), json!(true)));
        assert_eq!(
            body["input"],
            json!([
                {"type": "message", "role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "rain"},
            ])
        );
    }

    /// Hearth's own encoder speaks the format, so its output decodes back to the events it
    /// was made from.
    #[test]
    fn encoded_events_decode_back_to_themselves() {
        let usage = TokenUsage { input_tokens: 4, output_tokens: 3, cached_input_tokens: 1 };
        let events = vec![
            CanonicalEvent::MessageStart { model: "m".into() },
            CanonicalEvent::ReasoningDelta { text: "hm".into() },
            CanonicalEvent::TextDelta { text: "Hi".into() },
            CanonicalEvent::ToolCallStart { index: 0, id: "c".into(), name: "f".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "{}".into() },
            CanonicalEvent::Usage { usage },
            CanonicalEvent::Finish { reason: StopReason::ToolCalls },
        ];
        let mut encoder = StreamEncoder::new(ResponseHeader {
            id: "resp_1".into(),
            created_at: 0,
            model: "m".into(),
            settings: Default::default(),
        });
        let mut decoder = StreamDecoder::new();
        let back: Vec<CanonicalEvent> = events
            .iter()
            .flat_map(|e| encoder.encode(e))
            .flat_map(|frame| decoder.push(&frame.data).unwrap())
            .collect();
        assert_eq!(back, events);
        assert_eq!(decoder.finish(), Ok(Vec::new()));
    }

    #[test]
    fn failures_cuts_and_whole_arguments() {
        let mut d = StreamDecoder::new();
        d.push(&json!({"type": "response.created", "response": {"model": "m"}}).to_string())
            .unwrap();
        assert_eq!(d.finish(), Err(DecodeError::Truncated { format: FORMAT }));

        let failed = json!({"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}});
        let events = StreamDecoder::new().push(&failed.to_string()).unwrap();
        assert!(matches!(&events[1], CanonicalEvent::Error { error } if error.message == "boom"));

        let mut d = StreamDecoder::new();
        let added = json!({"type": "response.output_item.added", "output_index": 2,
            "item": {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}});
        d.push(&added.to_string()).unwrap();
        let done = json!({"type": "response.function_call_arguments.done", "output_index": 2, "arguments": "{\"x\":1}"});
        assert_eq!(
            d.push(&done.to_string()).unwrap(),
            [CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"x\":1}".into() }]
        );
    }
}
