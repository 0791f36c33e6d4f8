//! OpenAI chat requests and responses ↔ the canonical model.

use serde_json::Value;

use super::{
    ChatCompletion, ChatCompletionRequest, Choice, ContentPart, FunctionCall, FunctionDefinition,
    JsonSchemaFormat, MessageContent, NamedFunction, PromptTokensDetails, RequestMessage,
    ResponseFormat, ResponseMessage, Stop, StreamOptions, Tool, ToolCall,
    ToolChoice as WireToolChoice, Usage,
};
use crate::canonical::{
    CanonicalRequest, CanonicalResponse, ContentBlock, Message, MessageRole, SamplingOptions,
    TokenUsage, ToolChoice, ToolDefinition,
};
use crate::wire::empty_object_schema;
use crate::{OutputConstraint, ValidationError};

/// An entry surface's request → canonical. Errors name the OpenAI field path.
pub fn to_canonical(req: ChatCompletionRequest) -> Result<CanonicalRequest, ValidationError> {
    if req.n.is_some_and(|n| n != 1) {
        return Err(ValidationError::new("n", "only 1 choice per request is supported"));
    }
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for (i, message) in req.messages.into_iter().enumerate() {
        let path = format!("messages[{i}]");
        match message {
            RequestMessage::System { content } | RequestMessage::Developer { content } => {
                system.push(content_text(content, &path)?);
            }
            RequestMessage::User { content } => {
                messages.push(Message::text(MessageRole::User, content_text(content, &path)?));
            }
            RequestMessage::Assistant { content, tool_calls } => {
                messages.push(assistant_message(content, tool_calls, &path)?);
            }
            RequestMessage::Tool { content, tool_call_id } => {
                let content = content_text(content, &path)?;
                let block = ContentBlock::ToolResult {
                    tool_use_id: tool_call_id,
                    content,
                    is_error: false,
                };
                messages.push(Message { role: MessageRole::User, content: vec![block] });
            }
        }
    }
    let stream = req.stream.unwrap_or(false);
    Ok(CanonicalRequest {
        model: req.model,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        prompt: None,
        tools: tools_to_canonical(req.tools)?,
        tool_choice: req.tool_choice.map(tool_choice_to_canonical).transpose()?,
        parallel_tool_calls: req.parallel_tool_calls,
        chat_template_kwargs: req.chat_template_kwargs,
        thinking: None,
        response_format: req
            .response_format
            .map(response_format_to_canonical)
            .transpose()?
            .flatten(),
        sampling: SamplingOptions {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            seed: req.seed,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            min_p: req.min_p,
            repetition_penalty: req.repetition_penalty,
            ignore_eos: req.ignore_eos,
        },
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        stop: match req.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
        stream,
        metadata: req.metadata,
        via_responses_api: false,
        session: None,
    })
}

fn content_text(content: MessageContent, path: &str) -> Result<String, ValidationError> {
    match content {
        MessageContent::Text(text) => Ok(text),
        MessageContent::Parts(parts) => parts
            .into_iter()
            .enumerate()
            .map(|(j, part)| part_text(part, &format!("{path}.content[{j}]")))
            .collect(),
    }
}

fn part_text(part: ContentPart, path: &str) -> Result<String, ValidationError> {
    match (part.kind.as_str(), part.text) {
        ("text", Some(text)) => Ok(text),
        ("text", None) => Err(ValidationError::new(format!("{path}.text"), "is required")),
        (other, _) => Err(ValidationError::new(
            format!("{path}.type"),
            format!("`{other}` parts are not supported; only `text`"),
        )),
    }
}

fn assistant_message(
    content: Option<MessageContent>,
    tool_calls: Vec<ToolCall>,
    path: &str,
) -> Result<Message, ValidationError> {
    let mut blocks = Vec::new();
    if let Some(content) = content {
        let text = content_text(content, path)?;
        if !text.is_empty() {
            blocks.push(ContentBlock::Text { text });
        }
    }
    for (j, call) in tool_calls.into_iter().enumerate() {
        let input = parse_call_arguments(&call.function.arguments).ok_or_else(|| {
            ValidationError::new(
                format!("{path}.tool_calls[{j}].function.arguments"),
                "must be a JSON text",
            )
        })?;
        blocks.push(ContentBlock::ToolUse { id: call.id, name: call.function.name, input });
    }
    Ok(Message { role: MessageRole::Assistant, content: blocks })
}

fn parse_call_arguments(arguments: &str) -> Option<Value> {
    if arguments.trim().is_empty() {
        return Some(Value::Object(Default::default()));
    }
    serde_json::from_str(arguments).ok()
}

fn tools_to_canonical(tools: Vec<Tool>) -> Result<Vec<ToolDefinition>, ValidationError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool.kind != "function" {
                return Err(ValidationError::new(
                    format!("tools[{i}].type"),
                    format!("`{}` tools are not supported; only `function`", tool.kind),
                ));
            }
            let f = tool.function;
            Ok(ToolDefinition {
                name: f.name,
                description: f.description,
                parameters: f.parameters.unwrap_or_else(empty_object_schema),
            })
        })
        .collect()
}

fn tool_choice_to_canonical(choice: WireToolChoice) -> Result<ToolChoice, ValidationError> {
    match choice {
        WireToolChoice::Mode(mode) => ToolChoice::from_openai_mode(&mode),
        WireToolChoice::Named { function, .. } => Ok(ToolChoice::Tool { name: function.name }),
    }
}

/// `None` for free text, which constrains nothing.
pub(crate) fn response_format_to_canonical(
    format: ResponseFormat,
) -> Result<Option<OutputConstraint>, ValidationError> {
    Ok(Some(match format {
        ResponseFormat::Text => return Ok(None),
        ResponseFormat::JsonObject => OutputConstraint::JsonObject,
        ResponseFormat::JsonSchema { json_schema } => {
            let JsonSchemaFormat { name, schema, strict, .. } = json_schema;
            if !is_valid_format_name(&name) {
                return Err(ValidationError::new(
                    "response_format.json_schema.name",
                    "must be 1 to 64 letters, digits, underscores or dashes",
                ));
            }
            match schema {
                Some(schema @ (Value::Object(_) | Value::Bool(_))) => {
                    OutputConstraint::JsonSchema { schema, name: Some(name), strict }
                }
                Some(_) => {
                    return Err(ValidationError::new(
                        "response_format.json_schema.schema",
                        "must be a JSON Schema (an object)",
                    ))
                }
                None => OutputConstraint::JsonSchema {
                    schema: Value::Bool(true),
                    name: Some(name),
                    strict,
                },
            }
        }
    }))
}

/// OpenAI's rule for `json_schema.name`.
fn is_valid_format_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn response_format_to_wire(constraint: &OutputConstraint) -> Option<ResponseFormat> {
    match constraint {
        OutputConstraint::JsonObject => Some(ResponseFormat::JsonObject),
        OutputConstraint::JsonSchema { schema, name, strict } => Some(ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: name.clone().unwrap_or_else(|| "response".into()),
                description: None,
                // No schema given stands for any JSON, as OpenAI reads it.
                schema: (schema != &Value::Bool(true)).then(|| schema.clone()),
                strict: *strict,
            },
        }),
        // OpenAI's API has no grammar formats; the router never sends these upstream.
        OutputConstraint::Regex { .. } | OutputConstraint::Lark { .. } => None,
    }
}

/// Canonical → the request a provider adapter sends upstream. It always streams and asks for
/// the final usage chunk, since usage is what the ledger bills.
pub fn from_canonical(req: &CanonicalRequest, model: &str) -> ChatCompletionRequest {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(RequestMessage::System { content: MessageContent::Text(system.clone()) });
    }
    for message in &req.messages {
        match message.role {
            MessageRole::User => push_user_messages(message, &mut messages),
            MessageRole::Assistant => messages.push(assistant_to_wire(message)),
        }
    }
    let s = &req.sampling;
    ChatCompletionRequest {
        model: model.to_string(),
        messages,
        tools: req.tools.iter().map(tool_to_wire).collect(),
        tool_choice: req.tool_choice.as_ref().map(tool_choice_to_wire),
        // OpenAI takes the flag only alongside tools.
        parallel_tool_calls: req.parallel_tool_calls.filter(|_| !req.tools.is_empty()),
        chat_template_kwargs: None,
        response_format: req.response_format.as_ref().and_then(response_format_to_wire),
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        seed: s.seed,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        ignore_eos: s.ignore_eos,
        max_tokens: req.max_tokens,
        max_completion_tokens: None,
        stop: (!req.stop.is_empty()).then(|| Stop::Many(req.stop.clone())),
        stream: Some(true),
        stream_options: Some(StreamOptions { include_usage: true }),
        n: None,
        metadata: None,
    }
}

/// Tool results become `tool` messages, which OpenAI wants right after the assistant's calls,
/// so they go before any text of the same canonical user message.
fn push_user_messages(message: &Message, out: &mut Vec<RequestMessage>) {
    for block in &message.content {
        if let ContentBlock::ToolResult { tool_use_id, content, .. } = block {
            out.push(RequestMessage::Tool {
                content: MessageContent::Text(content.clone()),
                tool_call_id: tool_use_id.clone(),
            });
        }
    }
    let text = message.joined_text();
    let has_text = message.content.iter().any(|b| matches!(b, ContentBlock::Text { .. }));
    if has_text {
        out.push(RequestMessage::User { content: MessageContent::Text(text) });
    }
}

fn assistant_to_wire(message: &Message) -> RequestMessage {
    let text = message.joined_text();
    let tool_calls = message
        .content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, input } => Some(tool_call_to_wire(id, name, input)),
            _ => None,
        })
        .collect();
    RequestMessage::Assistant {
        content: (!text.is_empty()).then_some(MessageContent::Text(text)),
        tool_calls,
    }
}

fn tool_call_to_wire(id: &str, name: &str, input: &Value) -> ToolCall {
    ToolCall {
        id: id.to_string(),
        kind: "function".into(),
        function: FunctionCall { name: name.to_string(), arguments: arguments_text(input) },
    }
}

/// Arguments that did not parse as JSON upstream were kept as a string; they go back verbatim.
pub(crate) fn arguments_text(input: &Value) -> String {
    match input {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

fn tool_to_wire(tool: &ToolDefinition) -> Tool {
    Tool {
        kind: "function".into(),
        function: FunctionDefinition {
            name: tool.name.clone(),
            description: tool.description.clone(),
            parameters: Some(tool.parameters.clone()),
        },
    }
}

fn tool_choice_to_wire(choice: &ToolChoice) -> WireToolChoice {
    match choice {
        ToolChoice::Tool { name } => WireToolChoice::Named {
            kind: "function".into(),
            function: NamedFunction { name: name.clone() },
        },
        mode => WireToolChoice::Mode(mode.openai_mode().unwrap_or("auto").into()),
    }
}

/// A whole canonical response → OpenAI's `chat.completion` body.
pub fn response_from_canonical(resp: &CanonicalResponse, id: &str, created: i64) -> ChatCompletion {
    let tool_calls =
        resp.tool_calls().map(|(id, name, input)| tool_call_to_wire(id, name, input)).collect();
    ChatCompletion {
        id: id.to_string(),
        object: "chat.completion".into(),
        created,
        model: resp.model.clone(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".into(),
                content: resp.text(),
                reasoning_content: resp.reasoning.clone(),
                tool_calls,
            },
            finish_reason: Some(resp.stop_reason.as_openai().into()),
        }],
        usage: Some(usage_to_wire(&resp.usage)),
    }
}

pub(crate) fn usage_to_wire(usage: &TokenUsage) -> Usage {
    Usage {
        prompt_tokens: usage.input_tokens,
        completion_tokens: usage.output_tokens,
        total_tokens: usage.total_tokens(),
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: usage.cached_input_tokens,
        }),
    }
}

pub(crate) fn usage_from_wire(usage: &Usage) -> TokenUsage {
    TokenUsage {
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
        cached_input_tokens: usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::StopReason;
    use serde_json::json;

    fn parse(body: Value) -> Result<CanonicalRequest, ValidationError> {
        to_canonical(serde_json::from_value(body).unwrap())
    }

    #[test]
    fn system_tools_and_tool_results_reach_the_canonical_request() {
        let req = parse(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Oslo\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "rain"}
            ],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "w"}},
            "max_completion_tokens": 20, "stop": "END", "stream": true
        }))
        .unwrap();
        assert_eq!(req.system.as_deref(), Some("be brief"));
        assert_eq!(req.messages.len(), 3);
        assert_eq!(
            req.messages[1].content,
            vec![ContentBlock::ToolUse {
                id: "c1".into(),
                name: "w".into(),
                input: json!({"city": "Oslo"})
            }]
        );
        assert!(
            matches!(&req.messages[2].content[0], ContentBlock::ToolResult { tool_use_id, .. } if tool_use_id == "c1")
        );
        assert_eq!(req.tool_choice, Some(ToolChoice::Tool { name: "w".into() }));
        assert_eq!(
            (req.max_tokens, req.stop.clone(), req.stream),
            (Some(20), vec!["END".to_string()], true)
        );
    }

    #[test]
    fn unsupported_parts_are_named_by_path() {
        let err = parse(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ]}))
        .unwrap_err();
        assert_eq!(err.field, "messages[0].content[0].type");
        let err = parse(json!({"model": "m", "n": 2, "messages": []})).unwrap_err();
        assert_eq!(err.field, "n");
    }

    #[test]
    fn round_trips_through_the_wire_request() {
        let req = parse(json!({"model": "m", "messages": [
            {"role": "developer", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "calling", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}
        ]}))
        .unwrap();
        let wire = from_canonical(&req, "up");
        assert_eq!(wire.model, "up");
        assert_eq!(wire.stream_options, Some(StreamOptions { include_usage: true }));
        let back = to_canonical(wire).unwrap();
        assert_eq!(back.messages, req.messages);
        assert_eq!(back.system, req.system);
    }

    #[test]
    fn responses_carry_tool_calls_and_cached_usage() {
        let resp = CanonicalResponse {
            reasoning: None,
            model: "m".into(),
            content: vec![ContentBlock::ToolUse {
                id: "c".into(),
                name: "f".into(),
                input: json!({}),
            }],
            stop_reason: StopReason::ToolCalls,
            usage: TokenUsage { input_tokens: 9, output_tokens: 1, cached_input_tokens: 4 },
        };
        let body = serde_json::to_value(response_from_canonical(&resp, "id1", 7)).unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    }
}
