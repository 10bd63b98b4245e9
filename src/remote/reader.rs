//! Reader protocol v1 (protocol.md §7): one HTTP/2 session on a snapshot, carrying many
//! concurrent `/chunk` requests. The server only serves chunks of indexes downloaded in the
//! same session, so the reader remembers which indexes it fetched: after the connection
//! drops it reconnects, downloads them again, and retries the request once.

use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::Method;
use tokio::sync::Semaphore;

use super::client::HttpClient;
use super::error::RemoteError;
use super::query::{encode_query, snapshot_params};
use super::runtime::block_on;
use super::session::H2Session;
use super::wire::{DOWNLOAD_LIMIT, FORM};
use crate::format::blob::MAX_CHUNK_SIZE;
use crate::format::manifest::{Manifest, MANIFEST_BLOB_NAME};
use crate::format::{digest_to_hex, Digest};
use crate::store::archive::ArchiveKind;
use crate::store::names::{BackupDir, BackupNamespace};
use crate::store::ChunkSource;

pub const READER_PROTOCOL: &str = "proxmox-backup-reader-protocol-v1";
/// Chunk requests in flight at once on one session (the server allows 200 streams).
const MAX_IN_FLIGHT: usize = 64;
/// Largest chunk blob: 16 MiB of data plus the encrypted header.
const MAX_CHUNK_BLOB: usize = MAX_CHUNK_SIZE + 64;

/// A reader session on one snapshot; a [`ChunkSource`] for its archives.
pub struct RemoteReader {
    client: Arc<HttpClient>,
    upgrade_query: String,
    dir: BackupDir,
    session: tokio::sync::Mutex<Option<Arc<H2Session>>>,
    /// Indexes downloaded so far: downloaded again on a new connection.
    indexes: Mutex<Vec<String>>,
    permits: Semaphore,
}

impl RemoteReader {
    pub(crate) fn new(
        client: Arc<HttpClient>,
        store: &str,
        ns: &BackupNamespace,
        dir: &BackupDir,
    ) -> Self {
        let mut params = snapshot_params(ns, dir);
        params.push(("store", store.to_string()));
        RemoteReader {
            client,
            upgrade_query: encode_query(&params),
            dir: dir.clone(),
            session: tokio::sync::Mutex::new(None),
            indexes: Mutex::new(Vec::new()),
            permits: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    pub fn dir(&self) -> &BackupDir {
        &self.dir
    }

    /// Opens the session now (it is otherwise opened by the first request).
    pub fn connect(&self) -> Result<()> {
        block_on(self.current_session())
            .with_context(|| format!("cannot open snapshot {}", self.dir))?;
        Ok(())
    }

    /// The live session, or a new one with the known indexes downloaded again.
    async fn current_session(&self) -> Result<Arc<H2Session>, RemoteError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref() {
            if !session.is_closed() {
                return Ok(session.clone());
            }
        }
        *slot = None;
        let session = Arc::new(
            self.client
                .upgrade("/api2/json/reader", &self.upgrade_query, READER_PROTOCOL)
                .await?,
        );
        let names = self.indexes.lock().unwrap().clone();
        for name in names {
            download_on(&session, &name).await?;
        }
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn forget(&self, failed: &Arc<H2Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, failed)) {
            *slot = None;
        }
    }

    /// Runs `op` on the session; after a connection failure, once more on a new one.
    async fn with_retry<T, F, Fut>(&self, op: F) -> Result<T, RemoteError>
    where
        F: Fn(Arc<H2Session>) -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let session = self.current_session().await?;
            match op(session.clone()).await {
                Err(err) if err.is_connection_error() && attempt < 2 => {
                    self.forget(&session).await;
                }
                result => return result,
            }
        }
    }

    /// Raw bytes of a file of the snapshot (`/download`); an index also makes its chunks
    /// readable in this session.
    pub async fn download_async(&self, filename: &str) -> Result<Bytes, RemoteError> {
        let raw = self
            .with_retry(|session| async move { download_on(&session, filename).await })
            .await?;
        if matches!(
            ArchiveKind::of(filename),
            Some(ArchiveKind::DynamicIndex | ArchiveKind::FixedIndex)
        ) {
            let mut indexes = self.indexes.lock().unwrap();
            if !indexes.iter().any(|n| n == filename) {
                indexes.push(filename.to_string());
            }
        }
        Ok(raw)
    }

    /// The raw stored blob of a chunk (`/chunk`).
    pub async fn chunk_async(&self, digest: &Digest) -> Result<Bytes, RemoteError> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let path = format!("/chunk?digest={}", digest_to_hex(digest));
        let path = path.as_str();
        self.with_retry(|session| async move {
            session
                .request(Method::GET, path, FORM, None, MAX_CHUNK_BLOB)
                .await
        })
        .await
    }

    pub fn download(&self, filename: &str) -> Result<Vec<u8>> {
        let raw = block_on(self.download_async(filename))
            .with_context(|| format!("cannot download {}/{filename}", self.dir))?;
        Ok(raw.into())
    }

    /// The snapshot's decoded manifest.
    pub fn read_manifest(&self) -> Result<Manifest> {
        let raw = self.download(MANIFEST_BLOB_NAME)?;
        crate::store::local::decode_manifest(&raw)
            .map_err(|reason| anyhow::anyhow!("snapshot {} is damaged: {reason}", self.dir))
    }
}

async fn download_on(session: &H2Session, filename: &str) -> Result<Bytes, RemoteError> {
    let path = format!(
        "/download?{}",
        encode_query(&[("file-name", filename.to_string())])
    );
    session
        .request(Method::GET, &path, FORM, None, DOWNLOAD_LIMIT)
        .await
}

impl ChunkSource for RemoteReader {
    fn fetch_raw_chunk(&self, digest: &Digest) -> Result<Vec<u8>> {
        let raw = block_on(self.chunk_async(digest))
            .with_context(|| format!("cannot fetch chunk {}", digest_to_hex(digest)))?;
        Ok(raw.into())
    }
}
