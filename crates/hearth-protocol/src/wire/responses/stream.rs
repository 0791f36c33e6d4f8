//! Canonical events → the Responses API's typed stream events, and the response object they
//! build. Every event carries a `sequence_number` counted from 0 by the encoder, so encoding the
//! same canonical events again gives the same numbers: a caller resuming with
//! `starting_after=N` is sent a replay with the first N + 1 events left out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{
    IncompleteDetails, InputTokensDetails, ItemStatus, OutputContent, OutputItem, ResponseError,
    ResponseObject, ResponseStatus, ResponseUsage,
};
use crate::canonical::{CanonicalEvent, ErrorKind, StopReason, StreamError, TokenUsage};
use crate::wire::{to_json, SseFrame};

/// What a response shares before any event: its id, creation time, the model id the caller
/// asked for, and the request's settings that the response object echoes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseHeader {
    pub id: String,
    pub created_at: i64,
    pub model: String,
    pub settings: Map<String, Value>,
}

#[derive(Debug)]
pub struct StreamEncoder {
    response: ResponseObject,
    next_sequence_number: u64,
    /// The output item being written (text, reasoning or a call's arguments).
    open: Option<usize>,
    /// A canonical tool call's index → its output item.
    calls: BTreeMap<u32, usize>,
}

/// Which kind of text item a delta goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Message,
    Reasoning,
}

impl StreamEncoder {
    pub fn new(header: ResponseHeader) -> Self {
        let response = ResponseObject {
            id: header.id,
            object: "response".into(),
            created_at: header.created_at,
            status: ResponseStatus::InProgress,
            model: header.model,
            output: Vec::new(),
            usage: None,
            error: None,
            incomplete_details: None,
            settings: header.settings,
        };
        Self { response, next_sequence_number: 0, open: None, calls: BTreeMap::new() }
    }

    /// The response object as the events so far have built it.
    pub fn response(&self) -> &ResponseObject {
        &self.response
    }

    pub fn into_response(self) -> ResponseObject {
        self.response
    }

    /// The stream events for one canonical event.
    pub fn encode(&mut self, event: &CanonicalEvent) -> Vec<SseFrame> {
        self.encode_numbered(event).into_iter().map(|(_, frame)| frame).collect()
    }

    /// The stream events for one canonical event, each with its sequence number.
    pub fn encode_numbered(&mut self, event: &CanonicalEvent) -> Vec<(u64, SseFrame)> {
        let mut out = Events { frames: Vec::new() };
        if self.response.status.is_final() {
            return out.frames;
        }
        match event {
            CanonicalEvent::MessageStart { .. } => {
                let response = self.response_value();
                self.emit(&mut out, "response.created", json!({ "response": response }));
                self.emit(&mut out, "response.in_progress", json!({ "response": response }));
            }
            CanonicalEvent::TextDelta { text } => self.text(&mut out, TextKind::Message, text),
            CanonicalEvent::ReasoningDelta { text } => {
                self.text(&mut out, TextKind::Reasoning, text)
            }
            CanonicalEvent::ToolCallStart { index, id, name } => {
                self.close_open(&mut out, ItemStatus::Completed);
                let item = OutputItem::FunctionCall {
                    id: self.item_id("fc"),
                    call_id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                    status: ItemStatus::InProgress,
                };
                let output_index = self.add_item(&mut out, item);
                self.calls.insert(*index, output_index);
            }
            CanonicalEvent::ToolCallDelta { index, arguments } => {
                self.arguments(&mut out, *index, arguments)
            }
            CanonicalEvent::Usage { usage } => self.response.usage = Some(usage_to_wire(usage)),
            CanonicalEvent::Finish { reason } => self.finish(&mut out, *reason),
            CanonicalEvent::Error { error } => self.fail(&mut out, error),
        }
        out.frames
    }

    fn text(&mut self, out: &mut Events, kind: TextKind, delta: &str) {
        let output_index = self.open_text(out, kind);
        let item_id = self.item_id_at(output_index);
        if let Some(content) = self.content_mut(output_index) {
            content.text_mut().push_str(delta);
        }
        let body = json!({
            "item_id": item_id, "output_index": output_index, "content_index": 0, "delta": delta,
        });
        match kind {
            TextKind::Message => {
                let mut body = body;
                body["logprobs"] = json!([]);
                self.emit(out, "response.output_text.delta", body);
            }
            TextKind::Reasoning => self.emit(out, "response.reasoning_text.delta", body),
        }
    }

    /// The open item of `kind`, or a new one (closing the item before it).
    fn open_text(&mut self, out: &mut Events, kind: TextKind) -> usize {
        if let Some(index) = self.open {
            let matches = matches!(
                (&self.response.output[index], kind),
                (OutputItem::Message { .. }, TextKind::Message)
                    | (OutputItem::Reasoning { .. }, TextKind::Reasoning)
            );
            if matches {
                return index;
            }
        }
        self.close_open(out, ItemStatus::Completed);
        let (item, part) = match kind {
            TextKind::Message => (
                OutputItem::Message {
                    id: self.item_id("msg"),
                    status: ItemStatus::InProgress,
                    role: "assistant".into(),
                    content: Vec::new(),
                },
                OutputContent::OutputText {
                    text: String::new(),
                    annotations: Vec::new(),
                    logprobs: Vec::new(),
                },
            ),
            TextKind::Reasoning => (
                OutputItem::Reasoning {
                    id: self.item_id("rs"),
                    summary: Vec::new(),
                    content: Vec::new(),
                    status: ItemStatus::InProgress,
                },
                OutputContent::ReasoningText { text: String::new() },
            ),
        };
        let output_index = self.add_item(out, item);
        let item_id = self.item_id_at(output_index);
        let body = json!({
            "item_id": item_id, "output_index": output_index, "content_index": 0, "part": part,
        });
        if let OutputItem::Message { content, .. } | OutputItem::Reasoning { content, .. } =
            &mut self.response.output[output_index]
        {
            content.push(part);
        }
        self.emit(out, "response.content_part.added", body);
        output_index
    }

    fn arguments(&mut self, out: &mut Events, index: u32, delta: &str) {
        let Some(&output_index) = self.calls.get(&index) else {
            return;
        };
        let item_id = self.item_id_at(output_index);
        if let OutputItem::FunctionCall { arguments, .. } = &mut self.response.output[output_index]
        {
            arguments.push_str(delta);
        }
        let body = json!({ "item_id": item_id, "output_index": output_index, "delta": delta });
        self.emit(out, "response.function_call_arguments.delta", body);
    }

    fn add_item(&mut self, out: &mut Events, item: OutputItem) -> usize {
        let output_index = self.response.output.len();
        let body = json!({ "output_index": output_index, "item": item });
        self.response.output.push(item);
        self.open = Some(output_index);
        self.emit(out, "response.output_item.added", body);
        output_index
    }

    /// Ends the open item: its `…done` events, then `response.output_item.done`.
    fn close_open(&mut self, out: &mut Events, status: ItemStatus) {
        let Some(output_index) = self.open.take() else {
            return;
        };
        let item_id = self.item_id_at(output_index);
        let at = json!({ "item_id": item_id, "output_index": output_index });
        match &mut self.response.output[output_index] {
            OutputItem::Message { status: s, content, .. }
            | OutputItem::Reasoning { status: s, content, .. } => {
                *s = status;
                let part = content.first().cloned();
                self.close_text(out, at, part);
            }
            OutputItem::FunctionCall { status: s, name, arguments, .. } => {
                *s = status;
                let mut body = at;
                body["name"] = json!(name);
                body["arguments"] = json!(arguments);
                self.emit(out, "response.function_call_arguments.done", body);
            }
        }
        let item = json!(self.response.output[output_index]);
        let body = json!({ "output_index": output_index, "item": item });
        self.emit(out, "response.output_item.done", body);
    }

    /// `response.output_text.done` (or `reasoning_text.done`), then `content_part.done`.
    fn close_text(&mut self, out: &mut Events, mut at: Value, part: Option<OutputContent>) {
        at["content_index"] = json!(0);
        let mut done = at.clone();
        done["text"] = json!(part.as_ref().map(OutputContent::text).unwrap_or_default());
        match part {
            Some(OutputContent::ReasoningText { .. }) => {
                self.emit(out, "response.reasoning_text.done", done)
            }
            _ => {
                done["logprobs"] = json!([]);
                self.emit(out, "response.output_text.done", done)
            }
        }
        at["part"] = json!(part);
        self.emit(out, "response.content_part.done", at);
    }

    fn finish(&mut self, out: &mut Events, reason: StopReason) {
        let (status, incomplete) = match reason {
            StopReason::Stop | StopReason::ToolCalls => (ResponseStatus::Completed, None),
            StopReason::Length => (ResponseStatus::Incomplete, Some("max_output_tokens")),
            StopReason::ContentFilter => (ResponseStatus::Incomplete, Some("content_filter")),
        };
        let item_status =
            if incomplete.is_some() { ItemStatus::Incomplete } else { ItemStatus::Completed };
        self.close_open(out, item_status);
        self.response.status = status;
        self.response.incomplete_details =
            incomplete.map(|reason| IncompleteDetails { reason: reason.into() });
        let name = if incomplete.is_some() { "response.incomplete" } else { "response.completed" };
        let response = self.response_value();
        self.emit(out, name, json!({ "response": response }));
    }

    /// A failed run, or a cancelled one: the Responses API has no `response.cancelled` event,
    /// so a cancelled response ends with `response.failed` carrying the `cancelled` status.
    fn fail(&mut self, out: &mut Events, error: &StreamError) {
        self.close_open(out, ItemStatus::Incomplete);
        self.response.status = match error.kind {
            ErrorKind::Cancelled => ResponseStatus::Cancelled,
            _ => ResponseStatus::Failed,
        };
        self.response.error =
            Some(ResponseError { code: error_code(error).into(), message: error.message.clone() });
        let response = self.response_value();
        self.emit(out, "response.failed", json!({ "response": response }));
    }

    fn emit(&mut self, out: &mut Events, name: &'static str, body: Value) {
        let sequence_number = self.next_sequence_number;
        self.next_sequence_number += 1;
        let mut event = json!({ "type": name, "sequence_number": sequence_number });
        if let (Value::Object(event), Value::Object(body)) = (&mut event, body) {
            event.extend(body);
        }
        out.frames.push((sequence_number, SseFrame::named(name, to_json(&event))));
    }

    fn response_value(&self) -> Value {
        json!(self.response)
    }

    /// Ids of output items derive from the response id and the item's position, so a replay
    /// gives the same ids.
    fn item_id(&self, prefix: &str) -> String {
        let suffix = self.response.id.strip_prefix("resp_").unwrap_or(&self.response.id);
        format!("{prefix}_{suffix}_{}", self.response.output.len())
    }

    fn item_id_at(&self, output_index: usize) -> String {
        match &self.response.output[output_index] {
            OutputItem::Message { id, .. }
            | OutputItem::FunctionCall { id, .. }
            | OutputItem::Reasoning { id, .. } => id.clone(),
        }
    }

    fn content_mut(&mut self, output_index: usize) -> Option<&mut OutputContent> {
        match &mut self.response.output[output_index] {
            OutputItem::Message { content, .. } | OutputItem::Reasoning { content, .. } => {
                content.first_mut()
            }
            OutputItem::FunctionCall { .. } => None,
        }
    }
}

struct Events {
    frames: Vec<(u64, SseFrame)>,
}

fn usage_to_wire(usage: &TokenUsage) -> ResponseUsage {
    ResponseUsage {
        input_tokens: usage.input_tokens,
        input_tokens_details: InputTokensDetails { cached_tokens: usage.cached_input_tokens },
        output_tokens: usage.output_tokens,
        total_tokens: usage.total_tokens(),
    }
}

/// OpenAI's response error codes, where one fits.
fn error_code(error: &StreamError) -> &'static str {
    match error.kind {
        ErrorKind::InvalidRequest => "invalid_prompt",
        ErrorKind::Overloaded => "rate_limit_exceeded",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Timeout | ErrorKind::Upstream | ErrorKind::Internal => "server_error",
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
