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
use crate::{AppState, ClientAddr};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::StatusCode;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The request line that selects this path.
const EVENTS_PREFIX: &[u8] = b"GET /api/events/";
/// A longer request head is refused (431), as hyper would.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
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
    let (request, http10) = match parse_head(&head, peer) {
        Ok(parsed) => parsed,
        Err(error) => {
            if write_response(&mut stream, error.into_response(), false).await.is_ok() {
                close(stream).await;
            }
            return;
        }
    };
    drop(head);
    // Boxed: the routing future is large and done long before the stream is.
    let response = Box::pin(crate::handle(state, request)).await.unwrap_or_else(|never| match never {});
    match write_response(&mut stream, response, http10).await {
        Ok(()) => close(stream).await,
        Err(e) => tracing::debug!(error = %e, "event stream connection closed"),
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
    let malformed = || ApiError::bad_request("MALFORMED_REQUEST", "the request is not valid HTTP/1.1");
    let too_large = || {
        let message = format!("request headers exceed {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields");
        ApiError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "HEADERS_TOO_LARGE", message)
    };
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
    let length = body.size_hint().exact();
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
    drop(head);

    let (mut reader, mut writer) = stream.split();
    let mut body = std::pin::pin!(body);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = peer_gone(&mut reader) => return Ok(()),
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame.unwrap_or_else(|never| match never {}).into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut chunk = BytesMut::with_capacity(data.len() + 12);
            chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            write(&mut writer, &chunk).await?;
        } else {
            write(&mut writer, &data).await?;
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

/// A connection with bytes already read from it put back in front.
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    /// `prefix` is read again before anything still in `inner`.
    pub fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner }
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
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
}
