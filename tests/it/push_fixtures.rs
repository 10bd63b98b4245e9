//! Acceptance: pushing the fixture tree (`mktree.py 1`) gives what the official client
//! stored: in legacy mode the same `root.pxar.didx` chunks (so both clients deduplicate
//! against each other) and catalog; in data mode the same `.mpxar`/`.ppxar` streams. Also
//! through the CLI, with the raw stream read back by `pbsfs restore ... -`.
//!
//! Needs root, python3, setfacl and setcap; skipped when not root. The tree and the
//! datastore live under the target directory (not /tmp, which may be tmpfs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use pbsfs::backup::client::LocalClient;
use pbsfs::backup::server::{BackupOptions, BackupSpec, ChangeDetection, Server};
use pbsfs::format::index::{AnyIndex, ChunkIndex};
use pbsfs::store::access::LocalSnapshot;
use pbsfs::store::chunk_reader::VerifyingChunkReader;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use pbsfs::store::open::open_index_reader;
use sha2::{Digest, Sha256};

use crate::common::cli::{local_command, ok, pbsfs_local};
use crate::common::source_tree::fixture_tree_if_root;
use crate::common::HashWriter;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");
const LEGACY_SNAPSHOT: &str = "host/fixture-legacy/2026-11-25T08:28:42Z";
const LEGACY_SHA256: &str = "22223ecd9678f3f18364158f45a0d4a07887de11c30790655406628e38bbdbc8";
const CATALOG_SHA256: &str = "9b6e6d751ff293c8faeb89610313f443e98423992c9370ddff633b5549f71663";
const MPXAR_SHA256: &str = "96de96661ab716b713462ba2cee2187ef4562a3ff4fbbee49f7459d84252354a";
const PPXAR_SHA256: &str = "92b84a1945aafcf4256a483542816483d4050eb15f14cae0f58267f67c7e6ffb";

struct Shared {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    store: Arc<LocalDatastore>,
}

/// The fixture tree and a datastore, made once per test binary; `None` when not root.
fn shared() -> Option<&'static Shared> {
    static SHARED: OnceLock<Option<Shared>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (dir, tree) = fixture_tree_if_root()?;
            let store = Arc::new(LocalDatastore::create(&dir.path().join("ds")).unwrap());
            Some(Shared {
                _dir: dir,
                tree,
                store,
            })
        })
        .as_ref()
}

fn push(shared: &Shared, id: &str, mode: ChangeDetection) -> BackupDir {
    let client = LocalClient::new();
    let spec = BackupSpec::parse(&format!("root.pxar:{}", shared.tree.display())).unwrap();
    let mut options = BackupOptions::new(BackupGroup::parse(&format!("host/{id}")).unwrap(), 1000);
    options.mode = mode;
    let server = Server::new(Arc::new(LocalTarget::new(shared.store.clone())));
    let summary = server.run_backup(&client, &[spec], &options).unwrap();
    assert_eq!(summary.walk.warnings, 0);
    summary.snapshot.unwrap()
}

fn index_of(store: &LocalDatastore, dir: &BackupDir, name: &str) -> AnyIndex {
    let raw = store
        .read_snapshot_file(&BackupNamespace::root(), dir, name)
        .unwrap();
    AnyIndex::parse(&raw).unwrap()
}

fn official_index(name: &str) -> AnyIndex {
    let path = Path::new(FIXTURES)
        .join("datastore")
        .join(LEGACY_SNAPSHOT)
        .join(name);
    AnyIndex::parse(&std::fs::read(path).unwrap()).unwrap()
}

fn stream_sha256(store: &Arc<LocalDatastore>, dir: &BackupDir, name: &str) -> String {
    let ns = BackupNamespace::root();
    let snapshot = LocalSnapshot::open(store.clone(), &ns, dir).unwrap();
    let reader = open_index_reader(
        &snapshot,
        name,
        Arc::new(VerifyingChunkReader::new(store.clone())),
    )
    .unwrap();
    let mut hasher = HashWriter(Sha256::new());
    reader.copy_to(&mut hasher).unwrap();
    hex::encode(hasher.0.finalize())
}

#[test]
fn legacy_push_stores_the_official_chunks_and_catalog() {
    let Some(shared) = shared() else {
        return;
    };
    let dir = push(shared, "legacy", ChangeDetection::Legacy);
    for name in ["root.pxar.didx", "catalog.pcat1.didx"] {
        let ours = index_of(&shared.store, &dir, name);
        let official = official_index(name);
        assert_eq!(ours.digests(), official.digests(), "{name}");
        assert_eq!(ours.total_size(), official.total_size(), "{name}");
    }
    assert_eq!(
        stream_sha256(&shared.store, &dir, "root.pxar.didx"),
        LEGACY_SHA256
    );
    assert_eq!(
        stream_sha256(&shared.store, &dir, "catalog.pcat1.didx"),
        CATALOG_SHA256
    );
    let manifest = shared
        .store
        .read_manifest(&BackupNamespace::root(), &dir)
        .unwrap();
    let files: Vec<&str> = manifest.files.iter().map(|f| f.filename.as_str()).collect();
    assert_eq!(files, ["root.pxar.didx", "catalog.pcat1.didx"]);
}

#[test]
fn data_push_stores_the_official_streams() {
    let Some(shared) = shared() else {
        return;
    };
    let dir = push(shared, "data", ChangeDetection::Data);
    assert_eq!(
        stream_sha256(&shared.store, &dir, "root.mpxar.didx"),
        MPXAR_SHA256
    );
    assert_eq!(
        stream_sha256(&shared.store, &dir, "root.ppxar.didx"),
        PPXAR_SHA256
    );
    // No catalog for split archives.
    let manifest = shared
        .store
        .read_manifest(&BackupNamespace::root(), &dir)
        .unwrap();
    assert!(manifest.file("catalog.pcat1.didx").is_none());
}

#[test]
fn metadata_push_of_the_unchanged_fixture_reads_nothing_and_keeps_the_payload() {
    let Some(shared) = shared() else {
        return;
    };
    let first = push(shared, "meta", ChangeDetection::Metadata);
    assert_eq!(
        stream_sha256(&shared.store, &first, "root.ppxar.didx"),
        PPXAR_SHA256
    );
    let client = LocalClient::new();
    let spec = BackupSpec::parse(&format!("root.pxar:{}", shared.tree.display())).unwrap();
    let mut options = BackupOptions::new(BackupGroup::parse("host/meta").unwrap(), 2000);
    options.mode = ChangeDetection::Metadata;
    let server = Server::new(Arc::new(LocalTarget::new(shared.store.clone())));
    let summary = server.run_backup(&client, &[spec], &options).unwrap();
    let second = summary.snapshot.unwrap();
    assert_eq!(client.counters_bytes(), 0);
    assert!(summary.walk.reused_files > 3000, "{:?}", summary.walk);
    // The payload stream is the previous one, chunk for chunk.
    assert_eq!(
        index_of(&shared.store, &second, "root.ppxar.didx").digests(),
        index_of(&shared.store, &first, "root.ppxar.didx").digests()
    );
    assert_eq!(
        stream_sha256(&shared.store, &second, "root.ppxar.didx"),
        PPXAR_SHA256
    );
}

#[test]
fn cli_push_and_raw_restore_give_the_official_archive() {
    let Some(shared) = shared() else {
        return;
    };
    let repo = shared.store.root();
    let output = local_command(repo)
        .args(["push", "--backup-id", "cli", "--backup-time", "1000"])
        .args([
            "--change-detection-mode",
            "legacy",
            "--output-format",
            "json",
        ])
        .arg(format!("root.pxar:{}", shared.tree.display()))
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(ok(&output)).unwrap();
    assert_eq!(summary["snapshot"], "host/cli/1970-01-01T00:16:40Z");
    assert!(summary["files"].as_u64().unwrap() > 3000);
    assert_eq!(
        summary["bytes-read"].as_u64(),
        Some(sum_of_file_sizes(&shared.tree))
    );

    let restored = pbsfs_local(repo, &["restore", "host/cli/latest", "root.pxar", "-"]);
    assert!(restored.status.success());
    assert_eq!(hex::encode(Sha256::digest(&restored.stdout)), LEGACY_SHA256);
}

/// Bytes of regular file content in a tree, each hardlinked inode once.
fn sum_of_file_sizes(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    total
}

trait CountersBytes {
    fn counters_bytes(&self) -> u64;
}

impl CountersBytes for LocalClient {
    fn counters_bytes(&self) -> u64 {
        use pbsfs::backup::client::ClientProvider;
        self.counters().content_bytes()
    }
}
