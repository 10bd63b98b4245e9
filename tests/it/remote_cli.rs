//! The command line against the in-process PBS test server: listing, files, restore, verify,
//! a snapshot mount and a whole-store mount, with token auth and a pinned certificate
//! fingerprint.

use crate::common;

use std::process::Command;

use common::cli::{mount_point, ok, pbsfs, read_mounted_tree, repository, umount};
use common::disk_tree::{assert_same_tree, tree_from_disk};
use common::pbs_server::{fixture_datastore, ServerConfig, TestServer};
use common::{copy_fixture_datastore, expected_tree, sha256_hex};

/// `restore` of a payload archive through the server gives the fixture's bytes.
fn assert_restores_fixture_payload(server: &TestServer) {
    let raw = pbsfs(
        server,
        &["restore", "host/fixture-data/latest", "root.ppxar", "-"],
    );
    assert_eq!(
        sha256_hex(ok(&raw)),
        "92b84a1945aafcf4256a483542816483d4050eb15f14cae0f58267f67c7e6ffb"
    );
}

#[test]
fn list_files_restore_and_verify_through_the_server() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let list: serde_json::Value = serde_json::from_slice(ok(&pbsfs(
        &server,
        &["snapshots", "--output-format", "json"],
    )))
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 7);
    let team: serde_json::Value = serde_json::from_slice(ok(&pbsfs(
        &server,
        &["--ns", "team", "snapshots", "--output-format", "json"],
    )))
    .unwrap();
    assert_eq!(team[0]["snapshot"], "host/fixture-ns/2026-11-25T08:29:01Z");

    let files: serde_json::Value = serde_json::from_slice(ok(&pbsfs(
        &server,
        &[
            "files",
            "host/fixture-legacy/latest",
            "--output-format",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(files[0]["filename"], "root.pxar.didx");
    assert_eq!(files[0]["size"], 28269171);

    assert_restores_fixture_payload(&server);
    ok(&pbsfs(&server, &["verify", "host/fixture-legacy/latest"]));
}

#[test]
fn a_damaged_manifest_on_the_server_affects_only_its_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("ds");
    copy_fixture_datastore(&copy);
    let legacy = "host/fixture-legacy/2026-11-25T08:28:42Z";
    let newest_meta = "host/fixture-meta/2026-11-25T08:28:55Z";
    std::fs::write(copy.join(legacy).join("index.json.blob"), b"").unwrap();
    let flipped = copy.join(newest_meta).join("index.json.blob");
    let mut raw = std::fs::read(&flipped).unwrap();
    raw[20] ^= 0x01;
    std::fs::write(&flipped, raw).unwrap();
    let server = TestServer::start(&copy, ServerConfig::default());

    let list: serde_json::Value = serde_json::from_slice(ok(&pbsfs(
        &server,
        &["snapshots", "--output-format", "json"],
    )))
    .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 7);
    let damaged = |name: &str| {
        list.iter().find(|s| s["snapshot"] == name).unwrap()["damaged"]
            .as_str()
            .map(str::to_string)
    };
    // The same reasons as for the local datastore.
    assert!(damaged(legacy).unwrap().contains("too short"));
    assert!(damaged(newest_meta).unwrap().contains("CRC"));
    assert_eq!(damaged("host/fixture-data/2026-11-25T08:28:43Z"), None);

    let files = pbsfs(&server, &["files", "host/fixture-meta/latest"]);
    let text = String::from_utf8_lossy(ok(&files)).into_owned();
    assert!(
        text.starts_with("host/fixture-meta/2026-11-25T08:28:43Z"),
        "{text}"
    );
    assert_restores_fixture_payload(&server);

    let verify = pbsfs(&server, &["verify"]);
    assert!(!verify.status.success());
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        report.contains(&format!("FAILED  {legacy}"))
            && report.contains(&format!("FAILED  {newest_meta}"))
            && report.contains("ok      host/fixture-meta/2026-11-25T08:28:43Z")
            && report.contains("2 failed"),
        "{report}"
    );
}

#[test]
fn a_snapshot_mounted_from_the_server_is_the_original_tree() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let (_tmp, point) = mount_point();
    ok(&pbsfs(
        &server,
        &["mount", "host/fixture-data/latest", point.to_str().unwrap()],
    ));
    let tree = read_mounted_tree(&point);
    assert_same_tree(&tree, &expected_tree("tree1.json"), "remote fixture-data");
}

#[test]
fn the_whole_server_datastore_mounts_like_a_local_one() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let (_tmp, point) = mount_point();
    ok(&pbsfs(&server, &["mount", point.to_str().unwrap()]));
    let names = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let checks = std::panic::catch_unwind(|| {
        assert_eq!(names(&point), ["host", "ns", "vm"]);
        assert_eq!(
            names(&point.join("host/fixture-meta")),
            ["2026-11-25T08:28:43Z", "2026-11-25T08:28:55Z", "latest"]
        );
        assert_eq!(
            std::fs::read_link(point.join("host/fixture-meta/latest")).unwrap(),
            std::path::Path::new("2026-11-25T08:28:55Z")
        );
        assert_eq!(
            names(&point.join("ns/team/host/fixture-ns/2026-11-25T08:29:01Z")),
            ["root.pxar"]
        );
        // A split archive read through its snapshot's reader session.
        // (The archive's root directory shows the snapshot's attributes, not the tree's.)
        let mut tree =
            tree_from_disk(&point.join("host/fixture-data/2026-11-25T08:28:43Z/root.pxar"));
        let mut expected = expected_tree("tree1.json");
        assert!(tree.remove(&Vec::new()).is_some());
        assert!(expected.remove(&Vec::new()).is_some());
        assert_same_tree(&tree, &expected, "remote whole-store mount");
        let image =
            std::fs::read(point.join("vm/100/2026-11-25T08:29:01Z/drive-scsi0.img")).unwrap();
        assert_eq!(
            sha256_hex(&image),
            "8aa9ddca4f0968e0f6e9bcf188af4fd83866757cb8ee74b8e38e124d295b57c6"
        );
    });
    umount(&point);
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn wrong_token_and_wrong_fingerprint_are_clear_errors() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args([
            "--repository",
            &repository(&server),
            "--fingerprint",
            &server.fingerprint,
            "snapshots",
        ])
        .env("PBS_PASSWORD", "not-the-secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("authentication") || err.contains("401"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-secret"),
        "the secret leaked into the error: {err}"
    );

    let wrong = "00:".repeat(31) + "00";
    let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args([
            "--repository",
            &repository(&server),
            "--fingerprint",
            &wrong,
            "snapshots",
        ])
        .env("PBS_PASSWORD", &server.config.token_secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains(&server.fingerprint.to_lowercase()),
        "the error should show the server's fingerprint: {err}"
    );
}

#[test]
fn server_atoms_select_the_same_datastore_as_a_repository_string() {
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let port = server.addr.port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--datastore",
            &server.config.store_name,
        ])
        .args([
            "--auth-id",
            &server.config.token_id,
            "--fingerprint",
            &server.fingerprint,
        ])
        .args(["snapshots", "--output-format", "json"])
        .env("PBS_PASSWORD", &server.config.token_secret)
        .env_remove("PBS_REPOSITORY")
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(ok(&out)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 7);
    let both = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args([
            "--repository",
            "/tmp/x",
            "--server",
            "127.0.0.1",
            "snapshots",
        ])
        .output()
        .unwrap();
    assert!(
        !both.status.success(),
        "--repository and --server must not be combined"
    );
}
