//! `verify`: every manifest, index and chunk checksum of a snapshot, the way a PBS verify job
//! checks them (encrypted chunks: framing and CRC only, since the key is not needed for that).

use std::collections::HashMap;

use anyhow::{bail, Result};

use super::access::SnapshotAccess;
use super::archive::{check_blob, check_index, ArchiveKind};
use super::ChunkSource;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::format::blob::{blob_kind, decode_chunk, decode_chunk_with, parse_blob, BlobKind};
use crate::format::crypto::CryptConfig;
use crate::format::index::ChunkIndex;
use crate::format::manifest::CryptMode;
use crate::format::{digest_to_hex, Digest};

/// Verifies snapshots, remembering chunks already checked so shared chunks are read once.
#[derive(Default)]
pub struct Verifier {
    /// With a key, encrypted chunks are decrypted and their keyed digest checked too.
    crypt: Option<Arc<CryptConfig>>,
    checked: HashMap<Digest, Option<String>>,
    /// Chunks read and checked (not counting repeats).
    pub chunks_checked: u64,
    /// Bytes of chunk data checked.
    pub bytes_checked: u64,
    /// Bytes of chunk data read so far (verified or not), for a progress display on
    /// another thread.
    pub progress: Arc<AtomicU64>,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_key(crypt: Option<Arc<CryptConfig>>) -> Self {
        Verifier {
            crypt,
            ..Self::default()
        }
    }

    /// Returns the problems found in one snapshot; empty means it verified.
    /// Each problem names the file (and chunk) it is about.
    pub fn verify_snapshot(&mut self, snapshot: &dyn SnapshotAccess) -> Vec<String> {
        let manifest = snapshot.manifest();
        let chunks = snapshot.chunk_source();
        let mut problems = Vec::new();
        for info in &manifest.files {
            let filename = info.filename.as_str();
            let raw = match snapshot.read_file(filename) {
                Ok(raw) => raw,
                Err(err) => {
                    problems.push(format!("{filename}: {err:#}"));
                    continue;
                }
            };
            match ArchiveKind::of(filename) {
                Some(ArchiveKind::Blob) => {
                    if let Err(err) = check_blob(filename, &raw, info) {
                        problems.push(format!("{err:#}"));
                    } else if let Err(err) = parse_blob(&raw) {
                        problems.push(format!("{filename}: {err}"));
                    }
                }
                Some(_) => match check_index(filename, &raw, info) {
                    Ok(index) => {
                        let encrypted = info.crypt_mode == CryptMode::Encrypt;
                        for position in 0..index.chunk_count() {
                            let Some(chunk) = index.chunk_info(position) else {
                                break;
                            };
                            if let Err(err) = self.check_chunk(
                                &*chunks,
                                &chunk.digest,
                                chunk.end - chunk.start,
                                encrypted,
                            ) {
                                problems.push(format!(
                                    "{filename}: chunk #{position} {}: {err}",
                                    digest_to_hex(&chunk.digest)
                                ));
                            }
                        }
                    }
                    Err(err) => problems.push(format!("{err:#}")),
                },
                None => problems.push(format!("{filename}: unknown file type in manifest")),
            }
        }
        problems
    }

    fn check_chunk(
        &mut self,
        store: &dyn ChunkSource,
        digest: &Digest,
        len: u64,
        encrypted: bool,
    ) -> Result<(), String> {
        if let Some(result) = self.checked.get(digest) {
            return match result {
                None => Ok(()),
                Some(err) => Err(err.clone()),
            };
        }
        let result = check_one_chunk(store, digest, len, encrypted, self.crypt.as_deref())
            .map_err(|e| format!("{e:#}"));
        self.chunks_checked += 1;
        self.progress.fetch_add(len, Ordering::Relaxed);
        if result.is_ok() {
            self.bytes_checked += len;
        }
        self.checked.insert(*digest, result.clone().err());
        result
    }
}

fn check_one_chunk(
    store: &dyn ChunkSource,
    digest: &Digest,
    len: u64,
    encrypted: bool,
    crypt: Option<&CryptConfig>,
) -> Result<()> {
    let raw = store.fetch_raw_chunk(digest)?;
    let kind = blob_kind(&raw)?;
    match (encrypted, kind) {
        (true, BlobKind::Encrypted | BlobKind::EncryptedCompressed) => match crypt {
            Some(crypt) => {
                decode_chunk_with(&raw, digest, Some(len), Some(crypt))?;
            }
            None => {
                parse_blob(&raw)?;
            }
        },
        (false, BlobKind::Uncompressed | BlobKind::Compressed) => {
            decode_chunk(&raw, digest, Some(len))?;
        }
        (true, _) => bail!("index is encrypted but the chunk is not"),
        (false, _) => bail!("index is not encrypted but the chunk is"),
    }
    Ok(())
}
