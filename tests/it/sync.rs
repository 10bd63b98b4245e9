//! `pbsfs sync`: snapshots copied between local datastores and the test server keep their
//! contents (blobs byte for byte, the manifest's signed part, index entries; locally every
//! file's bytes), encrypted ones without the key; a second sync sends nothing; an
//! interrupted sync (kill -9, Ctrl-C, a dropped connection) leaves no complete-looking
//! snapshot and the next run finishes the job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use common::cli::{ok_json, pbsfs, repository, stderr};
use common::pbs_server::{empty_datastore, TestServer};
use pbsfs::format::index::{AnyIndex, ChunkIndex};
use pbsfs::format::manifest::Manifest;
use pbsfs::format::{digest_to_hex, Digest};
use pbsfs::store::access::{DatastoreAccess, LocalAccess, SnapshotAccess, SnapshotSummary};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use pbsfs::store::sync::{sync_snapshots, SnapshotOutcome, SyncOptions};
use pbsfs::store::ChunkSource;

/// A writable copy of the fixture datastore (made by the official tools: plain, encrypted
/// and signed snapshots, a VM image, a namespace) and an empty datastore beside it.
fn source_and_empty() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let source = tmp.path().join("source");
    common::copy_fixture_datastore(&source);
    let empty = empty_datastore(&tmp.path().join("dest"));
    (tmp, source, empty)
}

/// `pbsfs -r SOURCE ARGS`, the server's secret and pin given for the destination side.
fn sync_from_local(source: &Path, server: Option<&TestServer>, args: &[&str]) -> Command {
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

fn run_json(mut command: Command) -> serde_json::Value {
    ok_json(&command.output().expect("run pbsfs"))
}

/// Files of the root namespace's snapshot directories by `type/id/time/name`.
fn snapshot_files(store: &Path) -> BTreeMap<String, Vec<u8>> {
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

fn chunk_files(store: &Path) -> BTreeMap<String, Vec<u8>> {
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
fn referenced(files: &BTreeMap<String, Vec<u8>>) -> BTreeSet<String> {
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
fn assert_same_contents(expected: &BTreeMap<String, Vec<u8>>, got: &BTreeMap<String, Vec<u8>>) {
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

/// Chunks from the wrapped source until the budget is spent, then errors, as a dropped
/// connection does.
struct Flaky {
    inner: LocalAccess,
    budget: Arc<AtomicI64>,
}

struct FlakySnapshot {
    inner: Arc<dyn SnapshotAccess>,
    budget: Arc<AtomicI64>,
}

struct FlakyChunks {
    inner: Arc<dyn ChunkSource>,
    budget: Arc<AtomicI64>,
}

impl DatastoreAccess for Flaky {
    fn list_namespaces(&self, parent: &BackupNamespace) -> anyhow::Result<Vec<BackupNamespace>> {
        self.inner.list_namespaces(parent)
    }
    fn list_groups(&self, ns: &BackupNamespace) -> anyhow::Result<Vec<BackupGroup>> {
        self.inner.list_groups(ns)
    }
    fn list_snapshots(
        &self,
        ns: &BackupNamespace,
        group: Option<&BackupGroup>,
    ) -> anyhow::Result<Vec<SnapshotSummary>> {
        self.inner.list_snapshots(ns, group)
    }
    fn open_snapshot(
        &self,
        ns: &BackupNamespace,
        dir: &BackupDir,
    ) -> anyhow::Result<Arc<dyn SnapshotAccess>> {
        Ok(Arc::new(FlakySnapshot {
            inner: self.inner.open_snapshot(ns, dir)?,
            budget: self.budget.clone(),
        }))
    }
}

impl SnapshotAccess for FlakySnapshot {
    fn dir(&self) -> &BackupDir {
        self.inner.dir()
    }
    fn manifest(&self) -> &Manifest {
        self.inner.manifest()
    }
    fn read_file(&self, filename: &str) -> anyhow::Result<Vec<u8>> {
        self.inner.read_file(filename)
    }
    fn chunk_source(&self) -> Arc<dyn ChunkSource> {
        Arc::new(FlakyChunks {
            inner: self.inner.chunk_source(),
            budget: self.budget.clone(),
        })
    }
}

impl ChunkSource for FlakyChunks {
    fn fetch_raw_chunk(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        if self.budget.fetch_sub(1, Ordering::SeqCst) <= 0 {
            anyhow::bail!("connection reset by peer");
        }
        self.inner.fetch_raw_chunk(digest)
    }
}

#[test]
fn a_sync_cut_off_by_its_source_is_finished_by_the_next_run() {
    let (_tmp, source, dest) = source_and_empty();
    let source_store = Arc::new(LocalDatastore::open(&source).unwrap());
    let target = LocalTarget::new(Arc::new(LocalDatastore::open(&dest).unwrap()));
    let dir = BackupDir::parse("host/fixture-enc/2026-11-25T08:29:00Z").unwrap();
    let root = BackupNamespace::root();
    let mut options = SyncOptions::new("sync@pam");
    options.workers = 1;

    let flaky = Flaky {
        inner: LocalAccess(source_store.clone()),
        budget: Arc::new(AtomicI64::new(2)),
    };
    let err = sync_snapshots(
        &flaky,
        &root,
        &target,
        &root,
        std::slice::from_ref(&dir),
        &options,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("connection reset"), "{err:#}");
    let listed = target
        .datastore()
        .list_snapshots(&root, Some(&dir.group))
        .unwrap();
    assert!(listed.iter().all(|s| !s.finished), "{listed:?}");
    assert_eq!(chunk_files(&dest).len(), 2);

    let summary = sync_snapshots(
        &LocalAccess(source_store),
        &root,
        &target,
        &root,
        std::slice::from_ref(&dir),
        &options,
    )
    .unwrap();
    let SnapshotOutcome::Copied {
        chunks_sent,
        chunks_present,
        ..
    } = summary.snapshots[0].1
    else {
        panic!("{summary:?}");
    };
    assert_eq!(chunks_present, 2);
    let total = referenced(
        &snapshot_files(&source)
            .into_iter()
            .filter(|(k, _)| k.starts_with("host/fixture-enc/"))
            .collect(),
    )
    .len() as u64;
    assert_eq!(chunks_sent + chunks_present, total);
    let expected = std::fs::read(source.join(dir.rel_path()).join("index.json.blob")).unwrap();
    let copied = std::fs::read(dest.join(dir.rel_path()).join("index.json.blob")).unwrap();
    assert_eq!(expected, copied);
}

/// Replaces the last chunk of the snapshot's last index with a FIFO: a sync reading it
/// blocks there (with every other chunk sent) until the FIFO is written to. Returns the
/// chunk's path and bytes.
fn block_at_last_chunk(source: &Path, snapshot: &str) -> (PathBuf, Vec<u8>) {
    let dir = source.join(snapshot);
    let manifest =
        Manifest::from_blob(&std::fs::read(dir.join("index.json.blob")).unwrap()).unwrap();
    let last = manifest
        .files
        .iter()
        .rfind(|f| f.filename.ends_with("idx"))
        .unwrap();
    let raw = std::fs::read(dir.join(&last.filename)).unwrap();
    let digest = *AnyIndex::parse(&raw).unwrap().digests().last().unwrap();
    let store = LocalDatastore::open(source).unwrap();
    let path = store.chunk_path(&digest);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    (path, bytes)
}

fn start_blocked_sync(source: &Path, dest: &Path, snapshot: &str) -> Child {
    let mut command = sync_from_local(source, None, &["--to", dest.to_str().unwrap()]);
    command
        .args(["--workers", "1", snapshot])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.spawn().unwrap()
}

/// Waits until the sync sits in the unfinished snapshot directory it made.
fn wait_for_unfinished(dest: &Path, snapshot: &str) {
    let path = dest.join(snapshot);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.is_dir() {
        assert!(Instant::now() < deadline, "the sync never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The FIFO chunk comes last: every other chunk is sent once the sync blocks on it.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_killed_sync_leaves_no_complete_snapshot_and_the_next_run_continues() {
    let (_tmp, source, dest) = source_and_empty();
    let snapshot = "host/fixture-meta/2026-11-25T08:28:55Z";
    let (fifo, bytes) = block_at_last_chunk(&source, snapshot);
    let mut child = start_blocked_sync(&source, &dest, snapshot);
    wait_for_unfinished(&dest, snapshot);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!dest.join(snapshot).join("index.json.blob").exists());
    let sent_before = chunk_files(&dest).len();
    assert!(sent_before > 0);

    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(&fifo, &bytes).unwrap();
    let resumed = run_json(sync_from_local(
        &source,
        None,
        &["--to", dest.to_str().unwrap(), snapshot],
    ));
    assert_eq!(resumed["copied"], 1, "{resumed}");
    assert_eq!(resumed["chunks-present"], sent_before as u64);
    let expected = std::fs::read(source.join(snapshot).join("index.json.blob")).unwrap();
    let copied = std::fs::read(dest.join(snapshot).join("index.json.blob")).unwrap();
    assert_eq!(expected, copied);
}

#[test]
fn ctrl_c_discards_the_snapshot_being_copied() {
    let (_tmp, source, dest) = source_and_empty();
    let snapshot = "host/fixture-meta/2026-11-25T08:28:55Z";
    let (fifo, bytes) = block_at_last_chunk(&source, snapshot);
    let child = start_blocked_sync(&source, &dest, snapshot);
    wait_for_unfinished(&dest, snapshot);
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    // The blocked read goes on once the chunk arrives; the sync then stops and cleans up.
    std::fs::write(&fifo, &bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGINT),
        "{}",
        stderr(&out)
    );
    assert!(
        !dest.join(snapshot).exists(),
        "the unfinished snapshot is left"
    );
}
