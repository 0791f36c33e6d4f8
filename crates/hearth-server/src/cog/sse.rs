//! Cog's server-sent events: `start`, one `output` per chunk, then `completed` with the final
//! prediction (a failed prediction sends `error` just before it).
//!
//! The live stream owns the [`Run`], so when the client disconnects and the body is dropped the
//! generation is cancelled in the engine.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;
use serde_json::json;

use super::prediction::{Prediction, Status};
use super::registry::PredictionEntry;
use super::run::{AnyRun, Update};

fn event(name: &str, data: &impl Serialize) -> Event {
    Event::default().event(name).json_data(data).unwrap_or_else(|err| {
        // Our payloads are plain data; this would be a bug, so say so rather than go silent.
        Event::default().event("error").data(format!("could not encode `{name}` event: {err}"))
    })
}

fn start_event(prediction: &Prediction) -> Event {
    event("start", &json!({ "id": prediction.id, "status": prediction.status }))
}

fn output_event(chunk: &serde_json::Value, index: usize) -> Event {
    event("output", &json!({ "chunk": chunk, "index": index }))
}

fn log_event(source: &str, data: &str) -> Event {
    event("log", &json!({ "source": source, "data": data }))
}

/// The closing events of a finished prediction.
fn final_events(prediction: &Prediction) -> Vec<Event> {
    let mut events = Vec::with_capacity(2);
    if prediction.status == Status::Failed {
        events.push(event(
            "error",
            &json!({ "id": prediction.id, "status": "failed", "error": prediction.error }),
        ));
    }
    events.push(event("completed", prediction));
    events
}

pub(crate) fn respond(
    events: impl Stream<Item = Event> + Send + 'static,
    keep_alive: Duration,
) -> Response {
    Sse::new(events.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response()
}

/// Streams a prediction as it runs.
pub(crate) fn live(run: AnyRun) -> impl Stream<Item = Event> + Send + 'static {
    let start = start_event(&run.entry().snapshot());
    let rest = stream::unfold(Some(run), |run| async move {
        let mut run = run?;
        match run.next().await? {
            Update::Output { chunk, index } => Some((vec![output_event(&chunk, index)], Some(run))),
            Update::Log { source, data } => Some((vec![log_event(&source, &data)], Some(run))),
            Update::Done(prediction) => Some((final_events(&prediction), None)),
        }
    });
    stream::once(async move { start }).chain(rest.flat_map(stream::iter))
}

/// Streams a prediction someone else is running (a repeated `PUT` with `Accept:
/// text/event-stream`): the output so far, then new output as it comes, then the end.
pub(crate) fn follow(entry: Arc<PredictionEntry>) -> impl Stream<Item = Event> + Send + 'static {
    let start = start_event(&entry.snapshot());
    let changes = entry.subscribe();
    let rest = stream::unfold(Some((entry, changes, 0usize)), |state| async move {
        let (entry, mut changes, sent) = state?;
        loop {
            let prediction = entry.snapshot();
            let output = match &prediction.output {
                Some(serde_json::Value::Array(items)) => items.as_slice(),
                _ => &[],
            };
            if sent < output.len() {
                let events: Vec<Event> = output[sent..]
                    .iter()
                    .enumerate()
                    .map(|(i, chunk)| output_event(chunk, sent + i))
                    .collect();
                let sent = output.len();
                return Some((events, Some((entry, changes, sent))));
            }
            if prediction.status.is_terminal() {
                return Some((final_events(&prediction), None));
            }
            // The sender lives in the entry we hold, so this cannot fail; end cleanly if it does.
            changes.changed().await.ok()?;
        }
    });
    stream::once(async move { start }).chain(rest.flat_map(stream::iter))
}
