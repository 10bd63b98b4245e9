//! The seam between readers and where chunks come from (a datastore directory, a PBS server).

use crate::format::Digest;

/// Fetches the raw, still encoded blob bytes of a chunk by digest.
///
/// Decoding and verification (CRC, decryption, decompression, digest) happen above this
/// trait, so every source is verified the same way.
pub trait ChunkSource: Send + Sync {
    fn fetch_raw_chunk(&self, digest: &Digest) -> anyhow::Result<Vec<u8>>;

    /// The same, for a chunk read once in a long run of chunks (read-ahead of a sequential
    /// reader, a verify pass): nothing will ask for its raw bytes again soon, so a source
    /// may skip its own caching. A local datastore reads such chunks past the page cache.
    fn fetch_raw_chunk_streaming(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        self.fetch_raw_chunk(digest)
    }
}

impl<T: ChunkSource + ?Sized> ChunkSource for std::sync::Arc<T> {
    fn fetch_raw_chunk(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        (**self).fetch_raw_chunk(digest)
    }
    fn fetch_raw_chunk_streaming(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        (**self).fetch_raw_chunk_streaming(digest)
    }
}
