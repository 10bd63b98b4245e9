//! Random access to the logical stream behind an index: a byte range maps to the chunks that
//! cover it, and only those are fetched ("RestoreFileRange").

use std::io::{self, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use super::chunk_reader::ChunkReader;
use crate::format::index::{AnyIndex, ChunkIndex};
use crate::format::{digest_to_hex, Digest, ReadAt};

/// A cached chunk and the part of it a read wants.
pub type SharedSlice = (Arc<Vec<u8>>, Range<usize>);

/// A chunk of an index that could not be read: which one, where its bytes lie in the
/// stream, and why. Reads through [`ReadAt`] carry it inside their `io::Error` (see
/// [`ChunkError::in_io`]), so that a reader far above (the extractor) can tell which chunk
/// a failed file needed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{archive} chunk #{position} {} (stream bytes {}..{}): {reason}", digest_to_hex(.digest), .range.start, .range.end)]
pub struct ChunkError {
    /// The index file name.
    pub archive: String,
    pub position: usize,
    pub digest: Digest,
    /// The chunk's bytes in the logical stream.
    pub range: Range<u64>,
    /// The chunk reader's error, as text (chunk caches share one error among readers).
    pub reason: String,
}

impl ChunkError {
    fn new(
        archive: &str,
        position: usize,
        digest: Digest,
        range: Range<u64>,
        err: anyhow::Error,
    ) -> Self {
        let reason = format!("{err:#}");
        // The verifying reader names the digest as its context; this error names it already.
        let reason = reason
            .strip_prefix(&format!("chunk {}: ", digest_to_hex(&digest)))
            .map(str::to_string)
            .unwrap_or(reason);
        ChunkError {
            archive: archive.to_string(),
            position,
            digest,
            range,
            reason,
        }
    }

    /// The chunk error an `io::Error` of [`IndexReader::read_at`] carries, if any.
    pub fn in_io(err: &io::Error) -> Option<&ChunkError> {
        err.get_ref()?.downcast_ref()
    }
}

/// An index plus a chunk reader, readable at any offset.
pub struct IndexReader {
    name: String,
    index: Arc<AnyIndex>,
    chunks: Arc<dyn ChunkReader>,
    /// The last chunk used: sequential small reads within one chunk decode it only once.
    last: Mutex<Option<(usize, Arc<Vec<u8>>)>>,
}

impl IndexReader {
    /// `name` (the archive file name) is used in error messages.
    pub fn new(name: &str, index: Arc<AnyIndex>, chunks: Arc<dyn ChunkReader>) -> Self {
        IndexReader {
            name: name.to_string(),
            index,
            chunks,
            last: Mutex::new(None),
        }
    }

    pub fn index(&self) -> &AnyIndex {
        &self.index
    }

    /// Bytes the chunk reader caches, if it caches.
    pub fn chunk_capacity(&self) -> Option<usize> {
        self.chunks.capacity()
    }

    fn chunk(&self, position: usize) -> Result<Arc<Vec<u8>>> {
        if let Some((cached, data)) = &*self.last.lock().unwrap() {
            if *cached == position {
                return Ok(data.clone());
            }
        }
        let info = self
            .index
            .chunk_info(position)
            .with_context(|| format!("{}: no chunk #{position}", self.name))?;
        let data = self
            .chunks
            .read_chunk(&info.digest, info.end - info.start)
            .map_err(|err| {
                ChunkError::new(&self.name, position, info.digest, info.start..info.end, err)
            })?;
        *self.last.lock().unwrap() = Some((position, data.clone()));
        Ok(data)
    }

    /// `len` bytes at `offset` as a window into the one cached chunk holding all of them
    /// (no copy), or `None` when they span chunks or reach past the end.
    pub fn read_shared(&self, offset: u64, len: usize) -> Result<Option<SharedSlice>> {
        let Some((position, within)) = self.index.chunk_from_offset(offset) else {
            return Ok(None);
        };
        let data = self.chunk(position)?;
        let start = within as usize;
        match start.checked_add(len) {
            Some(end) if end <= data.len() => Ok(Some((data, start..end))),
            _ => Ok(None),
        }
    }

    /// Asks the chunk reader to fetch the chunks covering `[offset, offset + len)` in the
    /// background (read-ahead); a no-op for readers without a cache.
    pub fn prefetch(&self, offset: u64, len: u64) {
        let Some((first, _)) = self.index.chunk_from_offset(offset) else {
            return;
        };
        let last_byte = (offset + len.max(1) - 1).min(self.index.total_size().saturating_sub(1));
        let last = self
            .index
            .chunk_from_offset(last_byte)
            .map_or(first, |(p, _)| p);
        for position in first..=last {
            if let Some(info) = self.index.chunk_info(position) {
                self.chunks.prefetch(&info.digest, info.end - info.start);
            }
        }
    }

    /// Tells the chunk reader that the chunks ending inside `ends` are done with (a
    /// sequential reader of the data from `from` on has passed them). Chunks that start
    /// before `from` are kept: they may hold the data before it, which nobody has passed.
    pub fn release(&self, from: u64, ends: Range<u64>) {
        let Some((mut position, _)) = self.index.chunk_from_offset(ends.start) else {
            return;
        };
        while let Some(info) = self.index.chunk_info(position) {
            if info.end > ends.end {
                break;
            }
            if info.start >= from {
                self.chunks.release(&info.digest);
            }
            position += 1;
        }
    }

    /// Streams the whole logical content to `out`, one chunk at a time.
    pub fn copy_to(&self, out: &mut dyn Write) -> Result<u64> {
        let mut written = 0;
        for position in 0..self.index.chunk_count() {
            let data = self.chunk(position)?;
            out.write_all(&data)
                .with_context(|| format!("{}: write failed", self.name))?;
            written += data.len() as u64;
        }
        Ok(written)
    }
}

impl ReadAt for IndexReader {
    fn size(&self) -> u64 {
        self.index.total_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let Some((position, within)) = self.index.chunk_from_offset(offset + done as u64)
            else {
                break; // end of stream
            };
            let data = self
                .chunk(position)
                .map_err(|err| match err.downcast::<ChunkError>() {
                    Ok(chunk_err) => io::Error::new(io::ErrorKind::InvalidData, chunk_err),
                    Err(other) => io::Error::new(io::ErrorKind::InvalidData, format!("{other:#}")),
                })?;
            let within = within as usize;
            if within >= data.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: chunk #{position} is shorter than its index says",
                        self.name
                    ),
                ));
            }
            let n = (buf.len() - done).min(data.len() - within);
            buf[done..done + n].copy_from_slice(&data[within..within + n]);
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::index::FixedIndex;
    use crate::format::Digest;

    /// Serves chunks of their digest's first byte and records which ones were released.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<u8>>);

    impl ChunkReader for Recorder {
        fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Arc<Vec<u8>>> {
            Ok(Arc::new(vec![digest[0]; expected_len as usize]))
        }
        fn release(&self, digest: &Digest) {
            self.0.lock().unwrap().push(digest[0]);
        }
    }

    #[test]
    fn release_hints_only_chunks_ending_in_the_range_and_not_starting_before_from() {
        // Four chunks of 1 KiB: [0, 1024) [1024, 2048) [2048, 3072) [3072, 4096).
        let digests = (0..4u8).map(|n| [n; 32]).collect();
        let index = AnyIndex::Fixed(FixedIndex::new(4096, 1024, digests).unwrap());
        let recorder = Arc::new(Recorder::default());
        let reader = IndexReader::new("test.img.fidx", Arc::new(index), recorder.clone());
        let mut buf = [0u8; 8];
        reader.read_at(&mut buf, 2044).unwrap();
        assert_eq!(buf, [1, 1, 1, 1, 2, 2, 2, 2]);

        // Chunk 0 starts before the file (at 1000) and chunk 2 ends after 3000: both kept.
        reader.release(1000, 0..3000);
        assert_eq!(*recorder.0.lock().unwrap(), [1]);
        reader.release(1000, 3000..4096);
        assert_eq!(*recorder.0.lock().unwrap(), [1, 2, 3]);
        reader.release(1000, 5000..6000); // past the end
        assert_eq!(*recorder.0.lock().unwrap(), [1, 2, 3]);
    }

    /// Fails every chunk the way the verifying reader does (its context names the digest).
    struct Broken;

    impl ChunkReader for Broken {
        fn read_chunk(&self, digest: &Digest, _expected_len: u64) -> Result<Arc<Vec<u8>>> {
            Err(anyhow::anyhow!("blob CRC mismatch"))
                .with_context(|| format!("chunk {}", digest_to_hex(digest)))
        }
    }

    #[test]
    fn a_failed_read_carries_which_chunk_failed_and_why() {
        let digests = (0..4u8).map(|n| [n; 32]).collect();
        let index = AnyIndex::Fixed(FixedIndex::new(4096, 1024, digests).unwrap());
        let reader = IndexReader::new("test.img.fidx", Arc::new(index), Arc::new(Broken));
        let err = reader.read_at(&mut [0u8; 8], 2050).unwrap_err();
        let chunk = ChunkError::in_io(&err).expect("a chunk error");
        assert_eq!(
            (chunk.position, chunk.digest, chunk.range.clone()),
            (2, [2; 32], 2048..3072)
        );
        assert_eq!(
            err.to_string(),
            format!(
                "test.img.fidx chunk #2 {} (stream bytes 2048..3072): blob CRC mismatch",
                digest_to_hex(&[2; 32])
            )
        );
    }
}
