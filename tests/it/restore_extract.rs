//! `pbsfs restore SNAPSHOT root.pxar DIR`: the extracted tree, compared through the kernel
//! with what the official tools archived.

use crate::common;

use std::process::{Command, Output};

use common::cli::local_command;
use common::disk_tree::{assert_same_tree, tree_from_disk};
use common::*;

fn restore(args: &[&str]) -> Output {
    local_command(&datastore_dir())
        .arg("restore")
        .args(args)
        .output()
        .unwrap()
}

/// `restore ARGS`, which must succeed.
fn restore_ok(args: &[&str]) {
    let out = restore(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check(snapshot: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    restore_ok(&[snapshot, "root.pxar", target.to_str().unwrap()]);
    assert_same_tree(
        &tree_from_disk(&target),
        &expected_tree("tree1.json"),
        snapshot,
    );

    // A second restore into the now non-empty directory is refused.
    let again = restore(&[snapshot, "root.pxar", target.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
}

#[test]
fn legacy_archive_extracts_to_the_original_tree() {
    check("host/fixture-legacy/latest");
}

#[test]
fn split_archive_extracts_to_the_original_tree() {
    check("host/fixture-data/latest");
}

#[test]
fn patterns_select_a_subtree() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    restore_ok(&[
        "host/fixture-legacy/latest",
        "root.pxar",
        target.to_str().unwrap(),
        "--pattern",
        "links/**",
    ]);
    let mut top: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["links"]);
    assert_eq!(
        std::fs::read_link(target.join("links/rel-link"))
            .unwrap()
            .to_str(),
        Some("target.txt")
    );
}

// ---- damaged chunks, setuid without owners -------------------------------------------------

use std::path::Path;

/// Chunk #3 of the legacy root.pxar and of the split root.ppxar (the same chunk): file data
/// only, inside data/big-text.
const BIG_TEXT_CHUNK: &str = "92700fb2de25c36cdc12af1c7fe88f8b727777928d23ee0b7f0185d102541b45";
/// Chunk #2 of the legacy root.pxar: the end of data/big-random and the FILENAME and ENTRY of
/// data/big-text, so the sequential decoder cannot go on behind it.
const BIG_RANDOM_END_CHUNK: &str =
    "f02296c76d577d2c0d38c64e982aef3278cc29cb019552393c89fd6e1b36eb73";
/// Chunk #1 of the vm/100 image.
pub(crate) const IMAGE_CHUNK: &str =
    "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8";

fn restore_from(store: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args(["--repository", store.to_str().unwrap(), "restore"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// No line repeats a `: `-separated segment (an error chain that prints a cause twice).
fn assert_reads_once(stderr: &str) {
    for line in stderr.lines() {
        let segments: Vec<&str> = line.split(": ").collect();
        for (i, segment) in segments.iter().enumerate() {
            assert!(
                !segments[i + 1..].contains(segment),
                "{segment:?} repeats in: {line}"
            );
        }
    }
}

/// Paths (relative to `root`) of temporary files left behind.
fn leftovers(root: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(root)
        .args(["-name", "*pbsfs-tmp*"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_bad_chunk_stops_the_restore_naming_file_and_chunk_without_a_partial_file() {
    let tmp = datastore_with_bad_chunk(BIG_TEXT_CHUNK);
    let store = tmp.path().join("ds");
    for (snapshot, index) in [
        ("host/fixture-legacy/latest", "root.pxar.didx"),
        ("host/fixture-data/latest", "root.ppxar.didx"),
    ] {
        let target = tmp.path().join(index);
        let (out, stderr) =
            restore_from(&store, &[snapshot, "root.pxar", target.to_str().unwrap()]);
        assert!(!out.status.success(), "{snapshot}: restore passed");
        for needle in [
            "data/big-text",
            index,
            "chunk #3",
            BIG_TEXT_CHUNK,
            "CRC mismatch",
        ] {
            assert!(
                stderr.contains(needle),
                "{snapshot}: no {needle:?} in {stderr}"
            );
        }
        assert!(!stderr.contains("truncated"), "{stderr}");
        assert_reads_once(&stderr);
        // The file before it is complete; the damaged one is not there at all.
        assert!(target.join("data/big-random").exists());
        assert!(!target.join("data/big-text").exists());
        assert_eq!(leftovers(&target), Vec::<String>::new());
    }
}

#[test]
fn ignore_errors_restores_everything_else_and_lists_what_it_could_not() {
    let tmp = datastore_with_bad_chunk(BIG_TEXT_CHUNK);
    let store = tmp.path().join("ds");
    let mut expected = expected_tree("tree1.json");
    expected.remove(b"data/big-text".as_slice());
    for snapshot in ["host/fixture-legacy/latest", "host/fixture-data/latest"] {
        let target = tmp.path().join(snapshot.replace('/', "_"));
        let (out, stderr) = restore_from(
            &store,
            &[
                snapshot,
                "root.pxar",
                target.to_str().unwrap(),
                "--ignore-errors",
            ],
        );
        assert!(!out.status.success(), "{snapshot}: exit status 0");
        let listed: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("not restored: "))
            .collect();
        assert_eq!(listed.len(), 1, "{stderr}");
        assert!(listed[0].contains("data/big-text") && listed[0].contains(BIG_TEXT_CHUNK));
        assert_reads_once(&stderr);
        assert_same_tree(&tree_from_disk(&target), &expected, snapshot);
        assert_eq!(leftovers(&target), Vec::<String>::new());
    }
}

#[test]
fn ignore_errors_goes_on_behind_unreadable_metadata() {
    let tmp = datastore_with_bad_chunk(BIG_RANDOM_END_CHUNK);
    let store = tmp.path().join("ds");
    let target = tmp.path().join("out");
    let (out, stderr) = restore_from(
        &store,
        &[
            "host/fixture-legacy/latest",
            "root.pxar",
            target.to_str().unwrap(),
            "--ignore-errors",
        ],
    );
    assert!(!out.status.success());
    let listed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("not restored: "))
        .collect();
    // big-random's data and big-text's name are in the bad chunk: two entries lost.
    assert_eq!(listed.len(), 2, "{stderr}");
    assert!(listed[0].contains("data/big-random"), "{stderr}");
    assert!(listed[1].contains("data/<name unreadable"), "{stderr}");
    assert!(listed.iter().all(|l| l.contains(BIG_RANDOM_END_CHUNK)));
    assert_reads_once(&stderr);
    let mut expected = expected_tree("tree1.json");
    expected.remove(b"data/big-random".as_slice());
    expected.remove(b"data/big-text".as_slice());
    assert_same_tree(&tree_from_disk(&target), &expected, "after the bad chunk");
}

#[test]
fn a_bad_chunk_leaves_no_image_file_and_fails_clearly_on_stdout() {
    let tmp = datastore_with_bad_chunk(IMAGE_CHUNK);
    let store = tmp.path().join("ds");
    let target = tmp.path().join("out/drive.img");
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    let (out, stderr) = restore_from(
        &store,
        &["vm/100/latest", "drive-scsi0.img", target.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(
        stderr.contains("chunk #1") && stderr.contains(IMAGE_CHUNK),
        "{stderr}"
    );
    assert_reads_once(&stderr);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("out")).unwrap().count(),
        0
    );

    let (out, stderr) = restore_from(&store, &["vm/100/latest", "drive-scsi0.img", "-"]);
    assert!(!out.status.success());
    assert!(
        stderr.contains("stdout") && stderr.contains("incomplete"),
        "{stderr}"
    );
    assert!(stderr.contains(IMAGE_CHUNK), "{stderr}");
    assert_reads_once(&stderr);
}

#[test]
fn no_owner_clears_setuid_with_one_note_and_owners_keep_it() {
    // Run as root (like the other tests here, which restore owners and devices).
    let mode = |path: &Path| std::fs::symlink_metadata(path).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();

    let kept = tmp.path().join("kept");
    let out = restore(&[
        "host/fixture-legacy/latest",
        "root.pxar",
        kept.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(mode(&kept.join("data/setuid-bin")).mode() & 0o7777, 0o4755);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("setuid"));

    let cleared = tmp.path().join("cleared");
    let out = restore(&[
        "host/fixture-legacy/latest",
        "root.pxar",
        cleared.to_str().unwrap(),
        "--no-owner",
    ]);
    assert!(out.status.success());
    assert_eq!(
        mode(&cleared.join("data/setuid-bin")).mode() & 0o7777,
        0o755
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("setuid/setgid").count(), 1, "{stderr}");
    // Other modes (the sticky bit included) are untouched.
    let sticky: Vec<_> = expected_tree("tree1.json")
        .into_iter()
        .filter(|(_, e)| e.mode & 0o1000 != 0)
        .collect();
    assert!(!sticky.is_empty());
    for (path, entry) in sticky {
        let on_disk = mode(&cleared.join(show(&path))).mode() as u64;
        assert_eq!(on_disk & 0o7777, entry.mode & 0o7777, "{}", show(&path));
    }
}

/// As `pxar extract --pattern`: a pattern with `/` inside matches at any depth, `!` leaves
/// out what an earlier pattern took, and what no pattern names follows its directory.
#[test]
fn patterns_follow_the_official_extractor() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    restore_ok(&[
        "host/fixture-legacy/latest",
        "root.pxar",
        target.to_str().unwrap(),
        "--pattern",
        "level22/level23",
        "--pattern",
        "!bottom.txt",
        "--pattern",
        "/data",
        "--pattern",
        "!rand-*",
    ]);
    let deep = "deep/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9/\
                level10/level11/level12/level13/level14/level15/level16/level17/level18/\
                level19/level20/level21/level22/level23";
    assert!(
        target.join(deep).is_dir(),
        "level22/level23 matched deep down"
    );
    assert!(
        !target.join(deep).join("bottom.txt").exists(),
        "!bottom.txt"
    );
    assert!(target.join("data/script.sh").is_file(), "follows /data");
    assert!(!target.join("data/rand-0").exists(), "!rand-*");
    assert!(!target.join("links").exists(), "not named");
}

#[test]
fn an_invalid_pattern_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    let out = restore(&[
        "host/fixture-legacy/latest",
        "root.pxar",
        target.to_str().unwrap(),
        "--pattern",
        "data/[unclosed",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("data/[unclosed"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_pattern_that_matches_nothing_is_an_error_and_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    let out = restore(&[
        "host/fixture-legacy/latest",
        "root.pxar",
        target.to_str().unwrap(),
        "--pattern",
        "no-such-entry-anywhere",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no entry of the archive matches --pattern no-such-entry-anywhere"),
        "{stderr}"
    );
    assert!(!target.exists(), "the directory it made is removed again");
}

#[test]
fn restore_prints_a_json_summary_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    let out = restore(&[
        "host/fixture-data/latest",
        "root.pxar",
        target.to_str().unwrap(),
        "--pattern",
        "/data",
        "--output-format",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    fn entries_below(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let below = if path.is_dir() && !path.is_symlink() {
                    entries_below(&path)
                } else {
                    0
                };
                1 + below
            })
            .sum()
    }
    assert_eq!(summary["entries"], entries_below(&target), "{summary}");
    assert!(summary["bytes"].as_u64().unwrap() > 0);
    assert_eq!(summary["not-restored"], serde_json::json!([]));

    // A raw archive written to a file: its name and size.
    let image = tmp.path().join("disk.img");
    let out = local_command(&datastore_dir())
        .args(["--output-format", "json", "restore", "vm/100/latest"])
        .args(["drive-scsi0.img", image.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["archive"], "drive-scsi0.img.fidx");
    assert_eq!(
        summary["bytes"],
        std::fs::metadata(&image).unwrap().len(),
        "{summary}"
    );
}

#[test]
fn the_manifest_that_files_lists_can_be_restored() {
    for name in ["index.json.blob", "index.json"] {
        let out = restore(&["host/fixture-data/latest", name, "-"]);
        assert!(out.status.success(), "{out:?}");
        let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(manifest["backup-type"], "host", "{manifest}");
        assert!(manifest["files"].as_array().unwrap().len() >= 2);
    }
}
