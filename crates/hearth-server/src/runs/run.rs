//! `POST /v1/run/{model}`: one call for any model, local or upstream.
//!
//! The body is `{"input": "text"}` or `{"messages": [{"role", "content"}]}`, plus options
//! (`system`, `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `stream`,
//! `metadata`); unknown fields are refused. A whole answer is
//! `{"run_id", "model", "route", "output", "stop_reason", "usage", "cost"}`; a streamed one is
//! the run's canonical events as SSE, each named by its `type` (`message_start`, `text_delta`,
//! `usage`, then `finish` or `error`), which is also how any run resumes.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_gateway::{Prices, RunOpening};
use hearth_protocol::{
    CanonicalRequest, CanonicalResponse, Message, MessageRole, SamplingOptions, ValidationError,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::ApiError;
use crate::relay::{self, RelayError, StreamFormat};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    input: Option<String>,
    messages: Option<Vec<RunMessage>>,
    system: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    seed: Option<u64>,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    stream: bool,
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunMessage {
    role: RunRole,
    content: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RunRole {
    System,
    User,
    Assistant,
}

impl RunBody {
    fn into_canonical(self, model: String) -> Result<CanonicalRequest, ValidationError> {
        let mut system: Vec<String> = self.system.into_iter().collect();
        let messages = match (self.input, self.messages) {
            (Some(input), None) => vec![Message::text(MessageRole::User, input)],
            (None, Some(list)) => {
                let mut messages = Vec::with_capacity(list.len());
                for message in list {
                    match message.role {
                        RunRole::System => system.push(message.content),
                        RunRole::User => {
                            messages.push(Message::text(MessageRole::User, message.content))
                        }
                        RunRole::Assistant => {
                            messages.push(Message::text(MessageRole::Assistant, message.content))
                        }
                    }
                }
                messages
            }
            (Some(_), Some(_)) => {
                return Err(ValidationError::new("input", "give `input` or `messages`, not both"))
            }
            (None, None) => {
                return Err(ValidationError::new("input", "is required (or give `messages`)"))
            }
        };
        Ok(CanonicalRequest {
            model,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            messages,
            prompt: None,
            sampling: SamplingOptions {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed: self.seed,
                ..Default::default()
            },
            max_tokens: self.max_tokens,
            stop: self.stop,
            stream: self.stream,
            metadata: self.metadata,
            ..Default::default()
        })
    }
}

pub(crate) async fn run(
    State(state): State<AppState>,
    Path(model): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = relay::caller(request.headers())?;
    if state.catalog().python(&model).is_some() {
        let body: super::predict::PredictBody = relay::read_json(request, &state).await?;
        return super::predict::run(state, model, caller, body).await;
    }
    let body: RunBody = relay::read_json(request, &state).await?;
    let request = body.into_canonical(model).map_err(RelayError::from)?;
    let stream = request.stream;
    // The catalog's prices, as the ledger bills them; unknown when the model has none.
    let prices = state.catalog().resolve(&request.model).map(|m| m.prices).unwrap_or_default();
    let model = request.model.clone();
    let format = StreamFormat::Run;
    let run = relay::start(&state, caller, request, RunOpening::new(), &format).await?;
    let (run_id, route) = (run.run_id.clone(), run.route.clone());
    let whole = move |answer| whole(&run_id, &model, &route, &prices, answer);
    Ok(relay::answer(&state, run, format, stream, whole).await?)
}

fn whole(
    run_id: &str,
    model: &str,
    route: &str,
    prices: &Prices,
    answer: CanonicalResponse,
) -> Response {
    Json(json!({
        "run_id": run_id,
        "model": model,
        "route": route,
        "output": answer.text().unwrap_or_default(),
        "stop_reason": answer.stop_reason,
        "usage": answer.usage,
        "cost": prices.cost(&answer.usage),
    }))
    .into_response()
}
