//! Fixture archives through the store API: index entries and reassembled streams.
//! Include with `#[path = "common/fixture_stream.rs"] mod fixture_stream;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use pbsfs::format::index::ChunkIndex;
use pbsfs::store::access::LocalSnapshot;
use pbsfs::store::chunk_reader::VerifyingChunkReader;
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{BackupDir, BackupNamespace};
use pbsfs::store::open::open_index_reader;
use pbsfs::store::range::IndexReader;

/// `<fixtures>/datastore`, read-only.
pub fn datastore_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/datastore"
    ))
}

/// Splits `[ns/a/ns/b/]type/id/time` into namespace and snapshot.
pub fn parse_snapshot(snapshot_rel: &str) -> (BackupNamespace, BackupDir) {
    let mut parts: Vec<&str> = snapshot_rel.split('/').collect();
    let mut ns = Vec::new();
    while parts.first() == Some(&"ns") {
        ns.push(parts[1]);
        parts.drain(..2);
    }
    (
        BackupNamespace::parse(&ns.join("/")).unwrap(),
        BackupDir::parse(&parts.join("/")).unwrap(),
    )
}

/// A verified random-access reader of `archive` (a file name like `root.pxar.didx`).
pub fn index_reader(snapshot_rel: &str, archive: &str) -> IndexReader {
    let store = Arc::new(LocalDatastore::open(&datastore_dir()).unwrap());
    let (ns, dir) = parse_snapshot(snapshot_rel);
    let snapshot = LocalSnapshot::open(store.clone(), &ns, &dir).unwrap();
    let chunks = Arc::new(VerifyingChunkReader::new(store));
    open_index_reader(&snapshot, archive, chunks).unwrap()
}

/// (end offset, digest) of every entry of a dynamic index.
pub fn read_didx(snapshot_rel: &str, archive: &str) -> Vec<(u64, [u8; 32])> {
    let reader = index_reader(snapshot_rel, archive);
    let index = reader.index();
    (0..index.chunk_count())
        .map(|i| {
            let info = index.chunk_info(i).unwrap();
            (info.end, info.digest)
        })
        .collect()
}

/// The whole archive stream, every chunk verified.
pub fn reassemble(snapshot_rel: &str, archive: &str) -> Vec<u8> {
    let mut out = Vec::new();
    index_reader(snapshot_rel, archive)
        .copy_to(&mut out)
        .unwrap();
    out
}
