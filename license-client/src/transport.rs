//! reqwest as eventsource-client's HTTP transport. The trait wants `Sync`
//! futures and body streams, which reqwest's are not, so a task runs the
//! request and hands the body over through a channel.

use bytes::Bytes;
use launchdarkly_sdk_transport::{ByteStream, HttpTransport, ResponseFuture, TransportError};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone)]
pub(crate) struct ReqwestTransport {
    http: reqwest::Client,
}

impl ReqwestTransport {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

type Head = (http::StatusCode, http::HeaderMap, mpsc::Receiver<Result<Bytes, TransportError>>);

fn transport_error(e: reqwest::Error) -> TransportError {
    // The URL holds the license key: keep it out of errors (and logs).
    TransportError::new(e.without_url())
}

impl HttpTransport for ReqwestTransport {
    fn request(&self, request: http::Request<Option<Bytes>>) -> ResponseFuture {
        let http = self.http.clone();
        let (head_tx, head_rx) = oneshot::channel::<Result<Head, TransportError>>();
        tokio::spawn(async move {
            let (parts, body) = request.into_parts();
            let mut builder = http.request(parts.method, parts.uri.to_string()).headers(parts.headers);
            if let Some(body) = body {
                builder = builder.body(body);
            }
            let response = match builder.send().await {
                Ok(response) => response,
                Err(e) => {
                    let _ = head_tx.send(Err(transport_error(e)));
                    return;
                }
            };
            let (body_tx, body_rx) = mpsc::channel(16);
            if head_tx.send(Ok((response.status(), response.headers().clone(), body_rx))).is_err() {
                return;
            }
            let mut response = response;
            loop {
                let chunk = tokio::select! {
                    // The stream was dropped (closed, or reconnecting): stop reading.
                    _ = body_tx.closed() => return,
                    chunk = response.chunk() => chunk,
                };
                let item = match chunk {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => return,
                    Err(e) => Err(transport_error(e)),
                };
                let failed = item.is_err();
                if body_tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Box::pin(async move {
            let (status, headers, mut body_rx) = head_rx
                .await
                .map_err(|_| TransportError::new(std::io::Error::other("the request task ended early")))??;
            let body: ByteStream = Box::pin(futures_util::stream::poll_fn(move |cx| body_rx.poll_recv(cx)));
            let mut response = http::Response::new(body);
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Ok(response)
        })
    }
}
