//! Stored responses (`store: true`, OpenAI's default): what `GET /v1/responses/{id}` returns and
//! what `previous_response_id` continues. They live in memory, bounded by an age and by the
//! bytes they hold, oldest dropped first; a response's events stay in its run's buffer, which
//! has a lifetime of its own (`run_ttl_secs`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hearth_protocol::wire::responses::{ConvertedInput, ResponseHeader, ResponseObject};

/// One stored response.
#[derive(Debug, Clone)]
pub(crate) struct StoredResponse {
    pub run_id: String,
    pub header: ResponseHeader,
    pub background: bool,
    /// The conversation up to this response's input, for a response that continues it.
    pub conversation: ConvertedInput,
    /// The finished response object; `None` while its run is going on.
    pub finished: Option<ResponseObject>,
}

impl StoredResponse {
    fn approx_bytes(&self) -> usize {
        let settings = serde_json::to_string(&self.header.settings).map_or(0, |s| s.len());
        let finished = self
            .finished
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
            .map_or(0, |s| s.len());
        256 + settings + finished + self.conversation.approx_bytes()
    }
}

pub(crate) struct ResponseStore {
    ttl: Duration,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Ids oldest first, with the time each was stored.
    order: VecDeque<(String, Instant)>,
    bytes: usize,
}

struct Entry {
    response: Arc<StoredResponse>,
    bytes: usize,
}

impl ResponseStore {
    pub(crate) fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self { ttl, max_bytes, inner: Mutex::new(Inner::default()) }
    }

    pub(crate) fn insert(&self, id: &str, response: StoredResponse) {
        let mut inner = self.lock();
        let bytes = response.approx_bytes();
        if let Some(old) =
            inner.entries.insert(id.to_owned(), Entry { response: Arc::new(response), bytes })
        {
            inner.bytes -= old.bytes;
        } else {
            inner.order.push_back((id.to_owned(), Instant::now()));
        }
        inner.bytes += bytes;
        self.evict(&mut inner);
    }

    /// Records the finished response object; a response dropped meanwhile stays dropped.
    pub(crate) fn finish(&self, id: &str, finished: ResponseObject) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(id) else {
            return;
        };
        let mut response = StoredResponse::clone(&entry.response);
        response.finished = Some(finished);
        let bytes = response.approx_bytes();
        let before = std::mem::replace(&mut entry.bytes, bytes);
        entry.response = Arc::new(response);
        inner.bytes = inner.bytes - before + bytes;
        self.evict(&mut inner);
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<StoredResponse>> {
        let mut inner = self.lock();
        self.evict(&mut inner);
        inner.entries.get(id).map(|e| e.response.clone())
    }

    /// Deletes a response; false when there was none.
    pub(crate) fn remove(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.remove(id) else {
            return false;
        };
        inner.bytes -= entry.bytes;
        inner.order.retain(|(other, _)| other != id);
        true
    }

    /// Drops responses past their age, then the oldest until the rest fit.
    fn evict(&self, inner: &mut Inner) {
        let now = Instant::now();
        while let Some((id, stored_at)) = inner.order.front() {
            let expired = now.duration_since(*stored_at) > self.ttl;
            if !expired && inner.bytes <= self.max_bytes {
                break;
            }
            let id = id.clone();
            inner.order.pop_front();
            if let Some(entry) = inner.entries.remove(&id) {
                inner.bytes -= entry.bytes;
                tracing::debug!(response_id = %id, expired, "stored response dropped");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section is a short map update; a panic inside one leaves the maps
        // usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(text: &str) -> StoredResponse {
        let mut conversation = ConvertedInput::default();
        conversation.system.push(text.to_owned());
        StoredResponse {
            run_id: "run_1".into(),
            header: ResponseHeader {
                id: "resp_1".into(),
                created_at: 0,
                model: "m".into(),
                settings: Default::default(),
            },
            background: false,
            conversation,
            finished: None,
        }
    }

    #[test]
    fn the_oldest_go_first_when_memory_runs_out() {
        let store = ResponseStore::new(Duration::from_secs(60), 2_000);
        store.insert("a", stored(&"x".repeat(700)));
        store.insert("b", stored(&"y".repeat(700)));
        assert!(store.get("a").is_some());
        store.insert("c", stored(&"z".repeat(700)));
        assert!(store.get("a").is_none(), "the oldest response is dropped");
        assert!(store.get("b").is_some() && store.get("c").is_some());
        assert!(store.remove("b"));
        assert!(!store.remove("b"));
    }

    #[test]
    fn responses_expire() {
        let store = ResponseStore::new(Duration::ZERO, 1 << 20);
        store.insert("a", stored("x"));
        std::thread::sleep(Duration::from_millis(2));
        assert!(store.get("a").is_none());
    }

    #[test]
    fn finishing_records_the_response_object() {
        let store = ResponseStore::new(Duration::from_secs(60), 1 << 20);
        store.insert("a", stored("x"));
        let header = store.get("a").unwrap().header.clone();
        let object = hearth_protocol::wire::responses::StreamEncoder::new(header).into_response();
        store.finish("a", object.clone());
        assert_eq!(store.get("a").unwrap().finished.as_ref(), Some(&object));
        store.finish("gone", object);
    }
}
