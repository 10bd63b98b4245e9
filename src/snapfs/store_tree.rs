//! A whole datastore (or one namespace of it) as one read-only filesystem:
//! `[ns/<ns>/...]<type>/<id>/<time>/<archive>/...`, laid out like the datastore itself.
//! The datastore is a local directory or a PBS server, seen through [`DatastoreAccess`].
//!
//! Nothing is opened before it is needed: listing a snapshot reads only its manifest; a
//! pxar archive is opened (an [`ArchiveFs`]) on the first access inside it and kept in a
//! small LRU ([`opened`]). Only finished snapshots with a readable manifest are shown (a
//! damaged one is left out). Directory listings ([`listings`]) are kept and taken again
//! once older than the refresh interval ([`StoreFs::with_refresh`], 30 s by default), so
//! backups made and forgotten meanwhile show up without a remount; each group has a
//! `latest` symlink to its newest snapshot. Inode numbers are explained in [`inodes`].

mod inodes;
mod listings;
mod opened;

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use pbsfs_mount::{
    readdir_from, AddDirItem, Attr, Errno, ReadData, ReadOnlyFs, StatFs, Timespec, ROOT_INO,
};

use super::images::read_image;
use super::open_files::OpenFiles;
use super::ArchiveFs;
use crate::format::crypto::CryptConfig;
use crate::format::ReadAt;
use crate::store::access::{DatastoreAccess, StoreDir};
use crate::store::cache::ChunkCache;
use crate::store::names::{BackupGroup, BackupNamespace};
use inodes::{Node, NodeEntry, Slot, Tables, CONTENT_FLAG};
use opened::{OpenArchives, Opened};

const DIR_MODE: u32 = libc::S_IFDIR | 0o555;
const FILE_MODE: u32 = libc::S_IFREG | 0o444;
const LINK_MODE: u32 = libc::S_IFLNK | 0o777;
/// The name of each group's symlink to its newest snapshot.
const LATEST: &str = "latest";
/// How long a listing that can change is served before it is taken again.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

pub struct StoreFs {
    /// Listings, directory times (where the datastore has them; else the mount time) and
    /// snapshots.
    access: Arc<dyn DatastoreAccess>,
    archives: OpenArchives,
    /// The groups of each namespace listed so far, and when.
    groups: Mutex<HashMap<BackupNamespace, (Vec<BackupGroup>, Instant)>>,
    refresh: Duration,
    mount_time: Timespec,
    tables: RwLock<Tables>,
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
        let now = SystemTime::now()
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
        tables.intern(NodeEntry {
            node: Node::Namespace(ns),
            parent: ROOT_INO,
            mode: DIR_MODE,
            size: 0,
            mtime,
        });
        Ok(StoreFs {
            archives: OpenArchives::new(access.clone(), chunks, crypt),
            access,
            groups: Mutex::new(HashMap::new()),
            refresh: DEFAULT_REFRESH,
            mount_time: now,
            tables: RwLock::new(tables),
            logged: Mutex::new(HashSet::new()),
            image_files: OpenFiles::default(),
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        })
    }

    /// Takes listings that can change again once they are older than `refresh`.
    pub fn with_refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
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
        let entry = tables.node(ino)?;
        Ok((entry.node.clone(), entry.parent))
    }

    fn slot(&self, slot: usize) -> Result<Arc<Slot>, Errno> {
        self.tables.read().unwrap().slot(slot)
    }

    fn virtual_attr(&self, ino: u64) -> Result<Attr, Errno> {
        let tables = self.tables.read().unwrap();
        let entry = tables.node(ino)?;
        let is_dir = entry.mode & libc::S_IFMT == libc::S_IFDIR;
        Ok(Attr {
            ino,
            size: entry.size,
            blocks: Attr::blocks_for(entry.size),
            mode: entry.mode,
            nlink: if is_dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            mtime: entry.mtime,
            rdev: 0,
            blksize: if is_dir { 4096 } else { 1 << 20 },
            // Everything above the archives can come and go (and a directory's mtime
            // changes with its listing), so the kernel keeps it only briefly.
            provisional: !matches!(entry.node, Node::Archive(_) | Node::Image(_)),
        })
    }

    // ---- archive contents ----

    fn to_global(&self, slot: &Slot, slot_index: usize, local: u64) -> Result<u64, Errno> {
        slot.to_global(slot_index, local).ok_or_else(|| {
            self.eio(format!(
                "{}/{}: too many inodes to number",
                slot.dir,
                slot.what.name()
            ))
        })
    }

    /// (slot, local inode) of a global inode inside an archive.
    fn to_local(&self, ino: u64) -> Result<(usize, Arc<Slot>, u64), Errno> {
        self.tables.read().unwrap().to_local(ino)
    }

    fn translate(&self, slot: &Slot, slot_index: usize, mut attr: Attr) -> Result<Attr, Errno> {
        attr.ino = self.to_global(slot, slot_index, attr.ino)?;
        Ok(attr)
    }

    fn opened(&self, slot_index: usize, slot: &Slot) -> Result<Opened, Errno> {
        // Logged once; later accesses retry (the error may have been transient).
        self.archives.get(slot_index, slot).map_err(|err| {
            self.eio(format!(
                "cannot open {}{}/{}: {err:#}",
                ns_prefix(&slot.ns),
                slot.dir,
                slot.what.name()
            ))
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
        let children = self.children(parent, &node, false)?;
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
        self.refresh_if_due(ino, &self.node(ino)?.0);
        self.virtual_attr(ino)
    }

    fn readdir(&self, ino: u64, offset: u64, add: &mut AddDirItem<'_>) -> Result<(), Errno> {
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
        let children = self.children(ino, &node, offset > 0)?;
        readdir_from(&children, offset, add, |_, (name, child)| {
            Ok((OsStr::new(name), self.virtual_attr(*child)?))
        })
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
            // The kernel follows symlinks itself; nothing opens one.
            Node::Latest(..) => Err(Errno::EINVAL),
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
            if let Some(Opened::Archive(fs)) = self.archives.peek(slot_index) {
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
            self.eio(format!(
                "{}{}/{}: {err}",
                ns_prefix(&slot.ns),
                slot.dir,
                slot.what.name()
            ))
        })
    }

    fn names_may_change(&self, dir: u64) -> bool {
        dir & CONTENT_FLAG == 0 && self.node(dir).is_ok_and(|(node, _)| node.may_change())
    }

    fn readlink(&self, ino: u64) -> Result<OsString, Errno> {
        if ino & CONTENT_FLAG == 0 {
            return match self.node(ino)?.0 {
                Node::Latest(_, newest) => Ok(newest.time_string().into()),
                _ => Err(Errno::EINVAL),
            };
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
            files: self.tables.read().unwrap().node_count() as u64,
            ..StatFs::default()
        })
    }
}
