//! A PBS server behind the same reading interface as a local datastore: listings through
//! the admin API, each snapshot read through its own reader session.

use std::sync::Arc;

use anyhow::Result;

use super::{RemoteDatastore, RemoteReader};
use crate::format::manifest::Manifest;
use crate::store::access::{DatastoreAccess, SnapshotAccess, SnapshotSummary};
use crate::store::admin::DatastoreAdmin;
use crate::store::gc::{GcOptions, GcProgress, GcReport};
use crate::store::local::MANIFEST_BLOB_NAME;
use crate::store::manage::PruneItem;
use crate::store::names::{BackupDir, BackupGroup, BackupNamespace};
use crate::store::prune::KeepOptions;
use crate::store::ChunkSource;

fn not_yet<T>(command: &str) -> Result<T> {
    anyhow::bail!(
        "`pbsfs {command}` is not supported on a server yet; it works on a local datastore \
         (--repository PATH)"
    )
}

pub struct RemoteAccess(pub Arc<RemoteDatastore>);

impl DatastoreAccess for RemoteAccess {
    fn list_namespaces(&self, parent: &BackupNamespace) -> Result<Vec<BackupNamespace>> {
        self.0.list_namespaces(parent)
    }

    /// The groups that have snapshots (taken from the snapshot listing, as a mount shows
    /// them).
    fn list_groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>> {
        let mut groups: Vec<BackupGroup> = self
            .0
            .list_snapshots(ns, None)?
            .into_iter()
            .map(|s| s.entry.dir.group)
            .collect();
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    fn list_snapshots(
        &self,
        ns: &BackupNamespace,
        group: Option<&BackupGroup>,
    ) -> Result<Vec<SnapshotSummary>> {
        let listed = self.0.list_snapshots(ns, group)?;
        Ok(listed.into_iter().map(summary).collect())
    }

    fn open_snapshot(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
    ) -> Result<Arc<dyn SnapshotAccess>> {
        let reader = self.0.open_reader(ns, dir)?;
        let manifest = reader.read_manifest()?;
        Ok(Arc::new(RemoteSnapshot { reader, manifest }))
    }

    /// Asks for the whole namespace: asking for an unknown group is an error on PBS.
    fn previous(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
    ) -> Result<Option<Arc<dyn SnapshotAccess>>> {
        self.0
            .last_snapshot(ns, group)?
            .map(|dir| self.open_snapshot(ns, &dir))
            .transpose()
    }
}

/// A listed snapshot as the local listing shows it: the manifest's files, without the
/// manifest itself and the client log.
fn summary(snapshot: super::datastore::RemoteSnapshot) -> SnapshotSummary {
    let files = snapshot
        .files
        .into_iter()
        .filter(|f| f.filename != MANIFEST_BLOB_NAME && f.filename != "client.log.blob");
    SnapshotSummary::new(
        snapshot.entry,
        files.map(|f| (f.filename, f.size.unwrap_or(0))),
    )
    .with_notes(snapshot.comment.as_deref().unwrap_or(""))
}

/// A snapshot read through one reader-protocol session.
pub struct RemoteSnapshot {
    reader: Arc<RemoteReader>,
    manifest: Manifest,
}

impl SnapshotAccess for RemoteSnapshot {
    fn dir(&self) -> &BackupDir {
        self.reader.dir()
    }
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    fn read_file(&self, filename: &str) -> Result<Vec<u8>> {
        self.reader.download(filename)
    }
    fn chunk_source(&self) -> Arc<dyn ChunkSource> {
        self.reader.clone()
    }
}

// The admin API calls come next (issue 15); until then a server refuses clearly.
impl DatastoreAdmin for RemoteAccess {
    fn forget(&self, _: &BackupNamespace, _: &BackupDir) -> Result<()> {
        not_yet("forget")
    }
    fn set_protected(&self, _: &BackupNamespace, _: &BackupDir, _: bool) -> Result<()> {
        not_yet("protect")
    }
    fn notes(&self, _: &BackupNamespace, _: &BackupDir) -> Result<String> {
        not_yet("notes")
    }
    fn set_notes(&self, _: &BackupNamespace, _: &BackupDir, _: &str) -> Result<()> {
        not_yet("notes")
    }
    fn prune_group(
        &self,
        _: &BackupNamespace,
        _: &BackupGroup,
        _: &KeepOptions,
        _: bool,
    ) -> Result<(Vec<PruneItem>, Vec<anyhow::Error>)> {
        not_yet("prune")
    }
    fn create_namespace(&self, _: &BackupNamespace) -> Result<()> {
        not_yet("namespaces --create")
    }
    fn delete_namespace(&self, _: &BackupNamespace, _: bool) -> Result<()> {
        not_yet("namespaces --delete")
    }
    fn collect_garbage(&self, _: &GcOptions, _: &mut dyn FnMut(GcProgress)) -> Result<GcReport> {
        not_yet("gc")
    }
}
