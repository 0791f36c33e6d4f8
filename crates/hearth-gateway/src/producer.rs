//! The detached producer of one run: it opens a route (with failover), appends every event to
//! the run buffer, ends the run, and writes the ledger record. It never depends on a consumer
//! being there, so abandoned streams are read to the end and billed exactly.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use hearth_protocol::{
    CanonicalEvent, CanonicalRequest, ErrorKind, ResponseAssembler, StreamError, TokenUsage,
};
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::ledger::{CallerMetadata, LedgerRecord, LedgerStatus, RunPayload};
use crate::limits::{Reservation, Usage};
use crate::live::LiveRun;
use crate::pricing::Prices;
use crate::providers::EventStream;
use crate::router::{self, Committed, Target};
use crate::runs::{RunInfo, RunStatus};
use crate::shared::Inner;

pub(crate) struct RunJob {
    pub run_id: String,
    /// The request as logging stores it, when the run's payloads are to be stored.
    pub logged_request: Option<serde_json::Value>,
    pub request: CanonicalRequest,
    pub targets: Vec<Target>,
    pub prices: Prices,
    pub metadata: CallerMetadata,
    pub api_key_id: Option<String>,
    pub cancel: CancellationToken,
    /// What `[[limits]]` reserved at admission, settled to the run's use when it ends.
    pub reservation: Reservation,
    /// Where to keep the answer, and how long, should it finish (the response cache).
    pub cache_put: Option<(String, std::time::Duration)>,
}

/// Told the route once one commits, or the error when none does.
pub(crate) type CommitSender = oneshot::Sender<Result<String, StreamError>>;

/// What the run has seen, for its ledger record.
struct Tally {
    started: Instant,
    route: Option<String>,
    usage: TokenUsage,
    ttft_ms: Option<u64>,
    error: Option<StreamError>,
    terminal: bool,
    /// Every event, kept only when the answer goes to the response cache or is logged.
    kept: Option<Vec<CanonicalEvent>>,
    /// The run as the admin API lists it while it lives.
    live: Arc<LiveRun>,
}

impl Tally {
    fn observe(&mut self, event: &CanonicalEvent) {
        self.live.observe(event);
        match event {
            CanonicalEvent::Usage { usage } => self.usage = *usage,
            CanonicalEvent::Error { error } => self.error = Some(error.clone()),
            _ => {}
        }
        if event.is_content() && self.ttft_ms.is_none() {
            let ttft_ms = elapsed_ms(self.started);
            self.ttft_ms = Some(ttft_ms);
            let at = vec![opentelemetry::KeyValue::new("hearth.ttft_ms", ttft_ms as i64)];
            Span::current().add_event("gen_ai.first_token", at);
        }
        self.terminal |= event.is_terminal();
        if let Some(kept) = &mut self.kept {
            kept.push(event.clone());
        }
    }

    /// No route served the run because each refused it (the request is wrong for the model, or
    /// every route is busy): nothing was generated, and nothing is billed.
    fn was_refused(&self) -> bool {
        let refusal = self
            .error
            .as_ref()
            .is_some_and(|e| matches!(e.kind, ErrorKind::InvalidRequest | ErrorKind::Overloaded));
        refusal && self.route.is_none() && self.usage == TokenUsage::default()
    }

    fn run_status(&self) -> RunStatus {
        match &self.error {
            None => RunStatus::Finished,
            Some(e) if e.kind == ErrorKind::Cancelled => RunStatus::Cancelled,
            Some(_) => RunStatus::Failed,
        }
    }
}

/// The run's span, following OpenTelemetry's GenAI conventions; its figures are recorded as
/// the run goes, and its upstream attempts are its children. A child of the current span (the
/// HTTP request's), though the producer outlives the request when its caller leaves.
pub(crate) fn run_span(job: &RunJob) -> Span {
    tracing::debug_span!(
        "run",
        otel.name = %format!("chat {}", job.request.model),
        gen_ai.operation.name = "chat",
        gen_ai.request.model = %job.request.model,
        gen_ai.system = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        hearth.run_id = %job.run_id,
        hearth.route = Empty,
        hearth.attempts = Empty,
        hearth.cached_input_tokens = Empty,
        hearth.cost = Empty,
        hearth.status = Empty,
        otel.status_code = Empty,
    )
}

/// Records how the run ended on its span.
fn record_on_span(record: &LedgerRecord) {
    let span = Span::current();
    span.record("gen_ai.usage.input_tokens", record.input_tokens);
    span.record("gen_ai.usage.output_tokens", record.output_tokens);
    span.record("hearth.cached_input_tokens", record.cached_input_tokens);
    if let Some(cost) = record.cost {
        span.record("hearth.cost", tracing::field::display(cost));
    }
    span.record("hearth.status", record.status.as_str());
    if matches!(record.status, LedgerStatus::Failed) {
        span.record("otel.status_code", "error");
    }
}

pub(crate) async fn drive(inner: Arc<Inner>, job: RunJob, commit: CommitSender) {
    let started_at = Utc::now();
    // Unlisted when the producer ends, however it ends.
    let listed = inner.live.list(&job.run_id, &job.request.model, &job.metadata);
    let mut tally = Tally {
        started: Instant::now(),
        route: None,
        usage: TokenUsage::default(),
        ttft_ms: None,
        error: None,
        terminal: false,
        kept: (job.cache_put.is_some() || job.logged_request.is_some()).then(Vec::new),
        live: listed.run.clone(),
    };
    let opened =
        router::open(&job.targets, &job.request, &inner.policy, &inner.health, &job.cancel).await;
    match opened {
        Ok(committed) => {
            let route = committed.route.clone();
            let span = Span::current();
            span.record("hearth.route", route.as_str());
            span.record("gen_ai.system", committed.system);
            span.record("hearth.attempts", committed.attempts);
            let rest = buffer_prefix(&inner, &job.run_id, committed, &mut tally).await;
            let _ = commit.send(Ok(route.clone()));
            if !tally.terminal {
                stream_rest(&inner, &job, &route, rest, &mut tally).await;
            }
        }
        Err(failure) => {
            let event = CanonicalEvent::Error { error: failure.error.clone() };
            append(&inner, &job.run_id, event, &mut tally).await;
            let _ = commit.send(Err(failure.error));
        }
    }
    let info = inner.runs.finish(&job.run_id, tally.run_status()).await;
    let record = ledger_record(&job, &tally, info.ok(), started_at);
    record_on_span(&record);
    inner.limiter.settle(&job.reservation, Usage::of(&record)).await;
    if let (Some((key, ttl)), Some(kept)) = (&job.cache_put, &tally.kept) {
        if tally.run_status() == RunStatus::Finished {
            inner.cache.put(key, kept, *ttl).await;
        }
    }
    if let Err(e) = inner.ledger.record(&record).await {
        tracing::error!(run_id = %job.run_id, error = %e, "could not write the ledger record");
    }
    if let (Some(request), Some(kept)) = (job.logged_request, tally.kept) {
        let payload = RunPayload {
            run_id: job.run_id,
            stored_at: Utc::now(),
            request,
            response: assembled(&kept),
        };
        if let Err(e) = inner.ledger.store_payloads(&[payload]).await {
            tracing::error!(error = %e, "could not store the run's payload");
        }
    }
}

/// The answer as its caller received it: assembled, or its error when it failed.
fn assembled(events: &[CanonicalEvent]) -> serde_json::Value {
    let mut assembler = ResponseAssembler::new();
    events.iter().for_each(|event| assembler.push(event));
    match assembler.finish() {
        Ok(answer) => serde_json::to_value(answer).unwrap_or_default(),
        Err(error) => serde_json::json!({ "error": error }),
    }
}

async fn buffer_prefix(
    inner: &Inner,
    run_id: &str,
    committed: Committed,
    tally: &mut Tally,
) -> EventStream {
    if let Err(e) = inner.runs.set_route(run_id, &committed.route).await {
        tracing::warn!(run_id, error = %e, "could not record the run's route");
    }
    tally.live.set_route(&committed.route);
    tally.route = Some(committed.route);
    for event in committed.prefix {
        append(inner, run_id, event, tally).await;
    }
    committed.rest
}

/// Reads the committed route to its end. A stall, a cut, a broken event or a cancel becomes
/// an explicit error event: a caller never mistakes a truncated answer for a finished one.
async fn stream_rest(
    inner: &Inner,
    job: &RunJob,
    route: &str,
    mut rest: EventStream,
    tally: &mut Tally,
) {
    let limit = inner.policy.between_token_timeout;
    while !tally.terminal {
        let next = tokio::select! {
            biased;
            () = job.cancel.cancelled() => {
                let event = CanonicalEvent::error(ErrorKind::Cancelled, "the run was cancelled");
                append(inner, &job.run_id, event, tally).await;
                return;
            }
            next = timeout(limit, rest.next()) => next,
        };
        let event = match next {
            Err(_) => CanonicalEvent::error(
                ErrorKind::Timeout,
                format!("{route} sent nothing for {} ms", limit.as_millis()),
            ),
            Ok(None) => CanonicalEvent::error(
                ErrorKind::Upstream,
                format!("{route} ended the stream without finishing"),
            ),
            Ok(Some(Err(e))) => CanonicalEvent::Error { error: e.to_stream_error() },
            Ok(Some(Ok(event))) => event,
        };
        append(inner, &job.run_id, event, tally).await;
    }
}

async fn append(inner: &Inner, run_id: &str, event: CanonicalEvent, tally: &mut Tally) {
    tally.observe(&event);
    if let Err(e) = inner.runs.append(run_id, event).await {
        tracing::warn!(run_id, error = %e, "could not buffer an event");
    }
}

fn ledger_record(
    job: &RunJob,
    tally: &Tally,
    info: Option<RunInfo>,
    started_at: chrono::DateTime<Utc>,
) -> LedgerRecord {
    let status = match tally.run_status() {
        RunStatus::Cancelled => LedgerStatus::Cancelled,
        RunStatus::Failed if tally.was_refused() => LedgerStatus::Rejected,
        RunStatus::Failed => LedgerStatus::Failed,
        _ => match info {
            // Nobody attached and nobody read the end: the caller left and did not come back.
            Some(info) if info.num_subscribers == 0 && !info.delivered => LedgerStatus::Abandoned,
            _ => LedgerStatus::Finished,
        },
    };
    LedgerRecord {
        run_id: job.run_id.clone(),
        model: job.request.model.clone(),
        route: tally.route.clone(),
        status,
        input_tokens: tally.usage.input_tokens,
        output_tokens: tally.usage.output_tokens,
        cached_input_tokens: tally.usage.cached_input_tokens,
        cost: job.prices.cost(&tally.usage),
        ttft_ms: tally.ttft_ms,
        latency_ms: elapsed_ms(tally.started),
        metadata: job.metadata.clone(),
        api_key_id: job.api_key_id.clone(),
        started_at,
        ended_at: Utc::now(),
        error: tally.error.as_ref().map(|e| e.message.clone()),
        cached: false,
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
