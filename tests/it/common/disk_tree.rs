//! A tree on disk (an extraction or a mount) described like tree1.json, through the kernel:
//! lstat, readlink, getxattr, ACL xattrs; hardlink groups by shared inode.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use pbsfs::pxar::acl;
use pbsfs::pxar::format::mode;

use super::{extended_acl_lines, sha256_hex, show, Expected};

pub fn type_char(mode_bits: u64) -> char {
    match mode_bits & mode::IFMT {
        mode::IFREG => '-',
        mode::IFDIR => 'd',
        mode::IFLNK => 'l',
        mode::IFCHR => 'c',
        mode::IFBLK => 'b',
        mode::IFIFO => 'p',
        mode::IFSOCK => 's',
        _ => '?',
    }
}

pub fn assert_same_tree(
    actual: &BTreeMap<Vec<u8>, Expected>,
    expected: &BTreeMap<Vec<u8>, Expected>,
    what: &str,
) {
    let missing: Vec<String> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .map(|k| show(k))
        .collect();
    let extra: Vec<String> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .map(|k| show(k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?}"
    );
    for (path, want) in expected {
        assert_eq!(&actual[path], want, "{what}: {}", show(path));
    }
}

pub fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

pub fn list_xattrs(path: &Path) -> Vec<String> {
    let p = c_path(path);
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "llistxattr {}", path.display());
    buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8(n.to_vec()).unwrap())
        .collect()
}

pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = c_path(path);
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

/// Describes an extracted tree like mktree.py's `--describe` does.
pub fn tree_from_disk(root: &Path) -> BTreeMap<Vec<u8>, Expected> {
    let mut tree = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut pending = vec![Vec::new()];
    while let Some(rel) = pending.pop() {
        let full = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(&rel))
        };
        let st = std::fs::symlink_metadata(&full).unwrap();
        let mut rec = Expected {
            kind: type_char(st.mode() as u64),
            mode: st.mode() as u64,
            uid: st.uid(),
            gid: st.gid(),
            mtime_ns: st.mtime() as i128 * 1_000_000_000 + st.mtime_nsec() as i128,
            ..Expected::default()
        };
        match rec.kind {
            '-' => {
                let data = std::fs::read(&full).unwrap();
                rec.size = Some(st.size());
                rec.sha256 = Some(sha256_hex(&data));
                if st.nlink() > 1 {
                    inodes
                        .entry((st.dev(), st.ino()))
                        .or_default()
                        .push(rel.clone());
                }
            }
            'l' => {
                rec.target = Some(
                    std::fs::read_link(&full)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            }
            'c' | 'b' => {
                let (major, minor) = pbsfs::pxar::format::split_dev(st.rdev());
                rec.rdev = Some((major, minor));
            }
            'd' => {
                for child in std::fs::read_dir(&full).unwrap() {
                    let name = child.unwrap().file_name();
                    let mut path = rel.clone();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(name.as_bytes());
                    pending.push(path);
                }
            }
            _ => {}
        }
        if rec.kind != 'l' {
            for name in list_xattrs(&full) {
                if name.starts_with("user.") || name.starts_with("security.capability") {
                    let value = get_xattr(&full, &name).unwrap();
                    rec.xattrs.insert(name, hex::encode(value));
                }
            }
            let mut lines = Vec::new();
            if let Some(value) = get_xattr(&full, acl::XATTR_ACCESS) {
                lines.extend(acl::text_lines(&acl::from_xattr(&value).unwrap(), ""));
            }
            if let Some(value) = get_xattr(&full, acl::XATTR_DEFAULT) {
                lines.extend(acl::text_lines(
                    &acl::from_xattr(&value).unwrap(),
                    "default:",
                ));
            }
            rec.acl = extended_acl_lines(lines);
        }
        tree.insert(rel, rec);
    }
    for paths in inodes.into_values() {
        let mut all = paths.clone();
        all.sort();
        for path in &all {
            tree.get_mut(path).unwrap().hardlinks = all.clone();
        }
    }
    tree
}
