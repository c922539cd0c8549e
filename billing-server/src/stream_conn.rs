//! Connections whose first request opens a license event stream are served
//! without hyper.
//!
//! A desktop app holds its event stream open for hours, and one server holds
//! tens of thousands of them. hyper keeps two 8 KiB buffers per connection
//! for its whole life (read buffer and header buffer), which made 10,000
//! idle streams cost ~110 MB before any of our state. Here such a connection
//! costs its socket, the stream's state and a few hundred bytes: the request
//! head is read into a buffer that is dropped once parsed, and frames are
//! written as they come. The request still goes through [`crate::handle`]
//! (routing, authorisation, metrics, logs), so the two paths answer alike.
//!
//! Anything else, including an event stream requested later on a keep-alive
//! connection, is left to hyper: the bytes read to decide are replayed to it.

use crate::error::ApiError;
use crate::http::{RequestBody, Response};
use crate::sse::Parkable;
use crate::{AppState, ClientAddr};
use billing_core::events::{EventStream, ParkedSubscriber, SharedEvent};
use billing_core::storage::any::AnyStore;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::StatusCode;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The request line that selects this path.
const EVENTS_PREFIX: &[u8] = b"GET /api/events/";
/// A longer request head is refused (431), as hyper would.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// The send buffer of a parked stream's socket (the kernel doubles it).
const PARKED_SEND_BUFFER: usize = 32 * 1024;
/// A client that stops reading is dropped rather than holding memory.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the first bytes of a connection turned out to be.
pub enum FirstRequest {
    /// A complete request head for `GET /api/events/…`.
    EventStream(Bytes),
    /// Something else: these bytes were read and must be replayed to hyper.
    Other(Bytes),
    /// The peer closed (or sent nothing in time) before saying anything.
    Nothing,
}

/// Reads just enough of a new connection to tell whether it opens with an
/// event stream request (and if so, its whole head).
pub async fn read_first_request(stream: &mut TcpStream, timeout: Duration) -> io::Result<FirstRequest> {
    let mut head = BytesMut::with_capacity(1024);
    let reading = async {
        loop {
            if stream.read_buf(&mut head).await? == 0 {
                return Ok(if head.is_empty() {
                    FirstRequest::Nothing
                } else {
                    FirstRequest::Other(head.split().freeze())
                });
            }
            let decided = head.len() >= EVENTS_PREFIX.len() || !EVENTS_PREFIX.starts_with(&head);
            if !decided {
                continue;
            }
            if !head.starts_with(EVENTS_PREFIX) {
                return Ok(FirstRequest::Other(head.split().freeze()));
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_HEAD_BYTES {
                return Ok(FirstRequest::EventStream(head.split().freeze()));
            }
            head.reserve(1024);
        }
    };
    match tokio::time::timeout(timeout, reading).await {
        Ok(result) => result,
        Err(_) => Ok(FirstRequest::Nothing),
    }
}

/// Answers an event stream request read by [`read_first_request`], then
/// closes the connection.
pub async fn serve_event_stream(state: Arc<AppState>, mut stream: TcpStream, peer: SocketAddr, head: Bytes) {
    let (mut request, http10) = match parse_head(&head, peer) {
        Ok(parsed) => parsed,
        Err(error) => {
            if write_response(&mut stream, error.into_response(), false).await.is_ok() {
                close(stream).await;
            }
            return;
        }
    };
    drop(head);
    let client = state.trusted_proxies.client_addr(peer.ip(), request.headers());
    request.extensions_mut().insert(ClientAddr(client));
    // Boxed: the routing future is large and done long before the stream is.
    let response = Box::pin(crate::handle(state.clone(), request)).await.unwrap_or_else(|never| match never {});
    let parkable = response.extensions().get::<Parkable<AnyStore>>().and_then(Parkable::take);
    let served = match parkable {
        Some(events) => Box::pin(serve_and_park(&state, stream, response, events, http10)).await,
        None => write_response(&mut stream, response, http10).await.map(|()| Some(stream)),
    };
    match served {
        Ok(Some(stream)) => close(stream).await,
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "event stream connection closed"),
    }
}

/// An event stream's connection: its head, hello and replay written here,
/// then handed over to the hub ([`EventStream::park`]), which writes every
/// later event to the socket itself, so that an idle stream costs no task
/// and a broadcast wakes none. `None`: parked; otherwise the connection,
/// its stream ended, to close.
async fn serve_and_park(
    state: &AppState,
    mut stream: TcpStream,
    response: Response,
    mut events: EventStream<AnyStore>,
    http10: bool,
) -> io::Result<Option<TcpStream>> {
    let (parts, _unpolled) = response.into_parts();
    let chunked = write_head(&mut stream, parts, None, http10).await?;
    write_frame(&mut stream, &crate::sse::hello(), chunked).await?;
    while events.replaying() {
        match events.next().await {
            Ok(Some(event)) => write_frame(&mut stream, &event.encoded(crate::sse::frame), chunked).await?,
            Ok(None) => return finish(stream, chunked).await,
            Err(e) => {
                tracing::warn!(error = %billing_core::billing::error_chain(&e), "event stream replay failed");
                return finish(stream, chunked).await;
            }
        }
    }
    // Fixed rather than autotuned: it bounds what the kernel holds for an
    // idle stream and how far its client may fall behind (~180 events)
    // before a write would block and the stream is cut off.
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(PARKED_SEND_BUFFER);
    let mut socket = Some(stream);
    let parked = events.park(|parking| {
        let mut parked = ParkedSocket { stream: socket.take()?, chunked, device: parking.device };
        // Whatever `offer` says, `park` drops a stream that ended here.
        if parking.pending.iter().all(|event| parked.offer(event)) {
            Some(Box::new(parked) as Box<dyn ParkedSubscriber>)
        } else {
            None
        }
    });
    match (parked, socket) {
        (Ok(()), _) => Ok(None),
        (Err(events), Some(mut stream)) => {
            // Not parked (the hub had dropped it as too slow, say): served
            // from this task, as a stream that cannot park always was.
            let body = crate::sse::continued(*events, state.shutdown.subscribe()).into_body();
            write_body(&mut stream, body, chunked).await?;
            Ok(Some(stream))
        }
        (Err(_), None) => unreachable!("park refuses before it calls its constructor"),
    }
}

/// Ends a chunked body and hands the connection back to be closed.
async fn finish(mut stream: TcpStream, chunked: bool) -> io::Result<Option<TcpStream>> {
    if chunked {
        write(&mut stream, b"0\r\n\r\n").await?;
    }
    Ok(Some(stream))
}

/// A stream the hub writes to itself (see [`serve_and_park`]). Every write
/// is one non-blocking call that must take the whole frame: a socket that
/// cannot (a client that stopped reading) is dropped, and its client
/// resumes with `Last-Event-ID`, as with every too-slow stream.
struct ParkedSocket {
    stream: TcpStream,
    chunked: bool,
    device: Option<uuid::Uuid>,
}

impl ParkedSocket {
    fn write_now(&mut self, data: &[u8]) -> bool {
        // The chunk's size line, written on the stack: this runs once per
        // stream per event.
        let mut line = [0u8; 20];
        let written = {
            let mut cursor = io::Cursor::new(&mut line[..]);
            let _ = io::Write::write_fmt(&mut cursor, format_args!("{:x}\r\n", data.len()));
            cursor.position() as usize
        };
        let size = &line[..written];
        let chunk = [io::IoSlice::new(size), io::IoSlice::new(data), io::IoSlice::new(b"\r\n")];
        let slices = if self.chunked { &chunk[..] } else { &chunk[1..2] };
        let total: usize = slices.iter().map(|s| s.len()).sum();
        matches!(self.stream.try_write_vectored(slices), Ok(n) if n == total)
    }
}

impl ParkedSubscriber for ParkedSocket {
    fn offer(&mut self, event: &SharedEvent) -> bool {
        self.write_now(&event.encoded(crate::sse::frame))
            && !self.device.is_some_and(|device| billing_core::events::ends_device_stream(event, device))
    }

    fn tick(&mut self, keep_alive: bool) -> bool {
        let mut discard = [0u8; 64];
        let peer_there = loop {
            match self.stream.try_read(&mut discard) {
                Ok(0) => break false,
                // What a client sends after its request is never answered.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        peer_there && (!keep_alive || self.write_now(b": keep-alive\n\n"))
    }

    fn close(&mut self) {
        self.write_now(&crate::sse::goodbye());
    }
}

impl Drop for ParkedSocket {
    fn drop(&mut self) {
        // The end of the body, if it fits; the socket closes either way.
        if self.chunked {
            let _ = self.stream.try_write(b"0\r\n\r\n");
        }
    }
}

/// Closes after the last response: our side first, then whatever the client
/// still sends is read and dropped for a moment, because closing a socket
/// with unread input resets it and the client could lose the response.
async fn close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(stream.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Parses a complete request head (through its blank line) into the
/// request [`crate::handle`] takes, and whether it was HTTP/1.0; refuses
/// what is not HTTP/1.1 (400) or exceeds the header limits (431).
pub fn parse_head(head: &[u8], peer: SocketAddr) -> Result<(hyper::Request<RequestBody>, bool), ApiError> {
    let (malformed, too_large) = (malformed_request, headers_too_large);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(_) => return Err(malformed()),
    }
    let http10 = parsed.version == Some(0);
    let mut request = hyper::Request::builder()
        .method(hyper::Method::GET)
        .uri(parsed.path.ok_or_else(malformed)?)
        .version(if http10 { hyper::Version::HTTP_10 } else { hyper::Version::HTTP_11 });
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| malformed())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| malformed())?;
        request = request.header(name, value);
    }
    let body = Empty::new().map_err(|never| match never {}).boxed();
    let mut request = request.body(body).map_err(|_| malformed())?;
    request.extensions_mut().insert(ClientAddr(peer.ip()));
    Ok((request, http10))
}

async fn write_response(stream: &mut TcpStream, response: Response, http10: bool) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let chunked = write_head(stream, parts, body.size_hint().exact(), http10).await?;
    write_body(stream, body, chunked).await
}

/// Writes the status line and headers; whether the body is chunked.
async fn write_head(
    stream: &mut TcpStream,
    parts: hyper::http::response::Parts,
    length: Option<u64>,
    http10: bool,
) -> io::Result<bool> {
    let chunked = length.is_none() && !http10;
    let mut head = format!(
        "HTTP/1.{} {} {}\r\n",
        if http10 { 0 } else { 1 },
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(value.to_str().unwrap_or_default());
        head.push_str("\r\n");
    }
    head.push_str(&format!("{}: {}\r\n", header::DATE, httpdate::fmt_http_date(std::time::SystemTime::now())));
    head.push_str("connection: close\r\n");
    match length {
        Some(n) => head.push_str(&format!("content-length: {n}\r\n")),
        None if chunked => head.push_str("transfer-encoding: chunked\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    // Nothing of the head stays allocated for the life of the stream.
    drop(parts);
    write(stream, head.as_bytes()).await?;
    Ok(chunked)
}

/// One piece of a body, chunked or not.
async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), data: &[u8], chunked: bool) -> io::Result<()> {
    if !chunked {
        return write(stream, data).await;
    }
    let mut chunk = BytesMut::with_capacity(data.len() + 12);
    chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    write(stream, &chunk).await
}

/// Writes a body to its end, or until the client leaves.
async fn write_body(stream: &mut TcpStream, body: crate::http::Body, chunked: bool) -> io::Result<()> {
    let (mut reader, mut writer) = stream.split();
    let mut body = std::pin::pin!(body);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = peer_gone(&mut reader) => return Ok(()),
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame.unwrap_or_else(|never| match never {}).into_data() else { continue };
        if !data.is_empty() {
            write_frame(&mut writer, &data, chunked).await?;
        }
    }
    if chunked {
        write(&mut writer, b"0\r\n\r\n").await?;
    }
    Ok(())
}

async fn write(writer: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")),
    }
}

/// Resolves when the client closes its side (or the connection breaks).
/// Anything it sends meanwhile is discarded: the connection ends with the
/// stream, so no further request on it will be answered.
async fn peer_gone(reader: &mut tokio::net::tcp::ReadHalf<'_>) {
    let mut discard = [0u8; 64];
    loop {
        match reader.read(&mut discard).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A connection handed to hyper: the bytes already read from it put back in
/// front, and hyper's own error answers replaced by ours.
///
/// hyper answers a request it cannot parse (malformed request line or
/// header, URI too long, head too large) itself, before any service sees it,
/// with a canned `400`/`414`/`431` and an empty body, then closes; it has no
/// hook to change that answer. So the writes are watched for it instead.
/// This is robust because that answer is unlike anything else written here:
/// every response of ours carries `x-request-id` and a body, and none of our
/// bodies (JSON, SSE, metrics text) contains a raw CR, so `HTTP/1.1 …`
/// followed by a complete bodiless head at the very end of a write can only
/// be hyper's. It is always the last thing on the connection, so when it is
/// found after other bytes, those are written first and it arrives alone in
/// the next write. Vectored writes are declined so that hyper hands over one
/// flat buffer (a head is never split across buffers). The integration tests
/// (`hostile_http`) send each malformed input to the real hyper, so a change
/// in its canned form shows there.
///
/// Checking each request head ourselves instead would mean following every
/// body's framing (lengths, chunks) to find where the next head starts: a
/// second HTTP parser in front of hyper's.
pub struct Rewind {
    prefix: Bytes,
    /// Taken only on drop, to close it gently.
    inner: Option<TcpStream>,
    /// Our answer standing in for hyper's canned one, and how many of
    /// hyper's bytes it stands for.
    replacement: Option<(Bytes, usize)>,
}

impl Rewind {
    /// `prefix` is read again before anything still in `inner`.
    pub fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner: Some(inner), replacement: None }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.inner.as_mut().expect("only taken on drop"))
    }
}

/// hyper closes a connection as soon as it has answered a refusal (408, 503,
/// a parse error), often with the client's unread bytes still queued; the
/// kernel then resets it and the client loses the answer while still sending.
/// The socket is handed to [`close`] instead, which reads and drops what
/// arrives for a bounded moment after our side is shut.
impl Drop for Rewind {
    fn drop(&mut self) {
        if let (Some(stream), Ok(runtime)) = (self.inner.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(close(stream));
        }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let taken = self.prefix.split_to(n);
            buf.put_slice(&taken);
            if self.prefix.is_empty() {
                // Frees the buffer rather than keeping an empty view of it.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacement.is_none() {
            match find_canned_error(buf) {
                None => return this.stream().poll_write(cx, buf),
                Some((0, error)) => this.replacement = Some((encode_error(error), buf.len())),
                Some((at, _)) => return this.stream().poll_write(cx, &buf[..at]),
            }
        }
        let Self { replacement: Some((answer, stands_for)), inner: Some(stream), .. } = this else {
            unreachable!("set above; the stream is only taken on drop")
        };
        while !answer.is_empty() {
            let n = ready!(Pin::new(&mut *stream).poll_write(cx, answer))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            answer.advance(n);
        }
        Poll::Ready(Ok(*stands_for))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The error a parse-error status of hyper's stands for.
fn below_handler_error(status: StatusCode) -> Option<ApiError> {
    Some(match status {
        StatusCode::BAD_REQUEST => malformed_request(),
        StatusCode::URI_TOO_LONG => {
            ApiError::new(StatusCode::URI_TOO_LONG, "URI_TOO_LONG", "the request URI is longer than 65534 bytes")
        }
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "HEADERS_TOO_LARGE",
            "the request headers are too large",
        ),
        _ => return None,
    })
}

fn malformed_request() -> ApiError {
    ApiError::bad_request("MALFORMED_REQUEST", "the request is not valid HTTP/1.1")
}

fn headers_too_large() -> ApiError {
    let message = format!("request headers exceed {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields");
    ApiError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "HEADERS_TOO_LARGE", message)
}

/// Finds hyper's canned answer to a parse error at the end of `buf`: where it
/// starts and the error it stands for.
fn find_canned_error(buf: &[u8]) -> Option<(usize, ApiError)> {
    // hyper's canned head is ~100 bytes; ours are never bodiless.
    const LONGEST_CANNED: usize = 256;
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let tail_start = buf.len().saturating_sub(LONGEST_CANNED);
    let at = tail_start + buf[tail_start..].windows(9).rposition(|w| w == b"HTTP/1.1 ")?;
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut head = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = head.parse(&buf[at..]) else { return None };
    let bodiless = head.headers.iter().any(|h| h.name.eq_ignore_ascii_case("content-length") && h.value == b"0");
    let ours = head.headers.iter().any(|h| h.name.eq_ignore_ascii_case("x-request-id"));
    if at + len != buf.len() || !bodiless || ours {
        return None;
    }
    let status = StatusCode::from_u16(head.code?).ok()?;
    Some((at, below_handler_error(status)?))
}

/// `error` as a complete HTTP/1.1 response that closes the connection.
fn encode_error(error: ApiError) -> Bytes {
    let body = serde_json::json!({ "error": { "code": error.code, "message": error.message } }).to_string();
    let status = error.status;
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\n\
         content-length: {}\r\ndate: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    Bytes::from(head + &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn a_request_head_becomes_a_request_with_its_headers_and_peer() {
        let head =
            b"GET /api/events/KEY?x=1 HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 7\r\nAuthorization: Bearer t\r\n\r\n";
        let (request, http10) = parse_head(head, addr()).unwrap();
        assert!(!http10);
        assert_eq!(request.uri().path(), "/api/events/KEY");
        assert_eq!(request.headers()["last-event-id"], "7");
        assert_eq!(request.headers()["authorization"], "Bearer t");
        assert_eq!(request.extensions().get::<ClientAddr>().unwrap().0, addr().ip());
    }

    #[test]
    fn malformed_or_oversized_heads_are_refused() {
        let refusal = |head: &[u8]| {
            let error = parse_head(head, addr()).unwrap_err();
            (error.status.as_u16(), error.code)
        };
        assert_eq!(refusal(b"GET /api/events/K HTTP/1.1\r\nbad header\r\n\r\n"), (400, "MALFORMED_REQUEST"));
        assert_eq!(refusal(b"GET /api/events/K HTTP/1.1\r\nHost: a\r\n"), (431, "HEADERS_TOO_LARGE"));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: v\r\n")).collect();
        let head = format!("GET /api/events/K HTTP/1.1\r\n{many}\r\n");
        assert_eq!(refusal(head.as_bytes()), (431, "HEADERS_TOO_LARGE"));
    }

    const CANNED_400: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 08:47:44 GMT\r\n\r\n";

    #[test]
    fn hypers_canned_answer_is_found_alone_or_after_an_earlier_response() {
        let (at, error) = find_canned_error(CANNED_400).unwrap();
        assert_eq!((at, error.status, error.code), (0, StatusCode::BAD_REQUEST, "MALFORMED_REQUEST"));
        let ours = b"HTTP/1.1 200 OK\r\nx-request-id: req-1\r\ncontent-length: 2\r\n\r\n{}";
        let both = [&ours[..], CANNED_400].concat();
        assert_eq!(find_canned_error(&both).unwrap().0, ours.len());
        let canned_414 = String::from_utf8_lossy(CANNED_400).replace("400 Bad Request", "414 URI Too Long");
        assert_eq!(find_canned_error(canned_414.as_bytes()).unwrap().1.code, "URI_TOO_LONG");
    }

    #[test]
    fn our_own_responses_are_never_taken_for_hypers() {
        let ours_bodiless = b"HTTP/1.1 400 Bad Request\r\nx-request-id: r\r\ncontent-length: 0\r\n\r\n";
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        let chunked_end = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        for bytes in [&ours_bodiless[..], with_body, chunked_end, &CANNED_400[..CANNED_400.len() - 2]] {
            assert!(find_canned_error(bytes).is_none(), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn the_replacement_is_our_json_error_and_closes() {
        let bytes = encode_error(below_handler_error(StatusCode::URI_TOO_LONG).unwrap());
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut head = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = head.parse(&bytes).unwrap() else { panic!("incomplete") };
        assert_eq!(head.code, Some(414));
        let header = |name: &str| head.headers.iter().find(|h| h.name == name).map(|h| h.value.to_vec());
        assert_eq!(header("content-type").unwrap(), b"application/json");
        assert_eq!(header("connection").unwrap(), b"close");
        let body: serde_json::Value = serde_json::from_slice(&bytes[len..]).unwrap();
        assert_eq!(body["error"]["code"], "URI_TOO_LONG");
    }
}
