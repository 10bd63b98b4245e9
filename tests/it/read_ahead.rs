//! Read-ahead through the snapshot filesystem (`ReadOnlyFs` directly, no kernel): which
//! chunks a reader's reads ask to have fetched ahead.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Result;

use crate::common::cli::{ok, pbsfs_local};
use crate::common::source_tree::random_bytes;
use pbsfs::format::Digest;
use pbsfs::store::access::{DatastoreAccess, LocalAccess};
use pbsfs::store::cache::ChunkCache;
use pbsfs::store::chunk_reader::{ChunkReader, VerifyingChunkReader};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::BackupNamespace;
use pbsfs::store::snapshot::resolve_snapshot;
use pbsfs_mount::{ReadOnlyFs, ROOT_INO};

/// Records the chunks read and the chunks asked for ahead (without fetching those), in
/// front of a cache.
struct Recording {
    inner: ChunkCache,
    read: Mutex<HashSet<Digest>>,
    ahead: Mutex<HashSet<Digest>>,
}

impl ChunkReader for Recording {
    fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>> {
        self.read.lock().unwrap().insert(*digest);
        self.inner.read_chunk(digest, expected_len)
    }

    fn prefetch(&self, digest: &Digest, _expected_len: u64) {
        self.ahead.lock().unwrap().insert(*digest);
    }
}

/// Pushes `tree` into a new datastore under `dir` and opens the snapshot's filesystem.
fn push_and_open(dir: &Path, tree: &Path) -> (Arc<dyn ReadOnlyFs>, Arc<Recording>) {
    let ds = dir.join("ds");
    LocalDatastore::create(&ds).unwrap();
    let source = format!("tree.pxar:{}", tree.display());
    ok(&pbsfs_local(
        &ds,
        &[
            "push",
            "--quiet",
            "--backup-id",
            "ra",
            "--change-detection-mode",
            "data",
            &source,
        ],
    ));
    let store = Arc::new(LocalDatastore::open(&ds).unwrap());
    let access = LocalAccess(store.clone());
    let ns = BackupNamespace::root();
    let entries: Vec<_> = access
        .list_snapshots(&ns, None)
        .unwrap()
        .into_iter()
        .map(|s| s.entry)
        .collect();
    let snapshot = access
        .open_snapshot(&ns, &resolve_snapshot("host/ra/latest", &entries).unwrap())
        .unwrap();
    let chunks = Arc::new(Recording {
        inner: ChunkCache::new(Arc::new(VerifyingChunkReader::new(store)), 64 << 20, 0),
        read: Mutex::new(HashSet::new()),
        ahead: Mutex::new(HashSet::new()),
    });
    let fs = pbsfs::snapfs::open_snapshot(&*snapshot, None, chunks.clone()).unwrap();
    (fs, chunks)
}

/// The regular files of directory `ino`, in listing (archive) order.
fn files(fs: &dyn ReadOnlyFs, ino: u64) -> Vec<(u64, bool)> {
    let mut out = Vec::new();
    fs.readdir(ino, 0, &mut |item| {
        out.push((item.attr.ino, item.attr.is_dir()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn read_whole(fs: &dyn ReadOnlyFs, ino: u64) -> usize {
    let fh = fs.open(ino).unwrap();
    let mut done = 0;
    loop {
        let piece = fs.read(ino, fh, done as u64, 1 << 20).unwrap();
        if piece.is_empty() {
            break;
        }
        done += piece.len();
    }
    fs.release(ino, fh);
    done
}

#[test]
fn files_read_in_archive_order_fetch_the_chunks_beyond_them() {
    // 3000 files of 16 KiB that do not compress: 47 MiB of data, a dozen chunks or so.
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = dir.path().join("tree");
    for n in 0..3000u64 {
        let sub = tree.join(format!("d{:02}", n / 100));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{n:04}")), random_bytes(n, 16 << 10)).unwrap();
    }
    let (fs, chunks) = push_and_open(dir.path(), &tree);

    // Read the files one after another, as tar does. No file alone is a sequential run
    // (each is read in one request), so only the run through the archive's data stream can
    // ask for chunks ahead. Count the files read by the time a chunk nobody has read yet
    // was asked for.
    let mut read_files = 0;
    let mut ahead_seen_after = None;
    for (sub, is_dir) in files(&*fs, ROOT_INO) {
        assert!(is_dir);
        for (file, _) in files(&*fs, sub) {
            assert_eq!(read_whole(&*fs, file), 16 << 10);
            read_files += 1;
            if ahead_seen_after.is_none() {
                let read = chunks.read.lock().unwrap();
                let ahead = chunks.ahead.lock().unwrap();
                if ahead.iter().any(|digest| !read.contains(digest)) {
                    ahead_seen_after = Some(read_files);
                }
            }
        }
    }
    assert_eq!(read_files, 3000);
    let after = ahead_seen_after.expect("reading the tree in order asked for no chunk ahead");
    // The run counts once it has read 1 MiB: 64 files of 16 KiB, and a few more for chunks
    // that hold both metadata and data in the first files.
    assert!(
        after <= 100,
        "the first chunk ahead was asked for after {after} files"
    );
    // Every chunk asked for ahead was one the reader went on to need.
    let read = chunks.read.lock().unwrap();
    let ahead = chunks.ahead.lock().unwrap();
    assert!(
        ahead.is_subset(&read),
        "chunks asked for ahead that were never read"
    );
    assert!(
        read.len() >= 8,
        "only {} chunks: the test needs several",
        read.len()
    );
}
