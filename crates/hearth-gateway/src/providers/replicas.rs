//! `kind = "hearth"`: several Hearth engine daemons behind one route. Each request goes to one
//! replica, chosen so that a conversation keeps landing where its prefix cache is:
//!
//! - **Affinity** (default): the request's session (`x-session-affinity`), or else a hash of
//!   the start of its conversation (model, system prompt, first message), ranks the replicas
//!   by rendezvous hashing; the first that is up takes it, unless its queue is
//!   [`SPILL_WAITING`] requests deeper than the least-loaded replica's, which then takes it.
//!   Adding or losing a replica moves only the sessions that were on it.
//! - **Round-robin**: each request to the next replica (for comparison).
//!
//! Load (queued and running requests, KV use) is read from each replica's `/health` every
//! [`POLL`]. A replica that refuses a connection or answers 5xx is passed over for the next
//! one in the order, within the same request, and marked down until its next good poll.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hearth_protocol::{CanonicalRequest, OutputConstraint};
use sha2::{Digest, Sha256};

use super::http::{HttpProvider, Upstream};
use super::openai::OpenAiApi;
use super::{Disposition, EventStream, Provider, ProviderError};
use crate::config::Placement;

/// How often each replica's load is read.
const POLL: Duration = Duration::from_millis(500);
/// How much deeper the preferred replica's queue may be than the least-loaded one's before a
/// request goes to the least-loaded instead.
const SPILL_WAITING: u64 = 4;
/// How much of the conversation's start the affinity hash reads.
const AFFINITY_PREFIX_BYTES: usize = 2_048;

struct Replica {
    /// `http://host:port` (the base URL without `/v1`), for `/health`.
    root: String,
    http: HttpProvider<OpenAiApi>,
    up: AtomicBool,
    waiting: AtomicU64,
    running: AtomicU64,
}

pub(crate) struct EngineReplicas {
    name: String,
    client: reqwest::Client,
    replicas: Arc<Vec<Replica>>,
    placement: Placement,
    next: AtomicUsize,
    poller: OnceLock<tokio::task::JoinHandle<()>>,
}

impl EngineReplicas {
    pub(crate) fn new(
        upstream: Upstream,
        client: reqwest::Client,
        base_urls: &[String],
        placement: Placement,
    ) -> Self {
        let replicas = base_urls
            .iter()
            .map(|url| Replica {
                root: url.trim_end_matches('/').trim_end_matches("/v1").to_owned(),
                http: HttpProvider::new(
                    upstream.clone(),
                    client.clone(),
                    OpenAiApi::new(Some(url), true),
                ),
                up: AtomicBool::new(true),
                waiting: AtomicU64::new(0),
                running: AtomicU64::new(0),
            })
            .collect();
        let name = upstream.name;
        let replicas = Arc::new(replicas);
        Self {
            name,
            client,
            replicas,
            placement,
            next: AtomicUsize::new(0),
            poller: OnceLock::new(),
        }
    }

    /// Starts reading the replicas' load (on first use: providers are built outside a runtime).
    fn watch_load(&self) {
        self.poller.get_or_init(|| {
            let (replicas, client) = (Arc::downgrade(&self.replicas), self.client.clone());
            tokio::spawn(poll_load(replicas, client))
        });
    }

    /// The replicas in the order to try them for `request`.
    fn order(&self, request: &CanonicalRequest) -> Vec<usize> {
        let n = self.replicas.len();
        let mut order: Vec<usize> = match self.placement {
            Placement::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|i| (start + i) % n).collect()
            }
            Placement::Affinity => {
                let key = affinity_key(request);
                let mut ranked: Vec<(u64, usize)> =
                    (0..n).map(|i| (rendezvous(key, &self.replicas[i].root), i)).collect();
                ranked.sort_unstable_by(|a, b| b.cmp(a));
                ranked.into_iter().map(|(_, i)| i).collect()
            }
        };
        // Replicas known to be down go last (they are still tried: the poll may be stale).
        order.sort_by_key(|&i| !self.replicas[i].up.load(Ordering::Relaxed));
        if self.placement == Placement::Affinity {
            self.spill(&mut order);
        }
        order
    }

    /// Sends the request to the least-loaded replica instead when the preferred one is far
    /// busier: a long queue costs more than a cold prefix.
    fn spill(&self, order: &mut [usize]) {
        let waiting = |i: usize| self.replicas[i].waiting.load(Ordering::Relaxed);
        let load = |i: usize| waiting(i) * 1_000 + self.replicas[i].running.load(Ordering::Relaxed);
        let up: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| self.replicas[i].up.load(Ordering::Relaxed))
            .collect();
        let (Some(&first), Some(&least)) = (up.first(), up.iter().min_by_key(|&&i| load(i))) else {
            return;
        };
        if waiting(first) >= waiting(least) + SPILL_WAITING {
            if let Some(at) = order.iter().position(|&i| i == least) {
                order[..=at].rotate_right(1);
            }
        }
    }
}

impl Drop for EngineReplicas {
    fn drop(&mut self) {
        if let Some(poller) = self.poller.get() {
            poller.abort();
        }
    }
}

/// The session, or the start of the conversation (or of a raw prompt): what stays the same
/// across its turns. SHA-256, not std's hasher, whose output may change between Rust releases:
/// gateways built apart must place a conversation alike.
fn affinity_key(request: &CanonicalRequest) -> u64 {
    let mut hasher = Sha256::new();
    match &request.session {
        Some(session) => {
            hasher.update(b"session\0");
            hasher.update(session.as_bytes());
        }
        None => {
            hasher.update(request.model.as_bytes());
            hasher.update(b"\0");
            let mut start = request.system.clone().unwrap_or_default();
            if let Some(first) = request.messages.first() {
                start.push_str(&first.joined_text());
            }
            if let Some(prompt) = &request.prompt {
                start.push_str(&serde_json::to_string(prompt).unwrap_or_default());
            }
            let bytes = start.as_bytes();
            hasher.update(&bytes[..bytes.len().min(AFFINITY_PREFIX_BYTES)]);
        }
    }
    first_u64(&hasher.finalize())
}

/// Rendezvous (highest random weight) hashing: each key ranks every replica the same way on
/// every gateway, with no shared table.
fn rendezvous(key: u64, replica: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(key.to_le_bytes());
    hasher.update(replica.as_bytes());
    first_u64(&hasher.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

async fn poll_load(replicas: std::sync::Weak<Vec<Replica>>, client: reqwest::Client) {
    loop {
        let Some(replicas) = replicas.upgrade() else { return };
        // All at once: an engine that does not answer must not make the others' load stale.
        futures::future::join_all(replicas.iter().map(|replica| read_load(replica, &client))).await;
        drop(replicas);
        tokio::time::sleep(POLL).await;
    }
}

/// Reads one engine's `/health`: up when it answers and has a ready model.
async fn read_load(replica: &Replica, client: &reqwest::Client) {
    let health = client.get(format!("{}/health", replica.root)).timeout(POLL).send().await;
    let body = match health {
        Ok(response) if response.status().is_success() => {
            response.json::<serde_json::Value>().await.ok()
        }
        _ => None,
    };
    let models = body.as_ref().and_then(|b| b["models"].as_object());
    let ready = models.is_some_and(|m| m.values().any(|v| v["state"] == "ready"));
    replica.up.store(ready, Ordering::Relaxed);
    let sum = |field: &str| {
        models.map_or(0, |m| m.values().filter_map(|v| v[field].as_u64()).sum::<u64>())
    };
    replica.waiting.store(sum("waiting"), Ordering::Relaxed);
    replica.running.store(sum("running"), Ordering::Relaxed);
}

#[async_trait::async_trait]
impl Provider for EngineReplicas {
    fn name(&self) -> &str {
        &self.name
    }

    fn system(&self) -> &'static str {
        "hearth"
    }

    async fn stream(
        &self,
        request: &CanonicalRequest,
        model: &str,
    ) -> Result<EventStream, ProviderError> {
        self.watch_load();
        let mut last = None;
        for i in self.order(request) {
            let replica = &self.replicas[i];
            match replica.http.stream(request, model).await {
                Ok(events) => return Ok(events),
                // Down or failing: the next replica, within this request.
                Err(error) if error.disposition() == Disposition::Retry => {
                    tracing::warn!(replica = %replica.root, %error, "engine replica failed; trying the next");
                    replica.up.store(false, Ordering::Relaxed);
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last
            .unwrap_or_else(|| ProviderError::Unsupported { message: "no engine replica".into() }))
    }

    fn enforces(&self, constraint: &OutputConstraint) -> bool {
        self.replicas.first().is_some_and(|r| r.http.enforces(constraint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::{Message, MessageRole};

    fn replicas(placement: Placement) -> EngineReplicas {
        let upstream = Upstream { name: "engines".into(), key: None };
        let urls: Vec<String> = (1..=3).map(|i| format!("http://10.0.0.{i}:8080/v1")).collect();
        EngineReplicas::new(upstream, reqwest::Client::new(), &urls, placement)
    }

    fn turn(system: &str, turns: usize) -> CanonicalRequest {
        let messages =
            (0..turns).map(|i| Message::text(MessageRole::User, format!("turn {i}"))).collect();
        CanonicalRequest {
            model: "m".into(),
            system: Some(system.into()),
            messages,
            ..Default::default()
        }
    }

    #[test]
    fn a_conversation_keeps_its_replica_and_conversations_spread() {
        let set = replicas(Placement::Affinity);
        let first = set.order(&turn("agent 1", 1))[0];
        assert!((2..10).all(|n| set.order(&turn("agent 1", n))[0] == first));
        let spread: std::collections::BTreeSet<usize> =
            (0..32).map(|a| set.order(&turn(&format!("agent {a}"), 1))[0]).collect();
        assert_eq!(spread.len(), 3, "32 conversations use every replica");
        let mut by_session = turn("agent 1", 1);
        by_session.session = Some("s-7".into());
        let mut other_start = turn("something else", 4);
        other_start.session = Some("s-7".into());
        assert_eq!(set.order(&by_session)[0], set.order(&other_start)[0]);
    }

    #[test]
    fn a_down_or_far_busier_replica_gives_way() {
        let set = replicas(Placement::Affinity);
        let request = turn("agent 1", 1);
        let preferred = set.order(&request)[0];
        set.replicas[preferred].up.store(false, Ordering::Relaxed);
        assert_ne!(set.order(&request)[0], preferred);
        assert_eq!(*set.order(&request).last().unwrap(), preferred, "still tried, last");
        set.replicas[preferred].up.store(true, Ordering::Relaxed);
        set.replicas[preferred].waiting.store(SPILL_WAITING, Ordering::Relaxed);
        assert_ne!(set.order(&request)[0], preferred, "spills to the least loaded");
        set.replicas[preferred].waiting.store(SPILL_WAITING - 1, Ordering::Relaxed);
        assert_eq!(set.order(&request)[0], preferred, "a short queue keeps the session");
    }

    #[test]
    fn round_robin_takes_turns() {
        let set = replicas(Placement::RoundRobin);
        let firsts: Vec<usize> = (0..6).map(|_| set.order(&turn("a", 1))[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
    }
}
