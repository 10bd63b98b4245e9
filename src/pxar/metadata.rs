//! An entry's metadata as pxar stores it (pxar.md §3, §5): the ENTRY stat plus the attribute
//! items that follow it. Plain data shared by the encoder and the reader.

use super::format::{mode, Stat};

/// Everything stored between an entry's ENTRY item and its terminating item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub stat: Stat,
    /// XATTR items as (name, value), in archive order (the order `flistxattr` returned).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub acl: Acl,
    /// Raw `security.capability` value (FCAPS item).
    pub fcaps: Option<Vec<u8>>,
    /// QUOTA_PROJID item.
    pub quota_project_id: Option<u64>,
}

impl Metadata {
    /// Metadata with only a stat; attributes empty.
    pub fn from_stat(stat: Stat) -> Self {
        Metadata {
            stat,
            ..Default::default()
        }
    }

    pub fn file_type(&self) -> u64 {
        self.stat.mode & mode::IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.stat.is_dir()
    }
    pub fn is_regular_file(&self) -> bool {
        self.stat.is_regular_file()
    }
    pub fn is_symlink(&self) -> bool {
        self.stat.is_symlink()
    }
    pub fn is_device(&self) -> bool {
        self.stat.is_device()
    }
    pub fn is_fifo(&self) -> bool {
        self.stat.is_fifo()
    }
    pub fn is_socket(&self) -> bool {
        self.stat.is_socket()
    }
}

/// A named ACL entry (ACL_USER / ACL_GROUP / ACL_DEFAULT_USER / ACL_DEFAULT_GROUP):
/// uid or gid plus permission bits (`ACL_READ | ACL_WRITE | ACL_EXECUTE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclEntry {
    pub id: u64,
    pub permissions: u64,
}

/// The ACL_DEFAULT item: the default ACL's base entries, each a permission value or
/// `ACL_NO_MASK` when absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AclDefault {
    pub user_obj: u64,
    pub group_obj: u64,
    pub other: u64,
    pub mask: u64,
}

/// POSIX ACLs as pxar stores them (pxar.md §3.9). Named-entry lists are sorted by
/// (id, permissions) by the official client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    pub users: Vec<AclEntry>,
    pub groups: Vec<AclEntry>,
    /// Real group-object permissions when the access ACL has a mask (ACL_GROUP_OBJ).
    pub group_obj: Option<u64>,
    pub default: Option<AclDefault>,
    pub default_users: Vec<AclEntry>,
    pub default_groups: Vec<AclEntry>,
}

impl Acl {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.groups.is_empty()
            && self.group_obj.is_none()
            && self.default.is_none()
            && self.default_users.is_empty()
            && self.default_groups.is_empty()
    }
}

/// A device number split the glibc way (DEVICE item).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Device {
    pub major: u64,
    pub minor: u64,
}

impl Device {
    pub fn from_rdev(rdev: u64) -> Self {
        let (major, minor) = super::format::split_dev(rdev);
        Device { major, minor }
    }

    pub fn to_rdev(self) -> u64 {
        super::format::join_dev(self.major, self.minor)
    }
}
