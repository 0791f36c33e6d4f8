//! What every ledger must do, run by each one's tests against a fresh store.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::{CallerMetadata, GroupBy, Ledger, LedgerRecord, LedgerStatus, UsageQuery};

fn record(run_id: &str, model: &str, team: Option<&str>, cost: Option<&str>) -> LedgerRecord {
    let metadata = match team {
        Some(t) => CallerMetadata::from_json(&json!({"team": t, "n": 1})).unwrap(),
        None => CallerMetadata::default(),
    };
    LedgerRecord {
        run_id: run_id.into(),
        model: model.into(),
        route: Some(format!("p/{model}")),
        status: LedgerStatus::Finished,
        input_tokens: 10,
        output_tokens: 5,
        cached_input_tokens: 2,
        cost: cost.map(|c| c.parse().unwrap()),
        ttft_ms: Some(12),
        latency_ms: 40,
        metadata,
        api_key_id: Some("key-1".into()),
        started_at: Utc.timestamp_millis_opt(1_000).unwrap(),
        ended_at: Utc.timestamp_millis_opt(1_040).unwrap(),
        error: None,
        cached: false,
    }
}

pub(crate) async fn records_round_trip_and_usage_groups(ledger: &dyn Ledger) {
    let a = record("r1", "m1", Some("red"), Some("0.000000001"));
    ledger.record(&a).await.unwrap();
    ledger.record(&record("r2", "m1", Some("blue"), Some("0.5"))).await.unwrap();
    ledger.record(&record("r3", "m2", None, None)).await.unwrap();
    assert_eq!(ledger.get("r1").await.unwrap(), Some(a.clone()));
    assert!(ledger.record(&a).await.is_err(), "one record per run");

    let q = |group_by| UsageQuery { group_by, since: None, until: None };
    let by_team = ledger.usage(&q(GroupBy::Metadata("team".into()))).await.unwrap();
    let keys: Vec<_> = by_team.iter().map(|g| (g.key.clone(), g.requests)).collect();
    assert_eq!(keys, vec![(None, 1), (Some("blue".into()), 1), (Some("red".into()), 1)]);
    let by_model = ledger.usage(&q(GroupBy::Model)).await.unwrap();
    assert_eq!(by_model[0].cost, "0.500000001".parse().unwrap());
    assert_eq!((by_model[0].requests, by_model[0].input_tokens), (2, 20));
    let by_route = ledger.usage(&q(GroupBy::Route)).await.unwrap();
    assert_eq!(by_route[1].key.as_deref(), Some("p/m2"));
    let numeric = ledger.usage(&q(GroupBy::Metadata("n".into()))).await.unwrap();
    assert_eq!(numeric.iter().find(|g| g.key.as_deref() == Some("1")).map(|g| g.requests), Some(2));
}

pub(crate) async fn usage_respects_the_time_window(ledger: &dyn Ledger) {
    ledger.record(&record("r1", "m", None, None)).await.unwrap();
    let at = |ms| Some(Utc.timestamp_millis_opt(ms).unwrap());
    let inside = UsageQuery { group_by: GroupBy::Model, since: at(1_000), until: at(1_001) };
    assert_eq!(ledger.usage(&inside).await.unwrap()[0].requests, 1);
    let after = UsageQuery { group_by: GroupBy::Model, since: at(1_001), until: None };
    assert!(ledger.usage(&after).await.unwrap().is_empty());
}

/// How runs ended (failed, cancelled, answered from the cache) is counted per group, and a
/// series puts each run in the bucket its start falls in.
pub(crate) async fn usage_counts_outcomes_and_buckets_by_time(ledger: &dyn Ledger) {
    let at = |run_id: &str, ms: i64, status: LedgerStatus, cached: bool| LedgerRecord {
        status,
        cached,
        started_at: Utc.timestamp_millis_opt(ms).unwrap(),
        ended_at: Utc.timestamp_millis_opt(ms + 40).unwrap(),
        ..record(run_id, "m", Some("red"), Some("0.25"))
    };
    ledger.record(&at("r1", 60_000, LedgerStatus::Finished, false)).await.unwrap();
    ledger.record(&at("r2", 61_000, LedgerStatus::Failed, false)).await.unwrap();
    ledger.record(&at("r3", 119_999, LedgerStatus::Finished, true)).await.unwrap();
    ledger.record(&at("r4", 120_000, LedgerStatus::Cancelled, false)).await.unwrap();
    ledger.record(&at("r5", 240_000, LedgerStatus::Rejected, false)).await.unwrap();
    let query = UsageQuery { group_by: GroupBy::Metadata("team".into()), since: None, until: None };

    let totals = ledger.usage(&query).await.unwrap();
    assert_eq!(totals.len(), 1);
    let red = &totals[0];
    assert_eq!(red.key.as_deref(), Some("red"));
    assert_eq!(
        (red.requests, red.rejected, red.failed, red.cancelled, red.cached),
        (4, 1, 1, 1, 1)
    );

    let series = ledger.usage_series(&query, Duration::from_secs(60)).await.unwrap();
    let starts: Vec<i64> = series.iter().map(|b| b.start.timestamp_millis()).collect();
    assert_eq!(starts, vec![60_000, 120_000, 240_000], "only buckets holding runs, in order");
    let first = &series[0].groups[0];
    assert_eq!((first.requests, first.failed, first.cached), (3, 1, 1));
    assert_eq!(first.cost, "0.75".parse().unwrap());
    assert_eq!((series[1].groups[0].requests, series[1].groups[0].cancelled), (1, 1));
    assert_eq!((series[2].groups[0].requests, series[2].groups[0].rejected), (0, 1));
    // The bucket totals add up to the totals.
    let summed: u64 = series.iter().flat_map(|b| &b.groups).map(|g| g.requests).sum();
    assert_eq!(summed, red.requests);
}

fn payload(run_id: &str, stored_at_ms: i64) -> super::RunPayload {
    super::RunPayload {
        run_id: run_id.into(),
        stored_at: Utc.timestamp_millis_opt(stored_at_ms).unwrap(),
        request: json!({"model": "m", "messages": [{"role": "user", "content": run_id}]}),
        response: json!({"content": [{"type": "text", "text": "hi"}]}),
    }
}

pub(crate) async fn payloads_are_stored_read_deleted_and_pruned(ledger: &dyn Ledger) {
    use crate::logging::PayloadRetention;
    let stored: Vec<_> = (1..=5).map(|i| payload(&format!("p{i}"), i * 1_000)).collect();
    ledger.store_payloads(&stored).await.unwrap();
    assert_eq!(ledger.payload("p2").await.unwrap(), Some(stored[1].clone()));
    assert_eq!(ledger.payload("nope").await.unwrap(), None);
    // A second payload for a run changes nothing.
    ledger.store_payloads(&[payload("p2", 9_000)]).await.unwrap();
    assert_eq!(ledger.payload("p2").await.unwrap(), Some(stored[1].clone()));

    assert!(ledger.delete_payload("p2").await.unwrap());
    assert!(!ledger.delete_payload("p2").await.unwrap(), "gone already");
    assert_eq!(ledger.payload("p2").await.unwrap(), None);

    // p1 is older than 3.5 s at t = 5 s; of p3, p4, p5, the two newest stay.
    let retention =
        PayloadRetention { max_age: Some(Duration::from_millis(3_500)), max_count: Some(2) };
    let now = Utc.timestamp_millis_opt(5_000).unwrap();
    assert_eq!(ledger.prune_payloads(retention, now).await.unwrap(), 2);
    for (run_id, kept) in [("p1", false), ("p3", false), ("p4", true), ("p5", true)] {
        assert_eq!(ledger.payload(run_id).await.unwrap().is_some(), kept, "{run_id}");
    }
    assert_eq!(ledger.prune_payloads(PayloadRetention::default(), now).await.unwrap(), 0);
}
