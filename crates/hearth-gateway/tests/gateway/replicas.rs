//! Two gateway replicas sharing their run buffers in a real Redis and their ledger in a real
//! PostgreSQL (`HEARTH_TEST_REDIS_URL`, `HEARTH_TEST_POSTGRES_URL`; the defaults are the
//! local servers CI starts). Each test takes a key prefix and a schema of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use hearth_gateway::ledger::{CallerMetadata, PostgresLedger};
use hearth_gateway::runs::NewRun;
use hearth_gateway::{
    Caller, Catalog, Gateway, GatewayConfig, GatewaySettings, LedgerRecord, LedgerSettings,
    LedgerStatus, ModelConfig, RedisRunStore, RunEvent, RunStatus, RunStore, StateSettings,
};
use hearth_protocol::{CanonicalEvent, ErrorKind, StopReason};
use serde_json::json;
use tokio::sync::Notify;

use crate::fake::{Answer, FakeProvider, Fault, Wire};
use crate::support::{hello, key_of, test_settings, upstream, Upstream};

pub fn redis_url() -> String {
    std::env::var("HEARTH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn postgres_url() -> String {
    std::env::var("HEARTH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A fresh schema in the test database, and a URL whose connections use it.
pub async fn fresh_schema() -> String {
    let schema = unique("ledger_");
    let admin = sqlx::PgPool::connect(&postgres_url()).await.expect("PostgreSQL answers");
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    admin.close().await;
    format!("{}?options=-c%20search_path%3D{schema}", postgres_url())
}

/// A bare run store on the test's Redis, as one replica holds it.
async fn bare_store(state: &StateSettings) -> RedisRunStore {
    RedisRunStore::connect(state, &redis_url(), Duration::from_secs(60), 1 << 20).await.unwrap()
}

/// A plain connection to the test's Redis, to look at (or tamper with) what the stores wrote.
async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

struct Replicas {
    a: Gateway,
    b: Gateway,
    ledger_url: String,
}

pub fn config(upstreams: &[Upstream], state: &StateSettings, ledger_url: &str) -> GatewayConfig {
    GatewayConfig {
        gateway: GatewaySettings { run_ttl_secs: 60, ..test_settings() },
        state: state.clone(),
        ledger: LedgerSettings { postgres_url: Some(ledger_url.to_owned()) },
        limits: Vec::new(),
        api_keys: Vec::new(),
        logging: Default::default(),
        providers: upstreams
            .iter()
            .map(|u| hearth_gateway::ProviderConfig {
                name: u.name.into(),
                kind: hearth_gateway::ProviderKind::Openai,
                base_url: Some(u.base_url.clone()),
                api_key_env: Some(format!("KEY_{}", u.name)),
                base_urls: Vec::new(),
                placement: Default::default(),
            })
            .collect(),
        models: vec![ModelConfig {
            id: "m".into(),
            routes: vec!["p/gpt".into()],
            input_price_per_mtok: Some("1".parse().unwrap()),
            output_price_per_mtok: Some("2".parse().unwrap()),
            cached_input_price_per_mtok: None,
            context_length: None,
        }],
    }
}

pub fn state(prefix: &str) -> StateSettings {
    StateSettings {
        redis_url: Some(redis_url()),
        key_prefix: prefix.to_owned(),
        lease_ms: 600,
        ..Default::default()
    }
}

pub async fn replica(config: &GatewayConfig) -> Gateway {
    let keys: BTreeMap<String, String> = [("KEY_p".to_string(), key_of("p"))].into_iter().collect();
    let mut catalog = Catalog::new();
    catalog.configure_with_env(config, |var| keys.get(var).cloned()).unwrap();
    Gateway::connect(catalog, config).await.expect("Redis and PostgreSQL answer")
}

async fn replicas(fake: &FakeProvider) -> Replicas {
    let ledger_url = fresh_schema().await;
    let upstreams = [upstream("p", Wire::OpenAi, fake.base_url())];
    let config = config(&upstreams, &state(&unique("t:")), &ledger_url);
    Replicas { a: replica(&config).await, b: replica(&config).await, ledger_url }
}

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
async fn a_run_started_on_a_is_resumed_on_b_live_and_billed_once() {
    let gate = Arc::new(Notify::new());
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Letters).await;
    let r = replicas(&fake).await;
    fake.push(Fault::PauseAfter(3, gate.clone()));
    let run = r.a.start_run(hello("m"), Caller::default()).await.unwrap();
    let first: Vec<RunEvent> = run.events.take(2).collect().await;

    // B serves status and the rest of the run, which A is still producing.
    let info = r.b.status(&run.run_id).await.unwrap();
    assert_eq!((info.status, info.route.as_deref()), (RunStatus::Running, Some("p/gpt")));
    let rest = tokio::spawn({
        let b = r.b.clone();
        let run_id = run.run_id.clone();
        async move { b.subscribe(&run_id, 2).await.unwrap().collect::<Vec<_>>().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(10), rest).await.unwrap().unwrap();
    let seqs: Vec<u64> = first.iter().chain(&rest).map(|e| e.seq).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "each event once, in order");
    assert_eq!(text(&first) + &text(&rest), "abcde");
    assert_eq!(rest.last().unwrap().event, CanonicalEvent::Finish { reason: StopReason::Stop });
    assert_eq!(fake.calls(), 1);

    r.a.wait_idle().await;
    let record = r.b.ledger().get(&run.run_id).await.unwrap().expect("one record, in PostgreSQL");
    assert_eq!(record.status, LedgerStatus::Finished, "B's reader read the end");
    assert_eq!(r.b.status(&run.run_id).await.unwrap().status, RunStatus::Finished);
    // A resume on B after the end replays the same events.
    let again: Vec<RunEvent> = r.b.subscribe(&run.run_id, 0).await.unwrap().collect().await;
    assert_eq!(
        again.iter().map(|e| &e.event).collect::<Vec<_>>(),
        first.iter().chain(&rest).map(|e| &e.event).collect::<Vec<_>>()
    );
    assert!(!r.ledger_url.is_empty());
}

#[tokio::test]
async fn a_cancel_sent_to_b_stops_the_run_a_produces() {
    let gate = Arc::new(Notify::new());
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Letters).await;
    let r = replicas(&fake).await;
    fake.push(Fault::PauseAfter(3, gate.clone()));
    let run = r.a.start_run(hello("m"), Caller::default()).await.unwrap();
    r.b.cancel(&run.run_id).await.unwrap();
    let events: Vec<RunEvent> =
        tokio::time::timeout(Duration::from_secs(10), run.events.collect()).await.unwrap();
    match &events.last().unwrap().event {
        CanonicalEvent::Error { error } => assert_eq!(error.kind, ErrorKind::Cancelled),
        other => panic!("expected a cancelled error, got {other:?}"),
    }
    r.a.wait_idle().await;
    let record = r.b.ledger().get(&run.run_id).await.unwrap().unwrap();
    assert_eq!(record.status, LedgerStatus::Cancelled);
    assert_eq!(r.b.status(&run.run_id).await.unwrap().status, RunStatus::Cancelled);
}

#[tokio::test]
async fn the_run_of_a_replica_that_stopped_ends_with_one_error_event_and_one_record() {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Letters).await;
    let ledger_url = fresh_schema().await;
    let state = state(&unique("t:"));
    let config = config(&[upstream("p", Wire::OpenAi, fake.base_url())], &state, &ledger_url);
    // Replica A is a bare store: it opens a run, appends three events, its caller reads them,
    // and it stops (its lease, listener and writer tasks end with it), as a killed process
    // would.
    let a = bare_store(&state).await;
    let metadata = CallerMetadata::from_json(&json!({"team": "red"})).unwrap();
    let left = LedgerRecord::failed_start("run_orphan", "m", metadata, None, Utc::now());
    a.create("run_orphan", NewRun { record: Some(&left), ..NewRun::of("m") }).await.unwrap();
    let seen = a.subscribe("run_orphan", 0).await.unwrap();
    a.set_route("run_orphan", "p/gpt").await.unwrap();
    for text in ["x", "y", "z"] {
        a.append("run_orphan", CanonicalEvent::TextDelta { text: text.into() }).await.unwrap();
    }
    assert_eq!(text(&seen.take(3).collect::<Vec<_>>().await), "xyz");
    // And one whose caller asked that nothing be kept: its keys go soon after the sweep ends it.
    let unkept_record =
        LedgerRecord::failed_start("run_unkept", "m", Default::default(), None, Utc::now());
    let unkept = NewRun { record: Some(&unkept_record), forget_at_end: true, ..NewRun::of("m") };
    a.create("run_unkept", unkept).await.unwrap();
    a.append("run_unkept", CanonicalEvent::TextDelta { text: "q".into() }).await.unwrap();
    a.published("run_unkept").await;
    drop(a);

    let b = replica(&config).await;
    let c = replica(&config).await;
    let events: Vec<RunEvent> = tokio::time::timeout(
        Duration::from_secs(10),
        b.subscribe("run_orphan", 1).await.unwrap().collect(),
    )
    .await
    .expect("the reader never hangs");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(text(&events), "yz");
    match &events[2].event {
        CanonicalEvent::Error { error } => assert!(error.message.contains("stopped"), "{error:?}"),
        other => panic!("expected the error event, got {other:?}"),
    }
    // Two replicas sweep; exactly one ended the run and wrote its record.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    b.wait_idle().await;
    c.wait_idle().await;
    let record = b.ledger().get("run_orphan").await.unwrap().expect("the record");
    assert_eq!((record.status, record.route.as_deref()), (LedgerStatus::Failed, Some("p/gpt")));
    assert_eq!(record.metadata.labels().collect::<Vec<_>>(), vec![("team", "red".to_string())]);
    let ledger = PostgresLedger::connect(&ledger_url).await.unwrap();
    let all = hearth_gateway::UsageQuery {
        group_by: hearth_gateway::GroupBy::Model,
        since: None,
        until: None,
    };
    use hearth_gateway::Ledger;
    let groups = ledger.usage(&all).await.unwrap();
    assert_eq!(groups.iter().map(|g| g.requests).sum::<u64>(), 2, "{groups:?}");
    let info = c.status("run_orphan").await.unwrap();
    assert_eq!((info.status, info.num_events), (RunStatus::Failed, 4));
    let mut conn = redis_connection().await;
    let ttl = pttl(&mut conn, &format!("{}run:run_unkept", state.key_prefix)).await;
    assert!(ttl > 0 && ttl <= 5_000, "an unkept orphan's keys go soon after its end ({ttl} ms)");
}

#[tokio::test]
async fn a_replica_whose_run_another_ended_stops_it_and_keeps_serving_its_own_readers() {
    let mut state = state(&unique("t:"));
    // A long lease: A renews it only at start, so the test decides when it lapses.
    state.lease_ms = 60_000;
    let (a, b) = (bare_store(&state).await, bare_store(&state).await);
    let token = a.create("run_live", NewRun::of("m")).await.unwrap();
    let mut mine = a.subscribe("run_live", 0).await.unwrap();
    a.append("run_live", CanonicalEvent::TextDelta { text: "x".into() }).await.unwrap();
    let mut seen = vec![mine.next().await.unwrap()];
    // A's lease lapses (it stalled), and B ends the run as an orphan.
    let mut conn = redis_connection().await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{}lease:{}", state.key_prefix, a.replica()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(b.reap_orphans().await.len(), 1);
    // A's next event finds the run ended elsewhere: its producer is told to stop, and A's own
    // reader still gets every event A makes.
    a.append("run_live", CanonicalEvent::TextDelta { text: "y".into() }).await.unwrap();
    seen.push(mine.next().await.unwrap());
    assert!(token.is_cancelled(), "told to stop by the time its reader has the event");
    let stop = CanonicalEvent::error(ErrorKind::Cancelled, "the run was cancelled");
    a.append("run_live", stop.clone()).await.unwrap();
    a.finish("run_live", RunStatus::Cancelled).await.unwrap();
    seen.extend(mine.collect::<Vec<_>>().await);
    assert_eq!(text(&seen), "xy");
    assert_eq!(seen.last().unwrap().event, stop);
    // Redis keeps the end B wrote: A's finish does not overwrite it.
    let shared: Vec<RunEvent> = b.subscribe("run_live", 0).await.unwrap().collect().await;
    assert_eq!(text(&shared), "x");
    assert!(
        matches!(&shared[1].event, CanonicalEvent::Error { error } if error.kind == ErrorKind::Upstream)
    );
    assert_eq!(b.status("run_live").await.unwrap().status, RunStatus::Failed);
}

/// The promise that makes a resume elsewhere safe: whatever the producer's own reader has
/// received is already in Redis. Events are appended without waiting (they reach Redis in
/// batches), and each one read is checked against Redis the moment it arrives.
#[tokio::test]
async fn an_event_reaches_a_local_reader_only_once_redis_holds_it() {
    let state = state(&unique("t:"));
    let a = bare_store(&state).await;
    a.create("run_seen", NewRun::of("m")).await.unwrap();
    let mut mine = a.subscribe("run_seen", 0).await.unwrap();
    for i in 0..199 {
        a.append("run_seen", CanonicalEvent::TextDelta { text: format!("{i} ") }).await.unwrap();
    }
    a.append("run_seen", CanonicalEvent::Finish { reason: StopReason::Stop }).await.unwrap();
    let mut conn = redis_connection().await;
    let hash = format!("{}run:run_seen", state.key_prefix);
    let read_and_check = async {
        let mut read = 0;
        while let Some(event) = mine.next().await {
            let held: u64 =
                redis::cmd("HGET").arg(&hash).arg("len").query_async(&mut conn).await.unwrap();
            assert!(held > event.seq, "event {} was read before Redis held it ({held})", event.seq);
            read += 1;
        }
        read
    };
    let (info, read) = tokio::join!(a.finish("run_seen", RunStatus::Finished), read_and_check);
    assert_eq!(read, 200);
    let info = info.unwrap();
    assert_eq!((info.status, info.num_events), (RunStatus::Finished, 200));
    // Another replica reads the same run from Redis, from a cursor inside a batch's entry.
    let b = bare_store(&state).await;
    let remote = b.status("run_seen").await.unwrap();
    assert_eq!((remote.status, remote.num_events), (RunStatus::Finished, 200));
    for from in [0, 57, 199] {
        let events: Vec<RunEvent> = b.subscribe("run_seen", from).await.unwrap().collect().await;
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (from..200).collect::<Vec<_>>()
        );
        let expected: String = (from..199).map(|i| format!("{i} ")).collect();
        assert_eq!(text(&events), expected);
    }
}

/// An event never lands past a gap in Redis's copy (as an earlier batch that failed would
/// leave): the run's copy there ends as failed, and its readers here still get every event.
#[tokio::test]
async fn an_event_that_would_leave_a_gap_in_redis_fails_the_shared_copy_only() {
    let state = state(&unique("t:"));
    let a = bare_store(&state).await;
    a.create("run_gap", NewRun::of("m")).await.unwrap();
    let mut mine = a.subscribe("run_gap", 0).await.unwrap();
    a.append("run_gap", CanonicalEvent::TextDelta { text: "x".into() }).await.unwrap();
    mine.next().await.unwrap();
    // Redis's copy disagrees about how many events it holds (as after a batch that failed:
    // there, fewer; here, more, so that the next entry id would still be accepted).
    let mut conn = redis_connection().await;
    let hash = format!("{}run:run_gap", state.key_prefix);
    let _: () =
        redis::cmd("HSET").arg(&hash).arg("len").arg(5).query_async(&mut conn).await.unwrap();
    a.append("run_gap", CanonicalEvent::TextDelta { text: "y".into() }).await.unwrap();
    let info = a.finish("run_gap", RunStatus::Finished).await.unwrap();
    assert_eq!((info.status, info.num_events), (RunStatus::Finished, 2));
    let seen: Vec<RunEvent> = mine.collect().await;
    assert_eq!(text(&seen), "y", "the local reader still gets every event");
    let (status, len): (String, u64) = redis::cmd("HMGET")
        .arg(&hash)
        .arg("status")
        .arg("len")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((status.as_str(), len), ("failed", 5));
    let stream = format!("{}run:run_gap:events", state.key_prefix);
    let held: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await.unwrap();
    assert_eq!(held, 1, "the event after the gap was not written");
}

/// A run's creation rides its first change (here none: the id is handed out first, as an
/// asynchronous prediction's is), and a run that starts and ends within one batch leaves Redis
/// as tidy as one written over many: ended, expiring, out of the running set.
#[tokio::test]
async fn a_run_is_in_redis_once_its_id_is_out_and_tidy_once_it_ends() {
    let state = state(&unique("t:"));
    let (a, b) = (bare_store(&state).await, bare_store(&state).await);
    a.create("run_quiet", NewRun::of("m")).await.unwrap();
    a.published("run_quiet").await;
    let info = b.status("run_quiet").await.expect("published means any replica finds it");
    assert_eq!((info.status, info.num_events), (RunStatus::Running, 0));
    a.finish("run_quiet", RunStatus::Cancelled).await.unwrap();
    assert_eq!(b.status("run_quiet").await.unwrap().status, RunStatus::Cancelled);

    // A run that fails before any change: its creation and end are one entry of the writer's
    // queue, so one batch both creates and ends it.
    a.create("run_short", NewRun::of("m")).await.unwrap();
    a.finish("run_short", RunStatus::Failed).await.unwrap();
    assert_eq!(b.status("run_short").await.unwrap().status, RunStatus::Failed);

    // Creation, route, events and end queued back to back.
    a.create("run_whole", NewRun::of("m")).await.unwrap();
    a.set_route("run_whole", "p/gpt").await.unwrap();
    for text in ["x", "y"] {
        a.append("run_whole", CanonicalEvent::TextDelta { text: text.into() }).await.unwrap();
    }
    a.finish("run_whole", RunStatus::Finished).await.unwrap();
    let info = b.status("run_whole").await.unwrap();
    assert_eq!(
        (info.status, info.num_events, info.route.as_deref()),
        (RunStatus::Finished, 2, Some("p/gpt"))
    );
    let events: Vec<RunEvent> = b.subscribe("run_whole", 1).await.unwrap().collect().await;
    assert_eq!(text(&events), "y");
    let mut conn = redis_connection().await;
    let prefix = &state.key_prefix;
    for run in ["run_quiet", "run_short", "run_whole"] {
        let listed: bool = redis::cmd("HEXISTS")
            .arg(format!("{prefix}running"))
            .arg(run)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!listed, "{run} is out of the running set");
        let ttl = pttl(&mut conn, &format!("{prefix}run:{run}")).await;
        assert!(ttl > 0 && ttl <= 60_000, "{run} expires with the store's ttl ({ttl} ms)");
    }
    let ttl = pttl(&mut conn, &format!("{prefix}run:run_whole:events")).await;
    assert!(ttl > 0 && ttl <= 60_000, "the events expire with the run ({ttl} ms)");

    // Opened with the edge's format, and to be forgotten at its end: another replica reads the
    // format from its creation, and its keys go within seconds of its end.
    let format = "{\"format\":\"run\"}";
    let new = NewRun { format: Some(format), forget_at_end: true, ..NewRun::of("m") };
    a.create("run_unkept", new).await.unwrap();
    a.append("run_unkept", CanonicalEvent::TextDelta { text: "z".into() }).await.unwrap();
    a.published("run_unkept").await;
    assert_eq!(b.status("run_unkept").await.unwrap().format.as_deref(), Some(format));
    a.finish("run_unkept", RunStatus::Finished).await.unwrap();
    for key in ["run:run_unkept", "run:run_unkept:events"] {
        let ttl = pttl(&mut conn, &format!("{prefix}{key}")).await;
        assert!(ttl > 0 && ttl <= 5_000, "{key} goes soon after the end ({ttl} ms)");
    }
}

/// How long `key` has left to live in Redis, in ms (negative: no expiry, or no key).
async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}
