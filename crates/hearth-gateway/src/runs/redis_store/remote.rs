//! Reading a run that another replica produces: its status from the run's hash, and its events
//! from the run's Stream, backlog then live tail, on a connection of the subscription's own
//! (a blocking `XREAD` holds its connection).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use hearth_protocol::{CanonicalEvent, ErrorKind};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::AsyncConnectionConfig;

use super::{unavailable, Shared};
use crate::runs::{RunError, RunEvent, RunInfo, RunStatus, Subscription};

/// How long one `XREAD` waits for new events before the reader looks at the run's status.
const POLL: Duration = Duration::from_millis(1_000);
/// Events read per round trip.
const BATCH: usize = 256;
/// Consecutive Redis errors after which a reader gives up with an error event.
const MAX_ERRORS: u32 = 5;

pub(super) fn status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Running => "running",
        RunStatus::Finished => "finished",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

fn parse_status(name: &str) -> RunStatus {
    match name {
        "running" => RunStatus::Running,
        "finished" => RunStatus::Finished,
        "cancelled" => RunStatus::Cancelled,
        _ => RunStatus::Failed,
    }
}

fn number(hash: &HashMap<String, String>, field: &str) -> i64 {
    hash.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn time(hash: &HashMap<String, String>, field: &str) -> Option<DateTime<Utc>> {
    let ms = hash.get(field)?.parse().ok()?;
    Utc.timestamp_millis_opt(ms).single()
}

pub(super) fn info_from_hash(run_id: &str, hash: &HashMap<String, String>) -> RunInfo {
    RunInfo {
        run_id: run_id.to_owned(),
        model: hash.get("model").cloned().unwrap_or_default(),
        route: hash.get("route").cloned(),
        status: parse_status(hash.get("status").map_or("failed", String::as_str)),
        num_events: number(hash, "len").max(0) as u64,
        num_subscribers: number(hash, "subs").max(0) as usize,
        delivered: number(hash, "delivered") != 0,
        created_at: time(hash, "created_ms").unwrap_or_default(),
        finished_at: time(hash, "finished_ms"),
        format: hash.get("format").cloned(),
    }
}

pub(super) async fn hash(s: &Shared, run_id: &str) -> Result<HashMap<String, String>, RunError> {
    redis::cmd("HGETALL")
        .arg(s.keys.run(run_id))
        .query_async(&mut s.conn())
        .await
        .map_err(unavailable)
}

pub(super) async fn info(s: &Shared, run_id: &str) -> Result<RunInfo, RunError> {
    let hash = hash(s, run_id).await?;
    if hash.is_empty() {
        return Err(RunError::NotFound(run_id.into()));
    }
    Ok(info_from_hash(run_id, &hash))
}

pub(super) async fn subscribe(
    s: Arc<Shared>,
    run_id: &str,
    from: u64,
) -> Result<Subscription, RunError> {
    let info = info(&s, run_id).await?;
    if info.status != RunStatus::Running && from > info.num_events {
        return Err(RunError::BadCursor {
            run_id: run_id.into(),
            from,
            num_events: info.num_events,
        });
    }
    let permit = s.remote_readers.clone().try_acquire_owned().map_err(|_| {
        RunError::Unavailable("too many readers of other replicas' runs; retry shortly".into())
    })?;
    // The blocking read must outlast POLL; other commands keep the shared connection.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(POLL + Duration::from_secs(5)));
    let conn = s
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(unavailable)?;
    let mut reader = Reader::new(s, conn, run_id.to_owned(), from).await;
    reader.permit = Some(permit);
    Ok(futures::stream::unfold(reader, Reader::next).boxed())
}

/// The events of one Stream entry: a JSON array of events (one event alone, as an object, in
/// entries written before entries held several). One that cannot be read becomes an error
/// event, so that a reader never mistakes what it got for the whole answer.
fn entry_events(json: &str) -> Vec<CanonicalEvent> {
    let unreadable =
        || CanonicalEvent::error(ErrorKind::Internal, "an event in the run store is unreadable");
    let values = match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Array(values)) => values,
        Ok(value) => vec![value],
        Err(_) => return vec![unreadable()],
    };
    values
        .into_iter()
        .map(|value| serde_json::from_value(value).unwrap_or_else(|_| unreadable()))
        .collect()
}

/// One subscription to a remote run. Counted in the run's `subs` while it lives.
struct Reader {
    shared: Arc<Shared>,
    conn: MultiplexedConnection,
    run_id: String,
    next: u64,
    pending: VecDeque<RunEvent>,
    errors: u32,
    done: bool,
    /// Read a terminal event (else the reader adds an error event before it stops).
    terminal: bool,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Reader {
    async fn new(
        shared: Arc<Shared>,
        conn: MultiplexedConnection,
        run_id: String,
        next: u64,
    ) -> Self {
        shared.update_field(&run_id, "subs", "incr", 1).await;
        let pending = VecDeque::new();
        let (errors, done, terminal, permit) = (0, false, false, None);
        Self { shared, conn, run_id, next, pending, errors, done, terminal, permit }
    }

    async fn next(mut self) -> Option<(RunEvent, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if event.event.is_terminal() {
                    self.done = true;
                    self.terminal = true;
                    self.shared.update_field(&self.run_id, "delivered", "set", 1).await;
                }
                return Some((event, self));
            }
            if self.done {
                return None;
            }
            match self.read().await {
                Ok(true) => self.errors = 0,
                Ok(false) => match self.ended().await {
                    Ok(true) => self.end_without_terminal(),
                    Ok(false) => self.errors = 0,
                    Err(error) => self.failed(error).await,
                },
                Err(error) => self.failed(error).await,
            }
        }
    }

    /// Reads the next events into `pending`; false when none came within [`POLL`].
    async fn read(&mut self) -> Result<bool, RunError> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(POLL.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.shared.keys.events(&self.run_id))
            .arg(format!("0-{}", self.next))
            .query_async(&mut self.conn)
            .await
            .map_err(unavailable)?;
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        for entry in entries {
            let json: String = entry.get("e").unwrap_or_default();
            let events = entry_events(&json);
            // The entry's id says how many events the run had after it.
            let end = entry.id.strip_prefix("0-").and_then(|n| n.parse::<u64>().ok());
            let first = end.map_or(self.next, |end| end.saturating_sub(events.len() as u64));
            for (seq, event) in (first..).zip(events) {
                // The first entry read may hold events from before the cursor.
                if seq >= self.next {
                    self.pending.push_back(RunEvent { seq, event });
                    self.next = seq + 1;
                }
            }
        }
        Ok(!self.pending.is_empty())
    }

    /// A run that ended in Redis without a terminal event (its producer lost Redis mid-run) or
    /// expired under the reader: one error event says so, so no caller mistakes what it got
    /// for a whole answer.
    fn end_without_terminal(&mut self) {
        self.done = true;
        if !self.terminal {
            let message = "the run ended without its last events reaching the shared store";
            let event = CanonicalEvent::error(ErrorKind::Internal, message);
            self.pending.push_back(RunEvent { seq: self.next, event });
            self.terminal = true;
        }
    }

    /// Whether the run has ended with every event read (or has expired).
    async fn ended(&self) -> Result<bool, RunError> {
        match info(&self.shared, &self.run_id).await {
            Ok(info) => Ok(info.status != RunStatus::Running && self.next >= info.num_events),
            Err(RunError::NotFound(_)) => Ok(true),
            Err(error) => Err(error),
        }
    }

    /// Counts a Redis error; past [`MAX_ERRORS`] in a row the reader ends with an error event,
    /// never a hang.
    async fn failed(&mut self, error: RunError) {
        self.errors += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        tracing::warn!(run_id = %self.run_id, %error, "reading a run from Redis failed");
        if self.errors >= MAX_ERRORS {
            let message = format!("lost the shared run store while reading the run: {error}");
            let event = CanonicalEvent::error(ErrorKind::Internal, message);
            self.pending.push_back(RunEvent { seq: self.next, event });
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let (shared, run_id) = (self.shared.clone(), std::mem::take(&mut self.run_id));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { shared.update_field(&run_id, "subs", "incr", -1).await });
        }
    }
}
