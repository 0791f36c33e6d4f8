//! Resumable runs: a consumer that goes away mid-answer comes back at event k and gets exactly
//! the rest, once, while the provider was called once.

use std::sync::Arc;

use futures::StreamExt;
use hearth_gateway::{LedgerStatus, RunError, RunEvent, RunStatus};
use hearth_protocol::{CanonicalEvent, StopReason};
use tokio::sync::Notify;

use crate::fake::{Answer, FakeProvider, Fault, Wire};
use crate::support::{harness, hello, test_settings, upstream};

fn text(events: &[RunEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            CanonicalEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_consumer_that_drops_resumes_from_event_k() {
    let gate = Arc::new(Notify::new());
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Letters).await;
    let h =
        harness(&[upstream("p", Wire::OpenAi, fake.base_url())], &["p/gpt"], test_settings()).await;
    // The role chunk and "a", "b": three canonical events, then the provider waits.
    fake.push(Fault::PauseAfter(3, gate.clone()));
    let run = h.start(hello("m")).await.unwrap();

    let k = 3;
    let first: Vec<RunEvent> = run.events.take(k).collect().await;
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
    let info = h.gateway.status(&run.run_id).await.unwrap();
    assert_eq!(
        (info.status, info.num_subscribers),
        (RunStatus::Running, 0),
        "the consumer is gone"
    );

    gate.notify_one();
    let rest: Vec<RunEvent> =
        h.gateway.subscribe(&run.run_id, k as u64).await.unwrap().collect().await;
    let seqs: Vec<u64> = rest.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (k as u64..k as u64 + rest.len() as u64).collect::<Vec<_>>(),
        "each event once, in order"
    );
    assert_eq!(text(&first) + &text(&rest), "abcde");
    assert_eq!(
        rest.last().map(|e| &e.event),
        Some(&CanonicalEvent::Finish { reason: StopReason::Stop })
    );
    assert_eq!(fake.calls(), 1, "resuming never calls the provider again");

    let record = h.only_record(&run.run_id).await;
    assert_eq!(record.status, LedgerStatus::Finished, "a subscriber was back for the end");
    assert_eq!((record.input_tokens, record.output_tokens), (11, 7));

    let replay: Vec<RunEvent> = h.gateway.subscribe(&run.run_id, 0).await.unwrap().collect().await;
    assert_eq!(replay.len(), k + rest.len(), "a finished run replays whole");
}

#[tokio::test]
async fn unknown_runs_and_cursors_past_the_end_are_refused() {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    let h =
        harness(&[upstream("p", Wire::OpenAi, fake.base_url())], &["p/gpt"], test_settings()).await;
    let err = h.gateway.subscribe("run_missing", 0).await.err().unwrap();
    assert_eq!(err, RunError::NotFound("run_missing".into()));
    let run = h.start(hello("m")).await.unwrap();
    let n = run.events.count().await as u64;
    h.gateway.wait_idle().await;
    assert!(h.gateway.subscribe(&run.run_id, n).await.unwrap().next().await.is_none());
    assert!(matches!(
        h.gateway.subscribe(&run.run_id, n + 1).await,
        Err(RunError::BadCursor { .. })
    ));
}
