//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::response::Response;
use hearth_engine::{EngineError, GenerateRequest, Prompt};
use hearth_protocol::{ChatMessage, Role};
use serde::Deserialize;
use serde_json::Value;

use super::answer;
use super::error::OpenAiError;
use super::extract::OpenAiJson;
use super::response::{Encoder, Header, Surface};
use super::sampling::{find_model, CommonFields};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum InRole {
    System,
    /// OpenAI's newer name for the system role.
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: InRole,
    #[serde(default)]
    content: Value,
}

#[derive(Debug, Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
}

/// The chat-only fields; the shared ones are in [`CommonFields`].
#[derive(Debug, Deserialize)]
struct ChatFields {
    messages: Vec<InMessage>,
    logprobs: Option<bool>,
    top_logprobs: Option<u64>,
    tools: Option<Vec<Value>>,
    response_format: Option<ResponseFormat>,
}

impl ChatFields {
    /// Refuses what Hearth does not do, rather than silently ignoring it.
    fn check_supported(&self) -> Result<(), OpenAiError> {
        if self.logprobs == Some(true) || self.top_logprobs.is_some_and(|n| n > 0) {
            return Err(OpenAiError::invalid("logprobs", "logprobs are not supported"));
        }
        if self.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
            return Err(OpenAiError::invalid("tools", "tool calling is not supported"));
        }
        if let Some(format) = self.response_format.as_ref().filter(|f| f.kind != "text") {
            let message =
                format!("response_format `{}` is not supported; only `text` is", format.kind);
            return Err(OpenAiError::invalid("response_format", message));
        }
        Ok(())
    }

    fn messages(&self) -> Result<Vec<ChatMessage>, OpenAiError> {
        if self.messages.is_empty() {
            return Err(OpenAiError::invalid("messages", "must contain at least one message"));
        }
        self.messages.iter().enumerate().map(|(i, message)| convert(i, message)).collect()
    }
}

fn convert(index: usize, message: &InMessage) -> Result<ChatMessage, OpenAiError> {
    let role = match message.role {
        InRole::System | InRole::Developer => Role::System,
        InRole::User => Role::User,
        InRole::Assistant => Role::Assistant,
        InRole::Tool => Role::Tool,
    };
    let param = format!("messages[{index}].content");
    let content = match &message.content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => text_parts(&param, parts)?,
        // An assistant turn that only called tools has no content.
        Value::Null if role == Role::Assistant => String::new(),
        Value::Null => return Err(OpenAiError::invalid(&param, "is required")),
        _ => {
            return Err(OpenAiError::invalid(&param, "must be a string or a list of content parts"))
        }
    };
    Ok(ChatMessage::new(role, content))
}

/// Joins `{"type": "text", "text": …}` parts with newlines (as vLLM does); other part types
/// (images, audio) are refused.
fn text_parts(param: &str, parts: &[Value]) -> Result<String, OpenAiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str);
        match (kind, part.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(text)) => texts.push(text),
            (Some("text"), None) => {
                return Err(OpenAiError::invalid(
                    &format!("{param}[{j}].text"),
                    "must be a string",
                ));
            }
            (Some(other), _) => {
                let message =
                    format!("content part type `{other}` is not supported; only `text` is");
                return Err(OpenAiError::invalid(&format!("{param}[{j}].type"), message));
            }
            (None, _) => {
                return Err(OpenAiError::invalid(
                    &format!("{param}[{j}]"),
                    "must be an object with a `type`",
                ));
            }
        }
    }
    Ok(texts.join("\n"))
}

fn template_error(err: EngineError) -> OpenAiError {
    match err {
        EngineError::NoChatTemplate => OpenAiError::invalid(
            "messages",
            "this model has no chat template; use /v1/completions with a prompt instead",
        ),
        other => OpenAiError::invalid("messages", other.to_string()),
    }
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    body: OpenAiJson,
) -> Result<Response, OpenAiError> {
    let common: CommonFields = body.parse()?;
    let fields: ChatFields = body.parse()?;
    let model = find_model(&state, &common.model)?;
    fields.check_supported()?;
    let engine = &model.engine;
    let sampling = common.sampling(engine.info().context_length)?;
    let prompt = engine.render_chat(&fields.messages()?).map_err(template_error)?;
    let request = GenerateRequest { prompt: Prompt::Templated(prompt), sampling };
    let stream = engine.submit(request).map_err(|err| OpenAiError::from_submit(err, "messages"))?;
    let encoder =
        Encoder { surface: Surface::Chat, header: Header::new("chatcmpl", &common.model) };
    answer(&state, stream, encoder, &common).await
}
