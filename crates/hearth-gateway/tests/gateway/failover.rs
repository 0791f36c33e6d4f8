//! Each fault a provider can show, and what the caller and the ledger see: the right failover
//! or the right explicit error, and exactly one correct ledger record.

use hearth_gateway::{
    GatewaySettings, GroupBy, LedgerRecord, LedgerStatus, StartError, UsageQuery,
};
use hearth_protocol::{CanonicalEvent, ErrorKind, StopReason};

use crate::fake::{frames_to_first_text, refused_url, Answer, FakeProvider, Fault, Wire};
use crate::support::{events, harness, hello, key_of, test_settings, text_of, upstream, Harness};

const ROUTES: [&str; 2] = ["primary/gpt", "backup/gpt"];

/// A primary and a backup provider, both speaking `wire`.
async fn pair(wire: Wire, settings: GatewaySettings) -> (Harness, FakeProvider, FakeProvider) {
    let primary = FakeProvider::start(wire, Answer::Text).await;
    let backup = FakeProvider::start(wire, Answer::Text).await;
    let h = harness(
        &[
            upstream("primary", wire, primary.base_url()),
            upstream("backup", wire, backup.base_url()),
        ],
        &ROUTES,
        settings,
    )
    .await;
    (h, primary, backup)
}

fn single_attempt() -> GatewaySettings {
    GatewaySettings { retry_attempts: 1, ..test_settings() }
}

/// The fakes bill 11 input tokens (3 cached) and 7 output tokens; at 1 / 0.5 / 2 per Mtok
/// that is 8 + 1.5 + 14 = 23.5 per million.
fn assert_full_usage(record: &LedgerRecord) {
    let tokens = (record.input_tokens, record.cached_input_tokens, record.output_tokens);
    assert_eq!(tokens, (11, 3, 7));
    assert_eq!(record.cost, Some("0.0000235".parse().unwrap()));
}

/// Runs `hello` and checks that `route` served a whole answer, billed once.
async fn assert_served_by(h: &Harness, route: &str) -> LedgerRecord {
    let run = h.start(hello("m")).await.expect("a route serves the run");
    assert_eq!(run.route, route);
    let events = events(run.events).await;
    assert_eq!(text_of(&events), "Hello world");
    assert_eq!(events.last(), Some(&CanonicalEvent::Finish { reason: StopReason::Stop }));
    let record = h.only_record(&run.run_id).await;
    assert_eq!((record.status, record.route.as_deref()), (LedgerStatus::Finished, Some(route)));
    assert_full_usage(&record);
    assert!(record.ttft_ms.is_some() && record.error.is_none());
    record
}

/// Some OpenAI-compatible servers ignore `stream: true` and answer with one JSON body; that is
/// a whole answer, not a broken stream.
#[tokio::test]
async fn a_whole_json_answer_to_a_streamed_request_is_accepted() {
    let (h, primary, backup) = pair(Wire::OpenAi, test_settings()).await;
    primary.push(Fault::WholeJson);
    assert_served_by(&h, "primary/gpt").await;
    assert_eq!((primary.calls(), backup.calls()), (1, 0));
}

#[tokio::test]
async fn a_refused_connection_fails_over() {
    let backup = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    let h = harness(
        &[
            upstream("primary", Wire::OpenAi, refused_url().await),
            upstream("backup", Wire::OpenAi, backup.base_url()),
        ],
        &ROUTES,
        test_settings(),
    )
    .await;
    assert_served_by(&h, "backup/gpt").await;
    assert_eq!(backup.calls(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_fail_over() {
    let (h, primary, backup) = pair(Wire::Anthropic, test_settings()).await;
    primary.push(Fault::Status(500)).push(Fault::Status(503));
    assert_served_by(&h, "backup/gpt").await;
    assert_eq!((primary.calls(), backup.calls()), (2, 1));
}

#[tokio::test]
async fn a_transient_503_recovers_on_the_same_route() {
    let (h, primary, backup) = pair(Wire::Gemini, test_settings()).await;
    primary.push(Fault::Status(503));
    assert_served_by(&h, "primary/gpt").await;
    assert_eq!((primary.calls(), backup.calls()), (2, 0));
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out_on_the_same_route() {
    let (h, primary, backup) = pair(Wire::OpenAi, test_settings()).await;
    primary.push(Fault::RateLimited { retry_after_secs: 1 });
    assert_served_by(&h, "primary/gpt").await;
    assert_eq!((primary.calls(), backup.calls()), (2, 0));
}

#[tokio::test]
async fn a_long_retry_after_fails_over_at_once() {
    let (h, primary, backup) = pair(Wire::OpenAi, test_settings()).await;
    primary.push(Fault::RateLimited { retry_after_secs: 3_600 });
    assert_served_by(&h, "backup/gpt").await;
    assert_eq!((primary.calls(), backup.calls()), (1, 1));
}

#[tokio::test]
async fn caller_errors_do_not_fail_over() {
    let (h, primary, backup) = pair(Wire::OpenAi, test_settings()).await;
    primary.push(Fault::Status(400));
    let Err(StartError::Failed { run_id, error }) = h.start(hello("m")).await else {
        panic!("a 400 must not be retried or failed over");
    };
    assert_eq!(error.kind, ErrorKind::InvalidRequest);
    assert!(error.message.contains("HTTP 400"), "{}", error.message);
    assert_eq!((primary.calls(), backup.calls()), (1, 0));
    let record = h.only_record(&run_id).await;
    // Refused before anything was generated: recorded, but kept out of the served requests.
    assert_eq!((record.status, record.route), (LedgerStatus::Rejected, None));
    assert_eq!(
        (record.input_tokens, record.output_tokens, record.cost),
        (0, 0, Some(Default::default()))
    );
    let all = UsageQuery { group_by: GroupBy::Model, since: None, until: None };
    let groups = h.gateway.usage(&all).await.unwrap();
    assert_eq!((groups[0].requests, groups[0].rejected), (0, 1), "{groups:?}");
}

#[tokio::test]
async fn a_stall_before_the_first_byte_times_out_and_fails_over() {
    let (h, primary, backup) = pair(Wire::Anthropic, single_attempt()).await;
    primary.push(Fault::StallBeforeFirstByte);
    assert_served_by(&h, "backup/gpt").await;
    assert_eq!((primary.calls(), backup.calls()), (1, 1));
}

#[tokio::test]
async fn a_stall_before_any_content_fails_over() {
    let (h, primary, backup) = pair(Wire::Anthropic, single_attempt()).await;
    primary.push(Fault::StallAfter(1));
    assert_served_by(&h, "backup/gpt").await;
    assert_eq!((primary.calls(), backup.calls()), (1, 1));
}

#[tokio::test]
async fn malformed_sse_before_content_fails_over() {
    let (h, primary, backup) = pair(Wire::OpenAi, single_attempt()).await;
    primary.push(Fault::MalformedAfter(1));
    assert_served_by(&h, "backup/gpt").await;
    assert_eq!((primary.calls(), backup.calls()), (1, 1));
}

#[tokio::test]
async fn an_in_band_overload_before_content_fails_over() {
    let (h, primary, backup) = pair(Wire::Anthropic, single_attempt()).await;
    primary.push(Fault::InBandOverloaded);
    assert_served_by(&h, "backup/gpt").await;
    assert_eq!((primary.calls(), backup.calls()), (1, 1));
}

/// After the first text reached the buffer, a fault ends the run with an explicit error
/// event: no failover, no silently truncated success.
async fn assert_mid_stream_error(wire: Wire, fault: Fault, kind: ErrorKind, says: &str) {
    let (h, primary, backup) = pair(wire, test_settings()).await;
    primary.push(fault);
    let run = h.start(hello("m")).await.expect("the primary commits");
    assert_eq!(run.route, "primary/gpt");
    let events = events(run.events).await;
    assert_eq!(text_of(&events), "Hello", "{wire:?}");
    let Some(CanonicalEvent::Error { error }) = events.last() else {
        panic!("{wire:?}: the run must end with an error event, got {events:?}");
    };
    assert_eq!(error.kind, kind, "{wire:?}: {}", error.message);
    assert!(error.message.contains(says), "{wire:?}: {}", error.message);
    assert_eq!((primary.calls(), backup.calls()), (1, 0));
    let record = h.only_record(&run.run_id).await;
    assert_eq!(
        (record.status, record.route.as_deref()),
        (LedgerStatus::Failed, Some("primary/gpt"))
    );
    assert!(record.error.as_deref().is_some_and(|e| e.contains(says)));
    if wire == Wire::OpenAi {
        // OpenAI reports usage only in its last chunk, which a cut stream never sends.
        assert_eq!(record.output_tokens, 0);
    } else {
        assert_eq!(record.input_tokens, 11, "{wire:?}: input usage arrives before the cut");
    }
}

#[tokio::test]
async fn a_stall_mid_stream_is_an_explicit_timeout() {
    for wire in [Wire::OpenAi, Wire::Anthropic, Wire::Gemini] {
        let fault = Fault::StallAfter(frames_to_first_text(wire));
        assert_mid_stream_error(wire, fault, ErrorKind::Timeout, "sent nothing for").await;
    }
}

#[tokio::test]
async fn a_reset_mid_stream_is_an_explicit_error() {
    for wire in [Wire::OpenAi, Wire::Anthropic, Wire::Gemini] {
        let fault = Fault::ResetAfter(frames_to_first_text(wire));
        assert_mid_stream_error(wire, fault, ErrorKind::Upstream, "stream failed").await;
    }
}

#[tokio::test]
async fn malformed_sse_mid_stream_is_an_explicit_error() {
    let fault = Fault::MalformedAfter(frames_to_first_text(Wire::OpenAi));
    assert_mid_stream_error(Wire::OpenAi, fault, ErrorKind::Upstream, "malformed").await;
}

#[tokio::test]
async fn when_every_route_fails_the_error_names_each() {
    let (h, primary, backup) = pair(Wire::OpenAi, single_attempt()).await;
    primary.push(Fault::Status(503));
    backup.push(Fault::Status(502));
    let Err(err @ StartError::Failed { .. }) = h.start(hello("m")).await else {
        panic!("all routes fail")
    };
    let StartError::Failed { error, .. } = &err else { unreachable!() };
    assert_eq!(error.kind, ErrorKind::Upstream);
    let message = err.to_string();
    assert!(message.starts_with("every route failed: primary/gpt: "), "{message}");
    assert!(message.contains("; backup/gpt: "), "{message}");
    let record = h.only_record(err.run_id().unwrap()).await;
    assert_eq!(record.status, LedgerStatus::Failed);
}

#[tokio::test]
async fn a_route_that_keeps_failing_cools_down() {
    let settings = GatewaySettings { cooldown_failures: 1, ..single_attempt() };
    let (h, primary, backup) = pair(Wire::OpenAi, settings).await;
    primary.push(Fault::Status(500));
    for _ in 0..2 {
        let run = h.start(hello("m")).await.unwrap();
        assert_eq!(run.route, "backup/gpt");
        events(run.events).await;
    }
    assert_eq!((primary.calls(), backup.calls()), (1, 2), "the cooling primary is skipped");
}

#[tokio::test]
async fn api_keys_never_reach_errors_or_the_ledger() {
    for wire in [Wire::OpenAi, Wire::Anthropic, Wire::Gemini] {
        let only = FakeProvider::start(wire, Answer::Text).await;
        let h = harness(&[upstream("only", wire, only.base_url())], &["only/gpt"], test_settings())
            .await;
        only.push(Fault::EchoKey);
        let Err(err) = h.start(hello("m")).await else { panic!("a 401 fails") };
        let message = err.to_string();
        assert!(!message.contains(&key_of("only")), "{wire:?}: {message}");
        assert!(message.contains("[redacted]"), "{wire:?}: the provider did echo it: {message}");
        let record = h.only_record(err.run_id().unwrap()).await;
        assert!(!record.error.unwrap_or_default().contains(&key_of("only")));
    }
}

#[tokio::test]
async fn cancelling_a_run_ends_it_with_a_cancelled_error() {
    let settings = GatewaySettings { between_token_timeout_ms: 30_000, ..test_settings() };
    let (h, primary, _) = pair(Wire::OpenAi, settings).await;
    primary.push(Fault::StallAfter(frames_to_first_text(Wire::OpenAi)));
    let run = h.start(hello("m")).await.unwrap();
    h.gateway.cancel(&run.run_id).await.unwrap();
    let events = events(run.events).await;
    assert_eq!(text_of(&events), "Hello");
    assert!(
        matches!(events.last(), Some(CanonicalEvent::Error { error }) if error.kind == ErrorKind::Cancelled)
    );
    let record = h.only_record(&run.run_id).await;
    assert_eq!(record.status, LedgerStatus::Cancelled);
}

#[tokio::test]
async fn an_abandoned_stream_is_read_to_the_end_and_billed_exactly() {
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let (h, primary, _) = pair(Wire::Anthropic, test_settings()).await;
    primary.push(Fault::PauseAfter(frames_to_first_text(Wire::Anthropic), gate.clone()));
    let run = h.start(hello("m")).await.unwrap();
    drop(run.events);
    gate.notify_one();
    let record = h.only_record(&run.run_id).await;
    assert_eq!(record.status, LedgerStatus::Abandoned);
    assert_full_usage(&record);
    assert_eq!(primary.calls(), 1);
}
