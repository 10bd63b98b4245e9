//! Metadata capture: what the official client records of an entry (stat, xattrs, ACLs,
//! file capabilities, chattr and FAT flags, quota project id), limited to what the current
//! file system supports.

use std::io;
use std::path::Path;

use anyhow::{Context, Result};

use super::acl::{self, XATTR_ACL_ACCESS, XATTR_ACL_DEFAULT};
use super::fs_accessor::{is_unsupported, FileStat, FileSystemAccessor};
use super::fs_flags::{self, feature};
use crate::pxar::format::Stat;
use crate::pxar::metadata::Metadata;

const XATTR_FCAPS: &[u8] = b"security.capability";

/// The capture rules in force at the walker's position: the requested features, narrowed
/// to those of the file system it is in. Copied on entering a directory and put back on
/// leaving it, as the official client restores them.
#[derive(Clone, Copy)]
pub(super) struct MetadataCapture {
    /// Requested capture features ([`feature`] bits).
    requested: u64,
    fs_magic: i64,
    /// Features the current file system supports; narrowed when it reports EOPNOTSUPP.
    fs_features: u64,
}

impl MetadataCapture {
    pub(super) fn new(requested: u64, fs_magic: i64) -> Self {
        MetadataCapture {
            requested,
            fs_magic,
            fs_features: fs_flags::features_of(fs_magic),
        }
    }

    /// The walker crossed into a file system with this magic number.
    pub(super) fn enter_file_system(&mut self, fs_magic: i64) {
        self.fs_magic = fs_magic;
        self.fs_features = fs_flags::features_of(fs_magic);
    }

    pub(super) fn fs_magic(&self) -> i64 {
        self.fs_magic
    }

    /// What the official `get_metadata` captures. Attributes, ACLs, fcaps and chattr flags
    /// only exist for regular files and directories: the official client reads them through
    /// the descriptor it opened, which for other types is an O_PATH descriptor the kernel
    /// refuses for these calls.
    pub(super) fn metadata<A: FileSystemAccessor + ?Sized>(
        &mut self,
        fs: &A,
        path: &Path,
        stat: &FileStat,
    ) -> Result<Metadata> {
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
        let features = self.requested & self.fs_features;
        // First, as it opens the entry: a local accessor reads the rest through that
        // descriptor.
        if let Some(attr) =
            optional(fs.chattr_flags(path)).context("failed to read file attributes")?
        {
            metadata.stat.flags |= fs_flags::from_chattr(attr);
        }
        self.read_xattrs(fs, &mut metadata, path, features)?;
        if fs_flags::has_fat_attributes(self.fs_magic) {
            if let Some(attr) =
                optional(fs.fat_attributes(path)).context("failed to read fat attributes")?
            {
                metadata.stat.flags |= fs_flags::from_fat_attr(attr);
            }
        }
        if features & feature::WITH_QUOTA_PROJID != 0
            && fs_flags::has_quota_project_ids(self.fs_magic)
        {
            let projid = optional(fs.quota_project_id(path))
                .context("error while reading quota project id")?;
            metadata.quota_project_id = projid.filter(|&id| id != 0);
        }
        Ok(metadata)
    }

    /// The previous snapshot's metadata of an entry, if it still holds without reading
    /// anything: a directory or regular file whose inode did not change (ctime) since
    /// `unchanged_before`, with the same type, mode, owner and mtime. Every attribute
    /// change (xattrs, ACLs, file capabilities, chattr flags, project id) updates the
    /// ctime. What the current capture rules leave out is dropped.
    pub(super) fn carry_over(
        &self,
        stat: &FileStat,
        previous: &Metadata,
        unchanged_before: i64,
    ) -> Option<Metadata> {
        let same = previous.stat.mode == u64::from(stat.mode)
            && previous.stat.uid == stat.uid
            && previous.stat.gid == stat.gid
            && previous.stat.mtime == stat.mtime;
        if !same
            || !(stat.is_dir() || stat.is_regular_file())
            || stat.ctime.secs >= unchanged_before
        {
            return None;
        }
        let features = self.requested & self.fs_features;
        let mut metadata = previous.clone();
        if features & feature::WITH_XATTRS == 0 {
            metadata.xattrs.clear();
            metadata.fcaps = None;
            metadata.acl = Default::default();
        }
        if features & feature::WITH_FCAPS == 0 {
            metadata.fcaps = None;
        }
        if features & feature::WITH_ACL == 0 {
            metadata.acl = Default::default();
        }
        if features & feature::WITH_QUOTA_PROJID == 0
            || !fs_flags::has_quota_project_ids(self.fs_magic)
        {
            metadata.quota_project_id = None;
        }
        Some(metadata)
    }

    /// XATTR items in listing order; `security.capability` becomes FCAPS and the ACL xattrs
    /// become ACL items (both only discovered through the listing).
    fn read_xattrs<A: FileSystemAccessor + ?Sized>(
        &mut self,
        fs: &A,
        metadata: &mut Metadata,
        path: &Path,
        features: u64,
    ) -> Result<()> {
        if features & feature::WITH_XATTRS == 0 {
            return Ok(());
        }
        let names = match fs.list_xattrs(path) {
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
                    match fs.get_xattr(path, XATTR_FCAPS) {
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
                    self.read_acls(fs, metadata, path)?;
                }
            } else if is_archived_xattr_name(&name) {
                match fs.get_xattr(path, &name) {
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

    fn read_acls<A: FileSystemAccessor + ?Sized>(
        &mut self,
        fs: &A,
        metadata: &mut Metadata,
        path: &Path,
    ) -> Result<()> {
        let Some(access) = self.read_acl_xattr(fs, path, XATTR_ACL_ACCESS)? else {
            return Ok(());
        };
        acl::set_access_acl(&mut metadata.acl, access);
        if metadata.is_dir() {
            if let Some(default) = self.read_acl_xattr(fs, path, XATTR_ACL_DEFAULT)? {
                acl::set_default_acl(&mut metadata.acl, default);
            }
        }
        Ok(())
    }

    /// `Ok(None)` when ACLs turned out unsupported; `Ok(Some(None))` when this ACL is absent.
    fn read_acl_xattr<A: FileSystemAccessor + ?Sized>(
        &mut self,
        fs: &A,
        path: &Path,
        name: &[u8],
    ) -> Result<Option<Option<acl::ParsedAcl>>> {
        match fs.get_xattr(path, name) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
