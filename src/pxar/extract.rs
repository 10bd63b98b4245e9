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
use super::decoder::{DecodedEntry, Decoder};
use super::entry::Entry;
use super::entry::EntryKind;
use super::format::join_dev;
use super::items::{is_valid_name, ItemSource};
use super::metadata::Metadata;
use super::pattern::PatternSet;

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
    /// chown to the archived owner (needs root).
    pub restore_owner: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            overwrite: false,
            allow_existing_dirs: false,
            patterns: Vec::new(),
            restore_owner: true,
        }
    }
}

/// What an extraction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub bytes: u64,
}

/// A directory on the way down: created lazily, finished (metadata) when left.
struct OpenDir {
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
/// links to the same target become hardlinks of that copy.
pub fn extract_with_accessor<S: ItemSource>(
    decoder: &mut Decoder<S>,
    accessor: Option<&Accessor>,
    target: &Path,
    options: &ExtractOptions,
) -> anyhow::Result<ExtractStats> {
    // Hardlink target path → path of the copy made in its place.
    let mut copied_targets: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let patterns = PatternSet::new(&options.patterns);
    let mut stats = ExtractStats::default();
    let root = decoder.next_entry()?.context("archive has no root entry")?;
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let root_fd = open_dir_path(target).with_context(|| format!("opening {}", target.display()))?;
    let mut stack = vec![OpenDir {
        name: Vec::new(),
        metadata: root.entry.metadata,
        fd: Some(root_fd),
        matched: patterns.is_empty(),
    }];
    let mut buffer = vec![0u8; 1 << 20];
    while let Some(item) = decoder.next_entry()? {
        let DecodedEntry { path, depth, entry } = item;
        if depth == 0 || depth > stack.len() {
            bail!("entry {} out of tree order", show(&path));
        }
        while stack.len() > depth {
            let dir = stack.pop().unwrap();
            finish_dir(dir, false, options)
                .with_context(|| format!("restoring {}", show(&path)))?;
        }
        let selected = stack[depth - 1].matched || patterns.matches(&path);
        if let EntryKind::Directory = entry.kind {
            stack.push(OpenDir {
                name: entry.name,
                metadata: entry.metadata,
                fd: None,
                matched: selected,
            });
            if selected {
                materialize(&mut stack, options)
                    .with_context(|| format!("creating {}", show(&path)))?;
                stats.entries += 1;
            }
            continue;
        }
        if !selected {
            continue;
        }
        materialize(&mut stack, options)
            .with_context(|| format!("creating parents of {}", show(&path)))?;
        let parent = stack[depth - 1].fd.as_ref().unwrap().as_raw_fd();
        let root = stack[0].fd.as_ref().unwrap().as_raw_fd();
        let name = c_name(&entry.name)?;
        let what = || format!("extracting {}", show(&path));
        match &entry.kind {
            EntryKind::File { .. } => {
                let fd = replacing(parent, &name, options, || {
                    open_at(
                        parent,
                        &name,
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                        0o600,
                    )
                })
                .with_context(what)?;
                let mut file = File::from(fd);
                stats.bytes +=
                    write_contents(decoder, &mut file, &mut buffer).with_context(what)?;
                apply_to_fd(file.as_raw_fd(), &entry.metadata, false, options)
                    .with_context(what)?;
            }
            EntryKind::Symlink { target } => {
                let target = CString::new(target.clone()).context("symlink target with NUL")?;
                replacing(parent, &name, options, || {
                    cvt(unsafe { libc::symlinkat(target.as_ptr(), parent, name.as_ptr()) })
                })
                .with_context(what)?;
                apply_to_node(parent, &name, &entry.metadata, true, options).with_context(what)?;
            }
            EntryKind::Hardlink { target_path, .. } => {
                let link_to = copied_targets.get(target_path).unwrap_or(target_path);
                match link_at(root, link_to, parent, &name, options) {
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) && accessor.is_some() => {
                        let accessor = accessor.unwrap();
                        stats.bytes += copy_link_target(accessor, &entry, parent, &name, options)
                            .with_context(what)?;
                        copied_targets.insert(target_path.clone(), path.clone());
                    }
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                        return Err(err).with_context(|| {
                            format!(
                                "hardlink {}: target {} was not extracted",
                                show(&path),
                                show(target_path)
                            )
                        });
                    }
                    other => other.with_context(what)?,
                }
            }
            EntryKind::Device { major, minor } => {
                let kind = entry.metadata.stat.mode as libc::mode_t & libc::S_IFMT;
                make_node(parent, &name, kind, join_dev(*major, *minor), options)
                    .with_context(what)?;
                apply_to_node(parent, &name, &entry.metadata, false, options).with_context(what)?;
            }
            EntryKind::Fifo | EntryKind::Socket => {
                let kind = if entry.kind == EntryKind::Fifo {
                    libc::S_IFIFO
                } else {
                    libc::S_IFSOCK
                };
                make_node(parent, &name, kind, 0, options).with_context(what)?;
                apply_to_node(parent, &name, &entry.metadata, false, options).with_context(what)?;
            }
            EntryKind::Directory => unreachable!("handled above"),
        }
        stats.entries += 1;
    }
    while let Some(dir) = stack.pop() {
        let is_root = stack.is_empty();
        finish_dir(dir, is_root, options).context("restoring directory metadata")?;
    }
    Ok(stats)
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

/// Restores a directory's metadata once its contents are in place (so its mtime and a
/// read-only mode stick). The target itself only takes the root's metadata when the whole
/// archive is extracted.
fn finish_dir(dir: OpenDir, is_root: bool, options: &ExtractOptions) -> io::Result<()> {
    match &dir.fd {
        Some(fd) if dir.matched || !is_root => {
            apply_to_fd(fd.as_raw_fd(), &dir.metadata, true, options)
        }
        _ => Ok(()),
    }
}

/// Copies the decoder's current file into `file`, leaving holes for zero blocks.
fn write_contents<S: ItemSource>(
    decoder: &mut Decoder<S>,
    file: &mut File,
    buffer: &mut [u8],
) -> anyhow::Result<u64> {
    const BLOCK: usize = 4096;
    let mut total = 0u64;
    loop {
        let n = decoder.read_contents(buffer)?;
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

/// Restores metadata through an open descriptor (files, directories), in the order that
/// keeps everything: owner first (chown drops setuid and capabilities), mode after the
/// ACLs, mtime last.
fn apply_to_fd(
    fd: RawFd,
    meta: &Metadata,
    is_dir: bool,
    options: &ExtractOptions,
) -> io::Result<()> {
    let stat = &meta.stat;
    if options.restore_owner {
        cvt(unsafe { libc::fchown(fd, stat.uid, stat.gid) })?;
    }
    for (name, value) in attribute_xattrs(meta, is_dir) {
        let name = CString::new(name).map_err(io::Error::other)?;
        cvt(unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })?;
    }
    cvt(unsafe { libc::fchmod(fd, (stat.mode & 0o7777) as libc::mode_t) })?;
    let times = mtime_spec(meta);
    cvt(unsafe { libc::futimens(fd, times.as_ptr()) })?;
    Ok(())
}

/// Restores metadata of a node that cannot be opened for writing (symlink, device, fifo,
/// socket) by name relative to its parent, never following a final symlink.
fn apply_to_node(
    parent: RawFd,
    name: &CString,
    meta: &Metadata,
    is_symlink: bool,
    options: &ExtractOptions,
) -> io::Result<()> {
    let stat = &meta.stat;
    if options.restore_owner {
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
        cvt(unsafe {
            libc::fchmodat(
                parent,
                name.as_ptr(),
                (stat.mode & 0o7777) as libc::mode_t,
                0,
            )
        })?;
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

/// Writes a hardlink's target file (read through the accessor) in place of the link.
fn copy_link_target(
    accessor: &Accessor,
    link: &Entry,
    parent: RawFd,
    name: &CString,
    options: &ExtractOptions,
) -> anyhow::Result<u64> {
    let file = accessor.follow_hardlink(link)?;
    let fd = replacing(parent, name, options, || {
        open_at(
            parent,
            name,
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
            0o600,
        )
    })?;
    let mut out = File::from(fd);
    let mut buffer = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = accessor.read_file(&file, offset, &mut buffer)?;
        if n == 0 {
            break;
        }
        out.write_all(&buffer[..n])?;
        offset += n as u64;
    }
    apply_to_fd(out.as_raw_fd(), &file.metadata, false, options)?;
    Ok(offset)
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
