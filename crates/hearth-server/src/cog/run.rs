//! Running one Cog prediction: reading its generation and keeping its shared record current.
//!
//! A [`Run`] is owned by whatever waits on the prediction — the sync handler, the SSE body, or
//! the async task — so the prediction lives exactly as long as someone wants it. Dropping an
//! unfinished run cancels the generation and records the prediction as `canceled`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hearth_engine::GenerationStream;
use hearth_protocol::{FinishReason, GenerationEvent, Usage};

use super::prediction::{Metrics, Prediction, Status};
use super::registry::PredictionEntry;
use crate::generation::Generation;

/// What a run produced next.
pub(crate) enum Update {
    Output {
        chunk: String,
        index: usize,
    },
    /// The prediction ended; this is its final state.
    Done(Prediction),
}

pub(crate) struct Run {
    entry: Arc<PredictionEntry>,
    generation: Generation,
    started: Instant,
    time_to_first_token: Option<Duration>,
    finished: bool,
}

impl Run {
    /// Starts reading `stream` and marks the prediction `processing`.
    pub(crate) fn start(entry: Arc<PredictionEntry>, stream: GenerationStream) -> Self {
        let generation = Generation::new(stream, entry.cancel_token().clone());
        entry.update(|p| {
            p.status = Status::Processing;
            p.started_at = Some(Utc::now());
            p.output = Some(Vec::new());
        });
        Self {
            entry,
            generation,
            started: Instant::now(),
            time_to_first_token: None,
            finished: false,
        }
    }

    pub(crate) fn entry(&self) -> &Arc<PredictionEntry> {
        &self.entry
    }

    /// The next chunk of output, or the final state; `None` after that.
    pub(crate) async fn next(&mut self) -> Option<Update> {
        if self.finished {
            return None;
        }
        let update = match self.generation.next().await {
            Some(GenerationEvent::Text { text, .. }) => {
                self.time_to_first_token.get_or_insert_with(|| self.started.elapsed());
                let index = self.entry.update(|p| {
                    let output = p.output.get_or_insert_with(Vec::new);
                    output.push(text.clone());
                    output.len() - 1
                });
                Update::Output { chunk: text, index }
            }
            Some(GenerationEvent::Finished { reason, usage }) => {
                let status = match reason {
                    FinishReason::Cancelled => Status::Canceled,
                    FinishReason::Stop | FinishReason::Length => Status::Succeeded,
                };
                Update::Done(self.finish(status, None, usage))
            }
            Some(GenerationEvent::Failed { message }) => {
                let usage = self.generation.usage_so_far();
                Update::Done(self.finish(Status::Failed, Some(message), usage))
            }
            // `Generation` always ends with a terminal event; reaching here means it already did.
            None => Update::Done(self.entry.snapshot()),
        };
        Some(update)
    }

    fn finish(&mut self, status: Status, error: Option<String>, usage: Usage) -> Prediction {
        self.finished = true;
        let metrics = Metrics {
            predict_time: self.started.elapsed().as_secs_f64(),
            input_token_count: usage.prompt_tokens,
            output_token_count: usage.completion_tokens,
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

/// Whoever waited on the prediction (a sync or SSE client) left before it finished.
impl Drop for Run {
    fn drop(&mut self) {
        if !self.finished {
            let usage = self.generation.usage_so_far();
            let prediction = self.finish(Status::Canceled, None, usage);
            tracing::info!(id = %prediction.id, "client disconnected; prediction canceled");
        }
    }
}
