//! A whole-datastore mount stays current: backups pushed, forgotten and namespaces made
//! while it is mounted appear and disappear within the refresh interval, and each group's
//! `latest` symlink follows its newest snapshot. Through the kernel, with the binary.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cli::{local_command, mount_point, ok, pbsfs_local, umount};

/// Polls `check` until it holds; the bound is the refresh interval (1 s here) plus the
/// kernel's provisional TTL (1 s) with a wide margin for a loaded machine.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not within 20 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn push(store: &Path, source: &Path, time: &str) {
    let archive = format!("data.pxar:{}", source.display());
    ok(&pbsfs_local(
        store,
        &[
            "push",
            "--backup-id",
            "fresh",
            "--change-detection-mode",
            "legacy",
            "--backup-time",
            time,
            &archive,
        ],
    ));
}

#[test]
fn backups_made_and_forgotten_while_mounted_show_up_without_a_remount() {
    let tmp = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = tmp.path().join("ds");
    common::copy_fixture_datastore(&store);
    let source = tmp.path().join("src");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("file"), b"first").unwrap();

    let (_mnt, point) = mount_point();
    ok(&local_command(&store)
        .args(["mount", "--refresh", "1"])
        .arg(&point)
        .output()
        .unwrap());
    let host = point.join("host");
    assert!(!names(&host).contains(&"fresh".to_string()));

    // A new group.
    push(&store, &source, "2026-12-01T10:00:00Z");
    let group = host.join("fresh");
    eventually("the new group and its snapshot", || {
        names(&group) == ["2026-12-01T10:00:00Z", "latest"]
    });
    let latest = group.join("latest");
    assert_eq!(
        std::fs::read_link(&latest).unwrap().to_str(),
        Some("2026-12-01T10:00:00Z")
    );
    assert_eq!(
        std::fs::read(latest.join("data.pxar/file")).unwrap(),
        b"first"
    );

    // A newer snapshot of the group: `latest` moves to it.
    std::fs::write(source.join("file"), b"second").unwrap();
    push(&store, &source, "2026-12-02T10:00:00Z");
    eventually("latest pointing at the newer snapshot", || {
        std::fs::read(latest.join("data.pxar/file")).ok().as_deref() == Some(b"second")
    });
    assert_eq!(
        names(&group),
        ["2026-12-01T10:00:00Z", "2026-12-02T10:00:00Z", "latest"]
    );

    // Forgotten: gone from the listing and by name.
    ok(&pbsfs_local(
        &store,
        &["forget", "host/fresh/2026-12-01T10:00:00Z"],
    ));
    eventually("the forgotten snapshot gone", || {
        names(&group) == ["2026-12-02T10:00:00Z", "latest"]
            && !group.join("2026-12-01T10:00:00Z").exists()
    });

    // A new namespace.
    ok(&pbsfs_local(
        &store,
        &["namespaces", "--create", "fresh-ns"],
    ));
    eventually("the new namespace", || {
        names(&point.join("ns")).contains(&"fresh-ns".to_string())
    });
    umount(&point);
}

#[test]
fn refresh_is_refused_for_a_single_snapshot() {
    let (_mnt, point) = mount_point();
    let out = local_command(&common::datastore_dir())
        .args(["mount", "--refresh", "5", "host/fixture-data/latest"])
        .arg(&point)
        .output()
        .unwrap();
    common::cli::fails_with(&out, "--refresh is for whole-datastore mounts");
}
