//! A gateway wired to fake providers, with its own ledger in a temporary directory.

use std::collections::BTreeMap;

use futures::StreamExt;
use hearth_gateway::{
    Caller, Catalog, Gateway, GatewayConfig, GatewaySettings, GroupBy, LedgerRecord, ModelConfig,
    ProviderConfig, ProviderKind, RunEvent, StartError, StartedRun, Subscription, UsageQuery,
};
use hearth_protocol::{CanonicalEvent, CanonicalRequest, Message, MessageRole};
use tempfile::TempDir;

use crate::fake::Wire;

pub struct Harness {
    pub gateway: Gateway,
    _dir: TempDir,
}

/// One provider: its name, wire format and base URL.
pub struct Upstream {
    pub name: &'static str,
    pub wire: Wire,
    pub base_url: String,
}

pub fn upstream(name: &'static str, wire: Wire, base_url: String) -> Upstream {
    Upstream { name, wire, base_url }
}

/// Fast retries and short timeouts, so fault tests take well under a second or two each.
pub fn test_settings() -> GatewaySettings {
    GatewaySettings {
        retry_attempts: 2,
        backoff_base_ms: 1,
        backoff_max_ms: 5,
        retry_after_max_secs: 2,
        cooldown_failures: 100,
        ttfb_timeout_ms: 1_500,
        between_token_timeout_ms: 1_000,
        ..Default::default()
    }
}

pub fn key_of(name: &str) -> String {
    format!("sk-test-secret-{name}")
}

/// A gateway whose model `m` routes to `routes` in order, with prices 1/2/0.5 per Mtok.
pub async fn harness(
    upstreams: &[Upstream],
    routes: &[&str],
    settings: GatewaySettings,
) -> Harness {
    harness_with(upstreams, routes, settings, Catalog::new()).await
}

/// As [`harness`], over a catalog that may already hold local packages.
pub async fn harness_with(
    upstreams: &[Upstream],
    routes: &[&str],
    settings: GatewaySettings,
    mut catalog: Catalog,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let settings = GatewaySettings { ledger_path: dir.path().join("ledger.db"), ..settings };
    let config = GatewayConfig {
        gateway: settings.clone(),
        state: Default::default(),
        ledger: Default::default(),
        limits: Vec::new(),
        api_keys: Vec::new(),
        logging: Default::default(),
        providers: upstreams.iter().map(provider_config).collect(),
        models: vec![ModelConfig {
            id: "m".into(),
            routes: routes.iter().map(|r| r.to_string()).collect(),
            input_price_per_mtok: Some("1".parse().unwrap()),
            output_price_per_mtok: Some("2".parse().unwrap()),
            cached_input_price_per_mtok: Some("0.5".parse().unwrap()),
            context_length: None,
        }],
    };
    let keys: BTreeMap<String, String> =
        upstreams.iter().map(|u| (format!("KEY_{}", u.name), key_of(u.name))).collect();
    catalog.configure_with_env(&config, |var| keys.get(var).cloned()).unwrap();
    let gateway = Gateway::open(catalog, &settings).await.unwrap();
    Harness { gateway, _dir: dir }
}

fn provider_config(u: &Upstream) -> ProviderConfig {
    ProviderConfig {
        name: u.name.into(),
        kind: match u.wire {
            Wire::OpenAi => ProviderKind::Openai,
            Wire::Anthropic => ProviderKind::Anthropic,
            Wire::Gemini => ProviderKind::Gemini,
        },
        base_url: Some(u.base_url.clone()),
        api_key_env: Some(format!("KEY_{}", u.name)),
        base_urls: Vec::new(),
        placement: Default::default(),
    }
}

pub fn hello(model: &str) -> CanonicalRequest {
    CanonicalRequest {
        model: model.into(),
        system: Some("Be brief.".into()),
        messages: vec![Message::text(MessageRole::User, "Say hello")],
        max_tokens: Some(64),
        stream: true,
        ..Default::default()
    }
}

impl Harness {
    pub async fn start(&self, request: CanonicalRequest) -> Result<StartedRun, StartError> {
        self.gateway.start_run(request, Caller::default()).await
    }

    /// Waits for every producer, then returns the run's ledger record, checking that the
    /// ledger holds exactly one record in all.
    pub async fn only_record(&self, run_id: &str) -> LedgerRecord {
        self.gateway.wait_idle().await;
        let all = UsageQuery { group_by: GroupBy::Model, since: None, until: None };
        let groups = self.gateway.usage(&all).await.unwrap();
        let total: u64 = groups.iter().map(|g| g.requests + g.rejected).sum();
        assert_eq!(total, 1, "exactly one ledger record: {groups:?}");
        self.gateway.ledger().get(run_id).await.unwrap().expect("a record for the run")
    }
}

pub async fn events(subscription: Subscription) -> Vec<CanonicalEvent> {
    subscription.map(|e: RunEvent| e.event).collect().await
}

pub fn text_of(events: &[CanonicalEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            CanonicalEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}
