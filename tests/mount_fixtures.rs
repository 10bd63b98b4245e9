//! `pbsfs mount` of the fixture snapshots, compared through the kernel with what the official
//! tools archived (tree1.json), plus image mounts and a corrupt chunk.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::disk_tree::{assert_same_tree, tree_from_disk};
use common::*;

/// A mount made by the `pbsfs` binary; unmounted on drop, even when the test fails.
struct Mounted {
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn new(store: &Path, ns: &str, snapshot: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
            .args([
                "--repository",
                store.to_str().unwrap(),
                "--ns",
                ns,
                "mount",
                snapshot,
            ])
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
    let status = Command::new("cp")
        .args(["-r", "--no-preserve=mode,ownership"])
        .arg(datastore_dir())
        .arg(&store)
        .status()
        .unwrap();
    assert!(status.success());
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
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
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
