//! Kept answers in this process, bounded by their size: the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_protocol::CanonicalEvent;
use tokio::time::Instant;

use super::ResponseCache;

pub struct MemoryCache {
    max_bytes: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<String, Entry>,
    /// Keys in the order they were stored, for eviction.
    order: VecDeque<String>,
    bytes: usize,
}

struct Entry {
    events: Arc<Vec<CanonicalEvent>>,
    expires: Instant,
    bytes: usize,
}

impl MemoryCache {
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, inner: Mutex::default() }
    }
}

#[async_trait::async_trait]
impl ResponseCache for MemoryCache {
    async fn get(&self, key: &str) -> Option<Vec<CanonicalEvent>> {
        let entries = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.by_key.get(key)?;
        (entry.expires > Instant::now()).then(|| entry.events.to_vec())
    }

    async fn put(&self, key: &str, events: &[CanonicalEvent], ttl: Duration) {
        let bytes = serde_json::to_vec(events).map_or(0, |json| json.len());
        if bytes > self.max_bytes {
            return;
        }
        let mut entries = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = entries.by_key.remove(key) {
            entries.bytes -= old.bytes;
        }
        while entries.bytes + bytes > self.max_bytes {
            let Some(oldest) = entries.order.pop_front() else { break };
            if let Some(old) = entries.by_key.remove(&oldest) {
                entries.bytes -= old.bytes;
            }
        }
        let entry =
            Entry { events: Arc::new(events.to_vec()), expires: Instant::now() + ttl, bytes };
        entries.by_key.insert(key.to_owned(), entry);
        entries.order.push_back(key.to_owned());
        entries.bytes += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> Vec<CanonicalEvent> {
        vec![CanonicalEvent::TextDelta { text: t.into() }]
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_the_oldest_make_room() {
        let cache = MemoryCache::new(100);
        cache.put("a", &text("aaaa"), Duration::from_secs(10)).await;
        assert_eq!(cache.get("a").await, Some(text("aaaa")));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(cache.get("a").await, None, "expired");
        cache.put("b", &text(&"b".repeat(40)), Duration::from_secs(60)).await;
        cache.put("c", &text(&"c".repeat(40)), Duration::from_secs(60)).await;
        assert!(cache.get("b").await.is_none(), "evicted for c");
        assert!(cache.get("c").await.is_some());
    }
}
