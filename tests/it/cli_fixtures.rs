//! The commands of issue "Foundation" against the datastore made by the official tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::common::cli::{fails_with, ok, ok_json, pbsfs_local, stderr};
use crate::common::{copy_fixture_datastore, UNENCRYPTED_ARCHIVES};
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

fn datastore() -> PathBuf {
    fixtures().join("datastore")
}

fn on(store: &Path, args: &[&str]) -> Output {
    pbsfs_local(store, args)
}

const ROOT_SNAPSHOTS: [&str; 7] = [
    "host/fixture-data/2026-11-25T08:28:43Z",
    "host/fixture-enc-scrypt/2026-11-25T08:29:18Z",
    "host/fixture-enc/2026-11-25T08:29:00Z",
    "host/fixture-legacy/2026-11-25T08:28:42Z",
    "host/fixture-meta/2026-11-25T08:28:43Z",
    "host/fixture-meta/2026-11-25T08:28:55Z",
    "vm/100/2026-11-25T08:29:01Z",
];

fn snapshot_names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|s| s["snapshot"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn snapshots_lists_exactly_each_namespace() {
    let store = datastore();
    let root = ok_json(&on(&store, &["snapshots", "--output-format", "json"]));
    assert_eq!(snapshot_names(&root), ROOT_SNAPSHOTS);
    let legacy = root
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["backup-id"] == "fixture-legacy")
        .unwrap();
    assert_eq!(legacy["backup-time"], 1795595322);
    assert_eq!(
        legacy["files"],
        serde_json::json!(["root.pxar.didx", "catalog.pcat1.didx"])
    );
    assert_eq!(legacy["size"], 28269171 + 69649);

    let team = ok_json(&on(
        &store,
        &["--ns", "team", "snapshots", "--output-format", "json"],
    ));
    assert_eq!(
        snapshot_names(&team),
        ["host/fixture-ns/2026-11-25T08:29:01Z"]
    );

    let group = ok_json(&on(
        &store,
        &["snapshots", "host/fixture-meta", "--output-format", "json"],
    ));
    assert_eq!(snapshot_names(&group), ROOT_SNAPSHOTS[4..6]);

    let text = String::from_utf8(ok(&on(&store, &["snapshots"])).to_vec()).unwrap();
    for name in ROOT_SNAPSHOTS {
        assert!(text.contains(name), "table lacks {name}:\n{text}");
    }
    let namespaces = ok_json(&on(&store, &["namespaces", "--output-format", "json"]));
    assert_eq!(namespaces, serde_json::json!(["", "team"]));
}

#[test]
fn files_shows_sizes_and_crypt_modes() {
    let store = datastore();
    let files = ok_json(&on(
        &store,
        &[
            "files",
            "host/fixture-enc/latest",
            "--output-format",
            "json",
        ],
    ));
    let list = files.as_array().unwrap();
    let root = list
        .iter()
        .find(|f| f["filename"] == "root.pxar.didx")
        .unwrap();
    assert_eq!(root["crypt-mode"], "encrypt");
    assert_eq!(root["size"], 28269171);
    assert!(list.iter().any(|f| f["filename"] == "index.json.blob"));

    let files = ok_json(&on(
        &store,
        &["files", "vm/100/2026-11-25", "--output-format", "json"],
    ));
    let image = &files.as_array().unwrap()[0];
    assert_eq!(image["filename"], "drive-scsi0.img.fidx");
    assert_eq!(image["size"], 16789561);
    assert_eq!(image["crypt-mode"], "none");
}

#[test]
fn snapshot_selection_forms_and_errors() {
    let store = datastore();
    let resolve = |spec: &str| on(&store, &["files", spec, "--output-format", "json"]);
    assert!(resolve("host/fixture-meta/latest").status.success());
    assert!(resolve("host/fixture-meta/2026-11-25T08:28:55Z")
        .status
        .success());
    assert!(resolve("host/fixture-meta/2026-11-25T08:28:4")
        .status
        .success());
    assert!(resolve("host/fixture-legacy/1795595322").status.success());
    let ambiguous = resolve("host/fixture-meta/2026-11-25");
    assert!(!ambiguous.status.success());
    let err = stderr(&ambiguous);
    assert!(
        err.contains("ambiguous")
            && err.contains("2026-11-25T08:28:43Z")
            && err.contains("2026-11-25T08:28:55Z"),
        "{err}"
    );
    let unknown = resolve("host/nosuch/latest");
    fails_with(&unknown, "host/fixture-legacy");
}

#[test]
fn verify_passes_on_the_official_datastore() {
    let out = on(&datastore(), &["verify", "--output-format", "json"]);
    let report = ok_json(&out);
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["snapshots"].as_array().unwrap().len(), 8);
    assert!(report["chunks-checked"].as_u64().unwrap() > 20);
}

#[test]
fn restore_to_stdout_gives_the_official_archive_bytes() {
    let store = datastore();
    for (ns, snapshot, archive, sha) in UNENCRYPTED_ARCHIVES {
        let out = on(&store, &["--ns", ns, "restore", snapshot, archive, "-"]);
        let data = ok(&out);
        assert_eq!(
            hex::encode(Sha256::digest(data)),
            sha,
            "{snapshot} {archive}"
        );
    }
}

/// Runs `pbsfs ARGS` with stdout a pipe whose reader has already gone, as in `pbsfs ... | head`
/// once `head` is done.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args(args)
        .env_remove("PBS_REPOSITORY")
        .env_remove("PBS_NAMESPACE")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run pbsfs")
}

#[test]
fn a_closed_output_pipe_ends_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let store = datastore();
    let store = store.to_str().unwrap();
    for args in [
        vec!["files", "host/fixture-legacy/latest"],
        vec!["verify"],
        vec!["snapshots"],
        vec!["--output-format", "json", "snapshots"],
        vec!["restore", "host/fixture-legacy/latest", "root.pxar", "-"],
    ] {
        let mut all = vec!["--repository", store];
        all.extend_from_slice(&args);
        let out = with_closed_stdout(&all);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {} {}",
            out.status,
            stderr(&out)
        );
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

#[test]
fn restore_to_a_file_and_refuse_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("catalog");
    let target_str = target.to_str().unwrap();
    let args = [
        "restore",
        "host/fixture-legacy/latest",
        "catalog.pcat1",
        target_str,
    ];
    ok(&on(&datastore(), &args));
    let data = std::fs::read(&target).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&data)),
        UNENCRYPTED_ARCHIVES[1].3
    );
    let again = on(&datastore(), &args);
    fails_with(&again, "already exists");
}

#[test]
fn restoring_an_encrypted_archive_without_a_key_is_a_clear_error() {
    let out = on(
        &datastore(),
        &["restore", "host/fixture-enc/latest", "root.pxar", "-"],
    );
    fails_with(&out, "encrypted: key needed");
}

#[test]
fn a_remote_repository_without_credentials_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args(["--repository", "backup@pbs@pbs.invalid:store", "snapshots"])
        .env_remove("PBS_PASSWORD")
        .env_remove("PBS_PASSWORD_FILE")
        .env_remove("PBS_PASSWORD_FD")
        .env_remove("PBS_PASSWORD_CMD")
        .output()
        .unwrap();
    fails_with(&out, "PBS_PASSWORD");
}

#[test]
fn the_default_datastore_reads_as_empty_until_created() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pbsfs"))
        .args(["snapshots", "--output-format", "json"])
        .env("HOME", home.path())
        .env_remove("XDG_DATA_HOME")
        .env_remove("PBS_REPOSITORY")
        .env_remove("PBS_NAMESPACE")
        .output()
        .unwrap();
    assert_eq!(ok_json(&out), serde_json::json!([]));
}

// ---- corruption: each one makes verify and restore fail, naming the file ----

/// A writable copy of the fixture datastore.
fn copy_datastore() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture_datastore(&tmp.path().join("ds"));
    tmp
}

fn legacy_dir(root: &Path) -> PathBuf {
    root.join("host/fixture-legacy/2026-11-25T08:28:42Z")
}

fn first_chunk_of(index: &Path) -> String {
    let bytes = std::fs::read(index).unwrap();
    hex::encode(&bytes[4096 + 8..4096 + 40])
}

fn expect_failure(store: &Path, needle: &str) {
    let verify = on(store, &["verify", "host/fixture-legacy/latest"]);
    assert!(!verify.status.success(), "verify passed despite corruption");
    let report = String::from_utf8_lossy(&verify.stdout).into_owned() + &stderr(&verify);
    assert!(
        report.contains(needle),
        "verify output does not name {needle}:\n{report}"
    );
    let restore = on(
        store,
        &["restore", "host/fixture-legacy/latest", "root.pxar", "-"],
    );
    assert!(
        !restore.status.success(),
        "restore passed despite corruption"
    );
    assert!(
        stderr(&restore).contains(needle),
        "restore error does not name {needle}: {}",
        stderr(&restore)
    );
}

#[test]
fn a_flipped_byte_in_a_chunk_is_found() {
    let tmp = copy_datastore();
    let store = tmp.path().join("ds");
    let digest = first_chunk_of(&legacy_dir(&store).join("root.pxar.didx"));
    let path = store.join(".chunks").join(&digest[..4]).join(&digest);
    let mut raw = std::fs::read(&path).unwrap();
    let middle = raw.len() / 2;
    raw[middle] ^= 0x01;
    std::fs::write(&path, raw).unwrap();
    expect_failure(&store, &digest);
    expect_failure(&store, "root.pxar.didx");
}

#[test]
fn a_truncated_index_is_found() {
    let tmp = copy_datastore();
    let store = tmp.path().join("ds");
    let index = legacy_dir(&store).join("root.pxar.didx");
    let raw = std::fs::read(&index).unwrap();
    std::fs::write(&index, &raw[..raw.len() - 17]).unwrap();
    expect_failure(&store, "root.pxar.didx");
}

#[test]
fn a_wrong_manifest_checksum_is_found() {
    let tmp = copy_datastore();
    let store = tmp.path().join("ds");
    let manifest_path = legacy_dir(&store).join("index.json.blob");
    let raw = std::fs::read(&manifest_path).unwrap();
    let plain = pbsfs::format::blob::decode_blob(&raw, 1 << 20).unwrap();
    let mut manifest: Value = serde_json::from_slice(&plain).unwrap();
    for file in manifest["files"].as_array_mut().unwrap() {
        if file["filename"] == "root.pxar.didx" {
            file["csum"] = Value::String("00".repeat(32));
        }
    }
    let text = serde_json::to_vec_pretty(&manifest).unwrap();
    std::fs::write(
        &manifest_path,
        pbsfs::format::blob::encode_blob(&text, true).unwrap(),
    )
    .unwrap();
    expect_failure(&store, "root.pxar.didx");
}

#[test]
fn a_missing_chunk_is_found() {
    let tmp = copy_datastore();
    let store = tmp.path().join("ds");
    let digest = first_chunk_of(&legacy_dir(&store).join("root.pxar.didx"));
    std::fs::remove_file(store.join(".chunks").join(&digest[..4]).join(&digest)).unwrap();
    expect_failure(&store, &digest);
}

// ---- a damaged manifest: only its own snapshot is affected ----

/// Fixture copy with three bad snapshot directories: the legacy snapshot's manifest emptied,
/// the newest fixture-meta snapshot's manifest with a flipped byte, and a newer vm/100
/// directory without a manifest.
fn datastore_with_damaged_manifests() -> tempfile::TempDir {
    let tmp = copy_datastore();
    let store = tmp.path().join("ds");
    std::fs::write(legacy_dir(&store).join("index.json.blob"), b"").unwrap();
    let flipped = store.join("host/fixture-meta/2026-11-25T08:28:55Z/index.json.blob");
    let mut raw = std::fs::read(&flipped).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    std::fs::write(&flipped, raw).unwrap();
    std::fs::create_dir(store.join("vm/100/2026-11-26T00:00:00Z")).unwrap();
    tmp
}

const DAMAGED_LEGACY: &str = "host/fixture-legacy/2026-11-25T08:28:42Z";
const DAMAGED_META: &str = "host/fixture-meta/2026-11-25T08:28:55Z";
const NO_MANIFEST: &str = "vm/100/2026-11-26T00:00:00Z";

#[test]
fn snapshots_lists_a_damaged_snapshot_marked_with_its_reason() {
    let tmp = datastore_with_damaged_manifests();
    let store = tmp.path().join("ds");
    let list = ok_json(&on(&store, &["snapshots", "--output-format", "json"]));
    // The same snapshots as ever: the unfinished directory is no snapshot.
    assert_eq!(snapshot_names(&list), ROOT_SNAPSHOTS);
    let damaged = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["snapshot"] == name)
            .unwrap()["damaged"]
            .clone()
    };
    let legacy = damaged(DAMAGED_LEGACY);
    assert!(legacy.as_str().unwrap().contains("too short"), "{legacy}");
    let meta = damaged(DAMAGED_META);
    assert!(meta.as_str().unwrap().contains("CRC"), "{meta}");
    for good in ROOT_SNAPSHOTS
        .iter()
        .filter(|s| ![DAMAGED_LEGACY, DAMAGED_META].contains(s))
    {
        assert!(damaged(good).is_null(), "{good} is not damaged");
    }

    let out = on(&store, &["snapshots"]);
    let text = String::from_utf8(ok(&out).to_vec()).unwrap();
    let line = |name: &str| text.lines().find(|l| l.contains(name)).unwrap().to_string();
    assert!(
        line(DAMAGED_LEGACY).contains("DAMAGED: index.json.blob"),
        "{text}"
    );
    assert!(line(DAMAGED_META).contains("CRC"), "{text}");
    assert!(
        line("vm/100/2026-11-25T08:29:01Z").contains("drive-scsi0.img"),
        "{text}"
    );
}

#[test]
fn verify_reports_damaged_and_manifestless_snapshots_and_checks_the_rest() {
    let tmp = datastore_with_damaged_manifests();
    let store = tmp.path().join("ds");
    let out = on(&store, &["verify", "--output-format", "json"]);
    assert!(!out.status.success(), "verify passed despite damage");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let results = report["snapshots"].as_array().unwrap();
    let problems = |name: &str| -> String {
        let found = results
            .iter()
            .find(|s| s["snapshot"] == name)
            .unwrap_or_else(|| panic!("{name} not reported: {report}"));
        found["problems"].to_string()
    };
    assert!(problems(DAMAGED_LEGACY).contains("too short"));
    assert!(problems(DAMAGED_META).contains("CRC"));
    assert!(problems(NO_MANIFEST).contains("no manifest"));
    assert_eq!(report["failed"], 3, "{report}");
    // Every other snapshot was checked, chunks and all.
    assert_eq!(results.len(), 8 - 2 + 2 + 1);
    let ok: Vec<&str> = results
        .iter()
        .filter(|s| s["ok"] == true)
        .map(|s| s["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(ok.len(), 6, "{report}");
    assert!(ok.contains(&"host/fixture-meta/2026-11-25T08:28:43Z"));
    assert!(report["chunks-checked"].as_u64().unwrap() > 20);

    let text = on(&store, &["verify"]);
    assert!(!text.status.success());
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains(&format!("FAILED  {DAMAGED_LEGACY}"))
            && stdout.contains(&format!("FAILED  {NO_MANIFEST}"))
            && stdout.contains("ok      vm/100/2026-11-25T08:29:01Z"),
        "{stdout}"
    );
}

#[test]
fn other_snapshots_read_as_if_the_damaged_one_were_not_there() {
    let tmp = datastore_with_damaged_manifests();
    let store = tmp.path().join("ds");
    // By full time, in the group of a damaged snapshot.
    let older = "host/fixture-meta/2026-11-25T08:28:43Z";
    let files = ok_json(&on(&store, &["files", older, "--output-format", "json"]));
    assert!(files.to_string().contains("root.mpxar.didx"), "{files}");
    // `latest` is the newest readable snapshot.
    let out = on(&store, &["files", "host/fixture-meta/latest"]);
    let text = String::from_utf8(ok(&out).to_vec()).unwrap();
    assert!(text.starts_with(older), "{text}");
    // A prefix matching a good and a damaged snapshot means the good one.
    assert!(on(&store, &["files", "host/fixture-meta/2026-11-25"])
        .status
        .success());
    // Every readable snapshot by `latest` of its group: each is its group's newest readable
    // one now (vm/100's newest directory has no manifest).
    for (ns, snapshot, archive, sha) in UNENCRYPTED_ARCHIVES {
        if snapshot == DAMAGED_LEGACY || snapshot == DAMAGED_META {
            continue;
        }
        let spec = format!("{}/latest", snapshot.rsplit_once('/').unwrap().0);
        let out = on(&store, &["--ns", ns, "restore", &spec, archive, "-"]);
        assert_eq!(
            hex::encode(Sha256::digest(ok(&out))),
            sha,
            "{spec} {archive}"
        );
    }
    // Naming the damaged snapshot is an error that says why.
    for spec in [DAMAGED_LEGACY, "host/fixture-legacy/latest"] {
        let out = on(&store, &["restore", spec, "root.pxar", "-"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("damaged") && err.contains("too short"),
            "{err}"
        );
    }
}
