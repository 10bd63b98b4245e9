//! An in-memory tree behind [`FileSystemAccessor`] for the walker's unit tests.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::fs_accessor::{FileStat, FileSystemAccessor};
use super::fs_flags::magic;

/// stat, content or symlink target, xattrs
type Node = (FileStat, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// An in-memory tree.
#[derive(Default)]
pub(super) struct MemFs {
    pub(super) nodes: BTreeMap<PathBuf, Node>,
    pub(super) magic_by_dev: HashMap<u64, i64>,
    /// Calls that read file contents, and attribute listings.
    pub(super) content_reads: AtomicU64,
    pub(super) xattr_listings: AtomicU64,
    /// The files hinted with `will_read`, in order, and how many it says it keeps.
    pub(super) read_hints: std::sync::Mutex<Vec<PathBuf>>,
    pub(super) read_hints_kept: Option<usize>,
}

impl MemFs {
    pub(super) fn add(&mut self, path: &str, mode: u32, ino: u64, data: &[u8]) -> &mut FileStat {
        let stat = FileStat {
            mode,
            ino,
            dev: 1,
            nlink: 1,
            size: data.len() as u64,
            ..Default::default()
        };
        let entry = self.nodes.entry(PathBuf::from(path)).or_default();
        *entry = (stat, data.to_vec(), Vec::new());
        &mut entry.0
    }
    pub(super) fn xattr(&mut self, path: &str, name: &[u8], value: &[u8]) {
        self.nodes
            .get_mut(Path::new(path))
            .unwrap()
            .2
            .push((name.to_vec(), value.to_vec()));
    }
    fn node(&self, path: &Path) -> io::Result<&Node> {
        self.nodes
            .get(path)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }
}

impl FileSystemAccessor for MemFs {
    fn lstat(&self, path: &Path) -> io::Result<FileStat> {
        Ok(self.node(path)?.0)
    }
    fn will_read(&self, path: &Path, _len: u64) {
        self.read_hints.lock().unwrap().push(path.to_path_buf());
    }
    fn read_hints_kept(&self) -> usize {
        self.read_hints_kept.unwrap_or(usize::MAX)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        // Reverse order on purpose: the walker must sort.
        let mut names: Vec<Vec<u8>> = self
            .nodes
            .keys()
            .filter(|p| p.parent() == Some(path) && !p.as_os_str().is_empty())
            .map(|p| p.file_name().unwrap().as_bytes().to_vec())
            .collect();
        names.reverse();
        Ok(names)
    }
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.content_reads.fetch_add(1, Ordering::Relaxed);
        let data = &self.node(path)?.1;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    fn open_file<'a>(&'a self, path: &Path) -> io::Result<Box<dyn io::Read + 'a>> {
        let data = self.node(path)?.1.clone();
        self.content_reads.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(io::Cursor::new(data)))
    }
    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        Ok(self.node(path)?.1.clone())
    }
    fn list_xattrs(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        self.xattr_listings.fetch_add(1, Ordering::Relaxed);
        Ok(self.node(path)?.2.iter().map(|(n, _)| n.clone()).collect())
    }
    fn get_xattr(&self, path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .node(path)?
            .2
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()))
    }
    fn fs_magic(&self, path: &Path) -> io::Result<i64> {
        Ok(self
            .magic_by_dev
            .get(&self.node(path)?.0.dev)
            .copied()
            .unwrap_or(magic::EXT4))
    }
    fn chattr_flags(&self, _: &Path) -> io::Result<Option<u64>> {
        Ok(Some(0x10 | 0x8_0000)) // immutable + extents
    }
    fn quota_project_id(&self, _: &Path) -> io::Result<Option<u64>> {
        Ok(Some(0))
    }
}
