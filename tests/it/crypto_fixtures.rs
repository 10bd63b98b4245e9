//! Encryption against the encrypted snapshots and key files made by the official tools
//! (../shared/fixtures, read-only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::common::HashWriter;

use pbsfs::format::blob::{
    blob_kind, chunk_digest_with, decode_blob_with, decode_chunk_with, encode_blob_with, BlobError,
};
use pbsfs::format::crypto::CryptConfig;
use pbsfs::format::index::ChunkIndex;
use pbsfs::format::keyfile::{decrypt_key, load_key_file, Kdf, KeyFileError};
use pbsfs::format::manifest::{CryptMode, Manifest, ManifestError};
use pbsfs::store::access::LocalSnapshot;
use pbsfs::store::chunk_reader::{ChunkReader, VerifyingChunkReader};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::names::{BackupDir, BackupNamespace};
use pbsfs::store::open::open_index_reader;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");
const ENC: &str = "host/fixture-enc/2026-11-25T08:29:00Z";
const ENC_SCRYPT: &str = "host/fixture-enc-scrypt/2026-11-25T08:29:18Z";
const SCRYPT_PASSWORD: &[u8] = b"fixture-password";

/// Fingerprints from the fixtures README.
const FINGERPRINT: &str =
    "59:fc:73:e2:8a:71:d0:80:b8:60:4a:da:74:aa:87:bc:79:de:0a:72:fd:03:b4:c0:66:9c:08:97:ee:08:e1:a6";
const FINGERPRINT_SCRYPT: &str =
    "48:95:6d:c7:1a:84:c2:2b:62:d9:e2:33:32:b2:17:3a:13:c5:86:5d:4f:47:38:d2:9e:ac:27:c7:a7:4e:67:95";

/// (snapshot, archive, sha256 of the decrypted archive) from the fixtures README.
#[rustfmt::skip]
const ARCHIVES: &[(&str, &str, &str)] = &[
    (ENC, "root.pxar.didx", "22223ecd9678f3f18364158f45a0d4a07887de11c30790655406628e38bbdbc8"),
    (ENC, "catalog.pcat1.didx", "9b6e6d751ff293c8faeb89610313f443e98423992c9370ddff633b5549f71663"),
    (ENC_SCRYPT, "root.pxar.didx", "7058cf5ab1a777d8a520744bd4410a5a198773518b9b8c6ab96d5f266c38c58d"),
    (ENC_SCRYPT, "catalog.pcat1.didx", "99b914cd233621c2d7a21f796647cea798d0fede963ee0fd1c2990d20c3435cc"),
];

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn store() -> Arc<LocalDatastore> {
    Arc::new(LocalDatastore::open(&fixture("datastore")).unwrap())
}

fn plain_key() -> CryptConfig {
    let (key, _) = load_key_file(&fixture("fixture.key"), None).unwrap();
    CryptConfig::from(&key)
}

fn scrypt_key() -> CryptConfig {
    let (key, _) = load_key_file(&fixture("fixture-scrypt.key"), Some(SCRYPT_PASSWORD)).unwrap();
    CryptConfig::from(&key)
}

fn key_for(snapshot: &str) -> CryptConfig {
    if snapshot == ENC {
        plain_key()
    } else {
        scrypt_key()
    }
}

fn manifest(snapshot: &str) -> Manifest {
    store()
        .read_manifest(
            &BackupNamespace::root(),
            &BackupDir::parse(snapshot).unwrap(),
        )
        .unwrap()
}

#[test]
fn key_files_load_with_the_readme_fingerprints() {
    let (key, info) = load_key_file(&fixture("fixture.key"), None).unwrap();
    assert_eq!(info.kdf, Kdf::None);
    assert_eq!(info.fingerprint.to_string(), FINGERPRINT);
    assert_eq!(
        CryptConfig::from(&key).fingerprint().to_string(),
        FINGERPRINT
    );
    assert_eq!(info.created, "2026-11-25T08:29:00+00:00");

    let (key, info) = load_key_file(&fixture("fixture-scrypt.key"), Some(SCRYPT_PASSWORD)).unwrap();
    assert_eq!(info.kdf, Kdf::Scrypt);
    assert_eq!(info.fingerprint.to_string(), FINGERPRINT_SCRYPT);
    assert_eq!(
        CryptConfig::from(&key).fingerprint().to_string(),
        FINGERPRINT_SCRYPT
    );
}

#[test]
fn scrypt_key_needs_the_right_password() {
    let json = std::fs::read(fixture("fixture-scrypt.key")).unwrap();
    let err = decrypt_key(&json, Some(b"not-the-password")).unwrap_err();
    assert!(matches!(err, KeyFileError::WrongPassword(_)));
    assert!(err.to_string().contains("wrong password"), "{err}");
    let err = decrypt_key(&json, None).unwrap_err();
    assert!(matches!(err, KeyFileError::PasswordNeeded));
    assert!(err.to_string().contains("password"), "{err}");
    let err = load_key_file(&fixture("no-such.key"), None).unwrap_err();
    assert!(matches!(err, KeyFileError::Io(_)));
}

#[test]
fn encrypted_manifests_verify_with_their_key_only() {
    for (snapshot, fingerprint) in [(ENC, FINGERPRINT), (ENC_SCRYPT, FINGERPRINT_SCRYPT)] {
        let m = manifest(snapshot);
        assert_eq!(m.key_fingerprint(), Some(fingerprint));
        assert!(m.files.iter().all(|f| f.crypt_mode == CryptMode::Encrypt));
        m.verify_signature(Some(&key_for(snapshot))).unwrap();

        let other = if snapshot == ENC {
            scrypt_key()
        } else {
            plain_key()
        };
        let err = m.verify_signature(Some(&other)).unwrap_err();
        assert!(matches!(err, ManifestError::WrongKey { .. }));
        assert!(err.to_string().contains("wrong key"), "{err}");
        let err = m.verify_signature(None).unwrap_err();
        assert!(matches!(err, ManifestError::MissingKey(_)));

        // Re-signing with the same key reproduces the official signature.
        let mut copy = m.clone();
        copy.signature = None;
        copy.sign(&key_for(snapshot)).unwrap();
        assert_eq!(copy.signature, m.signature, "{snapshot}");
    }
}

#[test]
fn encrypted_archives_reassemble_to_the_readme_hashes() {
    let store = store();
    let ns = BackupNamespace::root();
    for &(snapshot, filename, sha) in ARCHIVES {
        let dir = BackupDir::parse(snapshot).unwrap();
        let m = manifest(snapshot);
        let crypt = Arc::new(key_for(snapshot));
        let chunks = Arc::new(
            VerifyingChunkReader::with_key(store.clone(), Some(crypt))
                .expect_crypt_mode(m.file(filename).unwrap().crypt_mode),
        );
        let reader = open_index_reader(
            &LocalSnapshot::open(store.clone(), &ns, &dir).unwrap(),
            filename,
            chunks,
        )
        .unwrap();
        let mut hash = HashWriter(Sha256::new());
        let written = reader.copy_to(&mut hash).unwrap();
        assert_eq!(written, m.file(filename).unwrap().size);
        assert_eq!(hex::encode(hash.0.finalize()), sha, "{snapshot}/{filename}");
    }
}

#[test]
fn wrong_key_on_an_encrypted_chunk_is_a_clear_error() {
    let store = store();
    let _ = manifest(ENC_SCRYPT); // the manifest itself still reads
    let dir = BackupDir::parse(ENC_SCRYPT).unwrap();
    let chunks = Arc::new(VerifyingChunkReader::with_key(
        store.clone(),
        Some(Arc::new(plain_key())),
    ));
    let reader = open_index_reader(
        &LocalSnapshot::open(store.clone(), &BackupNamespace::root(), &dir).unwrap(),
        "root.pxar.didx",
        chunks.clone(),
    )
    .unwrap();
    let info = reader.index().chunk_info(0).unwrap();
    let err = chunks.read_chunk(&info.digest, info.len()).unwrap_err();
    assert!(format!("{err:#}").contains("wrong key"), "{err:#}");
}

/// Every chunk of both encrypted snapshots: raw blob, digest, plaintext length, key.
fn encrypted_chunks() -> Vec<(Vec<u8>, [u8; 32], u64, CryptConfig)> {
    let store = store();
    let mut out = Vec::new();
    for &(snapshot, filename, _) in ARCHIVES {
        let raw_index = std::fs::read(fixture("datastore").join(snapshot).join(filename)).unwrap();
        let index = pbsfs::format::index::AnyIndex::parse(&raw_index).unwrap();
        for position in 0..index.chunk_count() {
            let info = index.chunk_info(position).unwrap();
            let raw = std::fs::read(store.chunk_path(&info.digest)).unwrap();
            out.push((raw, info.digest, info.len(), key_for(snapshot)));
        }
    }
    out
}

#[test]
fn every_encrypted_chunk_decodes_and_reencrypts() {
    let chunks = encrypted_chunks();
    assert_eq!(chunks.len(), 9);
    for (raw, digest, len, crypt) in &chunks {
        assert!(blob_kind(raw).unwrap().is_encrypted());
        let data = decode_chunk_with(raw, digest, Some(*len), Some(crypt)).unwrap();
        assert_eq!(chunk_digest_with(&data, Some(crypt)), *digest);

        // Our encoding (fresh IV) decodes to the same plaintext under the same keyed digest.
        let again = encode_blob_with(&data, true, Some(crypt)).unwrap();
        assert_eq!(blob_kind(&again).unwrap(), blob_kind(raw).unwrap());
        assert_ne!(&again, raw);
        assert_eq!(
            decode_chunk_with(&again, digest, Some(*len), Some(crypt)).unwrap(),
            data
        );
        // Without the key: the old error, unchanged.
        assert!(matches!(
            decode_chunk_with(raw, digest, Some(*len), None),
            Err(BlobError::Encrypted)
        ));
    }
}

#[test]
fn encrypt_decrypt_round_trip_with_a_fixture_key() {
    let crypt = scrypt_key();
    let inputs: [Vec<u8>; 4] = [
        Vec::new(),
        b"x".to_vec(),
        vec![42u8; 300_000],
        (0..=255u8).collect(),
    ];
    for data in &inputs {
        for compress in [false, true] {
            let raw = encode_blob_with(data, compress, Some(&crypt)).unwrap();
            assert!(blob_kind(&raw).unwrap().is_encrypted());
            assert_eq!(
                &decode_blob_with(&raw, data.len(), Some(&crypt)).unwrap(),
                data
            );
            assert!(matches!(
                decode_blob_with(&raw, data.len(), Some(&plain_key())),
                Err(BlobError::Decrypt(_))
            ));
        }
    }
}
