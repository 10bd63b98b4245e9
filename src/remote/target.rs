//! A PBS server as a [`BackupTarget`]: `pbsfs push` writes through the backup protocol
//! ([`RemoteBackupSession`]) and, in metadata mode, reads the previous snapshot's
//! `.mpxar`/`.ppxar` through the reader protocol ([`RemoteAccess::previous`]).
//!
//! Lives next to [`access`](super::access), which plugs the server into the reading seam the
//! same way; the backup side only knows the traits of `src/store/target.rs`.
//!
//! Uploads are pipelined: [`BackupSession::upload_chunk`] hands the encoded chunk to a small
//! pool of upload threads and returns, so hashing and compression go on while chunks travel.
//! At most [`MAX_UPLOADS`] chunks are on the wire and [`MAX_QUEUED`] wait for it (bounded
//! memory). An index append waits for the upload of its chunk, since the server only accepts
//! entries whose chunk it knows.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use anyhow::{anyhow, bail, Context, Result};

use super::access::RemoteAccess;
use super::backup::{RemoteBackupSession, RemoteIndexWriter, FIXED_CHUNK_SIZE};
use super::datastore::RemoteDatastore;
use crate::format::manifest::Manifest;
use crate::format::{digest_to_hex, Digest};
use crate::store::access::DatastoreAccess;
use crate::store::names::BackupDir;
use crate::store::target::{BackupSession, BackupTarget, IndexSummary, IndexWriter, SessionParams};

/// Chunk uploads on the wire at once (HTTP/2 streams of the one backup connection).
pub const MAX_UPLOADS: usize = 4;
/// Encoded chunks waiting for an upload thread.
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
        let uploads = Uploads::start(session.clone());
        Ok(Box::new(RemoteSession {
            dir: params.dir.clone(),
            session,
            uploads,
        }))
    }

    fn access(&self) -> &dyn DatastoreAccess {
        &self.access
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

    fn is_known_chunk(&self, digest: &Digest) -> Result<bool> {
        with_session(&self.session, |s| s.is_known_chunk(digest))
    }

    /// Queues the upload and returns at once; true unless the server already knows the
    /// chunk or it is already queued.
    fn upload_chunk(&self, digest: &Digest, raw_blob: &[u8], plain_size: u64) -> Result<bool> {
        if with_session(&self.session, |s| s.is_known_chunk(digest))? {
            return Ok(false);
        }
        self.uploads.submit(digest, raw_blob.to_vec(), plain_size)
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
        self.uploads.wait_idle()?;
        let session = self
            .session
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .context("the backup session is already finished")?;
        session.finish_with(complete)
    }
}

impl Drop for RemoteSession {
    fn drop(&mut self) {
        // Stops the upload threads, then drops an unfinished protocol session: that closes
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

struct Job {
    digest: Digest,
    raw_blob: Vec<u8>,
    plain_size: u64,
}

#[derive(Default)]
struct UploadState {
    queue: VecDeque<Job>,
    /// Queued or on the wire.
    pending: HashSet<Digest>,
    /// The first upload error; every later call reports it.
    failed: Option<String>,
    shut_down: bool,
}

/// Upload threads fed by a bounded queue.
struct Uploads {
    state: Mutex<UploadState>,
    /// Signalled when a job is queued or the pool shuts down.
    work: Condvar,
    /// Signalled when a job finished or left the queue.
    progress: Condvar,
}

impl Uploads {
    fn start(session: SharedSession) -> Arc<Self> {
        let uploads = Arc::new(Uploads {
            state: Mutex::new(UploadState::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        for i in 0..MAX_UPLOADS {
            let uploads = uploads.clone();
            let session = session.clone();
            std::thread::Builder::new()
                .name(format!("pbsfs-upload-{i}"))
                .spawn(move || uploads.run(&session))
                .expect("cannot spawn an upload thread");
        }
        uploads
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

    /// Queues a chunk, waiting while the queue is full. False if it is already pending.
    fn submit(&self, digest: &Digest, raw_blob: Vec<u8>, plain_size: u64) -> Result<bool> {
        let mut state = self.lock();
        loop {
            Self::failure(&state)?;
            if state.shut_down {
                bail!("the backup session is closed");
            }
            if state.pending.contains(digest) {
                return Ok(false);
            }
            if state.queue.len() < MAX_QUEUED {
                break;
            }
            state = self.progress.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.pending.insert(*digest);
        state.queue.push_back(Job {
            digest: *digest,
            raw_blob,
            plain_size,
        });
        self.work.notify_one();
        Ok(true)
    }

    /// Waits until `digest` is no longer being uploaded (or an upload failed).
    fn wait_for(&self, digest: &Digest) -> Result<()> {
        let mut state = self.lock();
        while state.pending.contains(digest) && state.failed.is_none() {
            state = self.progress.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        Self::failure(&state)
    }

    /// Waits until every queued upload is done.
    fn wait_idle(&self) -> Result<()> {
        let mut state = self.lock();
        while !state.pending.is_empty() && state.failed.is_none() {
            state = self.progress.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        Self::failure(&state)
    }

    fn shut_down(&self) {
        let mut state = self.lock();
        state.shut_down = true;
        state.queue.clear();
        self.work.notify_all();
        self.progress.notify_all();
    }

    fn run(&self, session: &SharedSession) {
        loop {
            let job = {
                let mut state = self.lock();
                loop {
                    if state.shut_down {
                        return;
                    }
                    if let Some(job) = state.queue.pop_front() {
                        break job;
                    }
                    state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            self.progress.notify_all(); // room in the queue
            let result = with_session(session, |s| {
                s.upload_chunk(&job.digest, &job.raw_blob, job.plain_size)
            });
            let mut state = self.lock();
            if let Err(err) = result {
                if state.failed.is_none() {
                    state.failed = Some(format!(
                        "upload of chunk {} failed: {err:#}",
                        digest_to_hex(&job.digest)
                    ));
                }
            }
            state.pending.remove(&job.digest);
            drop(state);
            self.progress.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pool_refuses_work_and_waits_end() {
        let uploads = Arc::new(Uploads {
            state: Mutex::new(UploadState::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        // No threads: a queued job stays pending until the pool is shut down.
        assert!(uploads.submit(&[1; 32], vec![0; 10], 10).unwrap());
        assert!(!uploads.submit(&[1; 32], vec![0; 10], 10).unwrap());
        uploads.lock().failed = Some("boom".into());
        assert!(uploads.wait_for(&[1; 32]).is_err());
        assert!(uploads.wait_idle().is_err());
        uploads.shut_down();
        assert!(uploads.submit(&[2; 32], vec![0; 10], 10).is_err());
    }
}
