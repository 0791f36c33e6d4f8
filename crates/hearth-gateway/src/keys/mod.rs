//! Client API keys: created and revoked through the admin API (stored hashed in the ledger's
//! database, SQLite or PostgreSQL) or declared in `hearth.toml` (`[[api_keys]]`, by the
//! SHA-256 of the secret). Each key carries metadata merged into its runs' ledger records (the
//! key's entries win over the caller's), the models it may use, and limits of its own.
//!
//! Without any key, the daemon answers everyone, as before. With one or more, every model
//! request needs `Authorization: Bearer <key>` or `x-api-key: <key>`.
//!
//! Lookups are cached for [`CACHE_TTL`]: a revoked key stops working on every replica within
//! that time (at once on the replica that revoked it), and a request costs no database round
//! trip.

mod sql;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use sql::{KeyStore, SqlKeys};

use crate::config::ConfigError;
use crate::ledger::{CallerMetadata, LedgerError};

/// How long a lookup (found or not) is trusted before the store is asked again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Most cached lookups; past this the cache starts over (a flood of wrong keys cannot grow it).
const CACHE_MAX: usize = 10_000;
/// What every secret starts with, so a leaked one is recognisable.
pub const SECRET_PREFIX: &str = "hk-";

/// A key's own limits; each becomes a counter for that key alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_per_day: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_per_month: Option<Decimal>,
}

/// A key as stored: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub metadata: CallerMetadata,
    /// Model ids the key may use; empty for every model.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub limits: KeyLimits,
    pub created_at: DateTime<Utc>,
    /// Declared in `hearth.toml` (cannot be revoked through the API).
    #[serde(default)]
    pub from_config: bool,
}

impl ApiKey {
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// What the admin API takes to create a key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default, flatten)]
    pub limits: KeyLimits,
}

/// One `[[api_keys]]` entry: the key's hash, never its secret.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigKey {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Hex SHA-256 of the secret (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    #[serde(default)]
    pub metadata: Option<toml::Value>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default, flatten)]
    pub limits: KeyLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("API key `{0}` does not exist")]
    NotFound(String),
    #[error("API key `{0}` is declared in hearth.toml; remove it there")]
    Declared(String),
    #[error(transparent)]
    Store(#[from] LedgerError),
}

impl From<sqlx::Error> for KeyError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(LedgerError::Database(error))
    }
}

/// Why a request's key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this server needs an API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
    )]
    Missing,
    #[error("the API key is not valid (unknown or revoked)")]
    Invalid,
    #[error("the API keys cannot be checked right now: {0}")]
    Unavailable(String),
}

pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Characters after [`SECRET_PREFIX`] in a secret this daemon makes.
const SECRET_LEN: usize = 40;

fn new_secret() -> String {
    format!("{SECRET_PREFIX}{}", Alphanumeric.sample_string(&mut rand::rng(), SECRET_LEN))
}

fn is_stored_shape(secret: &str) -> bool {
    secret.strip_prefix(SECRET_PREFIX).is_some_and(|rest| {
        rest.len() == SECRET_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// The store could not be asked: logged in full, answered without its details (the caller
/// may be anyone).
fn unavailable(error: KeyError) -> AuthError {
    tracing::error!(%error, "cannot check API keys");
    AuthError::Unavailable("the key store is unreachable".into())
}

/// Every key the gateway knows: declared ones and the store's, with a lookup cache.
pub struct Keys {
    declared: HashMap<String, Arc<ApiKey>>,
    store: Option<Arc<dyn KeyStore>>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    by_hash: HashMap<String, (Instant, Option<Arc<ApiKey>>)>,
    any: Option<(Instant, bool)>,
}

impl Keys {
    pub fn new(
        declared: &[ConfigKey],
        store: Option<Arc<dyn KeyStore>>,
    ) -> Result<Self, ConfigError> {
        let declared = declared
            .iter()
            .enumerate()
            .map(|(i, key)| {
                declared_key(i, key).map(|k| (key.sha256.to_ascii_lowercase(), Arc::new(k)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { declared, store, cache: Mutex::default() })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether requests need a key: some key is declared, or was ever created (revoking every
    /// stored key leaves the daemon closed, never open to everyone).
    pub async fn required(&self) -> Result<bool, AuthError> {
        if !self.declared.is_empty() {
            return Ok(true);
        }
        let Some(store) = &self.store else { return Ok(false) };
        if let Some((at, any)) = self.cache().any {
            if at.elapsed() < CACHE_TTL {
                return Ok(any);
            }
        }
        let any = store.any().await.map_err(unavailable)?;
        self.cache().any = Some((Instant::now(), any));
        Ok(any)
    }

    /// The key whose secret is `secret`.
    pub async fn authenticate(&self, secret: &str) -> Result<Arc<ApiKey>, AuthError> {
        let hash = hash_secret(secret.trim());
        if let Some(key) = self.declared.get(&hash) {
            return Ok(key.clone());
        }
        let Some(store) = &self.store else { return Err(AuthError::Invalid) };
        // Only secrets this daemon could have made reach the store: a flood of made-up tokens
        // costs no database round trip.
        if !is_stored_shape(secret.trim()) {
            return Err(AuthError::Invalid);
        }
        if let Some((at, found)) = self.cache().by_hash.get(&hash) {
            if at.elapsed() < CACHE_TTL {
                return found.clone().ok_or(AuthError::Invalid);
            }
        }
        let found = store.find(&hash).await.map_err(unavailable)?;
        let found = found.map(Arc::new);
        let mut cache = self.cache();
        if cache.by_hash.len() >= CACHE_MAX {
            // Wrong keys go first; the keys in use stay cached.
            cache.by_hash.retain(|_, (_, found)| found.is_some());
        }
        if cache.by_hash.len() >= CACHE_MAX {
            cache.by_hash.clear();
        }
        cache.by_hash.insert(hash, (Instant::now(), found.clone()));
        found.ok_or(AuthError::Invalid)
    }

    /// Creates a key; returns it and its secret, which is shown this once and never stored.
    pub async fn create(&self, new: NewKey) -> Result<(ApiKey, String), KeyError> {
        let store = self.store.as_ref().ok_or_else(|| KeyError::Invalid("no key store".into()))?;
        if new.name.trim().is_empty() || new.name.len() > 128 {
            return Err(KeyError::Invalid("`name` must be 1 to 128 characters".into()));
        }
        let metadata = match &new.metadata {
            Some(value) => CallerMetadata::from_json(value)
                .map_err(|e| KeyError::Invalid(format!("`metadata`: {e}")))?,
            None => CallerMetadata::default(),
        };
        check_limits(&new.limits).map_err(KeyError::Invalid)?;
        let key = ApiKey {
            id: format!("key_{}", uuid::Uuid::now_v7().simple()),
            name: new.name.trim().to_owned(),
            metadata,
            models: new.models,
            limits: new.limits,
            created_at: Utc::now(),
            from_config: false,
        };
        let secret = new_secret();
        store.insert(&key, &hash_secret(&secret)).await?;
        self.cache().any = None;
        Ok((key, secret))
    }

    /// Revokes a stored key; this replica stops accepting it at once.
    pub async fn revoke(&self, id: &str) -> Result<(), KeyError> {
        if self.declared.values().any(|k| k.id == id) {
            return Err(KeyError::Declared(id.into()));
        }
        let store = self.store.as_ref().ok_or_else(|| KeyError::NotFound(id.into()))?;
        if !store.revoke(id).await? {
            return Err(KeyError::NotFound(id.into()));
        }
        let mut cache = self.cache();
        cache.by_hash.clear();
        cache.any = None;
        Ok(())
    }

    /// Every key, declared ones first.
    pub async fn list(&self) -> Result<Vec<ApiKey>, KeyError> {
        let mut keys: Vec<ApiKey> = self.declared.values().map(|k| ApiKey::clone(k)).collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(store) = &self.store {
            keys.extend(store.list().await?);
        }
        Ok(keys)
    }
}

fn check_limits(limits: &KeyLimits) -> Result<(), String> {
    let counts = [
        ("requests_per_minute", limits.requests_per_minute),
        ("tokens_per_minute", limits.tokens_per_minute),
    ];
    if let Some((name, _)) = counts.iter().find(|(_, v)| *v == Some(0)) {
        return Err(format!("`{name}` must be positive"));
    }
    let spends =
        [("spend_per_day", limits.spend_per_day), ("spend_per_month", limits.spend_per_month)];
    if let Some((name, _)) = spends.iter().find(|(_, v)| v.is_some_and(|d| d <= Decimal::ZERO)) {
        return Err(format!("`{name}` must be positive"));
    }
    Ok(())
}

fn declared_key(index: usize, key: &ConfigKey) -> Result<ApiKey, ConfigError> {
    let path = format!("api_keys[{index}]");
    let is_hex = key.sha256.len() == 64 && key.sha256.chars().all(|c| c.is_ascii_hexdigit());
    if !is_hex {
        return Err(ConfigError::new(
            format!("{path}.sha256"),
            "must be 64 hex digits (sha256sum of the key)",
        ));
    }
    if key.id.is_empty() {
        return Err(ConfigError::new(format!("{path}.id"), "must not be empty"));
    }
    let metadata = match &key.metadata {
        Some(value) => {
            let json = serde_json::to_value(value).unwrap_or_default();
            CallerMetadata::from_json(&json)
                .map_err(|e| ConfigError::new(format!("{path}.metadata"), e.to_string()))?
        }
        None => CallerMetadata::default(),
    };
    check_limits(&key.limits).map_err(|e| ConfigError::new(path.clone(), e))?;
    Ok(ApiKey {
        id: key.id.clone(),
        name: key.name.clone().unwrap_or_else(|| key.id.clone()),
        metadata,
        models: key.models.clone(),
        limits: key.limits.clone(),
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        from_config: true,
    })
}

impl Keys {
    /// No keys and no store: every request is answered, as without keys.
    pub fn none() -> Self {
        Self { declared: HashMap::new(), store: None, cache: Mutex::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::SqliteLedger;

    #[tokio::test]
    async fn keys_authenticate_until_revoked_and_revoking_the_last_keeps_keys_required() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db")).await.unwrap();
        let keys = Keys::new(&[], Some(Arc::new(SqlKeys::Sqlite(ledger.pool().clone())))).unwrap();
        assert!(!keys.required().await.unwrap(), "no key yet: open, as without keys");
        let new = NewKey { name: "ci".into(), ..NewKey::default() };
        let (key, secret) = keys.create(new).await.unwrap();
        assert!(is_stored_shape(&secret));
        assert!(keys.required().await.unwrap());
        assert_eq!(keys.authenticate(&secret).await.unwrap().id, key.id);
        assert_eq!(keys.authenticate("hk-made-up").await.unwrap_err(), AuthError::Invalid);
        keys.revoke(&key.id).await.unwrap();
        assert_eq!(keys.authenticate(&secret).await.unwrap_err(), AuthError::Invalid);
        assert!(keys.required().await.unwrap(), "revoking every key does not open the daemon");
        assert!(matches!(keys.revoke(&key.id).await, Err(KeyError::NotFound(_))));
    }
}
