//! Request latencies and outcomes, recorded by the engine thread and read at scrape time.
//!
//! The worker times every request from [`crate::Engine::submit`]: to its first `Text` event
//! (time to first token), between consecutive `Text` events (inter-token latency) and to its
//! terminal event (end-to-end latency). Histograms are fixed arrays of atomic counters, so
//! recording takes no lock and allocates nothing; readers take a [`MetricsSnapshot`] through
//! [`crate::Engine::metrics`]. Every count runs from the engine's start and never goes down.
//!
//! This module knows nothing about any exposition format: the server turns snapshots into text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hearth_protocol::{FinishReason, GenerationEvent};

/// Upper bounds (seconds, inclusive) of the latency histograms' buckets: from a millisecond (a
/// GPU's inter-token gap) to a minute (a long CPU generation); slower observations land only in
/// the implicit `+Inf` bucket.
pub const LATENCY_BUCKETS_SECONDS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    60.0,
];

const NUM_BUCKETS: usize = LATENCY_BUCKETS_SECONDS.len();

/// The bucket bounds in nanoseconds, for integer comparisons on the hot path.
const BUCKET_BOUNDS_NANOS: [u64; NUM_BUCKETS] = {
    let mut out = [0u64; NUM_BUCKETS];
    let mut i = 0;
    while i < NUM_BUCKETS {
        out[i] = (LATENCY_BUCKETS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A latency histogram with the fixed [`LATENCY_BUCKETS_SECONDS`] bounds.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; NUM_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; NUM_BUCKETS];
        let mut running = 0u64;
        for (i, slot) in cumulative.iter_mut().enumerate() {
            running += self.counts[i].load(Ordering::Relaxed);
            *slot = running;
        }
        let count = running + self.counts[NUM_BUCKETS].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations at or under each of [`LATENCY_BUCKETS_SECONDS`], cumulative.
    pub cumulative: [u64; NUM_BUCKETS],
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)` for every finite bucket.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        LATENCY_BUCKETS_SECONDS.iter().copied().zip(self.cumulative.iter().copied())
    }
}

/// How requests ended, counted from the engine's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub stop: u64,
    pub length: u64,
    pub cancelled: u64,
    /// Failed requests: refused by the scheduler, undecodable output or a failed step.
    pub failed: u64,
}

/// Everything the engine thread records, shared with the handles.
#[derive(Debug, Default)]
pub(crate) struct EngineMetrics {
    ttft: Histogram,
    inter_token: Histogram,
    e2e: Histogram,
    finished_stop: AtomicU64,
    finished_length: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
}

impl EngineMetrics {
    /// Counts a request that ended with `terminal`.
    pub fn count_terminal(&self, terminal: &GenerationEvent) {
        let counter = match terminal {
            GenerationEvent::Finished { reason: FinishReason::Stop, .. } => &self.finished_stop,
            GenerationEvent::Finished { reason: FinishReason::Length, .. } => &self.finished_length,
            GenerationEvent::Finished { reason: FinishReason::Cancelled, .. } => &self.cancelled,
            GenerationEvent::Failed { .. } => &self.failed,
            GenerationEvent::Text { .. } => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            time_to_first_token: self.ttft.snapshot(),
            inter_token_latency: self.inter_token.snapshot(),
            e2e_latency: self.e2e.snapshot(),
            requests: RequestCounts {
                stop: self.finished_stop.load(Ordering::Relaxed),
                length: self.finished_length.load(Ordering::Relaxed),
                cancelled: self.cancelled.load(Ordering::Relaxed),
                failed: self.failed.load(Ordering::Relaxed),
            },
        }
    }
}

/// The engine's latency histograms and request counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricsSnapshot {
    /// Submit → first `Text` event.
    pub time_to_first_token: HistogramSnapshot,
    /// Gaps between consecutive `Text` events of one request.
    pub inter_token_latency: HistogramSnapshot,
    /// Submit → terminal event, whatever the outcome.
    pub e2e_latency: HistogramSnapshot,
    pub requests: RequestCounts,
}

/// One request's clock, kept with its per-request state in the worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestTimer {
    submitted_at: Instant,
    last_text_at: Option<Instant>,
}

impl RequestTimer {
    pub fn new(submitted_at: Instant) -> Self {
        Self { submitted_at, last_text_at: None }
    }

    /// Records a `Text` event sent now: the first one is the TTFT, later ones an inter-token gap.
    pub fn on_text(&mut self, metrics: &EngineMetrics) {
        let now = Instant::now();
        match self.last_text_at {
            None => metrics.ttft.observe(now.duration_since(self.submitted_at)),
            Some(last) => metrics.inter_token.observe(now.duration_since(last)),
        }
        self.last_text_at = Some(now);
    }

    /// Records the request's end: its end-to-end latency and its outcome.
    pub fn on_end(&self, metrics: &EngineMetrics, terminal: &GenerationEvent) {
        metrics.e2e.observe(self.submitted_at.elapsed());
        metrics.count_terminal(terminal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_protocol::Usage;

    #[test]
    fn observations_land_in_inclusive_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // ≤ 1 ms
        h.observe(Duration::from_millis(1)); // exactly on a bound: ≤ 1 ms
        h.observe(Duration::from_millis(30)); // ≤ 50 ms
        h.observe(Duration::from_secs(120)); // +Inf only
        let s = h.snapshot();
        let buckets: Vec<(f64, u64)> = s.buckets().collect();
        assert_eq!(buckets[0], (0.001, 2));
        assert_eq!(buckets[4], (0.025, 2));
        assert_eq!(buckets[5], (0.05, 3));
        assert_eq!(buckets.last(), Some(&(60.0, 3)));
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 120.0315).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn a_request_records_ttft_then_gaps_then_its_end() {
        let m = EngineMetrics::default();
        let mut timer = RequestTimer::new(Instant::now());
        timer.on_text(&m);
        timer.on_text(&m);
        timer.on_text(&m);
        let end =
            GenerationEvent::Finished { reason: FinishReason::Length, usage: Usage::default() };
        timer.on_end(&m, &end);
        m.count_terminal(&GenerationEvent::Failed { message: "x".into() });
        let s = m.snapshot();
        assert_eq!(s.time_to_first_token.count, 1);
        assert_eq!(s.inter_token_latency.count, 2);
        assert_eq!(s.e2e_latency.count, 1);
        assert_eq!(s.requests, RequestCounts { length: 1, failed: 1, ..Default::default() });
    }
}
