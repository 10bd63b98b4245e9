//! push → mount and push → restore round trips: a generated tree with every entry kind and all metadata, pushed
//! in each change-detection mode, mounted, and compared with the source through the kernel
//! (lstat, readlink, xattrs, ACLs, hardlinks by inode, file contents).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::cli::{mount_point, ok, pbsfs_local, read_mounted_tree, umount};
use common::disk_tree::{assert_same_tree, c_path, tree_from_disk};
use common::source_tree::{chmod, make_special_files, mknod, set_mtime, set_xattr};
use common::Expected;

/// One datastore per test module (creating 65536 chunk directories is slow).
fn datastore() -> &'static Path {
    static STORE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let path = dir.path().join("ds");
            pbsfs::store::local::LocalDatastore::create(&path).unwrap();
            (dir, path)
        })
        .1
}

fn pbsfs(args: &[&str]) -> Output {
    pbsfs_local(datastore(), args)
}

/// Every entry kind with owners, modes, times before 1970, xattrs, ACLs and hardlinks.
/// Built under the target dir, not /tmp, which may be a tmpfs without user xattrs.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("dir/deeper/deepest")).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("dir/text"), "line of text\n".repeat(5000)).unwrap();
    let big: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("dir/deeper/big"), big).unwrap();
    std::fs::write(root.join("one"), b"hardlinked contents").unwrap();
    std::fs::hard_link(root.join("one"), root.join("dir/two")).unwrap();
    std::fs::hard_link(root.join("one"), root.join("dir/deeper/three")).unwrap();
    std::os::unix::fs::symlink("../one", root.join("dir/link")).unwrap();
    std::os::unix::fs::symlink("/does/not/exist", root.join("dangling")).unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o640, 0);
    make_special_files(root);
    chmod(&root.join("dir/text"), 0o4755);
    chmod(&root.join("dir/deeper"), 0o1777);
    let rc = unsafe { libc::lchown(c_path(&root.join("dir/text")).as_ptr(), 1234, 5678) };
    assert_eq!(rc, 0);
    set_xattr(&root.join("dir/text"), "user.note", b"value").unwrap();
    set_xattr(&root.join("dir/text"), "user.empty", b"").unwrap();
    set_xattr(&root.join("dir"), "user.binary", &[0, 1, 2, 255]).unwrap();
    let status = Command::new("setfacl")
        .args([
            "-m",
            "u:1001:rw,g:1002:r",
            root.join("empty").to_str().unwrap(),
        ])
        .status()
        .expect("setfacl (package acl) is needed");
    assert!(status.success());
    let status = Command::new("setfacl")
        .args(["-d", "-m", "u:1003:rx", root.join("dir").to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    set_mtime(&root.join("dir/deeper/big"), -86_400 * 365, 123_456_789);
    set_mtime(&root.join("dangling"), 4_102_444_800, 1);
    set_mtime(&root.join("empty"), 1_000_000_000, 999_999_999);
}

/// The latest snapshot of group host/`id`, mounted and read through the kernel.
fn mounted_tree(id: &str) -> BTreeMap<Vec<u8>, Expected> {
    let (_mnt, point) = mount_point();
    ok(&pbsfs(&[
        "mount",
        &format!("host/{id}/latest"),
        point.to_str().unwrap(),
    ]));
    read_mounted_tree(&point)
}

fn check_mode(source: &Path, mode: &str, id: &str, time: i64) {
    ok(&pbsfs(&[
        "push",
        "--backup-time",
        &time.to_string(),
        &format!("tree.pxar:{}", source.display()),
        "--backup-id",
        id,
        "--change-detection-mode",
        mode,
        "--quiet",
    ]));
    let mounted = mounted_tree(id);
    let original = tree_from_disk(source);
    assert!(original.len() >= 15);
    assert_same_tree(&mounted, &original, mode);
    // And restored into a directory with all metadata.
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("restored");
    ok(&pbsfs(&[
        "restore",
        &format!("host/{id}/latest"),
        "tree.pxar",
        target.to_str().unwrap(),
    ]));
    assert_same_tree(&tree_from_disk(&target), &original, mode);
}

#[test]
fn pushed_trees_mount_identical_to_their_source_in_every_mode() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let source = work.path().join("tree");
    make_tree(&source);
    check_mode(&source, "legacy", "mount-legacy", 1_700_000_000);
    check_mode(&source, "data", "mount-data", 1_700_000_000);
    check_mode(&source, "metadata", "mount-metadata", 1_700_000_000);
    // A second metadata push re-uses the previous payload; the mount must be identical too.
    check_mode(&source, "metadata", "mount-metadata", 1_700_000_100);
}

/// Directories too big for one readdir batch, nested, listed ahead in the background by the
/// mount: every entry must come through once, in full, with its own metadata.
#[test]
fn big_nested_directories_list_completely() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let source = work.path().join("wide");
    for d in 0..30 {
        let dir = source.join(format!("directory-{d:03}"));
        let inner = dir.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        for f in 0..400 {
            let name = format!("a-fairly-long-file-name-so-batches-fill-up-{f:05}");
            std::fs::write(dir.join(&name), format!("{d}/{f}").repeat(f % 7)).unwrap();
            set_mtime(&dir.join(&name), 1_600_000_000 + f as i64, 0);
        }
        std::fs::write(inner.join("deep"), b"deep").unwrap();
    }
    ok(&pbsfs(&[
        "push",
        &format!("wide.pxar:{}", source.display()),
        "--backup-id",
        "wide",
        "--change-detection-mode",
        "data",
        "--quiet",
    ]));
    let mounted = mounted_tree("wide");
    let original = tree_from_disk(&source);
    assert!(original.len() > 30 * 400);
    assert_same_tree(&mounted, &original, "data");
}

/// Whether uid (and gid) `id`, with no supplementary groups, may read `path`.
fn may_read_as(id: u32, path: &Path) -> bool {
    let status = Command::new("setpriv")
        .arg(format!("--reuid={id}"))
        .arg(format!("--regid={id}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv (util-linux) is needed");
    status.success()
}

/// With `-o allow_other` other users read through the mount, and the kernel must judge them
/// by the archive's POSIX ACLs, as the source file system did, not by the mode bits alone.
#[test]
fn allow_other_mounts_enforce_the_archives_acls() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    chmod(work.path(), 0o755);
    let source = work.path().join("acls");
    std::fs::create_dir(&source).unwrap();
    chmod(&source, 0o755);
    let setfacl = |spec: &str, name: &str| {
        let status = Command::new("setfacl")
            .args(["-m", spec])
            .arg(source.join(name))
            .status()
            .expect("setfacl (package acl) is needed");
        assert!(status.success());
    };
    // Others may read, but an ACL denies user 1234.
    std::fs::write(source.join("denied"), b"x").unwrap();
    chmod(&source.join("denied"), 0o644);
    setfacl("u:1234:---", "denied");
    // Only the owner may read, but an ACL allows user 1235.
    std::fs::write(source.join("allowed"), b"x").unwrap();
    chmod(&source.join("allowed"), 0o600);
    setfacl("u:1235:r", "allowed");
    // A closed directory that an ACL opens to user 1235.
    std::fs::create_dir(source.join("closed")).unwrap();
    std::fs::write(source.join("closed/inside"), b"x").unwrap();
    chmod(&source.join("closed/inside"), 0o644);
    chmod(&source.join("closed"), 0o700);
    setfacl("u:1235:rx", "closed");

    let expected = [
        ("denied", 1234, false),
        ("denied", 1235, true),
        ("allowed", 1235, true),
        ("allowed", 1236, false),
        ("closed/inside", 1235, true),
        ("closed/inside", 1236, false),
    ];
    for (name, uid, may) in expected {
        assert_eq!(
            may_read_as(uid, &source.join(name)),
            may,
            "source {name} as {uid}"
        );
    }

    ok(&pbsfs(&[
        "push",
        &format!("acls.pxar:{}", source.display()),
        "--backup-id",
        "acls",
        "--quiet",
    ]));
    let mnt = tempfile::tempdir().unwrap();
    chmod(mnt.path(), 0o755);
    let point = mnt.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    ok(&pbsfs(&[
        "mount",
        "host/acls/latest",
        point.to_str().unwrap(),
        "-o",
        "allow_other",
    ]));
    let seen: Vec<_> = expected
        .iter()
        .map(|&(name, uid, _)| (name, uid, may_read_as(uid, &point.join(name))))
        .collect();
    umount(&point);
    assert_eq!(seen, expected.to_vec());
}
