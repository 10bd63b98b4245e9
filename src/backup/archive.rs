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

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::archive_options::NoObserver;
pub use super::archive_options::{
    ArchiveHooks, ArchiveObserver, ArchiveOptions, ArchiveStats, EntryCallback, ExcludeFilter,
    OtherEntry,
};
use super::capture::MetadataCapture;
use super::exclude::ExcludePatterns;
use super::file_content::FileContent;
use super::fs_accessor::{join_name, FileSystemAccessor};
use super::fs_flags;
pub use super::lookahead::{ChunkRun, PreviousArchive, PreviousEntry, PreviousFile, ReusableChunk};
use super::lookahead::{Flush, Held, ListEntry, Lookahead, Offer};
use super::payload::{PlainPayload, ReusablePayload};
use super::read_ahead::ReadAhead;
use super::upload::KnownChunk;
use crate::pxar::encoder::{EncodeError, Encoder, LinkOffset};
use crate::pxar::format::{Stat, HEADER_SIZE};
use crate::pxar::metadata::{Device, Metadata};

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
    let payload_out = PlainPayload::new(payload_out);
    let (meta, payload, _) = create_archive(fs, options, hooks, |root, prelude| {
        Encoder::new_v2(meta_out, payload_out, root, prelude)
    })?;
    let payload = payload.context("a split encoder returns its payload sink")?;
    Ok((meta, payload.into_inner()))
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
    P: ReusablePayload,
{
    let mut no_observer = NoObserver;
    let observer = hooks.observer.unwrap_or(&mut no_observer);
    let mut walker = Walker::new(fs, options, observer)?;
    let root = walker.root_metadata()?;
    let prelude = walker.patterns.prelude();
    let mut encoder = start(&root, prelude.as_deref())?;
    if encoder.is_split() {
        walker.lookahead = hooks.previous.map(Lookahead::new);
    }
    // Without a previous snapshot every entry's attributes are read, not just changed ones'.
    fs.will_read_attributes(walker.lookahead.is_none());
    let root_names = fs
        .read_dir(Path::new(""))
        .context("cannot read the archive root")?;
    walker.archive_dir_contents(&mut encoder, Path::new(""), root_names, true)?;
    if walker.lookahead.is_some() {
        walker.flush_cache(&mut encoder, false)?;
    }
    let (out, payload) = encoder.finish()?;
    Ok((out, payload, walker.stats))
}

/// The walk: lists directories, captures each entry's metadata, holds unchanged files in
/// the look-ahead (metadata mode) and encodes the rest.
struct Walker<'a, 'o, 'h, A: ?Sized> {
    fs: &'a A,
    options: &'a ArchiveOptions<'a>,
    observer: &'o mut dyn ArchiveObserver,
    /// Metadata change detection: present with a previous snapshot and a split encoder.
    lookahead: Option<Lookahead<'h>>,
    patterns: ExcludePatterns,
    /// First name of each multiply-linked regular file: path and FILENAME offset.
    hardlinks: HashMap<(u64, u64), (Vec<u8>, LinkOffset)>,
    root_dev: u64,
    current_dev: u64,
    capture: MetadataCapture,
    stats: ArchiveStats,
    /// Copying a file from the previous chunks failed once (warned about once).
    copy_failed: bool,
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
            lookahead: None,
            patterns: options.patterns.cloned().unwrap_or_default(),
            hardlinks: HashMap::new(),
            root_dev: stat.dev,
            current_dev: stat.dev,
            capture: MetadataCapture::new(options.features, fs_magic),
            stats: ArchiveStats::default(),
            copy_failed: false,
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

    /// The entry's data; `None` (with a warning) when it vanished or cannot be read, and
    /// is then left out.
    fn readable<T>(&mut self, path: &Path, failed: &str, result: io::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.warn(&format!("file vanished while reading: {path:?}"));
                None
            }
            Err(err) => {
                self.leave_out(path, format_args!("{failed}: {err}"));
                None
            }
        }
    }

    fn root_metadata(&mut self) -> Result<Metadata> {
        let root = Path::new("");
        let stat = self.fs.lstat(root)?;
        self.capture
            .metadata(self.fs, root, &stat)
            .context("failed to read the root's metadata")
    }

    /// Archives the entries of `dir`, whose names were listed already.
    fn archive_dir_contents<W: Write, P: ReusablePayload>(
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

    fn archive_list<W: Write, P: ReusablePayload>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        dir: &Path,
        names: Vec<Vec<u8>>,
        is_root: bool,
    ) -> Result<()> {
        let list = self.directory_list(dir, names, is_root)?;
        let subdirs: Vec<PathBuf> = list
            .iter()
            .filter(|e| e.stat.is_dir() && e.stat.dev == self.current_dev)
            .map(|e| e.path.clone())
            .collect();
        if !subdirs.is_empty() {
            self.fs.will_list(&subdirs);
        }
        // Without a previous snapshot every file is read: have the next ones on their way
        // from disk while this one is encoded. (With one, most are not read at all.)
        let mut read_ahead = self
            .lookahead
            .is_none()
            .then(|| ReadAhead::new(list.iter().map(|e| (&e.path, &e.stat))));
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
    fn add_pxarexclude_cli<W: Write, P: ReusablePayload>(
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

    /// Decides per entry whether to encode it now or to hold it in the look-ahead (metadata
    /// change detection; the official `add_entry`).
    fn add_entry<W: Write, P: ReusablePayload>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        entry: ListEntry,
    ) -> Result<()> {
        // Metadata mode: the previous snapshot's entry of this name decides whether a file
        // is re-used, and spares reading the attributes of an inode unchanged since.
        let previous = match self.lookahead.as_mut() {
            Some(lookahead) => lookahead.previous().lookup(&entry.name)?,
            None => None,
        };
        let Some(metadata) = self.entry_metadata(&entry, previous.as_ref()) else {
            return Ok(());
        };
        let Some(lookahead) = self.lookahead.as_ref() else {
            return self.encode_entry(encoder, entry, metadata, Content::Read);
        };
        if lookahead.is_full() {
            self.flush_cache(encoder, true)?;
        }
        let lookahead = self.lookahead.as_mut().context("no look-ahead")?;
        let (entry, metadata) = if entry.stat.is_regular_file() {
            match lookahead.offer_file(entry, metadata, previous.as_ref())? {
                Offer::Held => return Ok(()),
                Offer::NewRun(entry, metadata, file) => {
                    // Not contiguous with the held run: settle that one first.
                    self.flush_cache(encoder, true)?;
                    let lookahead = self.lookahead.as_mut().context("no look-ahead")?;
                    lookahead.start_run(entry, metadata, file);
                    return Ok(());
                }
                Offer::Changed(entry, metadata) => {
                    self.flush_cache(encoder, false)?;
                    (entry, metadata)
                }
            }
        } else if lookahead.is_holding() {
            if entry.stat.is_dir() {
                // Held as well (see `add_directory`).
                return self.add_directory(encoder, &entry, &metadata);
            }
            lookahead.hold(Held::Other(entry, metadata));
            return Ok(());
        } else {
            (entry, metadata)
        };
        self.encode_held(encoder, None)?;
        self.encode_entry(encoder, entry, metadata, Content::Read)
    }

    /// The entry's metadata: the previous snapshot's where the inode did not change since
    /// that snapshot was made, captured from the file system otherwise. `None` (with a
    /// warning) for an entry that vanished or cannot be read, which is left out.
    fn entry_metadata(
        &mut self,
        entry: &ListEntry,
        previous: Option<&PreviousEntry>,
    ) -> Option<Metadata> {
        if let (Some(previous), Some(lookahead)) = (previous, self.lookahead.as_mut()) {
            let unchanged_before = lookahead.previous().unchanged_before();
            if let Some(metadata) =
                self.capture
                    .carry_over(&entry.stat, &previous.metadata, unchanged_before)
            {
                return Some(metadata);
            }
        }
        if entry.stat.is_dir() || entry.stat.is_regular_file() {
            self.stats.attributes_read += 1;
        }
        match self.capture.metadata(self.fs, &entry.path, &entry.stat) {
            Ok(metadata) => Some(metadata),
            Err(err) if is_not_found(&err) => {
                self.warn(&format!("file vanished while reading: {:?}", entry.path));
                None
            }
            Err(err) => {
                self.leave_out(&entry.path, format_args!("{err:#}"));
                None
            }
        }
    }

    /// Ends the held run as the look-ahead decides: re-using the previous chunks covering
    /// it, or encoding the held entries normally. With `keep_last_chunk` the run's last
    /// chunk is held back for a following run.
    fn flush_cache<W: Write, P: ReusablePayload>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        keep_last_chunk: bool,
    ) -> Result<()> {
        let lookahead = self.lookahead.as_mut().context("no look-ahead")?;
        let (flush, error) = lookahead.plan_flush(&self.hardlinks);
        if let Some(err) = error {
            self.warn(&format!("cannot re-use previous chunks: {err:#}"));
        }
        let Flush::Reuse(mut plan) = flush else {
            return self.encode_held(encoder, None);
        };
        if let Some(first) = plan.inject_first {
            self.inject(encoder, &[first])?;
        }
        let sink = encoder.payload_sink().context("not a split archive")?;
        if sink.position() == HEADER_SIZE && plan.starts_previous_stream {
            // Re-use the previous stream's first chunk, with its identical start marker,
            // instead of cutting a 16-byte chunk.
            sink.absorb_start_marker()?;
        }
        let base = sink.position() + plan.start_padding;
        self.encode_held(encoder, Some(base))?;
        if keep_last_chunk {
            let last = plan.chunks.pop();
            if let Some(lookahead) = self.lookahead.as_mut() {
                lookahead.keep_last_chunk(last);
            }
        }
        self.inject(encoder, &plan.chunks)
    }

    /// Appends previous chunks to the payload stream.
    fn inject<W: Write, P: ReusablePayload>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        chunks: &[ReusableChunk],
    ) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let known: Vec<KnownChunk> = chunks.iter().map(|c| c.chunk).collect();
        let ends_previous = self
            .lookahead
            .as_ref()
            .is_some_and(|l| l.ends_previous_stream(chunks));
        encoder
            .payload_sink()
            .context("payload re-use needs a split archive")?
            .inject(&known, ends_previous)?;
        self.stats.injected_bytes += known.iter().map(|c| c.size).sum::<u64>();
        Ok(())
    }

    /// Encodes the held entries, referencing re-used payloads at `base` + their offset in
    /// the run, or writing their contents anew when `base` is `None` (official
    /// `encode_entries_to_archive`): copied from the previous chunks, not read.
    fn encode_held<W: Write, P: ReusablePayload>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        base: Option<u64>,
    ) -> Result<()> {
        let Some(lookahead) = self.lookahead.as_mut() else {
            return Ok(());
        };
        let run_start = lookahead.run_start();
        let (held_back, entries) = lookahead.take_entries();
        if let Some(last) = held_back {
            self.inject(encoder, &[last])?;
        }
        for held in entries {
            match held {
                Held::File(entry, metadata, previous) => {
                    let content = match (base, previous) {
                        (Some(base), Some(file)) => {
                            Content::Reused(base + (file.payload_offset - run_start))
                        }
                        (None, Some(file)) => Content::CopiedFromPrevious(file),
                        (_, None) => Content::Read,
                    };
                    self.encode_entry(encoder, entry, metadata, content)?;
                }
                Held::Other(entry, metadata) => {
                    self.encode_entry(encoder, entry, metadata, Content::Read)?
                }
                Held::DirStart(entry, metadata) => {
                    self.observer.start_directory(&entry.name)?;
                    encoder.create_directory(&entry.name, &metadata)?;
                }
                Held::DirEnd => {
                    encoder.finish_directory()?;
                    self.observer.end_directory()?;
                }
            }
        }
        Ok(())
    }

    /// Writes one entry (official `add_entry_to_archive`); a regular file's content comes
    /// from where `content` says.
    fn encode_entry<W: Write, P: ReusablePayload>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        entry: ListEntry,
        metadata: Metadata,
        content: Content,
    ) -> Result<()> {
        let ListEntry { name, path, stat } = &entry;
        match stat.file_type() {
            libc::S_IFREG => self.encode_file(encoder, &entry, &metadata, content)?,
            libc::S_IFDIR => self.add_directory(encoder, &entry, &metadata)?,
            libc::S_IFSOCK => {
                self.stats.others += 1;
                self.observer.add_other(OtherEntry::Socket, name)?;
                encoder.add_socket(&metadata, name)?;
            }
            libc::S_IFIFO => {
                self.stats.others += 1;
                self.observer.add_other(OtherEntry::Fifo, name)?;
                encoder.add_fifo(&metadata, name)?;
            }
            libc::S_IFLNK => {
                let link = self.fs.read_link(path);
                let Some(target) = self.readable(path, "cannot read the link", link) else {
                    return Ok(());
                };
                self.stats.others += 1;
                self.observer.add_other(OtherEntry::Symlink, name)?;
                encoder.add_symlink(&metadata, name, &target)?;
            }
            libc::S_IFBLK | libc::S_IFCHR => {
                self.stats.others += 1;
                let kind = if stat.file_type() == libc::S_IFBLK {
                    OtherEntry::BlockDevice
                } else {
                    OtherEntry::CharDevice
                };
                self.observer.add_other(kind, name)?;
                encoder.add_device(&metadata, name, Device::from_rdev(stat.rdev))?;
            }
            other => bail!("unknown file type {other:#o}"),
        }
        Ok(())
    }

    fn encode_file<W: Write, P: ReusablePayload>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        entry: &ListEntry,
        metadata: &Metadata,
        content: Content,
    ) -> Result<()> {
        let ListEntry { name, path, stat } = entry;
        let key = (stat.dev, stat.ino);
        if stat.nlink > 1 {
            if let Some((target, offset)) = self.hardlinks.get(&key) {
                self.stats.hardlinks += 1;
                self.observer.add_other(OtherEntry::Hardlink, name)?;
                encoder.add_hardlink(name, target, *offset)?;
                return Ok(());
            }
        }
        let copy = match content {
            Content::CopiedFromPrevious(file) => self.previous_content(path, &file),
            _ => None,
        };
        let offset = match (content, copy) {
            (Content::Reused(payload_offset), _) => {
                self.observer.add_file(name, stat.size, stat.mtime.secs)?;
                let offset = encoder.add_payload_ref(metadata, name, stat.size, payload_offset)?;
                self.stats.reused_files += 1;
                self.stats.reused_bytes += stat.size;
                offset
            }
            (_, Some(copy)) => {
                self.observer.add_file(name, stat.size, stat.mtime.secs)?;
                let offset = encoder.add_file(metadata, name, stat.size, &mut &copy[..])?;
                self.stats.copied_files += 1;
                self.stats.copied_bytes += stat.size;
                offset
            }
            _ => {
                if matches!(content, Content::CopiedFromPrevious(_)) {
                    self.stats.reread_files += 1;
                    self.stats.reread_bytes += stat.size;
                }
                // Opened and its first bytes read before anything of it is written, so a
                // file that vanished or cannot be read is left out cleanly.
                let opened = self.fs.open_file(path);
                let Some(reader) = self.readable(path, "cannot open", opened) else {
                    return Ok(());
                };
                let mut content = match FileContent::start(reader, stat.size, path) {
                    Ok(content) => content,
                    Err(err) => {
                        self.leave_out(path, format_args!("cannot read: {err}"));
                        return Ok(());
                    }
                };
                self.observer.add_file(name, stat.size, stat.mtime.secs)?;
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

    /// An unchanged file's content from the previous snapshot's chunks, if it is small
    /// enough to hold in memory and they can be read; `None` means: read the file.
    fn previous_content(&mut self, path: &Path, file: &PreviousFile) -> Option<Vec<u8>> {
        if file.size > COPY_LIMIT {
            return None;
        }
        let lookahead = self.lookahead.as_mut()?;
        match lookahead.previous().read_content(file) {
            Ok(content) => Some(content),
            Err(err) => {
                if !self.copy_failed {
                    self.copy_failed = true;
                    self.warn(&format!(
                        "cannot copy {path:?} from the previous snapshot, reading it (and \
                         any further such file) from the disk: {err:#}"
                    ));
                }
                None
            }
        }
    }

    /// Opens (unless the look-ahead cache holds its start), walks and closes a directory.
    fn add_directory<W: Write, P: ReusablePayload>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        entry: &ListEntry,
        metadata: &Metadata,
    ) -> Result<()> {
        let ListEntry { name, path, stat } = entry;
        let saved = (self.capture, self.current_dev);
        let mut skip_contents = false;
        if stat.dev != self.current_dev {
            self.capture.enter_file_system(self.fs.fs_magic(path)?);
            self.current_dev = stat.dev;
            skip_contents = fs_flags::is_virtual_file_system(self.capture.fs_magic())
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
                    (self.capture, self.current_dev) = saved;
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

        if let Some(lookahead) = self.lookahead.as_mut().filter(|l| l.is_holding()) {
            // Written when the look-ahead is flushed.
            lookahead.hold(Held::DirStart(entry.clone(), metadata.clone()));
        } else {
            self.observer.start_directory(name)?;
            encoder.create_directory(name, metadata)?;
        }
        let result = if skip_contents {
            log::info!("skipping mount point: {path:?}");
            Ok(())
        } else {
            let entered = match self.lookahead.as_mut() {
                Some(lookahead) => lookahead.previous().enter_directory(name).map(|_| true),
                None => Ok(false),
            };
            match entered {
                Ok(entered) => {
                    let result = self.archive_dir_contents(encoder, path, names, false);
                    if entered {
                        if let Some(lookahead) = self.lookahead.as_mut() {
                            lookahead.previous().leave_directory();
                        }
                    }
                    result
                }
                Err(err) => Err(err),
            }
        };
        (self.capture, self.current_dev) = saved;
        result?;
        match self.lookahead.as_mut().filter(|l| l.is_holding()) {
            Some(lookahead) => lookahead.hold(Held::DirEnd),
            None => {
                encoder.finish_directory()?;
                self.observer.end_directory()?;
            }
        }
        Ok(())
    }
}

/// Where a regular file's content comes from.
#[derive(Clone, Copy)]
enum Content {
    /// Read from the file system.
    Read,
    /// Re-used: referenced at this offset of the new payload stream, inside previous
    /// chunks injected into it.
    Reused(u64),
    /// Unchanged, but the chunks around it are not re-used (too much padding): copied from
    /// the previous snapshot's chunks instead of opening the file.
    CopiedFromPrevious(PreviousFile),
}

/// Files up to this size are copied from the previous chunks whole (held in memory, so
/// a damaged chunk is noticed before anything is written); bigger ones are read.
const COPY_LIMIT: u64 = 8 << 20;

/// True if the error comes from an entry that disappeared.
fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::NotFound)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backup::fs_flags::magic;
    use crate::backup::mem_fs::MemFs;
    use crate::pxar::format::*;

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
}
