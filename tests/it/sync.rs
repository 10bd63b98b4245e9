//! `pbsfs sync`: snapshots copied between local datastores and the test server keep their
//! contents (blobs byte for byte, the manifest's signed part, index entries; locally every
//! file's bytes), encrypted ones without the key; a second sync sends nothing; groups,
//! snapshots, `--last` and namespaces select; the destination server's own credentials.
//! Interrupted syncs: `sync_interrupt`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common;
use common::cli::{ok_json, pbsfs, repository, stderr};
use common::pbs_server::{empty_datastore, TestServer};
use pbsfs::format::blob::encode_blob;
use pbsfs::format::index::{AnyIndex, ChunkIndex};
use pbsfs::format::manifest::{Manifest, CLIENT_LOG_BLOB_NAME};
use pbsfs::format::{digest_to_hex, Digest};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{BackupGroup, BackupNamespace};

/// A writable copy of the fixture datastore (made by the official tools: plain, encrypted
/// and signed snapshots, a VM image, a namespace) and an empty datastore beside it.
pub(crate) fn source_and_empty() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let source = tmp.path().join("source");
    common::copy_fixture_datastore(&source);
    let empty = empty_datastore(&tmp.path().join("dest"));
    (tmp, source, empty)
}

/// `pbsfs -r SOURCE ARGS`, the server's secret and pin given for the destination side.
pub(crate) fn sync_from_local(
    source: &Path,
    server: Option<&TestServer>,
    args: &[&str],
) -> Command {
    let mut command = common::cli::local_command(source);
    command.arg("sync").args(args);
    if let Some(server) = server {
        command
            .args(["--to-fingerprint", &server.fingerprint])
            .env("PBS_PASSWORD", &server.config.token_secret);
    }
    command.args(["--output-format", "json"]);
    command
}

/// Gives two snapshots of `store` a client log (a plain and an encrypted one), as PVE's
/// uploads leave them: a blob beside the manifest, not listed in it.
fn add_client_logs(store: &Path) {
    for (snapshot, text) in [
        (
            "host/fixture-data/2026-11-25T08:28:43Z",
            "INFO: starting backup\n",
        ),
        (
            "host/fixture-enc/2026-11-25T08:29:00Z",
            "INFO: encrypted backup\n",
        ),
    ] {
        let blob = encode_blob(text.repeat(200).as_bytes(), true).unwrap();
        std::fs::write(store.join(snapshot).join(CLIENT_LOG_BLOB_NAME), blob).unwrap();
    }
}

pub(crate) fn run_json(mut command: Command) -> serde_json::Value {
    ok_json(&command.output().expect("run pbsfs"))
}

/// Files of the root namespace's snapshot directories by `type/id/time/name`.
pub(crate) fn snapshot_files(store: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for ty in ["host", "vm", "ct"] {
        let Ok(groups) = std::fs::read_dir(store.join(ty)) else {
            continue;
        };
        for group in groups.map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
            for snap in std::fs::read_dir(&group)
                .unwrap()
                .map(|e| e.unwrap().path())
            {
                if !snap.is_dir() {
                    continue;
                }
                for file in std::fs::read_dir(&snap).unwrap().map(|e| e.unwrap().path()) {
                    let rel = file.strip_prefix(store).unwrap().display().to_string();
                    files.insert(rel, std::fs::read(&file).unwrap());
                }
            }
        }
    }
    files
}

pub(crate) fn chunk_files(store: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut chunks = BTreeMap::new();
    for prefix in std::fs::read_dir(store.join(".chunks")).unwrap() {
        for chunk in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let path = chunk.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.len() == 64 {
                // Not a temporary file of a writer cut short.
                chunks.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    chunks
}

/// The chunks the root namespace's snapshots of `files` reference.
pub(crate) fn referenced(files: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
    files
        .iter()
        .filter(|(name, _)| name.ends_with("idx"))
        .flat_map(|(_, raw)| AnyIndex::parse(raw).unwrap().digests().to_vec())
        .map(|d| digest_to_hex(&d))
        .collect()
}

fn entries(raw: &[u8]) -> Vec<(u64, u64, Digest)> {
    let index = AnyIndex::parse(raw).unwrap();
    (0..index.chunk_count())
        .map(|i| index.chunk_info(i).unwrap())
        .map(|c| (c.start, c.end, c.digest))
        .collect()
}

/// The same snapshots with the same contents: blobs byte for byte, the manifest's signed
/// part and signature, the indexes' entries (a server writes its own index headers and
/// adds upload statistics to the manifest's unprotected part).
pub(crate) fn assert_same_contents(
    expected: &BTreeMap<String, Vec<u8>>,
    got: &BTreeMap<String, Vec<u8>>,
) {
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(expected), names(got));
    for (name, raw) in expected {
        let copy = &got[name];
        if name.ends_with("index.json.blob") {
            let (a, b) = (
                Manifest::from_blob(raw).unwrap(),
                Manifest::from_blob(copy).unwrap(),
            );
            assert_eq!(
                a.signed_bytes().unwrap(),
                b.signed_bytes().unwrap(),
                "{name}"
            );
            assert_eq!(a.signature, b.signature, "{name}");
        } else if name.ends_with("idx") {
            assert_eq!(entries(raw), entries(copy), "{name}");
        } else {
            assert!(raw == copy, "{name} differs");
        }
    }
}

fn outcomes(summary: &serde_json::Value) -> Vec<String> {
    summary["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["result"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn local_to_server_to_local_keeps_every_snapshot_and_chunk() {
    let (_tmp, source, dest) = source_and_empty();
    add_client_logs(&source);
    let expected = snapshot_files(&source);
    let snapshots = expected
        .keys()
        .filter(|k| k.ends_with("index.json.blob"))
        .count();
    let server = TestServer::start_empty();

    let up = run_json(sync_from_local(
        &source,
        Some(&server),
        &["--to", &repository(&server)],
    ));
    assert_eq!(up["copied"], snapshots, "{up}");
    assert!(up["chunks-sent"].as_u64().unwrap() > 0);
    let served = server.store().root().to_path_buf();
    assert_same_contents(&expected, &snapshot_files(&served));

    let down = ok_json(&pbsfs(
        &server,
        &[
            "sync",
            "--to",
            dest.to_str().unwrap(),
            "--output-format",
            "json",
        ],
    ));
    assert_eq!(down["copied"], snapshots, "{down}");
    let copied = snapshot_files(&dest);
    assert_same_contents(&expected, &copied);
    // The same chunk set, byte for byte (encrypted chunks included, with no key anywhere).
    let wanted = referenced(&expected);
    let source_chunks = chunk_files(&source);
    let dest_chunks = chunk_files(&dest);
    assert_eq!(dest_chunks.keys().cloned().collect::<BTreeSet<_>>(), wanted);
    for (name, raw) in &dest_chunks {
        assert!(source_chunks[name] == *raw, "chunk {name} differs");
    }
    // The copy verifies.
    let verify = common::cli::pbsfs_local(&dest, &["verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));

    // Again: nothing travels, in either direction.
    let uploads = server.counters.chunk_uploads.load(Ordering::SeqCst);
    let again = run_json(sync_from_local(
        &source,
        Some(&server),
        &["--to", &repository(&server)],
    ));
    assert_eq!(again["chunks-sent"], 0, "{again}");
    assert_eq!(again["copied"], 0);
    assert!(outcomes(&again).iter().all(|o| o == "present"));
    assert_eq!(
        server.counters.chunk_uploads.load(Ordering::SeqCst),
        uploads
    );
    let reads = server.counters.chunk_reads.load(Ordering::SeqCst);
    let again = ok_json(&pbsfs(
        &server,
        &[
            "sync",
            "--to",
            dest.to_str().unwrap(),
            "--output-format",
            "json",
        ],
    ));
    assert_eq!(again["chunks-sent"], 0, "{again}");
    assert_eq!(server.counters.chunk_reads.load(Ordering::SeqCst), reads);
}

#[test]
fn local_to_local_keeps_every_byte_and_a_second_sync_is_quick() {
    let (_tmp, source, dest) = source_and_empty();
    add_client_logs(&source);
    let first = run_json(sync_from_local(
        &source,
        None,
        &["--to", dest.to_str().unwrap()],
    ));
    let expected = snapshot_files(&source);
    let copied = snapshot_files(&dest);
    assert_eq!(expected.len(), copied.len());
    for (name, raw) in &expected {
        assert!(
            copied.get(name) == Some(raw),
            "{name} differs or is missing"
        );
    }
    let source_chunks = chunk_files(&source);
    for (name, raw) in chunk_files(&dest) {
        assert!(source_chunks[&name] == raw, "chunk {name} differs");
    }
    assert_eq!(
        first["chunks-sent"].as_u64().unwrap() as usize,
        referenced(&expected).len()
    );

    let started = Instant::now();
    let again = run_json(sync_from_local(
        &source,
        None,
        &["--to", dest.to_str().unwrap()],
    ));
    let snapshots = outcomes(&again).len();
    assert!(snapshots > 0 && outcomes(&again).iter().all(|o| o == "present"));
    assert_eq!(again["chunks-sent"], 0);
    // Well under a second per snapshot, the program's start included.
    assert!(started.elapsed() < Duration::from_millis(500) * snapshots as u32);
}

#[test]
fn groups_snapshots_last_and_namespaces_select_what_is_copied() {
    let (_tmp, source, dest) = source_and_empty();
    let to = dest.to_str().unwrap();
    let newest = run_json(sync_from_local(
        &source,
        None,
        &["--to", to, "host/fixture-meta", "--last", "1"],
    ));
    assert_eq!(
        newest["snapshots"][0]["snapshot"],
        "host/fixture-meta/2026-11-25T08:28:55Z"
    );
    assert_eq!(newest["copied"], 1);
    // An older snapshot cannot go behind a newer one in the same group.
    let older = run_json(sync_from_local(
        &source,
        None,
        &["--to", to, "host/fixture-meta/2026-11-25T08:28:43Z"],
    ));
    assert_eq!(outcomes(&older), ["older-than-destination"]);
    // From a namespace into the root namespace.
    let team = run_json(sync_from_local(
        &source,
        None,
        &["--ns", "team", "--to-ns", "", "--to", to],
    ));
    assert_eq!(
        team["snapshots"][0]["snapshot"],
        "host/fixture-ns/2026-11-25T08:29:01Z"
    );
    assert_eq!(team["copied"], 1);
    let store = LocalDatastore::open(&dest).unwrap();
    let group = BackupGroup::parse("host/fixture-ns").unwrap();
    assert_eq!(
        store
            .list_snapshots(&BackupNamespace::root(), Some(&group))
            .unwrap()
            .len(),
        1
    );
    let missing = sync_from_local(
        &source,
        None,
        &["--to", to, "host/nope/2020-01-01T00:00:00Z"],
    )
    .output()
    .unwrap();
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("not found"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn server_to_server_takes_the_destination_secret_from_pbs_to_password() {
    let (_tmp, source, _) = source_and_empty();
    let from = TestServer::start(&source, Default::default());
    let to = TestServer::start_empty();
    let mut command = common::cli::command();
    command
        .args(["--repository", &repository(&from)])
        .args(["--fingerprint", &from.fingerprint])
        .args(["sync", "--to", &repository(&to), "vm/100"])
        .args(["--output-format", "json"])
        .env("PBS_PASSWORD", &from.config.token_secret)
        .env("PBS_TO_PASSWORD", &to.config.token_secret)
        .env("PBS_TO_FINGERPRINT", &to.fingerprint);
    let without = command
        .env_remove("PBS_TO_PASSWORD")
        .output()
        .expect("run pbsfs");
    // The source's secret is never sent to the destination.
    assert!(!without.status.success());
    assert!(
        stderr(&without).contains("PBS_TO_PASSWORD"),
        "{}",
        stderr(&without)
    );
    command.env("PBS_TO_PASSWORD", &to.config.token_secret);
    let summary = run_json(command);
    assert_eq!(summary["copied"], 1, "{summary}");
    let expected: BTreeMap<_, _> = snapshot_files(&source)
        .into_iter()
        .filter(|(k, _)| k.starts_with("vm/"))
        .collect();
    assert_same_contents(&expected, &snapshot_files(to.store().root()));
}

#[test]
fn a_damaged_client_log_stays_behind_with_a_warning_and_the_snapshot_is_copied() {
    let (_tmp, source, dest) = source_and_empty();
    let snapshot = "host/fixture-data/2026-11-25T08:28:43Z";
    let mut blob = encode_blob(b"INFO: a log", false).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 0xff; // the CRC no longer holds
    std::fs::write(source.join(snapshot).join(CLIENT_LOG_BLOB_NAME), blob).unwrap();

    let output = sync_from_local(
        &source,
        None,
        &["--to", dest.to_str().unwrap(), "host/fixture-data"],
    )
    .output()
    .unwrap();
    let summary = ok_json(&output);
    assert_eq!(summary["copied"], 1, "{summary}");
    assert_eq!(summary["snapshots"][0]["client-log"], false, "{summary}");
    let warning = stderr(&output);
    assert!(
        warning.contains("copied without its client log") && warning.contains("CRC"),
        "{warning}"
    );
    assert!(dest.join(snapshot).join("index.json.blob").is_file());
    assert!(!dest.join(snapshot).join(CLIENT_LOG_BLOB_NAME).exists());
}
