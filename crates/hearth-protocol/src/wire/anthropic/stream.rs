//! Anthropic message streams ↔ canonical events.

use std::collections::BTreeMap;

use serde_json::Value;

use super::convert::{usage_from_wire, usage_to_wire};
use super::{
    BlockDelta, DeltaUsage, ErrorBody, ErrorDetail, MessageDeltaBody, MessageResponse, StartBlock,
    StreamEvent, Usage,
};
use crate::canonical::{CanonicalEvent, ErrorKind, StopReason, StreamError, TokenUsage};
use crate::wire::{to_json, DecodeError, SseFrame};

const FORMAT: &str = "Anthropic";

/// What a content block of the upstream stream turned into.
#[derive(Debug, Clone, Copy)]
enum UpstreamBlock {
    Text,
    Tool(u32),
    Thinking,
    /// Server-tool and other blocks: not part of the canonical answer.
    Skipped,
}

/// The kind of block the encoder has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Thinking,
    Text,
    Tool,
}

/// Reads an Anthropic stream. Usage is split over `message_start` (input) and `message_delta`
/// (output); each part is emitted as a cumulative snapshot as it arrives.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    blocks: BTreeMap<u32, UpstreamBlock>,
    num_tools: u32,
    usage: TokenUsage,
    stop: Option<StopReason>,
    done: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one SSE event. The event name repeats the data's `type`, so only `data` is read.
    pub fn push(&mut self, data: &str) -> Result<Vec<CanonicalEvent>, DecodeError> {
        if self.done || data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let event: StreamEvent = serde_json::from_str(data).map_err(malformed)?;
        Ok(match event {
            StreamEvent::MessageStart { message } => {
                self.usage = usage_from_wire(&message.usage);
                vec![
                    CanonicalEvent::MessageStart { model: message.model },
                    CanonicalEvent::Usage { usage: self.usage },
                ]
            }
            StreamEvent::ContentBlockStart { index, content_block } => {
                self.start_block(index, content_block)
            }
            StreamEvent::ContentBlockDelta { index, delta } => self.delta(index, delta)?,
            StreamEvent::MessageDelta { delta, usage } => self.message_delta(delta, usage),
            StreamEvent::MessageStop => {
                self.done = true;
                let reason = self.stop.unwrap_or(StopReason::Stop);
                vec![CanonicalEvent::Usage { usage: self.usage }, CanonicalEvent::Finish { reason }]
            }
            StreamEvent::Error { error } => {
                self.done = true;
                vec![CanonicalEvent::Error { error: error_from_wire(&error) }]
            }
            StreamEvent::ContentBlockStop { .. } | StreamEvent::Ping | StreamEvent::Other => {
                Vec::new()
            }
        })
    }

    fn start_block(&mut self, index: u32, block: StartBlock) -> Vec<CanonicalEvent> {
        match block {
            StartBlock::Text { text } => {
                self.blocks.insert(index, UpstreamBlock::Text);
                if text.is_empty() {
                    Vec::new()
                } else {
                    vec![CanonicalEvent::TextDelta { text }]
                }
            }
            StartBlock::ToolUse { id, name, input } => {
                let tool = self.num_tools;
                self.num_tools += 1;
                self.blocks.insert(index, UpstreamBlock::Tool(tool));
                let mut out = vec![CanonicalEvent::ToolCallStart { index: tool, id, name }];
                // The input normally streams as JSON deltas after an empty `{}` here.
                if input.as_object().is_some_and(|o| !o.is_empty()) {
                    out.push(CanonicalEvent::ToolCallDelta {
                        index: tool,
                        arguments: input.to_string(),
                    });
                }
                out
            }
            StartBlock::Thinking { thinking, .. } => {
                self.blocks.insert(index, UpstreamBlock::Thinking);
                if thinking.is_empty() {
                    Vec::new()
                } else {
                    vec![CanonicalEvent::ReasoningDelta { text: thinking }]
                }
            }
            StartBlock::Other => {
                self.blocks.insert(index, UpstreamBlock::Skipped);
                Vec::new()
            }
        }
    }

    fn delta(&mut self, index: u32, delta: BlockDelta) -> Result<Vec<CanonicalEvent>, DecodeError> {
        let block = self.blocks.get(&index).copied().ok_or_else(|| {
            malformed(format!("delta for content block {index}, which never started"))
        })?;
        Ok(match (block, delta) {
            (UpstreamBlock::Text, BlockDelta::TextDelta { text }) => {
                vec![CanonicalEvent::TextDelta { text }]
            }
            (UpstreamBlock::Thinking, BlockDelta::ThinkingDelta { thinking })
                if !thinking.is_empty() =>
            {
                vec![CanonicalEvent::ReasoningDelta { text: thinking }]
            }
            (UpstreamBlock::Tool(tool), BlockDelta::InputJsonDelta { partial_json })
                if !partial_json.is_empty() =>
            {
                vec![CanonicalEvent::ToolCallDelta { index: tool, arguments: partial_json }]
            }
            _ => Vec::new(),
        })
    }

    fn message_delta(&mut self, delta: MessageDeltaBody, usage: DeltaUsage) -> Vec<CanonicalEvent> {
        if let Some(reason) = delta.stop_reason {
            self.stop = Some(StopReason::from_anthropic(&reason));
        }
        if usage.input_tokens.is_some() {
            self.usage = usage_from_wire(&Usage {
                input_tokens: usage.input_tokens.unwrap_or(0),
                output_tokens: usage.output_tokens,
                cache_creation_input_tokens: usage.cache_creation_input_tokens,
                cache_read_input_tokens: usage.cache_read_input_tokens,
            });
        }
        self.usage.output_tokens = usage.output_tokens;
        vec![CanonicalEvent::Usage { usage: self.usage }]
    }

    /// Call at the end of the byte stream: an Anthropic stream is complete only after
    /// `message_stop` (or an `error` event).
    pub fn finish(&mut self) -> Result<Vec<CanonicalEvent>, DecodeError> {
        if self.done {
            Ok(Vec::new())
        } else {
            Err(DecodeError::Truncated { format: FORMAT })
        }
    }
}

fn malformed(e: impl ToString) -> DecodeError {
    DecodeError::Malformed { format: FORMAT, message: e.to_string() }
}

fn error_from_wire(error: &ErrorDetail) -> StreamError {
    let kind = match error.kind.as_str() {
        "overloaded_error" | "rate_limit_error" => ErrorKind::Overloaded,
        "invalid_request_error" | "request_too_large" => ErrorKind::InvalidRequest,
        _ => ErrorKind::Upstream,
    };
    StreamError::new(kind, error.message.clone())
}

/// Writes canonical events as Anthropic's event sequence: `message_start`,
/// `content_block_start/delta/stop` per block, `message_delta`, `message_stop`.
///
/// `message_start` is held until the first content event, so that input usage reported right
/// after the start (as every producer does) is already in it.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    start_pending: bool,
    started: bool,
    open: Option<u32>,
    open_kind: BlockKind,
    next_block: u32,
    tool_blocks: BTreeMap<u32, u32>,
    usage: TokenUsage,
}

impl StreamEncoder {
    pub fn new(id: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            model: model.into(),
            start_pending: false,
            started: false,
            open: None,
            open_kind: BlockKind::Tool,
            next_block: 0,
            tool_blocks: BTreeMap::new(),
            usage: TokenUsage::default(),
        }
    }

    pub fn encode(&mut self, event: &CanonicalEvent) -> Vec<SseFrame> {
        let mut out = Vec::new();
        match event {
            CanonicalEvent::MessageStart { .. } => self.start_pending = true,
            CanonicalEvent::Usage { usage } => self.usage = *usage,
            CanonicalEvent::TextDelta { text } => {
                self.flush_start(&mut out);
                if !(self.open.is_some() && self.open_kind == BlockKind::Text) {
                    let block = StartBlock::Text { text: String::new() };
                    self.open_block(block, BlockKind::Text, &mut out);
                }
                let delta = BlockDelta::TextDelta { text: text.clone() };
                out.push(self.block_delta(self.open.unwrap_or(0), delta));
            }
            CanonicalEvent::ReasoningDelta { text } => {
                self.flush_start(&mut out);
                if !(self.open.is_some() && self.open_kind == BlockKind::Thinking) {
                    let block =
                        StartBlock::Thinking { thinking: String::new(), signature: String::new() };
                    self.open_block(block, BlockKind::Thinking, &mut out);
                }
                let delta = BlockDelta::ThinkingDelta { thinking: text.clone() };
                out.push(self.block_delta(self.open.unwrap_or(0), delta));
            }
            CanonicalEvent::ToolCallStart { index, id, name } => {
                self.flush_start(&mut out);
                let block = StartBlock::ToolUse {
                    id: id.clone(),
                    name: name.clone(),
                    input: Value::Object(Default::default()),
                };
                let at = self.open_block(block, BlockKind::Tool, &mut out);
                self.tool_blocks.insert(*index, at);
            }
            CanonicalEvent::ToolCallDelta { index, arguments } => {
                if let Some(&at) = self.tool_blocks.get(index) {
                    let delta = BlockDelta::InputJsonDelta { partial_json: arguments.clone() };
                    out.push(self.block_delta(at, delta));
                }
            }
            CanonicalEvent::Finish { reason } => self.finish(*reason, &mut out),
            CanonicalEvent::Error { error } => out.push(error_frame(error)),
        }
        out
    }

    fn flush_start(&mut self, out: &mut Vec<SseFrame>) {
        if self.started {
            return;
        }
        self.started = true;
        self.start_pending = false;
        let usage = usage_to_wire(&self.usage);
        let message = MessageResponse {
            id: self.id.clone(),
            kind: "message".into(),
            role: "assistant".into(),
            model: self.model.clone(),
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage,
        };
        out.push(frame("message_start", &StreamEvent::MessageStart { message }));
    }

    fn open_block(&mut self, block: StartBlock, kind: BlockKind, out: &mut Vec<SseFrame>) -> u32 {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some(index);
        self.open_kind = kind;
        out.push(frame(
            "content_block_start",
            &StreamEvent::ContentBlockStart { index, content_block: block },
        ));
        index
    }

    fn close_block(&mut self, out: &mut Vec<SseFrame>) {
        if let Some(index) = self.open.take() {
            out.push(frame("content_block_stop", &StreamEvent::ContentBlockStop { index }));
        }
    }

    fn block_delta(&self, index: u32, delta: BlockDelta) -> SseFrame {
        frame("content_block_delta", &StreamEvent::ContentBlockDelta { index, delta })
    }

    fn finish(&mut self, reason: StopReason, out: &mut Vec<SseFrame>) {
        self.flush_start(out);
        self.close_block(out);
        let wire = usage_to_wire(&self.usage);
        let delta = StreamEvent::MessageDelta {
            delta: MessageDeltaBody {
                stop_reason: Some(reason.as_anthropic().into()),
                stop_sequence: None,
            },
            usage: DeltaUsage {
                output_tokens: wire.output_tokens,
                input_tokens: Some(wire.input_tokens),
                cache_creation_input_tokens: None,
                cache_read_input_tokens: wire.cache_read_input_tokens,
            },
        };
        out.push(frame("message_delta", &delta));
        out.push(frame("message_stop", &StreamEvent::MessageStop));
    }
}

fn frame(name: &'static str, event: &StreamEvent) -> SseFrame {
    SseFrame::named(name, to_json(event))
}

/// Anthropic's in-stream `error` event; nothing follows it.
fn error_frame(error: &StreamError) -> SseFrame {
    let kind = match error.kind {
        ErrorKind::InvalidRequest => "invalid_request_error",
        ErrorKind::Overloaded => "overloaded_error",
        ErrorKind::Timeout => "timeout_error",
        ErrorKind::Cancelled | ErrorKind::Upstream | ErrorKind::Internal => "api_error",
    };
    let body = ErrorBody {
        kind: "error".into(),
        error: ErrorDetail { kind: kind.into(), message: error.message.clone() },
    };
    SseFrame::named("error", to_json(&body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage(i: u64, o: u64, c: u64) -> TokenUsage {
        TokenUsage { input_tokens: i, output_tokens: o, cached_input_tokens: c }
    }

    #[test]
    fn decodes_a_tool_use_stream() {
        let mut d = StreamDecoder::new();
        let datas = [
            json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "claude", "content": [], "usage": {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "ok"}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
            json!({"type": "message_stop"}),
        ];
        let events: Vec<_> = datas.iter().flat_map(|v| d.push(&v.to_string()).unwrap()).collect();
        assert_eq!(events[0], CanonicalEvent::MessageStart { model: "claude".into() });
        assert_eq!(events[1], CanonicalEvent::Usage { usage: usage(8, 1, 3) });
        assert_eq!(events[2], CanonicalEvent::ReasoningDelta { text: "hmm".into() });
        assert_eq!(events[3], CanonicalEvent::TextDelta { text: "ok".into() });
        assert_eq!(
            events[4],
            CanonicalEvent::ToolCallStart { index: 0, id: "t".into(), name: "f".into() }
        );
        assert_eq!(events[5], CanonicalEvent::ToolCallDelta { index: 0, arguments: "{}".into() });
        assert_eq!(events[events.len() - 2], CanonicalEvent::Usage { usage: usage(8, 7, 3) });
        assert_eq!(events.last(), Some(&CanonicalEvent::Finish { reason: StopReason::ToolCalls }));
        assert!(d.finish().unwrap().is_empty());
    }

    #[test]
    fn in_band_errors_and_cuts_are_reported() {
        let mut d = StreamDecoder::new();
        let ev = d
            .push(r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#)
            .unwrap();
        assert_eq!(ev, vec![CanonicalEvent::error(ErrorKind::Overloaded, "busy")]);
        let mut d = StreamDecoder::new();
        d.push(&json!({"type": "message_start", "message": {"model": "c"}}).to_string()).unwrap();
        assert_eq!(d.finish(), Err(DecodeError::Truncated { format: FORMAT }));
    }

    #[test]
    fn encoder_output_decodes_back_to_the_same_events() {
        let events = [
            CanonicalEvent::MessageStart { model: "m".into() },
            CanonicalEvent::Usage { usage: usage(4, 0, 1) },
            CanonicalEvent::TextDelta { text: "a".into() },
            CanonicalEvent::TextDelta { text: "b".into() },
            CanonicalEvent::ToolCallStart { index: 0, id: "t".into(), name: "f".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"x\":1}".into() },
            CanonicalEvent::Usage { usage: usage(4, 9, 1) },
            CanonicalEvent::Finish { reason: StopReason::ToolCalls },
        ];
        let mut enc = StreamEncoder::new("msg_1", "m");
        let frames: Vec<SseFrame> = events.iter().flat_map(|e| enc.encode(e)).collect();
        let names: Vec<_> = frames.iter().map(|f| f.event.unwrap()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let mut dec = StreamDecoder::new();
        let back: Vec<_> = frames.iter().flat_map(|f| dec.push(&f.data).unwrap()).collect();
        let significant = |e: &&CanonicalEvent| !matches!(e, CanonicalEvent::Usage { .. });
        assert_eq!(
            back.iter().filter(significant).collect::<Vec<_>>(),
            events.iter().filter(significant).collect::<Vec<_>>()
        );
        assert_eq!(back[back.len() - 2], CanonicalEvent::Usage { usage: usage(4, 9, 1) });
    }
}
