//! Minimal reader of the fixture datastore for tests: dynamic index entries and archive
//! reassembly from unencrypted chunks.
//!
//! TEMPORARY: a private stand-in written before the real codecs existed. To be replaced by the
//! store API (`src/format/index.rs`, `src/format/blob.rs`, `src/store/`) once they land.
//! Include with `#[path = "common/fixture_stream.rs"] mod fixture_stream;`.
#![allow(dead_code)]

use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

const DIDX_MAGIC: [u8; 8] = [0x1c, 0x91, 0x4e, 0xa5, 0x19, 0xba, 0xb3, 0xcd];
const UNCOMPRESSED_BLOB_MAGIC: [u8; 8] = [0x42, 0xab, 0x38, 0x07, 0xbe, 0x83, 0x70, 0xa1];
const COMPRESSED_BLOB_MAGIC: [u8; 8] = [0x31, 0xb9, 0x58, 0x42, 0x6f, 0xb6, 0xa3, 0x7f];
const DIDX_HEADER_SIZE: usize = 4096;
const DIDX_ENTRY_SIZE: usize = 40;

/// `<fixtures>/datastore`, read-only.
pub fn datastore_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/datastore"
    ))
}

/// Entries of a `.didx`: (exclusive end offset, chunk digest), checked against the header csum.
pub fn read_didx(snapshot_rel: &str, archive: &str) -> Vec<(u64, [u8; 32])> {
    let path = datastore_dir().join(snapshot_rel).join(archive);
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(raw.len() >= DIDX_HEADER_SIZE, "index too short");
    assert_eq!(raw[..8], DIDX_MAGIC, "not a dynamic index");
    let entries = &raw[DIDX_HEADER_SIZE..];
    assert_eq!(entries.len() % DIDX_ENTRY_SIZE, 0, "ragged index");
    assert_eq!(raw[32..64], Sha256::digest(entries)[..], "index checksum");
    entries
        .chunks_exact(DIDX_ENTRY_SIZE)
        .map(|e| {
            let end = u64::from_le_bytes(e[..8].try_into().unwrap());
            (end, e[8..].try_into().unwrap())
        })
        .collect()
}

/// Plain data of an unencrypted chunk in the fixture datastore, verified against its digest.
pub fn read_chunk(digest: &[u8; 32]) -> Vec<u8> {
    let name = hex::encode(digest);
    let path = datastore_dir().join(".chunks").join(&name[..4]).join(&name);
    let blob = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(blob.len() >= 12, "blob too short");
    let body = &blob[12..];
    assert_eq!(blob[8..12], crc32fast::hash(body).to_le_bytes(), "blob crc");
    let data = match blob[..8].try_into().unwrap() {
        UNCOMPRESSED_BLOB_MAGIC => body.to_vec(),
        COMPRESSED_BLOB_MAGIC => zstd::stream::decode_all(body).expect("zstd"),
        _ => panic!("{name}: not an unencrypted blob"),
    };
    assert_eq!(Sha256::digest(&data)[..], digest[..], "chunk digest");
    data
}

/// The whole archive stream behind `<snapshot_rel>/<archive>` (a `.didx`).
pub fn reassemble(snapshot_rel: &str, archive: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (end, digest) in read_didx(snapshot_rel, archive) {
        out.extend_from_slice(&read_chunk(&digest));
        assert_eq!(out.len() as u64, end, "chunk length disagrees with index");
    }
    out
}
