//! Image archives (`.img.fidx`) as regular files in one directory, read lazily through the
//! index so `cmp`, `losetup` or `qemu-img` can use them.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex};

use pbsfs_mount::{
    readdir_from, AddDirItem, Attr, Errno, ReadData, ReadOnlyFs, StatFs, Timespec, ROOT_INO,
};

use crate::format::ReadAt;
use crate::store::range::IndexReader;

use super::open_files::{follow_reader, OpenFiles, ReadPattern};

/// Reads `size` bytes at `offset` of an image; for a sequential reader (see `pattern`) the
/// chunks ahead are fetched in the background and those it has passed released. `eio`
/// reports a read error.
pub(super) fn read_image(
    reader: &IndexReader,
    offset: u64,
    size: u32,
    pattern: ReadPattern,
    eio: impl Fn(String) -> Errno,
) -> Result<ReadData, Errno> {
    let len = (size as u64).min(reader.size().saturating_sub(offset)) as usize;
    follow_reader(reader, 0, reader.size(), offset + len as u64, &pattern);
    if len > 0 {
        // Within one chunk: answered from the cached chunk, no copy.
        let shared = reader
            .read_shared(offset, len)
            .map_err(|e| eio(format!("{e:#}")))?;
        if let Some((chunk, range)) = shared {
            return Ok(ReadData::shared(chunk, range));
        }
    }
    let mut buf = ReadData::buffer(len);
    reader
        .read_exact_at(&mut buf, offset)
        .map_err(|e| eio(e.to_string()))?;
    Ok(buf.into())
}

pub struct ImageDirFs {
    /// (file name, reader); the inode of image `i` is `i + 2`.
    images: Vec<(String, Arc<IndexReader>)>,
    mtime: Timespec,
    uid: u32,
    gid: u32,
    open_files: OpenFiles,
    /// The snapshot, for log messages.
    label: String,
    /// Read errors logged so far (each once).
    logged: Mutex<HashSet<String>>,
}

impl ImageDirFs {
    /// `mtime` is the backup time; files are owned by the mounting user. `label` names the
    /// snapshot in log messages.
    pub fn new(images: Vec<(String, Arc<IndexReader>)>, backup_time: i64, label: String) -> Self {
        ImageDirFs {
            images,
            mtime: Timespec::new(backup_time, 0),
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            open_files: OpenFiles::default(),
            label,
            logged: Mutex::default(),
        }
    }

    fn image(&self, ino: u64) -> Result<&(String, Arc<IndexReader>), Errno> {
        ino.checked_sub(2)
            .and_then(|i| self.images.get(i as usize))
            .ok_or(Errno::ENOENT)
    }

    fn root_attr(&self) -> Attr {
        Attr {
            ino: ROOT_INO,
            mode: libc::S_IFDIR | 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            blksize: 4096,
            ..Attr::default()
        }
    }

    fn file_attr(&self, index: usize) -> Attr {
        let size = self.images[index].1.size();
        Attr {
            ino: index as u64 + 2,
            size,
            blocks: Attr::blocks_for(size),
            mode: libc::S_IFREG | 0o444,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            rdev: 0,
            blksize: 1 << 20,
            provisional: false,
        }
    }
}

impl ReadOnlyFs for ImageDirFs {
    fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        if parent != ROOT_INO {
            return Err(Errno::ENOTDIR);
        }
        let index = self
            .images
            .iter()
            .position(|(n, _)| OsStr::new(n) == name)
            .ok_or(Errno::ENOENT)?;
        Ok(self.file_attr(index))
    }

    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        if ino == ROOT_INO {
            return Ok(self.root_attr());
        }
        self.image(ino)?;
        Ok(self.file_attr(ino as usize - 2))
    }

    fn readdir(&self, ino: u64, offset: u64, add: &mut AddDirItem<'_>) -> Result<(), Errno> {
        if ino != ROOT_INO {
            return Err(Errno::ENOTDIR);
        }
        readdir_from(&self.images, offset, add, |index, (name, _)| {
            Ok((OsStr::new(name), self.file_attr(index)))
        })
    }

    fn open(&self, ino: u64) -> Result<u64, Errno> {
        if ino == ROOT_INO {
            return Err(Errno::EISDIR);
        }
        self.image(ino)?;
        Ok(self.open_files.open(ino))
    }

    fn release(&self, _ino: u64, fh: u64) {
        self.open_files.close(fh);
    }

    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<ReadData, Errno> {
        let (name, reader) = self.image(ino)?;
        let pattern = self.open_files.read(fh, offset, size, reader.size());
        read_image(reader, offset, size, pattern, |err| {
            let message = format!("{}/{name}: {err:#}", self.label);
            if self.logged.lock().unwrap().insert(message.clone()) {
                log::error!("{message}");
            }
            Errno::EIO
        })
    }

    fn listxattr(&self, _ino: u64) -> Result<Vec<OsString>, Errno> {
        Ok(Vec::new())
    }

    fn statfs(&self) -> Result<StatFs, Errno> {
        let size: u64 = self.images.iter().map(|(_, r)| r.size()).sum();
        Ok(StatFs {
            blocks: size.div_ceil(4096),
            files: self.images.len() as u64 + 1,
            ..StatFs::default()
        })
    }
}
