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
    /// Keys in the order they were stored, with the generation stored then, for eviction: an
    /// entry stored again leaves a stale position behind, which eviction skips.
    order: VecDeque<(String, u64)>,
    bytes: usize,
    generation: u64,
}

struct Entry {
    events: Arc<Vec<CanonicalEvent>>,
    expires: Instant,
    bytes: usize,
    generation: u64,
}

impl MemoryCache {
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, inner: Mutex::default() }
    }
}

impl Entries {
    /// Evicts the oldest entries until `bytes` more fit.
    fn make_room(&mut self, bytes: usize, max_bytes: usize) {
        while self.bytes + bytes > max_bytes {
            let Some((oldest, generation)) = self.order.pop_front() else { break };
            if self.by_key.get(&oldest).is_some_and(|e| e.generation == generation) {
                if let Some(old) = self.by_key.remove(&oldest) {
                    self.bytes -= old.bytes;
                }
            }
        }
        // Stale positions are dropped once they outnumber the entries, so the queue stays
        // proportional to what is kept.
        if self.order.len() > 2 * self.by_key.len() + 16 {
            let by_key = &self.by_key;
            self.order.retain(|(k, g)| by_key.get(k).is_some_and(|e| e.generation == *g));
        }
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
        entries.make_room(bytes, self.max_bytes);
        entries.generation += 1;
        let generation = entries.generation;
        let expires = Instant::now() + ttl;
        let entry = Entry { events: Arc::new(events.to_vec()), expires, bytes, generation };
        entries.by_key.insert(key.to_owned(), entry);
        entries.order.push_back((key.to_owned(), generation));
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

    #[tokio::test]
    async fn storing_a_key_again_neither_grows_the_queue_nor_evicts_the_fresh_entry() {
        let cache = MemoryCache::new(1_000);
        for _ in 0..1_000 {
            cache.put("same", &text("x"), Duration::from_secs(60)).await;
        }
        cache.put("other", &text("y"), Duration::from_secs(60)).await;
        let queued = cache.inner.lock().unwrap().order.len();
        assert!(queued <= 2 * 2 + 17, "{queued}");
        assert!(cache.get("same").await.is_some() && cache.get("other").await.is_some());
    }
}
