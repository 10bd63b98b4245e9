//! A datastore directory in the exact PBS layout (spec: datastore.md): chunk store, namespaces,
//! groups, snapshots. Reading never writes (works on a read-only copy).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::names::{is_safe_id, BackupDir, BackupGroup, BackupNamespace, BackupType};
use super::time::parse_rfc3339;
use super::ChunkSource;
use super::{chunk_tmp, fs_modes};
use crate::format::manifest::Manifest;
use crate::format::{digest_to_hex, Digest};

pub const MANIFEST_BLOB_NAME: &str = "index.json.blob";

/// A snapshot directory as found on disk (or as a server lists it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub dir: BackupDir,
    /// `index.json.blob` exists: the backup was finished.
    pub finished: bool,
    pub protected: bool,
    /// Finished, but its manifest cannot be read or decoded: why. Such a snapshot cannot be
    /// opened; listings show it as damaged, and choosing a snapshot passes it by, so one
    /// damaged manifest never stands in the way of the others.
    pub damaged: Option<String>,
}

impl SnapshotEntry {
    /// Finished with a manifest that reads: a snapshot that can be opened.
    pub fn is_readable(&self) -> bool {
        self.finished && self.damaged.is_none()
    }
}

/// A listed snapshot with its manifest (`None` when unfinished or damaged).
pub type ListedSnapshot = (SnapshotEntry, Option<Manifest>);

/// Name prefix of a chunk store being built (followed by the builder's process id and
/// build number).
const STAGING_PREFIX: &str = ".chunks.tmp-";

pub struct LocalDatastore {
    root: PathBuf,
}

impl LocalDatastore {
    /// Opens an existing datastore; it must contain `.chunks/`.
    pub fn open(path: &Path) -> Result<Self> {
        let chunks = path.join(".chunks");
        match fs::metadata(&chunks) {
            // Absolute, so a mount that changes its working directory keeps reading.
            Ok(meta) if meta.is_dir() => Ok(LocalDatastore {
                root: path.canonicalize()?,
            }),
            Ok(_) => bail!("{}: .chunks is not a directory", path.display()),
            Err(err) if err.kind() == ErrorKind::NotFound => {
                if path.exists() {
                    bail!(
                        "{} is not a PBS datastore (no .chunks directory)",
                        path.display()
                    )
                }
                bail!("datastore {} does not exist", path.display())
            }
            Err(err) => Err(err).with_context(|| format!("cannot open {}", chunks.display())),
        }
    }

    /// Creates a new, empty datastore the way PBS does (all 65536 chunk prefix directories,
    /// `.lock`); an existing datastore at `path` is opened instead.
    pub fn create(path: &Path) -> Result<Self> {
        if path.join(".chunks").is_dir() {
            return Self::open(path);
        }
        // Only the leftovers of another creator (running now, or killed) may be there.
        if path.exists() {
            for name in dir_names(path)? {
                if name != ".lock" && !name.starts_with(STAGING_PREFIX) {
                    bail!(
                        "{} exists, is not empty and is not a datastore",
                        path.display()
                    );
                }
            }
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The directories above the datastore are the user's: they follow the umask.
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs_modes::ensure_dir(path, fs_modes::DIR_MODE)
            .with_context(|| format!("cannot create {}", path.display()))?;
        // Build the chunk store under a temporary name so a half-created store is never
        // mistaken for a datastore; a name of our own, so that two first pushes to a new
        // datastore can both build one: the first rename wins and the other is dropped.
        static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = path.join(format!("{STAGING_PREFIX}{}-{build}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        fs_modes::create_dir(&staging, fs_modes::CHUNK_DIR_MODE)?;
        for prefix in 0..=0xffffu32 {
            fs_modes::create_dir(
                &staging.join(format!("{prefix:04x}")),
                fs_modes::CHUNK_DIR_MODE,
            )?;
        }
        fs_modes::open_or_create_file(&path.join(".lock"), fs_modes::FILE_MODE)?;
        if let Err(err) = fs::rename(&staging, path.join(".chunks")) {
            let _ = fs::remove_dir_all(&staging);
            if !path.join(".chunks").is_dir() {
                return Err(err).with_context(|| format!("cannot create {}", path.display()));
            }
        }
        Ok(LocalDatastore {
            root: path.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn namespace_path(&self, ns: &BackupNamespace) -> PathBuf {
        self.root.join(ns.rel_path())
    }

    pub fn group_path(&self, ns: &BackupNamespace, group: &BackupGroup) -> PathBuf {
        self.namespace_path(ns).join(group.rel_path())
    }

    pub fn snapshot_path(&self, ns: &BackupNamespace, dir: &BackupDir) -> PathBuf {
        self.namespace_path(ns).join(dir.rel_path())
    }

    pub fn chunk_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest_to_hex(digest);
        self.root.join(".chunks").join(&hex[..4]).join(hex)
    }

    pub fn namespace_exists(&self, ns: &BackupNamespace) -> bool {
        self.namespace_path(ns).is_dir()
    }

    fn require_namespace(&self, ns: &BackupNamespace) -> Result<()> {
        if !self.namespace_exists(ns) {
            bail!("namespace '{ns}' not found in {}", self.root.display());
        }
        Ok(())
    }

    /// `parent` and every namespace below it, depth first, in name order.
    pub fn list_namespaces(&self, parent: &BackupNamespace) -> Result<Vec<BackupNamespace>> {
        self.require_namespace(parent)?;
        let mut out = vec![parent.clone()];
        let mut index = 0;
        while index < out.len() {
            let ns = out[index].clone();
            index += 1;
            if ns.depth() >= super::names::MAX_NAMESPACE_DEPTH {
                continue;
            }
            let mut children = Vec::new();
            for name in dir_names(&self.namespace_path(&ns).join("ns"))? {
                if is_safe_id(&name) && self.namespace_path(&ns).join("ns").join(&name).is_dir() {
                    children.push(ns.child(&name)?);
                }
            }
            children.sort();
            // Keep depth-first order: children right after their parent.
            for (offset, child) in children.into_iter().enumerate() {
                out.insert(index + offset, child);
            }
        }
        Ok(out)
    }

    /// The groups of one namespace, in PBS display order.
    pub fn list_groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>> {
        self.require_namespace(ns)?;
        let mut groups = Vec::new();
        for backup_type in BackupType::ALL {
            let type_dir = self.namespace_path(ns).join(backup_type.as_str());
            for id in dir_names(&type_dir)? {
                if is_safe_id(&id) && type_dir.join(&id).is_dir() {
                    groups.push(BackupGroup::new(backup_type, &id)?);
                }
            }
        }
        groups.sort();
        Ok(groups)
    }

    /// The snapshots of a group (finished or not), oldest first. Each manifest is read, to
    /// find damaged ones.
    pub fn list_group_snapshots(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
    ) -> Result<Vec<SnapshotEntry>> {
        Ok(entries_only(self.group_snapshots(ns, group)?))
    }

    /// The snapshots of a group with their manifests, oldest first.
    fn group_snapshots(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
    ) -> Result<Vec<ListedSnapshot>> {
        let group_dir = self.group_path(ns, group);
        let mut out = Vec::new();
        for name in dir_names(&group_dir)? {
            let Some(time) = parse_rfc3339(&name) else {
                continue;
            };
            let path = group_dir.join(&name);
            if !path.is_dir() {
                continue;
            }
            let (finished, manifest, damaged) = match load_manifest(&path) {
                Ok(Some(manifest)) => (true, Some(manifest), None),
                Ok(None) => (false, None, None),
                Err(reason) => (true, None, Some(reason)),
            };
            let entry = SnapshotEntry {
                dir: BackupDir::new(group.clone(), time)?,
                finished,
                protected: path.join(".protected").exists(),
                damaged,
            };
            out.push((entry, manifest));
        }
        out.sort_by_key(|(entry, _)| entry.dir.time);
        Ok(out)
    }

    /// Every snapshot of a namespace (optionally of one group), ordered by group then time.
    pub fn list_snapshots(
        &self,
        ns: &BackupNamespace,
        group: Option<&BackupGroup>,
    ) -> Result<Vec<SnapshotEntry>> {
        Ok(entries_only(self.list_snapshots_with_manifests(ns, group)?))
    }

    /// [`Self::list_snapshots`] with each snapshot's manifest.
    pub fn list_snapshots_with_manifests(
        &self,
        ns: &BackupNamespace,
        group: Option<&BackupGroup>,
    ) -> Result<Vec<ListedSnapshot>> {
        let groups = match group {
            Some(group) => {
                self.require_namespace(ns)?;
                if !self.group_path(ns, group).is_dir() {
                    bail!("backup group '{group}' not found in namespace '{ns}'");
                }
                vec![group.clone()]
            }
            None => self.list_groups(ns)?,
        };
        let mut out = Vec::new();
        for group in groups {
            out.extend(self.group_snapshots(ns, &group)?);
        }
        Ok(out)
    }

    /// The group's owner (first line of its `owner` file).
    pub fn group_owner(&self, ns: &BackupNamespace, group: &BackupGroup) -> Result<String> {
        let path = self.group_path(ns, group).join("owner");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read owner of {group} ({})", path.display()))?;
        Ok(text.lines().next().unwrap_or("").trim_end().to_string())
    }

    /// Raw bytes of a file in a snapshot directory.
    pub fn read_snapshot_file(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
        filename: &str,
    ) -> Result<Vec<u8>> {
        if !is_safe_id(filename) {
            bail!("invalid archive file name '{filename}'");
        }
        let path = self.snapshot_path(ns, dir).join(filename);
        fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// The decoded manifest of a snapshot.
    pub fn read_manifest(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<Manifest> {
        let path = self.snapshot_path(ns, dir);
        match load_manifest(&path) {
            Ok(Some(manifest)) => Ok(manifest),
            Ok(None) if !path.is_dir() => bail!("snapshot {dir} not found in namespace '{ns}'"),
            Ok(None) => bail!(
                "snapshot {dir} has no manifest ({MANIFEST_BLOB_NAME}): its backup is still \
                 running or was interrupted"
            ),
            Err(reason) => bail!("snapshot {dir} is damaged: {reason}"),
        }
    }

    /// Whether the chunk is stored; if so its atime is refreshed, so garbage collection
    /// keeps it for the backup that found it.
    pub fn mark_chunk_used(&self, digest: &Digest) -> bool {
        let path = self.chunk_path(digest);
        if !path.is_file() {
            return false;
        }
        // Best effort: a read-only datastore cannot be touched, and that must not fail a
        // backup that found its chunk present.
        let _ = touch_atime(&path);
        true
    }

    /// Stores an encoded chunk unless a chunk of that digest and size is already there
    /// (then only its atime is refreshed, which garbage collection relies on).
    /// Returns true when the chunk was new.
    pub fn insert_chunk(&self, digest: &Digest, raw_blob: &[u8]) -> Result<bool> {
        let path = self.chunk_path(digest);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.len() == raw_blob.len() as u64 {
                let _ = touch_atime(&path); // best effort, as in `mark_chunk_used`
                return Ok(false);
            }
        }
        let prefix_dir = path.parent().expect("chunk path has a prefix dir");
        if !prefix_dir.is_dir() {
            fs_modes::create_dir_below(&self.root, prefix_dir, fs_modes::CHUNK_DIR_MODE)
                .with_context(|| format!("cannot create {}", prefix_dir.display()))?;
        }
        let hex = digest_to_hex(digest);
        let write = || -> std::io::Result<()> {
            let mut tmp = chunk_tmp::create(prefix_dir, &hex, &random_suffix())?;
            let written = (|| {
                tmp.file.write_all(raw_blob)?;
                // Start writing it out now, without waiting: the syncfs before a snapshot's
                // manifest then finds little left to flush (the kernel alone would let GiBs
                // pile up in the page cache first).
                // SAFETY: a valid open descriptor; the call only schedules writeback.
                unsafe {
                    libc::sync_file_range(tmp.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
                }
                fs::rename(&tmp.path, &path)
            })();
            if let Err(err) = written {
                let _ = fs::remove_file(&tmp.path);
                return Err(err);
            }
            drop_when_written(tmp.file);
            Ok(())
        };
        // A cleaner of abandoned temporary files may have removed ours in the instant between
        // its creation and its lock (see `chunk_tmp`): then the rename finds nothing, and one
        // more write succeeds.
        let result = match write() {
            Err(err) if err.kind() == ErrorKind::NotFound => write(),
            other => other,
        };
        result.with_context(|| format!("cannot store chunk {}", path.display()))?;
        Ok(true)
    }

    /// Removes the temporary chunk files that killed writers left behind (never one a live
    /// writer still owns). Returns how many were removed.
    pub fn remove_abandoned_chunk_files(&self) -> Result<u64> {
        let chunks = self.root.join(".chunks");
        chunk_tmp::remove_abandoned(&chunks)
            .with_context(|| format!("cannot clean up temporary files in {}", chunks.display()))
    }
}

/// Chunk files whose pages leave the page cache once written: the last few of this thread,
/// whose writeback has most likely finished by then.
const WRITTEN_KEPT: usize = 16;

thread_local! {
    static WRITTEN: std::cell::RefCell<std::collections::VecDeque<fs::File>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// Drops a written chunk file's pages from the page cache a few chunks later. A push writes
/// GiBs nobody reads back soon: kept, they would push out what the machine was caching, and
/// every new chunk would land on freshly allocated pages, which costs more than re-using
/// the pages just freed (several times more in a VM whose free memory goes back to the
/// host).
fn drop_when_written(file: fs::File) {
    WRITTEN.with(|written| {
        let mut written = written.borrow_mut();
        written.push_back(file);
        if written.len() > WRITTEN_KEPT {
            let old = written.pop_front().expect("not empty");
            // SAFETY: a valid open descriptor; waits for its writeback, then drops the
            // clean pages (advice only: failures change nothing).
            unsafe {
                let fd = old.as_raw_fd();
                libc::sync_file_range(
                    fd,
                    0,
                    0,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    });
}

/// A chunk blob is at most the largest chunk plus a header; a bigger file is damage, and
/// must not make us allocate whatever size it claims.
const CHUNK_FILE_LIMIT: u64 = crate::format::blob::MAX_CHUNK_SIZE as u64 + 4096;

/// Reads a whole chunk file; `streaming`: past the page cache where it can (see
/// [`ChunkSource::fetch_raw_chunk_streaming`]).
fn read_chunk_file(path: &Path, streaming: bool) -> std::io::Result<Vec<u8>> {
    let file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > CHUNK_FILE_LIMIT {
        return Err(std::io::Error::other(format!(
            "chunk file is {len} bytes, more than any chunk can be"
        )));
    }
    if streaming && len >= DIRECT_READ_MIN {
        // Any failure of the direct read falls back to the page cache, which reports a
        // real I/O error again, and does not fail on a quirk of direct I/O.
        if let Ok(Some(raw)) = read_direct(path, len as usize) {
            return Ok(raw);
        }
    }
    let mut raw = Vec::with_capacity(len as usize);
    (&file).take(CHUNK_FILE_LIMIT).read_to_end(&mut raw)?;
    Ok(raw)
}

/// Chunk files this big are read past the page cache when streaming (smaller ones are
/// compressed chunks, cheap to read either way).
const DIRECT_READ_MIN: u64 = 1 << 20;

/// Reads a file of `len` bytes with `O_DIRECT`, straight into the buffer: no page-cache
/// copy of the raw file, which would cost a copy and fresh pages and push other data out of
/// memory. `None` where direct I/O is not possible (file system, alignment); the caller
/// then reads through the page cache.
fn read_direct(path: &Path, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut buffer = AlignedRead::new(len);
    loop {
        let spare = buffer.spare();
        if spare.is_empty() {
            break;
        }
        // SAFETY: reads into the buffer's own spare capacity, `spare.len()` bytes of it.
        let n = unsafe {
            libc::read(
                file.as_raw_fd(),
                spare.as_mut_ptr() as *mut libc::c_void,
                spare.len(),
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL) if buffer.done == 0 => return Ok(None),
                _ => return Err(err),
            }
        }
        if n == 0 {
            break;
        }
        buffer.done += n as usize;
        if !buffer.done.is_multiple_of(DIRECT_BLOCK) {
            break; // a short read that is not block-aligned: the end of the file
        }
    }
    Ok(Some(buffer.into_vec()))
}

/// Direct I/O wants the buffer, offsets and lengths aligned to the device's logical block
/// size; a page is a multiple of it almost everywhere. Anything else is refused (EINVAL).
const DIRECT_BLOCK: usize = 4096;

/// A read buffer for direct I/O, read into from its first block-aligned byte on (one block
/// longer than needed when the allocator did not align it), so alignment does not depend on
/// where the allocator put it.
/// Callers want a plain `Vec<u8>` (decoding takes it over), so the bytes move to the front
/// at the end, which costs nothing where the allocator already gave an aligned buffer.
struct AlignedRead {
    raw: Vec<u8>,
    /// Where the aligned part starts.
    start: usize,
    /// The whole blocks to read: the file's length rounded up.
    padded: usize,
    /// Bytes read so far.
    done: usize,
}

impl AlignedRead {
    fn new(len: usize) -> Self {
        let padded = len.div_ceil(DIRECT_BLOCK) * DIRECT_BLOCK;
        // The program's allocator hands out big buffers page-aligned: then the buffer is
        // exactly the blocks to read. Elsewhere one block more leaves room to align inside.
        let mut raw: Vec<u8> = Vec::with_capacity(padded);
        if !(raw.as_ptr() as usize).is_multiple_of(DIRECT_BLOCK) {
            raw = Vec::with_capacity(padded + DIRECT_BLOCK);
        }
        let start = raw.as_ptr().align_offset(DIRECT_BLOCK);
        AlignedRead {
            raw,
            start,
            padded,
            done: 0,
        }
    }

    /// The part not read yet: aligned, as long as the blocks still to read.
    fn spare(&mut self) -> &mut [std::mem::MaybeUninit<u8>] {
        let from = self.start + self.done;
        &mut self.raw.spare_capacity_mut()[from..self.start + self.padded]
    }

    fn into_vec(mut self) -> Vec<u8> {
        // SAFETY: read() wrote the `done` bytes from `start` on; the bytes before `start`
        // are set here first.
        unsafe {
            std::ptr::write_bytes(self.raw.as_mut_ptr(), 0, self.start);
            self.raw.set_len(self.start + self.done);
        }
        self.raw.drain(..self.start);
        self.raw
    }
}

impl LocalDatastore {
    fn fetch_chunk_file(&self, digest: &Digest, streaming: bool) -> Result<Vec<u8>> {
        let path = self.chunk_path(digest);
        let raw = read_chunk_file(&path, streaming).map_err(|err| {
            if err.kind() == ErrorKind::NotFound {
                anyhow::anyhow!(
                    "chunk {} is missing from the datastore",
                    digest_to_hex(digest)
                )
            } else {
                anyhow::anyhow!("cannot read chunk {}: {err}", path.display())
            }
        })?;
        if raw.is_empty() {
            bail!("chunk {} is empty in the datastore", digest_to_hex(digest));
        }
        Ok(raw)
    }
}

impl ChunkSource for LocalDatastore {
    fn fetch_raw_chunk(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.fetch_chunk_file(digest, false)
    }

    fn fetch_raw_chunk_streaming(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.fetch_chunk_file(digest, true)
    }
}

/// The manifest of snapshot directory `path`: `None` if there is none (an unfinished
/// backup), `Err(why)` if it cannot be read or decoded (a damaged snapshot).
fn load_manifest(path: &Path) -> Result<Option<Manifest>, String> {
    let file = match fs::File::open(path.join(MANIFEST_BLOB_NAME)) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot open {MANIFEST_BLOB_NAME}: {err}")),
    };
    // Bounded: a damaged file may be of any size.
    let limit = crate::format::blob::MAX_BLOB_SIZE as u64;
    let mut raw = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|err| format!("cannot read {MANIFEST_BLOB_NAME}: {err}"))?;
    if raw.len() as u64 > limit {
        return Err(format!(
            "{MANIFEST_BLOB_NAME} is larger than any manifest can be"
        ));
    }
    decode_manifest(&raw).map(Some)
}

/// Decodes a raw `index.json.blob`; the error says why it is damaged.
pub fn decode_manifest(raw: &[u8]) -> Result<Manifest, String> {
    Manifest::from_blob(raw)
        .map_err(|err| format!("{MANIFEST_BLOB_NAME}: {:#}", anyhow::Error::from(err)))
}

fn entries_only(listed: Vec<ListedSnapshot>) -> Vec<SnapshotEntry> {
    listed.into_iter().map(|(entry, _)| entry).collect()
}

/// Names in a directory; a missing directory has none.
fn dir_names(path: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("cannot list {}", path.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Sets the atime of `path` to now (mtime unchanged), as PBS does; false if it does not exist.
pub(crate) fn touch_atime(path: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    // SAFETY: a valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == ErrorKind::NotFound {
        return Ok(false);
    }
    Err(err).with_context(|| format!("cannot update the access time of {}", path.display()))
}

fn random_suffix() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_creators_of_one_new_datastore_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds");
        let creators: Vec<_> = (0..3)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || LocalDatastore::create(&path).map(|_| ()))
            })
            .collect();
        for creator in creators {
            creator.join().unwrap().unwrap();
        }
        assert!(path.join(".chunks/ffff").is_dir());
        let names = dir_names(&path).unwrap();
        assert!(
            names.iter().all(|n| !n.starts_with(STAGING_PREFIX)),
            "staging left behind: {names:?}"
        );
    }

    #[test]
    fn an_oversized_chunk_file_is_an_error_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".chunks")).unwrap();
        let store = LocalDatastore::open(dir.path()).unwrap();
        let digest = [0xab; 32];
        let path = store.chunk_path(&digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Sparse: claims 1 TiB without taking the space.
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(1 << 40).unwrap();
        let err = store.fetch_raw_chunk(&digest).unwrap_err();
        assert!(
            format!("{err:#}").contains("more than any chunk can be"),
            "{err:#}"
        );
    }

    #[test]
    fn chunk_files_read_back_exactly_past_the_page_cache_or_through_it() {
        // Beside the build, not in /tmp, which may be a file system without direct I/O.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"x").unwrap();
        let direct_io = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        let mut direct = 0;
        for len in [
            4095,
            (1 << 20) - 1,
            1 << 20,
            (1 << 20) + 1,
            (3 << 20) + 4095,
            2 << 20,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let path = dir.path().join(format!("chunk-{len}"));
            std::fs::write(&path, &data).unwrap();
            assert_eq!(read_chunk_file(&path, false).unwrap(), data, "{len} bytes");
            assert_eq!(read_chunk_file(&path, true).unwrap(), data, "{len} bytes");
            if len >= DIRECT_READ_MIN as usize {
                if let Some(raw) = read_direct(&path, len).unwrap() {
                    assert_eq!(raw, data, "{len} bytes, direct");
                    direct += 1;
                }
            }
        }
        // Where the file system takes direct I/O, the four big files went past the page
        // cache whatever the allocator's alignment (tests run on the system allocator);
        // elsewhere the fallback above was what ran.
        if direct_io {
            assert_eq!(direct, 4);
        } else {
            eprintln!("no direct I/O on this file system: only the page-cache path was tested");
        }
    }

    #[test]
    fn a_damaged_manifest_marks_its_snapshot_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".chunks")).unwrap();
        let store = LocalDatastore::open(dir.path()).unwrap();
        let ns = BackupNamespace::root();
        let group = BackupGroup::parse("host/a").unwrap();
        let good = crate::format::manifest::Manifest::new("host", "a", 1000)
            .to_blob()
            .unwrap();
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let manifests: [(i64, Option<&[u8]>); 5] = [
            (1000, Some(&good)),
            (2000, Some(b"")),
            (3000, Some(&flipped)),
            (4000, None), // unfinished
            (5000, Some(&good)),
        ];
        for (time, manifest) in manifests {
            let path = store.snapshot_path(&ns, &BackupDir::new(group.clone(), time).unwrap());
            fs::create_dir_all(&path).unwrap();
            if let Some(raw) = manifest {
                fs::write(path.join(MANIFEST_BLOB_NAME), raw).unwrap();
            }
        }
        let listed = store.list_snapshots_with_manifests(&ns, None).unwrap();
        let states: Vec<(i64, bool, bool, bool)> = listed
            .iter()
            .map(|(e, m)| (e.dir.time, e.finished, e.is_readable(), m.is_some()))
            .collect();
        assert_eq!(
            states,
            [
                (1000, true, true, true),
                (2000, true, false, false),
                (3000, true, false, false),
                (4000, false, false, false),
                (5000, true, true, true),
            ]
        );
        let reason = |i: usize| listed[i].0.damaged.clone().unwrap();
        assert!(reason(1).contains("too short"), "{}", reason(1));
        assert!(reason(2).contains("CRC"), "{}", reason(2));
        // Reading the damaged one says so; the others read.
        let err = store
            .read_manifest(&ns, &listed[2].0.dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is damaged") && err.contains("CRC"), "{err}");
        let err = store
            .read_manifest(&ns, &listed[3].0.dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no manifest"), "{err}");
        store.read_manifest(&ns, &listed[4].0.dir).unwrap();
    }

    #[test]
    fn a_directory_with_other_files_is_not_made_a_datastore() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let err = LocalDatastore::create(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("is not a datastore"), "{err:#}");
    }
}
