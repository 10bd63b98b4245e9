//! The agent's file system access, confined to its roots: paths are relative, without
//! `.`/`..` components; every path is resolved below a root's descriptor with symlinks
//! refused on the way (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or one
//! `O_NOFOLLOW` component at a time where the kernel lacks it); the last component is used
//! with `*at` calls that do not follow it. Nothing is opened for writing. A root may also
//! be a regular file or block device (an image to pull): then it is the only path served.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, PathBuf};

use super::protocol::{Attrs, Errno, Extra, ListEntry, Target};
use crate::backup::fs_accessor::{
    ioctl_read_fd, read_sized, FileStat, FsXAttr, FAT_IOCTL_GET_ATTRIBUTES, FS_IOC_FSGETXATTR,
    FS_IOC_GETFLAGS,
};
use crate::pxar::format::MTime;

/// The OS error number of an error (EIO when it has none).
pub fn errno_of(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(libc::EIO)
}

fn last_errno() -> i32 {
    errno_of(&io::Error::last_os_error())
}

/// The served roots and the descriptors the last requests used.
pub struct Roots {
    names: Vec<PathBuf>,
    /// A directory root's `O_PATH` descriptor, or a file root opened for reading.
    fds: Vec<OwnedFd>,
    is_dir: Vec<bool>,
    /// The parent directory of the last path resolved: the walk asks about one
    /// directory's entries after another.
    last_dir: Option<((u32, Vec<u8>), OwnedFd)>,
    /// The file read last, kept open for the next block.
    last_file: Option<(Target, File)>,
    has_openat2: bool,
}

impl Roots {
    /// Opens the roots (absolute paths without `..` of directories, regular files or
    /// block devices; a root itself may be a symlink).
    pub fn open(paths: &[PathBuf]) -> io::Result<Self> {
        let mut names = Vec::new();
        let mut fds = Vec::new();
        let mut is_dir = Vec::new();
        for path in paths {
            if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: a root must be an absolute path without '..'",
                        path.display()
                    ),
                ));
            }
            let c_path = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let in_error = |errno: i32| {
                let err = io::Error::from_raw_os_error(errno);
                io::Error::new(err.kind(), format!("{}: {err}", path.display()))
            };
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
            let (fd, dir) = match open_at(libc::AT_FDCWD, &c_path, flags) {
                Ok(fd) => (fd, true),
                Err(libc::ENOTDIR) => match open_file_root(&c_path) {
                    Ok(fd) => (fd, false),
                    Err(libc::EINVAL) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "{}: a root must be a directory, regular file or block device",
                                path.display()
                            ),
                        ))
                    }
                    Err(errno) => return Err(in_error(errno)),
                },
                Err(errno) => return Err(in_error(errno)),
            };
            fds.push(fd);
            is_dir.push(dir);
            names.push(path.components().collect());
        }
        Ok(Roots {
            names,
            fds,
            is_dir,
            last_dir: None,
            last_file: None,
            has_openat2: true,
        })
    }

    /// The roots as the client addresses them (index = `Target::root`).
    pub fn names(&self) -> &[PathBuf] {
        &self.names
    }

    pub fn stat(&mut self, target: &Target) -> Errno<FileStat> {
        let (dir, name) = self.resolve(target)?;
        stat_at(dir.as_raw_fd(), &name)
    }

    /// Lists a directory with every entry's stat (and attributes or link target), handing
    /// out parts of about `part_bytes` bytes.
    pub fn list(
        &mut self,
        target: &Target,
        with_attrs: bool,
        part_bytes: usize,
        mut part: impl FnMut(Vec<ListEntry>) -> io::Result<()>,
    ) -> Result<(), ListError> {
        let (dir, name) = self.resolve(target).map_err(ListError::Fs)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = open_at(dir.as_raw_fd(), &name, flags).map_err(ListError::Fs)?;
        let stream = DirStream::new(&fd).map_err(ListError::Fs)?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        for name in stream {
            let name = name.map_err(ListError::Fs)?;
            let c_name = CString::new(name.clone()).map_err(|_| ListError::Fs(libc::EINVAL))?;
            let stat = stat_at(fd.as_raw_fd(), &c_name);
            let extra = match &stat {
                Ok(stat) if stat.file_type() == libc::S_IFLNK => {
                    Extra::Link(read_link_at(fd.as_raw_fd(), &c_name))
                }
                Ok(stat) if with_attrs && (stat.is_dir() || stat.is_regular_file()) => {
                    Extra::Attrs(attrs_at(fd.as_raw_fd(), &c_name))
                }
                _ => Extra::None,
            };
            bytes += name.len() + 128 + extra_size(&extra);
            entries.push(ListEntry { name, stat, extra });
            if bytes >= part_bytes {
                part(std::mem::take(&mut entries)).map_err(ListError::Io)?;
                bytes = 0;
            }
        }
        part(entries).map_err(ListError::Io)
    }

    /// [`read_into`](Self::read_into) a new buffer, for the tests.
    #[cfg(test)]
    fn read(&mut self, target: &Target, offset: u64, len: usize) -> Errno<Vec<u8>> {
        let mut buf = Vec::new();
        let got = self.read_into(target, offset, len, &mut buf)?;
        buf.truncate(got);
        Ok(buf)
    }

    /// Reads up to `len` bytes at `offset` into `buf`, fewer only at the end of the file;
    /// returns the count. `buf` grows to `len` if shorter (its bytes beyond the count are
    /// left as they were), so that one buffer serves every read.
    pub fn read_into(
        &mut self,
        target: &Target,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Errno<usize> {
        let file = match &self.last_file {
            Some((opened, file)) if opened == target => file,
            _ => {
                self.last_file = None;
                let (dir, name) = self.resolve(target)?;
                let file = File::from(open_for_reading(dir.as_raw_fd(), &name)?);
                let kind = file.metadata().map_err(|e| errno_of(&e))?.mode_type();
                if kind != libc::S_IFREG && kind != libc::S_IFBLK {
                    return Err(libc::EINVAL);
                }
                &self.last_file.insert((target.clone(), file)).1
            }
        };
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let mut got = 0;
        while got < len {
            match file.read_at(&mut buf[got..len], offset.saturating_add(got as u64)) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(errno_of(&err)),
            }
        }
        Ok(got)
    }

    pub fn read_link(&mut self, target: &Target) -> Errno<Vec<u8>> {
        let (dir, name) = self.resolve(target)?;
        read_link_at(dir.as_raw_fd(), &name)
    }

    pub fn attrs(&mut self, target: &Target) -> Errno<Attrs> {
        let (dir, name) = self.resolve(target)?;
        attrs_at(dir.as_raw_fd(), &name)
    }

    pub fn fs_magic(&mut self, target: &Target) -> Errno<u64> {
        let (dir, name) = self.resolve(target)?;
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = open_at(dir.as_raw_fd(), &name, flags)?;
        let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        // SAFETY: fstatfs fills the struct it is given.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), stat.as_mut_ptr()) } < 0 {
            return Err(last_errno());
        }
        // SAFETY: initialised by the successful call (and zeroed before).
        #[allow(clippy::unnecessary_cast)]
        Ok(unsafe { stat.assume_init() }.f_type as i64 as u64)
    }

    /// Size of a regular file or block device (EINVAL for anything else).
    pub fn image_size(&mut self, target: &Target) -> Errno<u64> {
        let (dir, name) = self.resolve(target)?;
        let stat = stat_at(dir.as_raw_fd(), &name)?;
        match stat.file_type() {
            libc::S_IFREG => Ok(stat.size),
            libc::S_IFBLK => {
                use std::io::Seek;
                let mut file = File::from(open_for_reading(dir.as_raw_fd(), &name)?);
                file.seek(io::SeekFrom::End(0)).map_err(|e| errno_of(&e))
            }
            _ => Err(libc::EINVAL),
        }
    }

    /// The directory holding `target` and its last component (`.` for a directory root
    /// itself; for a file root, the root's descriptor and an empty name, which the `*at`
    /// helpers below take as that descriptor).
    fn resolve(&mut self, target: &Target) -> Errno<(RawFdRef, CString)> {
        let root = self.fds.get(target.root as usize).ok_or(libc::ENOENT)?;
        check_relative(&target.path)?;
        if !self.is_dir[target.root as usize] {
            return match target.path.is_empty() {
                true => Ok((RawFdRef(root.as_raw_fd()), CString::default())),
                false => Err(libc::ENOTDIR),
            };
        }
        let (parent, name) = match target.path.iter().rposition(|&b| b == b'/') {
            Some(at) => (&target.path[..at], &target.path[at + 1..]),
            None => (&[][..], &target.path[..]),
        };
        let name = if name.is_empty() { b"." } else { name };
        let name = CString::new(name).map_err(|_| libc::EINVAL)?;
        if parent.is_empty() {
            return Ok((RawFdRef(root.as_raw_fd()), name));
        }
        let key = (target.root, parent.to_vec());
        if let Some((cached, fd)) = &self.last_dir {
            if *cached == key {
                return Ok((RawFdRef(fd.as_raw_fd()), name));
            }
        }
        let fd = self.open_beneath(root.as_raw_fd(), parent)?;
        let raw = fd.as_raw_fd();
        self.last_dir = Some((key, fd));
        Ok((RawFdRef(raw), name))
    }

    /// Opens directory `path` below `root` without following any symlink.
    fn open_beneath(&mut self, root: RawFd, path: &[u8]) -> Errno<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        if self.has_openat2 {
            let c_path = CString::new(path).map_err(|_| libc::EINVAL)?;
            // SAFETY: an all-zero open_how is valid; fields set below.
            let mut how: libc::open_how = unsafe { std::mem::zeroed() };
            how.flags = flags as u64;
            how.resolve =
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
            // SAFETY: valid pointers and the struct's size, as openat2(2) wants.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    root,
                    c_path.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if fd >= 0 {
                // SAFETY: a fresh descriptor nobody else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
            }
            match last_errno() {
                // Not in this kernel (or filtered): walk one component at a time.
                libc::ENOSYS | libc::EPERM => self.has_openat2 = false,
                errno => return Err(errno),
            }
        }
        let mut current: Option<OwnedFd> = None;
        for component in path.split(|&b| b == b'/') {
            let c_name = CString::new(component).map_err(|_| libc::EINVAL)?;
            let at = current.as_ref().map_or(root, |fd| fd.as_raw_fd());
            current = Some(open_at(at, &c_name, flags | libc::O_NOFOLLOW)?);
        }
        current.ok_or(libc::EINVAL)
    }
}

/// Why a listing stopped: the file system (sent to the client) or the stream.
pub enum ListError {
    Fs(i32),
    Io(io::Error),
}

/// A descriptor borrowed from [`Roots`] for one call.
struct RawFdRef(RawFd);

impl AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Refuses absolute paths, empty components, `.` and `..`.
fn check_relative(path: &[u8]) -> Errno<()> {
    if path.is_empty() {
        return Ok(());
    }
    let bad = path.contains(&0)
        || path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..");
    if bad {
        Err(libc::EACCES)
    } else {
        Ok(())
    }
}

trait ModeType {
    fn mode_type(&self) -> u32;
}

impl ModeType for std::fs::Metadata {
    fn mode_type(&self) -> u32 {
        use std::os::unix::fs::MetadataExt;
        self.mode() & libc::S_IFMT
    }
}

/// `openat`; an empty name (only ever a file root's, from [`Roots::resolve`]) is that
/// descriptor itself, duplicated.
fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> Errno<OwnedFd> {
    if name.is_empty() {
        if flags & libc::O_DIRECTORY != 0 {
            return Err(libc::ENOTDIR);
        }
        // SAFETY: a duplicate of a descriptor we hold, owned below.
        let fd = unsafe { libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(last_errno());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // SAFETY: a valid C string; the descriptor is owned below.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens an entry's content like the local accessor: without following a symlink, asking
/// for O_NOATIME and retrying without when not permitted (not the owner); never blocking
/// on a FIFO.
fn open_for_reading(dir: RawFd, name: &CStr) -> Errno<OwnedFd> {
    let base =
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    match open_at(dir, name, base | libc::O_NOATIME) {
        Err(libc::EPERM) => open_at(dir, name, base),
        other => other,
    }
}

/// A root that is not a directory, opened for reading as entries are (following a symlink:
/// the root was named as it is); only a regular file or block device serves.
fn open_file_root(path: &CStr) -> Errno<OwnedFd> {
    let base = libc::O_RDONLY | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    let fd = match open_at(libc::AT_FDCWD, path, base | libc::O_NOATIME) {
        Err(libc::EPERM) => open_at(libc::AT_FDCWD, path, base)?,
        other => other?,
    };
    match stat_at(fd.as_raw_fd(), c"")?.file_type() {
        libc::S_IFREG | libc::S_IFBLK => Ok(fd),
        _ => Err(libc::EINVAL),
    }
}

/// `fstatat` without following a symlink; an empty name is the descriptor itself.
fn stat_at(dir: RawFd, name: &CStr) -> Errno<FileStat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstatat fills the struct it is given; the name is a valid C string.
    let rc = unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(last_errno());
    }
    // SAFETY: initialised by the successful call.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Ok(FileStat {
        mode: st.st_mode as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        mtime: MTime::from_secs_nanos(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: MTime::from_secs_nanos(st.st_ctime as i64, st.st_ctime_nsec as i64),
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        nlink: st.st_nlink as u64,
        rdev: st.st_rdev as u64,
    })
}

fn read_link_at(dir: RawFd, name: &CStr) -> Errno<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the buffer and its length are valid; the name is a valid C string.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Flags, FAT attributes, project id and xattrs of a directory or regular file, read
/// through one descriptor as the local accessor reads them.
fn attrs_at(dir: RawFd, name: &CStr) -> Errno<Attrs> {
    let fd = open_for_reading(dir, name)?;
    let fd = fd.as_raw_fd();
    let errno = |r: io::Result<Option<u64>>| r.map_err(|e| errno_of(&e));
    let xattrs = read_sized(|buf, len| {
        // SAFETY: buffer from a live Vec, descriptor held open.
        unsafe { libc::flistxattr(fd, buf.cast(), len) }
    })
    .map_err(|e| errno_of(&e))
    .map(|list| {
        list.split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| {
                let value = CString::new(name)
                    .map_err(|_| libc::EINVAL)
                    .and_then(|c_name| {
                        // SAFETY: as above; the name is a valid C string.
                        match read_sized(|buf, len| unsafe {
                            libc::fgetxattr(fd, c_name.as_ptr(), buf, len)
                        }) {
                            Ok(value) => Ok(Some(value)),
                            Err(err) if err.raw_os_error() == Some(libc::ENODATA) => Ok(None),
                            Err(err) => Err(errno_of(&err)),
                        }
                    });
                (name.to_vec(), value)
            })
            .collect()
    });
    Ok(Attrs {
        chattr: errno(
            ioctl_read_fd::<libc::c_long>(fd, FS_IOC_GETFLAGS).map(|f| f.map(|f| f as u32 as u64)),
        ),
        fat: errno(ioctl_read_fd::<u32>(fd, FAT_IOCTL_GET_ATTRIBUTES).map(|f| f.map(u64::from))),
        project_id: errno(
            ioctl_read_fd::<FsXAttr>(fd, FS_IOC_FSGETXATTR).map(|a| a.map(|a| u64::from(a.projid))),
        ),
        xattrs,
    })
}

fn extra_size(extra: &Extra) -> usize {
    match extra {
        Extra::Link(Ok(target)) => target.len(),
        Extra::Attrs(Ok(attrs)) => attrs.xattrs.as_ref().map_or(0, |list| {
            list.iter()
                .map(|(name, value)| {
                    name.len() + 8 + value.as_ref().map_or(0, |v| v.as_ref().map_or(0, Vec::len))
                })
                .sum()
        }),
        _ => 0,
    }
}

/// A directory's entry names (without `.` and `..`) through `readdir`.
struct DirStream {
    dir: *mut libc::DIR,
}

impl DirStream {
    fn new(fd: &OwnedFd) -> Errno<Self> {
        // SAFETY: dup of a valid descriptor; fdopendir takes the duplicate over.
        let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(last_errno());
        }
        // SAFETY: a valid descriptor the stream now owns.
        let dir = unsafe { libc::fdopendir(dup) };
        if dir.is_null() {
            let errno = last_errno();
            // SAFETY: fdopendir failed, so the duplicate is still ours.
            unsafe { libc::close(dup) };
            return Err(errno);
        }
        Ok(DirStream { dir })
    }
}

impl Iterator for DirStream {
    type Item = Errno<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // SAFETY: errno is thread-local; clearing it tells end from error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: a valid open stream.
            let entry = unsafe { libc::readdir64(self.dir) };
            if entry.is_null() {
                let errno = last_errno();
                return (errno != 0).then_some(Err(errno));
            }
            // SAFETY: readdir returned a valid entry with a NUL-terminated name.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                return Some(Ok(name.to_vec()));
            }
        }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the stream is open and closed once.
        unsafe { libc::closedir(self.dir) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        Target {
            root: 0,
            path: path.as_bytes().to_vec(),
        }
    }

    #[test]
    fn nothing_outside_the_root_is_served() {
        let dir = tempfile::TempDir::new().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::fs::write(root.join("sub/f"), b"inside").unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("abs")).unwrap();
        let mut roots = Roots::open(std::slice::from_ref(&root)).unwrap();

        assert_eq!(roots.read(&target("sub/f"), 0, 100).unwrap(), b"inside");
        for bad in [
            "../secret",
            "/secret",
            "sub/../../secret",
            "./sub/f",
            "sub//f",
        ] {
            assert_eq!(roots.read(&target(bad), 0, 100), Err(libc::EACCES), "{bad}");
        }
        // Symlinks are reported as such and never followed, on the way or at the end.
        assert_eq!(
            roots.stat(&target("up")).unwrap().file_type(),
            libc::S_IFLNK
        );
        assert_eq!(roots.read_link(&target("up")).unwrap(), b"..");
        assert!(roots.read(&target("up/secret"), 0, 100).is_err());
        assert!(roots.read(&target("abs/secret"), 0, 100).is_err());
        assert!(roots.stat(&target("abs/secret")).is_err());
        assert_eq!(roots.read(&target("abs"), 0, 100), Err(libc::ELOOP));
        assert!(roots.attrs(&target("abs")).is_err());
        let other_root = Target {
            root: 1,
            path: Vec::new(),
        };
        assert_eq!(roots.stat(&other_root), Err(libc::ENOENT));
        // Without openat2 the component walk refuses the same.
        roots.has_openat2 = false;
        roots.last_dir = None;
        assert!(roots.stat(&target("abs/secret")).is_err());
        assert!(roots.stat(&target("up/secret")).is_err());
        assert!(roots.stat(&target("sub/f")).is_ok());
    }

    /// An image root: the file itself is served (stat, content, size, attributes), and
    /// nothing below or beside it.
    #[test]
    fn a_file_root_serves_that_file_only() {
        let dir = tempfile::TempDir::new().unwrap();
        let image = dir.path().join("disk.raw");
        std::fs::write(&image, b"0123456789").unwrap();
        std::fs::write(dir.path().join("beside"), b"x").unwrap();
        std::os::unix::fs::symlink(&image, dir.path().join("link")).unwrap();
        for root in [image.clone(), dir.path().join("link")] {
            let mut roots = Roots::open(std::slice::from_ref(&root)).unwrap();
            assert_eq!(roots.stat(&target("")).unwrap().size, 10);
            assert_eq!(roots.read(&target(""), 3, 4).unwrap(), b"3456");
            assert_eq!(roots.read(&target(""), 8, 4).unwrap(), b"89");
            assert_eq!(roots.image_size(&target("")), Ok(10));
            assert!(roots.attrs(&target("")).is_ok());
            assert!(roots.fs_magic(&target("")).is_ok());
            assert!(roots.read_link(&target("")).is_err());
            for below in ["x", "x/y", "../beside"] {
                assert!(roots.stat(&target(below)).is_err(), "{below}");
                assert!(roots.read(&target(below), 0, 1).is_err(), "{below}");
            }
            let listed = roots.list(&target(""), false, 1000, |_| Ok(()));
            assert!(matches!(listed, Err(ListError::Fs(libc::ENOTDIR))));
        }
        // Neither a FIFO nor a missing path is a root.
        let fifo = dir.path().join("fifo");
        let c_fifo = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
        let err = Roots::open(&[fifo]).err().unwrap();
        assert!(err.to_string().contains("a root must be"), "{err}");
        assert!(Roots::open(&[dir.path().join("missing")]).is_err());
    }

    #[test]
    fn listings_carry_stats_attributes_and_link_targets_in_parts() {
        let dir = tempfile::TempDir::new().unwrap();
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        std::os::unix::fs::symlink("f1", dir.path().join("link")).unwrap();
        let mut roots = Roots::open(&[dir.path().to_path_buf()]).unwrap();
        let mut parts = Vec::new();
        let ok = roots.list(&target(""), true, 1000, |part| {
            parts.push(part);
            Ok(())
        });
        assert!(ok.is_ok());
        assert!(parts.len() > 2);
        let entries: Vec<ListEntry> = parts.into_iter().flatten().collect();
        assert_eq!(entries.len(), 51);
        let link = entries.iter().find(|e| e.name == b"link").unwrap();
        assert_eq!(link.extra, Extra::Link(Ok(b"f1".to_vec())));
        let file = entries.iter().find(|e| e.name == b"f7").unwrap();
        assert_eq!(file.stat.as_ref().unwrap().size, 1);
        assert!(matches!(file.extra, Extra::Attrs(Ok(_))));
    }
}
