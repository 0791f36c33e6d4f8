//! One supervised Python worker per package: it runs `setup()` once, then predictions, as many
//! at a time as the package has slots.
//!
//! The supervisor task owns the process. It reads the worker's messages and routes each to the
//! prediction it names; when the process exits it fails the predictions in flight, and restarts
//! it (with a growing pause) unless it never got through setup: a `setup()` that fails would
//! fail again, so the worker stays `SetupFailed` and says why.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::protocol::{self, Message, Schema};

/// The worker program, written to a file beside the environment when a worker starts.
const WORKER_PY: &str = include_str!("worker.py");
/// Setup logs kept for `/health-check`; older text is dropped first.
const MAX_SETUP_LOGS: usize = 64 * 1024;
const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(500);
const LONGEST_RESTART_PAUSE: Duration = Duration::from_secs(30);
/// How long a worker asked to shut down gets before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The model's name, for logs.
    pub name: String,
    /// The environment's interpreter.
    pub python: PathBuf,
    /// Where the predictor's files are; the worker's working directory.
    pub package_dir: PathBuf,
    /// `predict.py:Predictor`.
    pub predictor_ref: String,
    /// Predictions at once (cog.yaml `concurrency.max`; more than one needs an async predictor).
    pub slots: usize,
    /// How long `setup()` may take; `None` waits for ever.
    pub setup_timeout: Option<Duration>,
    /// cog.yaml `environment`, as `NAME=value`.
    pub environment: Vec<String>,
}

/// Where the worker is in its life, as `/health-check` reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerStatus {
    Starting,
    Ready,
    SetupFailed {
        error: String,
    },
    /// It exited after setup and is being started again.
    Restarting {
        reason: String,
    },
    Stopped,
}

/// Setup as `/health-check` shows it.
#[derive(Debug, Clone, Default)]
pub struct SetupReport {
    pub started_at: Option<SystemTime>,
    pub completed_at: Option<SystemTime>,
    pub logs: String,
}

/// What a running prediction reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Log {
        source: String,
        data: String,
    },
    /// One item of an iterator output.
    Output(Value),
    /// Finished; `output` is `null` for an iterator output.
    Done {
        output: Value,
        predict_time: f64,
    },
    Failed {
        error: String,
    },
    Cancelled,
}

impl Event {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Done { .. } | Event::Failed { .. } | Event::Cancelled)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("the model is not ready: {0}")]
    NotReady(String),
    #[error("At capacity - all prediction slots busy")]
    Busy,
    /// Cog's SDK refused the input; the message starts with the field's name.
    #[error("{0}")]
    Invalid(String),
    #[error("the Python worker stopped before taking the prediction: {0}")]
    WorkerLost(String),
}

/// A handle to a package's worker; clones share it. The process stops when the last handle
/// is dropped (or at [`Worker::shutdown`]).
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Held by the handles only (the supervisor holds [`Shared`] alone), so that its drop means
/// no one can use the worker any more.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
    }
}

struct Shared {
    config: WorkerConfig,
    /// Where the package is now; a pushed package moves from staging to its place after load.
    package_dir: Mutex<PathBuf>,
    status: watch::Sender<WorkerStatus>,
    schema: Mutex<Option<Arc<Schema>>>,
    setup: Mutex<SetupReport>,
    slots: Arc<Semaphore>,
    /// Commands for the current process; `None` while none runs.
    commands: Mutex<Option<mpsc::UnboundedSender<protocol::Command>>>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Fires to kill the current process (a prediction that overran its timeout).
    kill: Mutex<Option<oneshot::Sender<()>>>,
    stop: watch::Sender<bool>,
    script: tempfile::TempPath,
}

struct InFlight {
    events: mpsc::UnboundedSender<Event>,
    accepted: Option<oneshot::Sender<Result<(), PredictError>>>,
    /// The slot, freed when the worker says the prediction ended.
    _slot: OwnedSemaphorePermit,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a short update that cannot leave the data half-changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Worker {
    /// Starts the worker process and its supervisor; setup runs in the background.
    pub fn start(config: WorkerConfig) -> std::io::Result<Worker> {
        let script = tempfile::Builder::new().prefix("hearth-worker-").suffix(".py").tempfile()?;
        std::fs::write(script.path(), WORKER_PY)?;
        let shared = Arc::new(Shared {
            package_dir: Mutex::new(config.package_dir.clone()),
            slots: Arc::new(Semaphore::new(config.slots.max(1))),
            config,
            status: watch::Sender::new(WorkerStatus::Starting),
            schema: Mutex::new(None),
            setup: Mutex::new(SetupReport::default()),
            commands: Mutex::new(None),
            in_flight: Mutex::new(HashMap::new()),
            kill: Mutex::new(None),
            stop: watch::Sender::new(false),
            script: script.into_temp_path(),
        });
        tokio::spawn(supervise(shared.clone()));
        Ok(Worker { _owner: Arc::new(Owner(shared.clone())), shared })
    }

    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    pub fn status(&self) -> WorkerStatus {
        self.shared.status.borrow().clone()
    }

    /// Waits until setup has ended one way or the other, and says how.
    pub async fn wait_ready(&self) -> WorkerStatus {
        let mut status = self.shared.status.subscribe();
        let ended = status
            .wait_for(|s| !matches!(s, WorkerStatus::Starting | WorkerStatus::Restarting { .. }))
            .await;
        match ended {
            Ok(status) => status.clone(),
            Err(_) => WorkerStatus::Stopped,
        }
    }

    pub fn setup_report(&self) -> SetupReport {
        lock(&self.shared.setup).clone()
    }

    /// The schema Cog's SDK read off the predictor; `None` until setup succeeded.
    pub fn schema(&self) -> Option<Arc<Schema>> {
        lock(&self.shared.schema).clone()
    }

    pub fn slots(&self) -> usize {
        self.shared.config.slots.max(1)
    }

    /// Slots taken now.
    pub fn busy_slots(&self) -> usize {
        self.slots() - self.shared.slots.available_permits()
    }

    /// Starts a prediction on a free slot. Answers once the worker accepted the input (or
    /// refused it), so a bad input is an error here rather than a failed prediction.
    pub async fn predict(&self, id: &str, input: Value) -> Result<Prediction, PredictError> {
        let status = self.status();
        if status != WorkerStatus::Ready {
            return Err(PredictError::NotReady(status.describe()));
        }
        let slot = self.shared.slots.clone().try_acquire_owned().map_err(|_| PredictError::Busy)?;
        let (events, receiver) = mpsc::unbounded_channel();
        let (accepted, answer) = oneshot::channel();
        lock(&self.shared.in_flight)
            .insert(id.to_owned(), InFlight { events, accepted: Some(accepted), _slot: slot });
        let command = protocol::Command::Predict { id: id.to_owned(), input };
        if !self.send(command) {
            lock(&self.shared.in_flight).remove(id);
            return Err(PredictError::WorkerLost("the worker is restarting".into()));
        }
        match answer.await {
            Ok(Ok(())) => Ok(Prediction {
                id: id.to_owned(),
                events: receiver,
                worker: self.clone(),
                finished: false,
            }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(PredictError::WorkerLost("the worker exited".into())),
        }
    }

    /// Asks the worker to cancel a prediction; it ends with [`Event::Cancelled`].
    pub fn cancel(&self, id: &str) {
        if lock(&self.shared.in_flight).contains_key(id) {
            self.send(protocol::Command::Cancel { id: id.to_owned() });
        }
    }

    /// Kills the process (a prediction that will not stop); it is restarted, and the
    /// predictions in flight fail with `reason`.
    pub fn kill(&self, reason: &str) {
        tracing::warn!(model = %self.name(), reason, "killing the Python worker");
        if let Some(kill) = lock(&self.shared.kill).take() {
            let _ = kill.send(());
        }
    }

    /// The package moved to `dir` (a push installs it after loading it from staging). The
    /// running process keeps its working directory, which moved with it; restarts use `dir`.
    pub fn relocate(&self, dir: PathBuf) {
        *lock(&self.shared.package_dir) = dir;
    }

    /// Stops the worker for good (the daemon shuts down or the package is replaced).
    pub fn shutdown(&self) {
        self.shared.stop.send_replace(true);
    }

    fn send(&self, command: protocol::Command) -> bool {
        lock(&self.shared.commands).as_ref().is_some_and(|tx| tx.send(command).is_ok())
    }
}

impl WorkerStatus {
    /// Why a prediction cannot run now, in words for a caller (Cog's, where Cog has some).
    pub fn describe(&self) -> String {
        match self {
            WorkerStatus::Starting => "Setup has not finished yet. Wait until it has finished, \
                                       or GET /health-check for status."
                .into(),
            WorkerStatus::Ready => "ready".into(),
            WorkerStatus::SetupFailed { error } => format!("Setup failed: {error}"),
            WorkerStatus::Restarting { reason } => format!("The model is restarting: {reason}"),
            WorkerStatus::Stopped => "The model has been stopped.".into(),
        }
    }
}

/// A running prediction's events. Dropping it before the end cancels the prediction, as Cog
/// does when a client leaves.
pub struct Prediction {
    id: String,
    events: mpsc::UnboundedReceiver<Event>,
    worker: Worker,
    finished: bool,
}

impl Prediction {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await.unwrap_or_else(|| Event::Failed {
            error: "the Python worker lost this prediction".into(),
        });
        self.finished = event.is_terminal();
        Some(event)
    }

    pub fn cancel(&self) {
        self.worker.cancel(&self.id);
    }

    pub fn worker(&self) -> &Worker {
        &self.worker
    }
}

impl Drop for Prediction {
    fn drop(&mut self) {
        if !self.finished {
            self.worker.cancel(&self.id);
        }
    }
}

async fn supervise(shared: Arc<Shared>) {
    let mut pause = FIRST_RESTART_PAUSE;
    let mut stop = shared.stop.subscribe();
    loop {
        let outcome = run_once(&shared).await;
        *lock(&shared.commands) = None;
        // The status changes before the predictions in flight hear of the exit, so none of
        // their callers can find the worker still `Ready`.
        let is_stopped = *stop.borrow();
        let next = if is_stopped {
            WorkerStatus::Stopped
        } else if !outcome.was_ready {
            let status = shared.status.borrow().clone();
            let error = match status {
                WorkerStatus::SetupFailed { error } => error,
                _ => outcome.reason.clone(),
            };
            tracing::error!(model = %shared.config.name, %error, "Python predictor setup failed");
            WorkerStatus::SetupFailed { error }
        } else {
            tracing::warn!(model = %shared.config.name, reason = %outcome.reason, pause_ms = pause.as_millis() as u64, "Python worker exited; restarting");
            WorkerStatus::Restarting { reason: outcome.reason.clone() }
        };
        let restarting = matches!(next, WorkerStatus::Restarting { .. });
        shared.status.send_replace(next);
        fail_in_flight(&shared, &outcome.reason);
        if !restarting {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stopped(&mut stop) => {
                shared.status.send_replace(WorkerStatus::Stopped);
                return;
            }
        }
        pause = (pause * 2).min(LONGEST_RESTART_PAUSE);
    }
}

/// Resolves once the worker is asked to stop for good.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not in a caller's select.
    let _ = stop.wait_for(|stopped| *stopped).await.map(|_| ());
}

struct Outcome {
    was_ready: bool,
    reason: String,
}

fn spawn(shared: &Shared) -> std::io::Result<Child> {
    let config = &shared.config;
    let mut command = Command::new(&config.python);
    command
        .arg(&shared.script)
        .arg(&config.predictor_ref)
        .arg(config.slots.max(1).to_string())
        .current_dir(&*lock(&shared.package_dir))
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for pair in &config.environment {
        if let Some((name, value)) = pair.split_once('=') {
            command.env(name, value);
        }
    }
    command.spawn()
}

/// Runs one process from spawn to exit.
async fn run_once(shared: &Arc<Shared>) -> Outcome {
    {
        let mut setup = lock(&shared.setup);
        *setup = SetupReport { started_at: Some(SystemTime::now()), ..SetupReport::default() };
    }
    let mut child = match spawn(shared) {
        Ok(child) => child,
        Err(e) => {
            let reason = format!("could not start {}: {e}", shared.config.python.display());
            return Outcome { was_ready: false, reason };
        }
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Outcome { was_ready: false, reason: "the worker's pipes are missing".into() };
    };
    let (commands, receiver) = mpsc::unbounded_channel();
    *lock(&shared.commands) = Some(commands);
    tokio::spawn(write_commands(stdin, receiver));
    tokio::spawn(forward_stderr(shared.clone(), stderr));
    let (kill, killed) = oneshot::channel();
    *lock(&shared.kill) = Some(kill);

    let mut was_ready = false;
    let mut lines = BufReader::new(stdout).lines();
    let setup_deadline = shared.config.setup_timeout.map(|t| tokio::time::Instant::now() + t);
    let mut stop = shared.stop.subscribe();
    let mut killed = std::pin::pin!(killed);
    let reason = loop {
        let deadline = async {
            match setup_deadline.filter(|_| !was_ready) {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if handle_line(shared, &line) {
                        was_ready = true;
                    }
                }
                Ok(None) | Err(_) => break exit_reason(&mut child).await,
            },
            () = deadline => {
                let seconds = shared.config.setup_timeout.unwrap_or_default().as_secs();
                let error = format!("setup() did not finish within {seconds} s");
                shared.status.send_replace(WorkerStatus::SetupFailed { error: error.clone() });
                let _ = child.kill().await;
                break error;
            }
            _ = &mut killed => {
                let _ = child.kill().await;
                break "the worker was killed: a prediction did not stop when cancelled".into();
            }
            () = stopped(&mut stop) => {
                if let Some(tx) = lock(&shared.commands).as_ref() {
                    let _ = tx.send(protocol::Command::Shutdown);
                }
                if tokio::time::timeout(SHUTDOWN_GRACE, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                break "the daemon stopped the worker".into();
            }
        }
    };
    Outcome { was_ready, reason }
}

async fn exit_reason(child: &mut Child) -> String {
    match child.wait().await {
        Ok(status) => format!("the Python worker exited ({status})"),
        Err(e) => format!("the Python worker was lost: {e}"),
    }
}

async fn write_commands(
    mut stdin: ChildStdin,
    mut commands: mpsc::UnboundedReceiver<protocol::Command>,
) {
    while let Some(command) = commands.recv().await {
        let Ok(mut line) = serde_json::to_vec(&command) else { continue };
        line.push(b'\n');
        if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
            return; // the process is gone; the supervisor notices on the other pipe
        }
    }
}

/// Output that bypassed Python's `sys.stdout`/`sys.stderr` (C extensions, subprocesses).
async fn forward_stderr(shared: Arc<Shared>, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(model = %shared.config.name, "worker: {line}");
        if *shared.status.borrow() == WorkerStatus::Starting {
            append_setup_log(&shared, &format!("{line}\n"));
        }
    }
}

fn append_setup_log(shared: &Shared, text: &str) {
    let mut setup = lock(&shared.setup);
    setup.logs.push_str(text);
    if setup.logs.len() > MAX_SETUP_LOGS {
        let mut cut = setup.logs.len() - MAX_SETUP_LOGS;
        while !setup.logs.is_char_boundary(cut) {
            cut += 1;
        }
        setup.logs.drain(..cut);
    }
}

/// Routes one message; true when it was `ready`.
fn handle_line(shared: &Shared, line: &str) -> bool {
    let message: Message = match serde_json::from_str(line) {
        Ok(message) => message,
        Err(e) => {
            tracing::warn!(model = %shared.config.name, error = %e, "unreadable worker message");
            return false;
        }
    };
    match message {
        Message::Ready { protocol, schema, is_async, setup_time } => {
            if protocol != protocol::PROTOCOL_VERSION {
                tracing::warn!(model = %shared.config.name, protocol, "worker speaks another protocol version");
            }
            tracing::info!(model = %shared.config.name, is_async, setup_ms = (setup_time * 1000.0) as u64, "Python predictor ready");
            *lock(&shared.schema) = Some(Arc::new(schema));
            lock(&shared.setup).completed_at = Some(SystemTime::now());
            shared.status.send_replace(WorkerStatus::Ready);
            return true;
        }
        Message::SetupFailed { error, traceback } => {
            append_setup_log(shared, &traceback);
            lock(&shared.setup).completed_at = Some(SystemTime::now());
            shared.status.send_replace(WorkerStatus::SetupFailed { error });
        }
        Message::Log { id: None, source, data } => {
            tracing::info!(model = %shared.config.name, source, "{}", data.trim_end());
            if *shared.status.borrow() == WorkerStatus::Starting {
                append_setup_log(shared, &data);
            }
        }
        Message::Log { id: Some(id), source, data } => {
            route(shared, &id, Event::Log { source, data })
        }
        Message::Accepted { id } => answer(shared, &id, Ok(())),
        Message::Invalid { id, error } => {
            // Out of the table first, so its slot is free by the time the caller hears.
            let refused = lock(&shared.in_flight).remove(&id);
            if let Some(InFlight { accepted: Some(accepted), _slot: slot, .. }) = refused {
                drop(slot);
                let _ = accepted.send(Err(PredictError::Invalid(error)));
            }
        }
        Message::Output { id, chunk } => route(shared, &id, Event::Output(chunk)),
        Message::Done { id, output, predict_time } => {
            route(shared, &id, Event::Done { output, predict_time })
        }
        Message::Failed { id, error, traceback } => {
            tracing::info!(model = %shared.config.name, prediction = %id, %error, "prediction failed\n{traceback}");
            route(shared, &id, Event::Failed { error })
        }
        Message::Cancelled { id } => route(shared, &id, Event::Cancelled),
    }
    false
}

fn answer(shared: &Shared, id: &str, result: Result<(), PredictError>) {
    if let Some(accepted) = lock(&shared.in_flight).get_mut(id).and_then(|p| p.accepted.take()) {
        let _ = accepted.send(result);
    }
}

/// Hands `event` to its prediction; a terminal event also frees the prediction's slot.
fn route(shared: &Shared, id: &str, event: Event) {
    let mut in_flight = lock(&shared.in_flight);
    if event.is_terminal() {
        // Out of the table (freeing the slot) before the prediction hears it ended.
        if let Some(InFlight { events, _slot: slot, .. }) = in_flight.remove(id) {
            drop((in_flight, slot));
            let _ = events.send(event);
        }
    } else if let Some(prediction) = in_flight.get(id) {
        let _ = prediction.events.send(event);
    }
}

fn fail_in_flight(shared: &Shared, reason: &str) {
    let lost: Vec<InFlight> = lock(&shared.in_flight).drain().map(|(_, p)| p).collect();
    for InFlight { events, accepted, _slot: slot } in lost {
        drop(slot); // free before the caller hears, as for any ending
        if let Some(accepted) = accepted {
            let _ = accepted.send(Err(PredictError::WorkerLost(reason.to_owned())));
        }
        let error = format!("{reason} during this prediction");
        let _ = events.send(Event::Failed { error });
    }
}
