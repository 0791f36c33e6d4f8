//! Answering a `/v1/completions` generation: as one JSON response, or as OpenAI's SSE chunk
//! stream.
//!
//! A stream is: content chunks, a chunk with the finish reason, (with `include_usage`) a chunk
//! with no choices and the usage, then `data: [DONE]`. A stream that fails after it started ends with `data: {"error": …}` and no
//! `[DONE]`, so a client never mistakes it for a clean, complete answer.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use hearth_protocol::{FinishReason, GenerationEvent};
use serde_json::Value;

use super::error::OpenAiError;
use super::response::Encoder;
use crate::generation::Generation;

/// Waits for the whole generation and answers with one response object.
pub(crate) async fn complete(
    mut generation: Generation,
    encoder: Encoder,
) -> Result<Json<Value>, OpenAiError> {
    let mut text = String::new();
    while let Some(event) = generation.next().await {
        match event {
            GenerationEvent::Text { text: chunk, .. } => text.push_str(&chunk),
            GenerationEvent::Finished { reason: FinishReason::Cancelled, .. } => {
                return Err(OpenAiError::ShuttingDown)
            }
            GenerationEvent::Finished { reason, usage } => {
                return Ok(Json(encoder.complete(text, reason.as_openai(), &usage)));
            }
            GenerationEvent::Failed { message } => return Err(OpenAiError::Generation(message)),
        }
    }
    Err(OpenAiError::Generation("the generation ended without a result".to_owned()))
}

/// Streams the generation as SSE chunks. The body owns the generation: a client that
/// disconnects drops it, which cancels the request in the engine.
pub(crate) fn stream(
    generation: Generation,
    encoder: Encoder,
    include_usage: bool,
    keep_alive: Duration,
) -> Response {
    // The encoder travels in the state with the generation: cloning it (its id and model
    // strings) for every token is what a closure-captured encoder would cost.
    let events = stream::unfold(Some((generation, encoder)), move |state| async move {
        let (mut generation, encoder) = state?;
        let event = generation.next().await?;
        let (events, more) = encode(&encoder, event, include_usage);
        Some((events, more.then_some((generation, encoder))))
    });
    let events = events.flat_map(stream::iter).map(Ok::<_, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive)).into_response()
}

/// The SSE events for one generation event, and whether the stream goes on.
fn encode(encoder: &Encoder, event: GenerationEvent, include_usage: bool) -> (Vec<Event>, bool) {
    match event {
        GenerationEvent::Text { text, .. } => (vec![data(&encoder.text_chunk(&text))], true),
        GenerationEvent::Finished { reason: FinishReason::Cancelled, .. } => {
            (vec![data(&OpenAiError::ShuttingDown.body())], false)
        }
        GenerationEvent::Finished { reason, usage } => {
            let mut events = vec![data(&encoder.finish_chunk(reason.as_openai()))];
            if include_usage {
                events.push(data(&encoder.usage_chunk(&usage)));
            }
            events.push(Event::default().data("[DONE]"));
            (events, false)
        }
        GenerationEvent::Failed { message } => {
            (vec![data(&OpenAiError::Generation(message).body())], false)
        }
    }
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}
