//! A whole (non-streamed) response, assembled from canonical events. Upstream calls always
//! stream; a caller who asked for one JSON answer gets this, encoded by its surface.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CanonicalEvent, ContentBlock, ErrorKind, StopReason, StreamError, TokenUsage};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanonicalResponse {
    pub model: String,
    /// Text and tool-use blocks in the order the model produced them.
    pub content: Vec<ContentBlock>,
    /// The model's reasoning, when it showed any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    pub stop_reason: StopReason,
    pub usage: TokenUsage,
}

impl CanonicalResponse {
    /// All text blocks joined; `None` when the answer holds no text.
    pub fn text(&self) -> Option<String> {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        (!texts.is_empty()).then(|| texts.concat())
    }

    /// The tool-use blocks as `(id, name, input)`.
    pub fn tool_calls(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.content.iter().filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
            _ => None,
        })
    }
}

/// Feeds on events until the terminal one. Tool arguments are kept as text until the end and
/// then parsed; arguments that are not valid JSON are kept as a JSON string so nothing is lost.
#[derive(Debug, Default)]
pub struct ResponseAssembler {
    model: String,
    blocks: Vec<Block>,
    reasoning: Option<String>,
    /// Tool-call index → position in `blocks`.
    tools: BTreeMap<u32, usize>,
    usage: TokenUsage,
    end: Option<Result<StopReason, StreamError>>,
}

#[derive(Debug)]
enum Block {
    Text(String),
    Tool { id: String, name: String, arguments: String },
}

impl ResponseAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, event: &CanonicalEvent) {
        match event {
            CanonicalEvent::MessageStart { model } => self.model.clone_from(model),
            CanonicalEvent::TextDelta { text } => match self.blocks.last_mut() {
                Some(Block::Text(current)) => current.push_str(text),
                _ => self.blocks.push(Block::Text(text.clone())),
            },
            CanonicalEvent::ReasoningDelta { text } => {
                self.reasoning.get_or_insert_default().push_str(text)
            }
            CanonicalEvent::ToolCallStart { index, id, name } => {
                self.tools.insert(*index, self.blocks.len());
                let tool =
                    Block::Tool { id: id.clone(), name: name.clone(), arguments: String::new() };
                self.blocks.push(tool);
            }
            CanonicalEvent::ToolCallDelta { index, arguments } => {
                if let Some(Block::Tool { arguments: args, .. }) =
                    self.tools.get(index).and_then(|&pos| self.blocks.get_mut(pos))
                {
                    args.push_str(arguments);
                }
            }
            CanonicalEvent::Usage { usage } => self.usage = *usage,
            CanonicalEvent::Finish { reason } => self.end = Some(Ok(*reason)),
            CanonicalEvent::Error { error } => self.end = Some(Err(error.clone())),
        }
    }

    /// The whole response, or the error that ended the stream.
    pub fn finish(self) -> Result<CanonicalResponse, StreamError> {
        let stop_reason = match self.end {
            Some(end) => end?,
            None => {
                return Err(StreamError::new(
                    ErrorKind::Upstream,
                    "the stream ended before it finished",
                ))
            }
        };
        let content = self.blocks.into_iter().map(Block::into_content).collect();
        Ok(CanonicalResponse {
            model: self.model,
            content,
            reasoning: self.reasoning,
            stop_reason,
            usage: self.usage,
        })
    }
}

impl Block {
    fn into_content(self) -> ContentBlock {
        match self {
            Block::Text(text) => ContentBlock::Text { text },
            Block::Tool { id, name, arguments } => {
                ContentBlock::ToolUse { id, name, input: parse_arguments(arguments) }
            }
        }
    }
}

/// Empty arguments mean "no arguments", which every format writes as `{}`.
pub(crate) fn parse_arguments(arguments: String) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Default::default());
    }
    serde_json::from_str(&arguments).unwrap_or(Value::String(arguments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn assembles_text_and_tool_calls_in_order() {
        let mut a = ResponseAssembler::new();
        let events = [
            CanonicalEvent::MessageStart { model: "m".into() },
            CanonicalEvent::TextDelta { text: "Hel".into() },
            CanonicalEvent::TextDelta { text: "lo".into() },
            CanonicalEvent::ToolCallStart { index: 0, id: "c1".into(), name: "f".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "{\"a\":".into() },
            CanonicalEvent::ToolCallDelta { index: 0, arguments: "1}".into() },
            CanonicalEvent::Usage {
                usage: TokenUsage { input_tokens: 3, output_tokens: 2, cached_input_tokens: 0 },
            },
            CanonicalEvent::Finish { reason: StopReason::ToolCalls },
        ];
        events.iter().for_each(|e| a.push(e));
        let r = a.finish().unwrap();
        assert_eq!(r.text().as_deref(), Some("Hello"));
        let calls: Vec<_> = r.tool_calls().collect();
        assert_eq!(calls, vec![("c1", "f", &json!({"a": 1}))]);
        assert_eq!(r.stop_reason, StopReason::ToolCalls);
        assert_eq!(r.usage.output_tokens, 2);
    }

    #[test]
    fn an_error_or_a_cut_stream_is_an_error() {
        let mut a = ResponseAssembler::new();
        a.push(&CanonicalEvent::error(ErrorKind::Timeout, "slow"));
        assert_eq!(a.finish().unwrap_err().kind, ErrorKind::Timeout);
        assert!(ResponseAssembler::new().finish().is_err());
    }
}
