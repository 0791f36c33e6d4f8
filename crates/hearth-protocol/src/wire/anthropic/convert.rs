//! Anthropic message requests and responses ↔ the canonical model.

use super::{
    InputBlock, InputContent, InputMessage, MessageResponse, MessagesRequest, OutputBlock, Role,
    SystemPrompt, ThinkingConfig, Tool, ToolChoice as WireToolChoice, ToolChoiceMode,
    ToolResultContent, Usage,
};
use crate::canonical::{
    CanonicalRequest, CanonicalResponse, ContentBlock, Message, MessageRole, SamplingOptions,
    Thinking, TokenUsage, ToolChoice, ToolDefinition,
};

/// The smallest thinking budget Anthropic accepts.
const MIN_THINKING_BUDGET: u32 = 1024;
use crate::wire::empty_object_schema;
use crate::ValidationError;

/// An entry surface's request → canonical. Errors name the Anthropic field path.
pub fn to_canonical(req: MessagesRequest) -> Result<CanonicalRequest, ValidationError> {
    let messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message_to_canonical(m, &format!("messages[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let tools = req
        .tools
        .into_iter()
        .enumerate()
        .map(|(i, t)| tool_to_canonical(t, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CanonicalRequest {
        model: req.model,
        system: req.system.map(system_text),
        messages,
        prompt: None,
        tools,
        parallel_tool_calls: req
            .tool_choice
            .as_ref()
            .and_then(|c| c.disable_parallel_tool_use)
            .map(|disabled| !disabled),
        tool_choice: req.tool_choice.map(|c| match c.mode {
            ToolChoiceMode::Auto => ToolChoice::Auto,
            ToolChoiceMode::Any => ToolChoice::Required,
            ToolChoiceMode::None => ToolChoice::None,
            ToolChoiceMode::Tool { name } => ToolChoice::Tool { name },
        }),
        chat_template_kwargs: None,
        thinking: req.thinking.map(|t| match t {
            ThinkingConfig::Enabled { budget_tokens } => {
                Thinking { enabled: true, budget_tokens: Some(budget_tokens) }
            }
            ThinkingConfig::Disabled => Thinking { enabled: false, budget_tokens: None },
        }),
        // No structured-output field in this API.
        response_format: None,
        sampling: SamplingOptions {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            ..Default::default()
        },
        max_tokens: Some(req.max_tokens),
        stop: req.stop_sequences,
        stream: req.stream.unwrap_or(false),
        metadata: req.metadata,
        via_responses_api: false,
        session: None,
    })
}

fn system_text(system: SystemPrompt) -> String {
    match system {
        SystemPrompt::Text(text) => text,
        SystemPrompt::Blocks(blocks) => {
            blocks.into_iter().map(|b| b.text).collect::<Vec<_>>().join("\n\n")
        }
    }
}

fn message_to_canonical(message: InputMessage, path: &str) -> Result<Message, ValidationError> {
    let role = match message.role {
        Role::User => MessageRole::User,
        Role::Assistant => MessageRole::Assistant,
    };
    let blocks = match message.content {
        InputContent::Text(text) => vec![InputBlock::Text { text }],
        InputContent::Blocks(blocks) => blocks,
    };
    let mut content = Vec::new();
    for (j, block) in blocks.into_iter().enumerate() {
        let path = format!("{path}.content[{j}]");
        if let Some(block) = block_to_canonical(block, &path)? {
            content.push(block);
        }
    }
    Ok(Message { role, content })
}

/// Thinking blocks in the history are dropped: the canonical request carries no past reasoning,
/// and providers other than Anthropic could not take it back.
fn block_to_canonical(
    block: InputBlock,
    path: &str,
) -> Result<Option<ContentBlock>, ValidationError> {
    Ok(match block {
        InputBlock::Text { text } => Some(ContentBlock::Text { text }),
        InputBlock::ToolUse { id, name, input } => Some(ContentBlock::ToolUse { id, name, input }),
        InputBlock::ToolResult { tool_use_id, content, is_error } => {
            let content = match content {
                None => String::new(),
                Some(ToolResultContent::Text(text)) => text,
                Some(ToolResultContent::Blocks(blocks)) => tool_result_text(blocks, path)?,
            };
            Some(ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error: is_error.unwrap_or(false),
            })
        }
        InputBlock::Thinking { .. } | InputBlock::RedactedThinking { .. } => None,
        InputBlock::Image { .. } | InputBlock::Document { .. } => {
            return Err(unsupported_block(path));
        }
    })
}

fn tool_result_text(blocks: Vec<InputBlock>, path: &str) -> Result<String, ValidationError> {
    blocks
        .into_iter()
        .enumerate()
        .map(|(k, block)| match block {
            InputBlock::Text { text } => Ok(text),
            _ => Err(unsupported_block(&format!("{path}.content[{k}]"))),
        })
        .collect()
}

fn unsupported_block(path: &str) -> ValidationError {
    ValidationError::new(
        format!("{path}.type"),
        "only text, tool_use and tool_result blocks are supported",
    )
}

fn tool_to_canonical(tool: Tool, i: usize) -> Result<ToolDefinition, ValidationError> {
    if let Some(kind) = tool.kind.as_deref().filter(|k| *k != "custom") {
        return Err(ValidationError::new(
            format!("tools[{i}].type"),
            format!("server tool `{kind}` is not supported; only client tools"),
        ));
    }
    Ok(ToolDefinition {
        name: tool.name,
        description: tool.description,
        parameters: tool.input_schema.unwrap_or_else(empty_object_schema),
    })
}

/// Canonical → the request a provider adapter sends upstream. Anthropic requires `max_tokens`,
/// so `default_max_tokens` fills it when the caller set none. Seed and penalties have no
/// Anthropic equivalent and are dropped; temperature is capped at Anthropic's maximum of 1.
/// The request's `tool_choice`; a request that only disables parallel calls gets `auto` to
/// carry `disable_parallel_tool_use`, which rides on `tool_choice` in this API.
fn tool_choice(req: &CanonicalRequest) -> Option<ToolChoice> {
    let only_the_flag = req.parallel_tool_calls == Some(false) && !req.tools.is_empty();
    req.tool_choice.clone().or(only_the_flag.then_some(ToolChoice::Auto))
}

pub fn from_canonical(
    req: &CanonicalRequest,
    model: &str,
    default_max_tokens: u32,
) -> MessagesRequest {
    MessagesRequest {
        model: model.to_string(),
        max_tokens: req.max_tokens.unwrap_or(default_max_tokens),
        messages: messages_to_wire(&req.messages),
        system: req.system.clone().map(SystemPrompt::Text),
        tools: req
            .tools
            .iter()
            .map(|t| Tool {
                kind: None,
                name: t.name.clone(),
                description: t.description.clone(),
                input_schema: Some(t.parameters.clone()),
            })
            .collect(),
        tool_choice: tool_choice(req).as_ref().map(|c| WireToolChoice {
            mode: match c {
                ToolChoice::Auto => ToolChoiceMode::Auto,
                ToolChoice::Required => ToolChoiceMode::Any,
                ToolChoice::None => ToolChoiceMode::None,
                ToolChoice::Tool { name } => ToolChoiceMode::Tool { name: name.clone() },
            },
            // `none` takes no such field.
            disable_parallel_tool_use: match c {
                ToolChoice::None => None,
                _ => req.parallel_tool_calls.map(|parallel| !parallel),
            },
        }),
        temperature: req.sampling.temperature.map(|t| t.min(1.0)),
        top_p: req.sampling.top_p,
        top_k: req.sampling.top_k,
        stop_sequences: req.stop.clone(),
        stream: Some(true),
        metadata: None,
        thinking: req.thinking.map(|t| match t {
            // Anthropic's smallest budget.
            Thinking { enabled: true, budget_tokens } => ThinkingConfig::Enabled {
                budget_tokens: budget_tokens
                    .unwrap_or(MIN_THINKING_BUDGET)
                    .max(MIN_THINKING_BUDGET),
            },
            Thinking { enabled: false, .. } => ThinkingConfig::Disabled,
        }),
    }
}

/// Anthropic wants roles to alternate, and all results of one turn's tool calls in one user
/// message; consecutive canonical messages of one role are merged for both reasons.
fn messages_to_wire(messages: &[Message]) -> Vec<InputMessage> {
    let mut out: Vec<InputMessage> = Vec::new();
    for message in messages {
        let role = match message.role {
            MessageRole::User => Role::User,
            MessageRole::Assistant => Role::Assistant,
        };
        let blocks: Vec<InputBlock> = message.content.iter().filter_map(block_to_wire).collect();
        match out.last_mut() {
            Some(InputMessage { role: last, content: InputContent::Blocks(existing) })
                if *last == role =>
            {
                existing.extend(blocks)
            }
            _ => out.push(InputMessage { role, content: InputContent::Blocks(blocks) }),
        }
    }
    out
}

/// Empty text blocks are refused by Anthropic, so they are left out.
fn block_to_wire(block: &ContentBlock) -> Option<InputBlock> {
    Some(match block {
        ContentBlock::Text { text } if text.is_empty() => return None,
        ContentBlock::Text { text } => InputBlock::Text { text: text.clone() },
        ContentBlock::ToolUse { id, name, input } => {
            InputBlock::ToolUse { id: id.clone(), name: name.clone(), input: input.clone() }
        }
        ContentBlock::ToolResult { tool_use_id, content, is_error } => InputBlock::ToolResult {
            tool_use_id: tool_use_id.clone(),
            content: Some(ToolResultContent::Text(content.clone())),
            is_error: is_error.then_some(true),
        },
    })
}

/// A whole canonical response → Anthropic's message body.
pub fn response_from_canonical(resp: &CanonicalResponse, id: &str) -> MessageResponse {
    let thinking = resp.reasoning.iter().map(|thinking| OutputBlock::Thinking {
        thinking: thinking.clone(),
        signature: String::new(),
    });
    let answer = resp.content.iter().filter_map(|b| match b {
        ContentBlock::Text { text } => Some(OutputBlock::Text { text: text.clone() }),
        ContentBlock::ToolUse { id, name, input } => {
            Some(OutputBlock::ToolUse { id: id.clone(), name: name.clone(), input: input.clone() })
        }
        ContentBlock::ToolResult { .. } => None,
    });
    let content = thinking.chain(answer).collect();
    MessageResponse {
        id: id.to_string(),
        kind: "message".into(),
        role: "assistant".into(),
        model: resp.model.clone(),
        content,
        stop_reason: Some(resp.stop_reason.as_anthropic().into()),
        stop_sequence: None,
        usage: usage_to_wire(&resp.usage),
    }
}

pub(crate) fn usage_to_wire(usage: &TokenUsage) -> Usage {
    Usage {
        input_tokens: usage.uncached_input_tokens(),
        output_tokens: usage.output_tokens,
        cache_creation_input_tokens: None,
        cache_read_input_tokens: Some(usage.cached_input_tokens),
    }
}

pub(crate) fn usage_from_wire(usage: &Usage) -> TokenUsage {
    let cached = usage.cache_read_input_tokens.unwrap_or(0);
    TokenUsage {
        input_tokens: usage.input_tokens + cached + usage.cache_creation_input_tokens.unwrap_or(0),
        output_tokens: usage.output_tokens,
        cached_input_tokens: cached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::StopReason;
    use serde_json::{json, Value};

    fn parse(body: Value) -> Result<CanonicalRequest, ValidationError> {
        to_canonical(serde_json::from_value(body).unwrap())
    }

    #[test]
    fn thinking_switches_go_both_ways() {
        let body = |thinking: Value| {
            json!({"model": "c", "max_tokens": 5000, "thinking": thinking,
            "messages": [{"role": "user", "content": "hi"}]})
        };
        let on = parse(body(json!({"type": "enabled", "budget_tokens": 2048}))).unwrap();
        assert_eq!(on.thinking, Some(Thinking { enabled: true, budget_tokens: Some(2048) }));
        assert_eq!(
            from_canonical(&on, "claude", 4096).thinking,
            Some(ThinkingConfig::Enabled { budget_tokens: 2048 })
        );
        let off = parse(body(json!({"type": "disabled"}))).unwrap();
        assert_eq!(from_canonical(&off, "claude", 4096).thinking, Some(ThinkingConfig::Disabled));
        // A switch from elsewhere, without a budget, gets Anthropic's smallest.
        let mut other = off.clone();
        other.thinking = Some(Thinking { enabled: true, budget_tokens: None });
        assert_eq!(
            from_canonical(&other, "claude", 4096).thinking,
            Some(ThinkingConfig::Enabled { budget_tokens: MIN_THINKING_BUDGET })
        );
        assert_eq!(from_canonical(&parse(body(Value::Null)).unwrap(), "c", 4096).thinking, None);
    }

    #[test]
    fn system_tools_and_results_reach_the_canonical_request() {
        let req = parse(json!({
            "model": "claude", "max_tokens": 50,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "rain"}], "is_error": false}]}
            ],
            "tools": [{"name": "w", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"}, "stop_sequences": ["X"]
        }))
        .unwrap();
        assert_eq!(req.system.as_deref(), Some("be brief"));
        assert_eq!(req.messages[1].content.len(), 1, "thinking is dropped");
        assert_eq!(
            req.messages[2].content[0],
            ContentBlock::ToolResult {
                tool_use_id: "t1".into(),
                content: "rain".into(),
                is_error: false
            }
        );
        assert_eq!(req.tool_choice, Some(ToolChoice::Required));
        assert_eq!((req.max_tokens, req.stop.clone()), (Some(50), vec!["X".to_string()]));
    }

    #[test]
    fn images_and_server_tools_are_refused_by_path() {
        let err = parse(json!({"model": "c", "max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {}}]}]}))
        .unwrap_err();
        assert_eq!(err.field, "messages[0].content[0].type");
        let err = parse(json!({"model": "c", "max_tokens": 1, "messages": [],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}))
        .unwrap_err();
        assert_eq!(err.field, "tools[0].type");
    }

    #[test]
    fn consecutive_tool_results_merge_into_one_user_message() {
        let req = CanonicalRequest {
            model: "m".into(),
            messages: vec![
                Message::text(MessageRole::User, "go"),
                Message {
                    role: MessageRole::Assistant,
                    content: vec![
                        ContentBlock::ToolUse {
                            id: "a".into(),
                            name: "f".into(),
                            input: json!({}),
                        },
                        ContentBlock::ToolUse {
                            id: "b".into(),
                            name: "f".into(),
                            input: json!({}),
                        },
                    ],
                },
                Message {
                    role: MessageRole::User,
                    content: vec![ContentBlock::ToolResult {
                        tool_use_id: "a".into(),
                        content: "1".into(),
                        is_error: false,
                    }],
                },
                Message {
                    role: MessageRole::User,
                    content: vec![ContentBlock::ToolResult {
                        tool_use_id: "b".into(),
                        content: "2".into(),
                        is_error: true,
                    }],
                },
            ],
            ..Default::default()
        };
        let wire = from_canonical(&req, "claude", 1024);
        assert_eq!(wire.max_tokens, 1024);
        assert_eq!(wire.messages.len(), 3);
        let InputContent::Blocks(blocks) = &wire.messages[2].content else { panic!() };
        assert_eq!(blocks.len(), 2);
        let back = to_canonical(wire).unwrap();
        assert_eq!(back.messages[2].content.len(), 2);
    }

    #[test]
    fn usage_adds_cache_reads_back_into_input() {
        let u = Usage {
            input_tokens: 3,
            output_tokens: 2,
            cache_creation_input_tokens: Some(1),
            cache_read_input_tokens: Some(10),
        };
        let c = usage_from_wire(&u);
        assert_eq!((c.input_tokens, c.cached_input_tokens), (14, 10));
        let resp = CanonicalResponse {
            reasoning: None,
            model: "m".into(),
            content: vec![],
            stop_reason: StopReason::Length,
            usage: c,
        };
        let body = response_from_canonical(&resp, "msg_1");
        assert_eq!(body.stop_reason.as_deref(), Some("max_tokens"));
        assert_eq!(body.usage.cache_read_input_tokens, Some(10));
    }
}
