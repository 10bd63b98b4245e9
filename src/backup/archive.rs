//! Walks a directory tree through a [`FileSystemAccessor`] and encodes it the way
//! `proxmox-backup-client backup` / `pxar create` do (PBS4 pbs-client/src/pxar/create.rs;
//! pxar.md §6): same entries, same order, same metadata, so the archive is byte-identical to
//! the official one. Exclude patterns and `.pxarexclude` files follow the official rules
//! ([`ExcludePatterns`]).
//!
//! With a previous snapshot ([`PreviousArchive`], v2 only) unchanged regular files are not
//! read: like the official client, runs of them are collected in a look-ahead cache (with the
//! directories and other entries between them) until the run ends; then either the previous
//! payload chunks covering the run are re-used (injected into the payload stream, the files
//! referenced inside them) or, when that would re-use more than 10 % padding, the cached
//! entries are encoded normally (pxar.md §9.4, chunker.md §5.2).
//!
//! Not handled: the entry limit.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::acl::{self, XATTR_ACL_ACCESS, XATTR_ACL_DEFAULT};
use super::exclude::ExcludePatterns;
use super::fs_accessor::{is_unsupported, join_name, FileStat, FileSystemAccessor};
use super::fs_flags::{self, feature};
use super::upload::KnownChunk;
use crate::pxar::encoder::{EncodeError, Encoder, LinkOffset};
use crate::pxar::format::{Stat, HEADER_SIZE};
use crate::pxar::metadata::{Device, Metadata};

const XATTR_FCAPS: &[u8] = b"security.capability";

/// Re-use previous chunks only if at most this share of the re-used bytes is padding.
const CHUNK_PADDING_THRESHOLD: f64 = 0.1;

/// Entries the look-ahead cache holds before it is flushed. The official client allows
/// about as many as it may open files (usually far more); entries here hold no descriptor,
/// only a path and metadata, so this bounds memory to some tens of MiB.
const LOOKAHEAD_CACHE_SIZE: usize = 65536;

/// Decides which entries are left out. Sees the path relative to the archive root with a
/// leading `/` (as the official pattern matcher does) and the entry's `st_mode`.
pub trait ExcludeFilter {
    fn is_excluded(&self, path: &[u8], mode: u32) -> bool;
}

/// Told about every entry as it is archived (the shape of the official catalog writer), so a
/// catalog can be written alongside. All methods default to doing nothing.
pub trait ArchiveObserver {
    fn start_directory(&mut self, _name: &[u8]) -> Result<()> {
        Ok(())
    }
    fn end_directory(&mut self) -> Result<()> {
        Ok(())
    }
    fn add_file(&mut self, _name: &[u8], _size: u64, _mtime_secs: i64) -> Result<()> {
        Ok(())
    }
    fn add_hardlink(&mut self, _name: &[u8]) -> Result<()> {
        Ok(())
    }
    fn add_symlink(&mut self, _name: &[u8]) -> Result<()> {
        Ok(())
    }
    fn add_char_device(&mut self, _name: &[u8]) -> Result<()> {
        Ok(())
    }
    fn add_block_device(&mut self, _name: &[u8]) -> Result<()> {
        Ok(())
    }
    fn add_fifo(&mut self, _name: &[u8]) -> Result<()> {
        Ok(())
    }
    fn add_socket(&mut self, _name: &[u8]) -> Result<()> {
        Ok(())
    }
}

struct NoObserver;
impl ArchiveObserver for NoObserver {}

/// What the walker needs from a v2 payload stream's chunker besides `Write`.
pub trait PayloadStream {
    /// A file's payload starts at the current position (a suggested chunk boundary).
    fn suggest_boundary(&mut self) -> Result<()>;
    /// Ends the current chunk and appends these chunks of the previous payload index to the
    /// stream without their data. `ends_previous` says the last one ends the previous stream
    /// (so it ends with the previous PAYLOAD_TAIL_MARKER).
    fn inject(&mut self, chunks: &[KnownChunk], ends_previous: bool) -> Result<()>;
    /// Only the PAYLOAD_START_MARKER has been written: drops it (and returns true) because the
    /// first injected chunk starts with the previous stream's identical marker.
    fn absorb_start_marker(&mut self) -> Result<bool>;
}

/// A regular file as the previous snapshot's metadata archive has it.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviousFile {
    pub metadata: Metadata,
    pub size: u64,
    /// Offset of its PAYLOAD header in the previous payload stream.
    pub payload_offset: u64,
}

/// A chunk of the previous payload index selected for re-use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReusableChunk {
    pub chunk: KnownChunk,
    /// Bytes of the chunk not covered by the re-used range.
    pub padding: u64,
    /// End offset in the previous payload stream: with the digest, the identity of the
    /// index entry (equal digests at different positions are different entries).
    pub end_offset: u64,
}

impl ReusableChunk {
    fn same_entry_as(&self, other: &ReusableChunk) -> bool {
        self.chunk.digest == other.chunk.digest && self.end_offset == other.end_offset
    }
}

/// The previous-index chunks covering a payload range, and how far they overhang it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkRun {
    pub chunks: Vec<ReusableChunk>,
    pub start_padding: u64,
    pub end_padding: u64,
}

/// The previous snapshot of the group (metadata change detection). The walker tells it
/// which directory it is in; lookups are by name in that directory.
pub trait PreviousArchive {
    fn enter_directory(&mut self, name: &[u8]) -> Result<()>;
    fn leave_directory(&mut self);
    /// A regular file (with a payload reference) of that name in the current directory.
    fn lookup_file(&mut self, name: &[u8]) -> Result<Option<PreviousFile>>;
    /// The previous payload index entries covering `range`.
    fn chunks_covering(&self, range: Range<u64>) -> Result<ChunkRun>;
    /// Size of the previous payload stream.
    fn payload_size(&self) -> u64;
}

/// How to walk. `Default` is what the official client does without options.
pub struct ArchiveOptions<'a> {
    /// Descend into mount points (`--all-file-systems`); otherwise they are archived as
    /// empty directories.
    pub all_file_systems: bool,
    /// Requested capture features ([`feature`] bits), further limited per file system.
    pub features: u64,
    pub exclude: Option<&'a dyn ExcludeFilter>,
    /// Command-line exclude patterns; `.pxarexclude` files are honoured in any case.
    pub patterns: Option<&'a ExcludePatterns>,
    /// Called with each entry's path before it is archived (progress); an error aborts.
    pub on_entry: Option<&'a EntryCallback<'a>>,
}

/// See [`ArchiveOptions::on_entry`].
pub type EntryCallback<'a> = dyn Fn(&Path) -> Result<()> + 'a;

impl Default for ArchiveOptions<'_> {
    fn default() -> Self {
        ArchiveOptions {
            all_file_systems: false,
            features: feature::DEFAULT,
            exclude: None,
            patterns: None,
            on_entry: None,
        }
    }
}

/// Optional participants of a walk.
#[derive(Default)]
pub struct ArchiveHooks<'h> {
    pub observer: Option<&'h mut dyn ArchiveObserver>,
    pub payload: Option<&'h mut dyn PayloadStream>,
    /// Needs `payload` and a split encoder.
    pub previous: Option<&'h mut dyn PreviousArchive>,
}

/// What a walk did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Regular files (without hardlinks).
    pub files: u64,
    pub hardlinks: u64,
    pub directories: u64,
    /// Symlinks, devices, fifos, sockets.
    pub others: u64,
    /// Files whose payload was referenced from the previous snapshot.
    pub reused_files: u64,
    pub reused_bytes: u64,
    /// Bytes of the previous payload stream injected (re-used files plus padding).
    pub injected_bytes: u64,
    pub warnings: u64,
    /// Entries left out because they could not be read (each also counted as a warning).
    pub left_out: u64,
    /// Files whose reading failed part-way: stored with zeros in place of the rest.
    pub incomplete: u64,
}

impl ArchiveStats {
    /// Something of the tree is missing from the archive or stored incompletely.
    pub fn is_partial(&self) -> bool {
        self.left_out > 0 || self.incomplete > 0
    }
}

/// Encodes the tree as a v1 (`legacy`) archive into `out` and returns it.
pub fn create_v1_archive<A, W>(
    fs: &A,
    out: W,
    options: &ArchiveOptions,
    observer: Option<&mut dyn ArchiveObserver>,
) -> Result<W>
where
    A: FileSystemAccessor + ?Sized,
    W: Write,
{
    let hooks = ArchiveHooks {
        observer,
        ..Default::default()
    };
    let (out, _, _) = create_archive(fs, options, hooks, |root, _| Encoder::new_v1(out, root))?;
    Ok(out)
}

/// Encodes the tree as a v2 split (`data` mode) archive: metadata stream into `meta_out`,
/// file contents into `payload_out`.
pub fn create_split_archive<A, W, P>(
    fs: &A,
    meta_out: W,
    payload_out: P,
    options: &ArchiveOptions,
    observer: Option<&mut dyn ArchiveObserver>,
) -> Result<(W, P)>
where
    A: FileSystemAccessor + ?Sized,
    W: Write,
    P: Write,
{
    let hooks = ArchiveHooks {
        observer,
        ..Default::default()
    };
    let (meta, payload, _) = create_archive(fs, options, hooks, |root, prelude| {
        Encoder::new_v2(meta_out, payload_out, root, prelude)
    })?;
    Ok((
        meta,
        payload.expect("a split encoder returns its payload sink"),
    ))
}

/// Walks the tree into the encoder `start` makes from the root's metadata and the v2
/// PRELUDE (present when there are command-line patterns; a v1 encoder ignores it).
pub fn create_archive<A, W, P>(
    fs: &A,
    options: &ArchiveOptions,
    hooks: ArchiveHooks,
    start: impl FnOnce(&Metadata, Option<&[u8]>) -> Result<Encoder<W, P>, EncodeError>,
) -> Result<(W, Option<P>, ArchiveStats)>
where
    A: FileSystemAccessor + ?Sized,
    W: Write,
    P: Write,
{
    let mut no_observer = NoObserver;
    let observer = hooks.observer.unwrap_or(&mut no_observer);
    let mut walker = Walker::new(fs, options, observer)?;
    let root = walker.root_metadata()?;
    let prelude = walker.patterns.prelude();
    let mut encoder = start(&root, prelude.as_deref())?;
    if encoder.is_split() {
        walker.payload = hooks.payload;
        if walker.payload.is_some() {
            walker.previous = hooks.previous;
        }
    }
    let root_names = fs
        .read_dir(Path::new(""))
        .context("cannot read the archive root")?;
    walker.archive_dir_contents(&mut encoder, Path::new(""), root_names, true)?;
    if walker.previous.is_some() {
        walker.flush_cache(&mut encoder, false)?;
    }
    let (out, payload) = encoder.finish()?;
    Ok((out, payload, walker.stats))
}

/// The look-ahead cache of metadata change detection: entries whose encoding waits until it
/// is known whether the run of re-usable files they belong to is re-used.
#[derive(Default)]
struct Lookahead {
    entries: Vec<Cached>,
    /// Range of the previous payload stream the cached re-usable files cover.
    range: Range<u64>,
    /// The last chunk of the previous flush, held back because the next run may start in
    /// it.
    last_chunk: Option<ReusableChunk>,
    /// Multiply-linked files seen by the cache.
    hardlinks: HashSet<(u64, u64)>,
}

impl Lookahead {
    fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    fn try_extend_range(&mut self, range: &Range<u64>) -> bool {
        if self.range.end == 0 {
            self.range = range.start..range.start;
        }
        if self.range.end == range.start {
            self.range.end = range.end;
            return true;
        }
        false
    }
}

enum Cached {
    /// A regular file; `Some(offset)` relative to the cache range's start for a re-usable
    /// one, `None` for a further name of a multiply-linked file.
    File(ListEntry, Metadata, Option<u64>),
    DirStart(ListEntry, Metadata),
    DirEnd,
    Other(ListEntry, Metadata),
}

struct Walker<'a, 'o, 'h, A: ?Sized> {
    fs: &'a A,
    options: &'a ArchiveOptions<'a>,
    observer: &'o mut dyn ArchiveObserver,
    payload: Option<&'h mut dyn PayloadStream>,
    previous: Option<&'h mut dyn PreviousArchive>,
    patterns: ExcludePatterns,
    /// First name of each multiply-linked regular file: path and FILENAME offset.
    hardlinks: HashMap<(u64, u64), (Vec<u8>, LinkOffset)>,
    cache: Lookahead,
    /// Highest previous payload offset accepted for re-use: references must increase.
    last_reusable_offset: Option<u64>,
    /// Bytes the payload writer is behind the encoder's payload position (an absorbed start
    /// marker), made up by the next injection.
    payload_rewound: u64,
    root_dev: u64,
    current_dev: u64,
    fs_magic: i64,
    /// Features the current file system supports; narrowed when it reports EOPNOTSUPP,
    /// restored when leaving the directory (as the official client does).
    fs_features: u64,
    stats: ArchiveStats,
}

#[derive(Clone)]
struct ListEntry {
    name: Vec<u8>,
    path: PathBuf,
    stat: FileStat,
}

/// Keeps the kernel reading the next big files of a directory while the walker encodes the
/// current one, so the disk and the CPUs work at the same time.
struct ReadAhead {
    /// (index in the listing, path, bytes to read ahead) of the directory's big files.
    files: Vec<(usize, PathBuf, u64)>,
    /// `files[..done]` are at or before the walker; `files[done..next]` were hinted.
    done: usize,
    next: usize,
}

impl ReadAhead {
    /// Bytes hinted ahead of the walker at most.
    const WINDOW: u64 = 32 << 20;
    /// Bytes hinted per file: the kernel's own read-ahead takes over once it is read.
    const PER_FILE: u64 = 8 << 20;
    /// Small files are hinted too: each costs an extra open and close, but read one after
    /// another from a cold disk every one of them would be a wait for the device.
    const MIN_SIZE: u64 = 1;

    fn new(list: &[ListEntry]) -> Self {
        let files = list
            .iter()
            .enumerate()
            .filter(|(_, e)| e.stat.is_regular_file() && e.stat.size >= Self::MIN_SIZE)
            .map(|(i, e)| (i, e.path.clone(), e.stat.size.min(Self::PER_FILE)))
            .collect();
        ReadAhead {
            files,
            done: 0,
            next: 0,
        }
    }

    /// The walker is at entry `index`: hint files until the window ahead of it is full.
    fn advance<A: FileSystemAccessor + ?Sized>(&mut self, fs: &A, index: usize) {
        while self.done < self.files.len() && self.files[self.done].0 <= index {
            self.done += 1;
        }
        self.next = self.next.max(self.done);
        let mut ahead: u64 = self.files[self.done..self.next].iter().map(|f| f.2).sum();
        while self.next < self.files.len() && ahead < Self::WINDOW {
            let (_, path, len) = &self.files[self.next];
            fs.will_read(path, *len);
            ahead += len;
            self.next += 1;
        }
    }
}

impl<'a, 'o, 'h, A: FileSystemAccessor + ?Sized> Walker<'a, 'o, 'h, A> {
    fn new(
        fs: &'a A,
        options: &'a ArchiveOptions<'a>,
        observer: &'o mut dyn ArchiveObserver,
    ) -> Result<Self> {
        let root = Path::new("");
        let stat = fs.lstat(root).context("cannot stat the archive root")?;
        if !stat.is_dir() {
            bail!("the archive root is not a directory");
        }
        let fs_magic = fs
            .fs_magic(root)
            .context("cannot statfs the archive root")?;
        if fs_flags::is_virtual_file_system(fs_magic) {
            bail!("refusing to back up a virtual file system");
        }
        Ok(Walker {
            fs,
            options,
            observer,
            payload: None,
            previous: None,
            patterns: options.patterns.cloned().unwrap_or_default(),
            hardlinks: HashMap::new(),
            cache: Lookahead::default(),
            last_reusable_offset: None,
            payload_rewound: 0,
            root_dev: stat.dev,
            current_dev: stat.dev,
            fs_magic,
            fs_features: fs_flags::features_of(fs_magic),
            stats: ArchiveStats::default(),
        })
    }

    fn warn(&mut self, message: &str) {
        self.stats.warnings += 1;
        log::warn!("{message}");
    }

    /// An entry that could not be read is left out of the archive, with one warning.
    fn leave_out(&mut self, path: &Path, reason: impl std::fmt::Display) {
        self.stats.left_out += 1;
        self.warn(&format!("{path:?} left out: {reason}"));
    }

    fn root_metadata(&mut self) -> Result<Metadata> {
        let root = Path::new("");
        let stat = self.fs.lstat(root)?;
        self.metadata(root, &stat)
            .context("failed to read the root's metadata")
    }

    /// Archives the entries of `dir`, whose names were listed already.
    fn archive_dir_contents<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        dir: &Path,
        names: Vec<Vec<u8>>,
        is_root: bool,
    ) -> Result<()> {
        let cli_patterns = self.patterns.len();
        self.read_pxarexclude(dir);
        let result = self.archive_list(encoder, dir, names, is_root);
        self.patterns.truncate(cli_patterns);
        result?;
        if is_root && !encoder.is_split() && self.patterns.has_cli_patterns() {
            self.add_pxarexclude_cli(encoder)?;
        }
        Ok(())
    }

    fn archive_list<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        dir: &Path,
        names: Vec<Vec<u8>>,
        is_root: bool,
    ) -> Result<()> {
        let list = self.directory_list(dir, names, is_root)?;
        // Without a previous snapshot every file is read: have the next ones on their way
        // from disk while this one is encoded. (With one, most are not read at all.)
        let mut read_ahead = self.previous.is_none().then(|| ReadAhead::new(&list));
        for (index, entry) in list.into_iter().enumerate() {
            if let Some(read_ahead) = read_ahead.as_mut() {
                read_ahead.advance(self.fs, index);
            }
            if let Some(on_entry) = self.options.on_entry {
                on_entry(&entry.path)?;
            }
            let path = entry.path.clone();
            self.add_entry(encoder, entry)
                .with_context(|| format!("error at {path:?}"))?;
        }
        Ok(())
    }

    /// Adds the patterns of the directory's `.pxarexclude`, if it has one.
    fn read_pxarexclude(&mut self, dir: &Path) {
        let path = join_name(dir, b".pxarexclude");
        let mut content = Vec::new();
        match self.fs.open_file(&path) {
            Ok(reader) => {
                // A pattern file is small; a huge one is not a pattern file.
                if let Err(err) = reader.take(1 << 20).read_to_end(&mut content) {
                    self.warn(&format!(
                        "ignoring .pxarexclude after read error in {dir:?}: {err}"
                    ));
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(err) if err.raw_os_error() == Some(libc::ELOOP) => return,
            Err(err) => {
                self.warn(&format!("cannot open {path:?}: {err}"));
                return;
            }
        }
        let dir_bytes = dir.as_os_str().as_bytes().to_vec();
        for problem in self.patterns.add_pxarexclude(&dir_bytes, &content) {
            self.warn(&format!("{problem} (in {dir:?})"));
        }
    }

    /// The synthetic file with the command-line patterns the official client appends to the
    /// root of a v1 archive (pxar.md §6.3).
    fn add_pxarexclude_cli<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
    ) -> Result<()> {
        let content = self.patterns.cli_text();
        let name = b".pxarexclude-cli";
        self.observer.add_file(name, content.len() as u64, 0)?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let metadata = Metadata::from_stat(Stat {
            mode: u64::from(libc::S_IFREG | 0o600),
            flags: 0,
            uid,
            gid,
            mtime: Default::default(),
        });
        encoder.add_file(&metadata, name, content.len() as u64, &mut &content[..])?;
        Ok(())
    }

    /// The entries of a directory the official client archives, in its order: sorted by
    /// raw name bytes.
    fn directory_list(
        &mut self,
        dir: &Path,
        names: Vec<Vec<u8>>,
        is_root: bool,
    ) -> Result<Vec<ListEntry>> {
        let mut list = Vec::with_capacity(names.len());
        for name in names {
            if name == b"." || name == b".." || name.is_empty() || name.contains(&b'/') {
                continue;
            }
            // Reserved for the synthetic file holding the command line's exclude patterns.
            if is_root && name == b".pxarexclude-cli" {
                continue;
            }
            let path = join_name(dir, &name);
            let stat = match self.fs.lstat(&path) {
                Ok(stat) => stat,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    self.warn(&format!("file vanished while reading directory: {path:?}"));
                    continue;
                }
                Err(err) => {
                    self.leave_out(&path, format_args!("cannot stat: {err}"));
                    continue;
                }
            };
            let mut match_path = b"/".to_vec();
            match_path.extend_from_slice(path.as_os_str().as_bytes());
            if self.patterns.is_excluded(&match_path, stat.mode) {
                continue;
            }
            if let Some(exclude) = self.options.exclude {
                if exclude.is_excluded(&match_path, stat.mode) {
                    continue;
                }
            }
            list.push(ListEntry { name, path, stat });
        }
        list.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// Decides per entry whether to encode it now or to cache it (metadata change detection;
    /// the official `add_entry`).
    fn add_entry<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        entry: ListEntry,
    ) -> Result<()> {
        let metadata = match self.metadata(&entry.path, &entry.stat) {
            Ok(metadata) => metadata,
            Err(err) if is_not_found(&err) => {
                self.warn(&format!("file vanished while reading: {:?}", entry.path));
                return Ok(());
            }
            Err(err) => {
                self.leave_out(&entry.path, format_args!("{err:#}"));
                return Ok(());
            }
        };
        if self.previous.is_none() {
            return self.encode_entry(encoder, entry, metadata, None);
        }
        if self.cache.entries.len() >= LOOKAHEAD_CACHE_SIZE {
            self.flush_cache(encoder, true)?;
        }
        if entry.stat.is_regular_file() {
            if entry.stat.nlink > 1 {
                let key = (entry.stat.dev, entry.stat.ino);
                if self.cache.hardlinks.contains(&key) {
                    // Resolved to a hardlink (or its first name) when encoded.
                    self.cache.entries.push(Cached::File(entry, metadata, None));
                    return Ok(());
                }
                self.cache.hardlinks.insert(key);
            }
            if let Some(range) = self.reusable_range(&entry, &metadata)? {
                if !self.cache.try_extend_range(&range) {
                    // Not contiguous with the cached run: settle that one first.
                    self.flush_cache(encoder, true)?;
                    self.cache.range = range.clone();
                }
                let offset = range.start - self.cache.range.start;
                self.cache
                    .entries
                    .push(Cached::File(entry, metadata, Some(offset)));
                return Ok(());
            }
            self.flush_cache(encoder, false)?;
        } else if self.cache.enabled() {
            if entry.stat.is_dir() {
                // Goes into the cache as well (see `add_directory`).
                return self.add_directory(encoder, &entry, &metadata);
            }
            self.cache.entries.push(Cached::Other(entry, metadata));
            return Ok(());
        }
        self.encode_cached(encoder, None)?;
        self.encode_entry(encoder, entry, metadata, None)
    }

    /// The payload range `[PAYLOAD header, end of data)` of the previous snapshot's copy of
    /// this file, if it is unchanged (official `is_reusable_entry`).
    fn reusable_range(
        &mut self,
        entry: &ListEntry,
        metadata: &Metadata,
    ) -> Result<Option<Range<u64>>> {
        let Some(previous) = self.previous.as_mut() else {
            return Ok(None);
        };
        let Some(file) = previous.lookup_file(&entry.name)? else {
            return Ok(None);
        };
        if file.metadata != *metadata || file.size != entry.stat.size {
            return Ok(None);
        }
        // An archive with non-increasing payload offsets cannot be referenced in order.
        if self
            .last_reusable_offset
            .is_some_and(|last| file.payload_offset <= last)
        {
            return Ok(None);
        }
        self.last_reusable_offset = Some(file.payload_offset);
        let end = file
            .payload_offset
            .checked_add(HEADER_SIZE)
            .and_then(|v| v.checked_add(file.size))
            .context("previous payload reference overflows")?;
        Ok(Some(file.payload_offset..end))
    }

    /// Ends the cached run: re-uses the previous chunks covering it if the padding they
    /// bring is small enough, otherwise encodes the cached entries normally. With
    /// `keep_last_chunk` the run's last chunk is held back for a following run.
    fn flush_cache<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        keep_last_chunk: bool,
    ) -> Result<()> {
        let range = self.cache.range.clone();
        if range.is_empty() {
            return self.encode_cached(encoder, None);
        }
        let previous = self.previous.as_ref().context("no previous archive")?;
        let run = match previous.chunks_covering(range.clone()) {
            Ok(run) if !run.chunks.is_empty() => run,
            Ok(_) => return self.encode_cached(encoder, None),
            Err(err) => {
                self.warn(&format!("cannot re-use previous chunks: {err:#}"));
                return self.encode_cached(encoder, None);
            }
        };
        let prev_last = self.cache.last_chunk.take();
        let mut padding = run.start_padding + run.end_padding;
        let total = (range.end - range.start) + padding;
        let first = run.chunks[0];
        let continues_last = prev_last.is_some_and(|last| last.same_entry_as(&first));
        if let Some(last) = prev_last.filter(|_| continues_last) {
            // The held-back chunk is this run's first: its used part is not padding.
            padding = padding.saturating_sub(last.chunk.size - last.padding);
        }
        if padding as f64 / total as f64 > CHUNK_PADDING_THRESHOLD {
            self.cache.last_chunk = prev_last;
            return self.encode_cached(encoder, None);
        }
        let mut chunks = run.chunks;
        if let Some(last) = prev_last {
            if continues_last {
                chunks[0].padding = chunks[0]
                    .padding
                    .saturating_sub(last.chunk.size - last.padding);
            } else {
                self.inject(encoder, &[last])?;
            }
        }
        let position = encoder.payload_position().context("not a split archive")?;
        let first_start = chunks[0].end_offset - chunks[0].chunk.size;
        let only_references = self.cache_reads_no_file();
        if position == HEADER_SIZE
            && first_start == 0
            && self.payload_rewound == 0
            && only_references
        {
            // The run starts with the previous stream's first chunk, which holds the same
            // start marker we wrote: re-use it instead of cutting a 16-byte chunk.
            let payload = self.payload.as_mut().context("no payload stream")?;
            if payload.absorb_start_marker()? {
                self.payload_rewound = HEADER_SIZE;
            }
        }
        let base = position - self.payload_rewound + run.start_padding;
        self.encode_cached(encoder, Some(base))?;
        if keep_last_chunk {
            self.cache.last_chunk = chunks.pop();
        }
        self.inject(encoder, &chunks)
    }

    /// True if encoding the cache with re-use writes nothing to the payload stream: every
    /// further name of a multiply-linked file resolves to a hardlink.
    fn cache_reads_no_file(&self) -> bool {
        let mut linked: HashSet<(u64, u64)> = HashSet::new();
        self.cache.entries.iter().all(|cached| match cached {
            Cached::File(entry, _, offset) => {
                let key = (entry.stat.dev, entry.stat.ino);
                if offset.is_some() {
                    linked.insert(key);
                    true
                } else {
                    linked.contains(&key) || self.hardlinks.contains_key(&key)
                }
            }
            _ => true,
        })
    }

    /// Appends previous chunks to the payload stream and moves the encoder past them.
    fn inject<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        chunks: &[ReusableChunk],
    ) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let known: Vec<KnownChunk> = chunks.iter().map(|c| c.chunk).collect();
        let size: u64 = known.iter().map(|c| c.size).sum();
        let previous_size = self.previous.as_ref().map(|p| p.payload_size());
        let ends_previous = chunks.last().map(|c| c.end_offset) == previous_size;
        self.payload
            .as_mut()
            .context("payload re-use needs a payload stream")?
            .inject(&known, ends_previous)?;
        let rewound = std::mem::take(&mut self.payload_rewound).min(size);
        encoder.advance(size - rewound)?;
        self.stats.injected_bytes += size;
        Ok(())
    }

    /// Encodes the cached entries, referencing re-used payloads at `base` + their offset, or
    /// reading every file when `base` is `None` (official `encode_entries_to_archive`).
    fn encode_cached<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        base: Option<u64>,
    ) -> Result<()> {
        if let Some(last) = self.cache.last_chunk.take() {
            self.inject(encoder, &[last])?;
        }
        let entries = std::mem::take(&mut self.cache.entries);
        self.cache.range = self.cache.range.end..self.cache.range.end;
        for cached in entries {
            match cached {
                Cached::File(entry, metadata, offset) => {
                    let payload = base.zip(offset).map(|(base, offset)| base + offset);
                    self.encode_entry(encoder, entry, metadata, payload)?;
                }
                Cached::Other(entry, metadata) => {
                    self.encode_entry(encoder, entry, metadata, None)?
                }
                Cached::DirStart(entry, metadata) => {
                    self.observer.start_directory(&entry.name)?;
                    encoder.create_directory(&entry.name, &metadata)?;
                }
                Cached::DirEnd => {
                    encoder.finish_directory()?;
                    self.observer.end_directory()?;
                }
            }
        }
        Ok(())
    }

    /// Writes one entry (official `add_entry_to_archive`); a regular file's payload is
    /// referenced at `payload_offset` if given, read otherwise.
    fn encode_entry<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        entry: ListEntry,
        metadata: Metadata,
        payload_offset: Option<u64>,
    ) -> Result<()> {
        let ListEntry { name, path, stat } = &entry;
        match stat.file_type() {
            libc::S_IFREG => self.encode_file(encoder, &entry, &metadata, payload_offset)?,
            libc::S_IFDIR => self.add_directory(encoder, &entry, &metadata)?,
            libc::S_IFSOCK => {
                self.stats.others += 1;
                self.observer.add_socket(name)?;
                encoder.add_socket(&metadata, name)?;
            }
            libc::S_IFIFO => {
                self.stats.others += 1;
                self.observer.add_fifo(name)?;
                encoder.add_fifo(&metadata, name)?;
            }
            libc::S_IFLNK => {
                let target = match self.fs.read_link(path) {
                    Ok(target) => target,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        self.warn(&format!("file vanished while reading: {path:?}"));
                        return Ok(());
                    }
                    Err(err) => {
                        self.leave_out(path, format_args!("cannot read the link: {err}"));
                        return Ok(());
                    }
                };
                self.stats.others += 1;
                self.observer.add_symlink(name)?;
                encoder.add_symlink(&metadata, name, &target)?;
            }
            libc::S_IFBLK | libc::S_IFCHR => {
                self.stats.others += 1;
                if stat.file_type() == libc::S_IFBLK {
                    self.observer.add_block_device(name)?;
                } else {
                    self.observer.add_char_device(name)?;
                }
                encoder.add_device(&metadata, name, Device::from_rdev(stat.rdev))?;
            }
            other => bail!("unknown file type {other:#o}"),
        }
        Ok(())
    }

    fn encode_file<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        entry: &ListEntry,
        metadata: &Metadata,
        payload_offset: Option<u64>,
    ) -> Result<()> {
        let ListEntry { name, path, stat } = entry;
        let key = (stat.dev, stat.ino);
        if stat.nlink > 1 {
            if let Some((target, offset)) = self.hardlinks.get(&key) {
                self.stats.hardlinks += 1;
                self.observer.add_hardlink(name)?;
                encoder.add_hardlink(name, target, *offset)?;
                return Ok(());
            }
        }
        let offset = match payload_offset {
            Some(payload_offset) => {
                self.observer.add_file(name, stat.size, stat.mtime.secs)?;
                let offset = encoder.add_payload_ref(metadata, name, stat.size, payload_offset)?;
                self.stats.reused_files += 1;
                self.stats.reused_bytes += stat.size;
                offset
            }
            None => {
                // Opened and its first bytes read before anything of it is written, so a
                // file that vanished or cannot be read is left out cleanly.
                let reader = match self.fs.open_file(path) {
                    Ok(reader) => reader,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        self.warn(&format!("file vanished while reading: {path:?}"));
                        return Ok(());
                    }
                    Err(err) => {
                        self.leave_out(path, format_args!("cannot open: {err}"));
                        return Ok(());
                    }
                };
                let mut content = match FileContent::start(reader, stat.size, path) {
                    Ok(content) => content,
                    Err(err) => {
                        self.leave_out(path, format_args!("cannot read: {err}"));
                        return Ok(());
                    }
                };
                self.observer.add_file(name, stat.size, stat.mtime.secs)?;
                if let Some(payload) = self.payload.as_mut() {
                    payload.suggest_boundary()?;
                }
                let offset = encoder.add_file(metadata, name, stat.size, &mut content)?;
                self.stats.warnings += content.warnings;
                self.stats.incomplete += u64::from(content.incomplete);
                offset
            }
        };
        self.stats.files += 1;
        if stat.nlink > 1 {
            let target = path.as_os_str().as_bytes().to_vec();
            self.hardlinks.insert(key, (target, offset));
        }
        Ok(())
    }

    /// Opens (unless the look-ahead cache holds its start), walks and closes a directory.
    fn add_directory<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        entry: &ListEntry,
        metadata: &Metadata,
    ) -> Result<()> {
        let ListEntry { name, path, stat } = entry;
        let saved = (self.fs_magic, self.fs_features, self.current_dev);
        let mut skip_contents = false;
        if stat.dev != self.current_dev {
            self.fs_magic = self.fs.fs_magic(path)?;
            self.fs_features = fs_flags::features_of(self.fs_magic);
            self.current_dev = stat.dev;
            skip_contents = fs_flags::is_virtual_file_system(self.fs_magic)
                || (!self.options.all_file_systems && stat.dev != self.root_dev);
        }
        // Listed before anything of it is written, so one that cannot be listed is left
        // out whole rather than archived as if it were empty.
        let names = if skip_contents {
            Vec::new()
        } else {
            match self.fs.read_dir(path) {
                Ok(names) => names,
                Err(err) => {
                    (self.fs_magic, self.fs_features, self.current_dev) = saved;
                    if err.kind() == io::ErrorKind::NotFound {
                        self.warn(&format!("directory vanished while reading: {path:?}"));
                    } else {
                        self.leave_out(path, format_args!("cannot list: {err}"));
                    }
                    return Ok(());
                }
            }
        };
        self.stats.directories += 1;

        if self.cache.enabled() {
            // Written when the look-ahead cache is flushed.
            self.cache
                .entries
                .push(Cached::DirStart(entry.clone(), metadata.clone()));
        } else {
            self.observer.start_directory(name)?;
            encoder.create_directory(name, metadata)?;
        }
        let result = if skip_contents {
            log::info!("skipping mount point: {path:?}");
            Ok(())
        } else {
            let entered = match self.previous.as_mut() {
                Some(previous) => previous.enter_directory(name).map(|_| true),
                None => Ok(false),
            };
            match entered {
                Ok(entered) => {
                    let result = self.archive_dir_contents(encoder, path, names, false);
                    if entered {
                        if let Some(previous) = self.previous.as_mut() {
                            previous.leave_directory();
                        }
                    }
                    result
                }
                Err(err) => Err(err),
            }
        };
        (self.fs_magic, self.fs_features, self.current_dev) = saved;
        result?;
        if !self.cache.enabled() {
            encoder.finish_directory()?;
            self.observer.end_directory()?;
        } else {
            self.cache.entries.push(Cached::DirEnd);
        }
        Ok(())
    }

    /// What the official `get_metadata` captures. Attributes, ACLs, fcaps and chattr flags
    /// only exist for regular files and directories: the official client reads them through
    /// the descriptor it opened, which for other types is an O_PATH descriptor the kernel
    /// refuses for these calls.
    fn metadata(&mut self, path: &Path, stat: &FileStat) -> Result<Metadata> {
        let mut metadata = Metadata::from_stat(Stat {
            mode: u64::from(stat.mode),
            flags: 0,
            uid: stat.uid,
            gid: stat.gid,
            mtime: stat.mtime,
        });
        if !(stat.is_dir() || stat.is_regular_file()) {
            return Ok(metadata);
        }
        let features = self.options.features & self.fs_features;
        self.read_xattrs(&mut metadata, path, features)?;
        if let Some(attr) =
            optional(self.fs.chattr_flags(path)).context("failed to read file attributes")?
        {
            metadata.stat.flags |= fs_flags::from_chattr(attr);
        }
        if fs_flags::has_fat_attributes(self.fs_magic) {
            if let Some(attr) =
                optional(self.fs.fat_attributes(path)).context("failed to read fat attributes")?
            {
                metadata.stat.flags |= fs_flags::from_fat_attr(attr);
            }
        }
        if features & feature::WITH_QUOTA_PROJID != 0
            && fs_flags::has_quota_project_ids(self.fs_magic)
        {
            let projid = optional(self.fs.quota_project_id(path))
                .context("error while reading quota project id")?;
            metadata.quota_project_id = projid.filter(|&id| id != 0);
        }
        Ok(metadata)
    }

    /// XATTR items in listing order; `security.capability` becomes FCAPS and the ACL xattrs
    /// become ACL items (both only discovered through the listing).
    fn read_xattrs(&mut self, metadata: &mut Metadata, path: &Path, features: u64) -> Result<()> {
        if features & feature::WITH_XATTRS == 0 {
            return Ok(());
        }
        let names = match self.fs.list_xattrs(path) {
            Ok(names) => names,
            Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.fs_features &= !feature::WITH_XATTRS;
                return Ok(());
            }
            Err(err) if err.raw_os_error() == Some(libc::EBADF) => return Ok(()),
            Err(err) => return Err(err).context("failed to read xattrs"),
        };
        for name in names {
            if name == XATTR_FCAPS {
                if features & feature::WITH_FCAPS != 0 {
                    match self.fs.get_xattr(path, XATTR_FCAPS) {
                        Ok(value) => metadata.fcaps = value.or(metadata.fcaps.take()),
                        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                            self.fs_features &= !feature::WITH_FCAPS
                        }
                        Err(err) if err.raw_os_error() == Some(libc::EBADF) => {}
                        Err(err) => return Err(err).context("failed to read file capabilities"),
                    }
                }
            } else if name == XATTR_ACL_ACCESS || name == XATTR_ACL_DEFAULT {
                if features & feature::WITH_ACL != 0 {
                    self.read_acls(metadata, path)?;
                }
            } else if is_archived_xattr_name(&name) {
                match self.fs.get_xattr(path, &name) {
                    Ok(Some(value)) => metadata.xattrs.push((name, value)),
                    Ok(None) => {}
                    Err(err)
                        if matches!(err.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EBADF)) => {}
                    Err(err) => {
                        return Err(err).with_context(|| {
                            format!(
                                "error reading extended attribute {:?}",
                                String::from_utf8_lossy(&name)
                            )
                        })
                    }
                }
            }
        }
        Ok(())
    }

    fn read_acls(&mut self, metadata: &mut Metadata, path: &Path) -> Result<()> {
        let Some(access) = self.read_acl_xattr(path, XATTR_ACL_ACCESS)? else {
            return Ok(());
        };
        acl::set_access_acl(&mut metadata.acl, access);
        if metadata.is_dir() {
            if let Some(default) = self.read_acl_xattr(path, XATTR_ACL_DEFAULT)? {
                acl::set_default_acl(&mut metadata.acl, default);
            }
        }
        Ok(())
    }

    /// `Ok(None)` when ACLs turned out unsupported; `Ok(Some(None))` when this ACL is absent.
    fn read_acl_xattr(
        &mut self,
        path: &Path,
        name: &[u8],
    ) -> Result<Option<Option<acl::ParsedAcl>>> {
        match self.fs.get_xattr(path, name) {
            Ok(Some(bytes)) => Ok(Some(Some(
                acl::parse_acl_xattr(&bytes).context("error while reading ACL")?,
            ))),
            Ok(None) => Ok(Some(None)),
            Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.fs_features &= !feature::WITH_ACL;
                Ok(None)
            }
            Err(err) if err.raw_os_error() == Some(libc::EBADF) => Ok(None),
            Err(err) => Err(err).context("error while reading ACL"),
        }
    }
}

/// The official client's xattr name filter (proxmox-sys `is_valid_xattr_name`).
pub fn is_archived_xattr_name(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name == b"security.NTACL"
        || name == XATTR_FCAPS
}

/// Maps "not supported here" errors to `None`.
fn optional<T>(result: io::Result<Option<T>>) -> io::Result<Option<T>> {
    match result {
        Err(err) if is_unsupported(&err) => Ok(None),
        other => other,
    }
}

/// True if the error comes from an entry that disappeared.
fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::NotFound)
    })
}

/// A regular file's content as the archive stores it: exactly its `lstat` size. A file
/// that grew while being read is cut at that size, one that shrank is padded with zeros,
/// one whose reading fails part-way gets zeros in place of the rest; each with a warning.
struct FileContent<'p, R> {
    inner: R,
    size: u64,
    /// Bytes handed out so far.
    delivered: u64,
    /// The first bytes, read by `start`; handed out first.
    head: Vec<u8>,
    head_pos: usize,
    /// The file gave out early: the rest is zeros.
    padding: bool,
    /// Whether reading on after `size` bytes was tried (to notice a file that grew).
    end_checked: bool,
    path: &'p Path,
    warnings: u64,
    /// Reading failed part-way.
    incomplete: bool,
}

impl<'p, R: Read> FileContent<'p, R> {
    /// Bytes `start` reads ahead. A file up to this size is read whole, with a look past
    /// its end, before anything of it is archived.
    const HEAD: u64 = 64 * 1024;

    /// Reads the first bytes: a file that cannot be read at all fails here, before
    /// anything of it is written, and can be left out.
    fn start(mut inner: R, size: u64, path: &'p Path) -> io::Result<Self> {
        let whole = size <= Self::HEAD;
        // One byte more than a small file has, to see whether it grew.
        let want = if whole { size + 1 } else { Self::HEAD } as usize;
        let mut head = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match inner.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        head.truncate(got);
        let mut content = FileContent {
            inner,
            size,
            delivered: 0,
            head,
            head_pos: 0,
            padding: false,
            end_checked: whole,
            path,
            warnings: 0,
            incomplete: false,
        };
        if got as u64 > size {
            content.head.truncate(size as usize);
            content.warn_grew();
        } else if (got as u64) < size.min(Self::HEAD) {
            content.padding = true;
            content.warn_shrank(got as u64);
        }
        Ok(content)
    }

    fn warn(&mut self, message: String) {
        self.warnings += 1;
        log::warn!("{message}");
    }

    fn warn_grew(&mut self) {
        let message = format!(
            "{:?} grew while being read; stored its first {} bytes",
            self.path, self.size
        );
        self.warn(message);
    }

    fn warn_shrank(&mut self, got: u64) {
        let message = format!(
            "{:?} shrank while being read; stored its first {got} bytes and {} zero bytes",
            self.path,
            self.size - got
        );
        self.warn(message);
    }

    /// All `size` bytes were handed out: a file with more to read grew.
    fn check_end(&mut self) {
        self.end_checked = true;
        let mut probe = [0u8; 1];
        if matches!(self.inner.read(&mut probe), Ok(n) if n > 0) {
            self.warn_grew();
        }
    }
}

impl<R: Read> Read for FileContent<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.size - self.delivered) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = if self.head_pos < self.head.len() {
            let n = want.min(self.head.len() - self.head_pos);
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            n
        } else if self.padding {
            buf[..want].fill(0);
            want
        } else {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    self.padding = true;
                    self.warn_shrank(self.delivered);
                    return self.read(buf);
                }
                Ok(n) => n.min(want),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => return Err(err),
                Err(err) => {
                    self.padding = true;
                    self.incomplete = true;
                    let message = format!(
                        "{:?} could not be read past byte {} ({err}); stored {} zero bytes \
                         in place of the rest",
                        self.path,
                        self.delivered,
                        self.size - self.delivered
                    );
                    self.warn(message);
                    return self.read(buf);
                }
            }
        };
        self.delivered += n as u64;
        if self.delivered == self.size && !self.end_checked && !self.padding {
            self.check_end();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backup::fs_flags::magic;
    use crate::pxar::format::*;
    use std::collections::BTreeMap;

    /// stat, content or symlink target, xattrs
    type Node = (FileStat, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

    /// An in-memory tree.
    #[derive(Default)]
    struct MemFs {
        nodes: BTreeMap<PathBuf, Node>,
        magic_by_dev: HashMap<u64, i64>,
    }

    impl MemFs {
        fn add(&mut self, path: &str, mode: u32, ino: u64, data: &[u8]) -> &mut FileStat {
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
        fn xattr(&mut self, path: &str, name: &[u8], value: &[u8]) {
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
            let data = &self.node(path)?.1;
            let start = (offset as usize).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        }
        fn read_link(&self, path: &Path) -> io::Result<Vec<u8>> {
            Ok(self.node(path)?.1.clone())
        }
        fn list_xattrs(&self, path: &Path) -> io::Result<Vec<Vec<u8>>> {
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

    /// (type, content) of every item, in stream order.
    fn items(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let header = Header::from_bytes(bytes[at..at + 16].try_into().unwrap());
            let end = at + header.full_size as usize;
            out.push((header.htype, bytes[at + 16..end].to_vec()));
            at = end;
        }
        out
    }

    fn filenames(items: &[(u64, Vec<u8>)]) -> Vec<String> {
        items
            .iter()
            .filter(|(t, _)| *t == PXAR_FILENAME)
            .map(|(_, c)| String::from_utf8_lossy(&c[..c.len() - 1]).into_owned())
            .collect()
    }

    fn encode(fs: &MemFs, options: &ArchiveOptions) -> Vec<(u64, Vec<u8>)> {
        items(&create_v1_archive(fs, Vec::new(), options, None).unwrap())
    }

    const DIR: u32 = libc::S_IFDIR | 0o755;
    const REG: u32 = libc::S_IFREG | 0o644;

    #[test]
    fn entries_are_sorted_and_hardlinks_point_at_the_first_name() {
        let mut fs = MemFs::default();
        fs.add("", DIR, 1, b"");
        fs.add("b", REG, 2, b"bee");
        fs.add("a", DIR, 3, b"");
        fs.add("a/x", REG, 4, b"shared").nlink = 2;
        fs.add("Z", libc::S_IFLNK | 0o777, 5, b"a/x");
        fs.add("c", REG, 4, b"shared").nlink = 2;
        fs.add("f", libc::S_IFIFO | 0o600, 6, b"");
        fs.add("s", libc::S_IFSOCK | 0o755, 7, b"");
        fs.add("dev", libc::S_IFBLK | 0o660, 8, b"").rdev = join_dev(8, 17);
        fs.add(".pxarexclude-cli", REG, 9, b"ignored");
        let items = encode(&fs, &ArchiveOptions::default());
        assert_eq!(
            filenames(&items),
            ["Z", "a", "x", "b", "c", "dev", "f", "s"]
        );
        let hardlink = items.iter().find(|(t, _)| *t == PXAR_HARDLINK).unwrap();
        assert_eq!(&hardlink.1[8..], b"a/x\0");
        let symlink = items.iter().find(|(t, _)| *t == PXAR_SYMLINK).unwrap();
        assert_eq!(symlink.1, b"a/x\0");
        let device = items.iter().find(|(t, _)| *t == PXAR_DEVICE).unwrap();
        assert_eq!(device.1, [8u64.to_le_bytes(), 17u64.to_le_bytes()].concat());
        let payloads: Vec<&[u8]> = items
            .iter()
            .filter(|(t, _)| *t == PXAR_PAYLOAD)
            .map(|(_, c)| &c[..])
            .collect();
        assert_eq!(payloads, [&b"shared"[..], b"bee"]);
    }

    #[test]
    fn attributes_follow_the_official_capture_rules() {
        let mut fs = MemFs::default();
        fs.add("", DIR, 1, b"");
        fs.add("f", REG, 2, b"");
        fs.add("l", libc::S_IFLNK | 0o777, 3, b"f");
        let acl = [
            2u32.to_le_bytes().to_vec(),
            vec![2, 0, 6, 0],
            1001u32.to_le_bytes().to_vec(),
        ]
        .concat();
        for path in ["f", "l"] {
            fs.xattr(path, b"user.b", b"1");
            fs.xattr(path, b"security.selinux", b"ctx");
            fs.xattr(path, b"security.capability", b"caps");
            fs.xattr(path, b"system.posix_acl_access", &acl);
            fs.xattr(path, b"trusted.a", b"2");
        }
        let items = encode(&fs, &ArchiveOptions::default());
        let kinds: Vec<u64> = items.iter().map(|(t, _)| *t).collect();
        // f: ENTRY, 2 xattrs in listing order, ACL_USER, FCAPS, PAYLOAD; l: ENTRY, SYMLINK.
        assert_eq!(
            kinds,
            [
                PXAR_ENTRY,
                PXAR_FILENAME,
                PXAR_ENTRY,
                PXAR_XATTR,
                PXAR_XATTR,
                PXAR_ACL_USER,
                PXAR_FCAPS,
                PXAR_PAYLOAD,
                PXAR_FILENAME,
                PXAR_ENTRY,
                PXAR_SYMLINK,
                PXAR_GOODBYE
            ]
        );
        assert_eq!(items[3].1, b"user.b\x001");
        assert_eq!(items[4].1, b"trusted.a\x002");
        assert_eq!(
            items[5].1,
            [1001u64.to_le_bytes(), 6u64.to_le_bytes()].concat()
        );
        // chattr flags only for files and directories; unmapped bits dropped.
        let stat = |i: usize| Stat::from_bytes(items[i].1[..].try_into().unwrap());
        assert_eq!(stat(2).flags, flags::WITH_FLAG_IMMUTABLE);
        assert_eq!(stat(9).flags, 0);

        // tmpfs: no xattrs, ACLs or fcaps at all.
        fs.magic_by_dev.insert(1, magic::TMPFS);
        let kinds: Vec<u64> = encode(&fs, &ArchiveOptions::default())
            .iter()
            .map(|(t, _)| *t)
            .collect();
        assert!(!kinds
            .iter()
            .any(|t| [PXAR_XATTR, PXAR_ACL_USER, PXAR_FCAPS].contains(t)));
    }

    #[test]
    fn other_file_systems_are_recorded_but_not_entered() {
        let mut fs = MemFs::default();
        fs.add("", DIR, 1, b"");
        fs.add("mnt", DIR, 2, b"").dev = 2;
        fs.add("mnt/inner", REG, 3, b"x").dev = 2;
        fs.add("proc", DIR, 4, b"").dev = 3;
        fs.add("proc/self", REG, 5, b"x").dev = 3;
        fs.magic_by_dev.insert(3, 0x9fa0);
        assert_eq!(
            filenames(&encode(&fs, &ArchiveOptions::default())),
            ["mnt", "proc"]
        );
        let all = ArchiveOptions {
            all_file_systems: true,
            ..Default::default()
        };
        assert_eq!(filenames(&encode(&fs, &all)), ["mnt", "inner", "proc"]);
    }

    #[test]
    fn excluded_entries_are_left_out() {
        struct NoTmp;
        impl ExcludeFilter for NoTmp {
            fn is_excluded(&self, path: &[u8], _mode: u32) -> bool {
                path.ends_with(b".tmp")
            }
        }
        let mut fs = MemFs::default();
        fs.add("", DIR, 1, b"");
        fs.add("d", DIR, 2, b"");
        fs.add("d/a.tmp", REG, 3, b"");
        fs.add("d/b", REG, 4, b"");
        let options = ArchiveOptions {
            exclude: Some(&NoTmp),
            ..Default::default()
        };
        assert_eq!(filenames(&encode(&fs, &options)), ["d", "b"]);
    }

    /// Reads a `FileContent` of `size` over `data` to the end.
    fn content_of(data: &[u8], size: u64) -> (Vec<u8>, u64) {
        let mut content = FileContent::start(data, size, Path::new("f")).unwrap();
        let mut out = Vec::new();
        content.read_to_end(&mut out).unwrap();
        (out, content.warnings)
    }

    #[test]
    fn file_content_pads_and_cuts_with_a_warning() {
        // Small files (read whole by `start`) and big ones (read on after the head).
        for len in [3usize, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8 | 1).collect();
            let size = len as u64;
            assert_eq!(content_of(&data, size), (data.clone(), 0));
            // Shrank: padded.
            let mut padded = data[..len - 1].to_vec();
            padded.push(0);
            assert_eq!(content_of(&data[..len - 1], size), (padded, 1));
            // Grew: cut, and said so.
            let mut grown = data.clone();
            grown.push(7);
            assert_eq!(content_of(&grown, size), (data.clone(), 1));
        }
        assert_eq!(content_of(b"", 0), (Vec::new(), 0));
        assert_eq!(content_of(b"x", 0), (Vec::new(), 1));
    }

    #[test]
    fn file_content_fails_early_or_pads_after_a_read_error() {
        /// `good` bytes, then errors.
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let path = Path::new("f");
        // Nothing readable: `start` fails, the caller leaves the file out.
        assert!(FileContent::start(Failing(0), 10, path).is_err());
        assert!(FileContent::start(Failing(5), 10, path).is_err());
        // Failing after the head: the rest is zeros and the file is marked incomplete.
        let size = 3 * FileContent::<Failing>::HEAD;
        let good = 2 * FileContent::<Failing>::HEAD as usize;
        let mut content = FileContent::start(Failing(good), size, path).unwrap();
        let mut out = Vec::new();
        content.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, size);
        assert!(out[..good].iter().all(|&b| b == 1));
        assert!(out[good..].iter().all(|&b| b == 0));
        assert!(content.incomplete);
        assert_eq!(content.warnings, 1);
    }

    #[test]
    fn xattr_name_filter_matches_the_official_one() {
        assert!(is_archived_xattr_name(b"user.comment"));
        assert!(is_archived_xattr_name(b"trusted.x"));
        assert!(is_archived_xattr_name(b"security.NTACL"));
        assert!(!is_archived_xattr_name(b"security.selinux"));
        assert!(!is_archived_xattr_name(b"system.posix_acl_access"));
        assert!(!is_archived_xattr_name(&[b'u'; 256]));
    }
}
