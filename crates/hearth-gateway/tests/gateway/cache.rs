//! The response cache: a miss on one replica is a hit on the other (Redis), or on the same
//! daemon (memory); hits replay the same events, are billed at zero cost as `cached`, and the
//! provider is not called again.

use std::time::Duration;

use futures::StreamExt;
use hearth_gateway::cache::{CacheOptions, CacheStatus, CACHE_ROUTE};
use hearth_gateway::{Caller, Gateway, LedgerStatus, RunEvent, StartedRun};
use hearth_protocol::CanonicalEvent;

use crate::fake::{Answer, FakeProvider, Wire};
use crate::replicas::{config, fresh_schema, replica, state, unique};
use crate::support::{harness, hello, test_settings, upstream};

fn cached(ttl: Option<u64>, skip: bool, key: Option<&str>) -> Caller {
    let cache =
        CacheOptions { ttl: ttl.map(Duration::from_secs), skip, key: key.map(str::to_owned) };
    Caller { cache, ..Caller::default() }
}

async fn events(run: StartedRun) -> Vec<CanonicalEvent> {
    run.events.map(|e: RunEvent| e.event).collect().await
}

async fn start(gateway: &Gateway, stream: bool, caller: Caller) -> StartedRun {
    let mut request = hello("m");
    request.stream = stream;
    gateway.start_run(request, caller).await.unwrap()
}

#[tokio::test]
async fn a_miss_on_one_replica_is_a_hit_on_the_other_streamed_or_whole() {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    let upstreams = [upstream("p", Wire::OpenAi, fake.base_url())];
    let config = config(&upstreams, &state(&unique("t:")), &fresh_schema().await);
    let (a, b) = (replica(&config).await, replica(&config).await);

    let miss = start(&a, false, cached(Some(60), false, None)).await;
    assert_eq!(miss.cache, Some(CacheStatus::Miss));
    let original = events(miss).await;
    a.wait_idle().await;

    let hit = start(&b, true, cached(Some(60), false, None)).await;
    assert_eq!((hit.cache, hit.route.as_str()), (Some(CacheStatus::Hit), CACHE_ROUTE));
    let run_id = hit.run_id.clone();
    assert_eq!(events(hit).await, original, "the same events, replayed");
    assert_eq!(fake.calls(), 1, "the provider answered once");
    b.wait_idle().await;
    let record = b.ledger().get(&run_id).await.unwrap().expect("the hit is billed");
    assert!(record.cached, "{record:?}");
    assert_eq!((record.status, record.cost), (LedgerStatus::Finished, Some(Default::default())));

    // Skipping the cache asks the provider; another request misses; no TTL, no cache at all.
    let skipped = start(&b, false, cached(Some(60), true, None)).await;
    assert_eq!(skipped.cache, Some(CacheStatus::Miss));
    events(skipped).await;
    let mut other = hello("m");
    other.max_tokens = Some(7);
    let other = b.start_run(other, cached(Some(60), false, None)).await.unwrap();
    assert_eq!(other.cache, Some(CacheStatus::Miss));
    events(other).await;
    assert_eq!(start(&b, false, Caller::default()).await.cache, None);
    assert_eq!(fake.calls(), 4);
}

#[tokio::test]
async fn one_daemon_keeps_answers_in_memory_under_the_callers_own_key() {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Letters).await;
    let h =
        harness(&[upstream("p", Wire::OpenAi, fake.base_url())], &["p/gpt"], test_settings()).await;
    let first = start(&h.gateway, true, cached(Some(60), false, Some("greeting"))).await;
    let original = events(first).await;
    h.gateway.wait_idle().await;
    // A different request under the same key is answered from the cache.
    let mut different = hello("m");
    different.max_tokens = Some(3);
    let hit = h.gateway.start_run(different, cached(None, false, Some("greeting"))).await.unwrap();
    assert_eq!(hit.cache, Some(CacheStatus::Hit));
    assert_eq!(events(hit).await, original);
    assert_eq!(fake.calls(), 1);
}
