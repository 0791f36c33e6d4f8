//! Embedding requests as runs: like a generation, each has a run id, a run buffer (its
//! `message_start`, `usage` and terminal events; the vectors go only to the caller) and one
//! ledger record, so `/v1/usage` counts embeddings beside chat.
//!
//! An embedding is answered in one piece within milliseconds, so there is no router here: the
//! model id names a loaded embedding package, and its embedder serves it. The work runs as a
//! detached task, as a producer does: a caller that leaves mid-way still gets its run ended and
//! its record written.

use std::time::Instant;

use chrono::Utc;
use hearth_engine::{EmbedError, EmbedInput, Embeddings};
use hearth_protocol::{CanonicalEvent, ErrorKind, StopReason, TokenUsage};

use crate::catalog::CatalogError;
use crate::gateway::{caller_metadata, check_key, new_run_id, Caller, Gateway, StartError};
use crate::ledger::{CallerMetadata, LedgerRecord, LedgerStatus};
use crate::limits::{self, Usage};
use crate::runs::{NewRun, RunStatus};

/// An embedding run that answered.
#[derive(Debug)]
pub struct EmbeddingRun {
    pub run_id: String,
    /// `local/<package>`.
    pub route: String,
    pub embeddings: Embeddings,
}

/// Why an embedding run did not answer.
#[derive(Debug, thiserror::Error)]
pub enum EmbedRunError {
    /// Refused before a run existed (unknown model, bad metadata, run buffers full).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The embedder refused or failed; the run exists and has its ledger record.
    #[error("{error}")]
    Embed { run_id: String, route: String, error: EmbedError },
}

impl Gateway {
    /// Embeds `inputs` with the embedding model `model` as one run.
    pub async fn embed(
        &self,
        model: &str,
        inputs: Vec<EmbedInput>,
        caller: Caller,
    ) -> Result<EmbeddingRun, EmbedRunError> {
        let metadata = caller_metadata(&caller, None).map_err(StartError::from)?;
        check_key(&caller, model)?;
        let reservation = limits::admit_usage(&self.inner, &caller, &metadata, Usage::default());
        reservation.await.map_err(StartError::from)?;
        let embedder = match self.catalog().embedder(model) {
            Some(found) => found.embedder.clone(),
            None => return Err(StartError::Model(CatalogError::NotFound(model.into())).into()),
        };
        let run_id = new_run_id();
        let route = format!("local/{model}");
        let inner = self.inner.clone();
        let forget_at_end = !inner.logging.keep(caller.log).collect;
        let new = NewRun { forget_at_end, ..NewRun::of(model) };
        inner.runs.create(&run_id, new).await.map_err(StartError::from)?;
        let (ids, job) = (
            (run_id.clone(), route.clone()),
            EmbedJob { run_id, route, model: model.to_owned(), metadata, caller },
        );
        let gateway = self.clone();
        // Detached, so that a caller leaving mid-way cannot leave the run without its end.
        let task =
            inner.tasks.spawn(async move { gateway.run_embedding(job, embedder, inputs).await });
        task.await.unwrap_or_else(|panic| {
            let (run_id, route) = ids;
            Err(EmbedRunError::Embed {
                run_id,
                route,
                error: EmbedError::Failed(panic.to_string()),
            })
        })
    }

    async fn run_embedding(
        &self,
        job: EmbedJob,
        embedder: hearth_engine::Embedder,
        inputs: Vec<EmbedInput>,
    ) -> Result<EmbeddingRun, EmbedRunError> {
        let started = Instant::now();
        let started_at = Utc::now();
        let runs = &self.inner.runs;
        // The run was just created; these cannot fail but for a store error, which loses
        // only the replay, never the answer or its record.
        let _ = runs.set_route(&job.run_id, &job.route).await;
        let _ = runs
            .append(&job.run_id, CanonicalEvent::MessageStart { model: job.model.clone() })
            .await;
        let answer = match embedder.submit_async(inputs).await {
            Ok(ticket) => ticket.wait().await,
            Err(error) => Err(error),
        };
        let (status, usage, error) = match &answer {
            Ok(embeddings) => {
                let usage = TokenUsage {
                    input_tokens: embeddings.prompt_tokens as u64,
                    ..TokenUsage::default()
                };
                let _ = runs.append(&job.run_id, CanonicalEvent::Usage { usage }).await;
                let finish = CanonicalEvent::Finish { reason: StopReason::Stop };
                let _ = runs.append(&job.run_id, finish).await;
                (LedgerStatus::Finished, usage, None)
            }
            Err(error) => {
                let kind = error_kind(error);
                let event = CanonicalEvent::error(kind, error.to_string());
                let _ = runs.append(&job.run_id, event).await;
                let status = match kind {
                    ErrorKind::InvalidRequest | ErrorKind::Overloaded => LedgerStatus::Rejected,
                    ErrorKind::Cancelled => LedgerStatus::Cancelled,
                    _ => LedgerStatus::Failed,
                };
                (status, TokenUsage::default(), Some(error.to_string()))
            }
        };
        let run_status = if answer.is_ok() { RunStatus::Finished } else { RunStatus::Failed };
        let _ = runs.finish(&job.run_id, run_status).await;
        let record = LedgerRecord {
            run_id: job.run_id.clone(),
            model: job.model.clone(),
            route: Some(job.route.clone()),
            status,
            input_tokens: usage.input_tokens,
            output_tokens: 0,
            cached_input_tokens: 0,
            // Embedding models have no prices in the catalog yet.
            cost: None,
            ttft_ms: None,
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            metadata: job.metadata,
            api_key_id: job.caller.api_key_id,
            started_at,
            ended_at: Utc::now(),
            error,
            cached: false,
        };
        if let Err(e) = self.inner.ledger.record(&record).await {
            tracing::error!(run_id = %job.run_id, error = %e, "could not write the ledger record");
        }
        match answer {
            Ok(embeddings) => Ok(EmbeddingRun { run_id: job.run_id, route: job.route, embeddings }),
            Err(error) => Err(EmbedRunError::Embed { run_id: job.run_id, route: job.route, error }),
        }
    }
}

struct EmbedJob {
    run_id: String,
    route: String,
    model: String,
    metadata: CallerMetadata,
    caller: Caller,
}

fn error_kind(error: &EmbedError) -> ErrorKind {
    match error {
        EmbedError::Overloaded { .. } => ErrorKind::Overloaded,
        EmbedError::ShuttingDown => ErrorKind::Cancelled,
        EmbedError::Failed(_) => ErrorKind::Internal,
        _ => ErrorKind::InvalidRequest,
    }
}
