//! Verified chunk reads: raw blob from a [`ChunkSource`], then CRC, decompression, SHA-256
//! and length checks. Nothing above this layer ever sees unverified bytes.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::ChunkSource;
use crate::format::blob::{decode_chunk, MAX_CHUNK_SIZE};
use crate::format::{digest_to_hex, Digest};

/// Gives the verified plain data of a chunk.
pub trait ChunkReader: Send + Sync {
    /// `expected_len` is the chunk's length according to the index that references it.
    fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>>;

    /// A hint that the chunk will be read soon (read-ahead); readers with a cache fetch it in
    /// the background, others ignore it.
    fn prefetch(&self, _digest: &Digest, _expected_len: u64) {}
}

impl<T: ChunkReader + ?Sized> ChunkReader for Arc<T> {
    fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>> {
        (**self).read_chunk(digest, expected_len)
    }
    fn prefetch(&self, digest: &Digest, expected_len: u64) {
        (**self).prefetch(digest, expected_len)
    }
}

/// Fetches from a source and verifies every chunk (no caching).
pub struct VerifyingChunkReader {
    source: Arc<dyn ChunkSource>,
}

impl VerifyingChunkReader {
    pub fn new(source: Arc<dyn ChunkSource>) -> Self {
        VerifyingChunkReader { source }
    }
}

impl ChunkReader for VerifyingChunkReader {
    fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>> {
        if expected_len > MAX_CHUNK_SIZE as u64 {
            anyhow::bail!(
                "chunk {} is {} bytes according to its index, more than the {} byte limit",
                digest_to_hex(digest),
                expected_len,
                MAX_CHUNK_SIZE
            );
        }
        let raw = self.source.fetch_raw_chunk(digest)?;
        let data = decode_chunk(&raw, digest, Some(expected_len))
            .with_context(|| format!("chunk {}", digest_to_hex(digest)))?;
        Ok(Arc::new(data))
    }
}
