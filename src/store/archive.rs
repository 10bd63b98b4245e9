//! Opening the files of a snapshot with the manifest's checks: an index must have the
//! checksum and size the manifest lists, a blob the SHA-256 and length.

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use crate::format::digest_to_hex;
use crate::format::index::{AnyIndex, ChunkIndex};
use crate::format::manifest::FileInfo;

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
