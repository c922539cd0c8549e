//! Server-Sent Events framing of an [`EventStream`].

use crate::http::{Body, Response};
use billing_core::events::{EventStream, SharedEvent};
use billing_core::storage::{OutboxEvent, Store};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// Comment lines keep idle connections (and proxies) from timing out.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Reconnection delay suggested to clients, in milliseconds.
pub const RETRY_MS: u64 = 2000;

/// One SSE message.
pub fn frame(event: &OutboxEvent) -> Bytes {
    let data = serde_json::to_string(&event.payload).expect("outbox payloads are JSON");
    Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", event.id, event.topic))
}

enum Step {
    Event(Result<Option<std::sync::Arc<SharedEvent>>, billing_core::storage::StoreError>),
    KeepAlive,
    Shutdown,
}

/// The stream behind an event-stream response, in its extensions: a
/// connection that writes the response itself may take it out before the
/// body is first polled (and park it with the hub); the body then ends at
/// once, unpolled by anyone.
pub struct Parkable<S: Store>(Arc<Mutex<Option<EventStream<S>>>>);

impl<S: Store> Clone for Parkable<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: Store> Parkable<S> {
    /// The stream, unless the body took it first.
    pub fn take(&self) -> Option<EventStream<S>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The hello every stream starts with.
pub fn hello() -> Bytes {
    Bytes::from(format!("retry: {RETRY_MS}\n: connected\n\n"))
}

/// The last word before the server closes a stream for shutdown.
pub fn goodbye() -> Bytes {
    Bytes::from(format!("retry: {RETRY_MS}\n\n"))
}

enum State<S: Store> {
    Waiting(Parkable<S>, watch::Receiver<bool>),
    Open(EventStream<S>, watch::Receiver<bool>, tokio::time::Interval),
    Closed,
}

/// The streaming response. It ends when the subscriber falls behind (the
/// client resumes with `Last-Event-ID`), when the device it belongs to left
/// (after the event saying so, with no `retry:`: its token is refused from
/// then on) or when the server shuts down (a last `retry:` tells the client
/// to reconnect, possibly to another instance).
pub fn response<S: Store>(stream: EventStream<S>, shutdown: watch::Receiver<bool>) -> Response {
    let parkable = Parkable(Arc::new(Mutex::new(Some(stream))));
    let mut response = body_response(State::Waiting(parkable.clone(), shutdown));
    response.extensions_mut().insert(parkable);
    response
}

/// The response of a stream already opened by its connection (its hello
/// written), which could not park.
pub fn continued<S: Store>(stream: EventStream<S>, shutdown: watch::Receiver<bool>) -> Response {
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.reset();
    body_response(State::Open(stream, shutdown, keep_alive))
}

fn body_response<S: Store>(state: State<S>) -> Response {
    let frames = futures_util::stream::unfold(state, |state| async move {
        match state {
            State::Waiting(parkable, shutdown) => {
                let stream = parkable.take()?;
                let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
                keep_alive.reset();
                Some((hello(), State::Open(stream, shutdown, keep_alive)))
            }
            State::Open(mut stream, mut shutdown, mut keep_alive) => {
                let step = tokio::select! {
                    next = stream.next() => Step::Event(next),
                    _ = keep_alive.tick() => Step::KeepAlive,
                    _ = shutdown.wait_for(|stopping| *stopping) => Step::Shutdown,
                };
                match step {
                    Step::Event(Ok(Some(event))) => {
                        keep_alive.reset();
                        Some((event.encoded(frame), State::Open(stream, shutdown, keep_alive)))
                    }
                    Step::Event(Ok(None)) => None,
                    Step::Event(Err(e)) => {
                        tracing::warn!(error = %billing_core::billing::error_chain(&e), "event stream failed");
                        None
                    }
                    Step::KeepAlive => {
                        Some((Bytes::from_static(b": keep-alive\n\n"), State::Open(stream, shutdown, keep_alive)))
                    }
                    Step::Shutdown => Some((goodbye(), State::Closed)),
                }
            }
            State::Closed => None,
        }
    });
    let body: Body = StreamBody::new(frames.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)))).boxed_unsync();
    hyper::Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-accel-buffering", "no")
        .body(body)
        .expect("static headers are valid")
}
