//! Writing a new snapshot into a local datastore the way PBS does (datastore.md §8):
//! group and owner, locks, files under temporary names renamed into place, and the manifest
//! written last. Until the manifest exists the snapshot is unfinished and hidden from
//! listings; a writer dropped before `finish` removes its directory again.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::fs_modes;
use super::local::{LocalDatastore, MANIFEST_BLOB_NAME};
use super::names::{is_safe_id, BackupDir, BackupGroup, BackupNamespace};
use super::process_lock::{self, WriterLock};
use crate::format::manifest::{FileInfo, Manifest};
use crate::format::Digest;

/// A snapshot being written. Holds the group lock and a shared chunk-store lock.
pub struct SnapshotWriter {
    store: Arc<LocalDatastore>,
    ns: BackupNamespace,
    dir: BackupDir,
    path: PathBuf,
    files: Vec<FileInfo>,
    finished: bool,
    _group_lock: File,
    _store_lock: WriterLock,
}

/// A file being written under a temporary name in the snapshot directory.
pub struct PendingFile {
    pub file: File,
    tmp_path: PathBuf,
    name: String,
}

impl SnapshotWriter {
    /// Starts snapshot `dir` in namespace `ns`. The group is created with `owner` if new;
    /// an existing group must not be locked by another writer, and `dir.time` must be newer
    /// than its newest finished snapshot.
    pub fn begin(
        store: Arc<LocalDatastore>,
        ns: &BackupNamespace,
        dir: &BackupDir,
        owner: &str,
    ) -> Result<Self> {
        if !store.namespace_exists(ns) {
            bail!(
                "namespace '{ns}' does not exist in {}",
                store.root().display()
            );
        }
        let store_lock = process_lock::lock_writer(store.root())?;
        let group_path = store.group_path(ns, &dir.group);
        fs_modes::create_dir_below(&store.namespace_path(ns), &group_path, fs_modes::DIR_MODE)
            .with_context(|| format!("cannot create {}", group_path.display()))?;
        let group_lock = File::open(&group_path)?;
        if unsafe { libc::flock(group_lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "backup group '{}' is locked: another backup of it is running",
                dir.group
            );
        }
        ensure_owner(&group_path, owner)?;

        // Unfinished snapshots of an unlocked group are left-overs of an interrupted run,
        // and so, likely, are temporary chunk files of the killed writer.
        let mut interrupted_run = false;
        for entry in store.list_group_snapshots(ns, &dir.group)? {
            if !entry.finished {
                let stale = store.snapshot_path(ns, &entry.dir);
                let _ = fs::remove_dir_all(&stale);
                interrupted_run = true;
            } else if entry.dir.time >= dir.time {
                bail!(
                    "backup time {} is not newer than the last snapshot {} of the group",
                    dir.time_string(),
                    entry.dir
                );
            }
        }
        if interrupted_run {
            // Best effort: leftovers only cost space, and gc removes them too.
            let _ = store.remove_abandoned_chunk_files();
        }
        let path = store.snapshot_path(ns, dir);
        fs_modes::create_dir(&path, fs_modes::DIR_MODE)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(SnapshotWriter {
            store,
            ns: ns.clone(),
            dir: dir.clone(),
            path,
            files: Vec::new(),
            finished: false,
            _group_lock: group_lock,
            _store_lock: store_lock,
        })
    }

    pub fn dir(&self) -> &BackupDir {
        &self.dir
    }

    pub fn namespace(&self) -> &BackupNamespace {
        &self.ns
    }

    pub fn store(&self) -> &Arc<LocalDatastore> {
        &self.store
    }

    /// Stores an encoded chunk (see [`LocalDatastore::insert_chunk`]).
    pub fn insert_chunk(&self, digest: &Digest, raw_blob: &[u8]) -> Result<bool> {
        self.store.insert_chunk(digest, raw_blob)
    }

    /// Opens `name` for writing under a temporary name.
    pub fn create_file(&self, name: &str) -> Result<PendingFile> {
        if !is_safe_id(name) || name == MANIFEST_BLOB_NAME {
            bail!("invalid archive file name '{name}'");
        }
        if self.files.iter().any(|f| f.filename == name) {
            bail!("archive '{name}' was already written to this snapshot");
        }
        let tmp_path = self.path.join(format!("{name}.tmp_{}", std::process::id()));
        // The snapshot directory is ours alone (the group is locked): a leftover of the same
        // name can only be our own failed attempt.
        let _ = fs::remove_file(&tmp_path);
        let file = fs_modes::create_new_file(&tmp_path, fs_modes::FILE_MODE)
            .with_context(|| format!("cannot create {}", tmp_path.display()))?;
        Ok(PendingFile {
            file,
            tmp_path,
            name: name.to_string(),
        })
    }

    /// Makes a written file final and records it for the manifest.
    pub fn commit_file(&mut self, pending: PendingFile, info: FileInfo) -> Result<()> {
        if info.filename != pending.name {
            bail!("file name mismatch: {} vs {}", info.filename, pending.name);
        }
        pending.file.sync_all()?;
        fs::rename(&pending.tmp_path, self.path.join(&pending.name))?;
        self.files.push(info);
        Ok(())
    }

    /// Writes a whole small file (a blob) and records it.
    pub fn add_blob(&mut self, name: &str, raw_blob: &[u8], info: FileInfo) -> Result<()> {
        use std::io::Write;
        let mut pending = self.create_file(name)?;
        pending.file.write_all(raw_blob)?;
        self.commit_file(pending, info)
    }

    /// Writes the manifest last; from then on the snapshot is visible and complete.
    /// `complete` may add to the manifest (unprotected data, signature) before it is written.
    pub fn finish(
        mut self,
        complete: impl FnOnce(&mut Manifest) -> Result<()>,
    ) -> Result<BackupDir> {
        let mut manifest = Manifest::new(
            self.dir.group.backup_type.as_str(),
            &self.dir.group.backup_id,
            self.dir.time,
        );
        manifest.files = self.files.clone();
        complete(&mut manifest)?;
        let raw = manifest.to_blob()?;
        self.write_manifest(&raw)
    }

    /// Finishes with a manifest made elsewhere (a copy of another datastore's snapshot),
    /// stored byte for byte. It must name this snapshot and list only files written here,
    /// with the sizes and checksums they have here.
    pub fn finish_with_raw_manifest(mut self, raw: &[u8]) -> Result<BackupDir> {
        let manifest = Manifest::from_blob(raw).context("the copied manifest cannot be read")?;
        let names_this = manifest.backup_type == self.dir.group.backup_type.as_str()
            && manifest.backup_id == self.dir.group.backup_id
            && manifest.backup_time == self.dir.time;
        if !names_this {
            bail!(
                "the copied manifest is that of {}/{}/{}, not of {}",
                manifest.backup_type,
                manifest.backup_id,
                manifest.backup_time,
                self.dir
            );
        }
        for listed in &manifest.files {
            let written = self.files.iter().find(|f| f.filename == listed.filename);
            match written {
                Some(w) if w.size == listed.size && w.csum == listed.csum => {}
                Some(_) => bail!("{}: differs from what the manifest says", listed.filename),
                None => bail!("{}: listed in the manifest but not copied", listed.filename),
            }
        }
        self.write_manifest(raw)
    }

    fn write_manifest(&mut self, raw: &[u8]) -> Result<BackupDir> {
        // Chunks are written without fsync each; before the manifest makes the snapshot
        // complete they must be on disk, or a crash could leave a complete-looking snapshot
        // with missing chunks. One syncfs, as PBS does at its default sync level.
        sync_filesystem(&self.store.root().join(".chunks")).with_context(|| {
            format!("cannot sync the datastore {}", self.store.root().display())
        })?;
        let tmp = self.path.join("index.json.tmp_manifest");
        let _ = fs::remove_file(&tmp);
        let mut file = fs_modes::create_new_file(&tmp, fs_modes::FILE_MODE)?;
        std::io::Write::write_all(&mut file, raw)?;
        file.sync_all()?;
        fs::rename(&tmp, self.path.join(MANIFEST_BLOB_NAME))?;
        if let Ok(dir) = File::open(&self.path) {
            let _ = dir.sync_all();
        }
        self.finished = true;
        Ok(self.dir.clone())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        // After a commit the temporary name is gone and this does nothing.
        let _ = fs::remove_file(&self.tmp_path);
    }
}

/// Whether a backup of `group` is being written now: a writer holds the group's lock, so an
/// unfinished snapshot in it is work in progress rather than a left-over. Probed by taking
/// the lock shared for an instant, without waiting.
pub fn backup_running(store: &LocalDatastore, ns: &BackupNamespace, group: &BackupGroup) -> bool {
    let Ok(dir) = File::open(store.group_path(ns, group)) else {
        return false;
    };
    // SAFETY: a valid open descriptor; the lock goes with it when `dir` is dropped.
    unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

/// Makes sure the group has a valid `owner` file, writing `owner` when it is missing, empty
/// or not an auth id (a write cut short by a full disk, say: PBS would reject the group). The
/// file is written under a temporary name and renamed, so it is whole or absent. The caller
/// holds the group lock.
fn ensure_owner(group_path: &Path, owner: &str) -> Result<()> {
    let path = group_path.join("owner");
    match fs::read_to_string(&path) {
        Ok(text) if is_auth_id(text.trim_end_matches('\n')) => return Ok(()),
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
    fs_modes::replace_file(&path, format!("{owner}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Whether `text` has the form of a PBS auth id: `user@realm` or `user@realm!token`.
fn is_auth_id(text: &str) -> bool {
    let valid = |part: &str| {
        !part.is_empty()
            && part.chars().all(|c| {
                !c.is_control()
                    && !c.is_whitespace()
                    && c != '@'
                    && c != '!'
                    && c != ':'
                    && c != '/'
            })
    };
    let Some((user, rest)) = text.split_once('@') else {
        return false;
    };
    match rest.split_once('!') {
        Some((realm, token)) => valid(user) && valid(realm) && valid(token),
        None => valid(user) && valid(rest),
    }
}

/// Flushes everything written to the file system holding `path` (syncfs(2)).
fn sync_filesystem(path: &Path) -> std::io::Result<()> {
    let dir = File::open(path)?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::CryptMode;
    use crate::store::names::BackupGroup;

    /// One datastore for all tests (creating 65536 chunk directories is slow on busy disks);
    /// each test uses a group of its own.
    fn store() -> Arc<LocalDatastore> {
        static STORE: std::sync::OnceLock<(tempfile::TempDir, Arc<LocalDatastore>)> =
            std::sync::OnceLock::new();
        STORE
            .get_or_init(|| {
                let tmp = tempfile::tempdir().unwrap();
                let store = Arc::new(LocalDatastore::create(&tmp.path().join("ds")).unwrap());
                (tmp, store)
            })
            .1
            .clone()
    }

    fn dir_in(group: &str, time: i64) -> BackupDir {
        BackupDir::new(BackupGroup::parse(group).unwrap(), time).unwrap()
    }

    #[test]
    fn a_finished_snapshot_is_listed_and_readable() {
        let store = store();
        let dir = |time| dir_in("host/finished", time);
        let ns = BackupNamespace::root();
        let mut writer = SnapshotWriter::begin(store.clone(), &ns, &dir(1000), "me@pam").unwrap();
        let blob = crate::format::blob::encode_blob(b"hello", true).unwrap();
        let csum =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&blob)).into();
        let info = FileInfo {
            filename: "x.conf.blob".into(),
            crypt_mode: CryptMode::None,
            size: blob.len() as u64,
            csum,
        };
        writer.add_blob("x.conf.blob", &blob, info).unwrap();
        // Not visible before finish.
        assert!(!store.list_snapshots(&ns, Some(&dir(1000).group)).unwrap()[0].finished);
        writer.finish(|_| Ok(())).unwrap();
        let list = store.list_snapshots(&ns, Some(&dir(1000).group)).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list[0].finished);
        let manifest = store.read_manifest(&ns, &dir(1000)).unwrap();
        assert_eq!(manifest.files[0].filename, "x.conf.blob");
        assert_eq!(store.group_owner(&ns, &dir(1000).group).unwrap(), "me@pam");
    }

    #[test]
    fn a_copied_manifest_is_stored_as_given_only_if_it_fits() {
        let store = store();
        let ns = BackupNamespace::root();
        let blob = crate::format::blob::encode_blob(b"conf", false).unwrap();
        let info = FileInfo {
            filename: "a.conf.blob".into(),
            crypt_mode: CryptMode::None,
            size: blob.len() as u64,
            csum: sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&blob))
                .into(),
        };
        let manifest_of = |time: i64, files: Vec<FileInfo>| {
            let mut manifest = Manifest::new("host", "copied", time);
            manifest.files = files;
            manifest.unprotected["notes"] = "kept".into();
            manifest.to_blob().unwrap()
        };
        let attempt = |time: i64, raw: &[u8]| {
            let mut writer =
                SnapshotWriter::begin(store.clone(), &ns, &dir_in("host/copied", time), "me@pam")
                    .unwrap();
            writer.add_blob("a.conf.blob", &blob, info.clone()).unwrap();
            writer.finish_with_raw_manifest(raw)
        };
        let err = attempt(1000, &manifest_of(999, vec![info.clone()])).unwrap_err();
        assert!(err.to_string().contains("not of"), "{err}");
        let mut unwritten = info.clone();
        unwritten.filename = "b.conf.blob".into();
        let err = attempt(1000, &manifest_of(1000, vec![info.clone(), unwritten])).unwrap_err();
        assert!(err.to_string().contains("not copied"), "{err}");
        let mut changed = info.clone();
        changed.size += 1;
        let err = attempt(1000, &manifest_of(1000, vec![changed])).unwrap_err();
        assert!(err.to_string().contains("differs"), "{err}");
        // None of them left a snapshot behind.
        let group = dir_in("host/copied", 0).group;
        assert!(store.list_snapshots(&ns, Some(&group)).unwrap().is_empty());

        let raw = manifest_of(1000, vec![info.clone()]);
        attempt(1000, &raw).unwrap();
        let path = store.snapshot_path(&ns, &dir_in("host/copied", 1000));
        assert_eq!(fs::read(path.join(MANIFEST_BLOB_NAME)).unwrap(), raw);
    }

    #[test]
    fn a_running_backup_is_told_from_a_left_over() {
        let store = store();
        let dir = dir_in("host/running", 1000);
        let ns = BackupNamespace::root();
        assert!(!backup_running(&store, &ns, &dir.group), "no group yet");
        let writer = SnapshotWriter::begin(store.clone(), &ns, &dir, "me@pam").unwrap();
        assert!(backup_running(&store, &ns, &dir.group));
        // The probe leaves the lock as it found it: still the writer's.
        assert!(backup_running(&store, &ns, &dir.group));
        drop(writer);
        assert!(!backup_running(&store, &ns, &dir.group));
        // Nor does the probe keep a lock that would stop the next backup.
        drop(SnapshotWriter::begin(store.clone(), &ns, &dir, "me@pam").unwrap());
    }

    #[test]
    fn an_abandoned_writer_leaves_nothing() {
        let store = store();
        let dir = |time| dir_in("host/abandoned", time);
        let ns = BackupNamespace::root();
        let writer = SnapshotWriter::begin(store.clone(), &ns, &dir(1000), "me@pam").unwrap();
        let path = store.snapshot_path(&ns, &dir(1000));
        assert!(path.is_dir());
        drop(writer);
        assert!(!path.exists());
    }

    #[test]
    fn a_second_writer_of_the_group_is_refused() {
        let store = store();
        let dir = |time| dir_in("host/second", time);
        let ns = BackupNamespace::root();
        let _first = SnapshotWriter::begin(store.clone(), &ns, &dir(1000), "me@pam").unwrap();
        let err = SnapshotWriter::begin(store.clone(), &ns, &dir(2000), "me@pam")
            .err()
            .unwrap();
        assert!(err.to_string().contains("another backup"), "{err}");
    }

    #[test]
    fn older_times_are_refused_and_stale_snapshots_removed() {
        let store = store();
        let dir = |time| dir_in("host/older", time);
        let ns = BackupNamespace::root();
        SnapshotWriter::begin(store.clone(), &ns, &dir(1000), "me@pam")
            .unwrap()
            .finish(|_| Ok(()))
            .unwrap();
        assert!(SnapshotWriter::begin(store.clone(), &ns, &dir(1000), "me@pam").is_err());
        // A left-over unfinished snapshot (e.g. after kill -9) is cleaned by the next writer.
        let stale = store.snapshot_path(&ns, &dir(1500));
        fs::create_dir(&stale).unwrap();
        let writer = SnapshotWriter::begin(store.clone(), &ns, &dir(2000), "me@pam").unwrap();
        assert!(!stale.exists());
        writer.finish(|_| Ok(())).unwrap();
        assert_eq!(
            store
                .list_snapshots(&ns, Some(&dir(1000).group))
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn an_empty_or_invalid_owner_is_repaired_and_a_valid_one_kept() {
        let store = store();
        let ns = BackupNamespace::root();
        let owner_file = store
            .group_path(&ns, &dir_in("host/owners", 0).group)
            .join("owner");
        let mut time = 1000;
        let mut push_as = |owner: &str| {
            time += 1;
            SnapshotWriter::begin(store.clone(), &ns, &dir_in("host/owners", time), owner)
                .unwrap()
                .finish(|_| Ok(()))
                .unwrap();
            fs::read_to_string(&owner_file).unwrap()
        };
        assert_eq!(push_as("first@pam"), "first@pam\n");
        // The group's owner stays who it is.
        assert_eq!(push_as("second@pam"), "first@pam\n");
        // A write cut short (ENOSPC) left it empty or garbled: the next writer repairs it.
        for damaged in ["", "\n", "first@", "garbage", "a b@pam"] {
            fs::write(&owner_file, damaged).unwrap();
            assert_eq!(push_as("me@pam!token"), "me@pam!token\n", "{damaged:?}");
        }
        assert!(is_auth_id("root@pam!pbsfs"));
        assert!(is_auth_id("backup@pbs"));
        let group_dir = owner_file.parent().unwrap();
        let names: Vec<_> = fs::read_dir(group_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with("owner."))
            .collect();
        assert!(names.is_empty(), "temporary owner files left: {names:?}");
    }

    #[test]
    fn the_writer_after_a_killed_one_removes_its_temporary_chunk_files() {
        let store = store();
        let ns = BackupNamespace::root();
        let dir = |time| dir_in("host/killed", time);
        let prefix = store.root().join(".chunks/abcd");
        let digest = format!("abcd{}", "0".repeat(60));
        // The killed writer left its unfinished snapshot and an unlocked temporary chunk;
        // another writer, alive, holds its own.
        fs::create_dir_all(store.group_path(&ns, &dir(0).group)).unwrap();
        fs::create_dir(store.snapshot_path(&ns, &dir(1000))).unwrap();
        let dead = super::super::chunk_tmp::create(&prefix, &digest, "killed").unwrap();
        let dead_path = dead.path.clone();
        drop(dead);
        let live = super::super::chunk_tmp::create(&prefix, &digest, "alive").unwrap();

        let writer = SnapshotWriter::begin(store.clone(), &ns, &dir(2000), "me@pam").unwrap();
        assert!(!dead_path.exists());
        assert!(live.path.exists());
        drop(writer);
        drop(live);
    }
}
