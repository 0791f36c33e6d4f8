//! Failover over an ordered route list.
//!
//! A route is tried up to `retry_attempts` times on transient failures (connect errors,
//! timeouts, 5xx, 429), with exponential backoff and jitter, or the provider's `Retry-After`
//! when it is short enough; then the next route is tried. A caller error (most 4xx) stops at
//! once: no other route would answer it differently. Routes that keep failing cool down and are
//! skipped for a while.
//!
//! A route is committed at its first content event (text, a tool call, or the finish): until
//! then nothing has reached the caller, so failing over is invisible. After it, failures are the
//! run's business (an explicit error event), never a silent switch of provider mid-answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hearth_protocol::{CanonicalEvent, CanonicalRequest, ErrorKind, StreamError};
use rand::Rng;
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::GatewaySettings;
use crate::providers::{Disposition, EventStream, Provider, ProviderError};

/// A route ready to call.
#[derive(Clone)]
pub(crate) struct Target {
    pub label: String,
    pub provider: Arc<dyn Provider>,
    pub model: String,
}

#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub retry_after_max: Duration,
    pub cooldown_failures: u32,
    pub cooldown: Duration,
    pub ttfb_timeout: Duration,
    pub between_token_timeout: Duration,
}

impl RetryPolicy {
    pub fn from_settings(s: &GatewaySettings) -> Self {
        Self {
            attempts: s.retry_attempts.max(1),
            backoff_base: s.backoff_base(),
            backoff_max: s.backoff_max(),
            retry_after_max: s.retry_after_max(),
            cooldown_failures: s.cooldown_failures.max(1),
            cooldown: s.cooldown(),
            ttfb_timeout: s.ttfb_timeout(),
            between_token_timeout: s.between_token_timeout(),
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random, so retries from many
    /// runs spread out without ever retrying at once.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_base.saturating_mul(2u32.saturating_pow(attempt));
        let delay = exp.min(self.backoff_max);
        let half = delay / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

/// Consecutive failures per route, shared by all runs.
#[derive(Debug, Default)]
pub(crate) struct RouteHealth {
    routes: Mutex<HashMap<String, Health>>,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    cooling_until: Option<Instant>,
}

impl RouteHealth {
    fn is_cooling(&self, label: &str, now: Instant) -> bool {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.get(label).and_then(|h| h.cooling_until).is_some_and(|until| until > now)
    }

    fn record_failure(&self, label: &str, policy: &RetryPolicy) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let health = routes.entry(label.to_string()).or_default();
        health.consecutive_failures += 1;
        if health.consecutive_failures >= policy.cooldown_failures {
            health.cooling_until = Some(Instant::now() + policy.cooldown);
            health.consecutive_failures = 0;
            tracing::warn!(route = label, secs = policy.cooldown.as_secs(), "route cooling down");
        }
    }

    fn record_success(&self, label: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.remove(label);
    }
}

/// A route that produced its first content event.
pub(crate) struct Committed {
    pub route: String,
    /// The route's provider, as `gen_ai.system` names it.
    pub system: &'static str,
    /// Calls made until one committed, over every route tried.
    pub attempts: usize,
    /// Events read before and including the first content event, in order.
    pub prefix: Vec<CanonicalEvent>,
    pub rest: EventStream,
}

/// Every route failed, or the request was refused, before anything reached the caller.
#[derive(Debug, Clone)]
pub(crate) struct RouteFailure {
    pub error: StreamError,
}

/// Tries `targets` in order until one commits.
pub(crate) async fn open(
    targets: &[Target],
    request: &CanonicalRequest,
    policy: &RetryPolicy,
    health: &RouteHealth,
    cancel: &CancellationToken,
) -> Result<Committed, RouteFailure> {
    let now = Instant::now();
    let mut order: Vec<&Target> =
        targets.iter().filter(|t| !health.is_cooling(&t.label, now)).collect();
    // Cooldown only reorders hope: when every route is cooling, try them all anyway.
    if order.is_empty() {
        order = targets.iter().collect();
    }
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<ProviderError> = None;
    for target in order {
        match try_route(target, request, policy, health, cancel, &mut tried).await {
            RouteOutcome::Committed(c) => return Ok(Committed { attempts: tried.len() + 1, ..c }),
            RouteOutcome::Fatal(error) => return Err(RouteFailure { error }),
            RouteOutcome::Failed(e) => last = Some(e),
        }
    }
    Err(exhausted(last, &tried))
}

enum RouteOutcome {
    Committed(Committed),
    Failed(ProviderError),
    Fatal(StreamError),
}

async fn try_route(
    target: &Target,
    request: &CanonicalRequest,
    policy: &RetryPolicy,
    health: &RouteHealth,
    cancel: &CancellationToken,
    tried: &mut Vec<String>,
) -> RouteOutcome {
    let mut attempt = 0;
    loop {
        // One span per call, up to the first content (or the failure): a child of the run's.
        let span = tracing::debug_span!(
            "attempt",
            otel.name = %format!("attempt {}", target.label),
            otel.kind = "client",
            gen_ai.system = target.provider.system(),
            hearth.route = %target.label,
            hearth.attempt = attempt,
            error.type = tracing::field::Empty,
        );
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return RouteOutcome::Fatal(cancelled()),
            result = attempt_once(target, request, policy).instrument(span.clone()) => result,
        };
        let error = match result {
            Ok(committed) => {
                health.record_success(&target.label);
                return RouteOutcome::Committed(committed);
            }
            Err(error) => error,
        };
        span.record("error.type", tracing::field::debug(error.kind()));
        tracing::info!(route = %target.label, attempt, %error, "route attempt failed");
        if error.counts_against_route() {
            health.record_failure(&target.label, policy);
        }
        tried.push(format!("{}: {error}", target.label));
        attempt += 1;
        let delay = match error.disposition() {
            Disposition::Fatal => return RouteOutcome::Fatal(error.to_stream_error()),
            Disposition::NextRoute => return RouteOutcome::Failed(error),
            Disposition::Retry if attempt >= policy.attempts => return RouteOutcome::Failed(error),
            Disposition::Retry => match error.retry_after() {
                // Waiting out a long Retry-After would stall the caller; another route won't.
                Some(wait) if wait > policy.retry_after_max => return RouteOutcome::Failed(error),
                Some(wait) => wait,
                None => policy.backoff(attempt - 1),
            },
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return RouteOutcome::Fatal(cancelled()),
            () = sleep(delay) => {}
        }
    }
}

/// One call: the first event must come within the time-to-first-byte budget, later ones
/// within the between-token budget, until the first content event commits the route. A
/// provider whose first content has no deadline (the local engine) is waited for.
async fn attempt_once(
    target: &Target,
    request: &CanonicalRequest,
    policy: &RetryPolicy,
) -> Result<Committed, ProviderError> {
    let timed_out =
        |during| ProviderError::Timeout { provider: target.provider.name().to_string(), during };
    if request.prompt.is_some() && !target.provider.takes_raw_prompts() {
        return Err(ProviderError::Unsupported {
            message: format!(
                "{}: a raw prompt (no messages) is served by local models only",
                target.provider.name()
            ),
        });
    }
    if let Some(constraint) = &request.response_format {
        if !target.provider.enforces(constraint) {
            return Err(ProviderError::Unsupported {
                message: format!(
                    "{}: cannot make its answer match the requested response_format",
                    target.provider.name()
                ),
            });
        }
    }
    let limited = target.provider.first_content_has_deadline();
    let deadline = Instant::now() + policy.ttfb_timeout;
    let opened = target.provider.stream(request, &target.model);
    let mut stream = if limited {
        timeout_at(deadline, opened).await.map_err(|_| timed_out("before the first byte"))??
    } else {
        opened.await?
    };
    let mut prefix = Vec::new();
    loop {
        let next = if !limited {
            stream.next().await
        } else if prefix.is_empty() {
            timeout_at(deadline, stream.next())
                .await
                .map_err(|_| timed_out("before the first byte"))?
        } else {
            timeout(policy.between_token_timeout, stream.next())
                .await
                .map_err(|_| timed_out("between two events"))?
        };
        let event = next.ok_or_else(|| ProviderError::Stream {
            provider: target.label.clone(),
            message: "the stream ended before any content".into(),
        })??;
        let commits = event.is_content();
        prefix.push(event);
        if commits {
            let (route, system) = (target.label.clone(), target.provider.system());
            return Ok(Committed { route, system, attempts: 0, prefix, rest: stream });
        }
    }
}

fn cancelled() -> StreamError {
    StreamError::new(ErrorKind::Cancelled, "the run was cancelled")
}

fn exhausted(last: Option<ProviderError>, tried: &[String]) -> RouteFailure {
    let kind = last.as_ref().map_or(ErrorKind::Upstream, ProviderError::kind);
    let message = match tried {
        [] => "no route could be tried".to_string(),
        [only] => only.clone(),
        all => format!("every route failed: {}", all.join("; ")),
    };
    RouteFailure { error: StreamError::new(kind, message) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from_settings(&GatewaySettings {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            cooldown_failures: 2,
            ..Default::default()
        })
    }

    #[test]
    fn backoff_grows_to_its_cap_with_bounded_jitter() {
        let p = policy();
        for attempt in 0..8 {
            let full = (p.backoff_base * 2u32.pow(attempt)).min(p.backoff_max);
            let d = p.backoff(attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} vs {full:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn routes_cool_down_after_repeated_failures_and_recover() {
        let (p, h) = (policy(), RouteHealth::default());
        h.record_failure("a", &p);
        assert!(!h.is_cooling("a", Instant::now()));
        h.record_failure("a", &p);
        assert!(h.is_cooling("a", Instant::now()));
        tokio::time::advance(p.cooldown + Duration::from_millis(1)).await;
        assert!(!h.is_cooling("a", Instant::now()));
    }

    /// Says "started" at once, then nothing for ten minutes, then its answer: an upstream like
    /// that is cut, the local engine (a long queue and prefill) is waited for.
    struct SlowToStart {
        waits: bool,
    }

    #[async_trait::async_trait]
    impl Provider for SlowToStart {
        fn name(&self) -> &str {
            "slow"
        }

        async fn stream(
            &self,
            _: &CanonicalRequest,
            _: &str,
        ) -> Result<EventStream, ProviderError> {
            let start = CanonicalEvent::MessageStart { model: "m".into() };
            let text = CanonicalEvent::TextDelta { text: "hi".into() };
            let late = futures::stream::once(async move {
                sleep(Duration::from_secs(600)).await;
                Ok(text)
            });
            Ok(futures::stream::once(async { Ok(start) }).chain(late).boxed())
        }

        fn first_content_has_deadline(&self) -> bool {
            !self.waits
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_providers_with_a_deadline_are_cut_before_their_first_content() {
        let request = CanonicalRequest::default();
        for waits in [false, true] {
            let target = Target {
                label: "slow/m".into(),
                provider: Arc::new(SlowToStart { waits }),
                model: "m".into(),
            };
            let result = attempt_once(&target, &request, &policy()).await;
            if waits {
                let committed = result.unwrap();
                assert!(matches!(committed.prefix.last(), Some(CanonicalEvent::TextDelta { .. })));
            } else {
                let err = result.err().unwrap();
                assert!(matches!(err, ProviderError::Timeout { during: "between two events", .. }));
            }
        }
    }

    #[test]
    fn exhaustion_names_every_attempt() {
        let tried = vec!["a/x: HTTP 503: down".to_string(), "b/y: timed out".to_string()];
        let f = exhausted(None, &tried);
        assert_eq!(f.error.message, "every route failed: a/x: HTTP 503: down; b/y: timed out");
    }
}
