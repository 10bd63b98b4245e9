//! What reading needs from a datastore, local or on a PBS server: listings, directory
//! times, and a snapshot's manifest, files and chunks. The remote client implements the same
//! traits, so every reading command, whole-store mounts and a push's change detection work
//! on both.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};

use super::archive::{check_blob, check_index};
use super::local::{LocalDatastore, SnapshotEntry, MANIFEST_BLOB_NAME};
use super::manage;
use super::names::{BackupDir, BackupGroup, BackupNamespace, BackupType};
use super::writer::backup_running;
use super::ChunkSource;
use crate::format::blob::{decode_blob_with, MAX_BLOB_SIZE};
use crate::format::crypto::CryptConfig;
use crate::format::index::AnyIndex;
use crate::format::manifest::{FileInfo, Manifest, CLIENT_LOG_BLOB_NAME};
use anyhow::Context as _;

/// A snapshot and its file names and total size, as listings show it.
#[derive(Clone, Debug)]
pub struct SnapshotSummary {
    /// Whether it is finished, or damaged (see [`SnapshotEntry::is_readable`]).
    pub entry: SnapshotEntry,
    /// File names (readable snapshots; empty otherwise).
    pub files: Vec<String>,
    pub size: u64,
    /// The first line of the snapshot's notes (PBS's "comment"), if it has any.
    pub comment: Option<String>,
}

impl SnapshotSummary {
    /// A listed snapshot with its files' names and sizes.
    pub fn new(entry: SnapshotEntry, files: impl IntoIterator<Item = (String, u64)>) -> Self {
        let (files, sizes): (Vec<String>, Vec<u64>) = files.into_iter().unzip();
        SnapshotSummary {
            entry,
            files,
            size: sizes.iter().sum(),
            comment: None,
        }
    }

    /// The same with the comment taken from `notes` (None when they are empty).
    pub fn with_notes(mut self, notes: &str) -> Self {
        self.comment = notes
            .lines()
            .next()
            .filter(|line| !line.is_empty())
            .map(str::to_string);
        self
    }
}

/// A directory of a datastore's layout (a whole-store mount shows them).
#[derive(Clone, Copy, Debug)]
pub enum StoreDir<'a> {
    Namespace(&'a BackupNamespace),
    /// The `ns` directory holding a namespace's children.
    NsList(&'a BackupNamespace),
    Type(&'a BackupNamespace, BackupType),
    Group(&'a BackupNamespace, &'a BackupGroup),
}

pub trait DatastoreAccess: Send + Sync {
    /// `parent` and every namespace below it.
    fn list_namespaces(&self, parent: &BackupNamespace) -> Result<Vec<BackupNamespace>>;

    /// The namespaces directly below `parent`, in name order.
    fn child_namespaces(&self, parent: &BackupNamespace) -> Result<Vec<BackupNamespace>> {
        let mut children: Vec<BackupNamespace> = self
            .list_namespaces(parent)?
            .into_iter()
            .filter(|child| child.depth() == parent.depth() + 1)
            .collect();
        children.sort();
        Ok(children)
    }

    fn namespace_exists(&self, ns: &BackupNamespace) -> Result<bool> {
        Ok(ns.is_root() || self.list_namespaces(&BackupNamespace::root())?.contains(ns))
    }

    /// The groups of a namespace, in display order.
    fn list_groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>>;

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

    /// The newest readable snapshot of a group, opened (a damaged manifest is passed by):
    /// the base of a push's change detection.
    fn previous(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
    ) -> Result<Option<Arc<dyn SnapshotAccess>>> {
        let last = self
            .list_snapshots(ns, Some(group))?
            .into_iter()
            .rev()
            .find(|s| s.entry.is_readable());
        last.map(|s| self.open_snapshot(ns, &s.entry.dir))
            .transpose()
    }

    /// When a directory of the layout was last changed; None where the datastore has no
    /// such times (a server).
    fn dir_mtime(&self, dir: StoreDir<'_>) -> Option<SystemTime> {
        let _ = dir;
        None
    }

    /// Whether a backup of the group is being written now; None where the datastore cannot
    /// tell (a server lists an unfinished snapshot the same either way).
    fn backup_running(&self, ns: &BackupNamespace, group: &BackupGroup) -> Option<bool> {
        let _ = (ns, group);
        None
    }
}

pub trait SnapshotAccess: Send + Sync {
    fn dir(&self) -> &BackupDir;
    fn manifest(&self) -> &Manifest;
    /// Raw bytes of a file of the snapshot (index or blob, also `index.json.blob`).
    fn read_file(&self, filename: &str) -> Result<Vec<u8>>;
    /// The raw client log (`client.log.blob`), None when the snapshot has none.
    fn read_client_log(&self) -> Result<Option<Vec<u8>>>;
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

/// The manifest's JSON text, as stored (manifests are never encrypted).
pub fn read_manifest_json(snapshot: &dyn SnapshotAccess) -> Result<Vec<u8>> {
    let raw = snapshot.read_file(MANIFEST_BLOB_NAME)?;
    decode_blob_with(&raw, MAX_BLOB_SIZE, None)
        .with_context(|| format!("{MANIFEST_BLOB_NAME}: cannot decode"))
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
    fn read_client_log(&self) -> Result<Option<Vec<u8>>> {
        let path = self
            .store
            .snapshot_path(&self.ns, &self.dir)
            .join(CLIENT_LOG_BLOB_NAME);
        let file = match std::fs::File::open(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            opened => opened.with_context(|| format!("cannot open {}", path.display()))?,
        };
        let mut raw = Vec::new();
        // A log is a blob: a bigger file is damage, not something to read whole.
        std::io::Read::read_to_end(
            &mut std::io::Read::take(&file, MAX_BLOB_SIZE as u64 + 1),
            &mut raw,
        )
        .with_context(|| format!("cannot read {}", path.display()))?;
        if raw.len() > MAX_BLOB_SIZE {
            bail!("{} is larger than any blob can be", path.display());
        }
        Ok(Some(raw))
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

    fn namespace_exists(&self, ns: &BackupNamespace) -> Result<bool> {
        Ok(self.0.namespace_exists(ns))
    }

    fn list_groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>> {
        self.0.list_groups(ns)
    }

    /// The directory's mtime (the epoch when it cannot be read).
    fn dir_mtime(&self, dir: StoreDir<'_>) -> Option<SystemTime> {
        let path = match dir {
            StoreDir::Namespace(ns) => self.0.namespace_path(ns),
            StoreDir::NsList(ns) => self.0.namespace_path(ns).join("ns"),
            StoreDir::Type(ns, ty) => self.0.namespace_path(ns).join(ty.as_str()),
            StoreDir::Group(ns, group) => self.0.group_path(ns, group),
        };
        Some(
            std::fs::metadata(path)
                .and_then(|meta| meta.modified())
                .unwrap_or(UNIX_EPOCH),
        )
    }

    fn backup_running(&self, ns: &BackupNamespace, group: &BackupGroup) -> Option<bool> {
        Some(backup_running(&self.0, ns, group))
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
            .map(|(entry, manifest)| match manifest {
                Some(manifest) => {
                    let notes = manage::notes_of(&manifest.unprotected);
                    let files = manifest.files.into_iter().map(|f| (f.filename, f.size));
                    SnapshotSummary::new(entry, files).with_notes(&notes)
                }
                None => SnapshotSummary::new(entry, []),
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
