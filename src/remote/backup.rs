//! Backup protocol v1 (protocol.md §8): one HTTP/2 session writes one snapshot.
//!
//! At the start the session learns the previous snapshot (`/previous_backup_time`) and
//! fetches its manifest and indexes through `/previous`, which registers their chunks on the
//! server: those chunks are only referenced, never uploaded again. New chunks are uploaded
//! (`/dynamic_chunk`, many at once from many threads), index entries are appended in stream
//! order in batches once their chunks are known to the server, and each index is closed with
//! its count, size and checksum. The manifest is uploaded last, then `/finish`. A session
//! dropped before `finish` closes the connection, and the server discards the snapshot.
//!
//! The methods mirror the `BackupSession`/`IndexWriter` traits of `src/backup/session.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::client::HttpClient;
use super::error::RemoteError;
use super::query::{encode_query, snapshot_params};
use super::runtime::block_on;
use super::session::H2Session;
use super::wire::{DOWNLOAD_LIMIT, FORM, JSON, OCTETS};
use crate::format::blob::MAX_CHUNK_SIZE;
use crate::format::crypto::Fingerprint;
use crate::format::index::AnyIndex;
use crate::format::manifest::{CryptMode, FileInfo, Manifest, MANIFEST_BLOB_NAME};
use crate::format::{digest_to_hex, Digest};
use crate::store::archive::{check_index, ArchiveKind};
use crate::store::names::{BackupDir, BackupNamespace};

pub const BACKUP_PROTOCOL: &str = "proxmox-backup-protocol-v1";
/// The server's fixed-index chunk size.
pub const FIXED_CHUNK_SIZE: u64 = 4 * 1024 * 1024;
/// Appends are sent once this many entries are ready (as the official client does).
const APPEND_BATCH: usize = 64;
const MAX_WRITERS: usize = 256;

/// What a closed index holds (the manifest's `size` and `csum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteIndexSummary {
    pub size: u64,
    pub csum: Digest,
    pub chunk_count: u64,
}

#[derive(Default)]
struct OpenWriters {
    dynamic: Vec<u64>,
    fixed: Vec<u64>,
}

struct Shared {
    session: H2Session,
    dir: BackupDir,
    /// Chunks the server knows in this session (uploaded, or registered via `/previous`).
    known: Mutex<HashSet<Digest>>,
    /// Uploads in progress; a second thread with the same chunk waits for the first.
    uploading: Mutex<HashMap<Digest, watch::Receiver<Option<bool>>>>,
    open: Mutex<OpenWriters>,
    /// Closed indexes and uploaded blobs, for the manifest.
    files: Mutex<Vec<FileInfo>>,
    writers_created: Mutex<usize>,
}

impl Shared {
    async fn call(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        content_type: &'static str,
        body: Option<Bytes>,
    ) -> Result<Value, RemoteError> {
        let query = encode_query(params);
        let path = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        self.session
            .request_json(method, &path, content_type, body)
            .await
    }
}

/// A snapshot being written on a server.
pub struct RemoteBackupSession {
    shared: Arc<Shared>,
    previous: Option<(BackupDir, Manifest)>,
}

impl RemoteBackupSession {
    /// Opens the session for `dir` (its time must be newer than the group's last snapshot)
    /// and registers the previous snapshot's chunks as known.
    pub(crate) fn start(
        client: &HttpClient,
        store: &str,
        ns: &BackupNamespace,
        dir: &BackupDir,
        chunk_key: Option<&Fingerprint>,
    ) -> Result<Self> {
        let opened = async {
            let mut params = snapshot_params(ns, dir);
            params.push(("store", store.to_string()));
            params.push(("benchmark", "false".to_string()));
            let session = client
                .upgrade("/api2/json/backup", &encode_query(&params), BACKUP_PROTOCOL)
                .await?;
            let shared = Arc::new(Shared {
                session,
                dir: dir.clone(),
                known: Mutex::new(HashSet::new()),
                uploading: Mutex::new(HashMap::new()),
                open: Mutex::new(OpenWriters::default()),
                files: Mutex::new(Vec::new()),
                writers_created: Mutex::new(0),
            });
            let previous_time = shared
                .call(Method::GET, "/previous_backup_time", &[], FORM, None)
                .await?;
            let previous = match previous_time.as_i64() {
                Some(time) => Some(register_previous(&shared, dir, time, chunk_key).await?),
                None => None,
            };
            Ok::<_, anyhow::Error>(RemoteBackupSession { shared, previous })
        };
        block_on(opened)
            .with_context(|| format!("cannot start backup {dir} on {}", client.options().server()))
    }

    /// The snapshot this session writes.
    pub fn snapshot(&self) -> &BackupDir {
        &self.shared.dir
    }

    /// The previous finished snapshot of the group and its manifest, if there is one.
    pub fn previous(&self) -> Option<(&BackupDir, &Manifest)> {
        self.previous
            .as_ref()
            .map(|(dir, manifest)| (dir, manifest))
    }

    /// True if the server knows the chunk in this session (it need not be uploaded).
    pub fn is_known_chunk(&self, digest: &Digest) -> Result<bool> {
        Ok(self.shared.known.lock().unwrap().contains(digest))
    }

    /// Uploads an encoded chunk unless the session already knows it. Returns true if it
    /// was uploaded. An index must be open (the server files uploads under a writer).
    /// Safe to call from many threads at once: each upload is its own HTTP/2 stream.
    pub fn upload_chunk(&self, digest: &Digest, raw_blob: &[u8], plain_size: u64) -> Result<bool> {
        if plain_size == 0 || plain_size > MAX_CHUNK_SIZE as u64 {
            bail!(
                "chunk {} has invalid size {plain_size}",
                digest_to_hex(digest)
            );
        }
        let done = {
            let known = self.shared.known.lock().unwrap();
            if known.contains(digest) {
                return Ok(false);
            }
            let mut uploading = self.shared.uploading.lock().unwrap();
            if let Some(other) = uploading.get(digest) {
                Err(other.clone())
            } else {
                let (done, waiting) = watch::channel(None);
                uploading.insert(*digest, waiting);
                Ok(done)
            }
        };
        let done = match done {
            Ok(done) => done,
            Err(mut other) => {
                // Same chunk in flight from another thread: its upload counts for both.
                let ok = block_on(async { other.wait_for(Option::is_some).await.map(|v| *v) });
                return match ok {
                    Ok(Some(true)) => Ok(false),
                    _ => self.upload_chunk(digest, raw_blob, plain_size),
                };
            }
        };
        let result = self.send_chunk(digest, raw_blob, plain_size);
        if result.is_ok() {
            self.shared.known.lock().unwrap().insert(*digest);
        }
        self.shared.uploading.lock().unwrap().remove(digest);
        let _ = done.send(Some(result.is_ok()));
        result.map(|()| true)
    }

    fn send_chunk(&self, digest: &Digest, raw_blob: &[u8], plain_size: u64) -> Result<()> {
        let body = Bytes::copy_from_slice(raw_blob);
        block_on(self.chunk_sender().send(digest, body, plain_size))
    }

    /// A handle that uploads chunks of this session from async tasks.
    pub(crate) fn chunk_sender(&self) -> ChunkSender {
        ChunkSender(self.shared.clone())
    }

    /// Marks the chunk as known to this session; true if it already was (uploaded,
    /// registered via `/previous`, or claimed by an earlier call). A caller that gets false
    /// must upload it.
    pub(crate) fn claim_chunk(&self, digest: &Digest) -> bool {
        !self.shared.known.lock().unwrap().insert(*digest)
    }
}

/// Uploads chunks of a session; cheap to clone into tasks.
#[derive(Clone)]
pub(crate) struct ChunkSender(Arc<Shared>);

impl ChunkSender {
    /// Uploads an encoded chunk; the body is sent as it is, without a copy.
    pub(crate) async fn send(&self, digest: &Digest, body: Bytes, plain_size: u64) -> Result<()> {
        if plain_size == 0 || plain_size > MAX_CHUNK_SIZE as u64 {
            bail!(
                "chunk {} has invalid size {plain_size}",
                digest_to_hex(digest)
            );
        }
        let (path, wid) = {
            let open = self.0.open.lock().unwrap();
            // PBS uses the writer id for statistics only; a fixed writer would limit
            // sizes, so a dynamic one is preferred.
            match (open.dynamic.first(), open.fixed.first()) {
                (Some(wid), _) => ("/dynamic_chunk", *wid),
                (None, Some(wid)) => ("/fixed_chunk", *wid),
                (None, None) => bail!("no index is open to upload chunks for"),
            }
        };
        let params = [
            ("wid", wid.to_string()),
            ("digest", digest_to_hex(digest)),
            ("size", plain_size.to_string()),
            ("encoded-size", body.len().to_string()),
        ];
        self.0
            .call(Method::POST, path, &params, OCTETS, Some(body))
            .await
            .with_context(|| format!("uploading chunk {}", digest_to_hex(digest)))?;
        Ok(())
    }
}

impl RemoteBackupSession {
    /// Starts `<name>` (ending in `.didx`).
    pub fn create_dynamic_index(&self, name: &str) -> Result<RemoteIndexWriter> {
        if !name.ends_with(".didx") {
            bail!("dynamic index name '{name}' must end in .didx");
        }
        self.create_index(name, None)
    }

    /// Starts `<name>` (ending in `.fidx`) for an image of `size` bytes. The server cuts
    /// fixed indexes into 4 MiB chunks; other chunk sizes are refused.
    pub fn create_fixed_index(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
    ) -> Result<RemoteIndexWriter> {
        if !name.ends_with(".fidx") {
            bail!("fixed index name '{name}' must end in .fidx");
        }
        if chunk_size != FIXED_CHUNK_SIZE {
            bail!("a PBS server only accepts fixed indexes with 4 MiB chunks, not {chunk_size}");
        }
        if size == 0 {
            bail!("fixed index '{name}' would be empty");
        }
        self.create_index(name, Some(size))
    }

    fn create_index(&self, name: &str, fixed_size: Option<u64>) -> Result<RemoteIndexWriter> {
        {
            let mut created = self.shared.writers_created.lock().unwrap();
            if *created >= MAX_WRITERS {
                bail!("a backup session allows at most {MAX_WRITERS} indexes");
            }
            *created += 1;
        }
        let mut params = vec![("archive-name", name.to_string())];
        let path = match fixed_size {
            Some(size) => {
                params.push(("size", size.to_string()));
                "/fixed_index"
            }
            None => "/dynamic_index",
        };
        let wid = block_on(self.shared.call(Method::POST, path, &params, FORM, None))
            .with_context(|| format!("cannot create {name}"))?
            .as_u64()
            .with_context(|| format!("no writer id for {name}"))?;
        let mut open = self.shared.open.lock().unwrap();
        match fixed_size {
            Some(_) => open.fixed.push(wid),
            None => open.dynamic.push(wid),
        }
        Ok(RemoteIndexWriter {
            shared: self.shared.clone(),
            name: name.to_string(),
            wid,
            fixed_size,
            pending: Vec::new(),
            end: 0,
            count: 0,
            csum: Sha256::new(),
            failed: false,
        })
    }

    /// Uploads a small file whole (`<name>` ending in `.blob`, at most 16 MiB).
    pub fn add_blob(&self, name: &str, raw_blob: &[u8]) -> Result<()> {
        if name == MANIFEST_BLOB_NAME || !name.ends_with(".blob") {
            bail!("invalid blob name '{name}'");
        }
        self.upload_blob(name, raw_blob)?;
        self.shared.files.lock().unwrap().push(FileInfo {
            filename: name.to_string(),
            crypt_mode: CryptMode::None,
            size: raw_blob.len() as u64,
            csum: Sha256::digest(raw_blob).into(),
        });
        Ok(())
    }

    fn upload_blob(&self, name: &str, raw_blob: &[u8]) -> Result<()> {
        let params = [
            ("file-name", name.to_string()),
            ("encoded-size", raw_blob.len().to_string()),
        ];
        block_on(self.shared.call(
            Method::POST,
            "/blob",
            &params,
            OCTETS,
            Some(Bytes::copy_from_slice(raw_blob)),
        ))
        .with_context(|| format!("uploading {name}"))?;
        Ok(())
    }

    /// Uploads the manifest (closed indexes and blobs, all `crypt-mode` none) and finishes.
    pub fn finish(self) -> Result<BackupDir> {
        self.finish_with(|_| Ok(()))
    }

    /// Like [`finish`](Self::finish); `complete` may change the manifest first (crypt
    /// modes, signature, unprotected data).
    pub fn finish_with(
        self,
        complete: impl FnOnce(&mut Manifest) -> Result<()>,
    ) -> Result<BackupDir> {
        self.ensure_indexes_closed()?;
        let dir = &self.shared.dir;
        let mut manifest = Manifest::new(
            dir.group.backup_type.as_str(),
            &dir.group.backup_id,
            dir.time,
        );
        manifest.files = self.shared.files.lock().unwrap().clone();
        complete(&mut manifest)?;
        self.upload_manifest_and_finish(&manifest.to_blob()?)
    }

    /// Finishes with a manifest made elsewhere (a copy of another snapshot), uploaded as it
    /// is; the server checks it and adds its upload statistics to the unprotected part.
    pub fn finish_with_raw_manifest(self, raw: &[u8]) -> Result<BackupDir> {
        self.ensure_indexes_closed()?;
        self.upload_manifest_and_finish(raw)
    }

    fn ensure_indexes_closed(&self) -> Result<()> {
        let open = self.shared.open.lock().unwrap();
        if !open.dynamic.is_empty() || !open.fixed.is_empty() {
            bail!("an index of {} is still open", self.shared.dir);
        }
        Ok(())
    }

    fn upload_manifest_and_finish(self, raw: &[u8]) -> Result<BackupDir> {
        let dir = &self.shared.dir;
        self.upload_blob(MANIFEST_BLOB_NAME, raw)?;
        block_on(self.shared.call(Method::POST, "/finish", &[], FORM, None))
            .with_context(|| format!("cannot finish backup {dir}"))?;
        Ok(dir.clone())
    }
}

/// Fetches the previous manifest and indexes through `/previous` (registering their
/// chunks on the server) and adds their digests to the known set. Encrypted indexes count
/// only if they were encrypted with `chunk_key` (the previous manifest names its key), as
/// in the official client: other chunks would not be this backup's chunks anyway.
async fn register_previous(
    shared: &Shared,
    dir: &BackupDir,
    time: i64,
    chunk_key: Option<&Fingerprint>,
) -> Result<(BackupDir, Manifest)> {
    let previous_dir = BackupDir::new(dir.group.clone(), time)?;
    let download = |name: String| async move {
        let path = format!("/previous?{}", encode_query(&[("archive-name", name)]));
        shared
            .session
            .request(Method::GET, &path, FORM, None, DOWNLOAD_LIMIT)
            .await
    };
    let raw = download(MANIFEST_BLOB_NAME.to_string()).await?;
    let manifest = Manifest::from_blob(&raw)
        .with_context(|| format!("{previous_dir}/{MANIFEST_BLOB_NAME}"))?;
    let same_key = match (chunk_key, manifest.key_fingerprint()) {
        (Some(ours), Some(theirs)) => theirs.eq_ignore_ascii_case(&ours.to_string()),
        _ => false,
    };
    for info in &manifest.files {
        if !matches!(
            ArchiveKind::of(&info.filename),
            Some(ArchiveKind::DynamicIndex | ArchiveKind::FixedIndex)
        ) || (info.crypt_mode == CryptMode::Encrypt && !same_key)
        {
            continue; // encrypted chunks are only reusable with the same key
        }
        let raw = download(info.filename.clone()).await?;
        let index: AnyIndex = check_index(&info.filename, &raw, info)
            .with_context(|| format!("previous snapshot {previous_dir}"))?;
        shared
            .known
            .lock()
            .unwrap()
            .extend(index.digests().iter().copied());
    }
    Ok((previous_dir, manifest))
}

/// An index being written on the server; entries arrive in stream order.
pub struct RemoteIndexWriter {
    shared: Arc<Shared>,
    name: String,
    wid: u64,
    /// Image size for a fixed index.
    fixed_size: Option<u64>,
    /// (digest, start offset) not yet appended.
    pending: Vec<(Digest, u64)>,
    end: u64,
    count: u64,
    csum: Sha256,
    failed: bool,
}

impl RemoteIndexWriter {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends a chunk of `size` bytes. Its data must already be known to the server
    /// (uploaded in this session, or part of the previous snapshot).
    pub fn add_chunk(&mut self, size: u64, digest: &Digest) -> Result<()> {
        if self.failed {
            bail!("{}: an earlier append failed", self.name);
        }
        if !self.shared.known.lock().unwrap().contains(digest) {
            bail!(
                "{}: chunk {} was neither uploaded nor part of the previous snapshot",
                self.name,
                digest_to_hex(digest)
            );
        }
        if let Some(image) = self.fixed_size {
            let fits = self.end.is_multiple_of(FIXED_CHUNK_SIZE)
                && self.end + size <= image
                && (size == FIXED_CHUNK_SIZE || self.end + size == image);
            if !fits {
                bail!(
                    "{}: a {size} byte chunk at offset {} does not fit a 4 MiB fixed index of {image} bytes",
                    self.name,
                    self.end
                );
            }
        }
        self.pending.push((*digest, self.end));
        self.end += size;
        self.count += 1;
        if self.fixed_size.is_some() {
            self.csum.update(digest);
        } else {
            self.csum.update(self.end.to_le_bytes());
            self.csum.update(digest);
        }
        if self.pending.len() >= APPEND_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let body = json!({
            "wid": self.wid,
            "digest-list": self.pending.iter().map(|(d, _)| digest_to_hex(d)).collect::<Vec<_>>(),
            "offset-list": self.pending.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        });
        let path = if self.fixed_size.is_some() {
            "/fixed_index"
        } else {
            "/dynamic_index"
        };
        let result = block_on(self.shared.call(
            Method::PUT,
            path,
            &[],
            JSON,
            Some(Bytes::from(body.to_string())),
        ));
        if let Err(err) = result {
            self.failed = true;
            return Err(err).with_context(|| format!("appending to {}", self.name));
        }
        self.pending.clear();
        Ok(())
    }

    /// Sends the remaining entries, closes the index with its count, size and checksum,
    /// and records it for the manifest.
    pub fn finish(mut self) -> Result<RemoteIndexSummary> {
        self.flush()?;
        if self.fixed_size.is_none() && self.count == 0 {
            bail!("{}: a PBS server refuses an empty dynamic index", self.name);
        }
        if let Some(image) = self.fixed_size {
            if self.end != image {
                bail!("{}: {} of {image} bytes written", self.name, self.end);
            }
        }
        let csum: Digest = self.csum.clone().finalize().into();
        let params = [
            ("wid", self.wid.to_string()),
            ("chunk-count", self.count.to_string()),
            ("size", self.end.to_string()),
            ("csum", digest_to_hex(&csum)),
        ];
        let path = if self.fixed_size.is_some() {
            "/fixed_close"
        } else {
            "/dynamic_close"
        };
        block_on(self.shared.call(Method::POST, path, &params, FORM, None))
            .with_context(|| format!("closing {}", self.name))?;
        {
            let mut open = self.shared.open.lock().unwrap();
            open.dynamic.retain(|w| *w != self.wid);
            open.fixed.retain(|w| *w != self.wid);
        }
        self.shared.files.lock().unwrap().push(FileInfo {
            filename: self.name.clone(),
            crypt_mode: CryptMode::None,
            size: self.end,
            csum,
        });
        Ok(RemoteIndexSummary {
            size: self.end,
            csum,
            chunk_count: self.count,
        })
    }
}
