//! An app whose gateway reaches fake upstream providers and keeps a real SQLite ledger.

use axum::Router;
use hearth_gateway::{
    Gateway, GatewayConfig, GatewaySettings, LedgerRecord, ModelConfig, ProviderConfig,
    ProviderKind,
};
use hearth_server::AppState;
use tempfile::TempDir;

use super::fake::{FakeProvider, SECRET_KEY};
use super::{app_over, catalog_with, shared_model, test_config};

pub struct GatewayApp {
    pub state: AppState,
    pub app: Router,
    _dir: TempDir,
}

/// Fast retries and short timeouts, so fault tests take a second or two at most.
pub fn fast_settings() -> GatewaySettings {
    GatewaySettings {
        retry_attempts: 2,
        backoff_base_ms: 1,
        backoff_max_ms: 5,
        retry_after_max_secs: 2,
        cooldown_failures: 100,
        ttfb_timeout_ms: 5_000,
        between_token_timeout_ms: 5_000,
        ..Default::default()
    }
}

/// The tiny local model, plus providers `oa` (OpenAI wire) and `an` (Anthropic wire) on `fake`,
/// both keyed with [`SECRET_KEY`]; model `chat` routes to `routes` in order and costs 1 / 2 /
/// 0.5 (cached input) per million tokens.
pub async fn gateway_app(fake: &FakeProvider, routes: &[&str]) -> GatewayApp {
    gateway_app_with(fake, routes, fast_settings()).await
}

pub async fn gateway_app_with(
    fake: &FakeProvider,
    routes: &[&str],
    settings: GatewaySettings,
) -> GatewayApp {
    let dir = tempfile::tempdir().unwrap();
    let settings = GatewaySettings { ledger_path: dir.path().join("ledger.sqlite"), ..settings };
    let provider = |name: &str, kind, base_url| ProviderConfig {
        name: name.into(),
        kind,
        base_url: Some(base_url),
        api_key_env: Some("TEST_PROVIDER_KEY".into()),
        base_urls: Vec::new(),
        placement: Default::default(),
    };
    let config = GatewayConfig {
        gateway: settings.clone(),
        state: Default::default(),
        ledger: Default::default(),
        limits: Vec::new(),
        api_keys: Vec::new(),
        logging: Default::default(),
        providers: vec![
            provider("oa", ProviderKind::Openai, fake.openai_url()),
            provider("an", ProviderKind::Anthropic, fake.anthropic_url()),
        ],
        models: vec![ModelConfig {
            id: "chat".into(),
            routes: routes.iter().map(|r| r.to_string()).collect(),
            input_price_per_mtok: Some("1".parse().unwrap()),
            output_price_per_mtok: Some("2".parse().unwrap()),
            cached_input_price_per_mtok: Some("0.5".parse().unwrap()),
            context_length: Some(8192),
        }],
    };
    let mut catalog = catalog_with(shared_model());
    catalog.configure_with_env(&config, |_| Some(SECRET_KEY.to_owned())).unwrap();
    let gateway = Gateway::open(catalog, &settings).await.unwrap();
    let (state, app) = app_over(gateway, test_config());
    GatewayApp { state, app, _dir: dir }
}

impl GatewayApp {
    /// Waits for every run to end, then reads one run's ledger record.
    pub async fn record(&self, run_id: &str) -> LedgerRecord {
        self.state.gateway().wait_idle().await;
        self.state.gateway().ledger().get(run_id).await.unwrap().expect("a ledger record")
    }
}
