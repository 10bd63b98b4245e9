//! One upgraded HTTP/2 connection (reader or backup protocol, protocol.md §6): requests are
//! streams on it, many at once. The client settings are the official client's.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use super::error::RemoteError;
use super::wire::{parse_data, status_error, USER_AGENT};

/// Windows and frame size as sent by proxmox-backup-client (transcripts README fact 10).
const WINDOW: u32 = 2_147_483_646;
const MAX_FRAME: u32 = 4 * 1024 * 1024;
/// Requests carry this fixed authority; the server ignores it (fact 11).
const AUTHORITY: &str = "localhost:8007";

pub struct H2Session {
    sender: h2::client::SendRequest<Bytes>,
    server: String,
    request_timeout: Duration,
    closed: Arc<AtomicBool>,
    driver: JoinHandle<()>,
}

impl H2Session {
    /// Starts HTTP/2 as the client on an upgraded connection.
    pub async fn handshake<T>(
        io: T,
        server: String,
        request_timeout: Duration,
    ) -> Result<Self, RemoteError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|err| RemoteError::Protocol {
                server: server.clone(),
                message: format!("HTTP/2 handshake failed: {err}"),
            })?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let driver = tokio::spawn(async move {
            let _ = connection.await;
            flag.store(true, Ordering::SeqCst);
        });
        Ok(H2Session {
            sender,
            server,
            request_timeout,
            closed,
            driver,
        })
    }

    /// The connection has ended (the server went away or the network broke).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn lost(&self, err: impl std::fmt::Display) -> RemoteError {
        RemoteError::ConnectionLost {
            server: self.server.clone(),
            message: err.to_string(),
        }
    }

    /// Sends one request and returns the whole response body of a 2xx answer; any other
    /// status becomes an error carrying the server's text. Bodies above `limit` are refused.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &'static str,
        body: Option<Bytes>,
        limit: usize,
    ) -> Result<Bytes, RemoteError> {
        match tokio::time::timeout(
            self.request_timeout,
            self.exchange(method, path_and_query, content_type, body, limit),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(RemoteError::Timeout {
                what: format!("request {path_and_query} to {}", self.server),
                after: self.request_timeout,
            }),
        }
    }

    /// Like [`request`](Self::request) for JSON endpoints: returns the `data` member.
    pub async fn request_json(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &'static str,
        body: Option<Bytes>,
    ) -> Result<serde_json::Value, RemoteError> {
        let raw = self
            .request(method, path_and_query, content_type, body, 16 << 20)
            .await?;
        parse_data(&raw, &self.server)
    }

    async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &'static str,
        body: Option<Bytes>,
        limit: usize,
    ) -> Result<Bytes, RemoteError> {
        if self.is_closed() {
            return Err(self.lost("the connection is closed"));
        }
        let request = Request::builder()
            .method(method)
            .uri(format!("https://{AUTHORITY}{path_and_query}"))
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            )
            .body(())
            .map_err(|err| RemoteError::Protocol {
                server: self.server.clone(),
                message: format!("bad request {path_and_query}: {err}"),
            })?;
        let mut sender = self
            .sender
            .clone()
            .ready()
            .await
            .map_err(|e| self.lost(e))?;
        let (response, mut stream) = sender
            .send_request(request, body.is_none())
            .map_err(|e| self.lost(e))?;
        if let Some(body) = body {
            self.send_body(&mut stream, body).await?;
        }
        let response = response.await.map_err(|e| self.lost(e))?;
        let status = response.status();
        let expected = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut body = response.into_body();
        let mut data = BytesMut::with_capacity(expected.unwrap_or(0).min(limit));
        while let Some(piece) = body.data().await {
            let piece = piece.map_err(|e| self.lost(e))?;
            // Give the window back as we go, or big downloads stall.
            let _ = body.flow_control().release_capacity(piece.len());
            if data.len() + piece.len() > limit {
                return Err(RemoteError::Protocol {
                    server: self.server.clone(),
                    message: format!("response to {path_and_query} is larger than {limit} bytes"),
                });
            }
            data.extend_from_slice(&piece);
        }
        if !status.is_success() {
            return Err(status_error(status, &data, &self.server, ""));
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(self.lost("unexpected 101 on a session stream"));
        }
        Ok(data.freeze())
    }

    async fn send_body(
        &self,
        stream: &mut h2::SendStream<Bytes>,
        mut body: Bytes,
    ) -> Result<(), RemoteError> {
        if body.is_empty() {
            return stream
                .send_data(Bytes::new(), true)
                .map_err(|e| self.lost(e));
        }
        while !body.is_empty() {
            stream.reserve_capacity(body.len());
            let granted = poll_fn(|cx| stream.poll_capacity(cx))
                .await
                .ok_or_else(|| self.lost("stream closed while sending"))?
                .map_err(|e| self.lost(e))?;
            if granted == 0 {
                continue;
            }
            let piece = body.split_to(granted.min(body.len()));
            stream
                .send_data(piece, body.is_empty())
                .map_err(|e| self.lost(e))?;
        }
        Ok(())
    }
}

impl Drop for H2Session {
    /// Ends the connection like the official client mostly does: a plain close.
    fn drop(&mut self) {
        self.driver.abort();
    }
}
