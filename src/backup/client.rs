//! What the backup server needs from a client: the [`ClientProvider`]. It is a
//! [`FileSystemAccessor`] of the client's whole file system (stat, read_dir, reads at an offset,
//! read_link, xattrs from which ACLs and fcaps are taken) plus counters of what was read, so a
//! caller can tell how much file content actually crossed from the client.
//!
//! [`LocalClient`] serves the local host; other transports implement the same trait.
//! [`SubTree`] presents a directory of a client as the root a backup archive walks.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::fs_accessor::{FileStat, FileSystemAccessor, LocalFileSystem};

/// How much file content was read through a client.
#[derive(Debug, Default)]
pub struct ClientCounters {
    content_bytes: AtomicU64,
    files_opened: AtomicU64,
}

impl ClientCounters {
    /// Bytes of file content read (regular files and images), not metadata.
    pub fn content_bytes(&self) -> u64 {
        self.content_bytes.load(Ordering::Relaxed)
    }

    /// Files opened for reading their content.
    pub fn files_opened(&self) -> u64 {
        self.files_opened.load(Ordering::Relaxed)
    }

    /// Counts content bytes read (for clients other than [`LocalClient`]).
    pub fn add_bytes(&self, n: usize) {
        self.content_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a file opened for its content.
    pub fn add_opened(&self) {
        self.files_opened.fetch_add(1, Ordering::Relaxed);
    }
}

/// A client's file system as the backup server sees it. Paths are relative to the client's
/// root (for [`LocalClient`]: `/`).
pub trait ClientProvider: FileSystemAccessor + Send + Sync {
    fn counters(&self) -> &ClientCounters;

    /// Size of a file or block device to back up as an image.
    fn image_size(&self, path: &Path) -> io::Result<u64>;
}

/// The local host's file system, read through libc.
pub struct LocalClient {
    root: PathBuf,
    fs: LocalFileSystem,
    counters: Arc<ClientCounters>,
}

impl LocalClient {
    /// Serves the whole local file system; archive roots are selected with [`SubTree`].
    pub fn new() -> Self {
        Self::with_root("/")
    }

    /// Serves the tree below `root` (paths handed in are relative to it).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        LocalClient {
            fs: LocalFileSystem::new(root.clone()),
            root,
            counters: Arc::default(),
        }
    }

    /// The counters, shareable with a progress display.
    pub fn shared_counters(&self) -> Arc<ClientCounters> {
        self.counters.clone()
    }
}

impl Default for LocalClient {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts the bytes read through the inner reader.
struct CountingReader<'a, R> {
    inner: R,
    counters: &'a ClientCounters,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counters.add_bytes(n);
        Ok(n)
    }
}

impl FileSystemAccessor for LocalClient {
    fn lstat(&self, path: &Path) -> io::Result<FileStat> {
        self.fs.lstat(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        self.fs.read_dir(path)
    }
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fs.read_at(path, offset, buf)?;
        self.counters.add_bytes(n);
        Ok(n)
    }
    fn will_read(&self, path: &Path, len: u64) {
        self.fs.will_read(path, len)
    }
    fn read_hints_kept(&self) -> usize {
        self.fs.read_hints_kept()
    }
    fn will_list(&self, dirs: &[PathBuf]) {
        self.fs.will_list(dirs)
    }
    fn open_file<'a>(&'a self, path: &Path) -> io::Result<Box<dyn Read + 'a>> {
        let inner = self.fs.open_file(path)?;
        self.counters.files_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(CountingReader {
            inner,
            counters: &self.counters,
        }))
    }
    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.fs.read_link(path)
    }
    fn list_xattrs(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        self.fs.list_xattrs(path)
    }
    fn get_xattr(&self, path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.fs.get_xattr(path, name)
    }
    fn fs_magic(&self, path: &Path) -> io::Result<i64> {
        self.fs.fs_magic(path)
    }
    fn chattr_flags(&self, path: &Path) -> io::Result<Option<u64>> {
        self.fs.chattr_flags(path)
    }
    fn fat_attributes(&self, path: &Path) -> io::Result<Option<u64>> {
        self.fs.fat_attributes(path)
    }
    fn quota_project_id(&self, path: &Path) -> io::Result<Option<u64>> {
        self.fs.quota_project_id(path)
    }
}

impl ClientProvider for LocalClient {
    fn counters(&self) -> &ClientCounters {
        &self.counters
    }

    fn image_size(&self, path: &Path) -> io::Result<u64> {
        let stat = self.fs.lstat(path)?;
        match stat.file_type() {
            libc::S_IFREG => Ok(stat.size),
            libc::S_IFBLK => {
                // A block device's size is where seeking to its end lands.
                use std::io::Seek;
                std::fs::File::open(self.root_join(path))?.seek(io::SeekFrom::End(0))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an image must be a regular file or a block device",
            )),
        }
    }
}

impl LocalClient {
    fn root_join(&self, path: &Path) -> PathBuf {
        if path.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }
}

/// A directory of a client presented as a root: path `""` is `base`.
pub struct SubTree<'a, C: ?Sized> {
    client: &'a C,
    base: PathBuf,
}

impl<'a, C: ClientProvider + ?Sized> SubTree<'a, C> {
    /// `base` is relative to the client's root (a leading `/` is ignored).
    pub fn new(client: &'a C, base: &Path) -> Self {
        let base = base.strip_prefix("/").unwrap_or(base).to_path_buf();
        SubTree { client, base }
    }

    fn full(&self, path: &Path) -> PathBuf {
        if path.as_os_str().is_empty() {
            self.base.clone()
        } else {
            self.base.join(path)
        }
    }
}

impl<C: ClientProvider + ?Sized> FileSystemAccessor for SubTree<'_, C> {
    fn lstat(&self, path: &Path) -> io::Result<FileStat> {
        self.client.lstat(&self.full(path))
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        self.client.read_dir(&self.full(path))
    }
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.client.read_at(&self.full(path), offset, buf)
    }
    fn will_read(&self, path: &Path, len: u64) {
        self.client.will_read(&self.full(path), len)
    }
    fn read_hints_kept(&self) -> usize {
        self.client.read_hints_kept()
    }
    fn will_list(&self, dirs: &[PathBuf]) {
        let dirs: Vec<PathBuf> = dirs.iter().map(|dir| self.full(dir)).collect();
        self.client.will_list(&dirs)
    }
    fn will_read_attributes(&self, all: bool) {
        self.client.will_read_attributes(all)
    }
    fn open_file<'b>(&'b self, path: &Path) -> io::Result<Box<dyn Read + 'b>> {
        self.client.open_file(&self.full(path))
    }
    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.client.read_link(&self.full(path))
    }
    fn list_xattrs(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        self.client.list_xattrs(&self.full(path))
    }
    fn get_xattr(&self, path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.client.get_xattr(&self.full(path), name)
    }
    fn fs_magic(&self, path: &Path) -> io::Result<i64> {
        self.client.fs_magic(&self.full(path))
    }
    fn chattr_flags(&self, path: &Path) -> io::Result<Option<u64>> {
        self.client.chattr_flags(&self.full(path))
    }
    fn fat_attributes(&self, path: &Path) -> io::Result<Option<u64>> {
        self.client.fat_attributes(&self.full(path))
    }
    fn quota_project_id(&self, path: &Path) -> io::Result<Option<u64>> {
        self.client.quota_project_id(&self.full(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_reads_are_counted_and_metadata_reads_are_not() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), b"0123456789").unwrap();
        let client = LocalClient::with_root(dir.path());
        let tree = SubTree::new(&client, Path::new("/sub"));

        assert_eq!(tree.lstat(Path::new("f")).unwrap().size, 10);
        assert_eq!(tree.read_dir(Path::new("")).unwrap(), vec![b"f".to_vec()]);
        assert_eq!(client.counters().content_bytes(), 0);

        let mut all = Vec::new();
        tree.open_file(Path::new("f"))
            .unwrap()
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all, b"0123456789");
        let mut buf = [0u8; 4];
        assert_eq!(tree.read_at(Path::new("f"), 8, &mut buf).unwrap(), 2);
        assert_eq!(client.counters().content_bytes(), 12);
        assert_eq!(client.counters().files_opened(), 1);
        assert_eq!(client.image_size(Path::new("sub/f")).unwrap(), 10);
        assert!(client.image_size(Path::new("sub")).is_err());
    }
}
