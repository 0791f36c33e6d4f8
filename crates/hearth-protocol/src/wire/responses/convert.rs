//! Responses requests → the canonical model, and a response's output back into a conversation
//! (for `previous_response_id`).

use serde_json::{json, Map, Value};

use super::{
    CreateResponse, Input, InputContent, InputItem, InputPart, OutputContent, OutputItem,
    ResponseObject, TextFormat, Tool, ToolChoice as WireToolChoice,
};
use crate::canonical::{
    CanonicalRequest, ContentBlock, Message, MessageRole, SamplingOptions, ToolChoice,
    ToolDefinition,
};
use crate::wire::empty_object_schema;
use crate::wire::openai::{self, JsonSchemaFormat, ResponseFormat};
use crate::ValidationError;

/// A conversation as the Responses API carries it from one response to the next: the system
/// and developer messages among its input items, and the turns. A response's `instructions`
/// are not part of it: OpenAI does not carry them over to the next response either.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConvertedInput {
    pub system: Vec<String>,
    pub messages: Vec<Message>,
}

impl ConvertedInput {
    /// An estimate of the memory it holds, for the bound on stored conversations.
    pub fn approx_bytes(&self) -> usize {
        let blocks: usize = self
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .map(|block| match block {
                ContentBlock::Text { text } => text.len(),
                ContentBlock::ToolUse { id, name, input } => {
                    id.len() + name.len() + input.to_string().len()
                }
                ContentBlock::ToolResult { tool_use_id, content, .. } => {
                    tool_use_id.len() + content.len()
                }
            })
            .sum();
        blocks + self.system.iter().map(String::len).sum::<usize>() + 64 * self.messages.len()
    }
}

/// The request → canonical, continuing `earlier` (the conversation up to the previous
/// response, or empty). Also returns the whole conversation so far, to store with the response.
/// Errors name the Responses field path.
pub fn to_canonical(
    req: CreateResponse,
    earlier: ConvertedInput,
) -> Result<(CanonicalRequest, ConvertedInput), ValidationError> {
    let mut conversation = earlier;
    read_input(req.input, &mut conversation)?;
    if conversation.messages.is_empty() {
        return Err(ValidationError::new("input", "must hold at least one message"));
    }
    let system: Vec<String> =
        req.instructions.into_iter().chain(conversation.system.iter().cloned()).collect();
    let request = CanonicalRequest {
        model: req.model,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages: conversation.messages.clone(),
        prompt: None,
        tools: tools_to_canonical(req.tools)?,
        tool_choice: req.tool_choice.map(tool_choice_to_canonical).transpose()?,
        parallel_tool_calls: req.parallel_tool_calls,
        chat_template_kwargs: req.chat_template_kwargs,
        thinking: None,
        response_format: match req.text.and_then(|t| t.format) {
            Some(format) => text_format_to_canonical(format)?,
            None => None,
        },
        sampling: SamplingOptions {
            temperature: req.temperature,
            top_p: req.top_p,
            ..Default::default()
        },
        max_tokens: req.max_output_tokens,
        stop: Vec::new(),
        stream: req.stream.unwrap_or(false),
        metadata: req.metadata,
        via_responses_api: true,
        session: None,
    };
    Ok((request, conversation))
}

/// The request's settings as a response object echoes them, with OpenAI's defaults for the
/// ones left out.
pub fn echo(req: &CreateResponse) -> Map<String, Value> {
    let text = req.text.clone().unwrap_or(super::TextConfig { format: None });
    let format = text.format.unwrap_or(TextFormat::Text);
    let value = json!({
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata.clone().unwrap_or_default(),
        "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": req.previous_response_id,
        "store": req.store.unwrap_or(true),
        "background": req.background.unwrap_or(false),
        "temperature": req.temperature,
        "top_p": req.top_p,
        "text": { "format": format },
        "tool_choice": req.tool_choice.clone().unwrap_or(WireToolChoice::Mode("auto".into())),
        "tools": req.tools,
        "truncation": req.truncation.clone().unwrap_or_else(|| "disabled".into()),
        "user": req.user,
        "reasoning": { "effort": null, "summary": null },
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A response's output as the assistant turn that the next response continues from; `None`
/// when it produced nothing to continue from.
pub fn output_message(response: &ResponseObject) -> Option<Message> {
    let mut content = Vec::new();
    for item in &response.output {
        match item {
            OutputItem::Message { content: parts, .. } => {
                let text: String = parts.iter().map(OutputContent::text).collect();
                if !text.is_empty() {
                    content.push(ContentBlock::Text { text });
                }
            }
            OutputItem::FunctionCall { call_id, name, arguments, .. } => {
                content.push(ContentBlock::ToolUse {
                    id: call_id.clone(),
                    name: name.clone(),
                    input: parse_arguments(arguments),
                });
            }
            OutputItem::Reasoning { .. } => {}
        }
    }
    (!content.is_empty()).then_some(Message { role: MessageRole::Assistant, content })
}

fn read_input(input: Input, into: &mut ConvertedInput) -> Result<(), ValidationError> {
    let items = match input {
        Input::Text(text) => {
            into.messages.push(Message::text(MessageRole::User, text));
            return Ok(());
        }
        Input::Items(items) => items,
    };
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("input[{i}]");
        read_item(parse_item(item, &path)?, &path, into)?;
    }
    Ok(())
}

/// One item, typed; a message may leave out its `type`.
fn parse_item(mut item: Value, path: &str) -> Result<InputItem, ValidationError> {
    if let Value::Object(map) = &mut item {
        if !map.contains_key("type") && map.contains_key("role") {
            map.insert("type".into(), Value::String("message".into()));
        }
    }
    serde_json::from_value(item).map_err(|e| ValidationError::new(path, e.to_string()))
}

fn read_item(
    item: InputItem,
    path: &str,
    into: &mut ConvertedInput,
) -> Result<(), ValidationError> {
    match item {
        InputItem::Message { role, content } => {
            let text = content_text(content, &format!("{path}.content"))?;
            match role.as_str() {
                "system" | "developer" => into.system.push(text),
                "user" => into.messages.push(Message::text(MessageRole::User, text)),
                "assistant" => push_assistant(into, ContentBlock::Text { text }),
                other => {
                    return Err(ValidationError::new(
                        format!("{path}.role"),
                        format!(
                            "`{other}` is not one of `user`, `assistant`, `system`, `developer`"
                        ),
                    ))
                }
            }
        }
        InputItem::FunctionCall { call_id, name, arguments } => {
            let input = serde_json::from_str(&arguments).or_else(|_| {
                if arguments.trim().is_empty() {
                    Ok(Value::Object(Map::new()))
                } else {
                    Err(ValidationError::new(format!("{path}.arguments"), "must be a JSON text"))
                }
            })?;
            push_assistant(into, ContentBlock::ToolUse { id: call_id, name, input });
        }
        InputItem::FunctionCallOutput { call_id, output } => {
            let content = content_text(output, &format!("{path}.output"))?;
            let block = ContentBlock::ToolResult { tool_use_id: call_id, content, is_error: false };
            into.messages.push(Message { role: MessageRole::User, content: vec![block] });
        }
        InputItem::Reasoning {} => {}
        InputItem::ItemReference { .. } => {
            return Err(ValidationError::new(
                format!("{path}.type"),
                "item references are not supported; send the item itself, or continue with \
                 `previous_response_id`",
            ))
        }
    }
    Ok(())
}

/// Appends to the assistant turn in progress (a message then its calls are one turn).
fn push_assistant(into: &mut ConvertedInput, block: ContentBlock) {
    match into.messages.last_mut() {
        Some(last) if last.role == MessageRole::Assistant => last.content.push(block),
        _ => into.messages.push(Message { role: MessageRole::Assistant, content: vec![block] }),
    }
}

fn content_text(content: InputContent, path: &str) -> Result<String, ValidationError> {
    let parts = match content {
        InputContent::Text(text) => return Ok(text),
        InputContent::Parts(parts) => parts,
    };
    let mut text = String::new();
    for (j, part) in parts.into_iter().enumerate() {
        match part {
            InputPart::InputText { text: t } | InputPart::OutputText { text: t } => {
                text.push_str(&t)
            }
            InputPart::Refusal { refusal } => text.push_str(&refusal),
            InputPart::Unsupported => {
                return Err(ValidationError::new(
                    format!("{path}[{j}].type"),
                    "only text parts (`input_text`, `output_text`) are supported",
                ))
            }
        }
    }
    Ok(text)
}

fn parse_arguments(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
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
            let name = tool
                .name
                .ok_or_else(|| ValidationError::new(format!("tools[{i}].name"), "is required"))?;
            Ok(ToolDefinition {
                name,
                description: tool.description,
                parameters: tool.parameters.unwrap_or_else(empty_object_schema),
            })
        })
        .collect()
}

fn tool_choice_to_canonical(choice: WireToolChoice) -> Result<ToolChoice, ValidationError> {
    match choice {
        WireToolChoice::Mode(mode) => ToolChoice::from_openai_mode(&mode),
        WireToolChoice::Named { kind, name: Some(name) } if kind == "function" => {
            Ok(ToolChoice::Tool { name })
        }
        WireToolChoice::Named { kind, .. } => Err(ValidationError::new(
            "tool_choice",
            format!("`{kind}` is not supported; name a function: {{\"type\": \"function\", \"name\": …}}"),
        )),
    }
}

/// `text.format` reads as chat completions' `response_format`, by the same rules.
fn text_format_to_canonical(
    format: TextFormat,
) -> Result<Option<crate::OutputConstraint>, ValidationError> {
    let wire = match format {
        TextFormat::Text => ResponseFormat::Text,
        TextFormat::JsonObject => ResponseFormat::JsonObject,
        TextFormat::JsonSchema { name, schema, description, strict } => {
            ResponseFormat::JsonSchema {
                json_schema: JsonSchemaFormat { name, description, schema, strict },
            }
        }
    };
    openai::response_format_to_canonical(wire).map_err(|mut e| {
        e.field = e.field.replace("response_format.json_schema", "text.format");
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(input: Value) -> CreateResponse {
        serde_json::from_value(json!({"model": "m", "input": input})).unwrap()
    }

    #[test]
    fn a_string_is_one_user_message() {
        let (canonical, conversation) =
            to_canonical(request(json!("hi")), ConvertedInput::default()).unwrap();
        assert_eq!(canonical.messages, vec![Message::text(MessageRole::User, "hi")]);
        assert_eq!(conversation.messages, canonical.messages);
    }

    #[test]
    fn items_become_turns_with_calls_and_results() {
        let input = json!([
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call_output", "call_id": "c1", "output": "rain"},
        ]);
        let mut req = request(input);
        req.instructions = Some("you are kind".into());
        let (canonical, conversation) = to_canonical(req, ConvertedInput::default()).unwrap();
        assert_eq!(canonical.system.as_deref(), Some("you are kind\n\nbe brief"));
        assert_eq!(conversation.system, vec!["be brief".to_string()]);
        assert_eq!(canonical.messages.len(), 3);
        assert_eq!(
            canonical.messages[1].content,
            vec![ContentBlock::ToolUse {
                id: "c1".into(),
                name: "w".into(),
                input: json!({"city": "Oslo"})
            }]
        );
        assert!(matches!(
            &canonical.messages[2].content[0],
            ContentBlock::ToolResult { tool_use_id, content, .. } if tool_use_id == "c1" && content == "rain"
        ));
    }

    #[test]
    fn errors_name_the_item_at_fault() {
        let cases = [
            (
                json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
                "input[0].content[0].type",
            ),
            (json!([{"role": "robot", "content": "x"}]), "input[0].role"),
            (
                json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]),
                "input[0].arguments",
            ),
            (json!([{"type": "item_reference", "id": "msg_1"}]), "input[0].type"),
            (json!([{"type": "function_call"}]), "input[0]"),
            (json!([]), "input"),
        ];
        for (input, field) in cases {
            let err = to_canonical(request(input.clone()), ConvertedInput::default()).unwrap_err();
            assert_eq!(err.field, field, "{input}");
        }
    }

    #[test]
    fn tools_choices_and_formats_read_as_on_chat_completions() {
        let req: CreateResponse = serde_json::from_value(json!({
            "model": "m", "input": "x",
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
            "max_output_tokens": 9,
        }))
        .unwrap();
        let (c, _) = to_canonical(req, ConvertedInput::default()).unwrap();
        assert_eq!(c.tools[0].name, "w");
        assert_eq!(c.tool_choice, Some(ToolChoice::Tool { name: "w".into() }));
        assert!(c.response_format.is_some());
        assert_eq!(c.max_tokens, Some(9));
        let bad: CreateResponse = serde_json::from_value(json!({
            "model": "m", "input": "x",
            "text": {"format": {"type": "json_schema", "name": "bad name!"}},
        }))
        .unwrap();
        assert_eq!(
            to_canonical(bad, ConvertedInput::default()).unwrap_err().field,
            "text.format.name"
        );
        let web: CreateResponse = serde_json::from_value(json!({
            "model": "m", "input": "x", "tools": [{"type": "web_search"}],
        }))
        .unwrap();
        assert_eq!(
            to_canonical(web, ConvertedInput::default()).unwrap_err().field,
            "tools[0].type"
        );
    }

    #[test]
    fn a_conversation_continues_from_the_previous_output() {
        let (_, first) = to_canonical(request(json!("hi")), ConvertedInput::default()).unwrap();
        let response: ResponseObject = serde_json::from_value(json!({
            "id": "resp_1", "object": "response", "created_at": 0, "status": "completed",
            "model": "m", "usage": null, "error": null, "incomplete_details": null,
            "output": [
                {"type": "reasoning", "id": "rs", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}], "status": "completed"},
                {"type": "message", "id": "msg", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "hello", "annotations": [], "logprobs": []}]},
            ],
        }))
        .unwrap();
        let mut earlier = first;
        earlier.messages.extend(output_message(&response));
        let (c, _) = to_canonical(request(json!("again")), earlier).unwrap();
        let texts: Vec<String> = c.messages.iter().map(Message::joined_text).collect();
        assert_eq!(texts, ["hi", "hello", "again"]);
    }
}
