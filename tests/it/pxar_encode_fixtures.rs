//! Acceptance: encoding the fixture tree (`mktree.py 1`) gives byte-identical archives to the
//! official client's (fixtures/README.md: legacy root.pxar, data-mode root.mpxar/.ppxar).
//!
//! Needs root, python3, setfacl and setcap (Debian: acl, libcap2-bin); skipped when not root.
//! The tree is built under the target directory (not /tmp, which may be tmpfs: the official
//! client captures no xattrs on tmpfs). For debugging, set PBSFS_ENCODE_DUMP=DIR to keep the
//! produced streams in DIR.

use std::io::{self, Write};
use std::path::Path;

use pbsfs::backup::archive::{create_split_archive, create_v1_archive, ArchiveOptions};
use pbsfs::backup::fs_accessor::LocalFileSystem;
use sha2::{Digest, Sha256};

use crate::common::source_tree::fixture_tree_if_root;

const LEGACY_SHA256: &str = "22223ecd9678f3f18364158f45a0d4a07887de11c30790655406628e38bbdbc8";
const LEGACY_SIZE: u64 = 28269171;
const MPXAR_SHA256: &str = "96de96661ab716b713462ba2cee2187ef4562a3ff4fbbee49f7459d84252354a";
const MPXAR_SIZE: u64 = 442854;
const PPXAR_SHA256: &str = "92b84a1945aafcf4256a483542816483d4050eb15f14cae0f58267f67c7e6ffb";
const PPXAR_SIZE: u64 = 27923429;

/// Hashes and counts what is written; optionally keeps a copy in a file.
struct HashSink {
    hasher: Sha256,
    len: u64,
    dump: Option<io::BufWriter<std::fs::File>>,
}

impl HashSink {
    fn new(dump_name: &str) -> Self {
        let dump = std::env::var_os("PBSFS_ENCODE_DUMP").map(|dir| {
            let file = std::fs::File::create(Path::new(&dir).join(dump_name)).unwrap();
            io::BufWriter::new(file)
        });
        HashSink {
            hasher: Sha256::new(),
            len: 0,
            dump,
        }
    }

    fn result(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.len)
    }
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        if let Some(dump) = self.dump.as_mut() {
            dump.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.dump.as_mut() {
            Some(dump) => dump.flush(),
            None => Ok(()),
        }
    }
}

#[test]
fn legacy_archive_is_byte_identical_to_the_official_one() {
    let Some((_dir, tree)) = fixture_tree_if_root() else {
        return;
    };
    let fs = LocalFileSystem::new(&tree);
    let sink = create_v1_archive(
        &fs,
        HashSink::new("root.pxar"),
        &ArchiveOptions::default(),
        None,
    )
    .unwrap();
    let (sha, len) = sink.result();
    assert_eq!(len, LEGACY_SIZE);
    assert_eq!(sha, LEGACY_SHA256);
}

#[test]
fn data_mode_archives_are_byte_identical_to_the_official_ones() {
    let Some((_dir, tree)) = fixture_tree_if_root() else {
        return;
    };
    let fs = LocalFileSystem::new(&tree);
    let (meta, payload) = create_split_archive(
        &fs,
        HashSink::new("root.mpxar"),
        HashSink::new("root.ppxar"),
        &ArchiveOptions::default(),
        None,
    )
    .unwrap();
    let (meta_sha, meta_len) = meta.result();
    let (payload_sha, payload_len) = payload.result();
    assert_eq!(meta_len, MPXAR_SIZE);
    assert_eq!(meta_sha, MPXAR_SHA256);
    assert_eq!(payload_len, PPXAR_SIZE);
    assert_eq!(payload_sha, PPXAR_SHA256);
}

#[test]
fn subdirectory_archive_is_byte_identical_to_the_official_one() {
    // fixture-ns: `root.pxar:TREE/links` (a hardlink group partly outside the archive root).
    let Some((_dir, tree)) = fixture_tree_if_root() else {
        return;
    };
    let fs = LocalFileSystem::new(tree.join("links"));
    let sink = create_v1_archive(
        &fs,
        HashSink::new("links.pxar"),
        &ArchiveOptions::default(),
        None,
    )
    .unwrap();
    let (sha, len) = sink.result();
    assert_eq!(len, 977);
    assert_eq!(
        sha,
        "7058cf5ab1a777d8a520744bd4410a5a198773518b9b8c6ab96d5f266c38c58d"
    );
}
