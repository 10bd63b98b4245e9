//! A whole datastore (or one namespace of it) as one read-only filesystem:
//! `[ns/<ns>/...]<type>/<id>/<time>/<archive>/...`, laid out like the datastore itself.
//! The datastore is a local directory or a PBS server, seen through [`DatastoreAccess`].
//!
//! Nothing is opened before it is needed: listing a snapshot reads only its manifest; a
//! pxar archive is opened (an [`ArchiveFs`]) on the first access inside it and kept in a
//! small LRU, so memory stays bounded and an evicted archive is simply reopened. Only
//! finished snapshots with a readable manifest are shown (a damaged one is left out).
//! Directory listings are taken once and kept for the mount's life, so readdir offsets
//! stay stable (backups made later show up after a remount).
//!
//! Inode numbers (all stable for the life of the mount, none reused):
//! - bit 63 clear: a "virtual" node (namespace, `ns`, type, group, snapshot, archive root,
//!   image file) numbered from a table in the order nodes are first seen; the root is 1.
//! - bit 63 set: an entry inside an opened archive, `1<<63 | slot<<40 | local`, where
//!   `slot` (23 bits) numbers the archives in the order they are first listed and `local`
//!   (40 bits) is the archive's own inode ([`ArchiveFs`] numbers entries by offset). A local
//!   inode below 2^39 is used as is; a larger one (only in a v1 archive of more than 256 GiB)
//!   gets `2^39 + n` from a per-archive table, so the two ranges never meet. The archive's
//!   own root (local 1) is the archive's virtual node instead.
//!
//! The two kinds differ in bit 63, archives differ in `slot`, and within one archive the
//! local numbers are distinct by construction, so no two entries share a number.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use lru::LruCache;
use pbsfs_mount::{Attr, DirItem, Errno, ReadData, ReadOnlyFs, StatFs, Timespec, ROOT_INO};

use super::images::read_image;
use super::open_files::OpenFiles;
use super::ArchiveFs;
use crate::format::crypto::CryptConfig;
use crate::format::ReadAt;
use crate::store::access::{DatastoreAccess, SnapshotAccess, StoreDir};
use crate::store::cache::{CacheVia, ChunkCache};
use crate::store::chunk_reader::VerifyingChunkReader;
use crate::store::names::{BackupDir, BackupGroup, BackupNamespace, BackupType};
use crate::store::open::{mountables, open_mountable, Mountable, OpenedArchive};
use crate::store::range::IndexReader;

/// Archives (and image readers) kept open at once.
const OPEN_ARCHIVES: usize = 16;
/// Snapshots (manifest, and on a server a reader session) kept open at once.
const OPEN_SNAPSHOTS: usize = 16;

const CONTENT_FLAG: u64 = 1 << 63;
const LOCAL_BITS: u32 = 40;
const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;
/// Local inodes below this are encoded directly; the rest go through a per-slot table.
const DIRECT_LIMIT: u64 = 1 << (LOCAL_BITS - 1);
const MAX_SLOTS: usize = 1 << (63 - LOCAL_BITS);

const DIR_MODE: u32 = libc::S_IFDIR | 0o555;
const FILE_MODE: u32 = libc::S_IFREG | 0o444;

/// A directory or file that is not inside an archive.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Node {
    /// A namespace: its backup types, plus `ns` when it has child namespaces.
    Namespace(BackupNamespace),
    /// The `ns` directory of a namespace: its child namespaces.
    NsList(BackupNamespace),
    Type(BackupNamespace, BackupType),
    Group(BackupNamespace, BackupGroup),
    Snapshot(BackupNamespace, BackupDir),
    /// The root directory of the pxar archive in `slot`.
    Archive(usize),
    /// The disk image in `slot`, a regular file.
    Image(usize),
}

struct NodeEntry {
    node: Node,
    parent: u64,
    mode: u32,
    size: u64,
    mtime: Timespec,
}

/// One archive of one snapshot: what is needed to (re)open it.
struct Slot {
    ns: BackupNamespace,
    dir: BackupDir,
    what: Mountable,
    /// Virtual inode of the archive root (or the image file), set when it is interned.
    node_ino: OnceLock<u64>,
    /// Local inodes too large to encode directly ↔ their index (from `DIRECT_LIMIT` on).
    overflow: Mutex<Overflow>,
}

#[derive(Default)]
struct Overflow {
    by_local: HashMap<u64, u64>,
    by_index: HashMap<u64, u64>,
}

#[derive(Default)]
struct Tables {
    /// Virtual node `ino` is `nodes[ino - 1]`.
    nodes: Vec<NodeEntry>,
    node_ids: HashMap<Node, u64>,
    slots: Vec<Arc<Slot>>,
    slot_ids: HashMap<(BackupNamespace, BackupDir, String), usize>,
    /// Listings taken so far: (name, inode) in listing order.
    children: HashMap<u64, Arc<Vec<(String, u64)>>>,
}

#[derive(Clone)]
enum Opened {
    Archive(Arc<ArchiveFs>),
    Image(Arc<IndexReader>),
}

/// What a child looks like before it has an inode.
struct NewChild {
    name: String,
    node: Node,
    mode: u32,
    size: u64,
    mtime: Timespec,
}

pub struct StoreFs {
    /// Listings, directory times (where the datastore has them; else the mount time) and
    /// snapshots, each read through its own chunk source (on a server, a reader session).
    access: Arc<dyn DatastoreAccess>,
    /// One cache, and so one memory budget, for every archive of the mount.
    chunks: Arc<ChunkCache>,
    /// Decrypts encrypted archives.
    crypt: Option<Arc<CryptConfig>>,
    snapshots: Mutex<LruCache<(BackupNamespace, BackupDir), Arc<dyn SnapshotAccess>>>,
    groups: Mutex<HashMap<BackupNamespace, Vec<BackupGroup>>>,
    mount_time: Timespec,
    tables: RwLock<Tables>,
    open: Mutex<LruCache<usize, Opened>>,
    /// Serialises opening per slot, so parallel lookups open an archive once.
    opening: Mutex<HashMap<usize, Arc<Mutex<()>>>>,
    logged: Mutex<HashSet<String>>,
    /// Readers of image files (archives keep their own).
    image_files: OpenFiles,
    uid: u32,
    gid: u32,
}

impl StoreFs {
    /// Shows namespace `ns` (the root namespace: the whole datastore) and everything below.
    /// `chunks` is the cache every archive shares ([`ChunkCache::shared`]); chunks are
    /// fetched through each snapshot's own source and decrypted with `crypt`.
    pub fn new(
        access: Arc<dyn DatastoreAccess>,
        ns: BackupNamespace,
        chunks: Arc<ChunkCache>,
        crypt: Option<Arc<CryptConfig>>,
    ) -> Result<Self> {
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(Timespec::default(), |d| {
                Timespec::new(d.as_secs() as i64, 0)
            });
        if !access.namespace_exists(&ns)? {
            bail!("namespace '{ns}' not found in the datastore");
        }
        let mtime = access
            .dir_mtime(StoreDir::Namespace(&ns))
            .map_or(now, timespec);
        let mut tables = Tables::default();
        tables.nodes.push(NodeEntry {
            node: Node::Namespace(ns.clone()),
            parent: ROOT_INO,
            mode: DIR_MODE,
            size: 0,
            mtime,
        });
        tables.node_ids.insert(Node::Namespace(ns), ROOT_INO);
        Ok(StoreFs {
            access,
            chunks,
            crypt,
            snapshots: Mutex::new(LruCache::new(NonZeroUsize::new(OPEN_SNAPSHOTS).unwrap())),
            groups: Mutex::new(HashMap::new()),
            mount_time: now,
            tables: RwLock::new(tables),
            open: Mutex::new(LruCache::new(NonZeroUsize::new(OPEN_ARCHIVES).unwrap())),
            opening: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashSet::new()),
            image_files: OpenFiles::default(),
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        })
    }

    /// Maps an error to EIO, logging each distinct message once.
    fn eio(&self, what: impl std::fmt::Display) -> Errno {
        let message = what.to_string();
        if self.logged.lock().unwrap().insert(message.clone()) {
            log::error!("{message}");
        }
        Errno::EIO
    }

    fn node(&self, ino: u64) -> Result<(Node, u64), Errno> {
        let tables = self.tables.read().unwrap();
        let entry = ino
            .checked_sub(1)
            .and_then(|i| tables.nodes.get(i as usize))
            .ok_or(Errno::ENOENT)?;
        Ok((entry.node.clone(), entry.parent))
    }

    fn slot(&self, slot: usize) -> Result<Arc<Slot>, Errno> {
        self.tables
            .read()
            .unwrap()
            .slots
            .get(slot)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn virtual_attr(&self, ino: u64) -> Result<Attr, Errno> {
        let tables = self.tables.read().unwrap();
        let entry = ino
            .checked_sub(1)
            .and_then(|i| tables.nodes.get(i as usize))
            .ok_or(Errno::ENOENT)?;
        Ok(self.make_attr(ino, entry.mode, entry.size, entry.mtime))
    }

    fn make_attr(&self, ino: u64, mode: u32, size: u64, mtime: Timespec) -> Attr {
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        Attr {
            ino,
            size,
            blocks: Attr::blocks_for(size),
            mode,
            nlink: if is_dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            mtime,
            rdev: 0,
            blksize: if is_dir { 4096 } else { 1 << 20 },
            // The store's own nodes are known in full.
            provisional: false,
        }
    }

    // ---- inode translation for archive contents ----

    fn to_global(&self, slot: &Slot, slot_index: usize, local: u64) -> Result<u64, Errno> {
        if local == ROOT_INO {
            return slot.node_ino.get().copied().ok_or(Errno::EIO);
        }
        let index = if local < DIRECT_LIMIT {
            local
        } else {
            let mut overflow = slot.overflow.lock().unwrap();
            match overflow.by_local.get(&local) {
                Some(index) => *index,
                None => {
                    let index = DIRECT_LIMIT + overflow.by_local.len() as u64;
                    if index > LOCAL_MASK {
                        return Err(self.eio(format!(
                            "{}/{}: too many inodes to number",
                            slot.dir,
                            slot.what.name()
                        )));
                    }
                    overflow.by_local.insert(local, index);
                    overflow.by_index.insert(index, local);
                    index
                }
            }
        };
        Ok(CONTENT_FLAG | ((slot_index as u64) << LOCAL_BITS) | index)
    }

    /// (slot, local inode) of a global inode inside an archive.
    fn to_local(&self, ino: u64) -> Result<(usize, Arc<Slot>, u64), Errno> {
        let slot_index = ((ino & !CONTENT_FLAG) >> LOCAL_BITS) as usize;
        let index = ino & LOCAL_MASK;
        let slot = self.slot(slot_index)?;
        let local = if index < DIRECT_LIMIT {
            index
        } else {
            *slot
                .overflow
                .lock()
                .unwrap()
                .by_index
                .get(&index)
                .ok_or(Errno::ENOENT)?
        };
        Ok((slot_index, slot, local))
    }

    fn translate(&self, slot: &Slot, slot_index: usize, mut attr: Attr) -> Result<Attr, Errno> {
        attr.ino = self.to_global(slot, slot_index, attr.ino)?;
        Ok(attr)
    }

    // ---- opening archives ----

    fn opened(&self, slot_index: usize, slot: &Slot) -> Result<Opened, Errno> {
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
        let opened = opened.map_err(|err| {
            // Logged once; later accesses retry (the error may have been transient).
            self.eio(format!(
                "cannot open {}{}/{}: {err:#}",
                ns_prefix(&slot.ns),
                slot.dir,
                slot.what.name()
            ))
        })?;
        self.open.lock().unwrap().put(slot_index, opened.clone());
        Ok(opened)
    }

    /// A snapshot opened for reading (its manifest read; on a server, a reader session).
    fn snapshot(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<Arc<dyn SnapshotAccess>> {
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
        let chunks = Arc::new(CacheVia::new(
            self.chunks.clone(),
            Arc::new(VerifyingChunkReader::with_key(
                snapshot.chunk_source(),
                self.crypt.clone(),
            )),
        ));
        Ok(match open_mountable(&*snapshot, &slot.what, chunks)? {
            OpenedArchive::Pxar(pxar) => Opened::Archive(Arc::new(ArchiveFs::open(pxar)?)),
            OpenedArchive::Image(reader) => Opened::Image(reader),
        })
    }

    fn archive(&self, slot_index: usize, slot: &Slot) -> Result<Arc<ArchiveFs>, Errno> {
        match self.opened(slot_index, slot)? {
            Opened::Archive(fs) => Ok(fs),
            Opened::Image(_) => Err(Errno::ENOTDIR),
        }
    }

    /// The archive and local inode behind `ino` when it is an archive root or inside one.
    fn in_archive(&self, ino: u64) -> Result<Option<(usize, Arc<Slot>, u64)>, Errno> {
        if ino & CONTENT_FLAG != 0 {
            return self.to_local(ino).map(Some);
        }
        match self.node(ino)?.0 {
            Node::Archive(slot) => Ok(Some((slot, self.slot(slot)?, ROOT_INO))),
            _ => Ok(None),
        }
    }

    // ---- virtual directories ----

    /// The listing of virtual directory `ino`, taken once.
    fn children(&self, ino: u64, node: &Node) -> Result<Arc<Vec<(String, u64)>>, Errno> {
        if let Some(found) = self.tables.read().unwrap().children.get(&ino) {
            return Ok(found.clone());
        }
        let new = self.list(node)?;
        let mut tables = self.tables.write().unwrap();
        if let Some(found) = tables.children.get(&ino) {
            return Ok(found.clone());
        }
        let mut list = Vec::with_capacity(new.len());
        for child in new {
            let child_ino = intern(
                &mut tables,
                ino,
                child.node,
                child.mode,
                child.size,
                child.mtime,
            );
            list.push((child.name, child_ino));
        }
        let list = Arc::new(list);
        tables.children.insert(ino, list.clone());
        Ok(list)
    }

    fn list(&self, node: &Node) -> Result<Vec<NewChild>, Errno> {
        let dir = |name: String, node: Node, mtime: Timespec| NewChild {
            name,
            node,
            mode: DIR_MODE,
            size: 0,
            mtime,
        };
        let mut out = Vec::new();
        match node {
            Node::Namespace(ns) => {
                let groups = self.groups(ns)?;
                for ty in BackupType::ALL {
                    if groups.iter().any(|g| g.backup_type == ty) {
                        let mtime = self.dir_mtime(StoreDir::Type(ns, ty));
                        out.push(dir(ty.as_str().into(), Node::Type(ns.clone(), ty), mtime));
                    }
                }
                if !self.child_namespaces(ns)?.is_empty() {
                    let mtime = self.dir_mtime(StoreDir::NsList(ns));
                    out.push(dir("ns".into(), Node::NsList(ns.clone()), mtime));
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
            }
            Node::NsList(ns) => {
                for child in self.child_namespaces(ns)? {
                    let name = child.components().last().cloned().unwrap_or_default();
                    let mtime = self.dir_mtime(StoreDir::Namespace(&child));
                    out.push(dir(name, Node::Namespace(child), mtime));
                }
            }
            Node::Type(ns, ty) => {
                let groups = self.groups(ns)?;
                for group in groups.into_iter().filter(|g| g.backup_type == *ty) {
                    let mtime = self.dir_mtime(StoreDir::Group(ns, &group));
                    out.push(dir(
                        group.backup_id.clone(),
                        Node::Group(ns.clone(), group),
                        mtime,
                    ));
                }
            }
            Node::Group(ns, group) => {
                for snapshot in self.readable_snapshots(ns, group)? {
                    let mtime = Timespec::new(snapshot.time, 0);
                    out.push(dir(
                        snapshot.time_string(),
                        Node::Snapshot(ns.clone(), snapshot),
                        mtime,
                    ));
                }
            }
            Node::Snapshot(ns, snapshot) => return self.list_snapshot(ns, snapshot),
            Node::Archive(_) | Node::Image(_) => return Err(Errno::ENOTDIR),
        }
        Ok(out)
    }

    /// A snapshot's archives, from its manifest alone; slots are assigned here.
    fn list_snapshot(&self, ns: &BackupNamespace, dir: &BackupDir) -> Result<Vec<NewChild>, Errno> {
        let snapshot = self.snapshot(ns, dir).map_err(|err| {
            self.eio(format!(
                "cannot read the manifest of {}{dir}: {err:#}",
                ns_prefix(ns)
            ))
        })?;
        let manifest = snapshot.manifest();
        let mtime = Timespec::new(dir.time, 0);
        let mut tables = self.tables.write().unwrap();
        let mut out: Vec<NewChild> = Vec::new();
        for what in mountables(manifest) {
            let name = what.name().to_string();
            if out.iter().any(|c| c.name == name) {
                continue; // e.g. both root.pxar and root.mpxar+root.ppxar: keep the first
            }
            let (node, mode, size) = match &what {
                Mountable::Image { file, .. } => {
                    let size = manifest
                        .files
                        .iter()
                        .find(|f| &f.filename == file)
                        .map_or(0, |f| f.size);
                    (Node::Image as fn(usize) -> Node, FILE_MODE, size)
                }
                _ => (Node::Archive as fn(usize) -> Node, DIR_MODE, 0),
            };
            let key = (ns.clone(), dir.clone(), name.clone());
            let slot = match tables.slot_ids.get(&key) {
                Some(slot) => *slot,
                None => {
                    let slot = tables.slots.len();
                    if slot >= MAX_SLOTS {
                        drop(tables);
                        return Err(self.eio("too many archives listed in one mount"));
                    }
                    tables.slots.push(Arc::new(Slot {
                        ns: ns.clone(),
                        dir: dir.clone(),
                        what: what.clone(),
                        node_ino: OnceLock::new(),
                        overflow: Mutex::default(),
                    }));
                    tables.slot_ids.insert(key, slot);
                    slot
                }
            };
            out.push(NewChild {
                name,
                node: node(slot),
                mode,
                size,
                mtime,
            });
        }
        Ok(out)
    }

    /// The mtime of a directory of the datastore; the mount time where it has none.
    fn dir_mtime(&self, dir: StoreDir<'_>) -> Timespec {
        self.access.dir_mtime(dir).map_or(self.mount_time, timespec)
    }

    /// The groups of a namespace, listed once: both the namespace and its type directories
    /// need them, and listings are kept for the mount's life anyway.
    fn groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>, Errno> {
        if let Some(found) = self.groups.lock().unwrap().get(ns) {
            return Ok(found.clone());
        }
        let groups = self.list_groups(ns)?;
        self.groups
            .lock()
            .unwrap()
            .insert(ns.clone(), groups.clone());
        Ok(groups)
    }

    fn list_groups(&self, ns: &BackupNamespace) -> Result<Vec<BackupGroup>, Errno> {
        self.access
            .list_groups(ns)
            .map_err(|err| self.eio(format!("cannot list namespace '{ns}': {err:#}")))
    }

    /// The snapshots of a group that can be read; unfinished and damaged ones are left out
    /// (a damaged manifest must not take the rest of the group with it).
    fn readable_snapshots(
        &self,
        ns: &BackupNamespace,
        group: &BackupGroup,
    ) -> Result<Vec<BackupDir>, Errno> {
        let failed =
            |err: anyhow::Error| self.eio(format!("cannot list {}{group}: {err:#}", ns_prefix(ns)));
        Ok(self
            .access
            .list_snapshots(ns, Some(group))
            .map_err(failed)?
            .into_iter()
            .filter(|s| s.entry.is_readable())
            .map(|s| s.entry.dir)
            .collect())
    }

    fn child_namespaces(&self, ns: &BackupNamespace) -> Result<Vec<BackupNamespace>, Errno> {
        self.access
            .child_namespaces(ns)
            .map_err(|err| self.eio(format!("cannot list namespace '{ns}': {err:#}")))
    }
}

/// Adds a virtual node (or finds it) and returns its inode.
fn intern(
    tables: &mut Tables,
    parent: u64,
    node: Node,
    mode: u32,
    size: u64,
    mtime: Timespec,
) -> u64 {
    if let Some(ino) = tables.node_ids.get(&node) {
        return *ino;
    }
    tables.nodes.push(NodeEntry {
        node: node.clone(),
        parent,
        mode,
        size,
        mtime,
    });
    let ino = tables.nodes.len() as u64;
    if let Node::Archive(slot) | Node::Image(slot) = node {
        let _ = tables.slots[slot].node_ino.set(ino);
    }
    tables.node_ids.insert(node, ino);
    ino
}

fn ns_prefix(ns: &BackupNamespace) -> String {
    if ns.is_root() {
        String::new()
    } else {
        format!("ns {ns}: ")
    }
}

fn timespec(time: SystemTime) -> Timespec {
    time.duration_since(UNIX_EPOCH)
        .map_or(Timespec::default(), |d| {
            Timespec::new(d.as_secs() as i64, d.subsec_nanos())
        })
}

impl ReadOnlyFs for StoreFs {
    fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        if let Some((slot_index, slot, local)) = self.in_archive(parent)? {
            let fs = self.archive(slot_index, &slot)?;
            return self.translate(&slot, slot_index, fs.lookup(local, name)?);
        }
        let (node, _) = self.node(parent)?;
        let children = self.children(parent, &node)?;
        let ino = children
            .iter()
            .find(|(n, _)| OsStr::new(n) == name)
            .map(|(_, ino)| *ino)
            .ok_or(Errno::ENOENT)?;
        self.virtual_attr(ino)
    }

    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        if ino & CONTENT_FLAG != 0 {
            let (slot_index, slot, local) = self.to_local(ino)?;
            let fs = self.archive(slot_index, &slot)?;
            return self.translate(&slot, slot_index, fs.getattr(local)?);
        }
        // Archive roots keep their virtual attributes, so a listing of the snapshot
        // (which opens nothing) and a later stat agree.
        self.virtual_attr(ino)
    }

    fn readdir(
        &self,
        ino: u64,
        offset: u64,
        add: &mut dyn FnMut(DirItem<'_>) -> ControlFlow<()>,
    ) -> Result<(), Errno> {
        if let Some((slot_index, slot, local)) = self.in_archive(ino)? {
            let fs = self.archive(slot_index, &slot)?;
            let mut failed = None;
            fs.readdir(local, offset, &mut |mut item| match self.to_global(
                &slot,
                slot_index,
                item.attr.ino,
            ) {
                Ok(global) => {
                    item.attr.ino = global;
                    add(item)
                }
                Err(err) => {
                    failed = Some(err);
                    ControlFlow::Break(())
                }
            })?;
            return failed.map_or(Ok(()), Err);
        }
        let (node, _) = self.node(ino)?;
        let children = self.children(ino, &node)?;
        for (index, (name, child)) in children.iter().enumerate().skip(offset as usize) {
            let item = DirItem {
                name: OsStr::new(name),
                attr: self.virtual_attr(*child)?,
                next_offset: index as u64 + 1,
            };
            if add(item).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn parent(&self, ino: u64) -> Option<u64> {
        if ino & CONTENT_FLAG != 0 {
            let (slot_index, slot, local) = self.to_local(ino).ok()?;
            let fs = self.archive(slot_index, &slot).ok()?;
            let parent = fs.parent(local)?;
            return self.to_global(&slot, slot_index, parent).ok();
        }
        if ino == ROOT_INO {
            return None;
        }
        self.node(ino).ok().map(|(_, parent)| parent)
    }

    fn open(&self, ino: u64) -> Result<u64, Errno> {
        if ino & CONTENT_FLAG != 0 {
            let (slot_index, slot, local) = self.to_local(ino)?;
            return self.archive(slot_index, &slot)?.open(local);
        }
        match self.node(ino)?.0 {
            Node::Image(_) => Ok(self.image_files.open(ino)),
            _ => Err(Errno::EISDIR),
        }
    }

    fn release(&self, ino: u64, fh: u64) {
        if ino & CONTENT_FLAG == 0 {
            self.image_files.close(fh);
            return;
        }
        // Only an archive still open has state for the handle.
        if let Ok((slot_index, _, local)) = self.to_local(ino) {
            if let Some(Opened::Archive(fs)) = self.open.lock().unwrap().peek(&slot_index).cloned()
            {
                fs.release(local, fh);
            }
        }
    }

    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<ReadData, Errno> {
        if ino & CONTENT_FLAG != 0 {
            let (slot_index, slot, local) = self.to_local(ino)?;
            return self
                .archive(slot_index, &slot)?
                .read(local, fh, offset, size);
        }
        let Node::Image(slot_index) = self.node(ino)?.0 else {
            return Err(Errno::EISDIR);
        };
        let slot = self.slot(slot_index)?;
        let Opened::Image(reader) = self.opened(slot_index, &slot)? else {
            return Err(Errno::EIO);
        };
        let pattern = self.image_files.read(fh, offset, size, reader.size());
        read_image(&reader, offset, size, pattern, |err| {
            self.eio(format!("{}/{}: {err}", slot.dir, slot.what.name()))
        })
    }

    fn readlink(&self, ino: u64) -> Result<OsString, Errno> {
        if ino & CONTENT_FLAG == 0 {
            return Err(Errno::EINVAL);
        }
        let (slot_index, slot, local) = self.to_local(ino)?;
        self.archive(slot_index, &slot)?.readlink(local)
    }

    fn listxattr(&self, ino: u64) -> Result<Vec<OsString>, Errno> {
        if ino & CONTENT_FLAG == 0 {
            return Ok(Vec::new());
        }
        let (slot_index, slot, local) = self.to_local(ino)?;
        self.archive(slot_index, &slot)?.listxattr(local)
    }

    fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        if ino & CONTENT_FLAG == 0 {
            return Err(Errno::ENODATA);
        }
        let (slot_index, slot, local) = self.to_local(ino)?;
        self.archive(slot_index, &slot)?.getxattr(local, name)
    }

    fn statfs(&self) -> Result<StatFs, Errno> {
        Ok(StatFs {
            files: self.tables.read().unwrap().nodes.len() as u64,
            ..StatFs::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::access::LocalAccess;
    use crate::store::local::LocalDatastore;

    #[test]
    fn content_inodes_never_meet_virtual_ones_or_each_other() {
        let slot = |n: u64| Slot {
            ns: BackupNamespace::root(),
            dir: BackupDir::parse("host/a/2020-01-01T00:00:00Z").unwrap(),
            what: Mountable::Pxar {
                name: "root.pxar".into(),
                file: "root.pxar.didx".into(),
            },
            node_ino: OnceLock::from(n),
            overflow: Mutex::default(),
        };
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/datastore");
        let store = Arc::new(LocalDatastore::open(std::path::Path::new(path)).unwrap());
        let chunks = Arc::new(ChunkCache::shared(1 << 20, 0));
        let fs = StoreFs::new(
            Arc::new(LocalAccess(store)),
            BackupNamespace::root(),
            chunks,
            None,
        )
        .unwrap();
        let (a, b) = (slot(7), slot(9));
        let mut seen = HashSet::new();
        for local in [
            2,
            3,
            DIRECT_LIMIT - 1,
            DIRECT_LIMIT,
            DIRECT_LIMIT + 5,
            u64::MAX / 2,
        ] {
            for (index, s) in [(0usize, &a), (1, &b)] {
                let global = fs.to_global(s, index, local).unwrap();
                assert_ne!(global & CONTENT_FLAG, 0);
                assert!(seen.insert(global), "{local} in slot {index} collides");
                // Round trip of the overflow table (direct ones decode arithmetically).
                let back = global & LOCAL_MASK;
                if back >= DIRECT_LIMIT {
                    assert_eq!(s.overflow.lock().unwrap().by_index[&back], local);
                } else {
                    assert_eq!(back, local);
                }
            }
        }
        // The archive root is its virtual node.
        assert_eq!(fs.to_global(&a, 0, ROOT_INO).unwrap(), 7);
    }
}
