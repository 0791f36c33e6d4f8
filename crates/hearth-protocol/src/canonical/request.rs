//! The canonical chat request: what every entry surface parses into and every provider adapter
//! translates from. It carries only what all three wire formats (OpenAI, Anthropic, Gemini) can
//! express, so a request never silently loses meaning on its way through.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::sampling::{check_max_tokens, check_stop, check_value};
use crate::OutputConstraint;
use crate::ValidationError;

/// One chat request, independent of any wire format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanonicalRequest {
    /// The model id the caller asked for (a catalog id, or `provider/model`).
    pub model: String,
    /// The system prompt. OpenAI's system and developer messages are joined into it, because
    /// Anthropic and Gemini take exactly one system prompt outside the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The conversation. Empty when the request is a [`RawPrompt`] instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    /// Text or token ids given to the model as they are, with no chat template: OpenAI's
    /// `/v1/completions`, and Cog predictions of models without a chat template. Only local
    /// routes serve it; an upstream route refuses it (and the router moves on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<RawPrompt>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may make several tool calls in one answer (OpenAI's
    /// `parallel_tool_calls`, Anthropic's `disable_parallel_tool_use` inverted); unset, it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// Extra variables for a local model's chat template (`enable_thinking`), as vLLM and
    /// llama.cpp take them; upstream providers have no template and ignore them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Whether the model should reason before it answers (Anthropic's `thinking`). A local
    /// model's template gets it as `enable_thinking` (unless `chat_template_kwargs` says
    /// otherwise); Anthropic gets it back as `thinking`; other providers have no switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Thinking>,
    /// A grammar the answer must match (OpenAI's `response_format` `json_schema` or
    /// `json_object`); local models enforce it token by token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<OutputConstraint>,
    #[serde(default)]
    pub sampling: SamplingOptions,
    /// Upper bound on generated tokens; `None` leaves the provider's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Whether the caller wants a stream. Upstream calls always stream; this only decides how
    /// the entry surface answers.
    #[serde(default)]
    pub stream: bool,
    /// Caller metadata for the spend ledger; the gateway validates its shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// The caller spoke OpenAI's Responses API. An OpenAI route then calls OpenAI's own
    /// Responses API, which also serves the models chat completions does not (the `-pro` and
    /// codex models); every other route translates the request as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub via_responses_api: bool,
    /// Which conversation the request belongs to (`x-session-affinity`): a route over several
    /// engine replicas sends a session's requests to the replica holding its prefix cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// A prompt that is not a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawPrompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// Who wrote a message. System prompts live in [`CanonicalRequest::system`]; tool results are
/// user content, as in Anthropic's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: MessageRole,
    pub content: Vec<ContentBlock>,
}

impl Message {
    pub fn text(role: MessageRole, text: impl Into<String>) -> Self {
        Self { role, content: vec![ContentBlock::Text { text: text.into() }] }
    }

    /// The message's text blocks joined, ignoring tool blocks.
    pub fn joined_text(&self) -> String {
        self.content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    /// The assistant asks for a tool call. `input` is the parsed arguments object.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// The caller answers a tool call.
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// A reasoning switch, and the most tokens the reasoning may take when the provider bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thinking {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u32>,
}

/// A tool the model may call; `parameters` is a JSON schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call, any tool.
    Required,
    /// A call to this tool.
    Tool { name: String },
}

impl ToolChoice {
    /// OpenAI's string modes, the same on chat completions and the Responses API.
    pub fn from_openai_mode(mode: &str) -> Result<Self, ValidationError> {
        match mode {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            "required" => Ok(Self::Required),
            other => Err(ValidationError::new(
                "tool_choice",
                format!("`{other}` is not one of `auto`, `none`, `required`"),
            )),
        }
    }

    /// The OpenAI string mode; `None` for a named tool, which each API writes its own way.
    pub fn openai_mode(&self) -> Option<&'static str> {
        match self {
            Self::Auto => Some("auto"),
            Self::None => Some("none"),
            Self::Required => Some("required"),
            Self::Tool { .. } => None,
        }
    }
}

/// Sampling knobs that the providers share. `None` leaves each provider's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Engine extensions (vLLM's names), honoured by local routes and forwarded to
    /// OpenAI-compatible servers; OpenAI, Anthropic and Gemini have no equivalent and drop them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// Keep generating past end-of-sequence tokens, up to `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
}

impl CanonicalRequest {
    /// Checks what every provider would refuse, so the caller gets one clear 4xx at the edge
    /// instead of a provider's error after failover. Field names are canonical.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.model.is_empty() {
            return Err(ValidationError::new("model", "must not be empty"));
        }
        match &self.prompt {
            None if self.messages.is_empty() => {
                return Err(ValidationError::new("messages", "must hold at least one message"));
            }
            None => {}
            Some(_) if !self.messages.is_empty() || self.system.is_some() => {
                return Err(ValidationError::new(
                    "prompt",
                    "a raw prompt cannot be combined with messages or a system prompt",
                ));
            }
            Some(RawPrompt::Text(text)) if text.is_empty() => {
                return Err(ValidationError::new("prompt", "must not be empty"));
            }
            Some(RawPrompt::Tokens(ids)) if ids.is_empty() => {
                return Err(ValidationError::new("prompt", "must hold at least one token id"));
            }
            Some(_) => {}
        }
        if let Some(max_tokens) = self.max_tokens {
            check_max_tokens(u64::from(max_tokens))?;
        }
        self.validate_sampling()?;
        self.validate_tools()?;
        check_stop(&self.stop)
    }

    /// The values given, by the same rules the engine's parameters follow.
    fn validate_sampling(&self) -> Result<(), ValidationError> {
        let s = &self.sampling;
        let given = [
            ("temperature", s.temperature),
            ("top_p", s.top_p),
            ("presence_penalty", s.presence_penalty),
            ("frequency_penalty", s.frequency_penalty),
            ("min_p", s.min_p),
            ("repetition_penalty", s.repetition_penalty),
        ];
        for (field, value) in given {
            if let Some(value) = value {
                check_value(field, value)?;
            }
        }
        Ok(())
    }

    fn validate_tools(&self) -> Result<(), ValidationError> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, tool) in self.tools.iter().enumerate() {
            if tool.name.is_empty() {
                return Err(ValidationError::new(format!("tools[{i}].name"), "must not be empty"));
            }
            if !seen.insert(tool.name.as_str()) {
                return Err(ValidationError::new(
                    format!("tools[{i}].name"),
                    format!("`{}` is declared twice", tool.name),
                ));
            }
        }
        if let Some(ToolChoice::Tool { name }) = &self.tool_choice {
            if !seen.contains(name.as_str()) {
                return Err(ValidationError::new(
                    "tool_choice",
                    format!("names `{name}`, which is not among `tools`"),
                ));
            }
        }
        Ok(())
    }

    /// True when the request uses tools anywhere: declared tools or tool blocks in history.
    pub fn uses_tools(&self) -> bool {
        !self.tools.is_empty()
            || self.messages.iter().flat_map(|m| &m.content).any(|b| {
                matches!(b, ContentBlock::ToolUse { .. } | ContentBlock::ToolResult { .. })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CanonicalRequest {
        CanonicalRequest {
            model: "m".into(),
            messages: vec![Message::text(MessageRole::User, "hi")],
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_request_is_valid() {
        assert!(request().validate().is_ok());
        assert!(!request().uses_tools());
    }

    #[test]
    fn errors_name_their_field() {
        let mut r = request();
        r.messages.clear();
        assert_eq!(r.validate().unwrap_err().field, "messages");
        let mut r = request();
        r.sampling.temperature = Some(300.0);
        assert_eq!(r.validate().unwrap_err().field, "temperature");
        let mut r = request();
        let tool = ToolDefinition { name: "t".into(), description: None, parameters: Value::Null };
        r.tools = vec![tool.clone(), tool];
        assert_eq!(r.validate().unwrap_err().field, "tools[1].name");
        let mut r = request();
        r.tool_choice = Some(ToolChoice::Tool { name: "x".into() });
        assert_eq!(r.validate().unwrap_err().field, "tool_choice");
    }
}
