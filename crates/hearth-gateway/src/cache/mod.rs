//! The response cache: a finished answer kept under its request, replayed to an identical
//! request as a run of its own (so a streamed request gets a stream, a whole one a body), and
//! billed at zero cost with `cached: true`. Opt-in per request (`x-hearth-cache-ttl`), in Redis
//! when replicas share state (a miss on one replica is a hit on another), else in memory.
//!
//! The key is the SHA-256 of the canonical request without what does not change the answer
//! (`stream`, caller metadata), or of the caller's own `x-hearth-cache-key` and the model.
//! Only answers that finished are kept.

mod memory;
mod redis_cache;
mod replay;

use std::time::Duration;

use hearth_protocol::{CanonicalEvent, CanonicalRequest};
use sha2::{Digest, Sha256};

pub use memory::MemoryCache;
pub use redis_cache::RedisCache;
pub use replay::CACHE_ROUTE;
pub(crate) use replay::{replay, Hit};

/// Longest TTL a caller may ask for: a day.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a request asked of the cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheOptions {
    /// Keep the answer this long (and look for a kept one). `None`: never store.
    pub ttl: Option<Duration>,
    /// Do not look for a kept answer (a fresh one is still stored when `ttl` is set).
    pub skip: bool,
    /// The caller's own key, instead of one computed from the request.
    pub key: Option<String>,
}

impl CacheOptions {
    pub fn is_active(&self) -> bool {
        self.ttl.is_some() || self.key.is_some()
    }
}

/// Whether a started run's answer came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
        }
    }
}

#[async_trait::async_trait]
pub trait ResponseCache: Send + Sync {
    /// The kept answer's events, if there is one that has not expired.
    async fn get(&self, key: &str) -> Option<Vec<CanonicalEvent>>;
    async fn put(&self, key: &str, events: &[CanonicalEvent], ttl: Duration);
}

/// The cache key of `request` under `options`, for the caller holding API key `api_key_id`:
/// kept answers are never shared between keys (one tenant can neither read another's nor
/// learn what another asked).
pub fn key_of(
    request: &CanonicalRequest,
    options: &CacheOptions,
    api_key_id: Option<&str>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(api_key_id.unwrap_or_default().as_bytes());
    hasher.update(b"\0");
    match &options.key {
        Some(own) => {
            hasher.update(b"own\0");
            hasher.update(request.model.as_bytes());
            hasher.update(b"\0");
            hasher.update(own.as_bytes());
        }
        None => {
            let mut canonical = request.clone();
            canonical.stream = false;
            canonical.metadata = None;
            canonical.session = None;
            hasher.update(serde_json::to_vec(&canonical).unwrap_or_default());
        }
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{Message, MessageRole};

    fn request(text: &str, stream: bool) -> CanonicalRequest {
        CanonicalRequest {
            model: "m".into(),
            messages: vec![Message::text(MessageRole::User, text)],
            stream,
            ..Default::default()
        }
    }

    #[test]
    fn the_key_ignores_streaming_and_metadata_but_not_content() {
        let options = CacheOptions { ttl: Some(Duration::from_secs(60)), ..Default::default() };
        let mut tagged = request("hi", true);
        tagged.metadata = serde_json::json!({"team": "red"}).as_object().cloned();
        let key = |r: &CanonicalRequest, o: &CacheOptions| key_of(r, o, None);
        assert_eq!(key(&request("hi", false), &options), key(&tagged, &options));
        assert_ne!(key(&request("hi", false), &options), key(&request("ho", false), &options));
        let own = CacheOptions { key: Some("k".into()), ..options.clone() };
        assert_eq!(key(&request("hi", false), &own), key(&request("ho", false), &own));
        let hi = request("hi", false);
        assert_ne!(key_of(&hi, &options, Some("key_a")), key_of(&hi, &options, Some("key_b")));
        assert_ne!(key_of(&hi, &own, Some("key_a")), key_of(&hi, &own, None));
    }
}
