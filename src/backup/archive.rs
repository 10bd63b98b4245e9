//! Walks a directory tree through a [`FileSystemAccessor`] and encodes it the way
//! `proxmox-backup-client backup` / `pxar create` do by default (PBS4
//! pbs-client/src/pxar/create.rs; pxar.md §6): same entries, same order, same metadata, so
//! the archive is byte-identical to the official one.
//!
//! Not yet handled: `.pxarexclude` files and exclude patterns (the [`ExcludeFilter`] hook
//! is where they plug in; with patterns the official client also writes `.pxarexclude-cli`
//! in v1 or a PRELUDE in v2), reusing payloads of a previous snapshot, and the entry limit.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::acl::{self, XATTR_ACL_ACCESS, XATTR_ACL_DEFAULT};
use super::fs_accessor::{is_unsupported, join_name, FileStat, FileSystemAccessor};
use super::fs_flags::{self, feature};
use crate::pxar::encoder::{Encoder, LinkOffset};
use crate::pxar::format::Stat;
use crate::pxar::metadata::{Device, Metadata};

const XATTR_FCAPS: &[u8] = b"security.capability";

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

/// How to walk. `Default` is what the official client does without options.
pub struct ArchiveOptions<'a> {
    /// Descend into mount points (`--all-file-systems`); otherwise they are archived as
    /// empty directories.
    pub all_file_systems: bool,
    /// Requested capture features ([`feature`] bits), further limited per file system.
    pub features: u64,
    pub exclude: Option<&'a dyn ExcludeFilter>,
}

impl Default for ArchiveOptions<'_> {
    fn default() -> Self {
        ArchiveOptions {
            all_file_systems: false,
            features: feature::DEFAULT,
            exclude: None,
        }
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
    let mut no_observer = NoObserver;
    let observer = observer.unwrap_or(&mut no_observer);
    let mut walker = Walker::new(fs, options, observer)?;
    let root = walker.root_metadata()?;
    let mut encoder = Encoder::new_v1(out, &root)?;
    walker.archive_dir_contents(&mut encoder, Path::new(""), true)?;
    Ok(encoder.finish()?.0)
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
    let mut no_observer = NoObserver;
    let observer = observer.unwrap_or(&mut no_observer);
    let mut walker = Walker::new(fs, options, observer)?;
    let root = walker.root_metadata()?;
    let mut encoder = Encoder::new_v2(meta_out, payload_out, &root, None)?;
    walker.archive_dir_contents(&mut encoder, Path::new(""), true)?;
    let (meta, payload) = encoder.finish()?;
    Ok((
        meta,
        payload.expect("a split encoder returns its payload sink"),
    ))
}

struct Walker<'a, 'o, A: ?Sized> {
    fs: &'a A,
    options: &'a ArchiveOptions<'a>,
    observer: &'o mut dyn ArchiveObserver,
    /// First name of each multiply-linked regular file: path and FILENAME offset.
    hardlinks: HashMap<(u64, u64), (Vec<u8>, LinkOffset)>,
    root_dev: u64,
    current_dev: u64,
    fs_magic: i64,
    /// Features the current file system supports; narrowed when it reports EOPNOTSUPP,
    /// restored when leaving the directory (as the official client does).
    fs_features: u64,
}

struct ListEntry {
    name: Vec<u8>,
    path: PathBuf,
    stat: FileStat,
}

impl<'a, 'o, A: FileSystemAccessor + ?Sized> Walker<'a, 'o, A> {
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
            hardlinks: HashMap::new(),
            root_dev: stat.dev,
            current_dev: stat.dev,
            fs_magic,
            fs_features: fs_flags::features_of(fs_magic),
        })
    }

    fn root_metadata(&mut self) -> Result<Metadata> {
        let root = Path::new("");
        let stat = self.fs.lstat(root)?;
        self.metadata(root, &stat)
            .context("failed to read the root's metadata")
    }

    fn archive_dir_contents<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        dir: &Path,
        is_root: bool,
    ) -> Result<()> {
        for entry in self.directory_list(dir, is_root)? {
            self.add_entry(encoder, &entry)
                .with_context(|| format!("error at {:?}", entry.path))?;
        }
        Ok(())
    }

    /// The entries of a directory the official client archives, in its order: sorted by
    /// raw name bytes.
    fn directory_list(&mut self, dir: &Path, is_root: bool) -> Result<Vec<ListEntry>> {
        let names = self
            .fs
            .read_dir(dir)
            .with_context(|| format!("cannot read directory {dir:?}"))?;
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
                    log_warning(&format!("file vanished while reading directory: {path:?}"));
                    continue;
                }
                Err(err) if err.raw_os_error() == Some(libc::EACCES) => {
                    log_warning(&format!("failed to stat {path:?}: access denied"));
                    continue;
                }
                Err(err) => return Err(err).with_context(|| format!("stat failed on {path:?}")),
            };
            if let Some(exclude) = self.options.exclude {
                let mut match_path = b"/".to_vec();
                match_path.extend_from_slice(path.as_os_str().as_bytes());
                if exclude.is_excluded(&match_path, stat.mode) {
                    continue;
                }
            }
            list.push(ListEntry { name, path, stat });
        }
        list.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    fn add_entry<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        entry: &ListEntry,
    ) -> Result<()> {
        let ListEntry { name, path, stat } = entry;
        // Regular files are opened first, so a file that vanished or is unreadable is skipped
        // before anything of it is written.
        let content = if stat.is_regular_file() && !self.is_known_hardlink(stat) {
            match self.fs.open_file(path) {
                Ok(reader) => Some(reader),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    log_warning(&format!("file vanished while reading: {path:?}"));
                    return Ok(());
                }
                Err(err) if err.raw_os_error() == Some(libc::EACCES) => {
                    log_warning(&format!("failed to open file {path:?}: access denied"));
                    return Ok(());
                }
                Err(err) => return Err(err.into()),
            }
        } else {
            None
        };
        let metadata = self.metadata(path, stat)?;

        match stat.file_type() {
            libc::S_IFREG => {
                let Some(content) = content else {
                    let (target, offset) = &self.hardlinks[&(stat.dev, stat.ino)];
                    self.observer.add_hardlink(name)?;
                    encoder.add_hardlink(name, target, *offset)?;
                    return Ok(());
                };
                self.observer.add_file(name, stat.size, stat.mtime.secs)?;
                let mut content = ExactSize::new(content, stat.size, path);
                let offset = encoder.add_file(&metadata, name, stat.size, &mut content)?;
                if stat.nlink > 1 {
                    let target = path.as_os_str().as_bytes().to_vec();
                    self.hardlinks
                        .insert((stat.dev, stat.ino), (target, offset));
                }
            }
            libc::S_IFDIR => self.add_directory(encoder, name, path, stat, &metadata)?,
            libc::S_IFSOCK => {
                self.observer.add_socket(name)?;
                encoder.add_socket(&metadata, name)?;
            }
            libc::S_IFIFO => {
                self.observer.add_fifo(name)?;
                encoder.add_fifo(&metadata, name)?;
            }
            libc::S_IFLNK => {
                let target = match self.fs.read_link(path) {
                    Ok(target) => target,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        log_warning(&format!("file vanished while reading: {path:?}"));
                        return Ok(());
                    }
                    Err(err) => return Err(err.into()),
                };
                self.observer.add_symlink(name)?;
                encoder.add_symlink(&metadata, name, &target)?;
            }
            libc::S_IFBLK | libc::S_IFCHR => {
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

    fn is_known_hardlink(&self, stat: &FileStat) -> bool {
        stat.nlink > 1 && self.hardlinks.contains_key(&(stat.dev, stat.ino))
    }

    fn add_directory<W: Write, P: Write>(
        &mut self,
        encoder: &mut Encoder<W, P>,
        name: &[u8],
        path: &Path,
        stat: &FileStat,
        metadata: &Metadata,
    ) -> Result<()> {
        let saved = (self.fs_magic, self.fs_features, self.current_dev);
        let mut skip_contents = false;
        if stat.dev != self.current_dev {
            self.fs_magic = self.fs.fs_magic(path)?;
            self.fs_features = fs_flags::features_of(self.fs_magic);
            self.current_dev = stat.dev;
            skip_contents = fs_flags::is_virtual_file_system(self.fs_magic)
                || (!self.options.all_file_systems && stat.dev != self.root_dev);
        }

        self.observer.start_directory(name)?;
        encoder.create_directory(name, metadata)?;
        let result = if skip_contents {
            log_info(&format!("skipping mount point: {path:?}"));
            Ok(())
        } else {
            self.archive_dir_contents(encoder, path, false)
        };
        (self.fs_magic, self.fs_features, self.current_dev) = saved;
        result?;
        encoder.finish_directory()?;
        self.observer.end_directory()
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

fn log_warning(message: &str) {
    eprintln!("warning: {message}");
}

fn log_info(message: &str) {
    eprintln!("{message}");
}

/// Yields exactly `size` bytes: a file that grew is cut at its `lstat` size, one that shrank
/// is padded with zeros (as the official client does, with a warning).
struct ExactSize<'p, R> {
    inner: R,
    remaining: u64,
    inner_done: bool,
    path: &'p Path,
}

impl<'p, R: Read> ExactSize<'p, R> {
    fn new(inner: R, size: u64, path: &'p Path) -> Self {
        ExactSize {
            inner,
            remaining: size,
            inner_done: false,
            path,
        }
    }
}

impl<R: Read> Read for ExactSize<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.remaining) as usize;
        if want == 0 {
            return Ok(0);
        }
        if !self.inner_done {
            let got = self.inner.read(&mut buf[..want])?;
            if got > 0 {
                self.remaining -= got as u64;
                return Ok(got);
            }
            self.inner_done = true;
            log_warning(&format!(
                "file size shrunk while reading: {:?}, file will be padded with zeros!",
                self.path
            ));
        }
        buf[..want].fill(0);
        self.remaining -= want as u64;
        Ok(want)
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

    #[test]
    fn exact_size_pads_and_truncates() {
        let path = Path::new("f");
        let mut out = Vec::new();
        ExactSize::new(&b"abc"[..], 5, path)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"abc\0\0");
        out.clear();
        ExactSize::new(&b"abcdef"[..], 2, path)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"ab");
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
