//! Relaying a gateway run to an HTTP caller: what the OpenAI chat, Anthropic messages and run
//! surfaces share once each has parsed its own wire format into a canonical request.
//!
//! A surface starts a run through the gateway, which detaches the run's producer: the answer is
//! read from the run buffer, never from the producer, so a caller that disconnects leaves the
//! generation running (and billed once) and can resume it. The answer is either SSE in the
//! surface's format with each frame's `id:` set to the run's event sequence number, or one JSON
//! body assembled from the events.

mod error;
mod format;
mod headers;
pub(crate) mod status;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Request;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use hearth_gateway::{Caller, RunEvent, RunOpening, StartedRun, Subscription};
use hearth_protocol::wire::SseFrame;
use hearth_protocol::{CanonicalRequest, CanonicalResponse, ResponseAssembler, StreamError};
use serde::de::DeserializeOwned;

pub(crate) use error::{decorate, error_type, RelayError};
pub(crate) use format::{AnthropicMessage, Encoder, OpenAiChat, StreamFormat};
pub(crate) use headers::{caller, log_options, set_cache_status, set_run_headers};

use crate::body::{read_object, typed};
use crate::state::AppState;

/// Reads a JSON object body as `T`; every problem is a [`RelayError`] naming the field.
pub(crate) async fn read_json<T: DeserializeOwned>(
    request: Request,
    state: &AppState,
) -> Result<T, RelayError> {
    let object = read_object(request, state, state.config().max_body_bytes).await?;
    Ok(typed(serde_json::Value::Object(object))?)
}

/// Starts the run `opening` names (its answer's ids derive from the run id), its stream encoded
/// in `format`; returns once a route has committed (its first content event is buffered) or
/// every route has failed. The format is stored with the run, so that a resume, on any
/// replica, speaks it.
pub(crate) async fn start(
    state: &AppState,
    caller: Caller,
    request: CanonicalRequest,
    opening: RunOpening,
    format: &StreamFormat,
) -> Result<StartedRun, RelayError> {
    let opening = RunOpening { format: Some(format.to_stored()), ..opening };
    Ok(state.gateway().open_run(request, caller, opening).await?)
}

/// Answers a started run: as SSE in `format`, or, when the caller did not ask for a stream, as
/// the JSON body `whole` builds from the assembled answer.
pub(crate) async fn answer(
    state: &AppState,
    run: StartedRun,
    format: StreamFormat,
    stream: bool,
    whole: impl FnOnce(CanonicalResponse) -> Response,
) -> Result<Response, RelayError> {
    let mut response = if stream {
        sse(run.events, format.encoder(), state.config().sse_keep_alive, ResumePoint::default())
            .into_response()
    } else {
        match collect(run.events).await {
            Ok(answer) => whole(answer),
            Err(error) => {
                let error = Box::new(error);
                return Err(RelayError::Failed { run_id: run.run_id, route: run.route, error });
            }
        }
    };
    set_run_headers(response.headers_mut(), &run.run_id, Some(&run.route));
    set_cache_status(response.headers_mut(), run.cache);
    Ok(response)
}

/// The run's events as SSE, each frame with its own [`FrameId`]. The body owns only a
/// subscription: dropping it (the client left) leaves the producer running. `resume` skips the
/// frames a resuming caller already has of the first event it is sent.
pub(crate) fn sse(
    events: Subscription,
    mut encoder: Encoder,
    keep_alive: Duration,
    resume: ResumePoint,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let frames = events.flat_map(move |RunEvent { seq, event }| {
        let skip = if seq == resume.seq { resume.frames_seen } else { 0 };
        let frames = encoder.encode(&event).into_iter().enumerate().skip(skip);
        stream::iter(frames.map(move |(index, frame)| Ok(sse_event(FrameId { seq, index }, frame))))
    });
    Sse::new(frames).keep_alive(KeepAlive::new().interval(keep_alive))
}

/// An SSE frame's `id:`. One canonical event can encode to several frames (Anthropic's
/// `message_start` and `content_block_start`; OpenAI's finish chunk, usage chunk and `[DONE]`),
/// and each frame needs an id of its own for `Last-Event-ID` to say exactly what a client has:
/// the event's sequence number for its first frame, `seq.index` for the ones after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameId {
    pub seq: u64,
    pub index: usize,
}

impl std::fmt::Display for FrameId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            0 => write!(f, "{}", self.seq),
            index => write!(f, "{}.{index}", self.seq),
        }
    }
}

impl std::str::FromStr for FrameId {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (seq, index) = match text.trim().split_once('.') {
            Some((seq, index)) => (seq, index.parse().map_err(|_| ())?),
            None => (text.trim(), 0),
        };
        Ok(FrameId { seq: seq.parse().map_err(|_| ())?, index })
    }
}

/// Where a resumed stream starts: at event `seq`, less the frames of it the caller has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResumePoint {
    pub seq: u64,
    pub frames_seen: usize,
}

impl ResumePoint {
    /// After the frame a client last received (`Last-Event-ID`).
    pub(crate) fn after(frame: FrameId) -> Self {
        Self { seq: frame.seq, frames_seen: frame.index + 1 }
    }
}

fn sse_event(id: FrameId, frame: SseFrame) -> Event {
    let event = Event::default().id(id.to_string()).data(frame.data);
    match frame.event {
        Some(name) => event.event(name),
        None => event,
    }
}

/// Reads a run to its terminal event and assembles the whole answer; a run that ended in an
/// error is that error.
pub(crate) async fn collect(mut events: Subscription) -> Result<CanonicalResponse, StreamError> {
    let mut assembler = ResponseAssembler::new();
    while let Some(RunEvent { event, .. }) = events.next().await {
        assembler.push(&event);
    }
    assembler.finish()
}

/// Feeds a fresh encoder the events before `from` and drops what it writes for them, so that
/// the events from `from` on are encoded exactly as the first connection would have seen them.
pub(crate) async fn prime(encoder: &mut Encoder, head: Subscription, from: u64) {
    let mut head = head.take_while(move |e| std::future::ready(e.seq < from));
    while let Some(RunEvent { event, .. }) = head.next().await {
        encoder.encode(&event);
    }
}
