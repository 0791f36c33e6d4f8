//! `[[limits]]` across two replicas sharing their counters in a real Redis: exact request
//! windows, spend budgets that concurrent load never overruns, and what happens while Redis is
//! down (a private `redis-server` on a free port, stopped and started again by the test).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::future::join_all;
use hearth_gateway::{
    Caller, FailureMode, Gateway, GatewayConfig, LimitConfig, LimitError, StartError,
};
use hearth_protocol::CanonicalRequest;

use crate::fake::{Answer, FakeProvider, Wire};
use crate::replicas::{config, fresh_schema, replica, state, unique};
use crate::support::{hello, upstream};

fn limit(scope: &str) -> LimitConfig {
    LimitConfig {
        name: Some("test".into()),
        scope: scope.into(),
        requests_per_minute: None,
        tokens_per_minute: None,
        spend_per_day: None,
        spend_per_month: None,
    }
}

async fn shared_config(fake: &FakeProvider, limits: Vec<LimitConfig>) -> GatewayConfig {
    let ledger_url = fresh_schema().await;
    let upstreams = [upstream("p", Wire::OpenAi, fake.base_url())];
    let mut config = config(&upstreams, &state(&unique("t:")), &ledger_url);
    config.limits = limits;
    config
}

/// Starts `count` runs at once, alternating between the replicas; returns each outcome.
async fn burst(
    replicas: &[&Gateway],
    count: usize,
    request: impl Fn() -> CanonicalRequest,
) -> Vec<Result<String, StartError>> {
    let starts = (0..count).map(|i| {
        let gateway = replicas[i % replicas.len()];
        let request = request();
        async move { gateway.start_run(request, Caller::default()).await.map(|run| run.run_id) }
    });
    join_all(starts).await
}

#[tokio::test]
async fn five_hundred_requests_across_two_replicas_meet_a_limit_of_one_hundred_exactly() {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    let mut rpm = limit("all");
    rpm.requests_per_minute = Some(100);
    let config = shared_config(&fake, vec![rpm]).await;
    let (a, b) = (replica(&config).await, replica(&config).await);
    let outcomes = burst(&[&a, &b], 500, || hello("m")).await;
    let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(admitted, 100, "exactly the limit, across both replicas");
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        match refused {
            StartError::Limited(LimitError::Exceeded { limit, retry_after_secs }) => {
                assert!(limit.contains("`test`") && limit.contains("requests_per_minute = 100"));
                assert!((1..=60).contains(retry_after_secs), "{retry_after_secs}");
            }
            other => panic!("expected a limit refusal, got {other:?}"),
        }
    }
    assert_eq!(fake.calls(), 100, "refused requests never reach the provider");
}

#[tokio::test]
async fn a_spend_budget_under_concurrent_load_is_never_overrun() {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    let mut budget = limit("metadata.team");
    budget.spend_per_day = Some("1".parse().unwrap());
    let mut config = shared_config(&fake, vec![budget]).await;
    // 1 / 20,000 per Mtok: each run (7 output tokens) costs 0.14 and reserves 0.32 for its
    // 16 `max_tokens`, so three fit at once and about seven in all.
    config.models[0].input_price_per_mtok = Some("1".parse().unwrap());
    config.models[0].output_price_per_mtok = Some("20000".parse().unwrap());
    let (a, b) = (replica(&config).await, replica(&config).await);
    let red = || {
        let mut request = hello("m");
        request.max_tokens = Some(16);
        request.metadata = serde_json::json!({"team": "red"}).as_object().cloned();
        request
    };
    let mut admitted = Vec::new();
    let mut refusals = 0;
    for _ in 0..4 {
        for outcome in burst(&[&a, &b], 40, red).await {
            match outcome {
                Ok(run_id) => admitted.push(run_id),
                Err(StartError::Limited(LimitError::Exceeded { .. })) => refusals += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        a.wait_idle().await;
        b.wait_idle().await;
    }
    let mut spent = rust_decimal::Decimal::ZERO;
    for run_id in &admitted {
        let record = a.ledger().get(run_id).await.unwrap().expect("every admitted run is billed");
        spent += record.cost.unwrap();
    }
    assert!(spent <= "1".parse().unwrap(), "spent {spent} of a budget of 1");
    assert!(refusals > 0 && admitted.len() >= 3, "{} admitted, {refusals} refused", admitted.len());
    // A team without the budget's key value is limited by its own counter, not red's.
    let mut blue = red();
    blue.metadata = serde_json::json!({"team": "blue"}).as_object().cloned();
    assert!(a.start_run(blue, Caller::default()).await.is_ok());
}

/// A `redis-server` of the test's own on a free port, so stopping it disturbs no other test.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self { port, child: None };
        redis.resume();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn redis_outage(mode: FailureMode) -> (Vec<bool>, Vec<bool>, Vec<bool>) {
    let fake = FakeProvider::start(Wire::OpenAi, Answer::Text).await;
    let mut redis = PrivateRedis::start();
    let mut rpm = limit("all");
    rpm.requests_per_minute = Some(1_000);
    let mut config = shared_config(&fake, vec![rpm]).await;
    config.state.redis_url = Some(redis.url());
    config.state.limits_on_redis_error = mode;
    let gateway = replica(&config).await;
    let attempt = |n| {
        let gateway = gateway.clone();
        async move {
            let outcomes = burst(&[&gateway], n, || hello("m")).await;
            for outcome in &outcomes {
                if let Err(e) = outcome {
                    assert!(
                        matches!(e, StartError::Limited(LimitError::Unavailable(_))),
                        "only the configured refusal: {e:?}"
                    );
                }
            }
            outcomes.iter().map(Result::is_ok).collect::<Vec<_>>()
        }
    };
    let before = attempt(5).await;
    redis.stop();
    let during = attempt(5).await;
    redis.resume();
    // The connection comes back by itself; give it a moment.
    let mut after = Vec::new();
    for _ in 0..50 {
        after = attempt(5).await;
        if after.iter().all(|ok| *ok) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.wait_idle().await;
    (before, during, after)
}

#[tokio::test]
async fn while_redis_is_down_limits_fail_open_or_closed_as_configured_then_recover() {
    let (before, during, after) = redis_outage(FailureMode::Open).await;
    assert!(before.iter().all(|ok| *ok), "{before:?}");
    assert!(during.iter().all(|ok| *ok), "fail open: served, unchecked: {during:?}");
    assert!(after.iter().all(|ok| *ok), "{after:?}");

    let (before, during, after) = redis_outage(FailureMode::Closed).await;
    assert!(before.iter().all(|ok| *ok), "{before:?}");
    assert!(during.iter().all(|ok| !ok), "fail closed: refused: {during:?}");
    assert!(after.iter().all(|ok| *ok), "recovers when Redis returns: {after:?}");
}
