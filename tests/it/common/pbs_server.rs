//! A PBS-compatible test server, written from protocol.md and the wire transcripts: HTTPS
//! with a generated self-signed certificate, token and ticket auth (401 after a delay), the
//! admin calls for browsing, and both upgraded HTTP/2 protocols over a local datastore
//! directory. It enforces what PBS enforces (index before chunk, known chunks at append,
//! offsets, counts and checksums at close, manifest at finish) and counts what it serves.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::Digest as _;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use pbsfs::format::blob::{blob_kind, decode_chunk, parse_blob};
use pbsfs::format::index::{AnyIndex, ChunkIndex, DynamicIndex, FixedIndex};
use pbsfs::format::manifest::{CryptMode, FileInfo, Manifest, MANIFEST_BLOB_NAME};
use pbsfs::format::{digest_from_hex, digest_to_hex, Digest};
use pbsfs::remote::query::parse_query;
use pbsfs::store::archive::ArchiveKind;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{is_safe_id, BackupDir, BackupGroup, BackupNamespace, BackupType};
use pbsfs::store::writer::SnapshotWriter;

pub const READER_PROTOCOL: &str = "proxmox-backup-reader-protocol-v1";
pub const BACKUP_PROTOCOL: &str = "proxmox-backup-protocol-v1";
const JSON_TYPE: &str = "application/json;charset=UTF-8";
const FIXED_CHUNK_SIZE: u64 = 4 * 1024 * 1024;
const MAX_CHUNK: u64 = 16 * 1024 * 1024;
const CLEAR_COOKIE: &str =
    "__Host-PBSAuthCookie=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; SameSite=Lax; HttpOnly; Path=/;";

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub store_name: String,
    pub token_id: String,
    pub token_secret: String,
    pub user: String,
    pub password: String,
    /// PBS waits about 3 s before answering 401; tests use less.
    pub auth_fail_delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            store_name: "store1".into(),
            token_id: "root@pam!pbsfs".into(),
            token_secret: "0e4c8e8c-1111-2222-3333-444455556666".into(),
            user: "tester@pbs".into(),
            password: "tester-password".into(),
            auth_fail_delay: Duration::from_millis(300),
        }
    }
}

/// What the server saw, for assertions.
#[derive(Default)]
pub struct Counters {
    pub chunk_reads: AtomicU64,
    pub chunk_uploads: AtomicU64,
    pub upgrades: AtomicU64,
    pub logins: AtomicU64,
    /// Logins that renewed a ticket (the password was a valid ticket).
    pub renewals: AtomicU64,
}

struct State {
    config: ServerConfig,
    store: Arc<LocalDatastore>,
    tickets: Mutex<HashSet<String>>,
    counters: Arc<Counters>,
    kill: watch::Sender<u64>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// `aa:bb:…` of the server certificate.
    pub fingerprint: String,
    pub config: ServerConfig,
    pub counters: Arc<Counters>,
    state: Arc<State>,
    tls: Arc<rustls::ServerConfig>,
    runtime: tokio::runtime::Runtime,
    stop: Option<watch::Sender<bool>>,
}

impl TestServer {
    /// Serves the datastore at `datastore` on a free port of 127.0.0.1.
    pub fn start(datastore: &Path, config: ServerConfig) -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_der = certified.cert.der().clone();
        let fingerprint = sha2::Sha256::digest(cert_der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key)
        .unwrap();
        let counters = Arc::new(Counters::default());
        let state = Arc::new(State {
            config: config.clone(),
            store: Arc::new(LocalDatastore::open(datastore).unwrap()),
            tickets: Mutex::new(HashSet::new()),
            counters: counters.clone(),
            kill: watch::channel(0).0,
        });
        let mut server = TestServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            fingerprint,
            config,
            counters,
            state,
            tls: Arc::new(tls),
            runtime,
            stop: None,
        };
        server.listen();
        server
    }

    fn listen(&mut self) {
        let addr = self.addr;
        let listener = self.runtime.block_on(async {
            let socket = TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(addr).unwrap();
            socket.listen(64).unwrap()
        });
        self.addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        self.stop = Some(stop_tx);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        self.runtime
            .spawn(accept_loop(listener, acceptor, self.state.clone(), stop_rx));
    }

    pub fn store(&self) -> &Arc<LocalDatastore> {
        &self.state.store
    }

    /// Drops every open connection (API and sessions), as a crashing server would.
    pub fn kill_connections(&self) {
        self.state.kill.send_modify(|generation| *generation += 1);
    }

    /// Stops listening and drops every connection.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        self.kill_connections();
        // Let the accept loop notice before the port is reused.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        self.listen();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
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

// ---------------------------------------------------------------------------------------
// HTTP/1.1: login, admin API, upgrades

type HttpResponse = Response<Full<Bytes>>;

fn text_response(status: StatusCode, content_type: Option<&str>, text: &str) -> HttpResponse {
    let mut builder = Response::builder().status(status);
    if let Some(content_type) = content_type {
        builder = builder.header(http::header::CONTENT_TYPE, content_type);
    }
    builder
        .body(Full::new(Bytes::from(text.to_string())))
        .unwrap()
}

fn error(status: StatusCode, text: &str) -> HttpResponse {
    text_response(status, Some(JSON_TYPE), text)
}

fn data_response(data: Value) -> HttpResponse {
    text_response(
        StatusCode::OK,
        Some(JSON_TYPE),
        &json!({ "data": data }).to_string(),
    )
}

async fn unauthorized(state: &State, text: &str, content_type: Option<&str>) -> HttpResponse {
    tokio::time::sleep(state.config.auth_fail_delay).await;
    let mut response = text_response(StatusCode::UNAUTHORIZED, content_type, text);
    response
        .headers_mut()
        .insert(http::header::SET_COOKIE, CLEAR_COOKIE.parse().unwrap());
    response
}

/// The auth-id of a valid token header or ticket cookie.
fn authenticate(state: &State, method: &Method, headers: &HeaderMap) -> Option<String> {
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

fn csrf_for(ticket: &str) -> String {
    let hash = sha2::Sha256::digest(format!("csrf:{ticket}").as_bytes());
    format!("6B06A28C:{}", hex::encode(&hash[..16]))
}

fn query_map(uri: &http::Uri) -> Option<HashMap<String, String>> {
    Some(
        parse_query(uri.query().unwrap_or(""))?
            .into_iter()
            .collect(),
    )
}

async fn handle_http1(state: Arc<State>, req: Request<Incoming>) -> HttpResponse {
    // The official client writes `//api2/json/...` for logins and upgrades.
    let path = format!("/{}", req.uri().path().trim_start_matches('/'));
    if path == "/api2/json/access/ticket" && req.method() == Method::POST {
        return login(&state, req).await;
    }
    let Some(auth_id) = authenticate(&state, req.method(), req.headers()) else {
        return unauthorized(&state, "authentication failed", None).await;
    };
    let Some(params) = query_map(req.uri()) else {
        return text_response(StatusCode::BAD_REQUEST, None, "unable to parse query");
    };
    let admin_prefix = format!("/api2/json/admin/datastore/{}/", state.config.store_name);
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/api2/json/version") => {
            data_response(json!({"version": "4.2.3", "release": "1", "repoid": "pbsfs-test"}))
        }
        (Method::GET, "/api2/json/reader") => {
            upgrade(state, req, params, auth_id, READER_PROTOCOL).await
        }
        (Method::GET, "/api2/json/backup") => {
            upgrade(state, req, params, auth_id, BACKUP_PROTOCOL).await
        }
        (Method::GET, p) if p.starts_with(&admin_prefix) => {
            admin(&state, &p[admin_prefix.len()..], &params)
        }
        (_, p) if p.starts_with("/api2/json/admin/datastore/") => error(
            StatusCode::BAD_REQUEST,
            "datastore does not exist or is not available",
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("Path '{path}' not found.")),
    }
}

async fn login(state: &State, req: Request<Incoming>) -> HttpResponse {
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

fn param_ns(params: &HashMap<String, String>, name: &str) -> Result<BackupNamespace, String> {
    BackupNamespace::parse(params.get(name).map(String::as_str).unwrap_or(""))
        .map_err(|e| format!("parameter verification failed - '{name}': {e}"))
}

fn param_dir(params: &HashMap<String, String>) -> Result<BackupDir, String> {
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

/// BackupContent items: manifest files, the manifest, then other files on disk.
fn snapshot_files(store: &LocalDatastore, ns: &BackupNamespace, dir: &BackupDir) -> Vec<Value> {
    let path = store.snapshot_path(ns, dir);
    let mut listed = Vec::new();
    let mut names_done = HashSet::new();
    if let Ok(raw) = std::fs::read(path.join(MANIFEST_BLOB_NAME)) {
        if let Ok(manifest) = Manifest::from_blob(&raw) {
            for file in &manifest.files {
                listed.push(json!({
                    "filename": file.filename,
                    "crypt-mode": crypt_mode_name(file.crypt_mode),
                    "size": file.size,
                }));
                names_done.insert(file.filename.clone());
            }
            let mode = if manifest.signature.is_some() {
                "sign-only"
            } else {
                "none"
            };
            listed.push(
                json!({"filename": MANIFEST_BLOB_NAME, "crypt-mode": mode, "size": raw.len()}),
            );
            names_done.insert(MANIFEST_BLOB_NAME.to_string());
        }
    }
    let mut others: Vec<String> = std::fs::read_dir(&path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.') && ArchiveKind::of(n).is_some())
                .collect()
        })
        .unwrap_or_default();
    others.sort();
    for name in others {
        if !names_done.contains(&name) {
            listed.push(json!({ "filename": name }));
        }
    }
    listed
}

fn crypt_mode_name(mode: CryptMode) -> &'static str {
    match mode {
        CryptMode::None => "none",
        CryptMode::Encrypt => "encrypt",
        CryptMode::SignOnly => "sign-only",
    }
}

fn admin(state: &State, call: &str, params: &HashMap<String, String>) -> HttpResponse {
    let store = &state.store;
    let result: Result<HttpResponse, String> = (|| match call {
        "namespace" => {
            let parent = param_ns(params, "parent")?;
            let list = store.list_namespaces(&parent).map_err(|e| e.to_string())?;
            Ok(data_response(Value::Array(
                list.iter()
                    .map(|ns| json!({"ns": ns.to_string()}))
                    .collect(),
            )))
        }
        "groups" => {
            let ns = param_ns(params, "ns")?;
            let mut out = Vec::new();
            for group in store.list_groups(&ns).map_err(|e| e.to_string())? {
                let snapshots = store
                    .list_group_snapshots(&ns, &group)
                    .map_err(|e| e.to_string())?;
                let last = snapshots
                    .iter()
                    .rev()
                    .find(|s| s.finished)
                    .or(snapshots.last());
                let files: Vec<String> = last
                    .map(|s| {
                        snapshot_files(store, &ns, &s.dir)
                            .iter()
                            .filter_map(|f| f["filename"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(json!({
                    "backup-count": snapshots.len(),
                    "backup-id": group.backup_id,
                    "backup-type": group.backup_type.as_str(),
                    "files": files,
                    "last-backup": last.map(|s| s.dir.time).unwrap_or(0),
                    "owner": store.group_owner(&ns, &group).ok(),
                }));
            }
            // PBS does not sort; neither do we (reverse, to make sure clients sort).
            out.reverse();
            Ok(data_response(Value::Array(out)))
        }
        "snapshots" => {
            let ns = param_ns(params, "ns")?;
            let group = match (params.get("backup-type"), params.get("backup-id")) {
                (Some(t), Some(id)) => Some(
                    BackupGroup::new(BackupType::parse(t).map_err(|e| e.to_string())?, id)
                        .map_err(|e| e.to_string())?,
                ),
                _ => None,
            };
            let mut out = Vec::new();
            for entry in store
                .list_snapshots(&ns, group.as_ref())
                .map_err(|e| e.to_string())?
            {
                let files = snapshot_files(store, &ns, &entry.dir);
                // Like PBS: no size where the manifest cannot be read.
                let size = entry
                    .is_readable()
                    .then(|| files.iter().filter_map(|f| f["size"].as_u64()).sum::<u64>());
                out.push(json!({
                    "backup-type": entry.dir.group.backup_type.as_str(),
                    "backup-id": entry.dir.group.backup_id,
                    "backup-time": entry.dir.time,
                    "files": files,
                    "size": size,
                    "owner": store.group_owner(&ns, &entry.dir.group).ok(),
                    "protected": entry.protected,
                }));
            }
            out.reverse();
            Ok(data_response(Value::Array(out)))
        }
        "files" => {
            let ns = param_ns(params, "ns")?;
            let dir = param_dir(params)?;
            if !store
                .snapshot_path(&ns, &dir)
                .join(MANIFEST_BLOB_NAME)
                .is_file()
            {
                return Err("ENOENT: No such file or directory".into());
            }
            Ok(data_response(Value::Array(snapshot_files(
                store, &ns, &dir,
            ))))
        }
        "download" => {
            let ns = param_ns(params, "ns")?;
            let dir = param_dir(params)?;
            let name = params.get("file-name").cloned().unwrap_or_default();
            if !is_safe_id(&name) {
                return Err(format!("invalid file name '{name}'"));
            }
            let raw = std::fs::read(store.snapshot_path(&ns, &dir).join(&name))
                .map_err(|e| format!("unable to open file - {e}"))?;
            Ok(Response::builder()
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(Bytes::from(raw)))
                .unwrap())
        }
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            &format!(
                "Path '/api2/json/admin/datastore/{}/{call}' not found.",
                state.config.store_name
            ),
        )),
    })();
    result.unwrap_or_else(|message| error(StatusCode::BAD_REQUEST, &message))
}

async fn upgrade(
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
enum Session {
    Reader(Arc<ReaderState>),
    Backup(Arc<BackupState>),
}

// ---------------------------------------------------------------------------------------
// HTTP/2 session plumbing

/// A session answer: status, content type, body, and whether to stream it (no
/// content-length, then an empty END_STREAM frame, like PBS's `/download`).
struct Reply {
    status: StatusCode,
    content_type: Option<&'static str>,
    body: Bytes,
    streamed: bool,
}

impl Reply {
    fn data(value: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: Some(JSON_TYPE),
            body: Bytes::from(json!({ "data": value }).to_string()),
            streamed: false,
        }
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: Some(JSON_TYPE),
            body: Bytes::from(message.into()),
            streamed: false,
        }
    }

    /// Parameter errors come without a content type.
    fn bad_param(message: impl Into<String>) -> Reply {
        Reply {
            content_type: None,
            ..Reply::error(StatusCode::BAD_REQUEST, message)
        }
    }

    fn octets(body: Bytes, streamed: bool) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: Some("application/octet-stream"),
            body,
            streamed,
        }
    }

    async fn send(self, mut respond: h2::server::SendResponse<Bytes>) {
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

async fn read_body(request: Request<h2::RecvStream>, limit: usize) -> Result<Bytes, Reply> {
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

fn session_params<T>(request: &Request<T>) -> Result<HashMap<String, String>, Reply> {
    query_map(request.uri()).ok_or_else(|| Reply::bad_param("unable to parse parameters"))
}

fn required<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Reply> {
    params.get(name).map(String::as_str).ok_or_else(|| {
        Reply::bad_param(format!(
            "parameter verification failed - '{name}': parameter is missing and it is not optional."
        ))
    })
}

fn required_u64(params: &HashMap<String, String>, name: &str) -> Result<u64, Reply> {
    required(params, name)?.parse().map_err(|_| {
        Reply::bad_param(format!(
            "parameter verification failed - '{name}': expected an integer"
        ))
    })
}

fn required_digest(params: &HashMap<String, String>, name: &str) -> Result<Digest, Reply> {
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

fn not_found(path: &str) -> Reply {
    Reply::error(StatusCode::NOT_FOUND, format!("Path '{path}' not found."))
}

/// Reads a snapshot file as PBS answers `/download` and `/previous`: a missing index is a
/// 400 with the index open error, a missing blob a 404.
fn read_snapshot_file(
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

// ---------------------------------------------------------------------------------------
// Reader protocol

struct ReaderState {
    state: Arc<State>,
    ns: BackupNamespace,
    dir: BackupDir,
    /// Chunks of the indexes downloaded in this session.
    allowed: Mutex<HashSet<Digest>>,
}

impl ReaderState {
    async fn handle(&self, request: Request<h2::RecvStream>) -> Reply {
        let path = request.uri().path().to_string();
        let params = match session_params(&request) {
            Ok(params) => params,
            Err(reply) => return reply,
        };
        let result = match (request.method().clone(), path.as_str()) {
            (Method::GET, "/download") => self.download(&params),
            (Method::GET, "/chunk") => self.chunk(&params).await,
            (Method::GET, "/speedtest") => {
                Ok(Reply::octets(Bytes::from(vec![b'A'; 1 << 20]), false))
            }
            _ => Err(not_found(&path)),
        };
        result.unwrap_or_else(|reply| reply)
    }

    fn download(&self, params: &HashMap<String, String>) -> Result<Reply, Reply> {
        let name = required(params, "file-name")?;
        let (raw, index) = read_snapshot_file(&self.state.store, &self.ns, &self.dir, name)?;
        if let Some(index) = index {
            self.allowed
                .lock()
                .unwrap()
                .extend(index.digests().iter().copied());
        }
        Ok(Reply::octets(raw, true))
    }

    async fn chunk(&self, params: &HashMap<String, String>) -> Result<Reply, Reply> {
        let digest = required_digest(params, "digest")?;
        if !self.allowed.lock().unwrap().contains(&digest) {
            tokio::time::sleep(self.state.config.auth_fail_delay).await;
            return Err(Reply::error(
                StatusCode::UNAUTHORIZED,
                format!("download chunk {} not allowed", digest_to_hex(&digest)),
            ));
        }
        self.state
            .counters
            .chunk_reads
            .fetch_add(1, Ordering::SeqCst);
        let raw = std::fs::read(self.state.store.chunk_path(&digest)).map_err(|e| {
            Reply::error(
                StatusCode::BAD_REQUEST,
                format!(
                    "reading file {:?} failed: {e}",
                    self.state.store.chunk_path(&digest)
                ),
            )
        })?;
        Ok(Reply::octets(Bytes::from(raw), false))
    }
}

// ---------------------------------------------------------------------------------------
// Backup protocol

#[derive(Clone, Copy, PartialEq, Eq)]
enum WriterKind {
    Dynamic,
    Fixed { size: u64 },
}

struct IndexWriter {
    name: String,
    kind: WriterKind,
    /// Dynamic: (end offset, digest); fixed: (start offset, digest).
    entries: Vec<(u64, Digest)>,
    end: u64,
}

#[derive(Default)]
struct UploadStats {
    count: u64,
    size: u64,
    compressed_size: u64,
    duplicates: u64,
}

struct Backup {
    writer: Option<SnapshotWriter>,
    known: HashMap<Digest, u64>,
    writers: HashMap<u64, IndexWriter>,
    next_wid: u64,
    files: usize,
    manifest: Option<Bytes>,
    stats: UploadStats,
}

struct BackupState {
    state: Arc<State>,
    ns: BackupNamespace,
    dir: BackupDir,
    previous: Option<BackupDir>,
    inner: Mutex<Backup>,
}

impl BackupState {
    fn begin(
        state: Arc<State>,
        ns: BackupNamespace,
        dir: BackupDir,
        auth_id: &str,
    ) -> Result<BackupState, (StatusCode, String)> {
        let store = &state.store;
        if !store.namespace_exists(&ns) {
            return Err((StatusCode::NOT_FOUND, "namespace not found".into()));
        }
        if let Ok(owner) = store.group_owner(&ns, &dir.group) {
            let user = auth_id.split('!').next().unwrap_or(auth_id);
            let owner_user = owner.split('!').next().unwrap_or(&owner);
            if owner != auth_id && !(owner.contains('!') && owner_user == user) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("backup owner check failed ({auth_id} != {owner})"),
                ));
            }
        }
        let previous = store
            .list_group_snapshots(&ns, &dir.group)
            .unwrap_or_default()
            .into_iter()
            .rfind(|s| s.finished)
            .filter(|s| {
                store
                    .read_manifest(&ns, &s.dir)
                    .map(|m| m.unprotected["verify_state"]["state"] != "failed")
                    .unwrap_or(false)
            })
            .map(|s| s.dir);
        if let Some(previous) = &previous {
            if dir.time <= previous.time {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "backup timestamp is older than last backup.".into(),
                ));
            }
        }
        let writer = SnapshotWriter::begin(store.clone(), &ns, &dir, auth_id)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e:#}")))?;
        Ok(BackupState {
            state,
            ns,
            dir,
            previous,
            inner: Mutex::new(Backup {
                writer: Some(writer),
                known: HashMap::new(),
                writers: HashMap::new(),
                next_wid: 1,
                files: 0,
                manifest: None,
                stats: UploadStats::default(),
            }),
        })
    }

    async fn handle(&self, request: Request<h2::RecvStream>) -> Reply {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        let params = match session_params(&request) {
            Ok(params) => params,
            Err(reply) => return reply,
        };
        if self.inner.lock().unwrap().writer.is_none() {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "backup already marked as finished.",
            );
        }
        let result = match (method, path.as_str()) {
            (Method::GET, "/previous_backup_time") => {
                Ok(Reply::data(json!(self.previous.as_ref().map(|d| d.time))))
            }
            (Method::GET, "/previous") => self.previous_file(&params),
            (Method::POST, "/dynamic_index") => self.create_index(&params, false),
            (Method::POST, "/fixed_index") => self.create_index(&params, true),
            (Method::POST, "/dynamic_chunk") => self.upload_chunk(request, &params, false).await,
            (Method::POST, "/fixed_chunk") => self.upload_chunk(request, &params, true).await,
            (Method::PUT, "/dynamic_index") => self.append(request, false).await,
            (Method::PUT, "/fixed_index") => self.append(request, true).await,
            (Method::POST, "/dynamic_close") => self.close(&params, false),
            (Method::POST, "/fixed_close") => self.close(&params, true),
            (Method::POST, "/blob") => self.upload_blob(request, &params).await,
            (Method::POST, "/finish") => self.finish(),
            _ => Err(not_found(&path)),
        };
        result.unwrap_or_else(|reply| reply)
    }

    fn previous_file(&self, params: &HashMap<String, String>) -> Result<Reply, Reply> {
        let name = required(params, "archive-name")?;
        let Some(previous) = &self.previous else {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "no valid previous backup",
            ));
        };
        let (raw, index) = read_snapshot_file(&self.state.store, &self.ns, previous, name)?;
        if let Some(index) = index {
            let mut inner = self.inner.lock().unwrap();
            for i in 0..index.chunk_count() {
                let info = index.chunk_info(i).expect("in range");
                inner.known.insert(info.digest, info.len());
            }
        }
        Ok(Reply::octets(raw, true))
    }

    fn create_index(&self, params: &HashMap<String, String>, fixed: bool) -> Result<Reply, Reply> {
        let name = required(params, "archive-name")?;
        let suffix = if fixed { ".fidx" } else { ".didx" };
        if !is_safe_id(name) || !name.ends_with(suffix) {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "wrong archive extension",
            ));
        }
        let kind = if fixed {
            if params.contains_key("reuse-csum") {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "reuse-csum is not supported by the test server",
                ));
            }
            WriterKind::Fixed {
                size: required_u64(params, "size")?,
            }
        } else {
            WriterKind::Dynamic
        };
        let mut inner = self.inner.lock().unwrap();
        if inner.next_wid > 256 {
            return Err(Reply::error(StatusCode::BAD_REQUEST, "too many writers"));
        }
        if inner.writers.values().any(|w| w.name == name) {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                format!("duplicate archive {name}"),
            ));
        }
        let wid = inner.next_wid;
        inner.next_wid += 1;
        inner.writers.insert(
            wid,
            IndexWriter {
                name: name.to_string(),
                kind,
                entries: Vec::new(),
                end: 0,
            },
        );
        Ok(Reply::data(json!(wid)))
    }

    async fn upload_chunk(
        &self,
        request: Request<h2::RecvStream>,
        params: &HashMap<String, String>,
        fixed: bool,
    ) -> Result<Reply, Reply> {
        let wid = required_u64(params, "wid")?;
        let digest = required_digest(params, "digest")?;
        let size = required_u64(params, "size")?;
        let encoded_size = required_u64(params, "encoded-size")?;
        if !(1..=MAX_CHUNK).contains(&size) || !(13..=MAX_CHUNK + 44).contains(&encoded_size) {
            return Err(Reply::bad_param(
                "parameter verification failed - 'size': out of range",
            ));
        }
        {
            let inner = self.inner.lock().unwrap();
            match inner.writers.get(&wid) {
                Some(w) if matches!(w.kind, WriterKind::Fixed { .. }) == fixed => {}
                _ => {
                    return Err(Reply::error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "{} writer '{wid}' not registered",
                            if fixed { "fixed" } else { "dynamic" }
                        ),
                    ))
                }
            }
        }
        if fixed && size > FIXED_CHUNK_SIZE {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "fixed chunk too large",
            ));
        }
        let raw = read_body(request, encoded_size as usize).await?;
        if raw.len() as u64 != encoded_size {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                format!(
                    "got blob with unexpected length ({encoded_size} != {})",
                    raw.len()
                ),
            ));
        }
        // Verifying (decompress and hash) and writing block: off the runtime's threads, so
        // the connection keeps receiving the next chunks meanwhile.
        let store = self.state.store.clone();
        let new = tokio::task::spawn_blocking(move || -> Result<bool, Reply> {
            let kind = blob_kind(&raw)
                .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e.to_string()))?;
            if kind.is_encrypted() {
                parse_blob(&raw)
                    .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e.to_string()))?;
            } else {
                decode_chunk(&raw, &digest, Some(size)).map_err(|e| {
                    Reply::error(
                        StatusCode::BAD_REQUEST,
                        format!("chunk verification failed: {e}"),
                    )
                })?;
            }
            store
                .insert_chunk(&digest, &raw)
                .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, format!("{e:#}")))
        })
        .await
        .map_err(|e| Reply::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        self.state
            .counters
            .chunk_uploads
            .fetch_add(1, Ordering::SeqCst);
        let mut inner = self.inner.lock().unwrap();
        inner.known.insert(digest, size);
        inner.stats.count += 1;
        inner.stats.size += size;
        inner.stats.compressed_size += encoded_size;
        if !new {
            inner.stats.duplicates += 1;
        }
        Ok(Reply::data(json!(digest_to_hex(&digest))))
    }

    async fn append(&self, request: Request<h2::RecvStream>, fixed: bool) -> Result<Reply, Reply> {
        let body = read_body(request, 512 * 1024).await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
        let wid = value["wid"]
            .as_u64()
            .ok_or_else(|| Reply::bad_param("parameter verification failed - 'wid': missing"))?;
        let digests: Vec<&str> = value["digest-list"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let offsets: Vec<u64> = value["offset-list"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        if digests.len() != offsets.len() {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "offset and digest lists differ in length",
            ));
        }
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        let writer = match inner.writers.get_mut(&wid) {
            Some(w) if matches!(w.kind, WriterKind::Fixed { .. }) == fixed => w,
            _ => {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    format!("writer '{wid}' not registered"),
                ))
            }
        };
        for (hex, &offset) in digests.iter().zip(&offsets) {
            let digest = digest_from_hex(hex)
                .ok_or_else(|| Reply::bad_param("parameter verification failed - 'digest-list'"))?;
            let Some(&len) = inner.known.get(&digest) else {
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    format!("no such chunk {hex}"),
                ));
            };
            match writer.kind {
                WriterKind::Dynamic => {
                    if offset != writer.end {
                        return Err(Reply::error(
                            StatusCode::BAD_REQUEST,
                            format!("dynamic writer '{}' append chunk failed - unexpected offset {offset} (expected {})", writer.name, writer.end),
                        ));
                    }
                    writer.end += len;
                    writer.entries.push((writer.end, digest));
                }
                WriterKind::Fixed { size } => {
                    let index = writer.entries.len() as u64;
                    let end = offset + len;
                    let is_last = end == size;
                    if offset != index * FIXED_CHUNK_SIZE
                        || end > size
                        || (len != FIXED_CHUNK_SIZE && !is_last)
                    {
                        return Err(Reply::error(
                            StatusCode::BAD_REQUEST,
                            format!("fixed writer '{}' append chunk failed - bad chunk at offset {offset} (length {len})", writer.name),
                        ));
                    }
                    writer.end = end;
                    writer.entries.push((offset, digest));
                }
            }
        }
        Ok(Reply::data(Value::Null))
    }

    fn close(&self, params: &HashMap<String, String>, fixed: bool) -> Result<Reply, Reply> {
        let wid = required_u64(params, "wid")?;
        let count = required_u64(params, "chunk-count")?;
        let size = required_u64(params, "size")?;
        let csum = required_digest(params, "csum")?;
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        let Some(writer) = inner.writers.get(&wid) else {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                format!("writer '{wid}' not registered"),
            ));
        };
        let what = if fixed { "fixed" } else { "dynamic" };
        let fail = |message: String| {
            Reply::error(
                StatusCode::BAD_REQUEST,
                format!("{what} writer '{}' close failed - {message}", writer.name),
            )
        };
        if matches!(writer.kind, WriterKind::Fixed { .. }) != fixed {
            return Err(fail("wrong writer kind".into()));
        }
        if count != writer.entries.len() as u64 {
            return Err(fail(format!(
                "unexpected chunk count ({count} != {})",
                writer.entries.len()
            )));
        }
        if !fixed && count == 0 {
            return Err(fail("empty index".into()));
        }
        if size != writer.end {
            return Err(fail(format!("unexpected size ({size} != {})", writer.end)));
        }
        let index = match writer.kind {
            WriterKind::Dynamic => AnyIndex::Dynamic(
                DynamicIndex::from_entries(writer.entries.clone())
                    .map_err(|e| fail(e.to_string()))?,
            ),
            WriterKind::Fixed { size: total } => {
                if size != total {
                    return Err(fail(format!("unexpected size ({size} != {total})")));
                }
                let digests = writer.entries.iter().map(|(_, d)| *d).collect();
                AnyIndex::Fixed(
                    FixedIndex::new(total, FIXED_CHUNK_SIZE, digests)
                        .map_err(|e| fail(e.to_string()))?,
                )
            }
        };
        let computed = index.compute_csum();
        if computed != csum {
            return Err(fail(format!(
                "checksum mismatch ({} != {})",
                digest_to_hex(&csum),
                digest_to_hex(&computed)
            )));
        }
        let name = writer.name.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let bytes = index.to_bytes(*uuid::Uuid::new_v4().as_bytes(), now);
        let snapshot = inner.writer.as_mut().expect("checked in handle");
        let mut write = || -> anyhow::Result<()> {
            use std::io::Write;
            let mut pending = snapshot.create_file(&name)?;
            pending.file.write_all(&bytes)?;
            snapshot.commit_file(
                pending,
                FileInfo {
                    filename: name.clone(),
                    crypt_mode: CryptMode::None,
                    size,
                    csum,
                },
            )
        };
        write().map_err(|e| fail(format!("{e:#}")))?;
        inner.writers.remove(&wid);
        inner.files += 1;
        Ok(Reply::data(Value::Null))
    }

    async fn upload_blob(
        &self,
        request: Request<h2::RecvStream>,
        params: &HashMap<String, String>,
    ) -> Result<Reply, Reply> {
        let name = required(params, "file-name")?.to_string();
        let encoded_size = required_u64(params, "encoded-size")?;
        if !is_safe_id(&name) || !name.ends_with(".blob") {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "wrong blob file extension",
            ));
        }
        if !(12..=MAX_CHUNK + 44).contains(&encoded_size) {
            return Err(Reply::bad_param(
                "parameter verification failed - 'encoded-size': out of range",
            ));
        }
        let raw = read_body(request, encoded_size as usize).await?;
        if raw.len() as u64 != encoded_size {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "got blob with unexpected length",
            ));
        }
        parse_blob(&raw).map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e.to_string()))?;
        let mut inner = self.inner.lock().unwrap();
        if name == MANIFEST_BLOB_NAME {
            inner.manifest = Some(raw);
        } else {
            let csum: Digest = sha2::Sha256::digest(&raw).into();
            let info = FileInfo {
                filename: name.clone(),
                crypt_mode: CryptMode::None,
                size: raw.len() as u64,
                csum,
            };
            inner
                .writer
                .as_mut()
                .expect("checked in handle")
                .add_blob(&name, &raw, info)
                .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
        }
        inner.files += 1;
        Ok(Reply::data(Value::Null))
    }

    fn finish(&self) -> Result<Reply, Reply> {
        let mut inner = self.inner.lock().unwrap();
        if !inner.writers.is_empty() {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "found open index writer - unable to finish backup",
            ));
        }
        if inner.files == 0 {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "backup does not contain valid files (file count == 0)",
            ));
        }
        let Some(raw) = inner.manifest.clone() else {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "unable to load manifest - missing index.json.blob",
            ));
        };
        let mut uploaded = Manifest::from_blob(&raw).map_err(|e| {
            Reply::error(
                StatusCode::BAD_REQUEST,
                format!("unable to load manifest - {e}"),
            )
        })?;
        uploaded.unprotected["chunk_upload_stats"] = json!({
            "compressed_size": inner.stats.compressed_size,
            "count": inner.stats.count,
            "duplicates": inner.stats.duplicates,
            "size": inner.stats.size,
        });
        let writer = inner.writer.take().expect("checked in handle");
        writer
            .finish(move |manifest| {
                *manifest = uploaded;
                Ok(())
            })
            .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
        Ok(Reply::data(Value::Null))
    }
}

/// A fresh, empty datastore directory (without the 65536 prefix directories, which the
/// chunk store creates on demand).
pub fn empty_datastore(parent: &Path) -> PathBuf {
    let path = parent.join("datastore");
    std::fs::create_dir_all(path.join(".chunks")).unwrap();
    std::fs::write(path.join(".lock"), b"").unwrap();
    path
}

pub fn fixture_datastore() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/datastore"
    ))
}
