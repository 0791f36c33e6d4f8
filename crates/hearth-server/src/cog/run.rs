//! Running one Cog prediction: reading its gateway run and keeping its shared record current.
//!
//! A prediction is a gateway run started with [`Caller::cancel_on_disconnect`], and a [`Run`]
//! owns that run's subscription. It is owned by whatever waits on the prediction — the sync
//! handler, the SSE body, or the async task — so the prediction lives exactly as long as
//! someone wants it: dropping an unfinished run cancels the gateway run (which ends with a
//! `cancelled` ledger record) and records the prediction as `canceled`. Cog's cancel route and
//! the shutdown deadline fire the prediction's cancel token, which does the same.
//!
//! [`Caller::cancel_on_disconnect`]: hearth_gateway::Caller::cancel_on_disconnect

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use hearth_gateway::{Gateway, RunEvent, StartedRun, Subscription};
use hearth_protocol::{CanonicalEvent, ErrorKind, TokenUsage};
use serde_json::Value;

use super::prediction::{Metrics, Prediction, Status};
use super::registry::PredictionEntry;

/// Shown when a run's events end without a terminal event, which they never should.
const RUN_LOST: &str = "the run ended without finishing";

/// What a run produced next.
pub(crate) enum Update {
    Output {
        chunk: Value,
        index: usize,
    },
    /// A line the predictor printed (Python predictors).
    Log {
        source: String,
        data: String,
    },
    /// The prediction ended; this is its final state.
    Done(Box<Prediction>),
}

/// When a prediction's run was asked for, by the wall clock and by a monotonic one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    pub at: chrono::DateTime<Utc>,
    pub clock: Instant,
}

impl Started {
    pub(crate) fn now() -> Self {
        Self { at: Utc::now(), clock: Instant::now() }
    }
}

pub(crate) struct Run {
    entry: Arc<PredictionEntry>,
    gateway: Gateway,
    run_id: String,
    events: Subscription,
    usage: TokenUsage,
    started: Instant,
    time_to_first_token: Option<Duration>,
    finished: bool,
}

impl Run {
    /// Starts reading `run` and marks the prediction `processing` since `started` (when the
    /// run was asked for: the gateway answers once the first token is in, so timing from here
    /// would leave out the prompt's processing).
    pub(crate) fn start(
        entry: Arc<PredictionEntry>,
        gateway: Gateway,
        run: StartedRun,
        started: Started,
    ) -> Self {
        entry.update(|p| {
            p.status = Status::Processing;
            p.started_at = Some(started.at);
            p.output = Some(Value::Array(Vec::new()));
        });
        Self {
            entry,
            gateway,
            run_id: run.run_id,
            events: run.events,
            usage: TokenUsage::default(),
            started: started.clock,
            time_to_first_token: None,
            finished: false,
        }
    }

    pub(crate) fn entry(&self) -> &Arc<PredictionEntry> {
        &self.entry
    }

    /// The next chunk of output, or the final state; `None` after that.
    pub(crate) async fn next(&mut self) -> Option<Update> {
        while !self.finished {
            let next = tokio::select! {
                // A cancel wins over events already buffered: a fast engine must not starve it.
                biased;
                () = self.entry.cancel_token().cancelled() => {
                    return Some(Update::Done(Box::new(self.cancel().await)));
                }
                next = self.events.next() => next,
            };
            let Some(RunEvent { event, .. }) = next else {
                return Some(Update::Done(Box::new(
                    self.finish(Status::Failed, Some(RUN_LOST.into())),
                )));
            };
            if let Some(update) = self.apply(event) {
                return Some(update);
            }
        }
        None
    }

    fn apply(&mut self, event: CanonicalEvent) -> Option<Update> {
        match event {
            CanonicalEvent::TextDelta { text } => {
                self.time_to_first_token.get_or_insert_with(|| self.started.elapsed());
                let chunk = Value::String(text);
                let index = self.entry.update(|p| push_chunk(&mut p.output, chunk.clone()));
                Some(Update::Output { chunk, index })
            }
            CanonicalEvent::Usage { usage } => {
                self.usage = usage;
                None
            }
            CanonicalEvent::Finish { .. } => {
                Some(Update::Done(Box::new(self.finish(Status::Succeeded, None))))
            }
            CanonicalEvent::Error { error } if error.kind == ErrorKind::Cancelled => {
                Some(Update::Done(Box::new(self.finish(Status::Canceled, None))))
            }
            CanonicalEvent::Error { error } => {
                Some(Update::Done(Box::new(self.finish(Status::Failed, Some(error.message)))))
            }
            // A Cog prediction's output is the answer; reasoning is not part of it.
            CanonicalEvent::MessageStart { .. }
            | CanonicalEvent::ReasoningDelta { .. }
            | CanonicalEvent::ToolCallStart { .. }
            | CanonicalEvent::ToolCallDelta { .. } => None,
        }
    }

    /// Stops the gateway run (its ledger record says `cancelled`) and records the prediction
    /// as `canceled` at once.
    async fn cancel(&mut self) -> Prediction {
        // A run that already ended stays as it is; either answer is fine here.
        let _ = self.gateway.cancel(&self.run_id).await;
        self.finish(Status::Canceled, None)
    }

    fn finish(&mut self, status: Status, error: Option<String>) -> Prediction {
        self.finished = true;
        let metrics = Metrics {
            predict_time: self.started.elapsed().as_secs_f64(),
            input_token_count: Some(self.usage.input_tokens as usize),
            output_token_count: Some(self.usage.output_tokens as usize),
            time_to_first_token: self.time_to_first_token.map(|t| t.as_secs_f64()),
        };
        self.entry.update(|p| {
            p.status = status;
            p.error = error;
            p.completed_at = Some(Utc::now());
            p.metrics = Some(metrics);
            p.clone()
        })
    }
}

/// Appends a chunk to a streaming prediction's output list; answers its index.
pub(crate) fn push_chunk(output: &mut Option<Value>, chunk: Value) -> usize {
    let list = output.get_or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    let Value::Array(items) = list else { return 0 };
    items.push(chunk);
    items.len() - 1
}

/// A prediction being run: by the engine (through a gateway run) or by a Python worker.
pub(crate) enum AnyRun {
    Engine(Run),
    Python(super::python_run::PythonRun),
}

impl AnyRun {
    pub(crate) fn entry(&self) -> &Arc<PredictionEntry> {
        match self {
            AnyRun::Engine(run) => run.entry(),
            AnyRun::Python(run) => run.entry(),
        }
    }

    pub(crate) async fn next(&mut self) -> Option<Update> {
        match self {
            AnyRun::Engine(run) => run.next().await,
            AnyRun::Python(run) => run.next().await,
        }
    }
}

/// Whoever waited on the prediction (a sync or SSE client) left before it finished. The
/// subscription drops with the run, which cancels the gateway run.
impl Drop for Run {
    fn drop(&mut self) {
        if !self.finished {
            let prediction = self.finish(Status::Canceled, None);
            tracing::info!(id = %prediction.id, run_id = %self.run_id, "client disconnected; prediction canceled");
        }
    }
}
