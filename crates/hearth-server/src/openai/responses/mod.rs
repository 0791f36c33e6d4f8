//! `POST /v1/responses`: OpenAI's Responses API over the gateway, for local and upstream models
//! alike. The body is read into the canonical request (continuing a stored conversation when it
//! names `previous_response_id`), the gateway runs it as any other run, and the response object
//! and its typed events are built from the run's canonical events by one encoder
//! ([`StreamEncoder`]) — for the stream, the whole answer, a retrieval and a resume alike.
//!
//! A response id is its run's id with another prefix, and a background response is nothing but
//! a run nobody waits for: it survives its caller as every run does, and is resumed from the
//! run's buffer.

mod retrieve;
mod store;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, StreamExt};
use hearth_gateway::{RunEvent, RunOpening, RunStatus, Subscription};
use hearth_protocol::wire::responses::{
    self, ConvertedInput, CreateResponse, ResponseHeader, ResponseObject, StreamEncoder,
};
use hearth_protocol::{CanonicalEvent, StreamError};
use serde::Deserialize;
use serde_json::json;

pub(crate) use retrieve::{cancel, delete, retrieve};
pub(crate) use store::ResponseStore;
use store::StoredResponse;

use super::error::OpenAiError;
use super::extract::OpenAiJson;
use crate::defaults;
use crate::relay::{self, RelayError, StreamFormat};
use crate::state::AppState;

/// Fields of the Responses API that Hearth does not implement and whose loss would change the
/// answer; other unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct Unsupported {
    conversation: Option<serde_json::Value>,
    prompt: Option<serde_json::Value>,
    top_logprobs: Option<u64>,
}

impl Unsupported {
    fn check(&self) -> Result<(), OpenAiError> {
        if self.conversation.as_ref().is_some_and(|c| !c.is_null()) {
            return Err(OpenAiError::invalid(
                "conversation",
                "conversations are not supported; continue with `previous_response_id`",
            ));
        }
        if self.prompt.as_ref().is_some_and(|p| !p.is_null()) {
            return Err(OpenAiError::invalid("prompt", "prompt templates are not supported"));
        }
        if self.top_logprobs.is_some_and(|n| n > 0) {
            return Err(OpenAiError::invalid("top_logprobs", "logprobs are not supported"));
        }
        Ok(())
    }
}

pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: OpenAiJson,
) -> Result<Response, OpenAiError> {
    body.parse::<Unsupported>()?.check()?;
    let wire: CreateResponse = body.into_typed()?;
    let caller = relay::caller(&headers)?;
    // `x-hearth-collect-log: false` keeps nothing: no stored response either.
    let collect = caller.log.collect.unwrap_or(true);
    if !collect && wire.store == Some(true) {
        return Err(OpenAiError::invalid(
            "store",
            "`store: true` keeps the response, and `x-hearth-collect-log: false` asks that nothing be kept",
        ));
    }
    let (store, background) = (wire.store.unwrap_or(collect), wire.background.unwrap_or(false));
    if background && !store {
        return Err(OpenAiError::invalid(
            "background",
            "a background response must be stored: `background: true` needs `store: true`",
        ));
    }
    let earlier = match &wire.previous_response_id {
        Some(id) => previous_conversation(&state, id).await?,
        None => ConvertedInput::default(),
    };
    let mut settings = responses::echo(&wire);
    let (mut request, conversation) = responses::to_canonical(wire, earlier)?;
    defaults::openai(&mut request);
    settings.insert("temperature".into(), json!(request.sampling.temperature));
    settings.insert("top_p".into(), json!(request.sampling.top_p));
    let (model, stream) = (request.model.clone(), request.stream);
    let opening = RunOpening::new();
    let header = ResponseHeader {
        id: response_id(&opening.run_id),
        created_at: chrono::Utc::now().timestamp(),
        model,
        settings,
    };
    let format = StreamFormat::Responses(header.clone());
    let run = relay::start(&state, caller, request, opening, &format).await?;
    if store {
        let stored = StoredResponse {
            run_id: run.run_id.clone(),
            header: header.clone(),
            background,
            conversation,
            finished: None,
        };
        state.responses().insert(&header.id, stored);
        keep_when_finished(&state, &run.run_id, header.clone());
    }
    let mut response = if stream {
        sse(&state, header, run.events, None)
    } else if background {
        // Answered at once; the run goes on, and the stored response follows it.
        Json(StreamEncoder::new(header).response()).into_response()
    } else {
        let id = header.id.clone();
        let (object, failure) = read_to_end(header, run.events).await;
        if store {
            // Stored before the answer goes out, so the caller can continue from it at once.
            state.responses().finish(&id, object.clone());
        }
        if let Some(error) = failure {
            // As on chat completions: a caller waiting for one answer gets the failure as an
            // HTTP error (the stored response says `failed` too).
            let (run_id, route, error) = (run.run_id, run.route, Box::new(error));
            return Err(RelayError::Failed { run_id, route, error }.into());
        }
        Json(object).into_response()
    };
    relay::set_run_headers(response.headers_mut(), &run.run_id, Some(&run.route));
    relay::set_cache_status(response.headers_mut(), run.cache);
    Ok(response)
}

/// The conversation a new response continues: the earlier one's, then its answer.
async fn previous_conversation(state: &AppState, id: &str) -> Result<ConvertedInput, OpenAiError> {
    let param = "previous_response_id";
    let Some(previous) = state.responses().get(id) else {
        return Err(OpenAiError::invalid(
            param,
            format!("Previous response with id '{id}' not found."),
        ));
    };
    let finished = match &previous.finished {
        Some(finished) => finished.clone(),
        None => ended_run_response(state, &previous).await.ok_or_else(|| {
            OpenAiError::invalid(
                param,
                format!(
                    "Previous response with id '{id}' is still in progress; wait until it ends."
                ),
            )
        })?,
    };
    let mut conversation = previous.conversation.clone();
    conversation.messages.extend(responses::output_message(&finished));
    Ok(conversation)
}

/// The finished object of a response whose run has ended but whose follower task has not yet
/// stored it: a caller who got the last event may continue at once. `None` while it runs.
async fn ended_run_response(state: &AppState, stored: &StoredResponse) -> Option<ResponseObject> {
    let gateway = state.gateway();
    let info = gateway.status(&stored.run_id).await.ok()?;
    if info.status == RunStatus::Running {
        return None;
    }
    let events = gateway.subscribe(&stored.run_id, 0).await.ok()?;
    let (object, _) = read_to_end(stored.header.clone(), events).await;
    state.responses().finish(&stored.header.id, object.clone());
    Some(object)
}

/// Follows the run to its end and stores the finished response object, whether or not anyone
/// is still reading the answer.
fn keep_when_finished(state: &AppState, run_id: &str, header: ResponseHeader) {
    let (state, run_id) = (state.clone(), run_id.to_owned());
    state.clone().tasks().spawn(async move {
        let id = header.id.clone();
        match state.gateway().subscribe(&run_id, 0).await {
            Ok(events) => state.responses().finish(&id, read_to_end(header, events).await.0),
            Err(err) => tracing::warn!(response_id = %id, error = %err, "response lost its run"),
        }
    });
}

/// The response object built from the run's events up to its terminal one, and the run's error
/// when it failed.
async fn read_to_end(
    header: ResponseHeader,
    mut events: Subscription,
) -> (ResponseObject, Option<StreamError>) {
    let mut encoder = StreamEncoder::new(header);
    let mut failure = None;
    while let Some(RunEvent { event, .. }) = events.next().await {
        encoder.encode(&event);
        if let CanonicalEvent::Error { error } = event {
            failure = Some(error);
        }
    }
    (encoder.into_response(), failure)
}

/// The run's events as the Responses API's typed events, each SSE frame's `id:` its sequence
/// number; those up to `starting_after` are left out (a resume replays from the run's first
/// event, so every event keeps its number).
fn sse(
    state: &AppState,
    header: ResponseHeader,
    events: Subscription,
    starting_after: Option<u64>,
) -> Response {
    let mut encoder = StreamEncoder::new(header);
    let frames = events.flat_map(move |RunEvent { event, .. }| {
        let frames = encoder.encode_numbered(&event).into_iter();
        let wanted = frames.filter(move |(seq, _)| starting_after.is_none_or(|n| *seq > n));
        stream::iter(wanted.map(|(seq, frame)| {
            let event = Event::default().id(seq.to_string()).data(frame.data);
            Ok::<_, Infallible>(match frame.event {
                Some(name) => event.event(name),
                None => event,
            })
        }))
    });
    let keep_alive = KeepAlive::new().interval(state.config().sse_keep_alive);
    Sse::new(frames).keep_alive(keep_alive).into_response()
}

/// `resp_…` for run `run_…`: one id space, so a response leads to its run and its ledger record.
fn response_id(run_id: &str) -> String {
    format!("resp_{}", run_id.strip_prefix("run_").unwrap_or(run_id))
}
