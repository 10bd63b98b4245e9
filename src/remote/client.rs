//! HTTPS to a PBS server: TCP + TLS (tls.rs), HTTP/1.1 keep-alive for API calls,
//! authentication (API token header, or ticket login with renewal, protocol.md §3) and the
//! upgrade of a fresh connection to a session protocol (§6).

use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::error::RemoteError;
use super::options::ConnectOptions;
use super::query::encode_component;
use super::session::H2Session;
use super::tls;
use super::wire::{parse_data, status_error, FORM, USER_AGENT};

const API_BODY_LIMIT: usize = 64 << 20;

#[derive(Clone)]
struct Ticket {
    ticket: String,
    csrf: String,
    obtained: Instant,
}

/// A logged-in client of one server. Cheap to share (`Arc`); API calls reuse one
/// keep-alive connection, sessions get their own.
pub struct HttpClient {
    options: ConnectOptions,
    ticket: tokio::sync::Mutex<Option<Ticket>>,
    idle: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

type Tls = TlsStream<TcpStream>;

impl HttpClient {
    pub fn new(options: ConnectOptions) -> Self {
        HttpClient {
            options,
            ticket: tokio::sync::Mutex::new(None),
            idle: Mutex::new(None),
        }
    }

    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    fn server(&self) -> String {
        self.options.server()
    }

    /// TCP (with the official client's socket options) and the TLS handshake.
    async fn connect_tls(&self) -> Result<Tls, RemoteError> {
        let server = self.server();
        let timeout = self.options.connect_timeout;
        let target = (self.options.bare_host().to_string(), self.options.port);
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => {
                return Err(RemoteError::Unreachable {
                    server,
                    message: err.to_string(),
                })
            }
            Err(_) => {
                return Err(RemoteError::Timeout {
                    what: format!("connecting to {server}"),
                    after: timeout,
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        set_keepalive(&tcp);
        let (config, problem) = tls::client_config(&server, self.options.fingerprint)?;
        let name = rustls::pki_types::ServerName::try_from(self.options.bare_host().to_string())
            .map_err(|err| RemoteError::Tls {
                server: server.clone(),
                message: format!("invalid host name: {err}"),
            })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(err)) => {
                Err(problem
                    .lock()
                    .unwrap()
                    .take()
                    .unwrap_or_else(|| RemoteError::Tls {
                        server,
                        message: err.to_string(),
                    }))
            }
            Err(_) => Err(RemoteError::Timeout {
                what: format!("TLS handshake with {server}"),
                after: timeout,
            }),
        }
    }

    async fn new_http1(&self) -> Result<SendRequest<Full<Bytes>>, RemoteError> {
        let tls = self.connect_tls().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|err| self.lost(err))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok(sender)
    }

    fn lost(&self, err: impl std::fmt::Display) -> RemoteError {
        RemoteError::ConnectionLost {
            server: self.server(),
            message: err.to_string(),
        }
    }

    /// Authentication headers for the next request; logs in or renews the ticket as needed.
    async fn auth_headers(&self) -> Result<HeaderMap, RemoteError> {
        let mut headers = HeaderMap::new();
        if self.options.is_token() {
            let value = format!(
                "PBSAPIToken={}:{}",
                self.options.auth_id,
                encode_component(self.options.secret.expose())
            );
            headers.insert(http::header::AUTHORIZATION, header_value(&value)?);
            return Ok(headers);
        }
        let mut slot = self.ticket.lock().await;
        let fresh = match slot.as_ref() {
            Some(t) if t.obtained.elapsed() < self.options.ticket_renew_after => t.clone(),
            Some(t) => match self.login(&t.ticket).await {
                Ok(renewed) => renewed,
                // A renewal can fail if the ticket expired meanwhile; the password still works.
                Err(_) => self.login(self.options.secret.expose()).await?,
            },
            None => self.login(self.options.secret.expose()).await?,
        };
        *slot = Some(fresh.clone());
        headers.insert(
            http::header::COOKIE,
            header_value(&format!("PBSAuthCookie={}", fresh.ticket))?,
        );
        headers.insert("csrfpreventiontoken", header_value(&fresh.csrf)?);
        Ok(headers)
    }

    /// `POST /api2/json/access/ticket` with a JSON body, as the official client sends it.
    async fn login(&self, password: &str) -> Result<Ticket, RemoteError> {
        let body = serde_json::json!({"password": password, "username": self.options.auth_id});
        let request = base_request(Method::POST, "/api2/json/access/ticket", &self.options)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let (status, raw) = self.send(request).await?;
        if !status.is_success() {
            return Err(status_error(
                status,
                &raw,
                &self.server(),
                &self.options.auth_id,
            ));
        }
        let data = parse_data(&raw, &self.server())?;
        let field = |name: &str| data.get(name).and_then(Value::as_str).map(str::to_string);
        let (Some(ticket), Some(csrf)) = (field("ticket"), field("CSRFPreventionToken")) else {
            return Err(RemoteError::Protocol {
                server: self.server(),
                message: "login answer without ticket".into(),
            });
        };
        if ticket.starts_with("PBS:!tfa!") || csrf == "invalid" {
            return Err(RemoteError::AuthenticationFailed {
                server: self.server(),
                auth_id: self.options.auth_id.clone(),
                message: "the user needs a second factor; use an API token instead".into(),
            });
        }
        Ok(Ticket {
            ticket,
            csrf,
            obtained: Instant::now(),
        })
    }

    /// Sends on the keep-alive connection (or a new one) and reads the whole body.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), RemoteError> {
        let timeout = self.options.request_timeout;
        let what = format!("{} {}", request.method(), request.uri().path());
        let exchange = async {
            let idle = self.idle.lock().unwrap().take();
            if let Some(sender) = idle.filter(|s| s.is_ready()) {
                // The server may have closed an idle keep-alive connection meanwhile: then
                // the request is sent again on a new one.
                match self.exchange(sender, clone_request(&request)).await {
                    Err(err) if err.is_connection_error() => {}
                    result => return result,
                }
            }
            let sender = self.new_http1().await?;
            self.exchange(sender, request).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::Timeout {
                what: format!("{what} on {}", self.server()),
                after: timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), RemoteError> {
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| self.lost(err))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), API_BODY_LIMIT)
            .collect()
            .await
            .map_err(|err| self.lost(err))?
            .to_bytes();
        if sender.is_ready() {
            *self.idle.lock().unwrap() = Some(sender);
        }
        Ok((status, body))
    }

    /// A GET of an API path (`/api2/json/...`) with query parameters; returns the raw body of
    /// a 2xx answer.
    pub async fn get_raw(&self, path: &str, query: &str) -> Result<Bytes, RemoteError> {
        let uri = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        let request = self.authed_get(&uri, &[]).await?;
        let (status, body) = self.send(request).await?;
        if !status.is_success() {
            return Err(status_error(
                status,
                &body,
                &self.server(),
                &self.options.auth_id,
            ));
        }
        Ok(body)
    }

    /// An API call with another method (admin changes): parameters go into a JSON body for
    /// POST and into the query otherwise, as the official client sends them. Returns `data`.
    pub async fn call_json(
        &self,
        method: Method,
        path: &str,
        params: &Value,
    ) -> Result<Value, RemoteError> {
        if method == Method::POST {
            let body = Bytes::from(params.to_string());
            self.send_call(method, path.to_string(), "application/json", body)
                .await
        } else {
            let uri = with_query(path, params);
            self.send_call(method, uri, FORM, Bytes::new()).await
        }
    }

    /// A POST of raw bytes (an upload such as the client log), parameters in the query as
    /// the official client sends them. Returns `data`.
    pub async fn post_octets(
        &self,
        path: &str,
        params: &Value,
        body: Bytes,
    ) -> Result<Value, RemoteError> {
        let uri = with_query(path, params);
        self.send_call(Method::POST, uri, "application/octet-stream", body)
            .await
    }

    async fn send_call(
        &self,
        method: Method,
        uri: String,
        content_type: &str,
        body: Bytes,
    ) -> Result<Value, RemoteError> {
        let mut builder = base_request(method, &uri, &self.options)
            .header(http::header::CONTENT_TYPE, content_type);
        for (name, value) in self.auth_headers().await?.iter() {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|err| RemoteError::Protocol {
                server: self.server(),
                message: format!("bad request {uri}: {err}"),
            })?;
        let (status, raw) = self.send(request).await?;
        if !status.is_success() {
            return Err(status_error(
                status,
                &raw,
                &self.server(),
                &self.options.auth_id,
            ));
        }
        parse_data(&raw, &self.server())
    }

    /// A bodiless, authenticated GET of `uri` with `extra` headers.
    async fn authed_get(
        &self,
        uri: &str,
        extra: &[(http::header::HeaderName, &str)],
    ) -> Result<Request<Full<Bytes>>, RemoteError> {
        let mut builder =
            base_request(Method::GET, uri, &self.options).header(http::header::CONTENT_TYPE, FORM);
        for (name, value) in extra {
            builder = builder.header(name, *value);
        }
        for (name, value) in self.auth_headers().await?.iter() {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(Bytes::new()))
            .map_err(|err| RemoteError::Protocol {
                server: self.server(),
                message: format!("bad request {uri}: {err}"),
            })
    }

    /// A GET of a JSON API path; returns `data`.
    pub async fn get_json(&self, path: &str, query: &str) -> Result<Value, RemoteError> {
        let raw = self.get_raw(path, query).await?;
        parse_data(&raw, &self.server())
    }

    /// Opens a session: `GET path?query` with `Upgrade: protocol` on a new connection, then
    /// HTTP/2 on it.
    pub async fn upgrade(
        &self,
        path: &str,
        query: &str,
        protocol: &'static str,
    ) -> Result<H2Session, RemoteError> {
        let uri = format!("{path}?{query}");
        let request = self
            .authed_get(
                &uri,
                &[
                    (http::header::CONNECTION, "upgrade"),
                    (http::header::UPGRADE, protocol),
                ],
            )
            .await?;
        let timeout = self.options.request_timeout;
        let open = async {
            let mut sender = self.new_http1().await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|err| self.lost(err))?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                let status = response.status();
                let body = Limited::new(response.into_body(), API_BODY_LIMIT)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(status_error(
                    status,
                    &body,
                    &self.server(),
                    &self.options.auth_id,
                ));
            }
            let upgraded = hyper::upgrade::on(response)
                .await
                .map_err(|err| self.lost(err))?;
            H2Session::handshake(TokioIo::new(upgraded), self.server(), timeout).await
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::Timeout {
                what: format!("opening {protocol} on {}", self.server()),
                after: timeout,
            }),
        }
    }
}

/// `path?query` of `params` (just `path` when there are none).
fn with_query(path: &str, params: &Value) -> String {
    let query = super::query::json_to_query(params);
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

fn base_request(method: Method, uri: &str, options: &ConnectOptions) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, options.server())
        .header(http::header::USER_AGENT, USER_AGENT)
}

fn clone_request(request: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

fn header_value(text: &str) -> Result<HeaderValue, RemoteError> {
    HeaderValue::from_str(text).map_err(|_| RemoteError::AuthenticationFailed {
        server: String::new(),
        auth_id: String::new(),
        message: "credentials contain characters not allowed in an HTTP header".into(),
    })
}

/// TCP keepalive after 120 s idle, like the official client (dead peers are noticed).
fn set_keepalive(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let on: libc::c_int = 1;
    let idle: libc::c_int = 120;
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // Best effort: a failure only loses dead-peer detection.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &on as *const _ as *const libc::c_void,
            size,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            &idle as *const _ as *const libc::c_void,
            size,
        );
    }
}
