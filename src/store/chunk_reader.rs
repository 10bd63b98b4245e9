//! Verified chunk reads: raw blob from a [`ChunkSource`], then CRC, decryption (with a key),
//! decompression, digest and length checks. Nothing above this layer ever sees unverified
//! bytes.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::ChunkSource;
use crate::format::blob::{check_chunk_crypt_mode, decode_chunk_owned, MAX_CHUNK_SIZE};
use crate::format::crypto::CryptConfig;
use crate::format::manifest::CryptMode;
use crate::format::{digest_to_hex, Digest};

/// Gives the verified plain data of a chunk.
pub trait ChunkReader: Send + Sync {
    /// `expected_len` is the chunk's length according to the index that references it.
    fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>>;

    /// The same, for a chunk read once in a long run of chunks (see
    /// [`ChunkSource::fetch_raw_chunk_streaming`]).
    fn read_chunk_streaming(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>> {
        self.read_chunk(digest, expected_len)
    }

    /// A hint that the chunk will be read soon (read-ahead); readers with a cache fetch it in
    /// the background, others ignore it.
    fn prefetch(&self, _digest: &Digest, _expected_len: u64) {}

    /// A hint that the chunk is not needed again soon (a sequential reader has passed it);
    /// readers with a cache drop it, so its memory serves the chunks ahead instead.
    fn release(&self, _digest: &Digest) {}

    /// Bytes of decoded chunks this reader keeps (`None`: it keeps none).
    fn capacity(&self) -> Option<usize> {
        None
    }
}

impl<T: ChunkReader + ?Sized> ChunkReader for Arc<T> {
    fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>> {
        (**self).read_chunk(digest, expected_len)
    }
    fn read_chunk_streaming(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>> {
        (**self).read_chunk_streaming(digest, expected_len)
    }
    fn prefetch(&self, digest: &Digest, expected_len: u64) {
        (**self).prefetch(digest, expected_len)
    }
    fn release(&self, digest: &Digest) {
        (**self).release(digest)
    }
    fn capacity(&self) -> Option<usize> {
        (**self).capacity()
    }
}

/// Fetches from a source and verifies every chunk (no caching).
pub struct VerifyingChunkReader {
    source: Arc<dyn ChunkSource>,
    crypt: Option<Arc<CryptConfig>>,
    /// When set, chunks must be encrypted (`true`) or plain (`false`).
    expect_encrypted: Option<bool>,
}

impl VerifyingChunkReader {
    /// A reader without a key: encrypted chunks fail with "key needed".
    pub fn new(source: Arc<dyn ChunkSource>) -> Self {
        Self::with_key(source, None)
    }

    /// A reader that decrypts encrypted chunks with `crypt` and checks their keyed digest.
    pub fn with_key(source: Arc<dyn ChunkSource>, crypt: Option<Arc<CryptConfig>>) -> Self {
        VerifyingChunkReader {
            source,
            crypt,
            expect_encrypted: None,
        }
    }

    /// Enforces the crypt mode of the index's manifest entry on every chunk: `encrypt` →
    /// only encrypted chunks, `none`/`sign-only` → only plain ones.
    pub fn expect_crypt_mode(mut self, mode: CryptMode) -> Self {
        self.expect_encrypted = Some(mode == CryptMode::Encrypt);
        self
    }

    /// Checks the index's length, fetches the raw chunk with `fetch`, and decodes and
    /// verifies it.
    fn verify(
        &self,
        digest: &Digest,
        expected_len: u64,
        fetch: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Arc<Vec<u8>>> {
        if expected_len > MAX_CHUNK_SIZE as u64 {
            anyhow::bail!(
                "chunk {} is {} bytes according to its index, more than the {} byte limit",
                digest_to_hex(digest),
                expected_len,
                MAX_CHUNK_SIZE
            );
        }
        let raw = fetch()?;
        let data = (|| {
            if let Some(encrypted) = self.expect_encrypted {
                check_chunk_crypt_mode(&raw, encrypted)?;
            }
            decode_chunk_owned(raw, digest, Some(expected_len), self.crypt.as_deref())
        })()
        .with_context(|| format!("chunk {}", digest_to_hex(digest)))?;
        Ok(Arc::new(data))
    }
}

impl ChunkReader for VerifyingChunkReader {
    fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>> {
        self.verify(digest, expected_len, || self.source.fetch_raw_chunk(digest))
    }

    fn read_chunk_streaming(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>> {
        self.verify(digest, expected_len, || {
            self.source.fetch_raw_chunk_streaming(digest)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::blob::{chunk_digest, chunk_digest_with, encode_blob, encode_blob_with};
    use std::collections::HashMap;

    struct MapSource(HashMap<Digest, Vec<u8>>);

    impl ChunkSource for MapSource {
        fn fetch_raw_chunk(&self, digest: &Digest) -> Result<Vec<u8>> {
            self.0
                .get(digest)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no chunk"))
        }
    }

    fn source_with(chunks: Vec<(Digest, Vec<u8>)>) -> Arc<dyn ChunkSource> {
        Arc::new(MapSource(chunks.into_iter().collect()))
    }

    #[test]
    fn encrypted_chunks_need_the_right_key() {
        let crypt = Arc::new(CryptConfig::new([8; 32]));
        let data = b"chunk data".to_vec();
        let digest = chunk_digest_with(&data, Some(&crypt));
        let raw = encode_blob_with(&data, true, Some(&crypt)).unwrap();
        let source = source_with(vec![(digest, raw)]);

        let reader = VerifyingChunkReader::with_key(source.clone(), Some(crypt.clone()))
            .expect_crypt_mode(CryptMode::Encrypt);
        assert_eq!(*reader.read_chunk(&digest, 10).unwrap(), data);

        let err = VerifyingChunkReader::new(source.clone())
            .read_chunk(&digest, 10)
            .unwrap_err();
        assert!(format!("{err:#}").contains("encrypted: key needed"));

        let wrong = Arc::new(CryptConfig::new([9; 32]));
        let err = VerifyingChunkReader::with_key(source.clone(), Some(wrong))
            .read_chunk(&digest, 10)
            .unwrap_err();
        assert!(format!("{err:#}").contains("wrong key"));

        let err = VerifyingChunkReader::with_key(source, Some(crypt))
            .expect_crypt_mode(CryptMode::SignOnly)
            .read_chunk(&digest, 10)
            .unwrap_err();
        assert!(format!("{err:#}").contains("CryptMode don't match"));
    }

    /// Serves a chunk's blob as it is to plain fetches, and with one byte of its data
    /// flipped to streaming ones.
    struct DamagedWhenStreamed(Vec<u8>);

    impl ChunkSource for DamagedWhenStreamed {
        fn fetch_raw_chunk(&self, _digest: &Digest) -> Result<Vec<u8>> {
            Ok(self.0.clone())
        }
        fn fetch_raw_chunk_streaming(&self, _digest: &Digest) -> Result<Vec<u8>> {
            let mut raw = self.0.clone();
            *raw.last_mut().unwrap() ^= 1;
            Ok(raw)
        }
    }

    #[test]
    fn streaming_reads_fetch_their_own_way_and_are_verified_the_same() {
        let data = b"streamed chunk".to_vec();
        let digest = chunk_digest(&data);
        let raw = encode_blob(&data, false).unwrap();
        let reader = VerifyingChunkReader::new(Arc::new(DamagedWhenStreamed(raw)));
        assert_eq!(*reader.read_chunk(&digest, 14).unwrap(), data);
        assert!(reader.read_chunk_streaming(&digest, 14).is_err());
    }

    #[test]
    fn plain_chunk_in_encrypted_index_is_refused() {
        let data = b"plain".to_vec();
        let digest = chunk_digest(&data);
        let source = source_with(vec![(digest, encode_blob(&data, false).unwrap())]);
        let crypt = Arc::new(CryptConfig::new([8; 32]));
        let reader = VerifyingChunkReader::with_key(source.clone(), Some(crypt.clone()));
        assert_eq!(*reader.read_chunk(&digest, 5).unwrap(), data);
        let err = VerifyingChunkReader::with_key(source, Some(crypt))
            .expect_crypt_mode(CryptMode::Encrypt)
            .read_chunk(&digest, 5)
            .unwrap_err();
        assert!(format!("{err:#}").contains("index is encrypted but the chunk is not"));
    }
}
