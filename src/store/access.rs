//! What reading commands need from a datastore, local or on a PBS server: listings, and a
//! snapshot's manifest, files and chunks. The remote client implements the same traits, so
//! `snapshots`, `files`, `restore`, `verify` and snapshot mounts work on both.

use std::sync::Arc;

use anyhow::Result;

use super::archive::{check_blob, check_index};
use super::chunk_reader::ChunkReader;
use super::local::{LocalDatastore, SnapshotEntry, MANIFEST_BLOB_NAME};
use super::names::{BackupDir, BackupGroup, BackupNamespace};
use super::range::IndexReader;
use super::ChunkSource;
use crate::format::blob::{decode_blob_with, MAX_BLOB_SIZE};
use crate::format::crypto::CryptConfig;
use crate::format::index::AnyIndex;
use crate::format::manifest::{FileInfo, Manifest};
use anyhow::Context as _;

/// A snapshot and its file names and total size, as listings show it.
#[derive(Clone, Debug)]
pub struct SnapshotSummary {
    /// Whether it is finished, or damaged (see [`SnapshotEntry::is_readable`]).
    pub entry: SnapshotEntry,
    /// File names (readable snapshots; empty otherwise).
    pub files: Vec<String>,
    pub size: u64,
}

pub trait DatastoreAccess: Send + Sync {
    /// `parent` and every namespace below it.
    fn list_namespaces(&self, parent: &BackupNamespace) -> Result<Vec<BackupNamespace>>;
    /// Snapshots of a namespace (or one group), ordered by group then time: finished,
    /// unfinished and damaged ones alike; a damaged manifest is no error of the listing.
    fn list_snapshots(
        &self,
        ns: &BackupNamespace,
        group: Option<&BackupGroup>,
    ) -> Result<Vec<SnapshotSummary>>;
    /// Opens a finished snapshot for reading (reads its manifest; a damaged one is an
    /// error that says so).
    fn open_snapshot(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
    ) -> Result<Arc<dyn SnapshotAccess>>;
}

pub trait SnapshotAccess: Send + Sync {
    fn dir(&self) -> &BackupDir;
    fn manifest(&self) -> &Manifest;
    /// Raw bytes of a file of the snapshot (index or blob, also `index.json.blob`).
    fn read_file(&self, filename: &str) -> Result<Vec<u8>>;
    /// Where the snapshot's chunks come from.
    fn chunk_source(&self) -> Arc<dyn ChunkSource>;
}

fn file_info<'a>(manifest: &'a Manifest, filename: &str) -> Result<&'a FileInfo> {
    manifest
        .file(filename)
        .with_context(|| format!("{filename} is not listed in the snapshot's manifest"))
}

/// An index of the snapshot, checked against the manifest.
pub fn open_index(snapshot: &dyn SnapshotAccess, filename: &str) -> Result<AnyIndex> {
    let info = file_info(snapshot.manifest(), filename)?;
    let raw = snapshot.read_file(filename)?;
    check_index(filename, &raw, info)
}

/// An index of the snapshot as a random-access reader over `chunks`.
pub fn open_index_reader(
    snapshot: &dyn SnapshotAccess,
    filename: &str,
    chunks: Arc<dyn ChunkReader>,
) -> Result<IndexReader> {
    let index = open_index(snapshot, filename)?;
    Ok(IndexReader::new(filename, Arc::new(index), chunks))
}

/// A blob of the snapshot, checked against the manifest, decoded (decrypted with `crypt`).
pub fn read_blob(
    snapshot: &dyn SnapshotAccess,
    filename: &str,
    crypt: Option<&CryptConfig>,
) -> Result<Vec<u8>> {
    let info = file_info(snapshot.manifest(), filename)?;
    let raw = snapshot.read_file(filename)?;
    check_blob(filename, &raw, info)?;
    decode_blob_with(&raw, MAX_BLOB_SIZE, crypt)
        .with_context(|| format!("{filename}: cannot decode"))
}

/// A snapshot of a local datastore.
pub struct LocalSnapshot {
    store: Arc<LocalDatastore>,
    ns: BackupNamespace,
    dir: BackupDir,
    manifest: Manifest,
}

impl LocalSnapshot {
    pub fn open(store: Arc<LocalDatastore>, ns: &BackupNamespace, dir: &BackupDir) -> Result<Self> {
        let manifest = store.read_manifest(ns, dir)?;
        Ok(LocalSnapshot {
            store,
            ns: ns.clone(),
            dir: dir.clone(),
            manifest,
        })
    }
}

impl SnapshotAccess for LocalSnapshot {
    fn dir(&self) -> &BackupDir {
        &self.dir
    }
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    fn read_file(&self, filename: &str) -> Result<Vec<u8>> {
        self.store.read_snapshot_file(&self.ns, &self.dir, filename)
    }
    fn chunk_source(&self) -> Arc<dyn ChunkSource> {
        self.store.clone()
    }
}

/// Local access needs the datastore behind an `Arc` (snapshots keep it alive).
pub struct LocalAccess(pub Arc<LocalDatastore>);

impl DatastoreAccess for LocalAccess {
    fn list_namespaces(&self, parent: &BackupNamespace) -> Result<Vec<BackupNamespace>> {
        self.0.list_namespaces(parent)
    }

    fn list_snapshots(
        &self,
        ns: &BackupNamespace,
        group: Option<&BackupGroup>,
    ) -> Result<Vec<SnapshotSummary>> {
        Ok(self
            .0
            .list_snapshots_with_manifests(ns, group)?
            .into_iter()
            .map(|(entry, manifest)| {
                let files = manifest.map(|m| m.files).unwrap_or_default();
                SnapshotSummary {
                    entry,
                    size: files.iter().map(|f| f.size).sum(),
                    files: files.into_iter().map(|f| f.filename).collect(),
                }
            })
            .collect())
    }

    fn open_snapshot(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
    ) -> Result<Arc<dyn SnapshotAccess>> {
        Ok(Arc::new(LocalSnapshot::open(self.0.clone(), ns, dir)?))
    }
}

/// Size of the raw manifest file, as `files` lists it.
pub fn manifest_file_size(snapshot: &dyn SnapshotAccess) -> Result<u64> {
    Ok(snapshot.read_file(MANIFEST_BLOB_NAME)?.len() as u64)
}
