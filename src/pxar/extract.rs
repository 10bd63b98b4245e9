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

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use anyhow::{bail, Context};

use super::accessor::Accessor;
use super::acl;
use super::decode_error::DecodeError;
use super::decoder::{DecodedEntry, Decoder};
use super::entry::Entry;
use super::entry::EntryKind;
use super::format::join_dev;
use super::items::{is_valid_name, ItemSource};
use super::metadata::Metadata;
use super::pattern::PatternSet;
use super::table_walk::TableWalk;

/// How to extract.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Replace existing non-directories.
    pub overwrite: bool,
    /// Accept directories that already exist (and restore their metadata).
    pub allow_existing_dirs: bool,
    /// Only entries matching one of these (or inside a matching directory) are extracted,
    /// with the directories leading to them; empty selects everything.
    pub patterns: Vec<String>,
    /// chown to the archived owner (needs root). Without it, setuid and setgid are cleared
    /// on everything but directories, as GNU tar does: the bits would otherwise apply to
    /// whoever restores.
    pub restore_owner: bool,
    /// Go on past entries that cannot be read or written, and list them in
    /// [`ExtractStats::failed`], instead of stopping at the first.
    pub ignore_errors: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            overwrite: false,
            allow_existing_dirs: false,
            patterns: Vec::new(),
            restore_owner: true,
            ignore_errors: false,
        }
    }
}

/// What an extraction did.
#[derive(Debug, Default)]
pub struct ExtractStats {
    pub entries: u64,
    pub bytes: u64,
    /// Entries whose setuid/setgid bits were dropped because their owner was not restored.
    pub setid_cleared: u64,
    /// With `ignore_errors`: the entries not restored (or not completely), in archive order.
    pub failed: Vec<Failure>,
}

/// An entry that could not be restored.
#[derive(Debug)]
pub struct Failure {
    /// Path in the archive (lossy UTF-8).
    pub path: String,
    pub error: anyhow::Error,
}

/// The error's chain, which names the entry.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

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
    let patterns = PatternSet::new(&options.patterns);
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
        let selected = self.stack[depth - 1].matched || self.patterns.matches(&path);
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
                    self.stats.entries += 1;
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
            self.stats.entries += 1;
        }
        self.check(&path, result)
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
                let written =
                    write_contents(|buf| input.read_contents(buf), &mut file.file, &mut buffer);
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
        );
        self.buffer = buffer;
        let written = written?;
        self.apply_to_fd(file.file.as_raw_fd(), &target.metadata, false)?;
        file.commit(self.options)?;
        Ok(written)
    }

    /// The mode to set: the archived one, without setuid/setgid on a non-directory whose
    /// owner is not restored.
    fn mode_for(&mut self, meta: &Metadata, is_dir: bool) -> libc::mode_t {
        let mode = (meta.stat.mode & 0o7777) as libc::mode_t;
        let setid = libc::S_ISUID | libc::S_ISGID;
        if self.options.restore_owner || is_dir || mode & setid == 0 {
            return mode;
        }
        self.stats.setid_cleared += 1;
        mode & !setid
    }

    /// Restores metadata through an open descriptor (files, directories), in the order that
    /// keeps everything: owner first (chown drops setuid and capabilities), mode after the
    /// ACLs, mtime last.
    fn apply_to_fd(&mut self, fd: RawFd, meta: &Metadata, is_dir: bool) -> io::Result<()> {
        let stat = &meta.stat;
        if self.options.restore_owner {
            cvt(unsafe { libc::fchown(fd, stat.uid, stat.gid) })?;
        }
        for (name, value) in attribute_xattrs(meta, is_dir) {
            let name = CString::new(name).map_err(io::Error::other)?;
            cvt(unsafe {
                libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
            })?;
        }
        let mode = self.mode_for(meta, is_dir);
        cvt(unsafe { libc::fchmod(fd, mode) })?;
        let times = mtime_spec(meta);
        cvt(unsafe { libc::futimens(fd, times.as_ptr()) })?;
        Ok(())
    }

    /// Restores metadata of a node that cannot be opened for writing (symlink, device, fifo,
    /// socket) by name relative to its parent, never following a final symlink.
    fn apply_to_node(
        &mut self,
        parent: RawFd,
        name: &CString,
        meta: &Metadata,
        is_symlink: bool,
    ) -> io::Result<()> {
        let stat = &meta.stat;
        if self.options.restore_owner {
            cvt(unsafe {
                libc::fchownat(
                    parent,
                    name.as_ptr(),
                    stat.uid,
                    stat.gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        let xattrs = attribute_xattrs(meta, false);
        if !xattrs.is_empty() {
            // The descriptor's /proc link is followed; the final name is not.
            let mut path = format!("/proc/self/fd/{parent}/").into_bytes();
            path.extend_from_slice(name.as_bytes());
            let path = CString::new(path).map_err(io::Error::other)?;
            for (xname, value) in xattrs {
                let xname = CString::new(xname).map_err(io::Error::other)?;
                cvt(unsafe {
                    libc::lsetxattr(
                        path.as_ptr(),
                        xname.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                })?;
            }
        }
        if !is_symlink {
            let mode = self.mode_for(meta, false);
            cvt(unsafe { libc::fchmodat(parent, name.as_ptr(), mode, 0) })?;
        }
        let times = mtime_spec(meta);
        cvt(unsafe {
            libc::utimensat(
                parent,
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(())
    }
}

/// A regular file being written under a temporary name in its directory
/// (`.NAME.pbsfs-tmp-XXXXXXXX`, created exclusively); removed unless committed.
struct TempFile {
    parent: RawFd,
    temp_name: CString,
    name: CString,
    file: File,
    committed: bool,
}

const TEMP_SUFFIX: &str = ".pbsfs-tmp-";

impl TempFile {
    /// Fails early when `name` exists and may not be replaced (or is a directory).
    fn create(parent: RawFd, name: &CString, options: &ExtractOptions) -> io::Result<TempFile> {
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
    fn commit(mut self, options: &ExtractOptions) -> io::Result<()> {
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

/// Copies a file's contents from `read` into `file`, leaving holes for zero blocks.
fn write_contents(
    mut read: impl FnMut(&mut [u8]) -> Result<usize, DecodeError>,
    file: &mut File,
    buffer: &mut [u8],
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

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn c_name(name: &[u8]) -> anyhow::Result<CString> {
    if !is_valid_name(name) {
        bail!("refusing file name {:?}", show(name));
    }
    Ok(CString::new(name.to_vec())?)
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open_at(
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

fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    open_at(libc::AT_FDCWD, &path, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Runs `create`; if the name exists and `overwrite` is set, removes the old non-directory
/// and tries once more.
fn replacing<T>(
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

fn make_node(
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

/// Creates (or, if allowed, reuses) every selected directory on the stack not created yet.
fn materialize(stack: &mut [OpenDir], options: &ExtractOptions) -> io::Result<()> {
    for i in 1..stack.len() {
        if stack[i].fd.is_some() {
            continue;
        }
        let parent = stack[i - 1].fd.as_ref().unwrap().as_raw_fd();
        let name = c_name(&stack[i].name).map_err(io::Error::other)?;
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
        stack[i].fd = Some(open_at(
            parent,
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?);
    }
    Ok(())
}

/// The xattrs to set: plain ones, then ACLs (kernel format), then file capabilities.
fn attribute_xattrs(meta: &Metadata, is_dir: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = meta
        .xattrs
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if let Some(entries) = acl::access_entries(meta) {
        out.push((acl::XATTR_ACCESS.into(), acl::to_xattr(&entries)));
    }
    if is_dir {
        if let Some(entries) = acl::default_entries(meta) {
            out.push((acl::XATTR_DEFAULT.into(), acl::to_xattr(&entries)));
        }
    }
    if let Some(fcaps) = &meta.fcaps {
        out.push((b"security.capability".to_vec(), fcaps.clone()));
    }
    out
}

fn mtime_spec(meta: &Metadata) -> [libc::timespec; 2] {
    let mtime = libc::timespec {
        tv_sec: meta.stat.mtime.secs as libc::time_t,
        tv_nsec: meta.stat.mtime.nanos as libc::c_long,
    };
    [mtime, mtime]
}

/// Hardlinks `name` in `parent` to `path` (relative to the extraction root).
fn link_at(
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
