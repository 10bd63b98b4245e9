//! The snapshots and archives a whole-store mount has open: a few of each, in LRUs, so
//! memory stays bounded and an evicted one is simply reopened.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use lru::LruCache;

use super::inodes::Slot;
use crate::format::crypto::CryptConfig;
use crate::snapfs::ArchiveFs;
use crate::store::access::{DatastoreAccess, SnapshotAccess};
use crate::store::cache::{CacheVia, ChunkCache};
use crate::store::chunk_reader::VerifyingChunkReader;
use crate::store::names::{BackupDir, BackupNamespace};
use crate::store::open::{open_mountable, OpenedArchive};
use crate::store::range::IndexReader;

/// A namespace as the mount shows it: `ns/a/ns/b/`, empty for the root.
fn ns_path(ns: &BackupNamespace) -> String {
    ns.components().iter().map(|c| format!("ns/{c}/")).collect()
}

/// Archives (and image readers) kept open at once.
const OPEN_ARCHIVES: usize = 16;
/// Snapshots (manifest, and on a server a reader session) kept open at once.
const OPEN_SNAPSHOTS: usize = 16;

#[derive(Clone)]
pub(super) enum Opened {
    Archive(Arc<ArchiveFs>),
    Image(Arc<IndexReader>),
}

pub(super) struct OpenArchives {
    access: Arc<dyn DatastoreAccess>,
    /// One cache, and so one memory budget, for every archive of the mount.
    chunks: Arc<ChunkCache>,
    /// Decrypts encrypted archives.
    crypt: Option<Arc<CryptConfig>>,
    snapshots: Mutex<LruCache<(BackupNamespace, BackupDir), Arc<dyn SnapshotAccess>>>,
    open: Mutex<LruCache<usize, Opened>>,
    /// Serialises opening per slot, so parallel lookups open an archive once.
    opening: Mutex<HashMap<usize, Arc<Mutex<()>>>>,
}

impl OpenArchives {
    pub fn new(
        access: Arc<dyn DatastoreAccess>,
        chunks: Arc<ChunkCache>,
        crypt: Option<Arc<CryptConfig>>,
    ) -> Self {
        OpenArchives {
            access,
            chunks,
            crypt,
            snapshots: Mutex::new(LruCache::new(NonZeroUsize::new(OPEN_SNAPSHOTS).unwrap())),
            open: Mutex::new(LruCache::new(NonZeroUsize::new(OPEN_ARCHIVES).unwrap())),
            opening: Mutex::new(HashMap::new()),
        }
    }

    /// The archive of `slot`, opened now unless it is still open.
    pub fn get(&self, slot_index: usize, slot: &Slot) -> Result<Opened> {
        if let Some(found) = self.open.lock().unwrap().get(&slot_index) {
            return Ok(found.clone());
        }
        let gate = self
            .opening
            .lock()
            .unwrap()
            .entry(slot_index)
            .or_default()
            .clone();
        let _guard = gate.lock().unwrap();
        // Another thread may have opened it while we waited.
        if let Some(found) = self.open.lock().unwrap().get(&slot_index) {
            return Ok(found.clone());
        }
        let opened = self.open_slot(slot);
        self.opening.lock().unwrap().remove(&slot_index);
        let opened = opened?;
        self.open.lock().unwrap().put(slot_index, opened.clone());
        Ok(opened)
    }

    /// The archive of `slot` if it is open now (without opening it).
    pub fn peek(&self, slot_index: usize) -> Option<Opened> {
        self.open.lock().unwrap().peek(&slot_index).cloned()
    }

    /// A snapshot opened for reading (its manifest read; on a server, a reader session).
    pub fn snapshot(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
    ) -> Result<Arc<dyn SnapshotAccess>> {
        let key = (ns.clone(), dir.clone());
        if let Some(found) = self.snapshots.lock().unwrap().get(&key) {
            return Ok(found.clone());
        }
        let opened = self.access.open_snapshot(ns, dir)?;
        self.snapshots.lock().unwrap().put(key, opened.clone());
        Ok(opened)
    }

    fn open_slot(&self, slot: &Slot) -> Result<Opened> {
        let snapshot = self.snapshot(&slot.ns, &slot.dir)?;
        // Each snapshot fetches through its own source (on a server, its reader session)
        // into the one shared cache.
        let chunks = Arc::new(CacheVia::new(
            self.chunks.clone(),
            Arc::new(VerifyingChunkReader::with_key(
                snapshot.chunk_source(),
                self.crypt.clone(),
            )),
        ));
        Ok(match open_mountable(&*snapshot, &slot.what, chunks)? {
            OpenedArchive::Pxar(pxar) => {
                let label = format!("{}{}/{}", ns_path(&slot.ns), slot.dir, slot.what.name());
                Opened::Archive(Arc::new(ArchiveFs::open(pxar, label)?))
            }
            OpenedArchive::Image(reader) => Opened::Image(reader),
        })
    }
}
