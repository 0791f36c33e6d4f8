//! Running one prediction of a Python predictor: reading its gateway prediction run and
//! keeping the shared prediction record current. The Python counterpart of [`super::run::Run`],
//! with the same ownership rule: whoever waits on the prediction owns it, and dropping it before
//! the end cancels the prediction (the gateway run was started with `cancel_on_disconnect`).

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use hearth_gateway::{PredictionEvent, PredictionRun};
use serde_json::Value;

use super::prediction::{Metrics, Prediction, Status};
use super::registry::PredictionEntry;
use super::run::{push_chunk, Started, Update};

pub(crate) struct PythonRun {
    entry: Arc<PredictionEntry>,
    run: PredictionRun,
    started: Instant,
    /// Whether the output is an iterator: chunks are collected in a list as they come.
    streams: bool,
    cancel_sent: bool,
    finished: bool,
}

impl PythonRun {
    pub(crate) fn start(
        entry: Arc<PredictionEntry>,
        run: PredictionRun,
        started: Started,
        streams: bool,
    ) -> Self {
        entry.update(|p| {
            p.status = Status::Processing;
            p.started_at = Some(started.at);
            p.output = streams.then(|| Value::Array(Vec::new()));
        });
        Self { entry, run, started: started.clock, streams, cancel_sent: false, finished: false }
    }

    pub(crate) fn entry(&self) -> &Arc<PredictionEntry> {
        &self.entry
    }

    /// The next chunk of output or line of logs, or the final state; `None` after that.
    pub(crate) async fn next(&mut self) -> Option<Update> {
        while !self.finished {
            let event = tokio::select! {
                biased;
                () = self.entry.cancel_token().cancelled(), if !self.cancel_sent => {
                    // The worker answers with `Cancelled` (or the result, if it was done).
                    self.cancel_sent = true;
                    self.run.cancel();
                    continue;
                }
                event = self.run.next() => event,
            };
            let Some(event) = event else { break };
            return Some(self.apply(event));
        }
        None
    }

    fn apply(&mut self, event: PredictionEvent) -> Update {
        match event {
            PredictionEvent::Log { source, data } => {
                self.entry.update(|p| p.logs.push_str(&data));
                Update::Log { source, data }
            }
            PredictionEvent::Output(chunk) => {
                let index = self.entry.update(|p| push_chunk(&mut p.output, chunk.clone()));
                Update::Output { chunk, index }
            }
            PredictionEvent::Done { output, predict_time } => {
                let output = (!self.streams).then_some(output);
                Update::Done(Box::new(self.finish(
                    Status::Succeeded,
                    output,
                    None,
                    Some(predict_time),
                )))
            }
            PredictionEvent::Failed { error } => {
                Update::Done(Box::new(self.finish(Status::Failed, None, Some(error), None)))
            }
            PredictionEvent::Cancelled => {
                Update::Done(Box::new(self.finish(Status::Canceled, None, None, None)))
            }
        }
    }

    fn finish(
        &mut self,
        status: Status,
        output: Option<Value>,
        error: Option<String>,
        predict_time: Option<f64>,
    ) -> Prediction {
        self.finished = true;
        let predict_time = predict_time.unwrap_or_else(|| self.started.elapsed().as_secs_f64());
        self.entry.update(|p| {
            p.status = status;
            if output.is_some() {
                p.output = output;
            }
            p.error = error;
            p.completed_at = Some(Utc::now());
            p.metrics = Some(Metrics { predict_time, ..Metrics::default() });
            p.clone()
        })
    }
}

/// Whoever waited on the prediction left before it finished; the gateway run cancels it.
impl Drop for PythonRun {
    fn drop(&mut self) {
        if !self.finished {
            let prediction = self.finish(Status::Canceled, None, None, None);
            tracing::info!(id = %prediction.id, run_id = %self.run.run_id, "client disconnected; prediction canceled");
        }
    }
}
