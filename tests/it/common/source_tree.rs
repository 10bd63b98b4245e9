//! Building trees on disk for the push tests: deterministic file contents, the fixture tree
//! of `mktree.py`, a basic tree of the common entry kinds, and the metadata setters.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{RngCore, SeedableRng};

use super::disk_tree::c_path;
use super::{fixtures_dir, sha256_hex};

/// `len` pseudo-random bytes, the same for the same seed (incompressible content).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The official fixture tree (`mktree.py 1`, as archived in the fixture datastore) at
/// `dest`. Needs root, python3, setfacl and setcap.
pub fn make_fixture_tree(dest: &Path) {
    let status = Command::new("python3")
        .arg(fixtures_dir().join("mktree.py"))
        .arg("1")
        .arg(dest)
        .status()
        .expect("python3 must be installed");
    assert!(
        status.success(),
        "mktree.py failed (are setfacl and setcap installed?)"
    );
}

/// The fixture tree in a new directory under the target dir (not /tmp, which may be a
/// tmpfs without xattrs): (the directory, the tree in it); `None`, with a note, when not
/// root.
pub fn fixture_tree_if_root() -> Option<(tempfile::TempDir, PathBuf)> {
    if !is_root() {
        eprintln!("skipping: building the fixture tree needs root");
        return None;
    }
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = dir.path().join("tree");
    make_fixture_tree(&tree);
    Some((dir, tree))
}

/// The entry kinds an unprivileged user can make: directories, an empty file, a text file
/// (mode 0600, xattr `user.comment` where the file system allows user xattrs), a file with
/// a second hardlink, a symlink, a dangling symlink and a fifo.
pub fn make_basic_tree(root: &Path) {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("dir/text"), "hello\n".repeat(1000)).unwrap();
    std::fs::write(root.join("linked"), b"two names").unwrap();
    std::fs::hard_link(root.join("linked"), root.join("dir/linked2")).unwrap();
    std::os::unix::fs::symlink("../empty", root.join("dir/link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o640, 0);
    std::fs::set_permissions(
        root.join("dir/text"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // Best effort: tmpfs may refuse user xattrs.
    let _ = set_xattr(&root.join("dir/text"), "user.comment", b"a value");
}

/// A character device, a block device (its minor above 255) and a Unix socket: the special
/// files a push carries besides a FIFO (devices need root, which the tests have).
pub fn make_special_files(root: &Path) {
    mknod(
        &root.join("chardev"),
        libc::S_IFCHR | 0o600,
        libc::makedev(1, 7),
    );
    mknod(
        &root.join("blockdev"),
        libc::S_IFBLK | 0o660,
        libc::makedev(259, 300),
    );
    drop(std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap());
}

/// A fifo or device node (`mode` includes the file type).
pub fn mknod(path: &Path, mode: u32, dev: u64) {
    // SAFETY: a valid C string.
    let rc = unsafe { libc::mknod(c_path(path).as_ptr(), mode, dev) };
    assert_eq!(rc, 0, "mknod {}", path.display());
}

/// Sets an xattr on `path` itself (not a symlink's target).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::lsetxattr(
            c_path(path).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets atime and mtime of `path` itself (not a symlink's target).
pub fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let time = libc::timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    let times = [time, time];
    // SAFETY: a valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// Sets the permission bits of `path` (setuid, setgid and sticky included).
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every entry below `root` by relative path: mode, size, link count, mtime and the
/// content's hash (regular files) or the target (symlinks). Two trees are equal when these are.
pub fn describe_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let what = if meta.is_dir() {
                stack.push(path.clone());
                String::new()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path).unwrap().display().to_string()
            } else if meta.is_file() {
                let data = std::fs::read(&path).unwrap();
                sha256_hex(&data)
            } else {
                String::new()
            };
            let mtime = if meta.file_type().is_symlink() {
                0
            } else {
                meta.mtime()
            };
            out.insert(
                rel,
                format!(
                    "{:o} {} {} {mtime} {what}",
                    meta.mode(),
                    meta.len(),
                    meta.nlink()
                ),
            );
        }
    }
    out
}
