//! A canonical request as the package's chat template takes it: system prompt and turns, tool
//! calls and tool results in the shape transformers gives templates, and the request's tools.
//! A template that does not print tools gets Hearth's tool prompt in the system message, and
//! past calls and results written as the model's own text.

use std::collections::HashMap;

use hearth_engine::ChatTraits;
use hearth_protocol::tools::{
    calls_as_text, forced_call_grammar, result_as_text, tool_declarations, tool_prompt,
};
use hearth_protocol::{
    CanonicalRequest, ChatMessage, ChatToolCall, ContentBlock, Conversation, MessageRole,
    OutputConstraint, Role, ToolChoice,
};

/// The conversation the template renders.
pub(super) fn conversation(request: &CanonicalRequest, tools: ChatTraits) -> Conversation {
    let native = tools.template_renders_tools;
    let mut system = request.system.clone();
    if !native && !request.tools.is_empty() && request.tool_choice != Some(ToolChoice::None) {
        let prompt = tool_prompt(tools.format, &request.tools);
        system = Some(match system {
            Some(text) => format!("{text}\n\n{prompt}"),
            None => prompt,
        });
    }
    let mut messages: Vec<ChatMessage> =
        system.into_iter().map(|s| ChatMessage::new(Role::System, s)).collect();
    // Tool results name the call they answer; templates also want the tool's name.
    let mut names: HashMap<&str, &str> = HashMap::new();
    for message in &request.messages {
        match message.role {
            MessageRole::Assistant => {
                for block in &message.content {
                    if let ContentBlock::ToolUse { id, name, .. } = block {
                        names.insert(id, name);
                    }
                }
                messages.push(assistant_turn(message, tools, native));
            }
            MessageRole::User => user_turns(message, &names, native, &mut messages),
        }
    }
    Conversation {
        messages,
        tools: if native && request.tool_choice != Some(ToolChoice::None) {
            tool_declarations(&request.tools)
        } else {
            Vec::new()
        },
        template_kwargs: template_kwargs(request),
    }
}

/// The caller's template variables, with a `thinking` switch as `enable_thinking` (the name
/// Qwen3's and most thinking models' templates read) unless the caller set that itself.
fn template_kwargs(request: &CanonicalRequest) -> serde_json::Map<String, serde_json::Value> {
    let mut kwargs = request.chat_template_kwargs.clone().unwrap_or_default();
    if let Some(thinking) = request.thinking {
        kwargs.entry("enable_thinking").or_insert(thinking.enabled.into());
    }
    kwargs
}

fn assistant_turn(
    message: &hearth_protocol::Message,
    tools: ChatTraits,
    native: bool,
) -> ChatMessage {
    let calls: Vec<(String, String, serde_json::Value)> = message
        .content
        .iter()
        .filter_map(|block| match block {
            ContentBlock::ToolUse { id, name, input } => {
                Some((id.clone(), name.clone(), input.clone()))
            }
            _ => None,
        })
        .collect();
    let text = message.joined_text();
    if native {
        let mut turn = ChatMessage::new(Role::Assistant, text);
        turn.tool_calls = calls
            .into_iter()
            .map(|(id, name, input)| ChatToolCall::function(id, name, input))
            .collect();
        return turn;
    }
    if calls.is_empty() {
        return ChatMessage::new(Role::Assistant, text);
    }
    let written: Vec<(String, serde_json::Value)> =
        calls.into_iter().map(|(_, name, input)| (name, input)).collect();
    let calls_text = calls_as_text(tools.format, &written);
    let content = if text.is_empty() { calls_text } else { format!("{text}\n{calls_text}") };
    ChatMessage::new(Role::Assistant, content)
}

/// A user turn: its tool results become `tool` messages (or, for a template without tools,
/// `<tool_response>` text in a user message), its text a user message.
fn user_turns(
    message: &hearth_protocol::Message,
    names: &HashMap<&str, &str>,
    native: bool,
    out: &mut Vec<ChatMessage>,
) {
    let mut responses = Vec::new();
    for block in &message.content {
        if let ContentBlock::ToolResult { tool_use_id, content, .. } = block {
            if native {
                let mut result = ChatMessage::new(Role::Tool, content.clone());
                result.tool_call_id = Some(tool_use_id.clone());
                result.name = names.get(tool_use_id.as_str()).map(|n| n.to_string());
                out.push(result);
            } else {
                responses.push(result_as_text(content));
            }
        }
    }
    let text = message.joined_text();
    if !text.is_empty() {
        responses.push(text);
    }
    if !responses.is_empty() {
        out.push(ChatMessage::new(Role::User, responses.join("\n")));
    }
}

/// The grammar a request's answer must follow: its tools' (a forced call, or a call the model
/// starts), else its `response_format`.
pub(super) fn output_constraint(
    request: &CanonicalRequest,
    tools: ChatTraits,
) -> Option<OutputConstraint> {
    if !request.tools.is_empty() {
        let choice = request.tool_choice.clone().unwrap_or(ToolChoice::Auto);
        let parallel = request.parallel_tool_calls.unwrap_or(true);
        let marker = tools.call_marker_token;
        let grammar = forced_call_grammar(tools.format, &request.tools, &choice, parallel, marker);
        // With `auto` and a response format, the answer's format is the stronger promise.
        let answer_has_format = request.response_format.is_some() && choice == ToolChoice::Auto;
        if grammar.is_some() && !answer_has_format {
            return grammar;
        }
    }
    request.response_format.clone()
}

/// Whether the request forces a call (`required` or a named tool).
pub(super) fn forces_calls(request: &CanonicalRequest) -> bool {
    !request.tools.is_empty()
        && matches!(request.tool_choice, Some(ToolChoice::Required | ToolChoice::Tool { .. }))
}

/// Whether the answer is read for tool calls.
pub(super) fn parses_tool_calls(request: &CanonicalRequest) -> bool {
    !request.tools.is_empty() && request.tool_choice != Some(ToolChoice::None)
}

#[cfg(test)]
#[path = "conversation_tests.rs"]
mod tests;
