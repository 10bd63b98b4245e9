//! The chunker reproduces the official client's chunk boundaries on real archives.

use crate::common::fixture_stream;

use std::time::Instant;

use pbsfs::format::chunker::{ChunkStream, Chunker, CATALOG_CHUNK_SIZE, DEFAULT_CHUNK_SIZE};
use sha2::{Digest as _, Sha256};

const LEGACY: &str = "host/fixture-legacy/2026-11-25T08:28:42Z";
const DATA_MODE: &str = "host/fixture-data/2026-11-25T08:28:43Z";

/// Re-chunks the archive behind `archive` and compares every (end, digest) with the index.
fn assert_rechunk_matches(snapshot: &str, archive: &str, avg: usize, archive_sha256: &str) {
    let official = fixture_stream::read_didx(snapshot, archive);
    let stream = fixture_stream::reassemble(snapshot, archive);
    assert_eq!(hex::encode(Sha256::digest(&stream)), archive_sha256);

    // Odd read sizes so boundaries fall inside reads, not on their edges.
    let mut ours = Vec::new();
    let mut end = 0u64;
    for chunk in ChunkStream::new(&stream[..], avg).with_read_size(123_457) {
        let chunk = chunk.unwrap();
        end += chunk.len() as u64;
        ours.push((end, <[u8; 32]>::from(Sha256::digest(&chunk))));
    }
    assert_eq!(ours.len(), official.len(), "{archive}: chunk count");
    for (i, (a, b)) in ours.iter().zip(&official).enumerate() {
        assert_eq!(a.0, b.0, "{archive}: end of chunk {i}");
        assert_eq!(
            hex::encode(a.1),
            hex::encode(b.1),
            "{archive}: digest of chunk {i}"
        );
    }
}

#[test]
fn legacy_pxar_archive_rechunks_identically() {
    let official = fixture_stream::read_didx(LEGACY, "root.pxar.didx");
    // Several content-defined cuts, so this is a real test of the boundaries.
    assert!(official.len() >= 5);
    assert_rechunk_matches(
        LEGACY,
        "root.pxar.didx",
        DEFAULT_CHUNK_SIZE,
        "22223ecd9678f3f18364158f45a0d4a07887de11c30790655406628e38bbdbc8",
    );
}

#[test]
fn legacy_catalog_rechunks_identically() {
    assert_rechunk_matches(
        LEGACY,
        "catalog.pcat1.didx",
        CATALOG_CHUNK_SIZE,
        "9b6e6d751ff293c8faeb89610313f443e98423992c9370ddff633b5549f71663",
    );
}

#[test]
fn data_mode_metadata_archive_rechunks_identically() {
    assert_rechunk_matches(
        DATA_MODE,
        "root.mpxar.didx",
        DEFAULT_CHUNK_SIZE,
        "96de96661ab716b713462ba2cee2187ef4562a3ff4fbbee49f7459d84252354a",
    );
}

/// Prints the chunker's speed (no timed assertion). Meaningful numbers need `--release`,
/// see scripts/bench-chunker.sh.
#[test]
fn chunker_throughput() {
    let mut x: u32 = 7;
    let data: Vec<u8> = (0..64 << 20)
        .map(|_| {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let mut chunker = Chunker::new(DEFAULT_CHUNK_SIZE);
    let started = Instant::now();
    let (mut rest, mut chunks) = (&data[..], 0);
    loop {
        let cut = chunker.scan(rest);
        if cut == 0 {
            break;
        }
        chunks += 1;
        rest = &rest[cut..];
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "chunker: {} MiB in {secs:.3}s = {:.0} MiB/s ({chunks} boundaries)",
        data.len() >> 20,
        (data.len() >> 20) as f64 / secs
    );
    assert!(
        chunks >= 64 / 16,
        "max size must force at least one cut per 16 MiB"
    );
}
