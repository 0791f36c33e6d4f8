//! Cog webhooks for async predictions: `start`, throttled `output`, and the terminal
//! `completed`, each carrying the whole prediction.
//!
//! One sender task per prediction delivers them in order, so a slow receiver never holds up
//! generation and `completed` never overtakes an `output`. Only the terminal webhook is retried
//! (on 429, 5xx or a transport error, with doubling backoff and a bounded number of attempts):
//! it carries everything the others did.

use std::time::Instant;

use reqwest::{StatusCode, Url};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::prediction::Prediction;
use crate::config::WebhookConfig;

/// Non-terminal webhooks waiting for delivery; more are dropped, since each carries the whole
/// prediction and a later one supersedes it.
const QUEUE: usize = 8;

/// The webhook events a prediction asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventFilter {
    pub start: bool,
    pub output: bool,
    pub logs: bool,
    pub completed: bool,
}

impl Default for EventFilter {
    fn default() -> Self {
        Self { start: true, output: true, logs: true, completed: true }
    }
}

impl EventFilter {
    pub(crate) const NAMES: [&'static str; 4] = ["start", "output", "logs", "completed"];

    /// Builds a filter from event names; `Err` holds the first unknown name.
    pub(crate) fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut filter = Self { start: false, output: false, logs: false, completed: false };
        for name in names {
            match name {
                "start" => filter.start = true,
                "output" => filter.output = true,
                "logs" => filter.logs = true,
                "completed" => filter.completed = true,
                other => return Err(other.to_owned()),
            }
        }
        Ok(filter)
    }
}

/// Where and what to send for one prediction.
#[derive(Debug, Clone)]
pub(crate) struct WebhookTarget {
    pub url: Url,
    pub filter: EventFilter,
}

struct Delivery {
    prediction: Prediction,
    terminal: bool,
}

pub(crate) struct WebhookSender {
    queue: mpsc::Sender<Delivery>,
    task: JoinHandle<()>,
    filter: EventFilter,
    config: WebhookConfig,
    last_output: Option<Instant>,
    last_logs: Option<Instant>,
}

impl WebhookSender {
    /// Starts the delivery task. `stop` fires at the shutdown deadline and ends retries.
    pub(crate) fn spawn(
        client: reqwest::Client,
        target: WebhookTarget,
        config: WebhookConfig,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let (queue, inbox) = mpsc::channel(QUEUE);
        let deliverer = Deliverer { client, url: target.url, config: config.clone(), stop };
        let task = tasks.spawn(deliverer.run(inbox));
        Self { queue, task, filter: target.filter, config, last_output: None, last_logs: None }
    }

    pub(crate) fn start(&mut self, prediction: Prediction) {
        if self.filter.start {
            self.enqueue(prediction);
        }
    }

    /// Sends `prediction` unless an output webhook went out less than the interval ago; the
    /// skipped chunks arrive with the next one, or with `completed`.
    pub(crate) fn output(&mut self, prediction: impl FnOnce() -> Prediction) {
        let due = self.last_output.is_none_or(|t| t.elapsed() >= self.config.output_interval);
        if self.filter.output && due {
            self.last_output = Some(Instant::now());
            self.enqueue(prediction());
        }
    }

    /// Sends `prediction` for new logs, throttled as [`Self::output`] is.
    pub(crate) fn logs(&mut self, prediction: impl FnOnce() -> Prediction) {
        let due = self.last_logs.is_none_or(|t| t.elapsed() >= self.config.output_interval);
        if self.filter.logs && due {
            self.last_logs = Some(Instant::now());
            self.enqueue(prediction());
        }
    }

    /// Sends the terminal webhook (if asked for) and waits until every delivery is done.
    pub(crate) async fn completed(self, prediction: Prediction) {
        if self.filter.completed {
            // Fails only if the delivery task has ended, which it does only after the queue closes.
            let _ = self.queue.send(Delivery { prediction, terminal: true }).await;
        }
        drop(self.queue);
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "webhook delivery task failed");
        }
    }

    fn enqueue(&self, prediction: Prediction) {
        if self.queue.try_send(Delivery { prediction, terminal: false }).is_err() {
            tracing::debug!("webhook queue full; skipping a non-terminal webhook");
        }
    }
}

struct Deliverer {
    client: reqwest::Client,
    url: Url,
    config: WebhookConfig,
    stop: CancellationToken,
}

impl Deliverer {
    async fn run(self, mut inbox: mpsc::Receiver<Delivery>) {
        while let Some(delivery) = inbox.recv().await {
            if delivery.terminal {
                self.send_with_retries(&delivery.prediction).await;
            } else if let Err(err) = self.send(&delivery.prediction).await {
                tracing::warn!(url = %self.url, error = %err, "webhook not delivered");
            }
        }
    }

    async fn send_with_retries(&self, prediction: &Prediction) {
        let mut backoff = self.config.initial_backoff;
        for attempt in 1..=self.config.max_attempts.max(1) {
            match self.send(prediction).await {
                Ok(()) => return,
                Err(err) if err.retryable && attempt < self.config.max_attempts => {
                    tracing::warn!(url = %self.url, attempt, error = %err, "terminal webhook failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        // At the shutdown deadline, stop waiting to retry.
                        () = self.stop.cancelled() => return,
                    }
                    backoff = backoff.saturating_mul(2);
                }
                Err(err) => {
                    tracing::warn!(url = %self.url, attempt, error = %err, "terminal webhook not delivered");
                    return;
                }
            }
        }
    }

    async fn send(&self, prediction: &Prediction) -> Result<(), SendError> {
        let response = self
            .client
            .post(self.url.clone())
            .json(prediction)
            .send()
            .await
            .map_err(|e| SendError { retryable: true, message: e.to_string() })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        Err(SendError { retryable, message: format!("receiver answered {status}") })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct SendError {
    retryable: bool,
    message: String,
}
