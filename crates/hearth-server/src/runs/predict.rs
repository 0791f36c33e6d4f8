//! `POST /v1/run/{model}` for a model served by its Python predictor: `{"input": {...}}` is
//! the predictor's own input (as Cog's `input`), with `stream` and `metadata` beside it.
//!
//! A whole answer is `{"run_id", "model", "route", "status", "output", "error", "logs",
//! "metrics": {"predict_time"}}`; a failed prediction is still a 200 with `status: "failed"`,
//! as in Cog. A streamed one is SSE: `output` events (`{"chunk", "index"}`), `log` events
//! (`{"source", "data"}`), then one `completed` event with the whole answer. Unlike a Cog
//! prediction, a run goes on when its caller leaves (the run API's rule for every model).

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream;
use hearth_gateway::{Caller, PredictionEvent, PredictionRun};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::ApiError;
use crate::relay::{self, RelayError};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PredictBody {
    #[serde(default)]
    input: Map<String, Value>,
    #[serde(default)]
    stream: bool,
    metadata: Option<Map<String, Value>>,
}

pub(super) async fn run(
    state: AppState,
    model: String,
    mut caller: Caller,
    body: PredictBody,
) -> Result<Response, ApiError> {
    if caller.metadata.is_none() {
        caller.metadata = body.metadata.map(Value::Object);
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let input = Value::Object(body.input);
    let run = state
        .gateway()
        .predict(&model, &id, input, caller, state.files())
        .await
        .map_err(RelayError::from)?;
    let (run_id, route) = (run.run_id.clone(), run.route.clone());
    let answer =
        Answer { run_id: run_id.clone(), model, route: route.clone(), ..Answer::default() };
    let mut response = if body.stream {
        stream_answer(run, answer, state.config().sse_keep_alive)
    } else {
        Json(whole(run, answer).await).into_response()
    };
    relay::set_run_headers(response.headers_mut(), &run_id, Some(&route));
    Ok(response)
}

#[derive(Default)]
struct Answer {
    run_id: String,
    model: String,
    route: String,
    chunks: Vec<Value>,
    logs: String,
}

impl Answer {
    /// Takes an event in; for the terminal one, answers the whole answer.
    fn take(&mut self, event: PredictionEvent) -> Option<Value> {
        let (status, output, error, predict_time) = match event {
            PredictionEvent::Log { data, .. } => {
                self.logs.push_str(&data);
                return None;
            }
            PredictionEvent::Output(chunk) => {
                self.chunks.push(chunk);
                return None;
            }
            PredictionEvent::Done { output, predict_time } => {
                let output =
                    if output.is_null() { Value::Array(self.chunks.clone()) } else { output };
                ("succeeded", output, Value::Null, Some(predict_time))
            }
            PredictionEvent::Failed { error } => ("failed", Value::Null, json!(error), None),
            PredictionEvent::Cancelled => ("canceled", Value::Null, Value::Null, None),
        };
        Some(json!({
            "run_id": self.run_id,
            "model": self.model,
            "route": self.route,
            "status": status,
            "output": output,
            "error": error,
            "logs": self.logs,
            "metrics": { "predict_time": predict_time },
        }))
    }
}

async fn whole(mut run: PredictionRun, mut answer: Answer) -> Value {
    while let Some(event) = run.next().await {
        if let Some(whole) = answer.take(event) {
            return whole;
        }
    }
    answer
        .take(PredictionEvent::Failed { error: "the prediction was lost".into() })
        .unwrap_or_default()
}

fn stream_answer(run: PredictionRun, answer: Answer, keep_alive: std::time::Duration) -> Response {
    let events = stream::unfold(Some((run, answer)), |state| async move {
        let (mut run, mut answer) = state?;
        let event = run.next().await?;
        let sse = match &event {
            PredictionEvent::Log { source, data } => {
                sse_value("log", &json!({ "source": source, "data": data }))
            }
            PredictionEvent::Output(chunk) => {
                sse_value("output", &json!({ "chunk": chunk, "index": answer.chunks.len() }))
            }
            _ => Event::default(),
        };
        match answer.take(event) {
            Some(whole) => Some((Ok::<_, Infallible>(sse_value("completed", &whole)), None)),
            None => Some((Ok(sse), Some((run, answer)))),
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive)).into_response()
}

fn sse_value(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}
