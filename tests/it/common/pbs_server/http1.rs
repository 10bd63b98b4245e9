//! HTTP/1.1 over TLS: the accept loop, authentication (token, ticket and CSRF), login,
//! and the routing of API calls to the admin API and the protocol upgrades.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::session::upgrade;
use super::state::*;
use super::{admin, manage, tasks};
use super::{BACKUP_PROTOCOL, READER_PROTOCOL};
use pbsfs::remote::query::parse_query;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace, BackupType};

pub(super) const JSON_TYPE: &str = "application/json;charset=UTF-8";
const CLEAR_COOKIE: &str =
    "__Host-PBSAuthCookie=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; SameSite=Lax; HttpOnly; Path=/;";

pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let mut kill = state.kill.subscribe();
        tokio::spawn(async move {
            let serve = async {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service_state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = service_state.clone();
                    async move { Ok::<_, Infallible>(handle_http1(state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            };
            tokio::select! {
                _ = serve => {}
                _ = kill.changed() => {}
            }
        });
    }
}

pub(super) type HttpResponse = Response<Full<Bytes>>;

pub(super) fn text_response(
    status: StatusCode,
    content_type: Option<&str>,
    text: &str,
) -> HttpResponse {
    let mut builder = Response::builder().status(status);
    if let Some(content_type) = content_type {
        builder = builder.header(http::header::CONTENT_TYPE, content_type);
    }
    builder
        .body(Full::new(Bytes::from(text.to_string())))
        .unwrap()
}

pub(super) fn error(status: StatusCode, text: &str) -> HttpResponse {
    text_response(status, Some(JSON_TYPE), text)
}

pub(super) fn data_response(data: Value) -> HttpResponse {
    text_response(
        StatusCode::OK,
        Some(JSON_TYPE),
        &json!({ "data": data }).to_string(),
    )
}

pub(super) async fn unauthorized(
    state: &State,
    text: &str,
    content_type: Option<&str>,
) -> HttpResponse {
    tokio::time::sleep(state.config.auth_fail_delay).await;
    let mut response = text_response(StatusCode::UNAUTHORIZED, content_type, text);
    response
        .headers_mut()
        .insert(http::header::SET_COOKIE, CLEAR_COOKIE.parse().unwrap());
    response
}

/// The auth-id of a valid token header or ticket cookie.
pub(super) fn authenticate(state: &State, method: &Method, headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let rest = value.strip_prefix("PBSAPIToken")?;
        let rest = rest.strip_prefix('=').or_else(|| rest.strip_prefix(' '))?;
        let (id, secret) = rest.rsplit_once(':')?;
        let secret = pbsfs::remote::query::decode_component(secret)?;
        return (id == state.config.token_id && secret == state.config.token_secret)
            .then(|| id.to_string());
    }
    let cookies = headers.get(http::header::COOKIE)?.to_str().ok()?;
    let ticket = cookies.split(';').find_map(|c| {
        let c = c.trim();
        c.strip_prefix("__Host-PBSAuthCookie=")
            .or_else(|| c.strip_prefix("PBSAuthCookie="))
    })?;
    let ticket = pbsfs::remote::query::decode_component(ticket)?;
    if !state.tickets.lock().unwrap().contains(&ticket) {
        return None;
    }
    if method != Method::GET {
        let csrf = headers.get("csrfpreventiontoken")?.to_str().ok()?;
        if csrf != csrf_for(&ticket) {
            return None;
        }
    }
    Some(state.config.user.clone())
}

pub(super) fn csrf_for(ticket: &str) -> String {
    let hash = sha2::Sha256::digest(format!("csrf:{ticket}").as_bytes());
    format!("6B06A28C:{}", hex::encode(&hash[..16]))
}

pub(super) fn query_map(uri: &http::Uri) -> Option<HashMap<String, String>> {
    Some(
        parse_query(uri.query().unwrap_or(""))?
            .into_iter()
            .collect(),
    )
}

pub(super) async fn handle_http1(state: Arc<State>, req: Request<Incoming>) -> HttpResponse {
    // The official client writes `//api2/json/...` for logins and upgrades.
    let path = format!("/{}", req.uri().path().trim_start_matches('/'));
    if path == "/api2/json/access/ticket" && req.method() == Method::POST {
        return login(&state, req).await;
    }
    let Some(auth_id) = authenticate(&state, req.method(), req.headers()) else {
        return unauthorized(&state, "authentication failed", None).await;
    };
    let Some(mut params) = query_map(req.uri()) else {
        return text_response(StatusCode::BAD_REQUEST, None, "unable to parse query");
    };
    let admin_prefix = format!("/api2/json/admin/datastore/{}/", state.config.store_name);
    let method = req.method().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET, "/api2/json/version") => {
            return data_response(
                json!({"version": "4.2.3", "release": "1", "repoid": "pbsfs-test"}),
            )
        }
        (Method::GET, "/api2/json/reader") => {
            return upgrade(state, req, params, auth_id, READER_PROTOCOL).await
        }
        (Method::GET, "/api2/json/backup") => {
            return upgrade(state, req, params, auth_id, BACKUP_PROTOCOL).await
        }
        _ => {}
    }
    // The one call whose body is data, not parameters.
    if method == Method::POST && path == format!("{admin_prefix}upload-backup-log") {
        let body = match Limited::new(req.into_body(), 128 << 20).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "request body too large"),
        };
        return manage::upload_backup_log(&state, &params, &body)
            .unwrap_or_else(|message| error(StatusCode::BAD_REQUEST, &message));
    }
    // Like PBS, parameters may come in the body too (the official client posts JSON).
    if method == Method::POST || method == Method::PUT {
        let (parts, body) = req.into_parts();
        match body_params(&parts.headers, body).await {
            Ok(fields) => params.extend(fields),
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        }
    }
    match (method, path.as_str()) {
        (method, p) if p.starts_with(&admin_prefix) => {
            admin::route(&state, &method, &p[admin_prefix.len()..], &params)
        }
        (_, p) if p.starts_with("/api2/json/admin/datastore/") => error(
            StatusCode::BAD_REQUEST,
            "datastore does not exist or is not available",
        ),
        (Method::GET, p) if p.starts_with(TASKS_PREFIX) => {
            tasks::route(&state.tasks, &p[TASKS_PREFIX.len()..], &params)
        }
        _ => error(StatusCode::NOT_FOUND, &format!("Path '{path}' not found.")),
    }
}

const TASKS_PREFIX: &str = "/api2/json/nodes/localhost/tasks/";

/// The parameters of a request body: a JSON object (values as strings) or a form.
async fn body_params(
    headers: &HeaderMap,
    body: Incoming,
) -> Result<HashMap<String, String>, String> {
    let json_body = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let body = Limited::new(body, 512 * 1024)
        .collect()
        .await
        .map_err(|_| "request body too large".to_string())?
        .to_bytes();
    if body.is_empty() {
        return Ok(HashMap::new());
    }
    if json_body {
        let object: HashMap<String, Value> =
            serde_json::from_slice(&body).map_err(|e| format!("unable to parse body - {e}"))?;
        Ok(object
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(text) => (k, text),
                other => (k, other.to_string()),
            })
            .collect())
    } else {
        let text = std::str::from_utf8(&body).map_err(|_| "body is not UTF-8".to_string())?;
        Ok(parse_query(text)
            .ok_or_else(|| "unable to parse body".to_string())?
            .into_iter()
            .collect())
    }
}

pub(super) async fn login(state: &State, req: Request<Incoming>) -> HttpResponse {
    state.counters.logins.fetch_add(1, Ordering::SeqCst);
    let json_body = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let Ok(body) = Limited::new(req.into_body(), 512 * 1024).collect().await else {
        return error(StatusCode::BAD_REQUEST, "request body too large");
    };
    let body = body.to_bytes();
    let fields: HashMap<String, String> = if json_body {
        serde_json::from_slice::<HashMap<String, Value>>(&body)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect()
    } else {
        parse_query(std::str::from_utf8(&body).unwrap_or(""))
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    let user = fields.get("username").cloned().unwrap_or_default();
    let password = fields.get("password").cloned().unwrap_or_default();
    let renewal = state.tickets.lock().unwrap().contains(&password);
    let valid = user == state.config.user && (password == state.config.password || renewal);
    if !valid {
        return unauthorized(state, "permission check failed.", Some(JSON_TYPE)).await;
    }
    if renewal {
        state.counters.renewals.fetch_add(1, Ordering::SeqCst);
    }
    let ticket = format!("PBS:{user}:6B06A28C::{}", uuid::Uuid::new_v4().simple());
    state.tickets.lock().unwrap().insert(ticket.clone());
    let body = json!({
        "data": {"CSRFPreventionToken": csrf_for(&ticket), "ticket": ticket, "username": user},
        "status": 200, "success": true,
    });
    text_response(StatusCode::OK, Some("application/json"), &body.to_string())
}

pub(super) fn param_ns(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<BackupNamespace, String> {
    BackupNamespace::parse(params.get(name).map(String::as_str).unwrap_or(""))
        .map_err(|e| format!("parameter verification failed - '{name}': {e}"))
}

pub(super) fn param_dir(params: &HashMap<String, String>) -> Result<BackupDir, String> {
    let get = |name: &str| {
        params.get(name).ok_or_else(|| {
            format!("parameter verification failed - '{name}': parameter is missing and it is not optional.")
        })
    };
    let backup_type = BackupType::parse(get("backup-type")?).map_err(|e| e.to_string())?;
    let group = BackupGroup::new(backup_type, get("backup-id")?).map_err(|e| e.to_string())?;
    let time: i64 = get("backup-time")?.parse().map_err(|_| {
        "parameter verification failed - 'backup-time': invalid integer".to_string()
    })?;
    BackupDir::new(group, time).map_err(|e| e.to_string())
}
