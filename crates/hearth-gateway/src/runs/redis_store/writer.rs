//! The replica's one writer to Redis. Every change to this replica's runs (a run's creation,
//! its route, its events, its end) is queued, and the writer sends whatever has
//! queued as one script call: a replica makes one Redis round trip per batch, not one per event,
//! and Redis runs one script for many runs' changes.
//!
//! An event reaches this replica's own readers (the caller who started the run) only once Redis
//! has acknowledged the batch holding it, so whatever a caller has seen is already in Redis for
//! a resume on another replica. A producer does not wait for that: it queues its event and goes
//! on, and the events it produced meanwhile ride the next batch together.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use hearth_protocol::CanonicalEvent;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use super::{now_ms, remote, scripts, Shared, SAFETY_EXPIRY};
use crate::ledger::LedgerRecord;
use crate::runs::{RunError, RunInfo, RunStatus, RunStore};

/// Changes queued for the writer; past this, producers wait for it (memory stays bounded).
pub(super) const QUEUE: usize = 16_384;
/// Most changes in one batch, so that one script call stays short for Redis.
const MAX_OPS: usize = 2_048;
/// How long the keys of a run opened with `forget_at_end` outlive its end: long enough for a
/// reader on another replica, blocked on the run's Stream, to read the end.
const FORGOTTEN_RUN_GRACE: Duration = Duration::from_secs(5);
/// How long a batch may wait for Redis before its runs go on in memory alone.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long Redis is left alone after a batch failed.
const PAUSE_AFTER_ERROR: Duration = Duration::from_secs(1);
/// Batches sent and not yet answered, at most.
const MAX_IN_FLIGHT: usize = 4;

/// One change to a run.
pub(super) enum Op {
    Create(Creation),
    /// Sets the run's route if the run exists in Redis.
    Route(String),
    Event {
        seq: u64,
        json: String,
        event: CanonicalEvent,
    },
    Finish {
        status: RunStatus,
        /// Its keys go after [`FORGOTTEN_RUN_GRACE`] rather than the store's ttl.
        forget: bool,
        done: oneshot::Sender<Result<RunInfo, RunError>>,
    },
}

/// What a run's creation writes.
#[derive(Debug, Default)]
pub(super) struct Creation {
    pub model: String,
    /// The ledger record to write should the producer disappear. Sent (as JSON) only with a
    /// creation whose batch does not also end the run: a run that ends there never needs it.
    pub record: Option<Box<LedgerRecord>>,
    /// The edge's stream format; empty when it gave none.
    pub format: String,
    /// The run's keys go soon after its end (`NewRun::forget_at_end`), whoever ends it.
    pub forget: bool,
}

/// One entry of the writer's queue: a change to a run, after the run's creation when that had
/// not been queued yet.
pub(super) struct Queued {
    pub run_id: Arc<str>,
    pub creation: Option<Op>,
    pub op: Option<Op>,
}

/// One run's changes in a batch, in the order they were queued.
#[derive(Default)]
struct RunChanges {
    run_id: Arc<str>,
    ops: Vec<Op>,
    /// Redis holds no reliable copy of the run: only its end is written (as failed).
    detached: bool,
    /// Whether the batch carried changes of the run to Redis.
    sent: bool,
    /// What the batch script said about the run.
    reply: Option<Reply>,
    /// When the batch ended the run in Redis: its readers on other replicas.
    ended: Option<RemoteReaders>,
}

/// What the batch script says about one run (its states are listed at `scripts::WRITE`).
struct Reply {
    state: i64,
    cancel: bool,
    /// When the batch ended the run: its readers on other replicas.
    ended: Option<RemoteReaders>,
}

/// A run's readers on other replicas, as Redis counts them.
#[derive(Debug, Clone, Copy)]
pub(super) struct RemoteReaders {
    subscribers: u64,
    delivered: bool,
}

/// Takes queued changes, a batch at a time, until the store is dropped. Up to
/// `MAX_IN_FLIGHT` batches are sent without waiting for the one before (Redis runs them in
/// order on the one connection); their outcomes are applied strictly in the order they were
/// sent, so a run's events reach its readers in order.
pub(super) async fn write_batches(shared: Arc<Shared>, mut queue: mpsc::Receiver<Queued>) {
    let mut in_flight: FuturesOrdered<Sending> = FuturesOrdered::new();
    // After a failed batch, Redis is left alone for a while: runs meanwhile go on in memory
    // rather than each waiting out a reconnect.
    let mut paused_until: Option<Instant> = None;
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some((runs, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                if outcome.is_err() {
                    paused_until = Some(Instant::now() + PAUSE_AFTER_ERROR);
                }
                apply(&shared, runs, outcome).await;
            }
            first = queue.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => match first {
                None => open = false,
                Some(first) => {
                    let batch = gather(first, &mut queue).await;
                    let paused = paused_until.is_some_and(|until| Instant::now() < until);
                    in_flight.push_back(Box::pin(send(shared.clone(), group(batch), paused)));
                }
            },
        }
    }
}

/// A batch on its way to Redis.
type Sending = futures::future::BoxFuture<'static, (Vec<RunChanges>, Result<(), String>)>;

async fn gather(first: Queued, queue: &mut mpsc::Receiver<Queued>) -> Vec<Queued> {
    let mut batch = vec![first];
    // Lets the producers woken with this one queue what they have at hand, so a burst of
    // events goes in one batch rather than the first alone.
    tokio::task::yield_now().await;
    while batch.len() < MAX_OPS {
        match queue.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    batch
}

fn group(batch: Vec<Queued>) -> Vec<RunChanges> {
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    let mut runs: Vec<RunChanges> = Vec::new();
    for Queued { run_id, creation, op } in batch {
        let at = *index.entry(run_id.clone()).or_insert_with(|| {
            runs.push(RunChanges { run_id, ops: Vec::new(), ..RunChanges::default() });
            runs.len() - 1
        });
        runs[at].ops.extend(creation.into_iter().chain(op));
    }
    runs
}

/// Sends one batch's changes to Redis (none while `paused`): the error, if the batch failed.
async fn send(
    shared: Arc<Shared>,
    mut runs: Vec<RunChanges>,
    paused: bool,
) -> (Vec<RunChanges>, Result<(), String>) {
    for run in &mut runs {
        if paused {
            shared.detach(&run.run_id, &"Redis failed a moment ago");
        }
        run.detached = shared.is_detached(&run.run_id);
        run.sent = !paused && run.ops.iter().any(|op| goes_to_redis(run, op));
    }
    let sent: Vec<&RunChanges> = runs.iter().filter(|run| run.sent).collect();
    if sent.is_empty() {
        return (runs, Ok(()));
    }
    let replies = match timeout(CALL_TIMEOUT, call_script(&shared, &sent)).await {
        Ok(Ok(replies)) if replies.len() == sent.len() => replies,
        Ok(Ok(_)) => {
            return (runs, Err("Redis answered a batch with the wrong number of replies".into()))
        }
        Ok(Err(error)) => return (runs, Err(error.to_string())),
        Err(_) => {
            return (runs, Err(format!("Redis did not answer a batch within {CALL_TIMEOUT:?}")))
        }
    };
    let mut replies = replies.into_iter();
    for run in runs.iter_mut().filter(|run| run.sent) {
        run.reply = replies.next();
    }
    (runs, Ok(()))
}

/// Applies a sent batch's outcome, then hands its events and ends to this replica's readers.
async fn apply(shared: &Shared, runs: Vec<RunChanges>, outcome: Result<(), String>) {
    for mut run in runs {
        match (run.reply.take(), &outcome) {
            (Some(reply), _) => apply_reply(shared, &mut run, reply).await,
            (None, Err(why)) if run.sent => shared.detach(&run.run_id, why),
            (None, _) => {}
        }
        apply_run_locally(shared, run).await;
    }
}

/// Whether `op` of `run` goes to Redis: all changes do, but only the end of a detached run.
fn goes_to_redis(run: &RunChanges, op: &Op) -> bool {
    !run.detached || matches!(op, Op::Finish { .. })
}

async fn call_script(shared: &Shared, runs: &[&RunChanges]) -> redis::RedisResult<Vec<Reply>> {
    let grace = FORGOTTEN_RUN_GRACE.as_millis().to_string();
    let mut call = scripts::WRITE.prepare_invoke();
    call.key(shared.keys.running())
        .arg(&shared.replica)
        .arg(now_ms())
        .arg(shared.ttl.as_millis() as u64)
        .arg(SAFETY_EXPIRY.as_millis() as u64);
    for run in runs {
        call.key(shared.keys.run(&run.run_id)).key(shared.keys.events(&run.run_id));
        let share = Share::of(run);
        let first = share.first_argument();
        let creation = share.create.unwrap_or(&NO_CREATION);
        let record = match &creation.record {
            Some(record) if share.status.is_empty() => {
                serde_json::to_string(record).unwrap_or_default()
            }
            _ => String::new(),
        };
        call.arg(&*run.run_id)
            .arg(if share.create.is_some() { "1" } else { "" })
            .arg(&creation.model)
            .arg(record)
            .arg(share.route)
            .arg(&creation.format)
            .arg(first)
            .arg(share.count)
            .arg(share.events)
            .arg(share.status)
            .arg(if share.forget { grace.as_str() } else { "" });
    }
    let replies: Vec<(i64, i64, Vec<i64>)> = call.invoke_async(&mut shared.conn()).await?;
    Ok(replies
        .into_iter()
        .map(|(state, cancel, ended)| Reply {
            state,
            cancel: cancel != 0,
            ended: match ended[..] {
                [subscribers, delivered] => Some(RemoteReaders {
                    subscribers: subscribers.max(0) as u64,
                    delivered: delivered != 0,
                }),
                _ => None,
            },
        })
        .collect())
}

static NO_CREATION: Creation =
    Creation { model: String::new(), record: None, format: String::new(), forget: false };

/// A run's changes in one batch, gathered as the `WRITE` script takes them (one argument each).
#[derive(Default)]
struct Share<'a> {
    /// What the run's creation writes, when the batch creates it.
    create: Option<&'a Creation>,
    route: &'a str,
    /// The first event's sequence number; `broken` when the others do not follow it.
    first: Option<u64>,
    broken: bool,
    count: usize,
    /// The events as one JSON array.
    events: String,
    /// The status the run ends with; empty while it runs on.
    status: &'static str,
    /// Its keys go soon after its end: sent with its creation (which stores it for whichever
    /// replica ends it) and with its end.
    forget: bool,
}

impl<'a> Share<'a> {
    fn of(run: &'a RunChanges) -> Self {
        let mut share = Share::default();
        for op in run.ops.iter().filter(|op| goes_to_redis(run, op)) {
            match op {
                Op::Create(creation) => {
                    share.create = Some(creation);
                    share.forget |= creation.forget;
                }
                Op::Route(route) => share.route = route,
                Op::Event { seq, json, .. } => {
                    let first = *share.first.get_or_insert(*seq);
                    share.broken |= *seq != first + share.count as u64;
                    share.events.push(if share.count == 0 { '[' } else { ',' });
                    share.events.push_str(json);
                    share.count += 1;
                }
                // A detached run's copy in Redis may lack events: it ends as failed.
                Op::Finish { status, forget, .. } => {
                    let status = if run.detached { RunStatus::Failed } else { *status };
                    share.status = remote::status_name(status);
                    share.forget |= *forget;
                }
            }
        }
        if share.count > 0 {
            share.events.push(']');
        }
        share
    }

    /// The first event's sequence number as the script takes it: empty with no events, `-1`
    /// when the events do not follow each other (the script then writes none of them).
    fn first_argument(&self) -> String {
        match self.first {
            None => String::new(),
            Some(_) if self.broken => "-1".to_owned(),
            Some(first) => first.to_string(),
        }
    }
}

async fn apply_reply(shared: &Shared, run: &mut RunChanges, reply: Reply) {
    let run_id = &*run.run_id;
    match reply.state {
        0 if reply.cancel => {
            let _ = shared.local.cancel(run_id).await;
        }
        0 => {}
        -3 => shared.detach(run_id, &"another run already has this id in Redis"),
        -4 => shared.detach(run_id, &"Redis failed a command of the run's batch"),
        -5 => shared.detach(run_id, &"Redis missed some of the run's events"),
        // Redis lost the run, or another replica ended it (this replica's lease lapsed): the
        // callers here still get every event, and the producer is told to stop. Not when an
        // earlier batch already detached the run (its creation may never have reached Redis):
        // that run goes on in memory.
        _ if !shared.is_detached(run_id) => {
            shared.detach(run_id, &"Redis no longer holds the run as running");
            let _ = shared.local.cancel(run_id).await;
        }
        _ => {}
    }
    run.ended = reply.ended;
}

/// Hands a run's changes of one batch to this replica's readers, in order.
async fn apply_run_locally(shared: &Shared, run: RunChanges) {
    let finished = run.ops.iter().any(|op| matches!(op, Op::Finish { .. }));
    for op in run.ops {
        apply_locally(shared, &run.run_id, op, run.ended).await;
    }
    if finished {
        shared.untrack(&run.run_id);
    }
}

/// Hands one change to this replica's own readers; `ended` holds the run's readers on other
/// replicas once Redis ended it, which count with the local ones.
pub(super) async fn apply_locally(
    shared: &Shared,
    run_id: &str,
    op: Op,
    ended: Option<RemoteReaders>,
) {
    match op {
        // Created locally when queued; now any replica can find it (or Redis failed it and
        // no replica will: there is no point waiting longer).
        Op::Create(_) => shared.mark_published(run_id),
        // Routed locally when queued.
        Op::Route(_) => {}
        Op::Event { event, .. } => {
            if let Err(error) = shared.local.append(run_id, event).await {
                tracing::warn!(run_id, %error, "could not buffer an event");
            }
        }
        Op::Finish { status, done, .. } => {
            let mut info = shared.local.finish(run_id, status).await;
            if let (Ok(info), Some(remote)) = (info.as_mut(), ended) {
                info.num_subscribers += remote.subscribers as usize;
                info.delivered |= remote.delivered;
            }
            let _ = done.send(info);
        }
    }
}
