//! Opening a gateway over the stores `hearth.toml` names: Redis for runs and limit counters,
//! PostgreSQL or SQLite for the ledger and the API keys beside it.

use std::sync::Arc;

use crate::cache::{MemoryCache, RedisCache, ResponseCache};
use crate::catalog::Catalog;
use crate::config::{FailureMode, GatewayConfig};
use crate::gateway::{Gateway, DEFAULT_CACHE_BYTES};
use crate::keys::{Keys, SqlKeys};
use crate::ledger::{BatchedLedger, Ledger, LedgerError, PostgresLedger, SqliteLedger};
use crate::limits::{Limiter, Limits, MemoryLimiter, RedisLimiter};
use crate::runs::{InMemoryRunStore, RedisRunStore, RunError, RunStore};
use crate::shared::Backends;

/// Why [`Gateway::connect`] could not open the gateway's stores.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("connecting to Redis for the run buffers: {0}")]
    Runs(#[from] RunError),
    #[error(transparent)]
    Config(crate::config::ConfigError),
}

/// What a gateway is built from.
pub(crate) struct Parts {
    pub runs: Arc<dyn RunStore>,
    pub ledger: Arc<dyn Ledger>,
    pub logging: crate::logging::LoggingSettings,
    pub limits: Limits,
    pub limiter: Arc<dyn Limiter>,
    pub keys: Keys,
    pub cache: Arc<dyn ResponseCache>,
    pub backends: Backends,
}

/// What replicas share, or this process keeps alone.
type Shared = (Arc<dyn RunStore>, Arc<dyn Limiter>, Arc<dyn ResponseCache>);

impl Gateway {
    /// The gateway over the stores `config` names: run buffers in Redis when `[state]
    /// redis_url` is set, else in memory; the ledger in PostgreSQL when `[ledger]
    /// postgres_url` is set, else the SQLite file at `gateway.ledger_path`.
    pub async fn connect(catalog: Catalog, config: &GatewayConfig) -> Result<Gateway, OpenError> {
        let settings = &config.gateway;
        let mut backends = Backends::default();
        let (store, key_store): (Arc<dyn Ledger>, SqlKeys) = match &config.ledger.postgres_url {
            Some(url) => {
                backends.ledger = "postgresql";
                let ledger = PostgresLedger::connect(url).await?;
                let keys = SqlKeys::Postgres(ledger.pool().clone());
                (Arc::new(ledger), keys)
            }
            None => {
                let ledger = SqliteLedger::open(&settings.ledger_path).await?;
                let keys = SqlKeys::Sqlite(ledger.pool().clone());
                (Arc::new(ledger), keys)
            }
        };
        let keys =
            Keys::new(&config.api_keys, Some(Arc::new(key_store))).map_err(OpenError::Config)?;
        let ledger = Arc::new(BatchedLedger::new(store, config.logging.retention()));
        let limits = Limits::new(&config.limits).map_err(OpenError::Config)?;
        backends.limits = limits.len();
        let shared: Shared = match &config.state.redis_url {
            Some(url) => {
                let state = &config.state;
                let (ttl, max_bytes) = (settings.run_ttl(), settings.run_buffer_max_bytes());
                let runs = RedisRunStore::connect(state, url, ttl, max_bytes).await?;
                let fail_open = state.limits_on_redis_error == FailureMode::Open;
                let limiter = RedisLimiter::new(runs.connection(), &state.key_prefix, fail_open);
                backends.runs = "redis";
                backends.limit_counters = "redis";
                backends.limits_on_redis_error = Some(limiter.failure_mode());
                backends.response_cache = "redis";
                let cache = RedisCache::new(runs.connection(), &state.key_prefix);
                (Arc::new(runs), Arc::new(limiter), Arc::new(cache))
            }
            None => (
                Arc::new(InMemoryRunStore::from_settings(settings)),
                Arc::new(MemoryLimiter::default()),
                Arc::new(MemoryCache::new(DEFAULT_CACHE_BYTES)),
            ),
        };
        let (runs, limiter, cache) = shared;
        let logging = config.logging.clone();
        let parts = Parts { runs, ledger, logging, limits, limiter, keys, cache, backends };
        Ok(Self::build(catalog, settings, parts))
    }
}
