//! POSIX ACLs from their kernel xattr form (`system.posix_acl_access` / `_default`) into what
//! pxar stores (pxar.md §3.9), following the official client's `process_acl`.

use thiserror::Error;

use crate::pxar::format::ACL_NO_MASK;
use crate::pxar::metadata::{Acl, AclDefault, AclEntry};

pub const XATTR_ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const XATTR_ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

const ACL_XATTR_VERSION: u32 = 2;
const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AclError {
    #[error("ACL xattr is {0} bytes, not a 4-byte header plus 8-byte entries")]
    BadLength(usize),
    #[error("ACL xattr version {0} (expected 2)")]
    BadVersion(u32),
    #[error("unexpected ACL tag {0:#x}")]
    BadTag(u16),
}

/// The entries of one ACL, split by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedAcl {
    pub user_obj: Option<u64>,
    pub group_obj: Option<u64>,
    pub other: Option<u64>,
    pub mask: Option<u64>,
    pub users: Vec<AclEntry>,
    pub groups: Vec<AclEntry>,
}

/// Parses the kernel's ACL xattr: u32 version 2, then `{u16 tag, u16 perm, u32 id}` entries.
pub fn parse_acl_xattr(bytes: &[u8]) -> Result<ParsedAcl, AclError> {
    if bytes.len() < 4 || !(bytes.len() - 4).is_multiple_of(8) {
        return Err(AclError::BadLength(bytes.len()));
    }
    let version = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    if version != ACL_XATTR_VERSION {
        return Err(AclError::BadVersion(version));
    }
    let mut acl = ParsedAcl::default();
    for entry in bytes[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let permissions = u64::from(u16::from_le_bytes([entry[2], entry[3]]) & 7);
        let id = u64::from(u32::from_le_bytes(entry[4..8].try_into().unwrap()));
        match tag {
            TAG_USER_OBJ => acl.user_obj = Some(permissions),
            TAG_GROUP_OBJ => acl.group_obj = Some(permissions),
            TAG_OTHER => acl.other = Some(permissions),
            TAG_MASK => acl.mask = Some(permissions),
            TAG_USER => acl.users.push(AclEntry { id, permissions }),
            TAG_GROUP => acl.groups.push(AclEntry { id, permissions }),
            other => return Err(AclError::BadTag(other)),
        }
    }
    acl.users.sort();
    acl.groups.sort();
    Ok(acl)
}

/// Stores an access ACL: named entries, and the group-object permissions only when a mask
/// exists (the mode's group bits then hold the mask). `None` (no xattr) stores nothing, like
/// the ACL libacl synthesises from the mode.
pub fn set_access_acl(acl: &mut Acl, parsed: Option<ParsedAcl>) {
    let parsed = parsed.unwrap_or_default();
    acl.group_obj = match (parsed.group_obj, parsed.mask) {
        (Some(group_obj), Some(_)) => Some(group_obj),
        _ => None,
    };
    acl.users = parsed.users;
    acl.groups = parsed.groups;
}

/// Stores a default ACL: ACL_DEFAULT if any base entry exists (missing ones as NO_MASK),
/// plus the named entries.
pub fn set_default_acl(acl: &mut Acl, parsed: Option<ParsedAcl>) {
    let parsed = parsed.unwrap_or_default();
    let any_base = parsed.user_obj.is_some()
        || parsed.group_obj.is_some()
        || parsed.other.is_some()
        || parsed.mask.is_some();
    acl.default = any_base.then(|| AclDefault {
        user_obj: parsed.user_obj.unwrap_or(ACL_NO_MASK),
        group_obj: parsed.group_obj.unwrap_or(ACL_NO_MASK),
        other: parsed.other.unwrap_or(ACL_NO_MASK),
        mask: parsed.mask.unwrap_or(ACL_NO_MASK),
    });
    acl.default_users = parsed.users;
    acl.default_groups = parsed.groups;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut out = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&perm.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    const NONE: u32 = u32::MAX;

    #[test]
    fn access_acl_with_mask_keeps_group_obj_and_sorts_named_entries() {
        let bytes = xattr(&[
            (TAG_USER_OBJ, 6, NONE),
            (TAG_USER, 6, 1001),
            (TAG_USER, 4, 1000),
            (TAG_GROUP_OBJ, 4, NONE),
            (TAG_GROUP, 4, 2002),
            (TAG_MASK, 6, NONE),
            (TAG_OTHER, 0, NONE),
        ]);
        let mut acl = Acl::default();
        set_access_acl(&mut acl, Some(parse_acl_xattr(&bytes).unwrap()));
        assert_eq!(
            acl.users,
            vec![
                AclEntry {
                    id: 1000,
                    permissions: 4
                },
                AclEntry {
                    id: 1001,
                    permissions: 6
                }
            ]
        );
        assert_eq!(
            acl.groups,
            vec![AclEntry {
                id: 2002,
                permissions: 4
            }]
        );
        assert_eq!(acl.group_obj, Some(4));
        assert!(acl.default.is_none());
    }

    #[test]
    fn access_acl_without_mask_has_no_group_obj() {
        let bytes = xattr(&[
            (TAG_USER_OBJ, 7, NONE),
            (TAG_GROUP_OBJ, 5, NONE),
            (TAG_OTHER, 5, NONE),
        ]);
        let mut acl = Acl::default();
        set_access_acl(&mut acl, Some(parse_acl_xattr(&bytes).unwrap()));
        assert!(acl.is_empty());
    }

    #[test]
    fn default_acl_fills_missing_base_entries_with_no_mask() {
        let bytes = xattr(&[
            (TAG_USER_OBJ, 7, NONE),
            (TAG_USER, 7, 1001),
            (TAG_OTHER, 5, NONE),
        ]);
        let mut acl = Acl::default();
        set_default_acl(&mut acl, Some(parse_acl_xattr(&bytes).unwrap()));
        assert_eq!(
            acl.default,
            Some(AclDefault {
                user_obj: 7,
                group_obj: ACL_NO_MASK,
                other: 5,
                mask: ACL_NO_MASK
            })
        );
        assert_eq!(
            acl.default_users,
            vec![AclEntry {
                id: 1001,
                permissions: 7
            }]
        );
        let mut empty = Acl::default();
        set_default_acl(&mut empty, None);
        assert!(empty.is_empty());
    }

    #[test]
    fn malformed_xattrs_are_errors() {
        assert_eq!(parse_acl_xattr(&[2, 0, 0]), Err(AclError::BadLength(3)));
        assert_eq!(
            parse_acl_xattr(&xattr(&[])[..3]),
            Err(AclError::BadLength(3))
        );
        assert_eq!(
            parse_acl_xattr(&1u32.to_le_bytes()),
            Err(AclError::BadVersion(1))
        );
        assert_eq!(
            parse_acl_xattr(&xattr(&[(0x40, 7, 0)])),
            Err(AclError::BadTag(0x40))
        );
    }
}
