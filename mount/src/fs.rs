//! The small read-only filesystem interface the FUSE adapter serves.

use std::ffi::{OsStr, OsString};
use std::ops::{ControlFlow, Deref, Range};
use std::sync::Arc;

use crate::Errno;

/// The bytes a read returns: a buffer of its own, or a window into a shared buffer (a
/// cached chunk, say) that the reply is written from directly, saving a copy and an
/// allocation per request on the hot path.
pub enum ReadData {
    Owned(Vec<u8>),
    Shared {
        buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
    },
}

thread_local! {
    /// The last owned reply buffer of this serving thread, kept for the next one.
    static SPARE_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ReadData {
    /// A window into `buffer`; `range` must lie within it.
    pub fn shared(buffer: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= (*buffer).as_ref().len());
        ReadData::Shared { buffer, range }
    }

    /// A zero-filled buffer of `len` bytes for an owned reply. Serving threads re-use the
    /// buffer of their previous owned reply: a fresh MiB-sized buffer costs page faults and
    /// zeroing by the kernel on every read that spans two chunks.
    pub fn buffer(len: usize) -> Vec<u8> {
        let mut buf = SPARE_BUFFER.with(|spare| std::mem::take(&mut *spare.borrow_mut()));
        buf.clear();
        buf.resize(len, 0);
        buf
    }

    /// Keeps an owned reply's buffer for the next [`ReadData::buffer`] on this thread.
    pub(crate) fn recycle(self) {
        if let ReadData::Owned(buf) = self {
            SPARE_BUFFER.with(|spare| {
                let mut spare = spare.borrow_mut();
                if buf.capacity() > spare.capacity() {
                    *spare = buf;
                }
            });
        }
    }
}

impl Deref for ReadData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Owned(data) => data,
            ReadData::Shared { buffer, range } => &(**buffer).as_ref()[range.clone()],
        }
    }
}

impl From<Vec<u8>> for ReadData {
    fn from(data: Vec<u8>) -> Self {
        ReadData::Owned(data)
    }
}

impl std::fmt::Debug for ReadData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadData({} bytes)", self.len())
    }
}

/// Inode number of the root directory (FUSE_ROOT_ID): the adapter passes inode numbers
/// through unchanged, so a filesystem must give its root this number.
pub const ROOT_INO: u64 = 1;

/// A point in time as seconds and nanoseconds since the Unix epoch; `secs` may be negative
/// (before 1970), `nanos` is always the positive part (< 1e9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    pub secs: i64,
    pub nanos: u32,
}

impl Timespec {
    pub const fn new(secs: i64, nanos: u32) -> Self {
        Timespec { secs, nanos }
    }
}

/// What `stat` reports for one inode. Atime and ctime are reported equal to mtime.
///
/// The kernel caches these for [`MountOptions::ttl`](crate::MountOptions::ttl), or only for
/// [`MountOptions::provisional_ttl`](crate::MountOptions::provisional_ttl) when
/// `provisional` is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    /// Allocated size in 512-byte units.
    pub blocks: u64,
    /// File type and permission bits, as in `st_mode` (`libc::S_IFREG | 0o644`).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    /// Device number of a device node, as a glibc `dev_t` (`libc::makedev(major, minor)`).
    pub rdev: u64,
    /// Preferred I/O size reported as `st_blksize`.
    pub blksize: u32,
    /// Some value here may still change while mounted (a link count not fully counted yet,
    /// say): the kernel asks again after the short provisional TTL instead of keeping it
    /// for the mount's long one. Leave it false for final values, which are cached long.
    pub provisional: bool,
}

impl Attr {
    /// The `S_IFMT` part of `mode`.
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    /// Blocks (512-byte units) a file of `size` bytes occupies when stored densely.
    pub fn blocks_for(size: u64) -> u64 {
        size.div_ceil(512)
    }
}

/// One directory entry handed to the adapter while listing a directory.
#[derive(Clone, Copy, Debug)]
pub struct DirItem<'a> {
    pub name: &'a OsStr,
    /// Full attributes of the entry: with them `readdirplus` needs no further lookups.
    pub attr: Attr,
    /// Cookie at which a later listing resumes *after* this entry. It must be non-zero,
    /// stable for the life of the mount, and below `u64::MAX - 2`.
    pub next_offset: u64,
}

/// Answer of `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl Default for StatFs {
    fn default() -> Self {
        StatFs {
            blocks: 0,
            bfree: 0,
            bavail: 0,
            files: 0,
            ffree: 0,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        }
    }
}

/// Takes the entries of a `readdir` reply one by one; `ControlFlow::Break(())` means the
/// reply is full and that entry was not taken.
pub type AddDirItem<'a> = dyn FnMut(DirItem<'_>) -> ControlFlow<()> + 'a;

/// Serves `readdir` from a listing held in order: the entries from `offset` on, each with
/// its position + 1 as `next_offset`; `item` gives the name and attributes of the entry at
/// a position.
pub fn readdir_from<'e, T>(
    entries: &'e [T],
    offset: u64,
    add: &mut AddDirItem<'_>,
    mut item: impl FnMut(usize, &'e T) -> Result<(&'e OsStr, Attr), Errno>,
) -> Result<(), Errno> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    for (index, entry) in entries.iter().enumerate().skip(start) {
        let (name, attr) = item(index, entry)?;
        let next_offset = index as u64 + 1;
        if add(DirItem {
            name,
            attr,
            next_offset,
        })
        .is_break()
        {
            break;
        }
    }
    Ok(())
}

/// A read-only filesystem with stable inode numbers.
///
/// Methods are called from several threads at once. Inode numbers must stay valid for the
/// whole mount (the adapter ignores the kernel's `forget` counts), and the root is
/// [`ROOT_INO`]. Access checks are left to the kernel (`default_permissions`), so methods
/// need not look at the caller.
pub trait ReadOnlyFs: Send + Sync + 'static {
    /// Finds `name` in directory `parent` (never "." or ".."; the kernel resolves those).
    fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno>;

    fn getattr(&self, ino: u64) -> Result<Attr, Errno>;

    /// Whether the names in directory `dir` may change while mounted (entries added or
    /// removed). The kernel then keeps its answers for them, found or absent, only for the
    /// short provisional TTL; otherwise for the mount's long one. A directory whose
    /// listing changes must also change its mtime, which is how the kernel learns to drop
    /// a listing it has cached, and report provisional attributes so it asks for it.
    fn names_may_change(&self, _dir: u64) -> bool {
        false
    }

    /// Lists directory `ino` starting at `offset` (0 = the first entry, otherwise a
    /// `next_offset` handed out earlier), without "." and "..", which the adapter adds.
    /// Calls `add` for each entry in order and stops as soon as it returns
    /// `ControlFlow::Break(())` (see [`readdir_from`] for a listing held as a list).
    fn readdir(&self, ino: u64, offset: u64, add: &mut AddDirItem<'_>) -> Result<(), Errno>;

    /// The parent directory of directory `ino`, reported as the inode of "..".
    /// Without it ".." shows the directory's own inode number.
    fn parent(&self, _ino: u64) -> Option<u64> {
        None
    }

    /// Opens a regular file; the returned handle comes back in `read` and `release`.
    fn open(&self, _ino: u64) -> Result<u64, Errno> {
        Ok(0)
    }

    fn release(&self, _ino: u64, _fh: u64) {}

    /// Reads up to `size` bytes at `offset`; fewer only at the end of the file.
    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<ReadData, Errno>;

    /// The target of symlink `ino`.
    fn readlink(&self, _ino: u64) -> Result<OsString, Errno> {
        Err(Errno::EINVAL)
    }

    /// Names of the extended attributes of `ino`.
    fn listxattr(&self, _ino: u64) -> Result<Vec<OsString>, Errno> {
        Ok(Vec::new())
    }

    /// Value of one extended attribute; `Errno::ENODATA` when `ino` has no such attribute.
    fn getxattr(&self, _ino: u64, _name: &OsStr) -> Result<Vec<u8>, Errno> {
        Err(Errno::ENODATA)
    }

    fn statfs(&self) -> Result<StatFs, Errno> {
        Ok(StatFs::default())
    }
}

/// Lets a caller keep a handle on the filesystem it mounts.
impl<T: ReadOnlyFs + ?Sized> ReadOnlyFs for Arc<T> {
    fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        (**self).lookup(parent, name)
    }
    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        (**self).getattr(ino)
    }
    fn names_may_change(&self, dir: u64) -> bool {
        (**self).names_may_change(dir)
    }
    fn readdir(&self, ino: u64, offset: u64, add: &mut AddDirItem<'_>) -> Result<(), Errno> {
        (**self).readdir(ino, offset, add)
    }
    fn parent(&self, ino: u64) -> Option<u64> {
        (**self).parent(ino)
    }
    fn open(&self, ino: u64) -> Result<u64, Errno> {
        (**self).open(ino)
    }
    fn release(&self, ino: u64, fh: u64) {
        (**self).release(ino, fh)
    }
    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<ReadData, Errno> {
        (**self).read(ino, fh, offset, size)
    }
    fn readlink(&self, ino: u64) -> Result<OsString, Errno> {
        (**self).readlink(ino)
    }
    fn listxattr(&self, ino: u64) -> Result<Vec<OsString>, Errno> {
        (**self).listxattr(ino)
    }
    fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        (**self).getxattr(ino, name)
    }
    fn statfs(&self) -> Result<StatFs, Errno> {
        (**self).statfs()
    }
}
