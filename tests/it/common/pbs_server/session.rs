//! The upgrade to an HTTP/2 session (reader or backup protocol) and what both protocols
//! share: answers, bodies, parameters, snapshot files.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::backup::BackupState;
use super::http1::*;
use super::reader::ReaderState;
use super::state::*;
use super::READER_PROTOCOL;
use pbsfs::format::index::AnyIndex;
use pbsfs::format::{digest_from_hex, Digest};
use pbsfs::store::archive::ArchiveKind;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{is_safe_id, BackupDir, BackupNamespace};

pub(super) async fn upgrade(
    state: Arc<State>,
    mut req: Request<Incoming>,
    params: HashMap<String, String>,
    auth_id: String,
    protocol: &'static str,
) -> HttpResponse {
    if req.version() != http::Version::HTTP_11 {
        return error(StatusCode::BAD_REQUEST, "unexpected http version");
    }
    if req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        != Some(protocol)
    {
        return error(StatusCode::BAD_REQUEST, "invalid protocol name");
    }
    if params.get("store") != Some(&state.config.store_name) {
        return error(
            StatusCode::BAD_REQUEST,
            "datastore does not exist or is not available",
        );
    }
    let ns = match param_ns(&params, "ns") {
        Ok(ns) => ns,
        Err(message) => return text_response(StatusCode::BAD_REQUEST, None, &message),
    };
    let dir = match param_dir(&params) {
        Ok(dir) => dir,
        Err(message) => return text_response(StatusCode::BAD_REQUEST, None, &message),
    };
    let session: Session = if protocol == READER_PROTOCOL {
        if !state.store.snapshot_path(&ns, &dir).is_dir() {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("snapshot {dir} does not exist."),
            );
        }
        Session::Reader(Arc::new(ReaderState {
            state: state.clone(),
            ns,
            dir,
            allowed: Mutex::new(HashSet::new()),
        }))
    } else {
        match BackupState::begin(state.clone(), ns, dir, &auth_id) {
            Ok(backup) => Session::Backup(Arc::new(backup)),
            Err((status, message)) => return error(status, &message),
        }
    };
    state.counters.upgrades.fetch_add(1, Ordering::SeqCst);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut kill = state.kill.subscribe();
    tokio::spawn(async move {
        let run = async {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let Ok(mut connection) = h2::server::Builder::new()
                .max_concurrent_streams(200)
                .initial_window_size(32 * 1024 * 1024)
                .initial_connection_window_size(32 * 1024 * 1024)
                .max_frame_size(4 * 1024 * 1024)
                .max_header_list_size(16384)
                .handshake::<_, Bytes>(TokioIo::new(upgraded))
                .await
            else {
                return;
            };
            while let Some(Ok((request, respond))) = connection.accept().await {
                let session = session.clone();
                tokio::spawn(async move {
                    let reply = match &session {
                        Session::Reader(reader) => reader.handle(request).await,
                        Session::Backup(backup) => backup.handle(request).await,
                    };
                    reply.send(respond).await;
                });
            }
        };
        tokio::select! {
            _ = run => {}
            _ = kill.changed() => {}
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, protocol)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[derive(Clone)]
pub(super) enum Session {
    Reader(Arc<ReaderState>),
    Backup(Arc<BackupState>),
}

// ---------------------------------------------------------------------------------------
// HTTP/2 session plumbing

/// A session answer: status, content type, body, and whether to stream it (no
/// content-length, then an empty END_STREAM frame, like PBS's `/download`).
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) content_type: Option<&'static str>,
    pub(super) body: Bytes,
    pub(super) streamed: bool,
}

impl Reply {
    pub(super) fn data(value: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: Some(JSON_TYPE),
            body: Bytes::from(json!({ "data": value }).to_string()),
            streamed: false,
        }
    }

    pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: Some(JSON_TYPE),
            body: Bytes::from(message.into()),
            streamed: false,
        }
    }

    /// Parameter errors come without a content type.
    pub(super) fn bad_param(message: impl Into<String>) -> Reply {
        Reply {
            content_type: None,
            ..Reply::error(StatusCode::BAD_REQUEST, message)
        }
    }

    pub(super) fn octets(body: Bytes, streamed: bool) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: Some("application/octet-stream"),
            body,
            streamed,
        }
    }

    pub(super) async fn send(self, mut respond: h2::server::SendResponse<Bytes>) {
        let mut builder = Response::builder().status(self.status);
        if let Some(content_type) = self.content_type {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
        }
        if !self.streamed {
            builder = builder.header(http::header::CONTENT_LENGTH, self.body.len());
        }
        let Ok(mut stream) = respond.send_response(builder.body(()).unwrap(), false) else {
            return;
        };
        let mut body = self.body;
        while !body.is_empty() {
            stream.reserve_capacity(body.len());
            let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                _ => return,
            };
            if granted == 0 {
                continue;
            }
            let piece = body.split_to(granted.min(body.len()));
            let last = body.is_empty() && !self.streamed;
            if stream.send_data(piece, last).is_err() {
                return;
            }
            if last {
                return;
            }
        }
        let _ = stream.send_data(Bytes::new(), true);
    }
}

pub(super) async fn read_body(
    request: Request<h2::RecvStream>,
    limit: usize,
) -> Result<Bytes, Reply> {
    let mut body = request.into_body();
    let mut data = BytesMut::new();
    while let Some(piece) = body.data().await {
        let piece = piece.map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e.to_string()))?;
        let _ = body.flow_control().release_capacity(piece.len());
        if data.len() + piece.len() > limit {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "request body too large",
            ));
        }
        data.extend_from_slice(&piece);
    }
    Ok(data.freeze())
}

pub(super) fn session_params<T>(request: &Request<T>) -> Result<HashMap<String, String>, Reply> {
    query_map(request.uri()).ok_or_else(|| Reply::bad_param("unable to parse parameters"))
}

pub(super) fn required<'a>(
    params: &'a HashMap<String, String>,
    name: &str,
) -> Result<&'a str, Reply> {
    params.get(name).map(String::as_str).ok_or_else(|| {
        Reply::bad_param(format!(
            "parameter verification failed - '{name}': parameter is missing and it is not optional."
        ))
    })
}

pub(super) fn required_u64(params: &HashMap<String, String>, name: &str) -> Result<u64, Reply> {
    required(params, name)?.parse().map_err(|_| {
        Reply::bad_param(format!(
            "parameter verification failed - '{name}': expected an integer"
        ))
    })
}

pub(super) fn required_digest(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Digest, Reply> {
    let text = required(params, name)?;
    let valid = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid
        .then(|| digest_from_hex(text))
        .flatten()
        .ok_or_else(|| {
            Reply::bad_param(format!(
                "parameter verification failed - '{name}': value does not match the regex pattern"
            ))
        })
}

pub(super) fn not_found(path: &str) -> Reply {
    Reply::error(StatusCode::NOT_FOUND, format!("Path '{path}' not found."))
}

/// Reads a snapshot file as PBS answers `/download` and `/previous`: a missing index is a
/// 400 with the index open error, a missing blob a 404.
pub(super) fn read_snapshot_file(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    dir: &BackupDir,
    name: &str,
) -> Result<(Bytes, Option<AnyIndex>), Reply> {
    if !is_safe_id(name) {
        return Err(Reply::bad_param(
            "parameter verification failed - 'file-name': value does not match the regex pattern",
        ));
    }
    let path = store.snapshot_path(ns, dir).join(name);
    let kind = ArchiveKind::of(name);
    let raw = std::fs::read(&path).map_err(|e| match kind {
        Some(ArchiveKind::DynamicIndex) => Reply::error(
            StatusCode::BAD_REQUEST,
            format!("Unable to open dynamic index {path:?} - {e}"),
        ),
        Some(ArchiveKind::FixedIndex) => Reply::error(
            StatusCode::BAD_REQUEST,
            format!("Unable to open fixed index {path:?} - {e}"),
        ),
        _ => Reply::error(
            StatusCode::NOT_FOUND,
            format!("open file {path:?} failed - {e}"),
        ),
    })?;
    let index = match kind {
        Some(ArchiveKind::DynamicIndex | ArchiveKind::FixedIndex) => Some(
            AnyIndex::parse(&raw)
                .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, format!("{name}: {e}")))?,
        ),
        _ => None,
    };
    Ok((Bytes::from(raw), index))
}
