//! File system operations that cannot escape the extraction target: every call is relative
//! to an open directory descriptor (`*at`, `O_NOFOLLOW`), names are single validated
//! components, and regular files are written under a temporary name until complete.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use anyhow::bail;

use super::options::ExtractOptions;
use crate::pxar::items::is_valid_name;

/// A regular file being written under a temporary name in its directory
/// (`.NAME.pbsfs-tmp-XXXXXXXX`, created exclusively); removed unless committed.
pub(super) struct TempFile {
    parent: RawFd,
    temp_name: CString,
    name: CString,
    pub(super) file: File,
    committed: bool,
}

const TEMP_SUFFIX: &str = ".pbsfs-tmp-";

impl TempFile {
    /// Fails early when `name` exists and may not be replaced (or is a directory).
    pub(super) fn create(
        parent: RawFd,
        name: &CString,
        options: &ExtractOptions,
    ) -> io::Result<TempFile> {
        check_replaceable(parent, name, options)?;
        // The dot, the suffix and 8 hex digits must fit in a 255-byte name.
        const KEEP: usize = 255 - 1 - TEMP_SUFFIX.len() - 8;
        let stem = &name.as_bytes()[..name.as_bytes().len().min(KEEP)];
        for _ in 0..100 {
            let mut temp = b".".to_vec();
            temp.extend_from_slice(stem);
            temp.extend_from_slice(TEMP_SUFFIX.as_bytes());
            temp.extend_from_slice(format!("{:08x}", rand::random::<u32>()).as_bytes());
            let temp_name = CString::new(temp).map_err(io::Error::other)?;
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW;
            match open_at(parent, &temp_name, flags, 0o600) {
                Ok(fd) => {
                    return Ok(TempFile {
                        parent,
                        temp_name,
                        name: name.clone(),
                        file: File::from(fd),
                        committed: false,
                    })
                }
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::other("cannot find a free temporary file name"))
    }

    /// Gives the complete file its real name: replacing a non-directory only with
    /// `overwrite`, never a directory.
    pub(super) fn commit(mut self, options: &ExtractOptions) -> io::Result<()> {
        let (parent, from, to) = (self.parent, self.temp_name.as_ptr(), self.name.as_ptr());
        if options.overwrite {
            cvt(unsafe { libc::renameat(parent, from, parent, to) })?;
        } else {
            let flags = libc::RENAME_NOREPLACE;
            match cvt(unsafe { libc::renameat2(parent, from, parent, to, flags) }) {
                // File systems without RENAME_NOREPLACE: a hardlink refuses existing names too.
                Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                    cvt(unsafe { libc::linkat(parent, from, parent, to, 0) })?;
                    cvt(unsafe { libc::unlinkat(parent, from, 0) })?;
                }
                other => {
                    other?;
                }
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            unsafe { libc::unlinkat(self.parent, self.temp_name.as_ptr(), 0) };
        }
    }
}

/// `EEXIST` if `name` exists and `overwrite` is off; `EISDIR` if it is a directory.
fn check_replaceable(parent: RawFd, name: &CString, options: &ExtractOptions) -> io::Result<()> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    match cvt(unsafe { libc::fstatat(parent, name.as_ptr(), &mut st, flags) }) {
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(err) => Err(err),
        Ok(_) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            Err(io::Error::from_raw_os_error(libc::EISDIR))
        }
        Ok(_) if !options.overwrite => Err(io::Error::from_raw_os_error(libc::EEXIST)),
        Ok(_) => Ok(()),
    }
}

pub(super) fn c_name(name: &[u8]) -> anyhow::Result<CString> {
    if !is_valid_name(name) {
        bail!("refusing file name {:?}", show(name));
    }
    Ok(CString::new(name.to_vec())?)
}

pub(super) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(super) fn open_at(
    dir: RawFd,
    name: &CString,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    open_at(libc::AT_FDCWD, &path, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Runs `create`; if the name exists and `overwrite` is set, removes the old non-directory
/// and tries once more.
pub(super) fn replacing<T>(
    parent: RawFd,
    name: &CString,
    options: &ExtractOptions,
    create: impl Fn() -> io::Result<T>,
) -> io::Result<T> {
    match create() {
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) && options.overwrite => {
            cvt(unsafe { libc::unlinkat(parent, name.as_ptr(), 0) })?;
            create()
        }
        other => other,
    }
}

pub(super) fn make_node(
    parent: RawFd,
    name: &CString,
    kind: libc::mode_t,
    dev: u64,
    options: &ExtractOptions,
) -> io::Result<()> {
    replacing(parent, name, options, || {
        cvt(unsafe { libc::mknodat(parent, name.as_ptr(), kind | 0o600, dev as libc::dev_t) })
    })?;
    Ok(())
}

/// Creates directory `name` in `parent` (or, if allowed, reuses an existing one) and opens
/// it.
pub(super) fn make_dir(
    parent: RawFd,
    name: &[u8],
    options: &ExtractOptions,
) -> io::Result<OwnedFd> {
    let name = c_name(name).map_err(io::Error::other)?;
    match cvt(unsafe { libc::mkdirat(parent, name.as_ptr(), 0o700) }) {
        Ok(_) => {}
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
            if !(options.allow_existing_dirs || options.overwrite) {
                return Err(err);
            }
        }
        Err(err) => return Err(err),
    }
    // O_NOFOLLOW: an existing symlink in place of the directory is refused.
    open_at(
        parent,
        &name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// Hardlinks `name` in `parent` to `path` (relative to the extraction root).
pub(super) fn link_at(
    root: RawFd,
    path: &[u8],
    parent: RawFd,
    name: &CString,
    options: &ExtractOptions,
) -> io::Result<()> {
    let (dir, last) = walk_to_parent(root, path)?;
    replacing(parent, name, options, || {
        cvt(unsafe { libc::linkat(dir.as_raw_fd(), last.as_ptr(), parent, name.as_ptr(), 0) })
    })?;
    Ok(())
}

/// Opens the directory holding a hardlink target (path relative to the archive root)
/// without following symlinks; returns it and the final name.
fn walk_to_parent(root: RawFd, path: &[u8]) -> io::Result<(OwnedFd, CString)> {
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad hardlink target {:?}", show(path)),
        )
    };
    let components: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let Some((last, dirs)) = components.split_last() else {
        return Err(invalid());
    };
    let dot = CString::new(".").unwrap();
    let mut current = open_at(root, &dot, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for dir in dirs {
        let name = c_name(dir).map_err(|_| invalid())?;
        current = open_at(
            current.as_raw_fd(),
            &name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
    }
    Ok((current, c_name(last).map_err(|_| invalid())?))
}

/// A path or name for messages (lossy UTF-8).
pub(super) fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}
