//! `POST /v1/messages`.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_gateway::RunOpening;
use hearth_protocol::wire::anthropic::{self, MessagesRequest};
use hearth_protocol::CanonicalResponse;

use super::AnthropicError;
use crate::relay::{self, AnthropicMessage, RelayError, StreamFormat};
use crate::state::AppState;

pub(crate) async fn create(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, AnthropicError> {
    let caller = relay::caller(request.headers())?;
    let wire: MessagesRequest = relay::read_json(request, &state).await?;
    let request = anthropic::to_canonical(wire).map_err(RelayError::from)?;
    let (model, stream) = (request.model.clone(), request.stream);
    let opening = RunOpening::new();
    let message = AnthropicMessage::new(&opening.run_id, &model);
    let format = StreamFormat::Anthropic(message.clone());
    let run = relay::start(&state, caller, request, opening, &format).await?;
    let whole = move |answer| whole(&message, answer);
    Ok(relay::answer(&state, run, format, stream, whole).await?)
}

fn whole(message: &AnthropicMessage, answer: CanonicalResponse) -> Response {
    let mut body = anthropic::response_from_canonical(&answer, &message.id);
    // The id the caller asked for, as in the stream; the route is in a header.
    body.model.clone_from(&message.model);
    Json(body).into_response()
}
