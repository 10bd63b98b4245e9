//! An entry's metadata as stored in a pxar archive: the ENTRY item plus the attribute items
//! that follow it (pxar.md §3, §5). Plain data shared by the encoder and the readers.

use super::format::Stat;

/// Everything an archive records about one entry besides its name and contents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    pub stat: Stat,
    /// XATTR items in archive order: (name, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub acl: Acl,
    /// Raw `security.capability` value (FCAPS item).
    pub fcaps: Option<Vec<u8>>,
    pub quota_project_id: Option<u64>,
}

/// POSIX ACLs in the pxar representation (pxar.md §3.9): the owner and other entries live in
/// the mode; `group_obj` is only present when the access ACL has a mask.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Acl {
    pub users: Vec<AclUser>,
    pub groups: Vec<AclGroup>,
    /// Permissions of the owning group when the mode's group bits hold the mask.
    pub group_obj: Option<u64>,
    pub default: Option<AclDefault>,
    pub default_users: Vec<AclUser>,
    pub default_groups: Vec<AclGroup>,
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

/// A named user entry (ACL_USER / ACL_DEFAULT_USER).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AclUser {
    pub uid: u64,
    pub permissions: u64,
}

/// A named group entry (ACL_GROUP / ACL_DEFAULT_GROUP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AclGroup {
    pub gid: u64,
    pub permissions: u64,
}

/// The ACL_DEFAULT item: the default ACL's base entries, each a permission value or
/// [`super::format::ACL_NO_MASK`] when absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclDefault {
    pub user_obj_permissions: u64,
    pub group_obj_permissions: u64,
    pub other_permissions: u64,
    pub mask_permissions: u64,
}
