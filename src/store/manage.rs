//! Changing what a local datastore holds, the way PBS does it on its own datastores: forget
//! (remove) a snapshot, protection (the `.protected` marker), notes (the manifest's
//! `unprotected.notes`), prune, and namespaces. Checked against PBS 4.2's
//! `pbs-datastore/src/backup_info.rs` (`destroy`, `update_manifest`) and `datastore.rs`
//! (`update_protection`, namespace creation and removal).
//!
//! Locks: a backup writer holds its group's lock (`store::writer`); the snapshot being written
//! has no manifest yet. Forgetting that snapshot, or changing it, is refused while the writer
//! runs; every change here takes an exclusive `flock` on the snapshot directory (PBS's lock on
//! the snapshot, in its directory form) so two changes of one snapshot do not interleave.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::io::AsRawFd;

use anyhow::{bail, Context, Result};

use super::fs_modes;
use super::local::{decode_manifest, LocalDatastore, SnapshotEntry, MANIFEST_BLOB_NAME};
use super::names::{BackupDir, BackupGroup, BackupNamespace, MAX_NAMESPACE_DEPTH};
use super::prune::{self, KeepOptions, PruneCandidate, PruneMark};
use super::writer::backup_running;
use crate::format::blob::parse_blob;
use crate::format::manifest::CLIENT_LOG_BLOB_NAME;

/// The marker file of a protected snapshot.
pub const PROTECTED_MARKER: &str = ".protected";

/// Takes `flock(kind)` on `path` without waiting; `None` when someone else holds it.
fn try_flock(path: &std::path::Path, kind: i32) -> Result<Option<File>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: a valid open descriptor; the lock goes with the file.
    if unsafe { libc::flock(file.as_raw_fd(), kind | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(file))
}

/// The snapshot's directory locked exclusively; refuses one whose backup is still running.
fn lock_snapshot(store: &LocalDatastore, ns: &BackupNamespace, dir: &BackupDir) -> Result<File> {
    let path = store.snapshot_path(ns, dir);
    if !path.is_dir() {
        bail!("snapshot {dir} not found in namespace '{ns}'");
    }
    if !path.join(MANIFEST_BLOB_NAME).exists() && backup_running(store, ns, &dir.group) {
        bail!("snapshot {dir} is being written by a running backup");
    }
    try_flock(&path, libc::LOCK_EX)?
        .with_context(|| format!("snapshot {dir} is in use (locked by another process)"))
}

pub fn is_protected(store: &LocalDatastore, ns: &BackupNamespace, dir: &BackupDir) -> bool {
    store.snapshot_path(ns, dir).join(PROTECTED_MARKER).exists()
}

/// Removes a snapshot (its chunks stay until garbage collection). A protected snapshot is
/// refused. The group goes too when this was its last snapshot and no backup of it runs.
pub fn forget(store: &LocalDatastore, ns: &BackupNamespace, dir: &BackupDir) -> Result<()> {
    let _lock = lock_snapshot(store, ns, dir)?;
    if is_protected(store, ns, dir) {
        bail!("snapshot {dir} is protected; remove its protection first");
    }
    let path = store.snapshot_path(ns, dir);
    fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    remove_group_if_empty(store, ns, &dir.group)
}

fn remove_group_if_empty(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    group: &BackupGroup,
) -> Result<()> {
    let group_path = store.group_path(ns, group);
    // Under the group lock, so no backup of the group starts meanwhile.
    let Some(_lock) = try_flock(&group_path, libc::LOCK_EX)? else {
        return Ok(());
    };
    if store.list_group_snapshots(ns, group)?.is_empty() {
        fs::remove_dir_all(&group_path)
            .with_context(|| format!("cannot remove {}", group_path.display()))?;
    }
    Ok(())
}

/// Sets or clears a snapshot's protection (the `.protected` marker file).
pub fn set_protected(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    dir: &BackupDir,
    protected: bool,
) -> Result<()> {
    let _lock = lock_snapshot(store, ns, dir)?;
    let marker = store.snapshot_path(ns, dir).join(PROTECTED_MARKER);
    if protected {
        match fs_modes::create_new_file(&marker, fs_modes::FILE_MODE) {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(err) => Err(err).with_context(|| format!("cannot create {}", marker.display())),
        }
    } else {
        match fs::remove_file(&marker) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("cannot remove {}", marker.display())),
        }
    }
}

/// A snapshot's notes (empty when it has none).
pub fn notes(store: &LocalDatastore, ns: &BackupNamespace, dir: &BackupDir) -> Result<String> {
    let manifest = store.read_manifest(ns, dir)?;
    Ok(notes_of(&manifest.unprotected))
}

/// The notes in a manifest's `unprotected` part.
pub fn notes_of(unprotected: &serde_json::Value) -> String {
    unprotected
        .get("notes")
        .and_then(|notes| notes.as_str())
        .unwrap_or("")
        .to_string()
}

/// Replaces a snapshot's notes. The manifest is rewritten whole under a temporary name and
/// renamed into place; only its `unprotected` part changes, which the signature does not
/// cover, so a signed manifest stays valid.
pub fn set_notes(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    dir: &BackupDir,
    notes: &str,
) -> Result<()> {
    let _lock = lock_snapshot(store, ns, dir)?;
    let path = store.snapshot_path(ns, dir).join(MANIFEST_BLOB_NAME);
    let raw = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut manifest =
        decode_manifest(&raw).map_err(|why| anyhow::anyhow!("snapshot {dir} is damaged: {why}"))?;
    if !manifest.unprotected.is_object() {
        manifest.unprotected = serde_json::json!({});
    }
    manifest.unprotected["notes"] = serde_json::Value::String(notes.to_string());
    let blob = manifest.to_blob()?;
    fs_modes::replace_file(&path, &blob).with_context(|| format!("cannot write {}", path.display()))
}

/// Adds the client log (`client.log.blob`, a blob outside the manifest) to a finished
/// snapshot, as PBS's `upload-backup-log` does: refused when it already has one; the blob's
/// CRC is checked.
pub fn add_client_log(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    dir: &BackupDir,
    raw_blob: &[u8],
) -> Result<()> {
    let _lock = lock_snapshot(store, ns, dir)?;
    let snapshot = store.snapshot_path(ns, dir);
    if !snapshot.join(MANIFEST_BLOB_NAME).is_file() {
        bail!("snapshot {dir} is not finished: it has no manifest");
    }
    let path = snapshot.join(CLIENT_LOG_BLOB_NAME);
    if path.exists() {
        bail!("snapshot {dir} already has a client log");
    }
    parse_blob(raw_blob).with_context(|| format!("the client log of {dir} is damaged"))?;
    fs_modes::replace_file(&path, raw_blob)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// One snapshot's prune decision.
#[derive(Clone, Debug)]
pub struct PruneItem {
    pub entry: SnapshotEntry,
    pub mark: PruneMark,
}

impl PruneItem {
    /// The item as PBS's prune call answers it (and the official client prints it), naming
    /// `ns` when given and not the root.
    pub fn api_json(&self, ns: Option<&BackupNamespace>) -> serde_json::Value {
        let dir = &self.entry.dir;
        let mut value = serde_json::json!({
            "backup-type": dir.group.backup_type.as_str(),
            "backup-id": dir.group.backup_id,
            "backup-time": dir.time,
            "keep": self.mark.keep(),
            "protected": self.mark.protected(),
        });
        if let Some(ns) = ns.filter(|ns| !ns.is_root()) {
            value["ns"] = serde_json::json!(ns.to_string());
        }
        value
    }
}

/// Decides what `options` keep of `group` (oldest first, as PBS lists it) and, unless
/// `dry_run`, forgets the rest. A snapshot that cannot be removed (in use) is reported in the
/// returned errors, and the others are still pruned.
pub fn prune_group(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    group: &BackupGroup,
    options: &KeepOptions,
    dry_run: bool,
) -> Result<(Vec<PruneItem>, Vec<anyhow::Error>)> {
    // Through the listing that says when the namespace or group does not exist.
    let entries = store.list_snapshots(ns, Some(group))?;
    let candidates: Vec<PruneCandidate> = entries
        .iter()
        .map(|entry| PruneCandidate {
            time: entry.dir.time,
            protected: entry.protected,
            finished: entry.finished,
        })
        .collect();
    let marks = prune::select(&candidates, options, prune::system_local_time);
    let mut items: Vec<PruneItem> = entries
        .into_iter()
        .zip(marks)
        .map(|(entry, mark)| PruneItem { entry, mark })
        .collect();
    items.sort_by_key(|item| item.entry.dir.time);
    let mut errors = Vec::new();
    if !dry_run {
        for item in items.iter().filter(|item| !item.mark.keep()) {
            if let Err(err) = forget(store, ns, &item.entry.dir) {
                errors.push(err.context(format!("cannot remove {}", item.entry.dir)));
            }
        }
    }
    Ok((items, errors))
}

/// Creates namespace `ns` (its parent must exist).
pub fn create_namespace(store: &LocalDatastore, ns: &BackupNamespace) -> Result<()> {
    if ns.is_root() {
        bail!("the root namespace always exists");
    }
    if ns.depth() > MAX_NAMESPACE_DEPTH {
        bail!("namespace '{ns}' is deeper than {MAX_NAMESPACE_DEPTH} levels");
    }
    let parent = BackupNamespace::parse(&ns.components()[..ns.depth() - 1].join("/"))?;
    if !store.namespace_exists(&parent) {
        bail!("parent namespace '{parent}' does not exist");
    }
    if store.namespace_exists(ns) {
        bail!("namespace '{ns}' already exists");
    }
    let path = store.namespace_path(ns);
    fs_modes::create_dir_below(store.root(), &path, fs_modes::DIR_MODE)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Deletes namespace `ns`: only an empty one (no groups, no namespaces below) unless
/// `recursive`, which first forgets every snapshot below it — refused as a whole when any of
/// them is protected.
pub fn delete_namespace(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    recursive: bool,
) -> Result<()> {
    if ns.is_root() {
        bail!("the root namespace cannot be deleted");
    }
    let all = store.list_namespaces(ns)?;
    let mut groups = Vec::new();
    for each in &all {
        for group in store.list_groups(each)? {
            groups.push((each.clone(), group));
        }
    }
    if !recursive && (all.len() > 1 || !groups.is_empty()) {
        bail!(
            "namespace '{ns}' is not empty ({} groups, {} namespaces below); use --recursive \
             to delete it with everything in it",
            groups.len(),
            all.len() - 1
        );
    }
    for (each, group) in &groups {
        for entry in store.list_group_snapshots(each, group)? {
            if entry.protected {
                bail!(
                    "namespace '{ns}' holds protected snapshot {} (namespace '{each}'); \
                     nothing was deleted",
                    entry.dir
                );
            }
        }
    }
    for (each, group) in &groups {
        for entry in store.list_group_snapshots(each, group)? {
            forget(store, each, &entry.dir)?;
        }
    }
    let path = store.namespace_path(ns);
    fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))
}
