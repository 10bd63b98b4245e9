//! Mount points as a user meets them: a second mount over a live one is refused, a mount
//! whose process was killed is detached when mounting there again, `umount` removes exactly
//! one mount and says when there is none, and unknown `-o` options are refused by name.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::cli::{fails_with, local_command, mount_point, ok, umount};
use common::datastore_dir;

const SNAPSHOT: &str = "host/fixture-data/latest";

fn mount(point: &Path, extra: &[&str]) -> Output {
    local_command(&datastore_dir())
        .arg("mount")
        .args(extra)
        .arg(SNAPSHOT)
        .arg(point)
        .output()
        .unwrap()
}

fn pbsfs_umount(point: &Path) -> Output {
    common::cli::command()
        .arg("umount")
        .arg(point)
        .output()
        .unwrap()
}

fn mounts_at(point: &Path) -> usize {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let point = point.to_str().unwrap();
    table
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(point))
        .count()
}

#[test]
fn a_mount_over_a_live_one_is_refused_and_umount_removes_exactly_one() {
    let (_tmp, point) = mount_point();
    ok(&mount(&point, &[]));
    let again = mount(&point, &[]);
    fails_with(&again, "is already mounted");
    fails_with(&again, "pbsfs umount");
    assert_eq!(mounts_at(&point), 1);
    ok(&pbsfs_umount(&point));
    assert_eq!(mounts_at(&point), 0);
    let twice = pbsfs_umount(&point);
    fails_with(&twice, "is not mounted");
}

#[test]
fn umount_of_a_directory_that_is_not_mounted_says_so() {
    let (_tmp, point) = mount_point();
    fails_with(&pbsfs_umount(&point), "is not mounted");
    // Nor is a mount of another kind ours to remove.
    fails_with(&pbsfs_umount(Path::new("/proc")), "is not a pbsfs mount");
}

#[test]
fn a_mount_whose_process_was_killed_is_detached_when_mounting_again() {
    let (_tmp, point) = mount_point();
    let mut child = local_command(&datastore_dir())
        .args(["mount", "--foreground", SNAPSHOT])
        .arg(&point)
        .spawn()
        .unwrap();
    for _ in 0..3000 {
        if mounts_at(&point) == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(mounts_at(&point), 1, "the mount did not come up");
    common::wait_until_counted(&point);
    child.kill().unwrap();
    child.wait().unwrap();
    let err = std::fs::metadata(&point).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");

    let out = mount(&point, &[]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("detached"),
        "{out:?}"
    );
    assert!(point.join("data").is_dir() || std::fs::read_dir(&point).unwrap().count() > 0);
    umount(&point);
    assert_eq!(mounts_at(&point), 0);
}

#[test]
fn unknown_mount_options_are_refused_with_the_known_ones() {
    let (_tmp, point) = mount_point();
    let out = mount(&point, &["-o", "noexec,bogus_option"]);
    fails_with(&out, "unknown mount option 'bogus_option'");
    fails_with(&out, "allow_other");
    assert_eq!(mounts_at(&point), 0);
}

/// Chunk #3 of the fixture's split root.ppxar: file data inside data/big-text only.
const BIG_TEXT_CHUNK: &str = "92700fb2de25c36cdc12af1c7fe88f8b727777928d23ee0b7f0185d102541b45";

#[test]
fn a_background_mount_logs_what_it_cannot_read_to_its_log_file() {
    let tmp = common::datastore_with_bad_chunk(BIG_TEXT_CHUNK);
    let store = tmp.path().join("ds");
    let (_mnt, point) = mount_point();
    let log = tmp.path().join("pbsfs.log");
    ok(&local_command(&store)
        .args(["mount", "--log-file", log.to_str().unwrap(), SNAPSHOT])
        .arg(&point)
        .output()
        .unwrap());
    let err = std::fs::read(point.join("data/big-text")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Read twice: logged once.
    let _ = std::fs::read(point.join("data/big-text"));
    ok(&pbsfs_umount(&point));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("mounted host/fixture-data/latest"), "{text}");
    assert!(
        !text.contains("warning"),
        "a clean unmount warns of nothing: {text}"
    );
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(" error: ")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    // The snapshot, the archive, the file's path, the chunk and why.
    for needle in [
        "host/fixture-data/2026-11-25T08:28:43Z/root.pxar",
        "\"/data/big-text\"",
        "root.ppxar.didx",
        BIG_TEXT_CHUNK,
        "CRC",
    ] {
        assert!(errors[0].contains(needle), "no {needle} in {text}");
    }
}

/// The first chunk of the fixture's disk image.
const IMAGE_CHUNK: &str = crate::restore_extract::IMAGE_CHUNK;

#[test]
fn a_background_image_mount_logs_a_bad_chunk_once_with_its_snapshot() {
    let tmp = common::datastore_with_bad_chunk(IMAGE_CHUNK);
    let store = tmp.path().join("ds");
    let (_mnt, point) = mount_point();
    let log = tmp.path().join("pbsfs.log");
    ok(&local_command(&store)
        .args([
            "mount",
            "--log-file",
            log.to_str().unwrap(),
            "vm/100/latest",
        ])
        .arg(&point)
        .output()
        .unwrap());
    for _ in 0..2 {
        let err = std::fs::read(point.join("drive-scsi0.img")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    ok(&pbsfs_umount(&point));
    let text = std::fs::read_to_string(&log).unwrap();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains(" error: ")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    for needle in ["vm/100/2026-11-25T08:29:01Z/drive-scsi0.img", IMAGE_CHUNK] {
        assert!(errors[0].contains(needle), "no {needle} in {text}");
    }
}
