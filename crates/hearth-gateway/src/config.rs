//! The gateway's part of `hearth.toml`: `[gateway]` knobs, `[[providers]]` and `[[models]]`.
//!
//! Every section refuses unknown keys, and every error names the key path it is about
//! (`models[1].routes[0]: ...`), so a typo never falls back to a default in silence. The CLI
//! embeds the three sections as its own fields and then calls [`GatewayConfig::validate`].

use std::path::PathBuf;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

/// The reserved provider name for routes served by a local package: `local/<package>`.
pub const LOCAL_PROVIDER: &str = "local";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub state: StateSettings,
    #[serde(default)]
    pub ledger: LedgerSettings,
    #[serde(default)]
    pub limits: Vec<crate::limits::LimitConfig>,
    #[serde(default)]
    pub api_keys: Vec<crate::keys::ConfigKey>,
    /// What is kept of requests beyond their ledger records (payloads, and their retention).
    #[serde(default)]
    pub logging: crate::logging::LoggingSettings,
}

/// `[state]`: where state that replicas share lives. Unset, everything stays in this process
/// (in-memory run buffers), which is right for one machine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    /// `redis://[user:password@]host:port[/db]`: run buffers go to Redis Streams, so any replica
    /// naming the same Redis serves resumes, status and cancel for any run.
    pub redis_url: Option<String>,
    /// Prefix of every key Hearth writes, so several deployments can share one Redis.
    pub key_prefix: String,
    /// A replica's lease: the runs of a replica that has not renewed it for this long (it was
    /// killed, or lost Redis) are ended by another replica with an error event.
    pub lease_ms: u64,
    /// What `[[limits]]` do while Redis cannot be reached: `open` admits requests unchecked,
    /// `closed` refuses them (503). `/health` says which.
    pub limits_on_redis_error: FailureMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    Open,
    Closed,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "hearth:".into(),
            lease_ms: 5_000,
            limits_on_redis_error: FailureMode::Open,
        }
    }
}

impl StateSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

/// `[ledger]`: where spend records go. Unset, the SQLite file at `gateway.ledger_path`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    /// `postgres://user[:password]@host:port/database`: the ledger of every replica naming it.
    pub postgres_url: Option<String>,
}

/// Retry, timeout and state knobs. Durations carry their unit in the key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Attempts per route before failing over to the next one (1 = no retry).
    pub retry_attempts: u32,
    /// First retry delay; doubles per attempt up to `backoff_max_ms`, with jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// A `Retry-After` up to this long is waited out on the same route; a longer one fails over.
    pub retry_after_max_secs: u64,
    /// Consecutive failures after which a route is skipped for `cooldown_secs`.
    pub cooldown_failures: u32,
    pub cooldown_secs: u64,
    pub connect_timeout_ms: u64,
    /// Longest wait from sending a request to the first event of its answer. Upstreams only:
    /// a local model's queue and prefill are waited for (see `Provider::first_content_has_deadline`).
    pub ttfb_timeout_ms: u64,
    /// Longest silence between two events of an answer (for a local model, once it streams).
    pub between_token_timeout_ms: u64,
    /// How long a finished run stays resumable.
    pub run_ttl_secs: u64,
    /// Memory held by all run buffers together.
    pub run_buffer_max_mb: u64,
    /// The SQLite spend ledger.
    pub ledger_path: PathBuf,
    /// `max_tokens` sent to Anthropic (which requires one) when the caller set none.
    pub anthropic_default_max_tokens: u32,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            retry_attempts: 2,
            backoff_base_ms: 250,
            backoff_max_ms: 4_000,
            retry_after_max_secs: 10,
            cooldown_failures: 3,
            cooldown_secs: 30,
            connect_timeout_ms: 5_000,
            ttfb_timeout_ms: 60_000,
            between_token_timeout_ms: 30_000,
            run_ttl_secs: 600,
            run_buffer_max_mb: 256,
            ledger_path: PathBuf::from("hearth-ledger.db"),
            anthropic_default_max_tokens: 4_096,
        }
    }
}

impl GatewaySettings {
    pub fn backoff_base(&self) -> Duration {
        Duration::from_millis(self.backoff_base_ms)
    }
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
    pub fn retry_after_max(&self) -> Duration {
        Duration::from_secs(self.retry_after_max_secs)
    }
    pub fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cooldown_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn ttfb_timeout(&self) -> Duration {
        Duration::from_millis(self.ttfb_timeout_ms)
    }
    pub fn between_token_timeout(&self) -> Duration {
        Duration::from_millis(self.between_token_timeout_ms)
    }
    pub fn run_ttl(&self) -> Duration {
        Duration::from_secs(self.run_ttl_secs)
    }
    pub fn run_buffer_max_bytes(&self) -> usize {
        usize::try_from(self.run_buffer_max_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// How routes name this provider: `<name>/<model>`.
    pub name: String,
    pub kind: ProviderKind,
    /// Defaults to the vendor's public endpoint; required for `openai-compatible`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable holding the API key (the key itself never goes in the file).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `kind = "hearth"`: the OpenAI base URLs (`http://host:port/v1`) of several Hearth engine
    /// daemons serving the same models; each request goes to one of them (see `placement`).
    #[serde(default)]
    pub base_urls: Vec<String>,
    /// `kind = "hearth"`: `affinity` (default: a conversation returns to the replica holding
    /// its prefix cache, unless that one is down or far busier) or `round-robin`.
    #[serde(default)]
    pub placement: Placement,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    #[default]
    Affinity,
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    OpenaiCompatible,
    /// Several Hearth engine daemons behind one route (`base_urls`).
    Hearth,
}

/// A catalog model id and the routes that serve it, tried in order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub id: String,
    /// `provider/model` or `local/<package>`.
    pub routes: Vec<String>,
    /// Prices per million tokens, in the ledger's currency.
    #[serde(default)]
    pub input_price_per_mtok: Option<Decimal>,
    #[serde(default)]
    pub output_price_per_mtok: Option<Decimal>,
    /// Price of input tokens read from the provider's prompt cache; defaults to the input price.
    #[serde(default)]
    pub cached_input_price_per_mtok: Option<Decimal>,
    #[serde(default)]
    pub context_length: Option<u64>,
}

/// A config file that cannot be used; `path` is the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl GatewayConfig {
    /// Parses and validates a TOML text holding `[gateway]`, `[[providers]]` and `[[models]]`.
    pub fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::new("", e.message().to_string()))?;
        let config: GatewayConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigError::new(path, e.into_inner().message().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, references between sections, duplicates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_settings(&self.gateway)?;
        validate_backends(&self.state, &self.ledger)?;
        crate::limits::Limits::new(&self.limits)?;
        crate::keys::Keys::new(&self.api_keys, None)?;
        let mut names = std::collections::BTreeSet::new();
        for (i, provider) in self.providers.iter().enumerate() {
            validate_provider(provider, &format!("providers[{i}]"))?;
            if !names.insert(provider.name.as_str()) {
                return Err(ConfigError::new(
                    format!("providers[{i}].name"),
                    format!("`{}` is declared twice", provider.name),
                ));
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, model) in self.models.iter().enumerate() {
            validate_model(model, &format!("models[{i}]"), &names)?;
            if !ids.insert(model.id.as_str()) {
                return Err(ConfigError::new(
                    format!("models[{i}].id"),
                    format!("`{}` is declared twice", model.id),
                ));
            }
        }
        Ok(())
    }
}

fn validate_settings(s: &GatewaySettings) -> Result<(), ConfigError> {
    let positive = [
        ("retry_attempts", u64::from(s.retry_attempts)),
        ("cooldown_failures", u64::from(s.cooldown_failures)),
        ("connect_timeout_ms", s.connect_timeout_ms),
        ("ttfb_timeout_ms", s.ttfb_timeout_ms),
        ("between_token_timeout_ms", s.between_token_timeout_ms),
        ("run_buffer_max_mb", s.run_buffer_max_mb),
        ("anthropic_default_max_tokens", u64::from(s.anthropic_default_max_tokens)),
    ];
    for (key, value) in positive {
        if value == 0 {
            return Err(ConfigError::new(format!("gateway.{key}"), "must be at least 1"));
        }
    }
    if s.backoff_base_ms > s.backoff_max_ms {
        return Err(ConfigError::new(
            "gateway.backoff_base_ms",
            format!("must not exceed backoff_max_ms ({})", s.backoff_max_ms),
        ));
    }
    Ok(())
}

fn validate_backends(state: &StateSettings, ledger: &LedgerSettings) -> Result<(), ConfigError> {
    if let Some(url) = &state.redis_url {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::new(
                "state.redis_url",
                "must start with redis:// or rediss://",
            ));
        }
    }
    if state.lease_ms < 300 {
        return Err(ConfigError::new("state.lease_ms", "must be at least 300"));
    }
    if let Some(url) = &ledger.postgres_url {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "ledger.postgres_url",
                "must start with postgres:// or postgresql://",
            ));
        }
    }
    Ok(())
}

fn validate_provider(p: &ProviderConfig, path: &str) -> Result<(), ConfigError> {
    if p.name.is_empty() || !p.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "must be non-empty and use only letters, digits, `-`, `_` and `.`",
        ));
    }
    if p.name == LOCAL_PROVIDER {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "`local` is reserved for locally served packages",
        ));
    }
    let urls = p.base_url.iter().map(|u| (format!("{path}.base_url"), u));
    let many = p.base_urls.iter().enumerate().map(|(i, u)| (format!("{path}.base_urls[{i}]"), u));
    for (key, url) in urls.chain(many) {
        let parsed = reqwest::Url::parse(url).map_err(|e| ConfigError::new(&key, e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError::new(key, "must be an http(s) URL"));
        }
    }
    let is_hearth = p.kind == ProviderKind::Hearth;
    if is_hearth && (p.base_urls.is_empty() || p.base_url.is_some()) {
        return Err(ConfigError::new(
            format!("{path}.base_urls"),
            "kind `hearth` takes its engines' URLs in base_urls (and no base_url)",
        ));
    }
    if !is_hearth && !p.base_urls.is_empty() {
        return Err(ConfigError::new(format!("{path}.base_urls"), "is only for kind `hearth`"));
    }
    match &p.base_url {
        _ if is_hearth => {}
        Some(_) => {}
        None if p.kind == ProviderKind::OpenaiCompatible => {
            return Err(ConfigError::new(
                format!("{path}.base_url"),
                "is required for kind `openai-compatible`",
            ));
        }
        None => {}
    }
    if p.api_key_env.as_deref() == Some("") {
        return Err(ConfigError::new(format!("{path}.api_key_env"), "must not be empty"));
    }
    Ok(())
}

fn validate_model(
    m: &ModelConfig,
    path: &str,
    providers: &std::collections::BTreeSet<&str>,
) -> Result<(), ConfigError> {
    if m.id.is_empty() {
        return Err(ConfigError::new(format!("{path}.id"), "must not be empty"));
    }
    if m.routes.is_empty() {
        return Err(ConfigError::new(format!("{path}.routes"), "must list at least one route"));
    }
    for (j, route) in m.routes.iter().enumerate() {
        let at = format!("{path}.routes[{j}]");
        let (provider, _) =
            route.split_once('/').filter(|(p, m)| !p.is_empty() && !m.is_empty()).ok_or_else(
                || ConfigError::new(&at, format!("`{route}` is not `provider/model`")),
            )?;
        if provider != LOCAL_PROVIDER && !providers.contains(provider) {
            return Err(ConfigError::new(
                &at,
                format!("provider `{provider}` is not declared in [[providers]]"),
            ));
        }
    }
    let prices = [
        ("input_price_per_mtok", m.input_price_per_mtok),
        ("output_price_per_mtok", m.output_price_per_mtok),
        ("cached_input_price_per_mtok", m.cached_input_price_per_mtok),
    ];
    for (key, price) in prices {
        if price.is_some_and(|p| p.is_sign_negative()) {
            return Err(ConfigError::new(format!("{path}.{key}"), "must not be negative"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[gateway]
retry_attempts = 3
ttfb_timeout_ms = 1500

[[providers]]
name = "openai"
kind = "openai"
api_key_env = "OPENAI_API_KEY"

[[providers]]
name = "vllm"
kind = "openai-compatible"
base_url = "http://127.0.0.1:8000/v1"

[[models]]
id = "gpt-4o-mini"
routes = ["openai/gpt-4o-mini", "vllm/qwen", "local/smol"]
input_price_per_mtok = 0.15
output_price_per_mtok = 0.6
cached_input_price_per_mtok = 0.075
"#;

    #[test]
    fn a_full_config_parses() {
        let c = GatewayConfig::parse(SAMPLE).unwrap();
        assert_eq!(c.gateway.retry_attempts, 3);
        assert_eq!(c.gateway.ttfb_timeout(), Duration::from_millis(1500));
        assert_eq!(c.gateway.run_ttl(), Duration::from_secs(600));
        assert_eq!(c.providers[1].kind, ProviderKind::OpenaiCompatible);
        assert_eq!(c.models[0].cached_input_price_per_mtok, Some("0.075".parse().unwrap()));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = GatewayConfig::parse("[[models]]\nid = \"a\"\nroutes = [\"x/y\"]\nprice = 1\n")
            .unwrap_err();
        assert_eq!(err.path, "models[0].price");
        assert!(err.message.contains("unknown field"), "{err}");
        let err = GatewayConfig::parse("[gateway]\nretry_attempt = 1\n").unwrap_err();
        assert_eq!(err.path, "gateway.retry_attempt");
        let err = GatewayConfig::parse("[[models]]\nid = \"a\"\nroutes = \"x/y\"\n").unwrap_err();
        assert_eq!(err.path, "models[0].routes");
    }

    #[test]
    fn semantic_errors_quote_the_path() {
        let undeclared = "[[models]]\nid = \"a\"\nroutes = [\"local/x\", \"nope/y\"]\n";
        let err = GatewayConfig::parse(undeclared).unwrap_err();
        assert_eq!(err.path, "models[0].routes[1]");
        assert!(err.to_string().starts_with("models[0].routes[1]: provider `nope`"), "{err}");
        let compat = "[[providers]]\nname = \"v\"\nkind = \"openai-compatible\"\n";
        assert_eq!(GatewayConfig::parse(compat).unwrap_err().path, "providers[0].base_url");
        let local = "[[providers]]\nname = \"local\"\nkind = \"openai\"\n";
        assert_eq!(GatewayConfig::parse(local).unwrap_err().path, "providers[0].name");
        let zero = "[gateway]\nretry_attempts = 0\n";
        assert_eq!(GatewayConfig::parse(zero).unwrap_err().path, "gateway.retry_attempts");
        let price = "[[models]]\nid = \"a\"\nroutes = [\"local/x\"]\ninput_price_per_mtok = -1\n";
        assert_eq!(GatewayConfig::parse(price).unwrap_err().path, "models[0].input_price_per_mtok");
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        assert_eq!(GatewayConfig::parse("").unwrap(), GatewayConfig::default());
    }
}
