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

enum State<S: Store> {
    Opening(EventStream<S>, watch::Receiver<bool>),
    Open(EventStream<S>, watch::Receiver<bool>, tokio::time::Interval),
    Closed,
}

/// The streaming response. It ends when the subscriber falls behind (the
/// client resumes with `Last-Event-ID`), when the device it belongs to left
/// (after the event saying so, with no `retry:`: its token is refused from
/// then on) or when the server shuts down (a last `retry:` tells the client
/// to reconnect, possibly to another instance).
pub fn response<S: Store>(stream: EventStream<S>, shutdown: watch::Receiver<bool>) -> Response {
    let frames = futures_util::stream::unfold(State::Opening(stream, shutdown), |state| async move {
        match state {
            State::Opening(stream, shutdown) => {
                let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
                keep_alive.reset();
                let hello = Bytes::from(format!("retry: {RETRY_MS}\n: connected\n\n"));
                Some((hello, State::Open(stream, shutdown, keep_alive)))
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
                    Step::Shutdown => Some((Bytes::from(format!("retry: {RETRY_MS}\n\n")), State::Closed)),
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
