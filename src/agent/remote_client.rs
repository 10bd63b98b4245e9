//! [`RemoteClient`]: a client host's file system served by `pbsfs agent` over a byte stream,
//! as a [`ClientProvider`] the backup server cannot tell from the local one.
//!
//! Round trips are what make a remote walk slow, so it avoids them: a listing brings every
//! entry's stat (kept for the `lstat` calls that follow), symlink targets and, when the walk
//! reads all attributes, each entry's flags and xattrs; the directories the walk will
//! enter (`will_list`) are listed ahead, many requests in flight; the first block of the
//! files it will read (`will_read`) is asked for ahead; file content streams in 1 MiB
//! blocks with a growing window of requests in flight (a block of zeros comes as its
//! length and is expanded here). Every cache is bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::connection::{Connection, Ticket};
use super::protocol::{Attrs, Errno, Extra, Message, Target, MAX_READ, VERSION};
use crate::backup::client::{ClientCounters, ClientProvider};
use crate::backup::fs_accessor::{join_name, FileStat, FileSystemAccessor};

/// Directories listed ahead of the walk at most.
const LISTINGS_AHEAD: usize = 64;
/// Directories waiting to be listed ahead at most (the oldest hints are dropped).
const HINTS_KEPT: usize = 4096;
/// First blocks of files asked for ahead at most (the walker is told to hint no more than
/// half of that: room for a directory's hints and those of one it enters meanwhile, since
/// a hint pushed out is a wasted request and a file read without one).
const FILES_AHEAD: usize = 128;
/// A content request's size.
const BLOCK: usize = 1 << 20;
/// Content requests in flight per file at most.
const MAX_WINDOW: usize = 16;
/// Entries of one directory at most: a bound on what a hostile agent can make us hold.
const MAX_LISTING: usize = 16 << 20;
/// Entries kept from listings at most (per kind).
const CACHED_ENTRIES: usize = 1 << 17;

/// The client host's file system through an agent.
pub struct RemoteClient {
    connection: Connection,
    hostname: String,
    clock_skew: i64,
    /// Each root's path relative to `/`, in the agent's order.
    roots: Vec<PathBuf>,
    counters: Arc<ClientCounters>,
    attributes_in_listings: AtomicBool,
    cache: Mutex<Cache>,
}

struct Cache {
    stats: Bounded<PathBuf, Errno<FileStat>>,
    attrs: Bounded<PathBuf, Errno<Attrs>>,
    links: Bounded<PathBuf, Errno<Vec<u8>>>,
    /// Directories whose listing had no `.pxarexclude`: the walk looks for one in each.
    without_pxarexclude: Bounded<PathBuf, ()>,
    listings: HashMap<PathBuf, Ticket>,
    hinted: VecDeque<PathBuf>,
    /// Bounded by evicting the oldest: a hinted file may never be opened (a hardlink's
    /// second name, a file that vanished), and must not hold a slot for ever.
    first_blocks: Bounded<PathBuf, (usize, Ticket)>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            stats: Bounded::default(),
            attrs: Bounded::default(),
            links: Bounded::default(),
            without_pxarexclude: Bounded::default(),
            listings: HashMap::new(),
            hinted: VecDeque::new(),
            first_blocks: Bounded::with_limit(FILES_AHEAD),
        }
    }
}

impl RemoteClient {
    /// Greets the agent over `input`/`output`; `abort` is set if the connection breaks, so
    /// the backup stops instead of leaving out what it could not read. An agent that
    /// speaks only an older version fails with an [`OlderAgent`](super::connection::OlderAgent)
    /// error: [`RemoteClient::connect_with_version`] in a new session then.
    pub fn connect(
        input: Box<dyn Read + Send>,
        output: Box<dyn Write + Send>,
        abort: Arc<AtomicBool>,
        timeout: Duration,
    ) -> io::Result<Self> {
        Self::connect_with_version(input, output, abort, timeout, VERSION)
    }

    /// [`RemoteClient::connect`] greeting with `version` at most.
    pub fn connect_with_version(
        input: Box<dyn Read + Send>,
        output: Box<dyn Write + Send>,
        abort: Arc<AtomicBool>,
        timeout: Duration,
        version: u16,
    ) -> io::Result<Self> {
        let on_failure = Box::new(move || abort.store(true, Ordering::SeqCst));
        let (connection, welcome) = Connection::open(input, output, on_failure, timeout, version)?;
        let roots = welcome
            .roots
            .iter()
            .map(|root| {
                let root = Path::new(std::ffi::OsStr::from_bytes(root));
                root.strip_prefix("/").unwrap_or(root).to_path_buf()
            })
            .collect();
        Ok(RemoteClient {
            connection,
            hostname: welcome.hostname,
            clock_skew: welcome.clock_skew,
            roots,
            counters: Arc::default(),
            attributes_in_listings: AtomicBool::new(false),
            cache: Mutex::default(),
        })
    }

    /// The client host's short name, as its agent reports it.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// How far the client's clock is ahead of this host's (negative: behind), in seconds.
    pub fn clock_skew(&self) -> i64 {
        self.clock_skew
    }

    /// The trees the agent serves (absolute paths).
    pub fn roots(&self) -> Vec<PathBuf> {
        self.roots
            .iter()
            .map(|root| Path::new("/").join(root))
            .collect()
    }

    /// The counters, shareable with a progress display.
    pub fn shared_counters(&self) -> Arc<ClientCounters> {
        self.counters.clone()
    }

    /// Why the connection broke, if it did.
    pub fn failure(&self) -> Option<String> {
        self.connection.failure()
    }

    /// Ends the session (the agent exits); later requests fail.
    pub fn close(&self) {
        self.connection.close();
    }

    /// The agent's root and relative path for a path relative to `/`; the innermost root
    /// that holds it.
    pub fn locate(&self, path: &Path) -> io::Result<Target> {
        let path = path.strip_prefix("/").unwrap_or(path);
        self.roots
            .iter()
            .enumerate()
            .filter_map(|(i, root)| path.strip_prefix(root).ok().map(|rest| (i, root, rest)))
            .max_by_key(|(_, root, _)| root.components().count())
            .map(|(i, _, rest)| Target {
                root: i as u32,
                path: rest.as_os_str().as_bytes().to_vec(),
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "/{} is not served by the agent (it serves {})",
                        path.display(),
                        self.roots()
                            .iter()
                            .map(|r| r.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self, path: &Path, message: impl FnOnce(Target) -> Message) -> io::Result<Message> {
        let target = self.locate(path)?;
        reply(self.connection.send(message(target)).wait()?)
    }

    fn list_request(&self, path: &Path) -> io::Result<Ticket> {
        let target = self.locate(path)?;
        let with_attrs = self.attributes_in_listings.load(Ordering::Relaxed);
        Ok(self.connection.send(Message::List { target, with_attrs }))
    }

    /// Lists hinted directories until enough listings are on their way.
    fn list_ahead(&self, cache: &mut Cache) {
        while cache.listings.len() < LISTINGS_AHEAD {
            let Some(dir) = cache.hinted.pop_front() else {
                return;
            };
            if cache.listings.contains_key(&dir) {
                continue;
            }
            if let Ok(ticket) = self.list_request(&dir) {
                cache.listings.insert(dir, ticket);
            }
        }
    }

    fn attrs(&self, path: &Path) -> io::Result<Attrs> {
        if let Some(attrs) = self.cache().attrs.get(path) {
            return attrs.clone().map_err(io::Error::from_raw_os_error);
        }
        let attrs = match self.request(path, Message::GetAttrs) {
            Ok(Message::AttrsOk(attrs)) => Ok(attrs),
            Ok(other) => return Err(unexpected(&other)),
            Err(err) => match err.raw_os_error() {
                Some(errno) => Err(errno),
                None => return Err(err),
            },
        };
        self.cache().attrs.insert(path.to_path_buf(), attrs.clone());
        attrs.map_err(io::Error::from_raw_os_error)
    }
}

/// A reply, or the agent's error as the OS error it is.
fn reply(message: Message) -> io::Result<Message> {
    match message {
        Message::Failed { errno, .. } => Err(io::Error::from_raw_os_error(errno)),
        other => Ok(other),
    }
}

fn unexpected(message: &Message) -> io::Error {
    let name = format!("{message:?}");
    let name = name
        .split([' ', '(', '{'])
        .next()
        .unwrap_or("?")
        .to_string();
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("garbled stream: unexpected reply {name} from the agent"),
    )
}

fn errno_result<T>(result: Errno<T>) -> io::Result<T> {
    result.map_err(io::Error::from_raw_os_error)
}

impl FileSystemAccessor for RemoteClient {
    fn lstat(&self, path: &Path) -> io::Result<FileStat> {
        if let Some(stat) = self.cache().stats.take(path) {
            return errno_result(stat);
        }
        match self.request(path, Message::Stat)? {
            Message::StatOk(stat) => Ok(stat),
            other => Err(unexpected(&other)),
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        let ticket = {
            let mut cache = self.cache();
            let ticket = cache.listings.remove(path);
            self.list_ahead(&mut cache);
            ticket
        };
        let ticket = match ticket {
            Some(ticket) => ticket,
            None => self.list_request(path)?,
        };
        let mut entries = Vec::new();
        loop {
            match reply(ticket.wait()?)? {
                Message::ListPart {
                    more,
                    entries: part,
                } => {
                    entries.extend(part);
                    if entries.len() > MAX_LISTING {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("garbled stream: a listing of over {MAX_LISTING} entries"),
                        ));
                    }
                    if !more {
                        break;
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        let mut names = Vec::with_capacity(entries.len());
        let mut cache = self.cache();
        for entry in entries {
            let full = join_name(path, &entry.name);
            match entry.extra {
                Extra::None => {}
                Extra::Attrs(attrs) => cache.attrs.insert(full.clone(), attrs),
                Extra::Link(link) => cache.links.insert(full.clone(), link),
            }
            cache.stats.insert(full, entry.stat);
            names.push(entry.name);
        }
        if !names.iter().any(|name| name == b".pxarexclude") {
            cache.without_pxarexclude.insert(path.to_path_buf(), ());
        }
        Ok(names)
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(MAX_READ) as u32;
        match self.request(path, |target| Message::Read {
            target,
            offset,
            len,
        })? {
            Message::Data(data) if data.len() <= buf.len() => {
                buf[..data.len()].copy_from_slice(&data);
                self.counters.add_bytes(data.len());
                Ok(data.len())
            }
            // Never more than asked for: a count is checked as data is.
            Message::Zeros(len) if len as usize <= buf.len() => {
                buf[..len as usize].fill(0);
                self.counters.add_bytes(len as usize);
                Ok(len as usize)
            }
            other => Err(unexpected(&other)),
        }
    }

    fn will_read(&self, path: &Path, len: u64) {
        // One byte more than a small file has: the walk reads that far to see it did not
        // grow, and the short answer tells it without another round trip.
        let len = len.saturating_add(1).min(BLOCK as u64) as usize;
        let mut cache = self.cache();
        if cache.first_blocks.get(path).is_some() {
            return;
        }
        if let Ok(target) = self.locate(path) {
            let ticket = self.connection.send(Message::Read {
                target,
                offset: 0,
                len: len as u32,
            });
            cache.first_blocks.insert(path.to_path_buf(), (len, ticket));
        }
    }

    fn will_list(&self, dirs: &[PathBuf]) {
        let mut cache = self.cache();
        // The walk goes depth first: the latest hints are needed first.
        for dir in dirs.iter().rev() {
            cache.hinted.push_front(dir.clone());
        }
        cache.hinted.truncate(HINTS_KEPT);
        self.list_ahead(&mut cache);
    }

    fn will_read_attributes(&self, all: bool) {
        self.attributes_in_listings.store(all, Ordering::Relaxed);
    }

    fn read_hints_kept(&self) -> usize {
        FILES_AHEAD / 2
    }

    fn open_file<'a>(&'a self, path: &Path) -> io::Result<Box<dyn Read + 'a>> {
        let parent = path.parent().unwrap_or(Path::new(""));
        let (first, absent) = {
            let mut cache = self.cache();
            cache.attrs.take(path);
            let absent = path.file_name().is_some_and(|n| n == ".pxarexclude")
                && cache.without_pxarexclude.take(parent).is_some();
            (cache.first_blocks.take(path), absent)
        };
        if absent {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let target = self.locate(path)?;
        let mut file = RemoteFile {
            client: self,
            target,
            next_offset: 0,
            in_flight: VecDeque::new(),
            window: 2,
            at_end: false,
            block: Vec::new(),
            pos: 0,
        };
        match first {
            Some((len, ticket)) => {
                file.next_offset = len as u64;
                file.in_flight.push_back((len, ticket));
            }
            None => file.request_more(),
        }
        // Opening fails here, not at the first read, as a local open would.
        file.fill()?;
        self.counters.add_opened();
        Ok(Box::new(file))
    }

    fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
        if let Some(link) = self.cache().links.take(path) {
            return errno_result(link);
        }
        match self.request(path, Message::ReadLink)? {
            Message::Data(target) => Ok(target),
            other => Err(unexpected(&other)),
        }
    }

    fn list_xattrs(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
        let list = errno_result(self.attrs(path)?.xattrs)?;
        Ok(list.into_iter().map(|(name, _)| name).collect())
    }

    fn get_xattr(&self, path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let list = errno_result(self.attrs(path)?.xattrs)?;
        match list.into_iter().find(|(n, _)| n == name) {
            Some((_, value)) => errno_result(value),
            None => Ok(None),
        }
    }

    fn fs_magic(&self, path: &Path) -> io::Result<i64> {
        match self.request(path, Message::FsMagic)? {
            Message::Number(magic) => Ok(magic as i64),
            other => Err(unexpected(&other)),
        }
    }

    fn chattr_flags(&self, path: &Path) -> io::Result<Option<u64>> {
        errno_result(self.attrs(path)?.chattr)
    }

    fn fat_attributes(&self, path: &Path) -> io::Result<Option<u64>> {
        errno_result(self.attrs(path)?.fat)
    }

    fn quota_project_id(&self, path: &Path) -> io::Result<Option<u64>> {
        errno_result(self.attrs(path)?.project_id)
    }
}

impl ClientProvider for RemoteClient {
    fn counters(&self) -> &ClientCounters {
        &self.counters
    }

    fn image_size(&self, path: &Path) -> io::Result<u64> {
        match self.request(path, Message::ImageSize) {
            Ok(Message::Number(size)) => Ok(size),
            Ok(other) => Err(unexpected(&other)),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an image must be a regular file or a block device",
            )),
            Err(err) => Err(err),
        }
    }
}

/// A file's content streamed from the agent: block requests run ahead of the reader in a
/// window that doubles while the file goes on.
struct RemoteFile<'a> {
    client: &'a RemoteClient,
    target: Target,
    next_offset: u64,
    /// Requested lengths and their tickets, in file order.
    in_flight: VecDeque<(usize, Ticket)>,
    window: usize,
    /// A short block came: the file ends there.
    at_end: bool,
    block: Vec<u8>,
    pos: usize,
}

impl RemoteFile<'_> {
    fn request_more(&mut self) {
        while !self.at_end && self.in_flight.len() < self.window {
            let ticket = self.client.connection.send(Message::Read {
                target: self.target.clone(),
                offset: self.next_offset,
                len: BLOCK as u32,
            });
            self.in_flight.push_back((BLOCK, ticket));
            self.next_offset += BLOCK as u64;
        }
    }

    /// Makes the next block current; an empty one at the end.
    fn fill(&mut self) -> io::Result<()> {
        let Some((len, ticket)) = self.in_flight.pop_front() else {
            self.block.clear();
            self.pos = 0;
            return Ok(());
        };
        match reply(ticket.wait()?)? {
            Message::Data(data) if data.len() <= len => self.block = data,
            // Expanded here, so the archive is the same; a count above the request is
            // refused before anything is allocated for it.
            Message::Zeros(zeros) if zeros as usize <= len => {
                self.block.clear();
                self.block.resize(zeros as usize, 0);
            }
            other => return Err(unexpected(&other)),
        }
        if self.block.len() < len {
            // The rest was asked for beyond the end: not needed.
            self.at_end = true;
            self.in_flight.clear();
        } else {
            self.window = (self.window * 2).min(MAX_WINDOW);
            self.request_more();
        }
        self.pos = 0;
        Ok(())
    }
}

impl Read for RemoteFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.block.len() {
            if self.at_end && self.in_flight.is_empty() {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = buf.len().min(self.block.len() - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        self.client.counters.add_bytes(n);
        Ok(n)
    }
}

/// A map that forgets its oldest entries beyond a size.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    limit: usize,
}

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Self::with_limit(CACHED_ENTRIES)
    }
}

impl<K, V> Bounded<K, V> {
    fn with_limit(limit: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            limit,
        }
    }
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.limit {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // Keys taken out early stay in the order queue: drop them now and then.
        if self.order.len() > 2 * self.limit.max(self.map.len()) {
            let map = &self.map;
            self.order.retain(|key| map.contains_key(key));
        }
    }

    fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    fn take<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A client connected to an agent serving `root` on a thread.
    fn connect(root: &Path) -> (RemoteClient, Arc<AtomicBool>, UnixStream) {
        let (near, far) = UnixStream::pair().unwrap();
        let root = root.to_path_buf();
        let far_out = far.try_clone().unwrap();
        std::thread::spawn(move || super::super::serve::serve(&[root], far, far_out));
        let abort = Arc::new(AtomicBool::new(false));
        let client = RemoteClient::connect(
            Box::new(near.try_clone().unwrap()),
            Box::new(near.try_clone().unwrap()),
            abort.clone(),
            Duration::from_secs(600),
        )
        .unwrap();
        (client, abort, near)
    }

    /// A made-up agent's side of the greeting: reads the hello, answers `version`.
    fn greet_as_agent(far: &mut UnixStream, version: u16, hostname: &str) {
        use super::super::protocol::{read_frame, write_frame, Frame, MAGIC};
        read_frame(far).unwrap();
        let welcome = Message::Welcome {
            magic: MAGIC,
            version,
            hostname: hostname.as_bytes().to_vec(),
            time: 0,
            roots: vec![b"/".to_vec()],
        };
        write_frame(
            far,
            &Frame {
                id: 0,
                message: welcome,
            },
        )
        .unwrap();
    }

    #[test]
    fn the_remote_client_sees_what_the_local_file_system_sees() {
        let dir = tempfile::TempDir::new().unwrap();
        let root = dir.path().join("served");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(root.join("sub/big"), &big).unwrap();
        std::fs::write(root.join("small"), b"small").unwrap();
        std::os::unix::fs::symlink("sub/big", root.join("link")).unwrap();
        let (remote, abort, _stream) = connect(&root);
        let base = root.strip_prefix("/").unwrap();
        assert_eq!(remote.roots(), vec![root.clone()]);
        assert!(remote.clock_skew().abs() <= 2, "{}", remote.clock_skew());
        remote.will_read_attributes(true);
        remote.will_list(&[base.join("sub")]);

        for dir in [base.to_path_buf(), base.join("sub")] {
            let mut names = remote.read_dir(&dir).unwrap();
            names.sort();
            let mut expected: Vec<Vec<u8>> = std::fs::read_dir(Path::new("/").join(&dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_encoded_bytes())
                .collect();
            expected.sort();
            assert_eq!(names, expected);
            for name in &names {
                let path = join_name(&dir, name);
                let local_stat = std::fs::symlink_metadata(Path::new("/").join(&path)).unwrap();
                let stat = remote.lstat(&path).unwrap();
                assert_eq!(stat.size, std::os::unix::fs::MetadataExt::size(&local_stat));
                assert_eq!(stat.ino, std::os::unix::fs::MetadataExt::ino(&local_stat));
                if stat.is_dir() || stat.is_regular_file() {
                    assert!(remote.list_xattrs(&path).is_ok());
                    remote.chattr_flags(&path).unwrap();
                }
            }
        }
        assert_eq!(remote.read_link(&base.join("link")).unwrap(), b"sub/big");
        remote.will_read(&base.join("small"), 5);
        let mut small = Vec::new();
        remote
            .open_file(&base.join("small"))
            .unwrap()
            .read_to_end(&mut small)
            .unwrap();
        assert_eq!(small, b"small");
        let mut content = Vec::new();
        remote
            .open_file(&base.join("sub/big"))
            .unwrap()
            .read_to_end(&mut content)
            .unwrap();
        assert!(content == big);
        let mut buf = [0u8; 3];
        assert_eq!(remote.read_at(&base.join("small"), 3, &mut buf).unwrap(), 2);
        assert_eq!(remote.counters().files_opened(), 2);
        assert_eq!(remote.counters().content_bytes(), big.len() as u64 + 5 + 2);
        assert_eq!(
            remote.image_size(&base.join("sub/big")).unwrap(),
            big.len() as u64
        );
        assert!(remote.image_size(&base.join("sub")).is_err());
        assert!(remote.fs_magic(&base.join("sub")).is_ok());
        // Errors keep their OS error numbers; paths outside the root are refused.
        let missing = remote.lstat(&base.join("missing")).unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
        assert!(remote.lstat(Path::new("etc/passwd")).is_err());
        assert!(remote.open_file(&base.join(".pxarexclude")).is_err());
        assert!(!abort.load(Ordering::SeqCst));
        assert!(remote.failure().is_none());
    }

    #[test]
    fn sparse_files_and_zero_runs_read_back_as_they_are() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("sparse");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(7 * BLOCK as u64 + 12345).unwrap();
        let mut data = random_block(3 * BLOCK + 10);
        data[BLOCK..2 * BLOCK].fill(0);
        std::os::unix::fs::FileExt::write_all_at(&file, &data, 2 * BLOCK as u64).unwrap();
        let expected = std::fs::read(&path).unwrap();
        let (remote, abort, _stream) = connect(dir.path());
        let base = dir.path().strip_prefix("/").unwrap();
        let mut content = Vec::new();
        remote
            .open_file(&base.join("sparse"))
            .unwrap()
            .read_to_end(&mut content)
            .unwrap();
        assert!(content == expected);
        let mut buf = vec![1u8; 1000];
        let got = remote.read_at(&base.join("sparse"), 17, &mut buf).unwrap();
        assert_eq!((got, buf.iter().all(|&b| b == 0)), (1000, true));
        assert_eq!(
            remote.counters().content_bytes(),
            expected.len() as u64 + 1000
        );
        assert!(!abort.load(Ordering::SeqCst));
    }

    fn random_block(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// A client talking to a made-up agent that welcomes in `version` and answers every
    /// request with `answer`.
    fn scripted_agent(
        version: u16,
        answer: impl Fn(&Message) -> Message + Send + 'static,
    ) -> (RemoteClient, Arc<AtomicBool>) {
        use super::super::protocol::{read_frame, write_frame, Frame};
        let (near, mut far) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            greet_as_agent(&mut far, version, "scripted");
            while let Ok(frame) = read_frame(&mut far) {
                let message = answer(&frame.message);
                if write_frame(
                    &mut far,
                    &Frame {
                        id: frame.id,
                        message,
                    },
                )
                .is_err()
                {
                    return;
                }
            }
        });
        let abort = Arc::new(AtomicBool::new(false));
        let client = RemoteClient::connect(
            Box::new(near.try_clone().unwrap()),
            Box::new(near),
            abort.clone(),
            Duration::from_secs(600),
        )
        .unwrap();
        (client, abort)
    }

    /// An agent claiming more zeros than asked for: an error, and nothing of that size
    /// is allocated.
    #[test]
    fn a_zero_run_longer_than_the_request_is_refused() {
        let (remote, _abort) = scripted_agent(super::super::protocol::VERSION, |_| {
            Message::Zeros(MAX_READ as u32)
        });
        let mut buf = [0u8; 10];
        let err = remote.read_at(Path::new("f"), 0, &mut buf).unwrap_err();
        assert!(err.to_string().contains("unexpected reply Zeros"), "{err}");
        let err = remote.open_file(Path::new("f")).err().unwrap();
        assert!(err.to_string().contains("unexpected reply Zeros"), "{err}");
    }

    /// A client that greets in the current version understands zeros; in a session of an
    /// older version they are a garbled stream.
    #[test]
    fn zeros_in_a_session_that_does_not_have_them_break_the_connection() {
        use super::super::protocol::ZEROS_SINCE;
        let (remote, abort) = scripted_agent(ZEROS_SINCE, |_| Message::Zeros(4));
        let mut buf = [1u8; 10];
        assert_eq!(remote.read_at(Path::new("f"), 0, &mut buf).unwrap(), 4);
        assert_eq!(buf[..5], [0, 0, 0, 0, 1]);
        assert!(!abort.load(Ordering::SeqCst));
        let (remote, abort) = scripted_agent(ZEROS_SINCE - 1, |_| Message::Zeros(4));
        let err = remote.read_at(Path::new("f"), 0, &mut buf).unwrap_err();
        assert!(err.to_string().contains("a zeros reply"), "{err}");
        assert!(abort.load(Ordering::SeqCst));
    }

    /// An agent from before version negotiation refuses the current greeting, naming its
    /// version: the error says so, and a session greeted in that version works (zeros
    /// then come as data).
    #[test]
    fn an_agent_that_speaks_only_an_older_version_is_greeted_again_in_it() {
        use super::super::connection::OlderAgent;
        use super::super::protocol::{read_frame, write_frame, Frame, MIN_VERSION};
        /// The error of a connection to an agent that refuses the greeting with `message`.
        fn refused_with(message: String) -> io::Error {
            let (near, mut far) = UnixStream::pair().unwrap();
            std::thread::spawn(move || {
                let hello = read_frame(&mut far).unwrap();
                assert!(
                    matches!(hello.message, Message::Hello { version, .. } if version == VERSION)
                );
                let refused = Message::Refused {
                    message: message.into_bytes(),
                };
                write_frame(
                    &mut far,
                    &Frame {
                        id: 0,
                        message: refused,
                    },
                )
                .unwrap();
            });
            RemoteClient::connect(
                Box::new(near.try_clone().unwrap()),
                Box::new(near),
                Arc::default(),
                Duration::from_secs(600),
            )
            .err()
            .unwrap()
        }
        let err = refused_with(format!(
            "protocol version {VERSION} is not known to this agent (it speaks {MIN_VERSION})"
        ));
        assert_eq!(OlderAgent::of(&err), Some(MIN_VERSION), "{err}");
        assert!(
            err.to_string().contains("speaks only protocol version 1"),
            "{err}"
        );

        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("zeros"), vec![0u8; 3 * BLOCK]).unwrap();
        let (near, far) = UnixStream::pair().unwrap();
        let root = dir.path().to_path_buf();
        let far_out = far.try_clone().unwrap();
        std::thread::spawn(move || super::super::serve::serve(&[root], far, far_out));
        let remote = RemoteClient::connect_with_version(
            Box::new(near.try_clone().unwrap()),
            Box::new(near),
            Arc::default(),
            Duration::from_secs(600),
            MIN_VERSION,
        )
        .unwrap();
        let mut content = Vec::new();
        let path = dir.path().strip_prefix("/").unwrap().join("zeros");
        remote
            .open_file(&path)
            .unwrap()
            .read_to_end(&mut content)
            .unwrap();
        assert!(content == vec![0u8; 3 * BLOCK]);
        // A refusal for another reason is no call to greet again.
        let err = refused_with("cannot serve: /x: No such file or directory (it speaks 1)".into());
        assert_eq!(OlderAgent::of(&err), None, "{err}");
    }

    #[test]
    fn bounded_caches_forget_their_oldest_entries() {
        let mut cache = Bounded::with_limit(3);
        for i in 0..5 {
            cache.insert(i, i * 10);
        }
        assert_eq!(cache.get(&0), None);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.take(&2), Some(20));
        cache.insert(5, 50);
        assert_eq!(cache.get(&3), Some(&30));
        for i in 6..100 {
            cache.insert(i, i);
            cache.take(&i);
        }
        assert!(cache.order.len() <= 8, "{}", cache.order.len());
    }

    #[test]
    fn a_broken_connection_fails_requests_and_sets_the_abort_flag() {
        let dir = tempfile::TempDir::new().unwrap();
        let (remote, abort, stream) = connect(dir.path());
        let base = dir.path().strip_prefix("/").unwrap();
        assert!(remote.lstat(base).is_ok());
        stream.shutdown(std::net::Shutdown::Both).unwrap();
        let err = remote.lstat(base).unwrap_err();
        assert!(
            err.to_string().contains("connection to the agent lost"),
            "{err}"
        );
        assert!(abort.load(Ordering::SeqCst));
        assert!(remote.failure().is_some());
    }

    #[test]
    fn garbage_instead_of_an_agent_is_a_clear_error() {
        let (near, mut far) = UnixStream::pair().unwrap();
        far.write_all(b"Welcome to Ubuntu 24.04 LTS\n").unwrap();
        drop(far);
        let err = RemoteClient::connect(
            Box::new(near.try_clone().unwrap()),
            Box::new(near),
            Arc::default(),
            Duration::from_secs(600),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("not a pbsfs agent"), "{err}");
    }

    #[test]
    fn an_agent_that_never_answers_the_greeting_is_given_up() {
        let (near, _far) = UnixStream::pair().unwrap();
        let started = std::time::Instant::now();
        let err = RemoteClient::connect(
            Box::new(near.try_clone().unwrap()),
            Box::new(near),
            Arc::default(),
            Duration::from_millis(200),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("did not answer"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    /// An agent that greets and then neither reads nor answers (hung, or hostile): requests
    /// fail after the timeout, the abort flag is set, and no caller is left blocked in a
    /// write however many requests it makes.
    #[test]
    fn an_agent_that_stops_reading_and_answering_is_given_up() {
        use super::super::protocol::VERSION;
        let (near, far) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut far = far;
            greet_as_agent(&mut far, VERSION, "silent");
            far.flush().unwrap();
            // Keeps the stream open without reading from it.
            std::thread::sleep(Duration::from_secs(20));
        });
        let abort = Arc::new(AtomicBool::new(false));
        let client = RemoteClient::connect(
            Box::new(near.try_clone().unwrap()),
            Box::new(near),
            abort.clone(),
            Duration::from_millis(300),
        )
        .unwrap();
        let started = std::time::Instant::now();
        // Far more requests than a socket buffer holds.
        for i in 0..20_000 {
            let path = PathBuf::from(format!("some/quite/long/path/to/a/file/{i:08}"));
            client.will_read(&path, 1 << 20);
        }
        let err = client.lstat(Path::new("etc")).unwrap_err();
        assert!(
            err.to_string().contains("no answer from the agent"),
            "{err}"
        );
        assert!(abort.load(Ordering::SeqCst));
        assert!(started.elapsed() < Duration::from_secs(15));
        drop(client);
        drop(agent);
    }
}
