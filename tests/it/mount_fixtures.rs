//! `pbsfs mount` of the fixture snapshots, compared through the kernel with what the official
//! tools archived (tree1.json), plus image mounts and a corrupt chunk.

use crate::common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::mount_point;
use common::disk_tree::{assert_same_tree, tree_from_disk};
use common::*;

/// A mount made by the `pbsfs` binary; unmounted on drop, even when the test fails.
struct Mounted {
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mounted {
    /// `snapshot` "" mounts the whole datastore.
    fn new(store: &Path, ns: &str, snapshot: &str, extra: &[&str]) -> Self {
        let (dir, point) = mount_point();
        let snapshot: &[&str] = if snapshot.is_empty() {
            &[]
        } else {
            &[snapshot]
        };
        let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
            .args(["--repository", store.to_str().unwrap(), "--ns", ns, "mount"])
            .args(snapshot)
            .arg(&point)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount failed (needs root and /dev/fuse): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted { point, _dir: dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
            .arg("umount")
            .arg(&self.point)
            .output();
        if !matches!(out, Ok(ref o) if o.status.success()) {
            let _ = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
                .args(["umount", "--lazy"])
                .arg(&self.point)
                .output();
        }
    }
}

fn check_snapshot(snapshot: &str, json: &str) {
    let mount = Mounted::new(&datastore_dir(), "", snapshot, &[]);
    wait_until_counted(&mount.point);
    let expected = expected_tree(json);
    assert_same_tree(&tree_from_disk(&mount.point), &expected, snapshot);
    // Hardlinks: one inode, the true link count.
    let a = std::fs::symlink_metadata(mount.point.join("links/hard-a")).unwrap();
    let b = std::fs::symlink_metadata(mount.point.join("links/hard-b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 3);
    // Directory listings agree with lookups (readdirplus vs lookup).
    for entry in std::fs::read_dir(mount.point.join("links")).unwrap() {
        let entry = entry.unwrap();
        let looked_up = std::fs::symlink_metadata(entry.path()).unwrap();
        assert_eq!(entry.ino(), looked_up.ino(), "{:?}", entry.path());
    }
}

#[test]
fn legacy_snapshot_mounts_as_the_original_tree() {
    check_snapshot("host/fixture-legacy/2026-11-25T08:28:42Z", "tree1.json");
}

#[test]
fn data_mode_snapshot_mounts_as_the_original_tree() {
    check_snapshot("host/fixture-data/2026-11-25T08:28:43Z", "tree1.json");
}

#[test]
fn metadata_mode_snapshots_mount_as_their_trees() {
    check_snapshot("host/fixture-meta/2026-11-25T08:28:43Z", "tree1.json");
    check_snapshot("host/fixture-meta/2026-11-25T08:28:55Z", "tree1-meta2.json");
}

#[test]
fn image_snapshot_mounts_as_a_file() {
    let mount = Mounted::new(&datastore_dir(), "", "vm/100/latest", &[]);
    let names: Vec<String> = std::fs::read_dir(&mount.point)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["drive-scsi0.img"]);
    let image = mount.point.join("drive-scsi0.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 16789561);
    let data = std::fs::read(&image).unwrap();
    assert_eq!(
        sha256_hex(&data),
        "8aa9ddca4f0968e0f6e9bcf188af4fd83866757cb8ee74b8e38e124d295b57c6"
    );
}

#[test]
fn ambiguous_or_unknown_archives_are_reported_before_mounting() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args([
            "--repository",
            datastore_dir().to_str().unwrap(),
            "mount",
            "host/fixture-legacy/latest",
        ])
        .arg(dir.path())
        .args(["--archive", "nosuch.pxar"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("root.pxar"), "{err}");
}

#[test]
fn a_corrupt_chunk_gives_eio_for_its_files_only() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("ds");
    common::copy_fixture_datastore(&store);
    // Corrupt a chunk in the middle of the data-mode payload stream.
    let snapshot = "host/fixture-data/2026-11-25T08:28:43Z";
    let index = std::fs::read(store.join(snapshot).join("root.ppxar.didx")).unwrap();
    let digest = hex::encode(&index[4096 + 3 * 40 + 8..4096 + 4 * 40]);
    let chunk = store.join(".chunks").join(&digest[..4]).join(&digest);
    let mut raw = std::fs::read(&chunk).unwrap();
    let middle = raw.len() / 2;
    raw[middle] ^= 0xff;
    std::fs::write(&chunk, raw).unwrap();

    let mount = Mounted::new(&store, "", snapshot, &[]);
    let (mut ok, mut eio) = (0, 0);
    for (path, want) in expected_tree("tree1.json") {
        if want.kind != '-' {
            continue;
        }
        let full = mount.point.join(std::ffi::OsStr::from_bytes(&path));
        match std::fs::read(&full) {
            Ok(data) => {
                assert_eq!(Some(sha256_hex(&data)), want.sha256, "{}", show(&path));
                ok += 1;
            }
            Err(err) => {
                assert_eq!(
                    err.raw_os_error(),
                    Some(libc::EIO),
                    "{}: {err}",
                    show(&path)
                );
                eio += 1;
            }
        }
    }
    assert!(eio >= 1, "no file was affected by the corrupt chunk");
    assert!(ok > 100, "only {ok} files readable");
    // The mount keeps serving.
    assert!(std::fs::read_dir(&mount.point).unwrap().count() > 3);
}

#[test]
fn mount_fuse3_helper_form_works() {
    // What `mount -t fuse.pbsfs SOURCE DIR` and fstab lines run: mount.fuse3 calls
    // `pbsfs SOURCE DIR -o OPTIONS`, finding pbsfs on the PATH.
    let (dir, point) = mount_point();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_pbsfs"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let source = format!("{}#host/fixture-legacy/latest", datastore_dir().display());
    let out = Command::new("mount.fuse3")
        .arg(&source)
        .arg(&point)
        .args(["-t", "fuse.pbsfs", "-o", "ro,nodev,cache_size=64M"])
        .env("PATH", path)
        .output()
        .expect("mount.fuse3 (package fuse3) is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _guard = Mounted {
        point: point.clone(),
        _dir: dir,
    };
    let target = std::fs::read_link(point.join("links/rel-link")).unwrap();
    assert_eq!(target.to_str(), Some("target.txt"));
    assert_eq!(
        std::fs::read(point.join("links/target.txt")).unwrap().len(),
        7
    );
}

#[test]
fn concurrent_readers_get_correct_data_and_unmount_leaves_no_process() {
    let mount = Mounted::new(
        &datastore_dir(),
        "",
        "host/fixture-data/2026-11-25T08:28:43Z",
        &[],
    );
    let files: Vec<(Vec<u8>, String)> = expected_tree("tree1.json")
        .into_iter()
        .filter(|(_, e)| e.kind == '-' && e.size.unwrap_or(0) > 0)
        .map(|(path, e)| (path, e.sha256.unwrap()))
        .collect();
    assert!(files.len() > 50);
    let point = mount.point.clone();
    std::thread::scope(|scope| {
        for thread in 0..8usize {
            let files = &files;
            let point = &point;
            scope.spawn(move || {
                // Half the threads read the same big files, the others walk the list at
                // different starting points.
                let order: Vec<usize> = if thread % 2 == 0 {
                    (0..files.len()).filter(|i| i % 7 == 0).collect()
                } else {
                    (0..files.len())
                        .map(|i| (i + thread * 13) % files.len())
                        .collect()
                };
                for index in order {
                    let (path, sha) = &files[index];
                    let data =
                        std::fs::read(point.join(std::ffi::OsStr::from_bytes(path))).unwrap();
                    assert_eq!(&sha256_hex(&data), sha, "{}", show(path));
                }
            });
        }
    });
    let canonical = mount.point.canonicalize().unwrap();
    let pattern = format!("mount .*{}", canonical.display());
    let running = Command::new("pgrep")
        .args(["-f", &pattern])
        .output()
        .unwrap();
    assert!(
        running.status.success(),
        "the mount process should be found while mounted"
    );
    drop(mount);
    // The background mount process ends with the unmount.
    let mut gone = false;
    for _ in 0..50 {
        let out = Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .unwrap();
        if !out.status.success() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(gone, "a pbsfs mount process is still running after unmount");
}

#[test]
fn the_whole_datastore_mounts_as_a_tree_of_snapshots() {
    let mount = Mounted::new(&datastore_dir(), "", "", &[]);
    let mut top: Vec<String> = std::fs::read_dir(&mount.point)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["host", "ns", "vm"]);
    let image = mount
        .point
        .join("vm/100/2026-11-25T08:29:01Z/drive-scsi0.img");
    assert_eq!(
        sha256_hex(&std::fs::read(&image).unwrap()),
        "8aa9ddca4f0968e0f6e9bcf188af4fd83866757cb8ee74b8e38e124d295b57c6"
    );
    let expected = expected_tree("tree1.json");
    for archive in [
        "host/fixture-legacy/2026-11-25T08:28:42Z/root.pxar",
        "host/fixture-meta/2026-11-25T08:28:43Z/root.pxar",
    ] {
        let target = mount.point.join(archive).join("links/target.txt");
        let data = std::fs::read(&target).unwrap();
        assert_eq!(
            Some(sha256_hex(&data)),
            expected[b"links/target.txt".as_slice()].sha256
        );
    }
    let ns_file = mount
        .point
        .join("ns/team/host/fixture-ns/2026-11-25T08:29:01Z/root.pxar/rel-link");
    assert_eq!(
        std::fs::read_link(ns_file).unwrap().to_str(),
        Some("target.txt")
    );
}

fn is_mounted(point: &std::path::Path) -> bool {
    let point = point.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(point))
}

/// SIGTERM, SIGINT and SIGHUP unmount a foreground mount and end it successfully.
#[test]
fn a_termination_signal_unmounts() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().canonicalize().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
            .args([
                "--repository",
                datastore_dir().to_str().unwrap(),
                "mount",
                "--foreground",
            ])
            .arg("host/fixture-legacy/latest")
            .arg(&point)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        while !is_mounted(&point) {
            assert!(child.try_wait().unwrap().is_none(), "the mount ended early");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: the pid belongs to our child process.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "signal {signal}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!is_mounted(&point), "signal {signal} left the mount");
    }
}
