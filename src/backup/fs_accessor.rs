//! The file system a backup reads, behind a trait so a backup can walk something other than
//! the local disk. Paths are relative to the accessor's root; the empty path is the root.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::dir_warmer::DirWarmer;
use crate::pxar::format::MTime;

/// What `lstat` reports about an entry, as much as a backup needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStat {
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: MTime,
    /// Last change of the inode (content or metadata: xattrs, ACLs, flags, owner, mode).
    pub ctime: MTime,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
}

impl FileStat {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }
    pub fn is_regular_file(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }
}

/// Read access to a directory tree. Errors keep their OS error codes (ENOENT, EOPNOTSUPP,
/// ...) so the walker can react like the official client does.
pub trait FileSystemAccessor {
    /// `lstat` (symlinks are not followed).
    fn lstat(&self, path: &Path) -> io::Result<FileStat>;

    /// Names of a directory's entries without `.` and `..`, in any order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<Vec<u8>>>;

    /// Reads file bytes at `offset`; returns 0 at the end of the file.
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// A hint that the first `len` bytes of a file will be read soon; a local accessor has
    /// the kernel start reading them, so the disk works while the walker encodes.
    fn will_read(&self, _path: &Path, _len: u64) {}

    /// How many files hinted by [`will_read`](Self::will_read) the accessor keeps at most;
    /// the walker hints no more than that ahead of the file it reads. The kernel keeps any
    /// number (and a cold disk serves a directory of tiny files faster for it); an accessor
    /// that holds the hinted data itself keeps a bounded number.
    fn read_hints_kept(&self) -> usize {
        usize::MAX
    }

    /// A hint that these directories will be listed and their entries stat'ed soon, in
    /// this order; a local accessor warms them on other threads, so a cold disk serves
    /// several at once.
    fn will_list(&self, _dirs: &[PathBuf]) {}

    /// A hint whether the walk will read the attributes (flags, xattrs, ACLs) of every
    /// directory and regular file (`true`: no previous snapshot holds them) or only of
    /// changed ones; a remote accessor fetches them with the listings when all are read.
    fn will_read_attributes(&self, _all: bool) {}

    /// A sequential reader over a file's contents.
    fn open_file<'a>(&'a self, path: &Path) -> io::Result<Box<dyn Read + 'a>> {
        Ok(Box::new(ReadAtReader {
            fs: self,
            path: path.to_path_buf(),
            offset: 0,
        }))
    }

    /// A symlink's target.
    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// Extended attribute names in the order the file system lists them.
    fn list_xattrs(&self, path: &Path) -> io::Result<Vec<Vec<u8>>>;

    /// An extended attribute's value, `None` if it does not exist (any more).
    fn get_xattr(&self, path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>>;

    /// The `statfs` magic of the file system holding `path`.
    fn fs_magic(&self, path: &Path) -> io::Result<i64>;

    /// `FS_IOC_GETFLAGS` bits of a regular file or directory, `None` if unsupported.
    fn chattr_flags(&self, path: &Path) -> io::Result<Option<u64>>;

    /// FAT attribute bits (vfat/FUSE), `None` if unsupported.
    fn fat_attributes(&self, _path: &Path) -> io::Result<Option<u64>> {
        Ok(None)
    }

    /// The project quota id (`FS_IOC_FSGETXATTR`), `None` if unsupported.
    fn quota_project_id(&self, path: &Path) -> io::Result<Option<u64>>;
}

/// `open_file` over `read_at` for accessors without a native stream.
struct ReadAtReader<'a, F: ?Sized> {
    fs: &'a F,
    path: PathBuf,
    offset: u64,
}

impl<F: FileSystemAccessor + ?Sized> Read for ReadAtReader<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = self.fs.read_at(&self.path, self.offset, buf)?;
        self.offset += got as u64;
        Ok(got)
    }
}

/// Errors for which the official client treats a feature as absent rather than failing.
pub fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOTTY | libc::ENOSYS | libc::EBADF | libc::EOPNOTSUPP | libc::EINVAL)
    )
}

/// The local file system below `root`, through libc.
pub struct LocalFileSystem {
    root: PathBuf,
    /// The last entry opened and its descriptor. The metadata capture asks for flags, the
    /// project id and xattrs one after another, and the read of a file's content follows:
    /// one open serves them all, as in the official client.
    last_opened: Mutex<Option<(PathBuf, File)>>,
    warmer: DirWarmer,
}

impl LocalFileSystem {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalFileSystem {
            root: root.into(),
            last_opened: Mutex::new(None),
            warmer: DirWarmer::new(),
        }
    }

    /// Runs `call` on the descriptor of `path`, opened once for consecutive calls.
    fn with_opened<T>(&self, path: &Path, call: impl FnOnce(&File) -> T) -> io::Result<T> {
        let mut last = self.last_opened.lock().unwrap_or_else(|e| e.into_inner());
        let file = match &mut *last {
            Some((opened, file)) if opened == path => file,
            slot => {
                *slot = None;
                &slot.insert((path.to_path_buf(), self.open(path)?)).1
            }
        };
        Ok(call(file))
    }

    /// The descriptor of `path` for reading its content: the one the capture opened if it
    /// is still held, a new one otherwise.
    fn take_opened(&self, path: &Path) -> io::Result<File> {
        let mut last = self.last_opened.lock().unwrap_or_else(|e| e.into_inner());
        match last.take() {
            Some((opened, file)) if opened == path => Ok(file),
            _ => self.open(path),
        }
    }

    /// Runs `call` on the descriptor held for `path`, if the capture opened it.
    fn with_held<T>(&self, path: &Path, call: impl FnOnce(std::os::fd::RawFd) -> T) -> Option<T> {
        let last = self.last_opened.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((opened, file)) if opened == path => Some(call(file.as_raw_fd())),
            _ => None,
        }
    }

    fn full(&self, path: &Path) -> PathBuf {
        if path.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }

    fn c_path(&self, path: &Path) -> io::Result<CString> {
        CString::new(self.full(path).into_os_string().into_vec())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Opens for reading without following a final symlink; like the official client it
    /// asks for O_NOATIME and retries without when not permitted (not the owner).
    fn open(&self, path: &Path) -> io::Result<File> {
        let full = self.full(path);
        let base = libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(base | libc::O_NOATIME)
            .open(&full)
        {
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(base)
                .open(&full),
            other => other,
        }
    }

    fn ioctl_read<T: Default>(&self, path: &Path, request: libc::c_ulong) -> io::Result<Option<T>> {
        self.with_opened(path, |file| ioctl_read_fd(file.as_raw_fd(), request))?
    }
}

/// A read ioctl on an open descriptor; `None` when the file system does not support it.
pub(crate) fn ioctl_read_fd<T: Default>(
    fd: std::os::fd::RawFd,
    request: libc::c_ulong,
) -> io::Result<Option<T>> {
    let mut value = T::default();
    // SAFETY: `request` is a read ioctl whose argument is a `T` the kernel fills in.
    let rc = unsafe { libc::ioctl(fd, request as _, &mut value as *mut T) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return if is_unsupported(&err) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(value))
}

/// `FS_IOC_GETFLAGS` = _IOR('f', 1, long).
pub(crate) const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
/// `FAT_IOCTL_GET_ATTRIBUTES` = _IOR('r', 0x10, __u32).
pub(crate) const FAT_IOCTL_GET_ATTRIBUTES: libc::c_ulong = 0x8004_7210;
/// `FS_IOC_FSGETXATTR` = _IOR('X', 31, struct fsxattr) (28 bytes).
pub(crate) const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;

/// `struct fsxattr`.
#[derive(Default)]
#[repr(C)]
pub(crate) struct FsXAttr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    pub(crate) projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// Calls a size-probing libc getter (`llistxattr`/`lgetxattr` style) with a growing buffer.
pub(crate) fn read_sized(
    mut call: impl FnMut(*mut libc::c_void, usize) -> isize,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let rc = call(buf.as_mut_ptr().cast(), buf.len());
        if rc >= 0 {
            buf.truncate(rc as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        // The kernel caps xattr values and lists at 64 KiB; stop well beyond that.
        if err.raw_os_error() != Some(libc::ERANGE) || buf.len() >= 1 << 24 {
            return Err(err);
        }
        let size = buf.len() * 4;
        buf.resize(size, 0);
    }
}

impl FileSystemAccessor for LocalFileSystem {
    fn lstat(&self, path: &Path) -> io::Result<FileStat> {
        let meta = std::fs::symlink_metadata(self.full(path))?;
        Ok(FileStat {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
            mtime: MTime::from_secs_nanos(meta.mtime(), meta.mtime_nsec()),
            ctime: MTime::from_secs_nanos(meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
            rdev: meta.rdev(),
        })
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        std::fs::read_dir(self.full(path))?
            .map(|entry| entry.map(|e| e.file_name().into_vec()))
            .collect()
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.open(path)?.read_at(buf, offset)
    }

    fn will_read(&self, path: &Path, len: u64) {
        if let Ok(file) = self.open(path) {
            // SAFETY: a valid open descriptor; advice only (the kernel reads asynchronously).
            unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    0,
                    len.min(i64::MAX as u64) as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }
    }

    fn will_list(&self, dirs: &[PathBuf]) {
        self.warmer.warm(dirs.iter().map(|dir| self.full(dir)));
    }

    fn open_file<'a>(&'a self, path: &Path) -> io::Result<Box<dyn Read + 'a>> {
        let file = self.take_opened(path)?;
        let meta = file.metadata()?;
        if meta.size() > 128 * 1024 {
            // Read front to back: tell the kernel, which then reads ahead twice as far.
            // SAFETY: a valid open descriptor; advice only.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
            }
        }
        // Fewer blocks than bytes: the file has holes (or is tiny and inline: harmless).
        if meta.is_file() && meta.blocks().saturating_mul(512) < meta.size() {
            return Ok(Box::new(SparseReader::new(file)));
        }
        Ok(Box::new(file))
    }

    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        Ok(std::fs::read_link(self.full(path))?
            .into_os_string()
            .into_vec())
    }

    fn list_xattrs(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        // Through the descriptor the capture holds (no second path walk), by path otherwise
        // (symlinks and other entries are not opened).
        let held = self.with_held(path, |fd| {
            // SAFETY: the buffer pointer and length come from a live Vec; the descriptor
            // is held open while the lock is.
            read_sized(|buf, len| unsafe { libc::flistxattr(fd, buf.cast(), len) })
        });
        let list = match held {
            Some(list) => list?,
            None => {
                let c_path = self.c_path(path)?;
                // SAFETY: as above, and the path is a valid C string.
                read_sized(|buf, len| unsafe {
                    libc::llistxattr(c_path.as_ptr(), buf.cast(), len)
                })?
            }
        };
        Ok(list
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    fn get_xattr(&self, path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let c_name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let held = self.with_held(path, |fd| {
            // SAFETY: as in `list_xattrs`.
            read_sized(|buf, len| unsafe { libc::fgetxattr(fd, c_name.as_ptr(), buf, len) })
        });
        let value = match held {
            Some(value) => value,
            None => {
                let c_path = self.c_path(path)?;
                // SAFETY: as above.
                read_sized(|buf, len| unsafe {
                    libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf, len)
                })
            }
        };
        match value {
            Ok(value) => Ok(Some(value)),
            Err(err) if err.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn fs_magic(&self, path: &Path) -> io::Result<i64> {
        let c_path = self.c_path(path)?;
        let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        // SAFETY: statfs fills the struct it is given.
        if unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: initialised by the successful call (and zeroed before).
        // (`f_type`'s integer type differs between libcs.)
        #[allow(clippy::unnecessary_cast)]
        Ok(unsafe { stat.assume_init() }.f_type as i64)
    }

    fn chattr_flags(&self, path: &Path) -> io::Result<Option<u64>> {
        // The kernel writes an int into the long.
        Ok(self
            .ioctl_read::<libc::c_long>(path, FS_IOC_GETFLAGS)?
            .map(|flags| flags as u32 as u64))
    }

    fn fat_attributes(&self, path: &Path) -> io::Result<Option<u64>> {
        Ok(self
            .ioctl_read::<u32>(path, FAT_IOCTL_GET_ATTRIBUTES)?
            .map(u64::from))
    }

    fn quota_project_id(&self, path: &Path) -> io::Result<Option<u64>> {
        Ok(self
            .ioctl_read::<FsXAttr>(path, FS_IOC_FSGETXATTR)?
            .map(|attr| u64::from(attr.projid)))
    }
}

/// Reads a file front to back without reading its holes: `SEEK_DATA`/`SEEK_HOLE` find them
/// and they are handed out as zeros, which is what they read as. File systems that cannot
/// tell report the whole file as data, so they are simply read.
pub struct SparseReader {
    file: File,
    pos: u64,
    /// `pos..data_end` is known to be data (read it); `pos..hole_end` known to be a hole.
    data_end: u64,
    hole_end: u64,
    /// Bytes actually read from the file.
    data_read: u64,
}

impl SparseReader {
    pub fn new(file: File) -> Self {
        SparseReader {
            file,
            pos: 0,
            data_end: 0,
            hole_end: 0,
            data_read: 0,
        }
    }

    /// Bytes read from the file so far (holes not included).
    pub fn data_read(&self) -> u64 {
        self.data_read
    }

    fn seek(&self, whence: libc::c_int) -> io::Result<u64> {
        // SAFETY: a valid descriptor; lseek has no memory effects.
        let rc = unsafe { libc::lseek(self.file.as_raw_fd(), self.pos as libc::off_t, whence) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as u64)
        }
    }

    /// Finds what lies at `pos`: a data region or a hole, and where it ends.
    fn locate(&mut self) -> io::Result<()> {
        match self.seek(libc::SEEK_DATA) {
            Ok(data) if data > self.pos => self.hole_end = data,
            Ok(_) => {
                self.data_end = match self.seek(libc::SEEK_HOLE) {
                    Ok(hole) => hole.max(self.pos + 1),
                    Err(_) => u64::MAX,
                }
            }
            // No data after `pos`: a hole up to the end of the file, or the end itself.
            Err(err) if err.raw_os_error() == Some(libc::ENXIO) => {
                let size = self.file.metadata()?.len();
                if size > self.pos {
                    self.hole_end = size;
                } else {
                    // At the end (or the file shrank): a plain read says so, or that it grew.
                    self.data_end = u64::MAX;
                }
            }
            // Not supported here: everything is data.
            Err(_) => self.data_end = u64::MAX,
        }
        Ok(())
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.data_end && self.pos >= self.hole_end {
            self.locate()?;
        }
        if self.pos < self.hole_end {
            let n = (self.hole_end - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        let want = (self.data_end - self.pos).min(buf.len() as u64) as usize;
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            // The data region ended early (the file changed): look again next time.
            self.data_end = self.pos;
        }
        self.pos += n as u64;
        self.data_read += n as u64;
        Ok(n)
    }
}

/// A relative path from raw name bytes.
pub fn join_name(parent: &Path, name: &[u8]) -> PathBuf {
    parent.join(std::ffi::OsStr::from_bytes(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_file_system_reads_stat_dir_and_content() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("b"), b"hello world").unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("l")).unwrap();
        let fs = LocalFileSystem::new(dir.path());

        let mut names = fs.read_dir(Path::new("")).unwrap();
        names.sort();
        assert_eq!(names, vec![b"a".to_vec(), b"b".to_vec(), b"l".to_vec()]);
        assert!(fs.lstat(Path::new("a")).unwrap().is_dir());
        let stat = fs.lstat(Path::new("b")).unwrap();
        assert!(stat.is_regular_file());
        assert_eq!(stat.size, 11);
        assert_eq!(fs.lstat(Path::new("l")).unwrap().file_type(), libc::S_IFLNK);
        assert_eq!(fs.read_link(Path::new("l")).unwrap(), b"b");

        let mut buf = [0u8; 5];
        assert_eq!(fs.read_at(Path::new("b"), 6, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"world");
        let mut all = Vec::new();
        fs.open_file(Path::new("b"))
            .unwrap()
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all, b"hello world");
        assert!(fs.lstat(Path::new("missing")).is_err());
    }

    #[test]
    fn sparse_reader_hands_out_holes_as_zeros_without_reading_them() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("sparse");
        let size: u64 = 256 << 20;
        let islands: [(u64, &[u8]); 3] = [
            (0, b"start"),
            (100 << 20, b"middle island"),
            (size - 3, b"end"),
        ];
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(size).unwrap();
        for (offset, bytes) in islands {
            file.write_all_at(bytes, offset).unwrap();
        }
        drop(file);

        let mut reader = SparseReader::new(std::fs::File::open(&path).unwrap());
        let mut content = Vec::new();
        reader.read_to_end(&mut content).unwrap();
        assert_eq!(content.len() as u64, size);
        for (offset, bytes) in islands {
            let at = offset as usize;
            assert_eq!(&content[at..at + bytes.len()], bytes);
            content[at..at + bytes.len()].fill(0);
        }
        assert!(content.iter().all(|&b| b == 0));
        // Only the blocks holding the islands were read (a few KiB each).
        assert!(
            reader.data_read() <= 3 << 20,
            "read {} bytes",
            reader.data_read()
        );
        assert!(reader.data_read() >= 21);

        // The accessor reads it the same way.
        let fs = LocalFileSystem::new(dir.path());
        let mut again = Vec::new();
        fs.open_file(Path::new("sparse"))
            .unwrap()
            .read_to_end(&mut again)
            .unwrap();
        assert_eq!(again.len() as u64, size);
        assert_eq!(&again[100 << 20..(100 << 20) + 13], b"middle island");
    }

    #[test]
    fn default_open_file_streams_through_read_at() {
        struct Bytes;
        impl FileSystemAccessor for Bytes {
            fn lstat(&self, _: &Path) -> io::Result<FileStat> {
                unimplemented!()
            }
            fn read_dir(&self, _: &Path) -> io::Result<Vec<Vec<u8>>> {
                unimplemented!()
            }
            fn read_at(&self, _: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
                let data = b"0123456789";
                let start = (offset as usize).min(data.len());
                let n = buf.len().min(3).min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                Ok(n)
            }
            fn read_link(&self, _: &Path) -> io::Result<Vec<u8>> {
                unimplemented!()
            }
            fn list_xattrs(&self, _: &Path) -> io::Result<Vec<Vec<u8>>> {
                unimplemented!()
            }
            fn get_xattr(&self, _: &Path, _: &[u8]) -> io::Result<Option<Vec<u8>>> {
                unimplemented!()
            }
            fn fs_magic(&self, _: &Path) -> io::Result<i64> {
                unimplemented!()
            }
            fn chattr_flags(&self, _: &Path) -> io::Result<Option<u64>> {
                unimplemented!()
            }
            fn quota_project_id(&self, _: &Path) -> io::Result<Option<u64>> {
                unimplemented!()
            }
        }
        let mut out = Vec::new();
        Bytes
            .open_file(Path::new("x"))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"0123456789");
    }
}
