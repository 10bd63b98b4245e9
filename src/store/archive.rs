//! Opening the files of a snapshot with the manifest's checks: an index must have the
//! checksum and size the manifest lists, a blob the SHA-256 and length.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::chunk_reader::ChunkReader;
use super::local::LocalDatastore;
use super::names::{BackupDir, BackupNamespace};
use super::range::IndexReader;
use crate::format::blob::{decode_blob_with, MAX_BLOB_SIZE};
use crate::format::crypto::CryptConfig;
use crate::format::digest_to_hex;
use crate::format::index::{AnyIndex, ChunkIndex};
use crate::format::manifest::{FileInfo, Manifest};

/// What kind of file a snapshot file name denotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    DynamicIndex,
    FixedIndex,
    Blob,
}

impl ArchiveKind {
    pub fn of(filename: &str) -> Option<Self> {
        if filename.ends_with(".didx") {
            Some(ArchiveKind::DynamicIndex)
        } else if filename.ends_with(".fidx") {
            Some(ArchiveKind::FixedIndex)
        } else if filename.ends_with(".blob") {
            Some(ArchiveKind::Blob)
        } else {
            None
        }
    }
}

fn file_info<'a>(manifest: &'a Manifest, filename: &str) -> Result<&'a FileInfo> {
    manifest
        .files
        .iter()
        .find(|f| f.filename == filename)
        .with_context(|| format!("{filename} is not listed in the snapshot's manifest"))
}

/// Parses an index file and checks it against its manifest entry.
pub fn check_index(filename: &str, raw: &[u8], info: &FileInfo) -> Result<AnyIndex> {
    let index = AnyIndex::parse(raw).with_context(|| format!("{filename}: corrupt index"))?;
    let csum = index.compute_csum();
    if csum != info.csum {
        bail!(
            "{filename}: wrong index checksum (manifest {}, file {})",
            digest_to_hex(&info.csum),
            digest_to_hex(&csum)
        );
    }
    if index.total_size() != info.size {
        bail!(
            "{filename}: wrong size (manifest {}, index {})",
            info.size,
            index.total_size()
        );
    }
    Ok(index)
}

/// Checks a raw blob file against its manifest entry.
pub fn check_blob(filename: &str, raw: &[u8], info: &FileInfo) -> Result<()> {
    if raw.len() as u64 != info.size {
        bail!(
            "{filename}: wrong size (manifest {}, file {})",
            info.size,
            raw.len()
        );
    }
    let csum: [u8; 32] = Sha256::digest(raw).into();
    if csum != info.csum {
        bail!(
            "{filename}: wrong checksum (manifest {}, file {})",
            digest_to_hex(&info.csum),
            digest_to_hex(&csum)
        );
    }
    Ok(())
}

/// Opens an index of a snapshot, verified against the manifest, as a random-access reader.
pub fn open_index_reader(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    dir: &BackupDir,
    manifest: &Manifest,
    filename: &str,
    chunks: Arc<dyn ChunkReader>,
) -> Result<IndexReader> {
    let info = file_info(manifest, filename)?;
    let raw = store.read_snapshot_file(ns, dir, filename)?;
    let index = check_index(filename, &raw, info)?;
    Ok(IndexReader::new(filename, Arc::new(index), chunks))
}

/// Reads a blob of a snapshot, verified against the manifest, and returns its plaintext.
pub fn read_blob(
    store: &LocalDatastore,
    ns: &BackupNamespace,
    dir: &BackupDir,
    manifest: &Manifest,
    filename: &str,
    crypt: Option<&CryptConfig>,
) -> Result<Vec<u8>> {
    let info = file_info(manifest, filename)?;
    let raw = store.read_snapshot_file(ns, dir, filename)?;
    check_blob(filename, &raw, info)?;
    decode_blob_with(&raw, MAX_BLOB_SIZE, crypt)
        .with_context(|| format!("{filename}: cannot decode"))
}
