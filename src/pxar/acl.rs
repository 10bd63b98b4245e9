//! POSIX ACLs of an entry in the forms the outside world uses: the kernel's
//! `system.posix_acl_access` / `system.posix_acl_default` xattr values, and `getfacl` text
//! lines (pxar.md §3.9).

use super::format::ACL_NO_MASK;
use super::metadata::Metadata;

pub const XATTR_ACCESS: &str = "system.posix_acl_access";
pub const XATTR_DEFAULT: &str = "system.posix_acl_default";

/// Kernel ACL entry tags.
pub const TAG_USER_OBJ: u16 = 0x01;
pub const TAG_USER: u16 = 0x02;
pub const TAG_GROUP_OBJ: u16 = 0x04;
pub const TAG_GROUP: u16 = 0x08;
pub const TAG_MASK: u16 = 0x10;
pub const TAG_OTHER: u16 = 0x20;
const XATTR_VERSION: u32 = 2;
const NO_ID: u32 = u32::MAX;

/// One ACL entry: tag, permission bits (rwx = 4|2|1), id (for named entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

fn entry(tag: u16, perm: u64, id: u32) -> AclEntry {
    AclEntry {
        tag,
        perm: (perm & 7) as u16,
        id,
    }
}

/// The full access ACL, or `None` when the mode alone describes the permissions.
pub fn access_entries(meta: &Metadata) -> Option<Vec<AclEntry>> {
    let acl = &meta.acl;
    if acl.users.is_empty() && acl.groups.is_empty() && acl.group_obj.is_none() {
        return None;
    }
    let mode = meta.stat.mode;
    let group_bits = (mode >> 3) & 7;
    let mut users = acl.users.clone();
    users.sort();
    let mut groups = acl.groups.clone();
    groups.sort();
    let mut out = vec![entry(TAG_USER_OBJ, mode >> 6, NO_ID)];
    out.extend(
        users
            .iter()
            .map(|u| entry(TAG_USER, u.permissions, u.id as u32)),
    );
    // With a stored group object the mode's group bits are the mask (pxar.md §3.9).
    out.push(entry(
        TAG_GROUP_OBJ,
        acl.group_obj.unwrap_or(group_bits),
        NO_ID,
    ));
    out.extend(
        groups
            .iter()
            .map(|g| entry(TAG_GROUP, g.permissions, g.id as u32)),
    );
    out.push(entry(TAG_MASK, group_bits, NO_ID));
    out.push(entry(TAG_OTHER, mode, NO_ID));
    Some(out)
}

/// The default ACL of a directory, or `None`.
pub fn default_entries(meta: &Metadata) -> Option<Vec<AclEntry>> {
    let acl = &meta.acl;
    let default = acl.default?;
    let mut users = acl.default_users.clone();
    users.sort();
    let mut groups = acl.default_groups.clone();
    groups.sort();
    let mut out = Vec::new();
    let base = |tag: u16, perm: u64, out: &mut Vec<AclEntry>| {
        if perm != ACL_NO_MASK {
            out.push(entry(tag, perm, NO_ID));
        }
    };
    base(TAG_USER_OBJ, default.user_obj, &mut out);
    out.extend(
        users
            .iter()
            .map(|u| entry(TAG_USER, u.permissions, u.id as u32)),
    );
    base(TAG_GROUP_OBJ, default.group_obj, &mut out);
    out.extend(
        groups
            .iter()
            .map(|g| entry(TAG_GROUP, g.permissions, g.id as u32)),
    );
    base(TAG_MASK, default.mask, &mut out);
    base(TAG_OTHER, default.other, &mut out);
    Some(out)
}

/// Encodes entries as a `system.posix_acl_*` xattr value.
pub fn to_xattr(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&XATTR_VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// Decodes a `system.posix_acl_*` xattr value (`None` if malformed).
pub fn from_xattr(value: &[u8]) -> Option<Vec<AclEntry>> {
    let (version, rest) = value.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != XATTR_VERSION || rest.len() % 8 != 0 {
        return None;
    }
    Some(
        rest.chunks_exact(8)
            .map(|raw| AclEntry {
                tag: u16::from_le_bytes([raw[0], raw[1]]),
                perm: u16::from_le_bytes([raw[2], raw[3]]),
                id: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            })
            .collect(),
    )
}

fn perm_text(perm: u16) -> String {
    let bit = |mask: u16, c: char| if perm & mask != 0 { c } else { '-' };
    [bit(4, 'r'), bit(2, 'w'), bit(1, 'x')].iter().collect()
}

/// `getfacl -n` lines for entries (`prefix` is `""` or `"default:"`), without the
/// `#effective:` comments.
pub fn text_lines(entries: &[AclEntry], prefix: &str) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            let perm = perm_text(e.perm);
            match e.tag {
                TAG_USER_OBJ => format!("{prefix}user::{perm}"),
                TAG_USER => format!("{prefix}user:{}:{perm}", e.id),
                TAG_GROUP_OBJ => format!("{prefix}group::{perm}"),
                TAG_GROUP => format!("{prefix}group:{}:{perm}", e.id),
                TAG_MASK => format!("{prefix}mask::{perm}"),
                TAG_OTHER => format!("{prefix}other::{perm}"),
                tag => format!("{prefix}unknown-tag-{tag:#x}::{perm}"),
            }
        })
        .collect()
}

/// All ACL lines of an entry as `getfacl -cn` prints them (access, then default).
pub fn getfacl_lines(meta: &Metadata) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(access) = access_entries(meta) {
        lines.extend(text_lines(&access, ""));
    }
    if let Some(default) = default_entries(meta) {
        lines.extend(text_lines(&default, "default:"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pxar::metadata::{AclDefault, AclEntry};

    #[test]
    fn access_acl_with_mask_uses_group_bits_as_mask() {
        let mut meta = Metadata::default();
        meta.stat.mode = 0o100660;
        meta.acl.users.push(AclEntry {
            id: 1001,
            permissions: 6,
        });
        meta.acl.groups.push(AclEntry {
            id: 2002,
            permissions: 4,
        });
        meta.acl.group_obj = Some(4);
        let entries = access_entries(&meta).unwrap();
        assert_eq!(
            text_lines(&entries, ""),
            [
                "user::rw-",
                "user:1001:rw-",
                "group::r--",
                "group:2002:r--",
                "mask::rw-",
                "other::---"
            ]
        );
        assert_eq!(from_xattr(&to_xattr(&entries)).unwrap(), entries);
    }

    #[test]
    fn default_acl_omits_absent_mask() {
        let mut meta = Metadata::default();
        meta.acl.default = Some(AclDefault {
            user_obj: 7,
            group_obj: 5,
            other: 5,
            mask: ACL_NO_MASK,
        });
        let lines = text_lines(&default_entries(&meta).unwrap(), "default:");
        assert_eq!(
            lines,
            [
                "default:user::rwx",
                "default:group::r-x",
                "default:other::r-x"
            ]
        );
        assert!(access_entries(&meta).is_none());
    }
}
