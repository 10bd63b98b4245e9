//! An in-memory tree implementing `ReadOnlyFs`, with counters the tests inspect.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pbsfs_mount::{
    readdir_from, AddDirItem, Attr, Errno, ReadData, ReadOnlyFs, StatFs, Timespec, ROOT_INO,
};

enum Data {
    Dir {
        parent: u64,
        /// In listing order; a listing cookie is index + 1.
        entries: Vec<(OsString, u64)>,
        index: HashMap<OsString, u64>,
    },
    File(Arc<Vec<u8>>),
    Symlink(OsString),
    Special,
}

struct Node {
    /// Behind a lock so that a test can change it while mounted ([`MemFs::update_attr`]).
    attr: Mutex<Attr>,
    data: Data,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// Counters of calls that reached the filesystem.
#[derive(Default)]
pub struct Stats {
    pub lookups: AtomicUsize,
    pub getattrs: AtomicUsize,
    pub reads: AtomicUsize,
    pub reads_in_flight: AtomicUsize,
    pub max_reads_in_flight: AtomicUsize,
    pub max_read_size: AtomicU64,
    pub opens: AtomicUsize,
    pub releases: AtomicUsize,
    pub readdirs: AtomicUsize,
}

pub struct MemFs {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Each read sleeps this long, so overlapping reads become observable.
    pub read_delay: Duration,
    pub stats: Stats,
}

pub const UID: u32 = 1234;
pub const GID: u32 = 5678;
pub const MTIME: Timespec = Timespec::new(1_700_000_000, 123_456_789);

impl MemFs {
    pub fn new() -> Self {
        let mut fs = MemFs {
            nodes: HashMap::new(),
            next_ino: ROOT_INO + 1,
            read_delay: Duration::ZERO,
            stats: Stats::default(),
        };
        let root = fs.node(
            ROOT_INO,
            libc::S_IFDIR | 0o755,
            0,
            Data::Dir {
                parent: ROOT_INO,
                entries: Vec::new(),
                index: HashMap::new(),
            },
        );
        fs.nodes.insert(ROOT_INO, root);
        fs
    }

    fn node(&self, ino: u64, mode: u32, size: u64, data: Data) -> Node {
        let nlink = if matches!(data, Data::Dir { .. }) {
            2
        } else {
            1
        };
        Node {
            attr: Mutex::new(Attr {
                ino,
                size,
                blocks: Attr::blocks_for(size),
                mode,
                nlink,
                uid: UID,
                gid: GID,
                mtime: MTIME,
                rdev: 0,
                blksize: 4096,
                provisional: false,
            }),
            data,
            xattrs: BTreeMap::new(),
        }
    }

    fn insert(&mut self, parent: u64, name: &str, mode: u32, size: u64, data: Data) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        let node = self.node(ino, mode, size, data);
        self.nodes.insert(ino, node);
        self.link(parent, name, ino);
        ino
    }

    /// Adds a directory entry `name` in `parent` for the existing inode `ino`.
    pub fn link(&mut self, parent: u64, name: &str, ino: u64) {
        match &mut self.nodes.get_mut(&parent).expect("parent exists").data {
            Data::Dir { entries, index, .. } => {
                entries.push((name.into(), ino));
                assert!(index.insert(name.into(), ino).is_none(), "duplicate {name}");
            }
            _ => panic!("parent {parent} is not a directory"),
        }
    }

    pub fn add_dir(&mut self, parent: u64, name: &str) -> u64 {
        let data = Data::Dir {
            parent,
            entries: Vec::new(),
            index: HashMap::new(),
        };
        self.insert(parent, name, libc::S_IFDIR | 0o755, 0, data)
    }

    pub fn add_file(&mut self, parent: u64, name: &str, content: Vec<u8>) -> u64 {
        let size = content.len() as u64;
        let data = Data::File(Arc::new(content));
        self.insert(parent, name, libc::S_IFREG | 0o644, size, data)
    }

    /// A second name for `ino`, counted in its nlink.
    pub fn add_hardlink(&mut self, parent: u64, name: &str, ino: u64) {
        self.link(parent, name, ino);
        self.attr_mut(ino).nlink += 1;
    }

    pub fn add_symlink(&mut self, parent: u64, name: &str, target: &str) -> u64 {
        let data = Data::Symlink(target.into());
        self.insert(
            parent,
            name,
            libc::S_IFLNK | 0o777,
            target.len() as u64,
            data,
        )
    }

    /// A device node, fifo or socket: `mode` carries the type.
    pub fn add_special(&mut self, parent: u64, name: &str, mode: u32, rdev: u64) -> u64 {
        let ino = self.insert(parent, name, mode, 0, Data::Special);
        self.attr_mut(ino).rdev = rdev;
        ino
    }

    pub fn set_xattr(&mut self, ino: u64, name: &str, value: &[u8]) {
        let node = self.nodes.get_mut(&ino).expect("node exists");
        node.xattrs.insert(name.into(), value.to_vec());
    }

    pub fn attr_mut(&mut self, ino: u64) -> &mut Attr {
        let node = self.nodes.get_mut(&ino).expect("node exists");
        node.attr.get_mut().unwrap()
    }

    /// Changes the attributes of `ino` while mounted.
    pub fn update_attr(&self, ino: u64, change: impl FnOnce(&mut Attr)) {
        change(&mut self.nodes[&ino].attr.lock().unwrap());
    }

    fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        Ok(*self.get(ino)?.attr.lock().unwrap())
    }

    fn get(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }
}

/// Counts one read as in flight while alive and records the highest count seen.
struct InFlight<'a>(&'a Stats);

impl<'a> InFlight<'a> {
    fn enter(stats: &'a Stats) -> Self {
        let now = stats.reads_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_reads_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.reads_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ReadOnlyFs for MemFs {
    fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        self.stats.lookups.fetch_add(1, Ordering::SeqCst);
        if name == "panic-on-lookup" {
            panic!("deliberate panic in lookup");
        }
        match &self.get(parent)?.data {
            Data::Dir { index, .. } => {
                let ino = index.get(name).ok_or(Errno::ENOENT)?;
                self.attr(*ino)
            }
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn getattr(&self, ino: u64) -> Result<Attr, Errno> {
        self.stats.getattrs.fetch_add(1, Ordering::SeqCst);
        self.attr(ino)
    }

    fn readdir(&self, ino: u64, offset: u64, add: &mut AddDirItem<'_>) -> Result<(), Errno> {
        self.stats.readdirs.fetch_add(1, Ordering::SeqCst);
        let Data::Dir { entries, .. } = &self.get(ino)?.data else {
            return Err(Errno::ENOTDIR);
        };
        readdir_from(entries, offset, add, |_, (name, child)| {
            Ok((name.as_os_str(), self.attr(*child)?))
        })
    }

    fn parent(&self, ino: u64) -> Option<u64> {
        match &self.get(ino).ok()?.data {
            Data::Dir { parent, .. } => Some(*parent),
            _ => None,
        }
    }

    fn open(&self, ino: u64) -> Result<u64, Errno> {
        self.stats.opens.fetch_add(1, Ordering::SeqCst);
        match self.get(ino)?.data {
            Data::File(_) => Ok(ino * 10),
            _ => Err(Errno::EINVAL),
        }
    }

    fn release(&self, _ino: u64, _fh: u64) {
        self.stats.releases.fetch_add(1, Ordering::SeqCst);
    }

    fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<ReadData, Errno> {
        let _in_flight = InFlight::enter(&self.stats);
        self.stats.reads.fetch_add(1, Ordering::SeqCst);
        self.stats
            .max_read_size
            .fetch_max(u64::from(size), Ordering::SeqCst);
        if fh != ino * 10 {
            return Err(Errno::EBADF);
        }
        if !self.read_delay.is_zero() {
            std::thread::sleep(self.read_delay);
        }
        let Data::File(content) = &self.get(ino)?.data else {
            return Err(Errno::EISDIR);
        };
        let start = (offset as usize).min(content.len());
        let end = start.saturating_add(size as usize).min(content.len());
        // Odd offsets get a copy, even ones a window: both reply paths are exercised.
        if offset % 2 == 1 {
            Ok(content[start..end].to_vec().into())
        } else {
            Ok(ReadData::shared(content.clone(), start..end))
        }
    }

    fn readlink(&self, ino: u64) -> Result<OsString, Errno> {
        match &self.get(ino)?.data {
            Data::Symlink(target) => Ok(target.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn listxattr(&self, ino: u64) -> Result<Vec<OsString>, Errno> {
        Ok(self.get(ino)?.xattrs.keys().cloned().collect())
    }

    fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        self.get(ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(Errno::ENODATA)
    }

    fn statfs(&self) -> Result<StatFs, Errno> {
        Ok(StatFs {
            blocks: 1000,
            bfree: 0,
            bavail: 0,
            files: self.nodes.len() as u64,
            ffree: 0,
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        })
    }
}

/// Deterministic pseudo-random bytes (xorshift64), so large files need no fixtures.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
