//! One pxar archive seen as a read-only filesystem.
//!
//! Inode numbers come from archive offsets: a directory's end offset times two, any other
//! entry's FILENAME offset times two plus one (the two kinds of offsets can be equal), and
//! the root, which FUSE wants as 1. Hardlinks resolve to their target's inode, so all names of a file share one
//! inode.
//!
//! Opening reads only the root; every entry is decoded when it is asked for, so a mount is
//! ready at once however big the archive, and a chunk that cannot be read costs only the
//! entries it holds (EIO), not the archive. What needs more than the entry itself is
//! learned as the tree is used ([`Known`]): the parent of a directory ("..") when it is
//! looked up or listed, a directory's link count (2 + subdirectories) when it is listed,
//! and the link count of a hardlinked file, which needs every hardlink to it, from a walk
//! of the whole archive on a background thread. Until something is known, the counts are
//! those known so far (1 for a directory not listed yet: "unknown", as on many network
//! filesystems), and the attributes carrying them are marked provisional, so that the
//! kernel keeps them only briefly and asks again (see [`Known::links`]); `statfs` reports
//! the number of entries once the walk has finished.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};

use anyhow::{Context, Result};
use pbsfs_mount::{
    AddDirItem, Attr, DirItem, Errno, ReadData, ReadOnlyFs, StatFs, Timespec, ROOT_INO,
};

use crate::format::ReadAt;
use crate::pxar::accessor::{Accessor, ChildSketch, DirEntry};
use crate::pxar::acl;
use crate::pxar::decode_error::DecodeError;
use crate::pxar::entry::{Entry, EntryKind, FileData, NON_DIR_ID_TAG};
use crate::pxar::format::HEADER_SIZE;
use crate::store::open::PxarArchive;
use crate::store::range::IndexReader;

use super::listing::{ListedDir, ListedEntry, ListingCache};
use super::open_files::{follow_reader, read_ahead_in_stream, OpenFiles, StreamCursor};

/// Reported `st_blksize`, which `cat`, `cp` and stdio take as their read size: the largest
/// read the kernel passes on (1 MiB), so that a file is copied out of the page cache in few
/// big calls (a warm 1 GiB read takes about a fifth less time than in 128 KiB calls) and
/// the chunks behind it are fetched in big requests.
const BLKSIZE: u32 = 1 << 20;

/// What lookups, listings and the background walk have learned of the tree so far
/// (entry ids, see [`Entry::id`]).
#[derive(Default)]
struct Known {
    /// The HARDLINK entries found pointing at each regular file.
    hardlinks: HashMap<u64, HashSet<u64>>,
    /// Subdirectory count of each directory whose entries have all been read.
    subdirs: HashMap<u64, u32>,
    /// Parent of each directory met (for "..").
    parents: HashMap<u64, u64>,
    /// Entries counted by the background walk, once it has finished.
    counted: Option<u64>,
}

impl Known {
    /// Learns from one child of directory `dir_id`.
    fn learn_child(&mut self, dir_id: u64, child: &Entry) {
        match (&child.kind, child.id()) {
            (EntryKind::Directory, Some(id)) => {
                self.learn(dir_id, ChildSketch::Directory { id });
            }
            (
                EntryKind::Hardlink {
                    target_filename_offset,
                    ..
                },
                Some(id),
            ) => {
                let target_id = target_filename_offset | NON_DIR_ID_TAG;
                self.learn(dir_id, ChildSketch::Hardlink { id, target_id });
            }
            _ => {}
        }
    }

    /// Learns from the sketch of one child of directory `dir_id`.
    fn learn(&mut self, dir_id: u64, child: ChildSketch) {
        match child {
            ChildSketch::Directory { id } => {
                self.parents.insert(id, dir_id);
            }
            ChildSketch::Hardlink { id, target_id } => {
                self.hardlinks.entry(target_id).or_default().insert(id);
            }
            ChildSketch::Other => {}
        }
    }

    /// Learns that all children of directory `dir_id` have been read, `subdirs` of them
    /// directories.
    fn learn_subdirs(&mut self, dir_id: u64, subdirs: u32) {
        self.subdirs.insert(dir_id, subdirs);
    }

    /// The link count of regular file or directory `id` known so far, and whether it may
    /// still change. A directory's is final once it has been listed; a file's only once
    /// the walk has finished, as a hardlink to it may be anywhere. After the walk every
    /// count is final (or, where the archive could not be read, as good as it gets).
    fn links(&self, id: u64, is_dir: bool) -> (u32, bool) {
        let walked = self.counted.is_some();
        if is_dir {
            match self.subdirs.get(&id) {
                Some(subdirs) => (2 + subdirs, false),
                None => (1, !walked),
            }
        } else {
            let hardlinks = self.hardlinks.get(&id).map_or(0, HashSet::len);
            (1 + hardlinks as u32, !walked)
        }
    }
}

/// Walks run one at a time in the process: a whole-store mount may open many archives,
/// and a walk of a v1 archive reads all of it.
static WALKS: Mutex<()> = Mutex::new(());

/// Directory entries held in decoded listings at most (about 150 bytes each).
const LISTING_BUDGET: usize = 64 * 1024;

pub struct ArchiveFs {
    tree: Arc<Tree>,
    /// The stream holding file contents (the archive itself for v1, the payload for v2),
    /// used to start read-ahead.
    data: Arc<IndexReader>,
    open_files: OpenFiles,
    stream: StreamCursor,
    listings: ListingCache,
    walk_started: Once,
}

/// The archive's entries and what is known of them: everything needed to answer for an
/// inode, shared with the threads that list directories ahead and walk the archive.
struct Tree {
    accessor: Accessor,
    /// What the archive is (snapshot and archive name), for log messages.
    label: String,
    root_id: u64,
    known: Mutex<Known>,
    logged: Mutex<HashSet<String>>,
}

impl ArchiveFs {
    /// Opens a v1 archive or a v2 pair: reads its root, nothing more. `label` names it in
    /// log messages (`host/a/2026-01-01T00:00:00Z/root.pxar`).
    pub fn open(archive: PxarArchive, label: String) -> Result<Self> {
        let accessor = archive.accessor()?;
        let data = archive.payload.unwrap_or(archive.meta);
        let root_id = accessor.root()?.id().context("archive root has no id")?;
        let tree = Arc::new(Tree {
            accessor,
            label,
            root_id,
            known: Mutex::default(),
            logged: Mutex::new(HashSet::new()),
        });
        let weak = Arc::downgrade(&tree);
        let list = Arc::new(move |ino| weak.upgrade().map(|tree| tree.list(ino)));
        let listings = ListingCache::new(LISTING_BUDGET, list);
        // The root is listed first by nearly every use of a mount: its listing (and the
        // chunks it needs) is made while the mount is being set up and the reader starts.
        listings.prepare([ROOT_INO]);
        Ok(ArchiveFs {
            tree,
            data,
            open_files: OpenFiles::default(),
            stream: StreamCursor::default(),
            listings,
            walk_started: Once::new(),
        })
    }

    /// Starts the walk that counts hardlinks in the background, at the first request: once
    /// the mount is ready, so that it does not slow setting the mount up.
    fn start_walk(&self) {
        self.walk_started.call_once(|| {
            let walked = Arc::downgrade(&self.tree);
            // Without the thread (out of resources) the counts stay at what use teaches.
            let _ = std::thread::Builder::new()
                .name("pbsfs-walk".into())
                .spawn(move || walk(walked));
        });
    }

    /// Where a file's bytes start in the data stream.
    fn data_start(entry: &Entry) -> Option<u64> {
        match entry.kind {
            EntryKind::File {
                data: FileData::Inline { data_offset },
                ..
            } => Some(data_offset),
            EntryKind::File {
                data: FileData::PayloadRef { payload_offset },
                ..
            } => Some(payload_offset + HEADER_SIZE),
            _ => None,
        }
    }
}

impl Tree {
    fn to_id(&self, ino: u64) -> u64 {
        if ino == ROOT_INO {
            self.root_id
        } else if ino & 1 == 1 {
            (ino >> 1) | NON_DIR_ID_TAG
        } else {
            ino >> 1
        }
    }

    fn to_ino(&self, id: u64) -> u64 {
        if id == self.root_id {
            ROOT_INO
        } else if id & NON_DIR_ID_TAG != 0 {
            ((id & !NON_DIR_ID_TAG) << 1) | 1
        } else {
            id << 1
        }
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Maps a reader error to EIO, logging each distinct message once.
    fn eio(&self, what: &str, err: impl std::fmt::Display) -> Errno {
        let message = format!("{}: {what}: {err}", self.label);
        if self.logged.lock().unwrap().insert(message.clone()) {
            log::error!("{message}");
        }
        Errno::EIO
    }

    /// Maps a failed read of `file` to EIO, logged once per file and cause with the file's
    /// path, which is looked up only then (entries do not record their parent).
    fn read_failed(&self, file: &Entry, err: &dyn std::fmt::Display) -> Errno {
        let reason = err.to_string();
        let key = format!("read {:?} {reason}", file.filename_offset);
        if !self.logged.lock().unwrap().insert(key) {
            return Errno::EIO;
        }
        let path = file
            .filename_offset
            .and_then(|at| self.accessor.path_of(at).ok())
            .unwrap_or_else(|| file.name.clone());
        log::error!(
            "{}: read of {:?} failed: {reason}",
            self.label,
            String::from_utf8_lossy(&path)
        );
        Errno::EIO
    }

    fn entry(&self, ino: u64) -> Result<Entry, Errno> {
        let entry = self
            .accessor
            .entry_at(self.to_id(ino))
            .map_err(|err| match err {
                // The inode was handed out, but the chunk holding its entry cannot be read.
                DecodeError::Io(err) => self.eio("cannot read entry", err),
                _ => Errno::ENOENT,
            })?;
        self.resolve(entry)
    }

    /// Hardlinks stand for their target.
    fn resolve(&self, entry: Entry) -> Result<Entry, Errno> {
        if matches!(entry.kind, EntryKind::Hardlink { .. }) {
            self.accessor
                .follow_hardlink(&entry)
                .map_err(|err| self.eio("broken hardlink", err))
        } else {
            Ok(entry)
        }
    }

    fn attr(&self, entry: &Entry) -> Result<Attr, Errno> {
        let id = entry.id().ok_or(Errno::EIO)?;
        let stat = &entry.metadata.stat;
        let (size, rdev) = match &entry.kind {
            EntryKind::File { size, .. } => (*size, 0),
            EntryKind::Directory | EntryKind::Fifo | EntryKind::Socket => (0, 0),
            EntryKind::Symlink { target } => (target.len() as u64, 0),
            EntryKind::Device { major, minor } => (0, libc::makedev(*major as u32, *minor as u32)),
            EntryKind::Hardlink { .. } => return Err(Errno::EIO), // resolved before
        };
        Ok(self.with_links_known_now(Attr {
            ino: self.to_ino(id),
            size,
            blocks: Attr::blocks_for(size),
            mode: stat.mode as u32,
            nlink: 1,
            uid: stat.uid,
            gid: stat.gid,
            mtime: Timespec::new(stat.mtime.secs, stat.mtime.nanos),
            rdev,
            blksize: BLKSIZE,
            provisional: false,
        }))
    }

    /// `attr` with the link count known now, marked provisional while it may still change
    /// (the kernel then asks again soon). Also for a listing made earlier, ahead of the
    /// reader. Only regular files and directories have counts above 1.
    fn with_links_known_now(&self, mut attr: Attr) -> Attr {
        let is_dir = match attr.file_type() {
            libc::S_IFREG => false,
            libc::S_IFDIR => true,
            _ => return attr,
        };
        let id = self.to_id(attr.ino);
        (attr.nlink, attr.provisional) = self.known().links(id, is_dir);
        attr
    }

    /// A directory's entries with their attributes. Entries that cannot be read are left
    /// out, and the listing ends with EIO after the others.
    fn list(&self, ino: u64) -> ListedDir {
        let (dir, dir_id) = match self.entry(ino) {
            Ok(dir) if dir.is_dir() => match dir.id() {
                Some(id) => (dir, id),
                None => return ListedDir::failed(Errno::EIO),
            },
            Ok(_) => return ListedDir::failed(Errno::ENOTDIR),
            Err(err) => return ListedDir::failed(err),
        };
        let mut entries = Vec::new();
        let mut error = None;
        let mut subdirs = 0;
        let read = visit_children(&self.accessor, &dir, |child, entry| {
            self.known().learn_child(dir_id, &entry);
            subdirs += entry.is_dir() as u32;
            match self.resolve(entry).and_then(|entry| self.attr(&entry)) {
                Ok(attr) => entries.push(ListedEntry {
                    name: child.name.clone(),
                    attr,
                    next_offset: child.index as u64 + 1,
                }),
                Err(err) => {
                    error.get_or_insert(err);
                }
            }
        });
        match read {
            Ok(None) => self.known().learn_subdirs(dir_id, subdirs),
            Ok(Some(err)) => error = Some(self.eio("cannot read directory entry", err)),
            Err(err) => return ListedDir::failed(self.eio("cannot list directory", err)),
        }
        ListedDir { entries, error }
    }

    fn xattr_names(entry: &Entry) -> Vec<OsString> {
        let meta = &entry.metadata;
        let mut names: Vec<OsString> = meta
            .xattrs
            .iter()
            .map(|(name, _)| OsString::from_vec(name.clone()))
            .collect();
        if meta.fcaps.is_some() {
            names.push("security.capability".into());
        }
        if acl::access_entries(meta).is_some() {
            names.push(acl::XATTR_ACCESS.into());
        }
        if acl::default_entries(meta).is_some() {
            names.push(acl::XATTR_DEFAULT.into());
        }
        names
    }
}

/// Decodes the children of `dir` in archive order and hands each to `visit`, leaving out
/// those that cannot be read: the first error of those is returned. Only the directory's
/// own table failing is an `Err`.
fn visit_children(
    accessor: &Accessor,
    dir: &Entry,
    mut visit: impl FnMut(&DirEntry, Entry),
) -> Result<Option<DecodeError>, DecodeError> {
    let (listing, mut failed) = accessor.read_dir_partial(dir)?;
    accessor.decode_listed(&listing, |child, entry| match entry {
        Ok(entry) => visit(child, entry),
        Err(err) => {
            failed.get_or_insert(err);
        }
    });
    Ok(failed)
}

/// Walks every directory of the archive once, teaching `tree` what each holds, until the
/// tree is dropped (the archive closed). It reads only what the counts need of each child
/// (its kind, a hardlink's target: [`Accessor::sketch_children`]), not whole entries. What
/// cannot be read is skipped (its entries give EIO when asked for) and the rest is still
/// walked.
fn walk(tree: Weak<Tree>) {
    let _turn = WALKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // An accessor of its own, so that the walk does not push the tables that the reader's
    // requests use out of the accessor's caches.
    let (walker, root_id) = match tree.upgrade() {
        Some(tree) => {
            // A v1 archive holds the file contents too: walking it reads all of them, on
            // cycles nobody else wants. A v2 metadata stream is small next to it.
            if !tree.accessor.is_split() {
                lower_priority();
            }
            (tree.accessor.reopen(), tree.root_id)
        }
        None => return,
    };
    let mut pending = vec![root_id];
    // A damaged archive may name one directory twice; each is walked once.
    let mut walked = HashSet::new();
    let mut entries = 0;
    while let Some(dir_id) = pending.pop() {
        let Some(tree) = tree.upgrade() else { return };
        if !walked.insert(dir_id) {
            continue;
        }
        match walker.sketch_children(dir_id) {
            Ok((children, failed)) => {
                entries += children.len() as u64;
                let mut known = tree.known();
                let mut subdirs = 0;
                for child in children {
                    known.learn(dir_id, child);
                    if let ChildSketch::Directory { id } = child {
                        subdirs += 1;
                        pending.push(id);
                    }
                }
                match failed {
                    None => known.learn_subdirs(dir_id, subdirs),
                    Some(err) => {
                        drop(known);
                        tree.eio("link counts may be incomplete", err);
                    }
                }
            }
            Err(err) => {
                tree.eio("link counts may be incomplete", err);
            }
        }
    }
    if let Some(tree) = tree.upgrade() {
        tree.known().counted = Some(entries);
    }
}

/// Nice value of the walk of a v1 archive: on a machine with few cores it would otherwise
/// take turns with the reader (`find` running on the other core) and the threads answering
/// it.
const WALK_NICE: libc::c_int = 19;

/// Lets the walk run on cycles nobody else wants; it only makes counts final sooner.
/// (On Linux the nice value is per thread; best effort.)
fn lower_priority() {
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, WALK_NICE);
    }
}

impl ReadOnlyFs for ArchiveFs {
    fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        self.start_walk();
        let dir = self.tree.entry(parent)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let child = self
            .tree
            .accessor
            .lookup(&dir, name.as_bytes())
            .map_err(|err| self.tree.eio("lookup failed", err))?
            .ok_or(Errno::ENOENT)?;
        if let Some(dir_id) = dir.id() {
            self.tree.known().learn_child(dir_id, &child);
        }
        let child = self.tree.resolve(child)?;
        self.tree.attr(&child)
    }

    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        self.start_walk();
        let entry = self.tree.entry(ino)?;
        self.tree.attr(&entry)
    }

    fn readdir(&self, ino: u64, offset: u64, add: &mut AddDirItem<'_>) -> Result<(), Errno> {
        self.start_walk();
        self.listings.serve(ino, offset, &mut |listed| {
            add(DirItem {
                name: OsStr::from_bytes(&listed.name),
                attr: self.tree.with_links_known_now(listed.attr),
                next_offset: listed.next_offset,
            })
        })
    }

    fn parent(&self, ino: u64) -> Option<u64> {
        let id = self.tree.to_id(ino);
        let parent = self.tree.known().parents.get(&id).copied()?;
        Some(self.tree.to_ino(parent))
    }

    fn open(&self, ino: u64) -> Result<u64, Errno> {
        let entry = self.tree.entry(ino)?;
        if !matches!(entry.kind, EntryKind::File { .. }) {
            return Err(Errno::EINVAL);
        }
        Ok(self.open_files.open(ino))
    }

    fn release(&self, _ino: u64, fh: u64) {
        self.open_files.close(fh);
    }

    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<ReadData, Errno> {
        let entry = self.tree.entry(ino)?;
        let file_size = entry.file_size();
        let data_start = Self::data_start(&entry);
        // Logged once per file and cause: which file, then the archive, chunk and why.
        let failed = |err: &dyn std::fmt::Display| self.tree.read_failed(&entry, err);
        let len = (size as u64).min(file_size.saturating_sub(offset)) as usize;
        let pattern = self.open_files.read(fh, offset, size, file_size);
        if let Some(start) = data_start {
            follow_reader(&self.data, start, file_size, offset + len as u64, &pattern);
            // Files read one after another in archive order (a tree being copied): the
            // chunks beyond this file, too, are fetched ahead.
            let at = start + offset;
            if self.stream.read(at, len as u64) && !pattern.sequential {
                read_ahead_in_stream(&self.data, at + len as u64);
            }
        }
        // The common case, a read within one chunk, is answered from the cached chunk.
        if let (Some(start), true) = (data_start, len > 0) {
            self.tree
                .accessor
                .check_file_data(&entry)
                .map_err(|err| failed(&err))?;
            let shared = self
                .data
                .read_shared(start + offset, len)
                .map_err(|err| failed(&err))?;
            if let Some((chunk, range)) = shared {
                return Ok(ReadData::shared(chunk, range));
            }
        }
        let mut buf = ReadData::buffer(len);
        let mut done = 0;
        while done < len {
            let n = self
                .tree
                .accessor
                .read_file(&entry, offset + done as u64, &mut buf[done..])
                .map_err(|err| failed(&err))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf.into())
    }

    fn readlink(&self, ino: u64) -> Result<OsString, Errno> {
        match self.tree.entry(ino)?.kind {
            EntryKind::Symlink { target } => Ok(OsString::from_vec(target)),
            _ => Err(Errno::EINVAL),
        }
    }

    fn listxattr(&self, ino: u64) -> Result<Vec<OsString>, Errno> {
        Ok(Tree::xattr_names(&self.tree.entry(ino)?))
    }

    fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let entry = self.tree.entry(ino)?;
        let meta = &entry.metadata;
        let name = name.as_bytes();
        if let Some((_, value)) = meta.xattrs.iter().find(|(n, _)| n == name) {
            return Ok(value.clone());
        }
        let value = match name {
            b"security.capability" => meta.fcaps.clone(),
            n if n == acl::XATTR_ACCESS.as_bytes() => {
                acl::access_entries(meta).map(|e| acl::to_xattr(&e))
            }
            n if n == acl::XATTR_DEFAULT.as_bytes() => {
                acl::default_entries(meta).map(|e| acl::to_xattr(&e))
            }
            _ => None,
        };
        value.ok_or(Errno::ENODATA)
    }

    fn statfs(&self) -> Result<StatFs, Errno> {
        self.start_walk();
        // v1: the data stream is the archive; v2: metadata plus payload.
        let size = if self.tree.accessor.is_split() {
            self.data.size() + self.tree.accessor.size()
        } else {
            self.tree.accessor.size()
        };
        Ok(StatFs {
            blocks: size.div_ceil(4096),
            // 0 ("not known") until the walk has counted the entries.
            files: self.tree.known().counted.map_or(0, |entries| entries + 1),
            ..StatFs::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::access::SnapshotAccess;
    use crate::store::chunk_reader::VerifyingChunkReader;
    use crate::store::open::tests::fixture;
    use crate::store::open::{open_archive, OpenedArchive};

    /// The fixture snapshot's only archive, a v1 `.pxar` or a v2 split pair.
    fn open_fixture(snapshot: &str) -> ArchiveFs {
        let snap = fixture(snapshot);
        let chunks = Arc::new(VerifyingChunkReader::new(snap.chunk_source()));
        match open_archive(&snap, "root.pxar", chunks).unwrap() {
            OpenedArchive::Pxar(pxar) => ArchiveFs::open(pxar, "test".into()).unwrap(),
            OpenedArchive::Image(_) => unreachable!("a pxar archive"),
        }
    }

    fn resolve(fs: &ArchiveFs, path: &str) -> Attr {
        let mut attr = fs.getattr(ROOT_INO).unwrap();
        for name in path.split('/') {
            attr = fs.lookup(attr.ino, OsStr::new(name)).unwrap();
        }
        attr
    }

    /// Entries below the root, each decoded in full.
    fn entries_decoded(accessor: &Accessor) -> u64 {
        let mut count = 0;
        let mut pending = vec![accessor.root().unwrap()];
        while let Some(dir) = pending.pop() {
            for child in accessor.read_dir(&dir).unwrap().iter() {
                let entry = accessor.open_dir_entry(child).unwrap();
                count += 1;
                if entry.is_dir() {
                    pending.push(entry);
                }
            }
        }
        count
    }

    fn list_all(fs: &ArchiveFs, ino: u64) {
        fs.readdir(ino, 0, &mut |_| std::ops::ControlFlow::Continue(()))
            .unwrap();
    }

    /// Counts that may still change are marked provisional (the kernel asks again soon),
    /// and lose the mark, exact, once the background walk has counted every link.
    #[test]
    fn link_counts_are_provisional_until_the_walk_has_finished() {
        for snapshot in [
            "host/fixture-legacy/2026-11-25T08:28:42Z",
            "host/fixture-data/2026-11-25T08:28:43Z",
        ] {
            let fs = open_fixture(snapshot);
            // Walks take turns: holding the turn keeps this archive's walk from starting.
            let turn = WALKS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // data/hard-c is the file; links/hard-a and links/hard-b are hardlinks to it.
            let file = resolve(&fs, "data/hard-c");
            assert_eq!((file.nlink, file.provisional), (1, true), "{snapshot}");
            let links = resolve(&fs, "links");
            assert_eq!((links.nlink, links.provisional), (1, true), "{snapshot}");
            list_all(&fs, links.ino);
            // Both hardlinks met, yet more could lie elsewhere until the walk is done.
            let file = fs.getattr(file.ino).unwrap();
            assert_eq!((file.nlink, file.provisional), (3, true), "{snapshot}");
            // A listed directory's count is final; a symlink's always is.
            let links = fs.getattr(links.ino).unwrap();
            assert_eq!((links.nlink, links.provisional), (2, false), "{snapshot}");
            let symlink = resolve(&fs, "links/rel-link");
            assert_eq!((symlink.nlink, symlink.provisional), (1, false));
            let meta = resolve(&fs, "meta");
            assert!(meta.provisional, "{snapshot}");

            drop(turn);
            for _ in 0..6000 {
                if fs.statfs().unwrap().files > 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert!(
                fs.statfs().unwrap().files > 0,
                "{snapshot}: the walk never finished"
            );
            let file = fs.getattr(file.ino).unwrap();
            assert_eq!((file.nlink, file.provisional), (3, false), "{snapshot}");
            // meta (acl-dir, empty-dir, sticky) was never listed: the walk counted it.
            let meta = fs.getattr(meta.ino).unwrap();
            assert_eq!((meta.nlink, meta.provisional), (2 + 3, false), "{snapshot}");
            // It met every entry, as many as a full decode of the archive finds.
            let files = fs.statfs().unwrap().files;
            assert_eq!(files, entries_decoded(&fs.tree.accessor) + 1, "{snapshot}");
        }
    }
}
