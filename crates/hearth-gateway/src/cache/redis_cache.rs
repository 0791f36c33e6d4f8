//! Kept answers in Redis, shared by every replica: one key per answer with its TTL.

use std::time::Duration;

use hearth_protocol::CanonicalEvent;
use redis::aio::ConnectionManager;

use super::ResponseCache;

pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisCache {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self { conn, prefix: format!("{prefix}cache:") }
    }
}

#[async_trait::async_trait]
impl ResponseCache for RedisCache {
    async fn get(&self, key: &str) -> Option<Vec<CanonicalEvent>> {
        let found: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut self.conn.clone())
            .await;
        match found {
            Ok(json) => json.and_then(|json| serde_json::from_str(&json).ok()),
            Err(error) => {
                tracing::warn!(%error, "response cache unreachable; answering without it");
                None
            }
        }
    }

    async fn put(&self, key: &str, events: &[CanonicalEvent], ttl: Duration) {
        let Ok(json) = serde_json::to_string(events) else { return };
        let stored: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(json)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(error) = stored {
            tracing::warn!(%error, "could not store an answer in the response cache");
        }
    }
}
