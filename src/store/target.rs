//! Where a backup goes: a [`BackupTarget`] starts [`BackupSession`]s, one per snapshot. The
//! shapes follow the PBS backup protocol (protocol.md): chunks are uploaded by digest,
//! indexes are created and then appended to, blobs are uploaded whole, and `finish` makes
//! the snapshot visible. A session dropped without `finish` is aborted and leaves nothing.
//!
//! Implemented by the local datastore ([`super::local_target`]); the PBS protocol client plugs
//! in here as well. A target is also read through [`DatastoreAccess`] (the previous snapshot
//! of a group, for change detection).

use std::sync::Arc;

use anyhow::{bail, Result};

use super::access::{DatastoreAccess, SnapshotAccess};
use super::names::{BackupDir, BackupGroup, BackupNamespace};
use crate::format::index::{AnyIndex, ChunkIndex};
use crate::format::manifest::Manifest;
use crate::format::Digest;

/// Which snapshot a session writes and who owns its group.
#[derive(Clone, Debug)]
pub struct SessionParams {
    pub ns: BackupNamespace,
    pub dir: BackupDir,
    /// Owner recorded for a new group (e.g. `root@pam`).
    pub owner: String,
    /// The key chunks are encrypted with, if any: a previous snapshot encrypted with the
    /// same key has chunks this one can reference without uploading them again.
    pub chunk_key: Option<crate::format::crypto::Fingerprint>,
}

/// A datastore (local or remote) that backups can be written to.
pub trait BackupTarget: Send + Sync {
    /// Starts a new snapshot. Fails if another backup of the group is running or the time
    /// is not newer than the group's last snapshot.
    fn start_session(&self, params: &SessionParams) -> Result<Box<dyn BackupSession>>;

    /// The same datastore for reading.
    fn access(&self) -> &dyn DatastoreAccess;

    /// Adds the client log (`client.log.blob`, a blob outside the manifest) to a finished
    /// snapshot; refused when the snapshot already has one.
    fn add_client_log(&self, ns: &BackupNamespace, dir: &BackupDir, raw_blob: &[u8]) -> Result<()>;

    /// The newest readable snapshot of a group, the base for change detection (a damaged
    /// manifest is passed by, not an error). Its archives are read with the
    /// [`open`](super::open) kit over its `chunk_source`.
    fn previous(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
    ) -> Result<Option<Arc<dyn SnapshotAccess>>> {
        self.access().previous(ns, group)
    }
}

/// An index file being written; entries arrive in stream order.
pub trait IndexWriter: Send {
    /// Appends a chunk of `size` bytes (dynamic index: the next `size` bytes of the stream;
    /// fixed index: every chunk but the last has the fixed chunk size).
    fn add_chunk(&mut self, size: u64, digest: &Digest) -> Result<()>;

    /// Closes the index and records it in the snapshot.
    fn finish(self: Box<Self>) -> Result<IndexSummary>;
}

/// What a closed index holds (the manifest's `size` and `csum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexSummary {
    pub size: u64,
    pub csum: Digest,
    pub chunk_count: u64,
}

/// One snapshot being written. Chunk uploads may come from many threads at once.
pub trait BackupSession: Send + Sync {
    /// The snapshot this session writes.
    fn snapshot(&self) -> &BackupDir;

    /// True if the store already has this chunk; it then counts as used by this snapshot
    /// (so garbage collection keeps it) and need not be uploaded. False means the caller
    /// uploads it (a store may count the chunk as claimed by that caller from then on).
    fn is_known_chunk(&self, digest: &Digest) -> Result<bool>;

    /// Uploads an encoded chunk (`raw_blob`, `plain_size` bytes of data). Returns true if
    /// the chunk was new to the store.
    fn upload_chunk(&self, digest: &Digest, raw_blob: &[u8], plain_size: u64) -> Result<bool>;

    /// Starts `<name>` (ending in `.didx`).
    fn create_dynamic_index(&self, name: &str) -> Result<Box<dyn IndexWriter>>;

    /// Starts `<name>` (ending in `.fidx`) for an image of `size` bytes.
    fn create_fixed_index(
        &self,
        name: &str,
        size: u64,
        chunk_size: u64,
    ) -> Result<Box<dyn IndexWriter>>;

    /// Stores a small file whole (`<name>` ending in `.blob`).
    fn add_blob(&self, name: &str, raw_blob: &[u8]) -> Result<()>;

    /// Writes the manifest; the snapshot becomes visible. All index writers must be finished.
    /// A session dropped without `finish` is aborted.
    fn finish(&self) -> Result<BackupDir>;

    /// Like [`Self::finish`], but `complete` edits the manifest before it is written (crypt
    /// modes, signature). Stores that cannot write signed manifests refuse.
    fn finish_with(&self, complete: &dyn Fn(&mut Manifest) -> Result<()>) -> Result<BackupDir> {
        let _ = complete;
        bail!("this datastore cannot store encrypted or signed backups")
    }

    /// Starts storing a copy of another snapshot's index (a sync). The index's chunks
    /// are uploaded while the copy is open (a server files uploads under an open index);
    /// [`IndexCopy::finish`] then stores it. By default the index is written anew from its
    /// entries, which keeps its checksum (a server writes its own header); a local store
    /// keeps the bytes.
    fn start_index_copy(
        &self,
        name: &str,
        raw: Vec<u8>,
        index: AnyIndex,
    ) -> Result<Box<dyn IndexCopy>> {
        let _ = raw;
        let writer = match &index {
            AnyIndex::Dynamic(_) => self.create_dynamic_index(name)?,
            AnyIndex::Fixed(fixed) => {
                self.create_fixed_index(name, fixed.total_size(), fixed.chunk_size())?
            }
        };
        Ok(Box::new(EntriesCopy { writer, index }))
    }

    /// Finishes with another snapshot's manifest, given as its raw `index.json.blob` (a
    /// sync): its signed part stays as it is, so signatures hold. Every file it lists must
    /// have been stored in this session.
    fn finish_with_manifest(&self, raw_manifest: &[u8]) -> Result<BackupDir> {
        let _ = raw_manifest;
        bail!("this datastore cannot store a copied manifest")
    }
}

/// A copied index being stored; see [`BackupSession::start_index_copy`].
pub trait IndexCopy: Send {
    /// Stores the index; every chunk it references must be known to the store by then.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// The default [`IndexCopy`]: the entries, appended to a new index.
struct EntriesCopy {
    writer: Box<dyn IndexWriter>,
    index: AnyIndex,
}

impl IndexCopy for EntriesCopy {
    fn finish(mut self: Box<Self>) -> Result<()> {
        for i in 0..self.index.chunk_count() {
            let chunk = self.index.chunk_info(i).expect("i < chunk_count");
            self.writer.add_chunk(chunk.len(), &chunk.digest)?;
        }
        self.writer.finish().map(|_| ())
    }
}
