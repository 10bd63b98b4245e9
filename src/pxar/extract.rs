//! Extracting an archive (or the entries matching patterns) into a directory, recreating
//! contents, owners, modes, mtimes (ns), xattrs, ACLs, file capabilities, devices, fifos,
//! sockets, symlinks and hardlinks.
//!
//! Safety against hostile archives: names are single validated components (the decoder
//! refuses `/`, `.`, `..`, NUL), and every file system operation is relative to an open
//! directory descriptor (`*at` calls, `O_NOFOLLOW`), so nothing is created or followed
//! outside the target even if the archive plants symlinks. Existing files are only replaced
//! with `overwrite`; directories are never replaced.
//!
//! Not restored: chattr flags and quota project ids (as with the official tools without
//! the matching file system features).

mod apply_meta;
mod options;
mod safe_fs;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};

use super::accessor::Accessor;
use super::decode_error::DecodeError;
use super::decoder::{DecodedEntry, Decoder};
use super::entry::Entry;
use super::entry::EntryKind;
use super::format::join_dev;
use super::items::ItemSource;
use super::metadata::Metadata;
use super::pattern::PatternSet;
use super::table_walk::TableWalk;
pub use options::{ExtractOptions, ExtractStats, Failure};
use safe_fs::{
    c_name, cvt, link_at, make_dir, make_node, open_dir_path, replacing, show, TempFile,
};

/// A directory on the way down: created lazily, finished (metadata) when left.
struct OpenDir {
    path: Vec<u8>,
    name: Vec<u8>,
    metadata: Metadata,
    /// Created (or reused) on disk.
    fd: Option<OwnedFd>,
    /// Matched by a pattern itself or through an ancestor: its children are selected.
    matched: bool,
}

/// Extracts what `decoder` yields into `target` (created if missing).
///
/// A hardlink whose target was not selected by the patterns is an error here; see
/// [`extract_with_accessor`].
pub fn extract<S: ItemSource>(
    decoder: &mut Decoder<S>,
    target: &Path,
    options: &ExtractOptions,
) -> anyhow::Result<ExtractStats> {
    extract_with_accessor(decoder, None, target, options)
}

/// [`extract`], with random access to the same archive: a hardlink whose target was not
/// extracted gets the target's contents and metadata copied from the archive, and later
/// links to the same target become hardlinks of that copy. With `ignore_errors`, the
/// accessor also lets the extraction go on behind unreadable metadata (see [`TableWalk`]).
///
/// Regular files are written under a temporary name in their directory and renamed once
/// complete with their metadata: a failed extraction leaves no partial file under a real name.
pub fn extract_with_accessor<S: ItemSource>(
    decoder: &mut Decoder<S>,
    accessor: Option<&Accessor>,
    target: &Path,
    options: &ExtractOptions,
) -> anyhow::Result<ExtractStats> {
    let root = decoder.next_entry()?.context("archive has no root entry")?;
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let root_fd = open_dir_path(target).with_context(|| format!("opening {}", target.display()))?;
    let patterns = PatternSet::new(&options.patterns)?;
    let mut extractor = Extractor {
        options,
        accessor,
        stats: ExtractStats::default(),
        copied_targets: HashMap::new(),
        buffer: vec![0u8; 1 << 20],
        stack: vec![OpenDir {
            path: Vec::new(),
            name: Vec::new(),
            metadata: root.entry.metadata,
            fd: Some(root_fd),
            matched: patterns.is_empty(),
        }],
        patterns,
    };
    let mut input = Input::Decoder(decoder);
    // FILENAME offset of the last entry decoded: where a table walk takes over.
    let mut last_offset = 0;
    loop {
        let item = match input.next_entry() {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(err) => match (&input, accessor) {
                (Input::Decoder(_), Some(accessor)) if options.ignore_errors => {
                    input = Input::Walk(Box::new(
                        TableWalk::after(accessor, last_offset).map_err(|_| err)?,
                    ));
                    continue;
                }
                _ => return Err(err.into()),
            },
        };
        extractor.note_unreadable(&mut input);
        last_offset = item.entry.filename_offset.unwrap_or(last_offset);
        if item.depth == 0 || item.depth > extractor.stack.len() {
            bail!("entry {} out of tree order", show(&item.path));
        }
        extractor.leave_dirs(item.depth)?;
        extractor.entry(item, &mut input)?;
    }
    extractor.note_unreadable(&mut input);
    extractor.leave_dirs(0)?;
    Ok(extractor.stats)
}

/// Where entries and file contents come from: the sequential decoder, or (after it stopped
/// in unreadable metadata) a walk through the goodbye tables.
enum Input<'a, S> {
    Decoder(&'a mut Decoder<S>),
    Walk(Box<TableWalk<'a>>),
}

impl<S: ItemSource> Input<'_, S> {
    fn next_entry(&mut self) -> Result<Option<DecodedEntry>, DecodeError> {
        match self {
            Input::Decoder(decoder) => decoder.next_entry(),
            Input::Walk(walk) => Ok(walk.next_entry()),
        }
    }

    fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, DecodeError> {
        match self {
            Input::Decoder(decoder) => decoder.read_contents(buf),
            Input::Walk(walk) => walk.read_contents(buf),
        }
    }
}

struct Extractor<'a> {
    options: &'a ExtractOptions,
    accessor: Option<&'a Accessor>,
    patterns: PatternSet,
    stats: ExtractStats,
    /// Hardlink target path → path of the copy made in its place.
    copied_targets: HashMap<Vec<u8>, Vec<u8>>,
    buffer: Vec<u8>,
    /// The directories from the root down to the current entry's parent.
    stack: Vec<OpenDir>,
}

impl Extractor<'_> {
    /// With `ignore_errors` records the failure; otherwise it is the extraction's error.
    fn check(&mut self, path: &[u8], result: anyhow::Result<()>) -> anyhow::Result<()> {
        match result {
            Err(err) if self.options.ignore_errors => {
                self.failed(path, err);
                Ok(())
            }
            other => other,
        }
    }

    fn failed(&mut self, path: &[u8], error: anyhow::Error) {
        self.stats.failed.push(Failure {
            path: show(path),
            error,
        });
    }

    /// Records the entries a table walk found but could not decode.
    fn note_unreadable<S>(&mut self, input: &mut Input<'_, S>) {
        if let Input::Walk(walk) = input {
            for lost in walk.take_unreadable() {
                let path = show(&lost.path);
                let error = anyhow::Error::new(lost.error).context(format!("cannot read {path}"));
                self.failed(&lost.path, error);
            }
        }
    }

    /// Finishes the directories below `depth` (restores their metadata).
    fn leave_dirs(&mut self, depth: usize) -> anyhow::Result<()> {
        while self.stack.len() > depth {
            let dir = self.stack.pop().unwrap();
            let path = dir.path.clone();
            let result = self.finish_dir(dir).with_context(|| {
                format!("restoring the metadata of directory {}", show_dir(&path))
            });
            self.check(&path, result)?;
        }
        Ok(())
    }

    /// Restores a directory's metadata once its contents are in place (so its mtime and a
    /// read-only mode stick). The target itself only takes the root's metadata when the
    /// whole archive is extracted.
    fn finish_dir(&mut self, dir: OpenDir) -> io::Result<()> {
        let is_root = self.stack.is_empty();
        match &dir.fd {
            Some(fd) if dir.matched || !is_root => {
                self.apply_to_fd(fd.as_raw_fd(), &dir.metadata, true)
            }
            _ => Ok(()),
        }
    }

    fn entry<S: ItemSource>(
        &mut self,
        item: DecodedEntry,
        input: &mut Input<'_, S>,
    ) -> anyhow::Result<()> {
        let DecodedEntry { path, depth, entry } = item;
        let mode = entry.metadata.stat.mode as u32;
        let selected = self
            .patterns
            .selects(&path, mode, self.stack[depth - 1].matched);
        if let EntryKind::Directory = entry.kind {
            self.stack.push(OpenDir {
                path: path.clone(),
                name: entry.name,
                metadata: entry.metadata,
                fd: None,
                matched: selected,
            });
            if selected {
                let result = materialize(&mut self.stack, self.options)
                    .with_context(|| format!("creating {}", show(&path)));
                if result.is_ok() {
                    self.entry_done();
                }
                self.check(&path, result)?;
            }
            return Ok(());
        }
        if !selected {
            return Ok(());
        }
        let result = self.non_dir(&path, depth, &entry, input);
        if result.is_ok() {
            self.entry_done();
        }
        self.check(&path, result)
    }

    fn entry_done(&mut self) {
        self.stats.entries += 1;
        self.options.entries_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Creates anything but a directory, with its metadata.
    fn non_dir<S: ItemSource>(
        &mut self,
        path: &[u8],
        depth: usize,
        entry: &Entry,
        input: &mut Input<'_, S>,
    ) -> anyhow::Result<()> {
        materialize(&mut self.stack, self.options)
            .with_context(|| format!("creating the directories of {}", show(path)))?;
        let parent = self.stack[depth - 1].fd.as_ref().unwrap().as_raw_fd();
        let root = self.stack[0].fd.as_ref().unwrap().as_raw_fd();
        let name = c_name(&entry.name)?;
        let what = || format!("extracting {}", show(path));
        match &entry.kind {
            EntryKind::File { .. } => {
                let mut file = TempFile::create(parent, &name, self.options).with_context(what)?;
                let mut buffer = std::mem::take(&mut self.buffer);
                let written = write_contents(
                    |buf| input.read_contents(buf),
                    &mut file.file,
                    &mut buffer,
                    &self.options.bytes_written,
                );
                self.buffer = buffer;
                self.stats.bytes += written.with_context(what)?;
                self.apply_to_fd(file.file.as_raw_fd(), &entry.metadata, false)
                    .with_context(what)?;
                file.commit(self.options).with_context(what)?;
            }
            EntryKind::Symlink { target } => {
                let target = CString::new(target.clone()).context("symlink target with NUL")?;
                replacing(parent, &name, self.options, || {
                    cvt(unsafe { libc::symlinkat(target.as_ptr(), parent, name.as_ptr()) })
                })
                .with_context(what)?;
                self.apply_to_node(parent, &name, &entry.metadata, true)
                    .with_context(what)?;
            }
            EntryKind::Hardlink { target_path, .. } => {
                let link_to = self.copied_targets.get(target_path).unwrap_or(target_path);
                match link_at(root, link_to, parent, &name, self.options) {
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                        let Some(accessor) = self.accessor else {
                            return Err(err).with_context(|| {
                                format!(
                                    "hardlink {}: target {} was not extracted",
                                    show(path),
                                    show(target_path)
                                )
                            });
                        };
                        self.stats.bytes += self
                            .copy_link_target(accessor, entry, parent, &name)
                            .with_context(|| {
                            format!(
                                "extracting {} (a copy of its hardlink target {})",
                                show(path),
                                show(target_path)
                            )
                        })?;
                        self.copied_targets
                            .insert(target_path.clone(), path.to_vec());
                    }
                    other => other.with_context(what)?,
                }
            }
            EntryKind::Device { major, minor } => {
                let kind = entry.metadata.stat.mode as libc::mode_t & libc::S_IFMT;
                make_node(parent, &name, kind, join_dev(*major, *minor), self.options)
                    .with_context(what)?;
                self.apply_to_node(parent, &name, &entry.metadata, false)
                    .with_context(what)?;
            }
            EntryKind::Fifo | EntryKind::Socket => {
                let kind = if entry.kind == EntryKind::Fifo {
                    libc::S_IFIFO
                } else {
                    libc::S_IFSOCK
                };
                make_node(parent, &name, kind, 0, self.options).with_context(what)?;
                self.apply_to_node(parent, &name, &entry.metadata, false)
                    .with_context(what)?;
            }
            EntryKind::Directory => unreachable!("handled by the caller"),
        }
        Ok(())
    }

    /// Writes a hardlink's target file (read through the accessor) in place of the link.
    fn copy_link_target(
        &mut self,
        accessor: &Accessor,
        link: &Entry,
        parent: RawFd,
        name: &CString,
    ) -> anyhow::Result<u64> {
        let target = accessor.follow_hardlink(link)?;
        let mut file = TempFile::create(parent, name, self.options)?;
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut offset = 0u64;
        let written = write_contents(
            |buf| {
                let n = accessor.read_file(&target, offset, buf)?;
                offset += n as u64;
                Ok(n)
            },
            &mut file.file,
            &mut buffer,
            &self.options.bytes_written,
        );
        self.buffer = buffer;
        let written = written?;
        self.apply_to_fd(file.file.as_raw_fd(), &target.metadata, false)?;
        file.commit(self.options)?;
        Ok(written)
    }
}

/// Copies a file's contents from `read` into `file`, leaving holes for zero blocks.
fn write_contents(
    mut read: impl FnMut(&mut [u8]) -> Result<usize, DecodeError>,
    file: &mut File,
    buffer: &mut [u8],
    progress: &AtomicU64,
) -> anyhow::Result<u64> {
    const BLOCK: usize = 4096;
    let mut total = 0u64;
    loop {
        let n = read(buffer)?;
        if n == 0 {
            break;
        }
        for block in buffer[..n].chunks(BLOCK) {
            if block.len() == BLOCK && block.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(BLOCK as i64))?;
            } else {
                file.write_all(block)?;
            }
        }
        total += n as u64;
        progress.fetch_add(n as u64, Ordering::Relaxed);
    }
    file.set_len(total)?;
    Ok(total)
}

fn show_dir(path: &[u8]) -> String {
    if path.is_empty() {
        ".".into()
    } else {
        show(path)
    }
}

/// Creates (or, if allowed, reuses) every selected directory on the stack not created yet.
fn materialize(stack: &mut [OpenDir], options: &ExtractOptions) -> io::Result<()> {
    for i in 1..stack.len() {
        if stack[i].fd.is_none() {
            let parent = stack[i - 1].fd.as_ref().unwrap().as_raw_fd();
            stack[i].fd = Some(make_dir(parent, &stack[i].name, options)?);
        }
    }
    Ok(())
}
