//! The backup protocol: index writers, chunk uploads, appends and closes with the checks
//! PBS makes, blobs, and the finish that writes the manifest last.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use sha2::Digest as _;

use super::session::*;
use super::state::*;
use pbsfs::format::blob::{blob_kind, decode_chunk, parse_blob};
use pbsfs::format::index::{AnyIndex, ChunkIndex, DynamicIndex, FixedIndex};
use pbsfs::format::manifest::{CryptMode, FileInfo, Manifest, MANIFEST_BLOB_NAME};
use pbsfs::format::{digest_from_hex, digest_to_hex, Digest};
use pbsfs::store::names::{is_safe_id, BackupDir, BackupNamespace};
use pbsfs::store::writer::SnapshotWriter;

/// Fixed-index chunks are this big, except the last.
const FIXED_CHUNK_SIZE: u64 = 4 * 1024 * 1024;
const MAX_CHUNK: u64 = 16 * 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum WriterKind {
    Dynamic,
    Fixed { size: u64 },
}

pub(super) struct IndexWriter {
    pub(super) name: String,
    pub(super) kind: WriterKind,
    /// Dynamic: (end offset, digest); fixed: (start offset, digest).
    pub(super) entries: Vec<(u64, Digest)>,
    pub(super) end: u64,
}

#[derive(Default)]
pub(super) struct UploadStats {
    pub(super) count: u64,
    pub(super) size: u64,
    pub(super) compressed_size: u64,
    pub(super) duplicates: u64,
}

pub(super) struct Backup {
    pub(super) writer: Option<SnapshotWriter>,
    pub(super) known: HashMap<Digest, u64>,
    pub(super) writers: HashMap<u64, IndexWriter>,
    pub(super) next_wid: u64,
    pub(super) files: usize,
    pub(super) manifest: Option<Bytes>,
    pub(super) stats: UploadStats,
}

pub(super) struct BackupState {
    pub(super) state: Arc<State>,
    pub(super) ns: BackupNamespace,
    pub(super) dir: BackupDir,
    pub(super) previous: Option<BackupDir>,
    pub(super) inner: Mutex<Backup>,
}

impl BackupState {
    pub(super) fn begin(
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

    pub(super) async fn handle(&self, request: Request<h2::RecvStream>) -> Reply {
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

    pub(super) fn previous_file(&self, params: &HashMap<String, String>) -> Result<Reply, Reply> {
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

    pub(super) fn create_index(
        &self,
        params: &HashMap<String, String>,
        fixed: bool,
    ) -> Result<Reply, Reply> {
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

    pub(super) async fn upload_chunk(
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

    pub(super) async fn append(
        &self,
        request: Request<h2::RecvStream>,
        fixed: bool,
    ) -> Result<Reply, Reply> {
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

    pub(super) fn close(
        &self,
        params: &HashMap<String, String>,
        fixed: bool,
    ) -> Result<Reply, Reply> {
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

    pub(super) async fn upload_blob(
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

    pub(super) fn finish(&self) -> Result<Reply, Reply> {
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
