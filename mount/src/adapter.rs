//! The fuser `Filesystem` that serves a [`ReadOnlyFs`] to the kernel, tuned for data that
//! never changes while mounted: long cache lifetimes, kept page and directory caches.
//! Attributes the filesystem marks provisional are cached only briefly, names and final
//! attributes for the mount's long TTL.

use std::ffi::OsStr;
use std::io;
use std::ops::ControlFlow;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileAttr, FileHandle, FileType, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::kernel_attr::file_attr;
use crate::xattr::{encode_names, xattr_reply, XattrReply};
use crate::{Attr, Errno, ReadOnlyFs};

/// Inode numbers never get reused while mounted, so every entry has generation 0.
const GENERATION: Generation = Generation(0);

/// Kernel-side limits negotiated at INIT.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KernelTuning {
    /// How long the kernel may trust entries, negative entries and final attributes.
    pub ttl: Duration,
    /// How long it may trust attributes marked provisional.
    pub provisional_ttl: Duration,
    /// Largest single read request, in bytes.
    pub max_read: u32,
    pub max_readahead: u32,
    /// Asynchronous (readahead) requests the kernel may keep in flight.
    pub max_background: u16,
}

impl KernelTuning {
    /// How long the kernel may keep `attr`.
    fn attr_ttl(&self, attr: &Attr) -> Duration {
        if attr.provisional {
            self.provisional_ttl
        } else {
            self.ttl
        }
    }

    /// `attr` as the kernel gets it, with how long it may keep it.
    fn reply_attr(&self, attr: &Attr) -> Result<(FileAttr, Duration), Errno> {
        Ok((file_attr(attr)?, self.attr_ttl(attr)))
    }
}

pub(crate) struct FuseAdapter<F> {
    fs: F,
    tuning: KernelTuning,
    /// The kernel opens directories itself when OPENDIR is answered with ENOSYS.
    kernel_opens_dirs: bool,
}

impl<F: ReadOnlyFs> FuseAdapter<F> {
    pub(crate) fn new(fs: F, tuning: KernelTuning) -> Self {
        FuseAdapter {
            fs,
            tuning,
            kernel_opens_dirs: false,
        }
    }

    /// Runs one filesystem call; a panic becomes EIO instead of killing a session thread.
    fn guarded<T>(&self, what: &str, f: impl FnOnce(&F) -> Result<T, Errno>) -> Result<T, Errno> {
        panic::catch_unwind(AssertUnwindSafe(|| f(&self.fs))).unwrap_or_else(|_| {
            log::error!("filesystem panicked in {what}");
            Err(Errno::EIO)
        })
    }

    /// Lists directory `ino` from kernel offset `offset` into `out`: "." and ".." at offsets
    /// 0 and 1, then the filesystem's entries with their cookies shifted by 2. Returns how
    /// many entries were added and the error that stopped the listing, if any.
    fn fill_dir(&self, ino: u64, offset: u64, out: &mut impl DirReply) -> (usize, Option<Errno>) {
        let mut added = 0;
        let result = self.guarded("readdir", |fs| {
            if offset < 2 {
                let dir = fs.getattr(ino)?;
                if !dir.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                let (dot, dot_ttl) = self.tuning.reply_attr(&dir)?;
                if offset == 0 {
                    if out.push(ino, 1, OsStr::new("."), &dot, dot_ttl) {
                        return Ok(());
                    }
                    added += 1;
                }
                let parent = fs.parent(ino).unwrap_or(ino);
                let dotdot = FileAttr {
                    ino: INodeNo(parent),
                    ..dot
                };
                if out.push(parent, 2, OsStr::new(".."), &dotdot, dot_ttl) {
                    return Ok(());
                }
                added += 1;
            }
            let mut bad_item = None;
            fs.readdir(ino, offset.saturating_sub(2), &mut |item| {
                let next = match item.next_offset {
                    0 => None, // would make the kernel restart the listing forever
                    n => n.checked_add(2),
                };
                let (Some(next), Ok((attr, ttl))) = (next, self.tuning.reply_attr(&item.attr))
                else {
                    log::error!("bad directory entry {:?} in inode {ino}", item.name);
                    bad_item = Some(Errno::EIO);
                    return ControlFlow::Break(());
                };
                if out.push(item.attr.ino, next, item.name, &attr, ttl) {
                    return ControlFlow::Break(());
                }
                added += 1;
                ControlFlow::Continue(())
            })?;
            bad_item.map_or(Ok(()), Err)
        });
        (added, result.err())
    }

    fn finish_dir<R: DirReply>(&self, ino: u64, offset: u64, mut reply: R) {
        match self.fill_dir(ino, offset, &mut reply) {
            (_, None) => reply.ok(),
            // Entries already gathered go out; the next call from their offset meets the error.
            (added, Some(err)) if added > 0 => {
                log::debug!("readdir of inode {ino} stopped early: {err}");
                reply.ok()
            }
            (_, Some(err)) => reply.error(err.to_fuser()),
        }
    }

    fn negative_entry(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(0),
            size: 0,
            blocks: 0,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 0,
            flags: 0,
        }
    }
}

/// The two directory reply kinds, fed from the same listing.
trait DirReply {
    /// Adds one entry, with how long the kernel may keep its attributes; true when the
    /// reply is full and the entry was not taken.
    fn push(&mut self, ino: u64, next: u64, name: &OsStr, attr: &FileAttr, ttl: Duration) -> bool;
    fn ok(self);
    fn error(self, err: fuser::Errno);
}

impl DirReply for ReplyDirectory {
    fn push(&mut self, ino: u64, next: u64, name: &OsStr, attr: &FileAttr, _: Duration) -> bool {
        self.add(INodeNo(ino), next, attr.kind, name)
    }
    fn ok(self) {
        ReplyDirectory::ok(self)
    }
    fn error(self, err: fuser::Errno) {
        ReplyDirectory::error(self, err)
    }
}

/// Readdirplus entries carry their attributes with a TTL each. fuser gives the name the
/// same TTL, so a provisional entry's name is looked up again too once it has expired.
impl DirReply for ReplyDirectoryPlus {
    fn push(&mut self, ino: u64, next: u64, name: &OsStr, attr: &FileAttr, ttl: Duration) -> bool {
        self.add(INodeNo(ino), next, name, &ttl, attr, GENERATION)
    }
    fn ok(self) {
        ReplyDirectoryPlus::ok(self)
    }
    fn error(self, err: fuser::Errno) {
        ReplyDirectoryPlus::error(self, err)
    }
}

fn send_xattr(reply: ReplyXattr, data: &[u8], size: u32) {
    match xattr_reply(data, size) {
        XattrReply::Size(n) => reply.size(n),
        XattrReply::Data(d) => reply.data(d),
        XattrReply::Error(e) => reply.error(e.to_fuser()),
    }
}

const EROFS: fuser::Errno = fuser::Errno::EROFS;

impl<F: ReadOnlyFs> fuser::Filesystem for FuseAdapter<F> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Always readdirplus (not READDIRPLUS_AUTO, which only does the first batch): the
        // attributes come with the listing anyway and save a lookup per entry.
        // FUSE_POSIX_ACL: with default_permissions the kernel then checks access by the
        // POSIX ACLs the filesystem serves as `system.posix_acl_access`, as it does on the
        // source filesystem; without it, it looks at the mode bits only, and ACLs that deny
        // or allow other users (`-o allow_other`) are ignored.
        let wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_POSIX_ACL;
        let supported = wanted & config.capabilities();
        self.kernel_opens_dirs = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if let Err(missing) = config.add_capabilities(supported) {
            log::debug!("kernel refused FUSE capabilities {missing:?}");
        }
        // Reads are sized by max_pages, which fuser derives from max_write and readahead.
        let t = self.tuning;
        if let Err(nearest) = config.set_max_write(t.max_read) {
            let _ = config.set_max_write(nearest);
        }
        // The kernel offers its current readahead as the upper bound; take what it allows.
        if let Err(nearest) = config.set_max_readahead(t.max_readahead) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(t.max_background.max(1));
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tuning = self.tuning;
        let names_may_change = self.guarded("lookup", |fs| Ok(fs.names_may_change(parent.0)));
        let ttl = if names_may_change.unwrap_or(true) {
            tuning.provisional_ttl
        } else {
            tuning.ttl
        };
        let found = self.guarded("lookup", |fs| {
            tuning.reply_attr(&fs.lookup(parent.0, name)?)
        });
        match found {
            // The name's TTL is the directory's; the attributes may be provisional apart.
            Ok((attr, attr_ttl)) => reply.entry_with_ttls(&attr_ttl, &ttl, &attr, GENERATION),
            // A zero inode with a TTL lets the kernel cache the absence too.
            Err(Errno::ENOENT) => reply.entry(&ttl, &self.negative_entry(), GENERATION),
            Err(err) => reply.error(err.to_fuser()),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let tuning = self.tuning;
        match self.guarded("getattr", |fs| tuning.reply_attr(&fs.getattr(ino.0)?)) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(err) => reply.error(err.to_fuser()),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        use std::os::unix::ffi::OsStrExt;
        match self.guarded("readlink", |fs| fs.readlink(ino.0)) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(err) => reply.error(err.to_fuser()),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(EROFS);
        }
        match self.guarded("open", |fs| fs.open(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(err) => reply.error(err.to_fuser()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.guarded("read", |fs| fs.read(ino.0, fh.0, offset, size)) {
            // A shared window is written to the kernel straight from the cached chunk.
            Ok(data) => {
                reply.data(&data[..data.len().min(size as usize)]);
                data.recycle();
            }
            Err(err) => reply.error(err.to_fuser()),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _ = self.guarded("release", |fs| {
            fs.release(ino.0, fh.0);
            Ok(())
        });
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(EROFS);
        }
        // Directory handles carry nothing here. Told so, a kernel that can (5.1+) opens
        // directories itself from then on, keeping cached listings (KEEP_CACHE, CACHE_DIR
        // are its defaults then), and sends neither OPENDIR nor RELEASEDIR: two round trips
        // fewer for every directory listed.
        if self.kernel_opens_dirs {
            return reply.error(fuser::Errno::ENOSYS);
        }
        // KEEP_CACHE too: without it the kernel drops the cached listing on every open.
        let flags = FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE;
        reply.opened(FileHandle(0), flags);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.finish_dir(ino.0, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.finish_dir(ino.0, offset, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.guarded("statfs", |fs| fs.statfs()) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(err) => reply.error(err.to_fuser()),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.guarded("getxattr", |fs| fs.getxattr(ino.0, name)) {
            Ok(value) => send_xattr(reply, &value, size),
            Err(err) => reply.error(err.to_fuser()),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.guarded("listxattr", |fs| fs.listxattr(ino.0)) {
            Ok(names) => send_xattr(reply, &encode_names(&names), size),
            Err(err) => reply.error(err.to_fuser()),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Only reached without default_permissions; permission bits are the kernel's job.
        if mask.contains(AccessFlags::W_OK) {
            reply.error(EROFS)
        } else {
            reply.ok()
        }
    }

    fn flush(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    // Everything below would modify the tree: refused (the mount is also `ro`).

    fn setattr(
        &self,
        _: &Request,
        _: INodeNo,
        _: Option<u32>,
        _: Option<u32>,
        _: Option<u32>,
        _: Option<u64>,
        _: Option<TimeOrNow>,
        _: Option<TimeOrNow>,
        _: Option<SystemTime>,
        _: Option<FileHandle>,
        _: Option<SystemTime>,
        _: Option<SystemTime>,
        _: Option<SystemTime>,
        _: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(EROFS);
    }

    fn mknod(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, _: u32, r: ReplyEntry) {
        r.error(EROFS);
    }

    fn mkdir(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, _: u32, reply: ReplyEntry) {
        reply.error(EROFS);
    }

    fn unlink(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(EROFS);
    }

    fn rmdir(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(EROFS);
    }

    fn symlink(&self, _: &Request, _: INodeNo, _: &OsStr, _: &Path, reply: ReplyEntry) {
        reply.error(EROFS);
    }

    fn rename(
        &self,
        _: &Request,
        _: INodeNo,
        _: &OsStr,
        _: INodeNo,
        _: &OsStr,
        _: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(EROFS);
    }

    fn link(&self, _: &Request, _: INodeNo, _: INodeNo, _: &OsStr, reply: ReplyEntry) {
        reply.error(EROFS);
    }

    fn write(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: &[u8],
        _: WriteFlags,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(EROFS);
    }

    fn setxattr(
        &self,
        _: &Request,
        _: INodeNo,
        _: &OsStr,
        _: &[u8],
        _: i32,
        _: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(EROFS);
    }

    fn removexattr(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(EROFS);
    }

    fn create(
        &self,
        _: &Request,
        _: INodeNo,
        _: &OsStr,
        _: u32,
        _: u32,
        _: i32,
        reply: ReplyCreate,
    ) {
        reply.error(EROFS);
    }

    fn fallocate(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: u64,
        _: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(EROFS);
    }

    fn copy_file_range(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: INodeNo,
        _: FileHandle,
        _: u64,
        _: u64,
        _: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(EROFS);
    }
}
