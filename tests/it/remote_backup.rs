//! Backup protocol client (src/remote/backup.rs) against the in-process test server: the
//! server's datastore verifies what was pushed, incremental pushes upload only new chunks,
//! abandoned sessions leave nothing.

use crate::common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use common::pbs_server::TestServer;
use common::source_tree::random_bytes;
use common::HashWriter;
use pbsfs::format::blob::{chunk_digest, encode_blob};
use pbsfs::format::Digest;
use pbsfs::remote::access::RemoteAccess;
use pbsfs::remote::RemoteBackupSession;
use pbsfs::store::access::{open_index, DatastoreAccess, LocalSnapshot};
use pbsfs::store::chunk_reader::{ChunkReader, VerifyingChunkReader};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use pbsfs::store::open::open_index_reader;
use pbsfs::store::verify::Verifier;

const MIB: usize = 1024 * 1024;

/// Deterministic pseudo-random bytes (incompressible) or text (compressible).
fn data(seed: u64, len: usize, compressible: bool) -> Vec<u8> {
    if compressible {
        return format!("line {seed} of some compressible text\n")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(len)
            .collect();
    }
    random_bytes(seed, len)
}

struct Chunk {
    data: Vec<u8>,
    digest: Digest,
    blob: Vec<u8>,
}

fn chunk(data: Vec<u8>) -> Chunk {
    Chunk {
        digest: chunk_digest(&data),
        blob: encode_blob(&data, true).unwrap(),
        data,
    }
}

/// Uploads the chunks from several threads at once, then appends them in order.
fn push_dynamic(session: &RemoteBackupSession, name: &str, chunks: &[&Chunk]) -> (u64, usize) {
    let mut writer = session.create_dynamic_index(name).unwrap();
    let uploaded = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|c| {
                scope.spawn(move || {
                    session
                        .upload_chunk(&c.digest, &c.blob, c.data.len() as u64)
                        .unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|uploaded| *uploaded)
            .count()
    });
    for c in chunks {
        writer.add_chunk(c.data.len() as u64, &c.digest).unwrap();
    }
    let summary = writer.finish().unwrap();
    assert_eq!(summary.chunk_count, chunks.len() as u64);
    (summary.size, uploaded)
}

fn dir(id: &str, time: i64) -> BackupDir {
    BackupDir::new(BackupGroup::parse(&format!("host/{id}")).unwrap(), time).unwrap()
}

fn sha(parts: &[&Chunk]) -> String {
    let mut hash = Sha256::new();
    for p in parts {
        hash.update(&p.data);
    }
    hex::encode(hash.finalize())
}

#[test]
fn a_pushed_snapshot_verifies_on_the_server_and_reads_back() {
    let server = TestServer::start_empty();
    let remote = server.connect();
    let root = BackupNamespace::root();
    let target = dir("pushed", 1_700_000_000);

    let a = chunk(data(1, MIB + 17, false));
    let b = chunk(data(2, 3 * MIB, true));
    let c = chunk(data(3, 4097, false));
    let zeros = chunk(vec![0; 4 * MIB]);
    let tail = chunk(data(4, 1000, false));

    let session = remote.start_backup(&root, &target, None).unwrap();
    assert!(session.previous().is_none());
    let (size, uploaded) = push_dynamic(&session, "root.pxar.didx", &[&a, &b, &c, &a]);
    assert_eq!(
        size as usize,
        2 * a.data.len() + b.data.len() + c.data.len()
    );
    assert_eq!(uploaded, 3, "the repeated chunk is uploaded once");

    let image_size = (4 * MIB + 1000) as u64;
    let mut image = session
        .create_fixed_index("disk.img.fidx", image_size, 4 * MIB as u64)
        .unwrap();
    for part in [&zeros, &tail] {
        session
            .upload_chunk(&part.digest, &part.blob, part.data.len() as u64)
            .unwrap();
        image
            .add_chunk(part.data.len() as u64, &part.digest)
            .unwrap();
    }
    assert_eq!(image.finish().unwrap().size, image_size);
    session
        .add_blob("notes.conf.blob", &encode_blob(b"hello", true).unwrap())
        .unwrap();
    assert_eq!(session.finish().unwrap(), target);
    assert_eq!(server.counters.chunk_uploads.load(Ordering::SeqCst), 5);

    // The server's datastore has a complete, valid snapshot.
    let store = LocalDatastore::open(server.store().root()).unwrap();
    let problems = Verifier::new().verify_snapshot(
        &LocalSnapshot::open(
            Arc::new(LocalDatastore::open(server.store().root()).unwrap()),
            &root,
            &target,
        )
        .unwrap(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    let manifest = store.read_manifest(&root, &target).unwrap();
    let names: Vec<_> = manifest.files.iter().map(|f| f.filename.as_str()).collect();
    assert_eq!(
        names,
        ["root.pxar.didx", "disk.img.fidx", "notes.conf.blob"]
    );
    assert_eq!(manifest.unprotected["chunk_upload_stats"]["count"], 5);
    assert_eq!(
        store.group_owner(&root, &target.group).unwrap(),
        server.config.token_id
    );

    // And it reads back through the reader protocol.
    let snapshot = RemoteAccess(Arc::new(remote))
        .open_snapshot(&root, &target)
        .unwrap();
    for (file, parts) in [
        ("root.pxar.didx", vec![&a, &b, &c, &a]),
        ("disk.img.fidx", vec![&zeros, &tail]),
    ] {
        let chunks = Arc::new(VerifyingChunkReader::new(snapshot.chunk_source()));
        let archive = open_index_reader(&*snapshot, file, chunks).unwrap();
        let mut hash = HashWriter(Sha256::new());
        archive.copy_to(&mut hash).unwrap();
        assert_eq!(hex::encode(hash.0.finalize()), sha(&parts), "{file}");
    }
}

#[test]
fn an_incremental_push_uploads_only_new_chunks() {
    let server = TestServer::start_empty();
    let remote = server.connect();
    let root = BackupNamespace::root();
    let first = dir("incremental", 1_700_000_000);
    let second = dir("incremental", 1_700_000_100);
    let old: Vec<Chunk> = (10..14)
        .map(|seed| chunk(data(seed, MIB / 2, false)))
        .collect();
    let new = chunk(data(99, MIB / 3, false));

    let session = remote.start_backup(&root, &first, None).unwrap();
    let all_old: Vec<&Chunk> = old.iter().collect();
    assert_eq!(push_dynamic(&session, "root.pxar.didx", &all_old).1, 4);
    session.finish().unwrap();
    let before = server.counters.chunk_uploads.load(Ordering::SeqCst);
    assert_eq!(before, 4);
    assert_eq!(
        remote.last_snapshot(&root, &first.group).unwrap(),
        Some(first.clone())
    );

    let session = remote.start_backup(&root, &second, None).unwrap();
    let (previous, previous_manifest) = session.previous().unwrap();
    assert_eq!(previous, &first);
    assert_eq!(previous_manifest.files.len(), 1);
    for c in &old {
        assert!(session.is_known_chunk(&c.digest).unwrap());
    }
    assert!(!session.is_known_chunk(&new.digest).unwrap());
    let (_, uploaded) = push_dynamic(
        &session,
        "root.pxar.didx",
        &[&old[0], &new, &old[2], &old[3]],
    );
    assert_eq!(uploaded, 1);
    session.finish().unwrap();
    assert_eq!(
        server.counters.chunk_uploads.load(Ordering::SeqCst),
        before + 1
    );

    let store = LocalDatastore::open(server.store().root()).unwrap();
    assert!(Verifier::new()
        .verify_snapshot(
            &LocalSnapshot::open(
                Arc::new(LocalDatastore::open(server.store().root()).unwrap()),
                &root,
                &second
            )
            .unwrap()
        )
        .is_empty());
    let manifest = store.read_manifest(&root, &second).unwrap();
    assert_eq!(manifest.unprotected["chunk_upload_stats"]["count"], 1);

    // The previous snapshot's chunks are readable for change detection.
    let access = RemoteAccess(Arc::new(remote));
    let previous = access.previous(&root, &first.group).unwrap();
    assert_eq!(previous.map(|s| s.dir().clone()), Some(second.clone()));
    let snapshot = access.open_snapshot(&root, &first).unwrap();
    let index = open_index(&*snapshot, "root.pxar.didx").unwrap();
    let chunks = VerifyingChunkReader::new(snapshot.chunk_source());
    let plain = chunks
        .read_chunk(&index.digests()[1], old[1].data.len() as u64)
        .unwrap();
    assert_eq!(*plain, old[1].data);
}

#[test]
fn an_abandoned_session_leaves_nothing_and_rules_are_enforced() {
    let server = TestServer::start_empty();
    let remote = server.connect();
    let root = BackupNamespace::root();
    let target = dir("abandoned", 1_700_000_000);
    let a = chunk(data(5, 1000, false));

    let session = remote.start_backup(&root, &target, None).unwrap();
    // Appending a chunk the server does not know is refused before it is sent.
    let mut writer = session.create_dynamic_index("root.pxar.didx").unwrap();
    let err = writer.add_chunk(1000, &a.digest).unwrap_err();
    assert!(format!("{err:#}").contains("neither uploaded"), "{err:#}");
    session.upload_chunk(&a.digest, &a.blob, 1000).unwrap();
    writer.add_chunk(1000, &a.digest).unwrap();
    // A second backup of the same group is refused while this one runs.
    let err = remote
        .start_backup(&root, &dir("abandoned", 1_700_000_001), None)
        .err()
        .expect("group is locked");
    assert!(format!("{err:#}").contains("locked"), "{err:#}");
    drop(writer);
    drop(session);

    let path = server.store().snapshot_path(&root, &target);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!path.exists(), "the unfinished snapshot was removed");

    // The group is free again; a snapshot older than the last one is refused.
    let session = remote.start_backup(&root, &target, None).unwrap();
    let mut writer = session.create_dynamic_index("root.pxar.didx").unwrap();
    session.upload_chunk(&a.digest, &a.blob, 1000).unwrap();
    writer.add_chunk(1000, &a.digest).unwrap();
    writer.finish().unwrap();
    session.finish().unwrap();
    let err = remote
        .start_backup(&root, &dir("abandoned", 1_600_000_000), None)
        .err()
        .expect("older than the last backup");
    assert!(format!("{err:#}").contains("older"), "{err:#}");
}
