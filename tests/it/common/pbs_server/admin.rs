//! The admin API calls for browsing a datastore (namespaces, groups, snapshots, files,
//! download), routed by one table.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::http1::*;
use super::state::*;
use super::{manage, tasks};
use pbsfs::format::manifest::{CryptMode, Manifest, MANIFEST_BLOB_NAME};
use pbsfs::store::archive::ArchiveKind;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{is_safe_id, BackupDir, BackupGroup, BackupNamespace, BackupType};

/// BackupContent items: manifest files, the manifest, then other files on disk.
pub(super) fn snapshot_files(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    dir: &BackupDir,
) -> Vec<Value> {
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

pub(super) fn crypt_mode_name(mode: CryptMode) -> &'static str {
    match mode {
        CryptMode::None => "none",
        CryptMode::Encrypt => "encrypt",
        CryptMode::SignOnly => "sign-only",
    }
}

/// Answers an admin call; `call` is the path after `/api2/json/admin/datastore/STORE/`.
pub(super) fn route(
    state: &State,
    method: &Method,
    call: &str,
    params: &HashMap<String, String>,
) -> HttpResponse {
    let handler = ROUTES
        .iter()
        .find(|(m, c, _)| m == method && *c == call)
        .map(|(_, _, handler)| handler);
    let Some(handler) = handler else {
        return error(
            StatusCode::NOT_FOUND,
            &format!(
                "Path '/api2/json/admin/datastore/{}/{call}' not found.",
                state.config.store_name
            ),
        );
    };
    handler(state, params).unwrap_or_else(|message| error(StatusCode::BAD_REQUEST, &message))
}

/// An admin call: the server and the call's parameters; `Err` is a 400 with that text.
type Handler = fn(&State, &HashMap<String, String>) -> Result<HttpResponse, String>;

/// Every admin call the server answers: a new call is one line here and one function.
static ROUTES: [(Method, &str, Handler); 15] = [
    (Method::GET, "namespace", namespaces),
    (Method::POST, "namespace", manage::create_namespace),
    (Method::DELETE, "namespace", manage::delete_namespace),
    (Method::GET, "groups", groups),
    (Method::GET, "snapshots", snapshots),
    (Method::DELETE, "snapshots", manage::forget),
    (Method::GET, "files", files),
    (Method::GET, "download", download),
    (Method::GET, "protected", manage::get_protected),
    (Method::PUT, "protected", manage::set_protected),
    (Method::GET, "notes", manage::get_notes),
    (Method::PUT, "notes", manage::set_notes),
    (Method::POST, "prune", manage::prune),
    (Method::POST, "gc", start_gc),
    (Method::GET, "gc", gc_status),
];

fn start_gc(state: &State, _: &HashMap<String, String>) -> Result<HttpResponse, String> {
    tasks::start_gc(&state.tasks, &state.store, &state.config.store_name)
}

fn gc_status(state: &State, _: &HashMap<String, String>) -> Result<HttpResponse, String> {
    Ok(tasks::gc_job_status(&state.tasks, &state.config.store_name))
}

fn namespaces(state: &State, params: &HashMap<String, String>) -> Result<HttpResponse, String> {
    let store = &*state.store;
    let parent = param_ns(params, "parent")?;
    let list = store.list_namespaces(&parent).map_err(|e| e.to_string())?;
    Ok(data_response(Value::Array(
        list.iter()
            .map(|ns| json!({"ns": ns.to_string()}))
            .collect(),
    )))
}

fn groups(state: &State, params: &HashMap<String, String>) -> Result<HttpResponse, String> {
    let store = &*state.store;
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

fn snapshots(state: &State, params: &HashMap<String, String>) -> Result<HttpResponse, String> {
    let store = &*state.store;
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
        // PBS: the first line of the notes, for a snapshot whose manifest reads.
        if entry.is_readable() {
            let notes = pbsfs::store::manage::notes(store, &ns, &entry.dir).unwrap_or_default();
            if let Some(comment) = notes.lines().next().filter(|line| !line.is_empty()) {
                out.last_mut().unwrap()["comment"] = json!(comment);
            }
        }
    }
    out.reverse();
    Ok(data_response(Value::Array(out)))
}

fn files(state: &State, params: &HashMap<String, String>) -> Result<HttpResponse, String> {
    let store = &*state.store;
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

fn download(state: &State, params: &HashMap<String, String>) -> Result<HttpResponse, String> {
    let store = &*state.store;
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
