//! A PBS server as a [`BackupTarget`]: `pbsfs push` writes through the backup protocol
//! ([`RemoteBackupSession`]) and, in metadata mode, reads the previous snapshot's
//! `.mpxar`/`.ppxar` through the reader protocol ([`RemoteAccess::previous`]).
//!
//! Lives next to [`access`](super::access), which plugs the server into the reading seam the
//! same way; the backup side only knows the traits of `src/store/target.rs`.
//!
//! Uploads are pipelined: [`BackupSession::upload_chunk`] copies the encoded chunk once into
//! the request body, starts its upload as a task on the runtime and returns, so hashing and
//! compression go on while chunks travel. At most [`MAX_UPLOADS`] chunks are on the wire
//! and [`MAX_QUEUED`] wait for it (semaphores; bounded memory). Whether a chunk needs
//! uploading is decided once, by [`BackupSession::is_known_chunk`], which claims a new chunk
//! for its caller. An index append waits for the upload of its chunk, since the server only
//! accepts entries whose chunk it knows.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::access::RemoteAccess;
use super::backup::{ChunkSender, RemoteBackupSession, RemoteIndexWriter, FIXED_CHUNK_SIZE};
use super::datastore::RemoteDatastore;
use super::runtime::{block_on, runtime};
use crate::format::manifest::Manifest;
use crate::format::{digest_to_hex, Digest};
use crate::store::access::DatastoreAccess;
use crate::store::names::{BackupDir, BackupNamespace};
use crate::store::target::{BackupSession, BackupTarget, IndexSummary, IndexWriter, SessionParams};

/// Chunk uploads on the wire at once (HTTP/2 streams of the one backup connection). More
/// would share the bandwidth among more chunks and delay the oldest, which the index
/// appends wait for in stream order.
pub const MAX_UPLOADS: usize = 4;
/// Encoded chunks waiting for the wire, besides those on it (bounded memory).
pub const MAX_QUEUED: usize = 8;

/// A datastore on a PBS server that backups can be written to.
pub struct RemoteTarget {
    access: RemoteAccess,
}

impl RemoteTarget {
    pub fn new(store: Arc<RemoteDatastore>) -> Self {
        RemoteTarget {
            access: RemoteAccess(store),
        }
    }

    pub fn datastore(&self) -> &Arc<RemoteDatastore> {
        &self.access.0
    }
}

impl BackupTarget for RemoteTarget {
    /// The server records the connecting auth-id as the group's owner; `params.owner` is
    /// not sent (the protocol has no field for it).
    fn start_session(&self, params: &SessionParams) -> Result<Box<dyn BackupSession>> {
        let session = Arc::new(RwLock::new(Some(self.datastore().start_backup(
            &params.ns,
            &params.dir,
            params.chunk_key.as_ref(),
        )?)));
        let sender = with_session(&session, |s| Ok(s.chunk_sender()))?;
        let uploads = Uploads::new(sender);
        Ok(Box::new(RemoteSession {
            dir: params.dir.clone(),
            session,
            uploads,
        }))
    }

    fn access(&self) -> &dyn DatastoreAccess {
        &self.access
    }

    fn add_client_log(&self, ns: &BackupNamespace, dir: &BackupDir, raw_blob: &[u8]) -> Result<()> {
        self.datastore().upload_backup_log(ns, dir, raw_blob)
    }
}

/// `None` once finished (the protocol session is consumed by `finish`).
type SharedSession = Arc<RwLock<Option<RemoteBackupSession>>>;

fn with_session<T>(
    session: &SharedSession,
    f: impl FnOnce(&RemoteBackupSession) -> Result<T>,
) -> Result<T> {
    let guard = session.read().unwrap_or_else(|e| e.into_inner());
    match guard.as_ref() {
        Some(session) => f(session),
        None => bail!("the backup session is already finished"),
    }
}

struct RemoteSession {
    dir: BackupDir,
    session: SharedSession,
    uploads: Arc<Uploads>,
}

impl BackupSession for RemoteSession {
    fn snapshot(&self) -> &BackupDir {
        &self.dir
    }

    /// The one check of a chunk: false claims it for the caller, who uploads it.
    fn is_known_chunk(&self, digest: &Digest) -> Result<bool> {
        with_session(&self.session, |s| Ok(s.claim_chunk(digest)))
    }

    /// Starts the upload and returns at once (waiting while [`MAX_UPLOADS`] are in flight).
    fn upload_chunk(&self, digest: &Digest, raw_blob: &[u8], plain_size: u64) -> Result<bool> {
        self.uploads
            .start(*digest, Bytes::copy_from_slice(raw_blob), plain_size)?;
        Ok(true)
    }

    fn create_dynamic_index(&self, name: &str) -> Result<Box<dyn IndexWriter>> {
        let index = with_session(&self.session, |s| s.create_dynamic_index(name))?;
        Ok(Box::new(RemoteIndex {
            index: Some(index),
            uploads: self.uploads.clone(),
        }))
    }

    fn create_fixed_index(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
    ) -> Result<Box<dyn IndexWriter>> {
        if chunk_size != FIXED_CHUNK_SIZE {
            bail!("{name}: a PBS server only accepts 4 MiB image chunks");
        }
        let index = with_session(&self.session, |s| {
            s.create_fixed_index(name, size, chunk_size)
        })?;
        Ok(Box::new(RemoteIndex {
            index: Some(index),
            uploads: self.uploads.clone(),
        }))
    }

    fn add_blob(&self, name: &str, raw_blob: &[u8]) -> Result<()> {
        with_session(&self.session, |s| s.add_blob(name, raw_blob))
    }

    fn finish(&self) -> Result<BackupDir> {
        self.finish_with(&|_| Ok(()))
    }

    /// The manifest is completed (crypt modes, signature) before it is uploaded.
    fn finish_with(&self, complete: &dyn Fn(&mut Manifest) -> Result<()>) -> Result<BackupDir> {
        self.finishing_session()?.finish_with(complete)
    }

    fn finish_with_manifest(&self, raw_manifest: &[u8]) -> Result<BackupDir> {
        self.finishing_session()?
            .finish_with_raw_manifest(raw_manifest)
    }
}

impl RemoteSession {
    /// The protocol session, once every upload is done, taken for its finish.
    fn finishing_session(&self) -> Result<RemoteBackupSession> {
        self.uploads.wait_idle()?;
        self.session
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .context("the backup session is already finished")
    }
}

impl Drop for RemoteSession {
    fn drop(&mut self) {
        // Lets no further upload start, then drops an unfinished protocol session: that closes
        // the connection and the server discards the snapshot.
        self.uploads.shut_down();
        drop(
            self.session
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }
}

struct RemoteIndex {
    index: Option<RemoteIndexWriter>,
    uploads: Arc<Uploads>,
}

impl IndexWriter for RemoteIndex {
    fn add_chunk(&mut self, size: u64, digest: &Digest) -> Result<()> {
        self.uploads.wait_for(digest)?;
        self.index
            .as_mut()
            .context("index already finished")?
            .add_chunk(size, digest)
    }

    fn finish(mut self: Box<Self>) -> Result<IndexSummary> {
        let summary = self
            .index
            .take()
            .context("index already finished")?
            .finish()?;
        Ok(IndexSummary {
            size: summary.size,
            csum: summary.csum,
            chunk_count: summary.chunk_count,
        })
    }
}

#[derive(Default)]
struct UploadState {
    /// On the wire.
    pending: HashSet<Digest>,
    /// The first upload error; every later call reports it.
    failed: Option<String>,
}

/// Chunk uploads running as tasks on the runtime, at most [`MAX_UPLOADS`] at once.
struct Uploads {
    sender: ChunkSender,
    /// Uploads started and not finished: [`MAX_UPLOADS`] + [`MAX_QUEUED`].
    started: Arc<Semaphore>,
    /// Uploads on the wire; taken in the order the uploads started (a fair semaphore).
    wire: Arc<Semaphore>,
    state: Mutex<UploadState>,
    /// Signalled when an upload ended.
    progress: Condvar,
}

impl Uploads {
    fn new(sender: ChunkSender) -> Arc<Self> {
        Arc::new(Uploads {
            sender,
            started: Arc::new(Semaphore::new(MAX_UPLOADS + MAX_QUEUED)),
            wire: Arc::new(Semaphore::new(MAX_UPLOADS)),
            state: Mutex::new(UploadState::default()),
            progress: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UploadState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failure(state: &UploadState) -> Result<()> {
        match &state.failed {
            Some(message) => Err(anyhow!("{message}")),
            None => Ok(()),
        }
    }

    /// Starts an upload, waiting while too many are started.
    fn start(self: &Arc<Self>, digest: Digest, body: Bytes, plain_size: u64) -> Result<()> {
        Self::failure(&self.lock())?;
        let started = block_on(self.started.clone().acquire_owned())
            .map_err(|_| anyhow!("the backup session is closed"))?;
        self.lock().pending.insert(digest);
        let uploads = self.clone();
        runtime().spawn(async move {
            let result = match uploads.wire.acquire().await {
                Ok(_on_the_wire) => uploads.sender.send(&digest, body, plain_size).await,
                Err(_) => Err(anyhow!("the backup session is closed")),
            };
            drop(started);
            uploads.finished(&digest, result);
        });
        Ok(())
    }

    fn finished(&self, digest: &Digest, result: Result<()>) {
        let mut state = self.lock();
        if let Err(err) = result {
            if state.failed.is_none() {
                state.failed = Some(format!(
                    "upload of chunk {} failed: {err:#}",
                    digest_to_hex(digest)
                ));
            }
        }
        state.pending.remove(digest);
        drop(state);
        self.progress.notify_all();
    }

    /// Waits until `digest` is no longer being uploaded (or an upload failed).
    fn wait_for(&self, digest: &Digest) -> Result<()> {
        let mut state = self.lock();
        while state.pending.contains(digest) && state.failed.is_none() {
            state = self.progress.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        Self::failure(&state)
    }

    /// Waits until every upload is done.
    fn wait_idle(&self) -> Result<()> {
        let mut state = self.lock();
        while !state.pending.is_empty() && state.failed.is_none() {
            state = self.progress.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        Self::failure(&state)
    }

    /// No upload starts any more; those in flight end on their own.
    fn shut_down(&self) {
        self.started.close();
        self.wire.close();
        self.progress.notify_all();
    }
}
