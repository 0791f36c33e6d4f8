//! `hearth.toml`: the daemon's settings. Unknown keys are refused and errors quote the key's path
//! (`models[1].routes`), so a typo never silently falls back to a default.
//!
//! `[gateway]`, `[[providers]]` and `[[models]]` are the gateway's own config types, embedded
//! here and validated by the gateway, so each rule lives in one place.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hearth_gateway::{
    GatewayConfig, GatewaySettings, LedgerSettings, LimitConfig, ModelConfig, ProviderConfig,
    StateSettings,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub engine: EngineSection,
    /// Retries, timeouts, run buffers and the ledger's path.
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// Upstream providers; API keys come from the environment variables they name.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Model ids and their ordered routes (`provider/model` or `local/<package>`), with prices.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// State shared by replicas (`redis_url`); unset, runs stay in this process.
    #[serde(default)]
    pub state: StateSettings,
    /// Where the spend ledger lives (`postgres_url`); unset, the SQLite file at
    /// `gateway.ledger_path`.
    #[serde(default)]
    pub ledger: LedgerSettings,
    /// Budgets and rate limits, per API key, per metadata value, or for everything.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// Client API keys declared by the SHA-256 of their secret (more can be created through
    /// the admin API). With any key, model requests need one.
    #[serde(default)]
    pub api_keys: Vec<hearth_gateway::keys::ConfigKey>,
    /// The admin API (`hearth push`): its token and upload limits.
    #[serde(default)]
    pub admin: crate::serve_admin::AdminSection,
    /// What is kept of requests beyond their ledger records: payloads (off by default) and
    /// their retention.
    #[serde(default)]
    pub logging: hearth_gateway::logging::LoggingSettings,
    /// Trace export over OTLP (`otlp_endpoint`), off by default.
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetrySection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on, e.g. "127.0.0.1:8080".
    pub addr: Option<String>,
    /// Directory of packages to serve.
    pub models: Option<PathBuf>,
    /// Model served at the Cog root routes when several are loaded.
    pub default_model: Option<String>,
    /// Seconds in-flight requests get to finish on shutdown before they are cancelled.
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds a client may take to send a request's head; also how long an idle kept-alive
    /// connection stays open.
    pub header_read_timeout_secs: Option<f64>,
    /// Longest pause, in seconds, between two pieces of a request body.
    pub body_read_timeout_secs: Option<f64>,
    /// Open connections served at once; more are answered 503.
    pub max_connections: Option<usize>,
    /// Where Python predictors' file outputs are uploaded (`PUT {upload_url}/{filename}`);
    /// unset, they are answered as `data:` URIs.
    pub upload_url: Option<String>,
    /// Largest file input a Python predictor may fetch, in MiB (default 100).
    pub max_input_file_mb: Option<u64>,
    /// How long stored responses (`/v1/responses`) are kept, in seconds (default 3600).
    pub responses_ttl_secs: Option<u64>,
    /// Memory stored responses may hold together, in MiB (default 64); the oldest go first.
    pub responses_max_mb: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// KV-cache memory per model, in MiB (a package's hearth.yaml `kv_cache_mb` wins).
    /// Unset, the cache takes `kv_cache_memory_fraction` of the memory free after loading.
    pub kv_cache_mb: Option<usize>,
    /// Share of the memory free once a model's weights are loaded (RAM on the CPU, device
    /// memory on a GPU) given to its KV cache (default 0.5).
    pub kv_cache_memory_fraction: Option<f64>,
    pub max_num_seqs: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_prefill_chunk: Option<usize>,
    /// Prompt tokens in a step that also decodes (default 128): bounds running streams' gaps.
    pub max_prefill_tokens_while_decoding: Option<usize>,
    pub max_prefill_wait_steps: Option<u64>,
    pub max_waiting: Option<usize>,
    pub block_size: Option<usize>,
    /// Reuse the KV of earlier prompts' identical prefixes (default true; false is for
    /// measuring what the cache saves).
    pub prefix_caching: Option<bool>,
}

impl EngineSection {
    fn validate(&self) -> anyhow::Result<()> {
        if let Some(f) = self.kv_cache_memory_fraction {
            if !(f > 0.0 && f <= 1.0) {
                anyhow::bail!("engine.kv_cache_memory_fraction: {f} is not in (0, 1]");
            }
            if self.kv_cache_mb.is_some() {
                anyhow::bail!(
                    "engine: kv_cache_mb and kv_cache_memory_fraction both size the KV cache; set one"
                );
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads `path`, or `./hearth.toml` when no path is given and that file exists.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None if Path::new("hearth.toml").exists() => PathBuf::from("hearth.toml"),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let de = toml::Deserializer::parse(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("{path}: {}", e.into_inner().message())
        })?;
        config.gateway_config().validate()?;
        config.engine.validate()?;
        Ok(config)
    }

    /// The gateway's part of the file.
    pub fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            gateway: self.gateway.clone(),
            providers: self.providers.clone(),
            models: self.models.clone(),
            state: self.state.clone(),
            ledger: self.ledger.clone(),
            limits: self.limits.clone(),
            api_keys: self.api_keys.clone(),
            logging: self.logging.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kv_cache_is_sized_one_way() {
        let config = Config::parse("[engine]\nkv_cache_memory_fraction = 0.7\n").unwrap();
        assert_eq!(config.engine.kv_cache_memory_fraction, Some(0.7));
        for bad in ["kv_cache_memory_fraction = 0.0", "kv_cache_memory_fraction = 1.5"] {
            let err = Config::parse(&format!("[engine]\n{bad}\n")).unwrap_err();
            assert!(format!("{err:#}").contains("kv_cache_memory_fraction"), "{err:#}");
        }
        let both = "[engine]\nkv_cache_mb = 64\nkv_cache_memory_fraction = 0.5\n";
        let err = Config::parse(both).unwrap_err();
        assert!(format!("{err:#}").contains("set one"), "{err:#}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = Config::parse("[engine]\nkv_cache_mib = 3\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("kv_cache_mib"), "{msg}");
    }

    #[test]
    fn gateway_sections_parse_and_errors_quote_the_key_path() {
        let text = r#"
[gateway]
ledger_path = "spend.sqlite"

[[providers]]
name = "up"
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"

[[models]]
id = "chat"
routes = ["up/gpt", "local/tiny-llama"]
input_price_per_mtok = 0.5
output_price_per_mtok = 1.5
"#;
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.gateway.ledger_path, PathBuf::from("spend.sqlite"));
        assert_eq!(cfg.gateway_config().models[0].routes.len(), 2);

        let typo = text.replace("routes = [", "route = [");
        let msg = format!("{:#}", Config::parse(&typo).unwrap_err());
        assert!(msg.starts_with("models[0]"), "{msg}");
        let undeclared = text.replace("\"up/gpt\"", "\"nope/gpt\"");
        let msg = format!("{:#}", Config::parse(&undeclared).unwrap_err());
        assert!(msg.starts_with("models[0].routes[0]: provider `nope`"), "{msg}");
    }

    #[test]
    fn shared_state_sections_parse_and_are_checked() {
        let text = "[state]\nredis_url = \"redis://127.0.0.1:6379\"\nlease_ms = 2000\n\
                    [ledger]\npostgres_url = \"postgres://postgres@127.0.0.1/test\"\n";
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.gateway_config().state.lease_ms, 2_000);
        assert!(cfg.gateway_config().ledger.postgres_url.is_some());
        let msg =
            format!("{:#}", Config::parse("[state]\nredis_url = \"http://x\"\n").unwrap_err());
        assert!(msg.starts_with("state.redis_url"), "{msg}");
        let msg = format!("{:#}", Config::parse("[ledger]\npath = \"x\"\n").unwrap_err());
        assert!(msg.contains("path"), "{msg}");
    }

    #[test]
    fn sections_parse() {
        let cfg = Config::parse("[server]\naddr = \"0.0.0.0:9000\"\n[engine]\nmax_num_seqs = 4\n")
            .unwrap();
        assert_eq!(cfg.server.addr.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(cfg.engine.max_num_seqs, Some(4));
    }
}
