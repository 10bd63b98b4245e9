//! Blob, index and manifest codecs against the datastore written by PBS 4.2.3
//! (../shared/fixtures/datastore, read-only).

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use pbsfs::format::blob::{
    blob_kind, decode_blob, decode_chunk, encode_blob, BlobError, BlobKind, MAX_CHUNK_SIZE,
};
use pbsfs::format::index::{AnyIndex, ChunkIndex};
use pbsfs::format::manifest::{CryptMode, Manifest};
use pbsfs::format::{digest_to_hex, Digest};

const DATASTORE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/datastore");

/// The archive table of the fixtures README: snapshot, index file, archive bytes,
/// chunk count, SHA-256 of the reassembled (decrypted) archive.
#[rustfmt::skip]
const ARCHIVES: &[(&str, &str, u64, usize, &str)] = &[
    ("host/fixture-legacy/2026-11-25T08:28:42Z", "root.pxar.didx", 28269171, 6, "22223ecd9678f3f18364158f45a0d4a07887de11c30790655406628e38bbdbc8"),
    ("host/fixture-legacy/2026-11-25T08:28:42Z", "catalog.pcat1.didx", 69649, 1, "9b6e6d751ff293c8faeb89610313f443e98423992c9370ddff633b5549f71663"),
    ("host/fixture-data/2026-11-25T08:28:43Z", "root.mpxar.didx", 442854, 1, "96de96661ab716b713462ba2cee2187ef4562a3ff4fbbee49f7459d84252354a"),
    ("host/fixture-data/2026-11-25T08:28:43Z", "root.ppxar.didx", 27923429, 8, "92b84a1945aafcf4256a483542816483d4050eb15f14cae0f58267f67c7e6ffb"),
    ("host/fixture-meta/2026-11-25T08:28:43Z", "root.mpxar.didx", 442854, 1, "96de96661ab716b713462ba2cee2187ef4562a3ff4fbbee49f7459d84252354a"),
    ("host/fixture-meta/2026-11-25T08:28:43Z", "root.ppxar.didx", 27923429, 8, "92b84a1945aafcf4256a483542816483d4050eb15f14cae0f58267f67c7e6ffb"),
    ("host/fixture-meta/2026-11-25T08:28:55Z", "root.mpxar.didx", 442854, 1, "aef4cf5f7b8d4d46cb9591a8506305d086ff43440624ca2d92063610d2328fba"),
    ("host/fixture-meta/2026-11-25T08:28:55Z", "root.ppxar.didx", 27997259, 10, "5d979561f9139b76ad9f95c8a00fb785a4faf1d76c8082bad2b5eac53419b094"),
    ("host/fixture-enc/2026-11-25T08:29:00Z", "root.pxar.didx", 28269171, 6, "22223ecd9678f3f18364158f45a0d4a07887de11c30790655406628e38bbdbc8"),
    ("host/fixture-enc/2026-11-25T08:29:00Z", "catalog.pcat1.didx", 69649, 1, "9b6e6d751ff293c8faeb89610313f443e98423992c9370ddff633b5549f71663"),
    ("host/fixture-enc-scrypt/2026-11-25T08:29:18Z", "root.pxar.didx", 977, 1, "7058cf5ab1a777d8a520744bd4410a5a198773518b9b8c6ab96d5f266c38c58d"),
    ("host/fixture-enc-scrypt/2026-11-25T08:29:18Z", "catalog.pcat1.didx", 117, 1, "99b914cd233621c2d7a21f796647cea798d0fede963ee0fd1c2990d20c3435cc"),
    ("ns/team/host/fixture-ns/2026-11-25T08:29:01Z", "root.pxar.didx", 977, 1, "7058cf5ab1a777d8a520744bd4410a5a198773518b9b8c6ab96d5f266c38c58d"),
    ("ns/team/host/fixture-ns/2026-11-25T08:29:01Z", "catalog.pcat1.didx", 117, 1, "99b914cd233621c2d7a21f796647cea798d0fede963ee0fd1c2990d20c3435cc"),
    ("vm/100/2026-11-25T08:29:01Z", "drive-scsi0.img.fidx", 16789561, 5, "8aa9ddca4f0968e0f6e9bcf188af4fd83866757cb8ee74b8e38e124d295b57c6"),
];

fn store() -> &'static Path {
    Path::new(DATASTORE)
}

fn chunk_path(digest: &Digest) -> PathBuf {
    let name = digest_to_hex(digest);
    store().join(".chunks").join(&name[..4]).join(name)
}

fn manifest_of(snapshot: &str) -> (Vec<u8>, Manifest) {
    let raw = fs::read(store().join(snapshot).join("index.json.blob")).unwrap();
    let manifest = Manifest::from_blob(&raw).unwrap();
    (raw, manifest)
}

/// Every snapshot directory (the ones holding an `index.json.blob`), relative to the store.
fn snapshots() -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() == ".chunks" {
                continue;
            }
            if path.is_dir() {
                walk(&path, found);
            } else if path.file_name().unwrap() == "index.json.blob" {
                found.push(path.parent().unwrap().to_path_buf());
            }
        }
    }
    let mut found = Vec::new();
    walk(store(), &mut found);
    let mut names: Vec<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(store())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// Epoch seconds of a `YYYY-MM-DDTHH:MM:SSZ` snapshot name (proleptic Gregorian).
fn epoch_of(name: &str) -> i64 {
    let num = |r: std::ops::Range<usize>| name[r].parse::<i64>().unwrap();
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + d - 719469;
    days * 86400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19)
}

#[test]
fn every_manifest_decodes_and_matches_its_directory() {
    let snapshots = snapshots();
    assert_eq!(snapshots.len(), 8);
    for snapshot in &snapshots {
        let (raw, manifest) = manifest_of(snapshot);
        let parts: Vec<&str> = snapshot.rsplitn(4, '/').collect();
        assert_eq!(manifest.backup_time, epoch_of(parts[0]), "{snapshot}");
        assert_eq!(manifest.backup_id, parts[1], "{snapshot}");
        assert_eq!(manifest.backup_type, parts[2], "{snapshot}");
        assert!(!manifest.files.is_empty());

        let encrypted = snapshot.contains("fixture-enc");
        for file in &manifest.files {
            let expected = if encrypted {
                CryptMode::Encrypt
            } else {
                CryptMode::None
            };
            assert_eq!(file.crypt_mode, expected, "{snapshot}/{}", file.filename);
        }
        assert_eq!(manifest.signature.is_some(), encrypted, "{snapshot}");
        assert_eq!(
            manifest.key_fingerprint().is_some(),
            encrypted,
            "{snapshot}"
        );
        assert!(manifest.unprotected.get("verify_state").is_some());

        // Our JSON is byte for byte what PBS wrote (pretty, sorted keys, no newline).
        let json = decode_blob(&raw, usize::MAX).unwrap();
        assert_eq!(
            manifest.to_json().unwrap().as_bytes(),
            &json[..],
            "{snapshot}"
        );
        // zstd 1.5.7 at level 1 reproduces the official compressed manifest blob.
        assert_eq!(manifest.to_blob().unwrap(), raw, "{snapshot}");
    }
}

#[test]
fn the_archive_table_covers_every_manifest_entry() {
    for snapshot in snapshots() {
        let (_, manifest) = manifest_of(&snapshot);
        for file in &manifest.files {
            assert!(
                ARCHIVES
                    .iter()
                    .any(|a| a.0 == snapshot && a.1 == file.filename),
                "{snapshot}/{} missing from the table",
                file.filename
            );
        }
    }
}

fn load_checked_index(snapshot: &str, filename: &str) -> (Vec<u8>, AnyIndex) {
    let bytes = fs::read(store().join(snapshot).join(filename)).unwrap();
    let index = AnyIndex::parse(&bytes).unwrap();
    let (_, manifest) = manifest_of(snapshot);
    manifest
        .verify_file(filename, index.total_size(), &index.compute_csum())
        .unwrap();
    (bytes, index)
}

#[test]
fn unencrypted_archives_reassemble_to_the_readme_hashes() {
    for &(snapshot, filename, size, chunks, sha) in ARCHIVES {
        if snapshot.contains("fixture-enc") {
            continue;
        }
        let (_, index) = load_checked_index(snapshot, filename);
        assert_eq!(index.total_size(), size, "{snapshot}/{filename}");
        assert_eq!(index.chunk_count(), chunks, "{snapshot}/{filename}");
        assert_eq!(
            matches!(index, AnyIndex::Fixed(_)),
            filename.ends_with(".fidx")
        );

        let mut hasher = Sha256::new();
        let mut position = 0;
        for i in 0..index.chunk_count() {
            let info = index.chunk_info(i).unwrap();
            assert_eq!(info.start, position);
            assert_eq!(index.chunk_from_offset(info.start), Some((i, 0)));
            let raw = fs::read(chunk_path(&info.digest)).unwrap();
            let data = decode_chunk(&raw, &info.digest, Some(info.len())).unwrap();
            hasher.update(&data);
            position = info.end;
        }
        assert_eq!(position, size);
        assert_eq!(index.chunk_from_offset(size), None);
        assert_eq!(hex::encode(hasher.finalize()), sha, "{snapshot}/{filename}");
    }
}

#[test]
fn encrypted_chunks_need_a_key() {
    let mut seen = 0;
    for &(snapshot, filename, size, chunks, _) in ARCHIVES {
        if !snapshot.contains("fixture-enc") {
            continue;
        }
        let (_, index) = load_checked_index(snapshot, filename);
        assert_eq!(index.total_size(), size);
        assert_eq!(index.chunk_count(), chunks);
        for info in (0..chunks).map(|i| index.chunk_info(i).unwrap()) {
            let raw = fs::read(chunk_path(&info.digest)).unwrap();
            assert!(blob_kind(&raw).unwrap().is_encrypted());
            let err = decode_chunk(&raw, &info.digest, Some(info.len())).unwrap_err();
            assert!(matches!(err, BlobError::Encrypted));
            assert!(err.to_string().contains("encrypted: key needed"));
            seen += 1;
        }
    }
    assert_eq!(seen, 9);
}

#[test]
fn indexes_reencode_byte_for_byte() {
    for &(snapshot, filename, ..) in ARCHIVES {
        let (bytes, index) = load_checked_index(snapshot, filename);
        let header = *index.header().unwrap();
        assert_eq!(header.stored_csum, index.compute_csum());
        assert_eq!(
            index.to_bytes(header.uuid, header.ctime),
            bytes,
            "{snapshot}/{filename}"
        );
    }
}

/// Every unencrypted chunk file, decoded with its file name as digest.
fn plain_chunks() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut chunks = Vec::new();
    for dir in fs::read_dir(store().join(".chunks")).unwrap() {
        for file in fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let raw = fs::read(&path).unwrap();
            if blob_kind(&raw).unwrap().is_encrypted() {
                continue;
            }
            let name = path.file_name().unwrap().to_str().unwrap();
            let digest = pbsfs::format::digest_from_hex(name).unwrap();
            let data = decode_chunk(&raw, &digest, None).unwrap();
            assert!(data.len() <= MAX_CHUNK_SIZE);
            chunks.push((raw, data));
        }
    }
    chunks
}

#[test]
fn chunks_reencode_byte_for_byte() {
    let chunks = plain_chunks();
    let uncompressed = chunks
        .iter()
        .filter(|(raw, _)| blob_kind(raw).unwrap() == BlobKind::Uncompressed)
        .count();
    assert!(uncompressed >= 1, "no uncompressed fixture chunk");
    assert!(uncompressed < chunks.len(), "no compressed fixture chunk");
    for (raw, data) in &chunks {
        let kind = blob_kind(raw).unwrap();
        if kind == BlobKind::Uncompressed {
            assert_eq!(&encode_blob(data, false).unwrap(), raw);
        }
        // The official client asked for compression for every chunk; zstd 1.5.7 level 1
        // and the "compressed length <= data length" rule give the same bytes and choice.
        assert_eq!(&encode_blob(data, true).unwrap(), raw, "{kind:?}");
    }
}
