//! An interrupted `pbsfs sync` (kill -9, Ctrl-C, a connection dropped on either side) leaves
//! no snapshot that looks complete at the destination, and the next run finishes the job.
//! A sync is held at a chosen chunk by a FIFO in its place in the source datastore.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use crate::sync::{
    assert_same_contents, chunk_files, referenced, run_json, snapshot_files, source_and_empty,
    sync_from_local,
};
use common::cli::{repository, stderr};
use common::pbs_server::TestServer;
use pbsfs::format::index::AnyIndex;
use pbsfs::format::manifest::Manifest;
use pbsfs::format::Digest;
use pbsfs::store::access::{DatastoreAccess, LocalAccess, SnapshotAccess, SnapshotSummary};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use pbsfs::store::sync::{sync_snapshots, SnapshotOutcome, SyncOptions};
use pbsfs::store::ChunkSource;

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
    fn read_client_log(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.inner.read_client_log()
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
    let command = sync_from_local(source, None, &["--to", dest.to_str().unwrap()]);
    spawn_with_one_worker(command, snapshot)
}

fn spawn_with_one_worker(mut command: Command, snapshot: &str) -> Child {
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

#[test]
fn a_sync_to_a_server_killed_midway_leaves_no_snapshot_there() {
    let (_tmp, source, _) = source_and_empty();
    let server = TestServer::start_empty();
    let snapshot = "host/fixture-meta/2026-11-25T08:28:55Z";
    let (fifo, bytes) = block_at_last_chunk(&source, snapshot);
    let to = ["--to", &repository(&server)];
    let mut child = spawn_with_one_worker(sync_from_local(&source, Some(&server), &to), snapshot);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.counters.chunk_uploads.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no chunk was ever uploaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: the connection drops
    child.wait().unwrap();
    let group = BackupGroup::parse("host/fixture-meta").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = server
            .store()
            .list_snapshots(&BackupNamespace::root(), Some(&group))
            .unwrap_or_default();
        assert!(listed.iter().all(|s| !s.finished), "{listed:?}");
        if listed.is_empty() {
            break; // the server discarded the unfinished snapshot
        }
        assert!(Instant::now() < deadline, "left on the server: {listed:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(&fifo, &bytes).unwrap();
    let resumed = run_json(sync_from_local(
        &source,
        Some(&server),
        &[&to[..], &[snapshot]].concat(),
    ));
    assert_eq!(resumed["copied"], 1, "{resumed}");
    let expected: BTreeMap<_, _> = snapshot_files(&source)
        .into_iter()
        .filter(|(k, _)| k.starts_with(snapshot))
        .collect();
    assert_same_contents(&expected, &snapshot_files(server.store().root()));
}
