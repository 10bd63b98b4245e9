//! `pbsfs restore SNAPSHOT root.pxar DIR`: the extracted tree, compared through the kernel
//! with what the official tools archived.

use crate::common;

use std::process::{Command, Output};

use common::disk_tree::{assert_same_tree, tree_from_disk};
use common::*;

fn restore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args(["--repository", datastore_dir().to_str().unwrap(), "restore"])
        .args(args)
        .output()
        .unwrap()
}

fn check(snapshot: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("out");
    let out = restore(&[snapshot, "root.pxar", target.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let out = restore(&[
        "host/fixture-legacy/latest",
        "root.pxar",
        target.to_str().unwrap(),
        "--pattern",
        "links/**",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
