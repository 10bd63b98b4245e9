//! A PBS server behind the same reading interface as a local datastore: listings through
//! the admin API, each snapshot read through its own reader session.

use std::sync::Arc;

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Result};

use super::error::RemoteError;
use super::runtime::block_on;
use super::{RemoteDatastore, RemoteReader};
use crate::format::manifest::{Manifest, CLIENT_LOG_BLOB_NAME};
use crate::format::time::parse_rfc3339;
use crate::store::access::{DatastoreAccess, SnapshotAccess, SnapshotSummary};
use crate::store::admin::DatastoreAdmin;
use crate::store::gc::{GcOptions, GcProgress, GcReport};
use crate::store::local::{SnapshotEntry, MANIFEST_BLOB_NAME};
use crate::store::manage::PruneItem;
use crate::store::names::{BackupDir, BackupGroup, BackupNamespace};
use crate::store::prune::{self, KeepOptions, PruneCandidate, PruneMark};
use crate::store::ChunkSource;

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
        .filter(|f| f.filename != MANIFEST_BLOB_NAME && f.filename != CLIENT_LOG_BLOB_NAME);
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
    /// The server answers a missing file with an error status (PBS: 400 or 404), which
    /// reads as "no log"; a failing connection stays an error.
    fn read_client_log(&self) -> Result<Option<Vec<u8>>> {
        match block_on(self.reader.download_async(CLIENT_LOG_BLOB_NAME)) {
            Ok(raw) => Ok(Some(raw.into())),
            Err(RemoteError::Status { .. }) => Ok(None),
            Err(err) => Err(anyhow::Error::new(err).context(format!(
                "cannot download {}/{CLIENT_LOG_BLOB_NAME}",
                self.dir()
            ))),
        }
    }
    fn chunk_source(&self) -> Arc<dyn ChunkSource> {
        self.reader.clone()
    }
}

/// The admin API calls of `remote::admin`, with the answers turned into what the local
/// datastore answers.
impl DatastoreAdmin for RemoteAccess {
    fn forget(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<()> {
        self.0.forget(ns, dir)
    }

    fn set_protected(&self, ns: &BackupNamespace, dir: &BackupDir, protected: bool) -> Result<()> {
        self.0.set_protected(ns, dir, protected)
    }

    fn notes(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<String> {
        self.0.notes(ns, dir)
    }

    fn set_notes(&self, ns: &BackupNamespace, dir: &BackupDir, notes: &str) -> Result<()> {
        self.0.set_notes(ns, dir, notes)
    }

    /// The server decides; the reasons come from the same selection run here on the listing
    /// taken just before (the server answers only keep/protected), "keep" where the two
    /// disagree. A snapshot the server was to remove but still lists is an error (the server
    /// only warns in its log).
    fn prune_group(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
        options: &KeepOptions,
        dry_run: bool,
    ) -> Result<(Vec<PruneItem>, Vec<anyhow::Error>)> {
        let before = self.0.list_snapshots(ns, Some(group))?;
        let candidates: Vec<PruneCandidate> = before
            .iter()
            .map(|s| PruneCandidate {
                time: s.entry.dir.time,
                protected: s.entry.protected,
                finished: s.entry.finished,
            })
            .collect();
        let marks = prune::select(&candidates, options, prune::system_local_time);
        let local: HashMap<i64, (SnapshotEntry, PruneMark)> = before
            .into_iter()
            .zip(marks)
            .map(|(s, mark)| (s.entry.dir.time, (s.entry, mark)))
            .collect();
        let decided = self.0.prune(ns, group, options, dry_run)?;
        let items: Vec<PruneItem> = decided
            .into_iter()
            .map(|item| {
                let (entry, mark) = match local.get(&item.dir.time) {
                    Some((entry, mark)) => (entry.clone(), Some(*mark)),
                    None => (
                        SnapshotEntry {
                            dir: item.dir.clone(),
                            finished: true,
                            protected: item.protected,
                            damaged: None,
                        },
                        None,
                    ),
                };
                let mark = match mark {
                    Some(mark)
                        if mark.keep() == item.keep && mark.protected() == item.protected =>
                    {
                        mark
                    }
                    _ if item.protected => PruneMark::Protected,
                    _ if item.keep => PruneMark::KeptByServer,
                    _ => PruneMark::Remove,
                };
                PruneItem { entry, mark }
            })
            .collect();
        let mut errors = Vec::new();
        if !dry_run {
            let left: Vec<i64> = self
                .0
                .list_snapshots(ns, Some(group))?
                .into_iter()
                .map(|s| s.entry.dir.time)
                .collect();
            for item in items.iter().filter(|item| !item.mark.keep()) {
                if left.contains(&item.entry.dir.time) {
                    errors.push(anyhow::anyhow!(
                        "the server did not remove {} (its prune task log says why)",
                        item.entry.dir
                    ));
                }
            }
        }
        Ok((items, errors))
    }

    fn create_namespace(&self, ns: &BackupNamespace) -> Result<()> {
        self.0.create_namespace(ns)
    }

    fn delete_namespace(&self, ns: &BackupNamespace, recursive: bool) -> Result<()> {
        self.0.delete_namespace(ns, recursive)
    }

    /// Starts the server's collection and follows its task log (each line to `progress`);
    /// the report is the server's status of that run, with the minimum atime and missing
    /// chunks read from the log. A server has no dry run.
    fn collect_garbage(
        &self,
        options: &GcOptions,
        progress: &mut dyn FnMut(GcProgress),
    ) -> Result<GcReport> {
        if options.dry_run {
            bail!("a PBS server has no dry run of garbage collection; run it without --dry-run");
        }
        let started = Instant::now();
        let upid = self.0.start_gc()?;
        let mut min_atime = None;
        let mut missing_chunks = 0;
        self.0.follow_task(&upid, &mut |line| {
            if let Some(time) = min_atime_of(line) {
                min_atime = Some(time);
            }
            if line.contains("non-existent chunk") {
                missing_chunks += 1;
            }
            progress(GcProgress::ServerLog(line.to_string()));
        })?;
        let status = self.0.gc_status()?;
        if status.upid.as_deref() != Some(upid.as_str()) {
            bail!("the server's garbage collection status is not the one of task {upid}");
        }
        Ok(GcReport {
            dry_run: false,
            min_atime: min_atime.unwrap_or(0),
            index_files: status.index_file_count,
            missing_chunks,
            removed_chunks: status.removed_chunks,
            removed_bytes: status.removed_bytes,
            removed_bad: status.removed_bad,
            still_bad: status.still_bad,
            removed_tmp_files: 0,
            pending_chunks: status.pending_chunks,
            pending_bytes: status.pending_bytes,
            kept_chunks: status.disk_chunks,
            kept_bytes: status.disk_bytes,
            elapsed: started.elapsed(),
            by_server: true,
        })
    }
}

/// The minimum access time PBS logs at the start of a collection ("... minimum access time
/// is 2026-12-05T07:00:00Z", or "extending minimum access time to ..." after it).
fn min_atime_of(line: &str) -> Option<i64> {
    let (_, time) = line
        .split_once("minimum access time is ")
        .or_else(|| line.split_once("extending minimum access time to "))?;
    parse_rfc3339(time.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_atime_is_read_from_pbs_log_lines() {
        assert_eq!(
            min_atime_of(
                "Using access time cutoff 1d 5m, minimum access time is 2026-12-05T07:00:00Z"
            ),
            parse_rfc3339("2026-12-05T07:00:00Z")
        );
        assert_eq!(
            min_atime_of(
                "Oldest backup writer started at 1d, extending minimum access time to \
                 2026-12-04T07:00:00Z"
            ),
            parse_rfc3339("2026-12-04T07:00:00Z")
        );
        assert_eq!(min_atime_of("Start GC phase1 (mark used chunks)"), None);
    }
}
