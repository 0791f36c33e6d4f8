//! Gemini requests and responses ↔ the canonical model.
//!
//! Gemini matches a function response to its call by name, and older models send calls without
//! ids; canonical tool blocks need ids. Calls without one get `call_<n>`, and a response takes
//! the id of the oldest unanswered call of its name.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value};

use super::{
    Candidate, Content, FunctionCall, FunctionCallingConfig, FunctionDeclaration, FunctionResponse,
    GenerateContentRequest, GenerateContentResponse, GenerationConfig, Part, Tool, ToolConfig,
    UsageMetadata,
};
use crate::canonical::{
    CanonicalRequest, CanonicalResponse, ContentBlock, Message, MessageRole, SamplingOptions,
    TokenUsage, ToolChoice, ToolDefinition,
};
use crate::wire::empty_object_schema;
use crate::ValidationError;

/// An entry surface's request → canonical. `model` comes from the URL path, `stream` from
/// which method was called. Errors name the Gemini field path.
pub fn to_canonical(
    req: GenerateContentRequest,
    model: &str,
    stream: bool,
) -> Result<CanonicalRequest, ValidationError> {
    let config = req.generation_config.unwrap_or_default();
    if config.candidate_count.is_some_and(|n| n != 1) {
        return Err(ValidationError::new("generationConfig.candidateCount", "only 1 is supported"));
    }
    let mut ids = CallIds::default();
    let messages = req
        .contents
        .into_iter()
        .enumerate()
        .map(|(i, c)| content_to_canonical(c, &format!("contents[{i}]"), &mut ids))
        .collect::<Result<Vec<_>, _>>()?;
    let tools = tools_to_canonical(req.tools)?;
    Ok(CanonicalRequest {
        model: model.to_string(),
        system: req.system_instruction.map(|c| joined_text(&c)),
        messages,
        prompt: None,
        tools,
        tool_choice: req.tool_config.and_then(tool_choice_to_canonical),
        parallel_tool_calls: None,
        chat_template_kwargs: None,
        thinking: None,
        // Gemini's `responseSchema` is not read yet.
        response_format: None,
        sampling: SamplingOptions {
            temperature: config.temperature,
            top_p: config.top_p,
            top_k: config.top_k,
            seed: config.seed.map(|s| s as u32 as u64),
            presence_penalty: config.presence_penalty,
            frequency_penalty: config.frequency_penalty,
            ..Default::default()
        },
        max_tokens: config.max_output_tokens,
        stop: config.stop_sequences,
        stream,
        metadata: None,
        via_responses_api: false,
        session: None,
    })
}

fn joined_text(content: &Content) -> String {
    content.parts.iter().filter_map(|p| p.text.as_deref()).collect::<Vec<_>>().join("\n\n")
}

/// Ids given to calls, waiting for their responses.
#[derive(Default)]
struct CallIds {
    next: u32,
    pending: BTreeMap<String, VecDeque<String>>,
}

impl CallIds {
    fn call(&mut self, call: &FunctionCall) -> String {
        let id = call.id.clone().unwrap_or_else(|| {
            self.next += 1;
            format!("call_{}", self.next - 1)
        });
        self.pending.entry(call.name.clone()).or_default().push_back(id.clone());
        id
    }

    fn response(&mut self, response: &FunctionResponse) -> String {
        let queued = self.pending.get_mut(&response.name).and_then(VecDeque::pop_front);
        response.id.clone().or(queued).unwrap_or_else(|| response.name.clone())
    }
}

fn content_to_canonical(
    content: Content,
    path: &str,
    ids: &mut CallIds,
) -> Result<Message, ValidationError> {
    let role = match content.role.as_deref() {
        Some("model") => MessageRole::Assistant,
        None | Some("user") | Some("function") => MessageRole::User,
        Some(other) => {
            return Err(ValidationError::new(
                format!("{path}.role"),
                format!("`{other}` is not one of `user`, `model`"),
            ))
        }
    };
    let mut blocks = Vec::new();
    for (j, part) in content.parts.into_iter().enumerate() {
        if let Some(block) = part_to_canonical(part, &format!("{path}.parts[{j}]"), ids)? {
            blocks.push(block);
        }
    }
    Ok(Message { role, content: blocks })
}

fn part_to_canonical(
    part: Part,
    path: &str,
    ids: &mut CallIds,
) -> Result<Option<ContentBlock>, ValidationError> {
    if part.thought == Some(true) {
        return Ok(None);
    }
    if let Some(text) = part.text {
        return Ok(Some(ContentBlock::Text { text }));
    }
    if let Some(call) = part.function_call {
        let id = ids.call(&call);
        let input = if call.args.is_null() { Value::Object(Map::new()) } else { call.args };
        return Ok(Some(ContentBlock::ToolUse { id, name: call.name, input }));
    }
    if let Some(response) = part.function_response {
        let tool_use_id = ids.response(&response);
        let content = response_text(&response.response);
        return Ok(Some(ContentBlock::ToolResult { tool_use_id, content, is_error: false }));
    }
    Err(ValidationError::new(
        path.to_string(),
        "only text, functionCall and functionResponse parts are supported",
    ))
}

/// `{"result": "<text>"}` is how a plain-text tool result travels (see `response_value`).
fn response_text(response: &Value) -> String {
    match response.as_object().map(|o| (o.len(), o.get("result"))) {
        Some((1, Some(Value::String(text)))) => text.clone(),
        _ => response.to_string(),
    }
}

/// Gemini wants an object; a JSON-object result goes as is, any other text is wrapped.
fn response_value(content: &str) -> Value {
    match serde_json::from_str::<Value>(content) {
        Ok(value @ Value::Object(_)) => value,
        _ => serde_json::json!({ "result": content }),
    }
}

fn tools_to_canonical(tools: Vec<Tool>) -> Result<Vec<ToolDefinition>, ValidationError> {
    let mut out = Vec::new();
    for (i, tool) in tools.into_iter().enumerate() {
        if tool.google_search.is_some() || tool.code_execution.is_some() {
            return Err(ValidationError::new(
                format!("tools[{i}]"),
                "built-in tools are not supported; only functionDeclarations",
            ));
        }
        out.extend(tool.function_declarations.into_iter().map(|f| ToolDefinition {
            name: f.name,
            description: f.description,
            parameters:
                f.parameters_json_schema.or(f.parameters).unwrap_or_else(empty_object_schema),
        }));
    }
    Ok(out)
}

fn tool_choice_to_canonical(config: ToolConfig) -> Option<ToolChoice> {
    let config = config.function_calling_config?;
    Some(match config.mode.as_deref() {
        Some("NONE") => ToolChoice::None,
        Some("ANY") => match config.allowed_function_names.as_slice() {
            [only] => ToolChoice::Tool { name: only.clone() },
            _ => ToolChoice::Required,
        },
        _ => ToolChoice::Auto,
    })
}

/// Canonical → the body a provider adapter posts to `models/{model}:streamGenerateContent`.
pub fn from_canonical(req: &CanonicalRequest) -> GenerateContentRequest {
    let s = &req.sampling;
    GenerateContentRequest {
        contents: contents_to_wire(&req.messages),
        system_instruction: req
            .system
            .as_ref()
            .map(|text| Content { role: None, parts: vec![Part::text(text.clone())] }),
        tools: tools_to_wire(&req.tools),
        tool_config: req.tool_choice.as_ref().map(tool_choice_to_wire),
        generation_config: Some(GenerationConfig {
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            max_output_tokens: req.max_tokens,
            stop_sequences: req.stop.clone(),
            // Gemini's seed field is an int32: keep the low 31 bits.
            seed: s.seed.map(|seed| (seed & 0x7fff_ffff) as i32),
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            candidate_count: None,
        }),
    }
}

/// Roles must alternate; consecutive canonical messages of one role are merged.
fn contents_to_wire(messages: &[Message]) -> Vec<Content> {
    let names: BTreeMap<&str, &str> = messages
        .iter()
        .flat_map(|m| &m.content)
        .filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, .. } => Some((id.as_str(), name.as_str())),
            _ => None,
        })
        .collect();
    let mut out: Vec<Content> = Vec::new();
    for message in messages {
        let role = match message.role {
            MessageRole::User => "user",
            MessageRole::Assistant => "model",
        };
        let parts: Vec<Part> = message.content.iter().map(|b| part_to_wire(b, &names)).collect();
        match out.last_mut() {
            Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
            _ => out.push(Content { role: Some(role.into()), parts }),
        }
    }
    out
}

fn part_to_wire(block: &ContentBlock, names: &BTreeMap<&str, &str>) -> Part {
    match block {
        ContentBlock::Text { text } => Part::text(text.clone()),
        ContentBlock::ToolUse { name, input, .. } => Part {
            function_call: Some(FunctionCall { id: None, name: name.clone(), args: input.clone() }),
            ..Default::default()
        },
        ContentBlock::ToolResult { tool_use_id, content, .. } => Part {
            function_response: Some(FunctionResponse {
                id: None,
                name: names.get(tool_use_id.as_str()).unwrap_or(&tool_use_id.as_str()).to_string(),
                response: response_value(content),
            }),
            ..Default::default()
        },
    }
}

fn tools_to_wire(tools: &[ToolDefinition]) -> Vec<Tool> {
    if tools.is_empty() {
        return Vec::new();
    }
    let function_declarations = tools
        .iter()
        .map(|t| FunctionDeclaration {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: None,
            parameters_json_schema: Some(t.parameters.clone()),
        })
        .collect();
    vec![Tool { function_declarations, ..Default::default() }]
}

fn tool_choice_to_wire(choice: &ToolChoice) -> ToolConfig {
    let (mode, allowed) = match choice {
        ToolChoice::Auto => ("AUTO", Vec::new()),
        ToolChoice::None => ("NONE", Vec::new()),
        ToolChoice::Required => ("ANY", Vec::new()),
        ToolChoice::Tool { name } => ("ANY", vec![name.clone()]),
    };
    ToolConfig {
        function_calling_config: Some(FunctionCallingConfig {
            mode: Some(mode.into()),
            allowed_function_names: allowed,
        }),
    }
}

/// A whole canonical response → Gemini's `GenerateContentResponse`.
pub fn response_from_canonical(resp: &CanonicalResponse, id: &str) -> GenerateContentResponse {
    let names = BTreeMap::new();
    let parts = resp.content.iter().map(|b| part_to_wire(b, &names)).collect();
    GenerateContentResponse {
        candidates: vec![Candidate {
            content: Some(Content { role: Some("model".into()), parts }),
            finish_reason: Some(resp.stop_reason.as_gemini().into()),
            index: 0,
        }],
        usage_metadata: Some(usage_to_wire(&resp.usage)),
        model_version: Some(resp.model.clone()),
        response_id: Some(id.to_string()),
        prompt_feedback: None,
    }
}

pub(crate) fn usage_to_wire(usage: &TokenUsage) -> UsageMetadata {
    UsageMetadata {
        prompt_token_count: usage.input_tokens,
        candidates_token_count: usage.output_tokens,
        total_token_count: usage.total_tokens(),
        cached_content_token_count: Some(usage.cached_input_tokens),
        thoughts_token_count: None,
    }
}

pub(crate) fn usage_from_wire(usage: &UsageMetadata) -> TokenUsage {
    TokenUsage {
        input_tokens: usage.prompt_token_count,
        output_tokens: usage.candidates_token_count + usage.thoughts_token_count.unwrap_or(0),
        cached_input_tokens: usage.cached_content_token_count.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_and_responses_pair_up_by_name() {
        let req: GenerateContentRequest = serde_json::from_value(json!({
            "system_instruction": {"parts": [{"text": "be brief"}]},
            "contents": [
                {"role": "user", "parts": [{"text": "weather?"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "w", "args": {"city": "Oslo"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "w", "response": {"result": "rain"}}}]}
            ],
            "tools": [{"functionDeclarations": [{"name": "w", "parameters": {"type": "OBJECT"}}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["w"]}},
            "generationConfig": {"maxOutputTokens": 9, "stopSequences": ["X"], "temperature": 0.5}
        }))
        .unwrap();
        let c = to_canonical(req, "gemini-2.5-flash", true).unwrap();
        assert_eq!(c.system.as_deref(), Some("be brief"));
        let ContentBlock::ToolUse { id, .. } = &c.messages[1].content[0] else { panic!() };
        assert_eq!(
            c.messages[2].content[0],
            ContentBlock::ToolResult {
                tool_use_id: id.clone(),
                content: "rain".into(),
                is_error: false
            }
        );
        assert_eq!(c.tool_choice, Some(ToolChoice::Tool { name: "w".into() }));
        assert_eq!((c.max_tokens, c.stream), (Some(9), true));
        let wire = from_canonical(&c);
        let fr = wire.contents[2].parts[0].function_response.as_ref().unwrap();
        assert_eq!((fr.name.as_str(), &fr.response), ("w", &json!({"result": "rain"})));
        assert_eq!(to_canonical(wire, "g", false).unwrap().messages, c.messages);
    }

    #[test]
    fn unsupported_parts_are_named_by_path() {
        let req: GenerateContentRequest = serde_json::from_value(json!({
            "contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": ""}}]}]
        }))
        .unwrap();
        assert_eq!(to_canonical(req, "g", false).unwrap_err().field, "contents[0].parts[0]");
    }

    #[test]
    fn thoughts_count_as_output_and_cache_inside_input() {
        let u = UsageMetadata {
            prompt_token_count: 10,
            candidates_token_count: 3,
            total_token_count: 20,
            cached_content_token_count: Some(4),
            thoughts_token_count: Some(7),
        };
        assert_eq!(
            usage_from_wire(&u),
            TokenUsage { input_tokens: 10, output_tokens: 10, cached_input_tokens: 4 }
        );
    }
}
