//! Predictions of Python-served packages as runs: like a generation, each has a run id, a run
//! buffer (its `message_start` and terminal events; outputs go only to the caller) and one
//! ledger record, with the prediction time and, when the package has a `price_per_second`,
//! its cost.
//!
//! The prediction is driven by a detached task, so a caller that leaves cannot leave it
//! without its end: the task fetches file inputs, waits on the worker, turns file outputs into
//! data URIs or uploads, enforces the package's prediction timeout, and writes the record. A
//! caller that started with [`Caller::cancel_on_disconnect`] cancels the prediction by
//! dropping its [`PredictionRun`] before the end (Cog's semantics).

use std::time::{Duration, Instant};

use chrono::Utc;
use hearth_protocol::{CanonicalEvent, ErrorKind, StopReason};
use hearth_python::files::{self, FileConfig, InputFiles};
use hearth_python::{Event, PredictError, Prediction};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::{CatalogError, PythonModel};
use crate::gateway::{caller_metadata, check_key, new_run_id, Caller, Gateway, StartError};
use crate::ledger::{CallerMetadata, LedgerRecord, LedgerStatus, RunPayload};
use crate::limits::{self, Usage};
use crate::runs::{NewRun, RunStatus};

/// How long a prediction that overran its timeout gets to stop after being cancelled, before
/// its worker is killed.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Why a prediction did not start.
#[derive(Debug, thiserror::Error)]
pub enum PredictRunError {
    #[error(transparent)]
    Start(#[from] StartError),
    /// The worker is starting, restarting, or its setup failed.
    #[error("{0}")]
    NotReady(String),
    /// Every slot is taken.
    #[error("At capacity - all prediction slots busy")]
    Busy,
    /// The input was refused (by Cog's SDK, or a file input that could not be fetched);
    /// `field` names the input when the message does.
    #[error("{message}")]
    Invalid { field: Option<String>, message: String },
}

/// A prediction that started.
pub struct PredictionRun {
    pub run_id: String,
    /// `local/<package>`.
    pub route: String,
    events: mpsc::UnboundedReceiver<Event>,
    cancel: CancellationToken,
    cancel_on_drop: bool,
    finished: bool,
}

impl PredictionRun {
    /// The next event; file outputs are already data URIs or uploaded URLs. `None` after the
    /// terminal event.
    pub async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let event = self
            .events
            .recv()
            .await
            .unwrap_or_else(|| Event::Failed { error: "the prediction was lost".into() });
        self.finished = event.is_terminal();
        Some(event)
    }

    /// Cancels the prediction; it ends with [`Event::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl Drop for PredictionRun {
    fn drop(&mut self) {
        if self.cancel_on_drop && !self.finished {
            self.cancel.cancel();
        }
    }
}

impl Gateway {
    /// Starts a prediction `id` of the Python-served package `model`. Answers once the worker
    /// accepted the input.
    pub async fn predict(
        &self,
        model: &str,
        id: &str,
        mut input: Value,
        caller: Caller,
        files: &FileConfig,
    ) -> Result<PredictionRun, PredictRunError> {
        let metadata = caller_metadata(&caller, None).map_err(StartError::from)?;
        check_key(&caller, model)?;
        let reservation = limits::admit_usage(&self.inner, &caller, &metadata, Usage::default());
        reservation.await.map_err(StartError::from)?;
        let Some(python) = self.catalog().python(model).cloned() else {
            return Err(StartError::Model(CatalogError::NotFound(model.into())).into());
        };
        let Some(schema) = python.worker.schema() else {
            return Err(PredictRunError::NotReady(python.worker.status().describe()));
        };
        let keep = self.inner.logging.keep(caller.log);
        // As the caller sent it, secrets redacted: file inputs are fetched into it next.
        let logged_input = keep.payload.then(|| schema.redacted(&input));
        let inputs =
            files::fetch_inputs(&schema, &mut input, files).await.map_err(|e| match e {
                files::FileError::Input { field, message } => PredictRunError::Invalid {
                    message: format!("{field}: {message}"),
                    field: Some(field),
                },
                other => PredictRunError::NotReady(other.to_string()),
            })?;
        let prediction = python.worker.predict(id, input).await.map_err(|e| match e {
            PredictError::Busy => PredictRunError::Busy,
            PredictError::Invalid(message) => {
                let field = message
                    .split([':', ' '])
                    .next()
                    .filter(|f| schema.input.get("properties").and_then(|p| p.get(f)).is_some());
                PredictRunError::Invalid { field: field.map(str::to_owned), message }
            }
            PredictError::NotReady(reason) | PredictError::WorkerLost(reason) => {
                PredictRunError::NotReady(reason)
            }
        })?;
        let run_id = new_run_id();
        let route = format!("local/{model}");
        let runs = &self.inner.runs;
        // The run's own token: a cancel through the run API (or the dashboard) stops it too.
        let new = NewRun { forget_at_end: !keep.collect, ..NewRun::of(model) };
        let cancel = runs.create(&run_id, new).await.map_err(StartError::from)?;
        let _ = runs.set_route(&run_id, &route).await;
        let _ =
            runs.append(&run_id, CanonicalEvent::MessageStart { model: model.to_owned() }).await;
        let (sender, events) = mpsc::unbounded_channel();
        let job = Job {
            run_id: run_id.clone(),
            route: route.clone(),
            model: model.to_owned(),
            metadata,
            api_key_id: caller.api_key_id.clone(),
            python,
            files: files.clone(),
            logged_input,
            _inputs: inputs,
            cancel: cancel.clone(),
            sender,
        };
        let gateway = self.clone();
        self.inner.tasks.spawn(async move { gateway.drive(job, prediction).await });
        // The id goes out to the caller: another replica must find it.
        runs.published(&run_id).await;
        Ok(PredictionRun {
            run_id,
            route,
            events,
            cancel,
            cancel_on_drop: caller.cancel_on_disconnect,
            finished: false,
        })
    }

    /// Follows a prediction to its end, then ends its run and writes its ledger record.
    async fn drive(&self, job: Job, mut prediction: Prediction) {
        // Listed for the admin API while it runs; unlisted however it ends.
        let listed = self.inner.live.list(&job.run_id, &job.model, &job.metadata);
        listed.run.set_route(&job.route);
        let started = Instant::now();
        let started_at = Utc::now();
        let timeout = job.python.settings.predict_timeout_s.map(Duration::from_secs);
        // The next deadline: the prediction's timeout, then (once it is cancelled for
        // overrunning) the grace it gets to stop before its worker is killed.
        let mut deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut timed_out = false;
        let mut cancelled = false;
        // The output chunks, kept only for a payload.
        let mut outputs = Vec::new();
        let terminal = loop {
            let overran = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                event = prediction.next() => event,
                () = job.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    prediction.cancel();
                    continue;
                }
                () = overran => {
                    if timed_out {
                        prediction.worker().kill("a prediction overran its timeout and did not stop");
                        deadline = None;
                    } else {
                        timed_out = true;
                        prediction.cancel();
                        deadline = Some(tokio::time::Instant::now() + CANCEL_GRACE);
                    }
                    continue;
                }
            };
            let Some(event) = event else {
                break Event::Failed { error: "the prediction was lost".into() };
            };
            let event = match encode_files(event, &job.files).await {
                Ok(event) => event,
                Err(error) => {
                    prediction.cancel();
                    break Event::Failed { error };
                }
            };
            let event = match (timeout, event) {
                (Some(limit), Event::Cancelled | Event::Failed { .. }) if timed_out => {
                    let error = format!("the prediction timed out after {} s", limit.as_secs());
                    Event::Failed { error }
                }
                (_, event) => event,
            };
            if event.is_terminal() {
                break event;
            }
            if let (Event::Output(chunk), Some(_)) = (&event, &job.logged_input) {
                outputs.push(chunk.clone());
            }
            let _ = job.sender.send(event);
        };
        self.finish(&job, &terminal, started, started_at).await;
        if let Some(input) = &job.logged_input {
            self.store_payload(&job.run_id, input, &terminal, outputs).await;
        }
        let _ = job.sender.send(terminal);
    }

    /// Stores the prediction's payload: its input (secrets redacted) and how it ended, with its
    /// output as Cog shows it (an iterator's chunks as a list).
    async fn store_payload(
        &self,
        run_id: &str,
        input: &Value,
        terminal: &Event,
        outputs: Vec<Value>,
    ) {
        let response = match terminal {
            Event::Done { output, .. } => {
                let output = if output.is_null() && !outputs.is_empty() {
                    Value::Array(outputs)
                } else {
                    output.clone()
                };
                json!({ "status": "succeeded", "output": output })
            }
            Event::Failed { error } => json!({ "status": "failed", "error": error }),
            _ => json!({ "status": "canceled" }),
        };
        let payload = RunPayload {
            run_id: run_id.to_owned(),
            stored_at: Utc::now(),
            request: json!({ "input": input }),
            response,
        };
        if let Err(e) = self.inner.ledger.store_payloads(&[payload]).await {
            tracing::error!(run_id, error = %e, "could not store the prediction's payload");
        }
    }

    async fn finish(
        &self,
        job: &Job,
        terminal: &Event,
        started: Instant,
        started_at: chrono::DateTime<Utc>,
    ) {
        let runs = &self.inner.runs;
        let (status, run_status, error, predict_time) = match terminal {
            Event::Done { predict_time, .. } => {
                let _ = runs
                    .append(&job.run_id, CanonicalEvent::Finish { reason: StopReason::Stop })
                    .await;
                (LedgerStatus::Finished, RunStatus::Finished, None, *predict_time)
            }
            Event::Cancelled => {
                let event =
                    CanonicalEvent::error(ErrorKind::Cancelled, "the prediction was canceled");
                let _ = runs.append(&job.run_id, event).await;
                (
                    LedgerStatus::Cancelled,
                    RunStatus::Cancelled,
                    None,
                    started.elapsed().as_secs_f64(),
                )
            }
            Event::Failed { error } => {
                let _ = runs
                    .append(&job.run_id, CanonicalEvent::error(ErrorKind::Internal, error.clone()))
                    .await;
                (
                    LedgerStatus::Failed,
                    RunStatus::Failed,
                    Some(error.clone()),
                    started.elapsed().as_secs_f64(),
                )
            }
            Event::Log { .. } | Event::Output(_) => return,
        };
        let _ = runs.finish(&job.run_id, run_status).await;
        let cost = job
            .python
            .settings
            .price_per_second
            .and_then(|price| Decimal::from_f64(price * predict_time))
            .map(|cost| cost.round_dp(9));
        let record = LedgerRecord {
            run_id: job.run_id.clone(),
            model: job.model.clone(),
            route: Some(job.route.clone()),
            status,
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            cost,
            ttft_ms: None,
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            metadata: job.metadata.clone(),
            api_key_id: job.api_key_id.clone(),
            started_at,
            ended_at: Utc::now(),
            error,
            cached: false,
        };
        if let Err(e) = self.inner.ledger.record(&record).await {
            tracing::error!(run_id = %job.run_id, error = %e, "could not write the ledger record");
        }
    }
}

/// An event with the files it holds turned into data URIs or uploaded URLs.
async fn encode_files(event: Event, files: &FileConfig) -> Result<Event, String> {
    let encode = |value| async move { files::encode_outputs(value, files).await };
    Ok(match event {
        Event::Output(chunk) => Event::Output(encode(chunk).await.map_err(|e| e.to_string())?),
        Event::Done { output, predict_time } => {
            let output = encode(output).await.map_err(|e| e.to_string())?;
            Event::Done { output, predict_time }
        }
        other => other,
    })
}

struct Job {
    run_id: String,
    /// The input as logging stores it (secrets redacted), when payloads are stored.
    logged_input: Option<Value>,
    route: String,
    model: String,
    metadata: CallerMetadata,
    api_key_id: Option<String>,
    python: PythonModel,
    files: FileConfig,
    /// Removed when the prediction is over.
    _inputs: InputFiles,
    cancel: CancellationToken,
    sender: mpsc::UnboundedSender<Event>,
}
