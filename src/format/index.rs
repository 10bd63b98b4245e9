//! Index files (spec/index.md): `.didx` maps a stream to variable-size chunks by their
//! cumulative end offsets, `.fidx` to fixed-size chunks. Both have a 4096-byte header and
//! are stored raw (not as blobs).

use std::io::{Seek, SeekFrom, Write};

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::blob::MAX_CHUNK_SIZE;
use super::Digest;

pub const DYNAMIC_INDEX_MAGIC: [u8; 8] = [28, 145, 78, 165, 25, 186, 179, 205];
pub const FIXED_INDEX_MAGIC: [u8; 8] = [47, 127, 65, 237, 145, 253, 15, 205];

/// Both index kinds have a header of exactly one 4 KiB page.
pub const INDEX_HEADER_SIZE: usize = 4096;
const DYNAMIC_ENTRY_SIZE: usize = 40;
const FIXED_ENTRY_SIZE: usize = 32;

// Header field offsets shared by both kinds.
const UUID_RANGE: std::ops::Range<usize> = 8..24;
const CTIME_RANGE: std::ops::Range<usize> = 24..32;
const CSUM_RANGE: std::ops::Range<usize> = 32..64;
const FIXED_SIZE_RANGE: std::ops::Range<usize> = 64..72;
const FIXED_CHUNK_SIZE_RANGE: std::ops::Range<usize> = 72..80;

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("index file too short: {len} bytes, the header alone is 4096")]
    TooShort { len: usize },
    #[error("not an index file: unknown magic {}", hex::encode(.0))]
    BadMagic([u8; 8]),
    #[error("{kind} index: entry region of {len} bytes is not a multiple of {entry_size}")]
    RaggedEntries {
        kind: &'static str,
        len: usize,
        entry_size: usize,
    },
    #[error("dynamic index entry {index}: end {end} does not follow {previous}")]
    EndsNotIncreasing {
        index: usize,
        end: u64,
        previous: u64,
    },
    #[error("index chunk {index} is {len} bytes, more than a chunk can be")]
    ChunkTooLarge { index: usize, len: u64 },
    #[error("fixed index chunk size {0} is not a power of two up to 16 MiB")]
    BadChunkSize(u64),
    #[error("fixed index of size 0 cannot be represented")]
    EmptyFixedIndex,
    #[error("fixed index has {actual} entries, size and chunk size need {expected}")]
    EntryCountMismatch { expected: u64, actual: u64 },
    #[error("index I/O error")]
    Io(#[from] std::io::Error),
}

/// Where one chunk lies in the logical stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    pub start: u64,
    /// Exclusive end.
    pub end: u64,
    pub digest: Digest,
}

impl ChunkInfo {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// What a reader needs from either kind of index.
pub trait ChunkIndex: Send + Sync {
    fn chunk_count(&self) -> usize;
    fn chunk_info(&self, i: usize) -> Option<ChunkInfo>;
    /// Size of the logical stream (the manifest's `size`).
    fn total_size(&self) -> u64;
    /// The chunk holding byte `offset` and the offset inside it.
    fn chunk_from_offset(&self, offset: u64) -> Option<(usize, u64)>;
    /// SHA-256 of the entry region (the manifest's `csum`).
    fn compute_csum(&self) -> Digest;
}

/// Header fields that are informational only (nobody checks them on read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeaderInfo {
    pub uuid: [u8; 16],
    pub ctime: i64,
    /// The checksum stored in the header; trust [`ChunkIndex::compute_csum`] instead.
    pub stored_csum: Digest,
}

fn check_header(bytes: &[u8]) -> Result<([u8; 8], IndexHeaderInfo), IndexError> {
    if bytes.len() < INDEX_HEADER_SIZE {
        return Err(IndexError::TooShort { len: bytes.len() });
    }
    let info = IndexHeaderInfo {
        uuid: bytes[UUID_RANGE].try_into().expect("16 bytes"),
        ctime: i64::from_le_bytes(bytes[CTIME_RANGE].try_into().expect("8 bytes")),
        stored_csum: bytes[CSUM_RANGE].try_into().expect("32 bytes"),
    };
    Ok((bytes[..8].try_into().expect("8 bytes"), info))
}

fn read_u64(bytes: &[u8], range: std::ops::Range<usize>) -> u64 {
    u64::from_le_bytes(bytes[range].try_into().expect("8 bytes"))
}

fn write_header(out: &mut [u8], magic: &[u8; 8], uuid: &[u8; 16], ctime: i64, csum: &Digest) {
    out[..8].copy_from_slice(magic);
    out[UUID_RANGE].copy_from_slice(uuid);
    out[CTIME_RANGE].copy_from_slice(&ctime.to_le_bytes());
    out[CSUM_RANGE].copy_from_slice(csum);
}

fn entries_region<'a>(
    bytes: &'a [u8],
    kind: &'static str,
    entry_size: usize,
) -> Result<&'a [u8], IndexError> {
    let region = &bytes[INDEX_HEADER_SIZE..];
    if !region.len().is_multiple_of(entry_size) {
        return Err(IndexError::RaggedEntries {
            kind,
            len: region.len(),
            entry_size,
        });
    }
    Ok(region)
}

// ---------------------------------------------------------------------------------------
// Dynamic index

/// A parsed `.didx`: chunk `i` covers `[ends[i-1], ends[i])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicIndex {
    ends: Vec<u64>,
    digests: Vec<Digest>,
    header: Option<IndexHeaderInfo>,
}

/// Checks that `end` may follow `previous` as entry `index` of a dynamic index.
fn check_next_end(index: usize, previous: u64, end: u64) -> Result<(), IndexError> {
    if end <= previous {
        return Err(IndexError::EndsNotIncreasing {
            index,
            end,
            previous,
        });
    }
    if end - previous > MAX_CHUNK_SIZE as u64 {
        return Err(IndexError::ChunkTooLarge {
            index,
            len: end - previous,
        });
    }
    Ok(())
}

impl DynamicIndex {
    pub fn parse(bytes: &[u8]) -> Result<Self, IndexError> {
        let (magic, header) = check_header(bytes)?;
        if magic != DYNAMIC_INDEX_MAGIC {
            return Err(IndexError::BadMagic(magic));
        }
        let region = entries_region(bytes, "dynamic", DYNAMIC_ENTRY_SIZE)?;
        let entries = region
            .chunks_exact(DYNAMIC_ENTRY_SIZE)
            .map(|e| {
                let end = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
                (end, e[8..].try_into().expect("32 bytes"))
            })
            .collect();
        let mut index = Self::from_entries(entries)?;
        index.header = Some(header);
        Ok(index)
    }

    /// Builds an index from `(exclusive end, digest)` pairs in stream order.
    pub fn from_entries(entries: Vec<(u64, Digest)>) -> Result<Self, IndexError> {
        let mut previous = 0;
        for (index, &(end, _)) in entries.iter().enumerate() {
            check_next_end(index, previous, end)?;
            previous = end;
        }
        let (ends, digests) = entries.into_iter().unzip();
        Ok(Self {
            ends,
            digests,
            header: None,
        })
    }

    /// Header fields of a parsed file (`None` for an index built in memory).
    pub fn header(&self) -> Option<&IndexHeaderInfo> {
        self.header.as_ref()
    }

    pub fn digests(&self) -> &[Digest] {
        &self.digests
    }

    pub fn ends(&self) -> &[u64] {
        &self.ends
    }

    /// The complete file, with the entry checksum in the header.
    pub fn to_bytes(&self, uuid: [u8; 16], ctime: i64) -> Vec<u8> {
        let mut out = vec![0u8; INDEX_HEADER_SIZE];
        out.reserve(self.ends.len() * DYNAMIC_ENTRY_SIZE);
        for (end, digest) in self.ends.iter().zip(&self.digests) {
            out.extend_from_slice(&end.to_le_bytes());
            out.extend_from_slice(digest);
        }
        let csum: Digest = Sha256::digest(&out[INDEX_HEADER_SIZE..]).into();
        write_header(&mut out, &DYNAMIC_INDEX_MAGIC, &uuid, ctime, &csum);
        out
    }
}

impl ChunkIndex for DynamicIndex {
    fn chunk_count(&self) -> usize {
        self.ends.len()
    }

    fn chunk_info(&self, i: usize) -> Option<ChunkInfo> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(ChunkInfo {
            start,
            end,
            digest: self.digests[i],
        })
    }

    fn total_size(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    fn chunk_from_offset(&self, offset: u64) -> Option<(usize, u64)> {
        // First chunk whose exclusive end lies beyond the offset.
        let i = self.ends.partition_point(|&end| end <= offset);
        let info = self.chunk_info(i)?;
        Some((i, offset - info.start))
    }

    fn compute_csum(&self) -> Digest {
        let mut hasher = Sha256::new();
        for (end, digest) in self.ends.iter().zip(&self.digests) {
            hasher.update(end.to_le_bytes());
            hasher.update(digest);
        }
        hasher.finalize().into()
    }
}

/// Writes a `.didx` as chunks arrive, holding nothing but a running checksum.
///
/// The header is written first with a zero checksum and patched at [`finish`], as the
/// official writer does, so memory stays constant however long the archive is. The caller
/// owns naming (write to a temporary name, rename after `finish`).
///
/// [`finish`]: DynamicIndexWriter::finish
pub struct DynamicIndexWriter<W: Write + Seek> {
    out: W,
    hasher: Sha256,
    count: usize,
    last_end: u64,
}

impl<W: Write + Seek> DynamicIndexWriter<W> {
    /// Starts the file at the current position of `out` (normally an empty file).
    pub fn new(mut out: W, uuid: [u8; 16], ctime: i64) -> Result<Self, IndexError> {
        let mut header = vec![0u8; INDEX_HEADER_SIZE];
        write_header(&mut header, &DYNAMIC_INDEX_MAGIC, &uuid, ctime, &[0; 32]);
        out.write_all(&header)?;
        Ok(Self {
            out,
            hasher: Sha256::new(),
            count: 0,
            last_end: 0,
        })
    }

    /// Appends the chunk that ends (exclusively) at `end` of the stream.
    pub fn add_chunk(&mut self, end: u64, digest: &Digest) -> Result<(), IndexError> {
        check_next_end(self.count, self.last_end, end)?;
        let mut entry = [0u8; DYNAMIC_ENTRY_SIZE];
        entry[..8].copy_from_slice(&end.to_le_bytes());
        entry[8..].copy_from_slice(digest);
        self.out.write_all(&entry)?;
        self.hasher.update(entry);
        self.count += 1;
        self.last_end = end;
        Ok(())
    }

    /// Stream size so far.
    pub fn size(&self) -> u64 {
        self.last_end
    }

    pub fn chunk_count(&self) -> usize {
        self.count
    }

    /// Patches the checksum into the header; returns the writer, the checksum and the
    /// stream size (the manifest's `csum` and `size`).
    pub fn finish(mut self) -> Result<(W, Digest, u64), IndexError> {
        let csum: Digest = self.hasher.finalize().into();
        let entries_len = (self.count * DYNAMIC_ENTRY_SIZE) as i64;
        // Relative seeks keep the writer usable at any starting position.
        self.out.seek(SeekFrom::Current(
            -(entries_len + (INDEX_HEADER_SIZE - CSUM_RANGE.start) as i64),
        ))?;
        self.out.write_all(&csum)?;
        self.out.seek(SeekFrom::Current(
            entries_len + (INDEX_HEADER_SIZE - CSUM_RANGE.end) as i64,
        ))?;
        self.out.flush()?;
        Ok((self.out, csum, self.last_end))
    }
}

// ---------------------------------------------------------------------------------------
// Fixed index

/// A parsed `.fidx`: chunk `i` covers `[i*chunk_size, min((i+1)*chunk_size, size))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIndex {
    size: u64,
    chunk_size: u64,
    digests: Vec<Digest>,
    header: Option<IndexHeaderInfo>,
}

impl FixedIndex {
    pub fn parse(bytes: &[u8]) -> Result<Self, IndexError> {
        let (magic, header) = check_header(bytes)?;
        if magic != FIXED_INDEX_MAGIC {
            return Err(IndexError::BadMagic(magic));
        }
        let size = read_u64(bytes, FIXED_SIZE_RANGE);
        let chunk_size = read_u64(bytes, FIXED_CHUNK_SIZE_RANGE);
        let region = entries_region(bytes, "fixed", FIXED_ENTRY_SIZE)?;
        let digests = region
            .chunks_exact(FIXED_ENTRY_SIZE)
            .map(|e| e.try_into().expect("32 bytes"))
            .collect();
        let mut index = Self::new(size, chunk_size, digests)?;
        index.header = Some(header);
        Ok(index)
    }

    /// Builds an index of a `size`-byte image cut into `chunk_size` pieces.
    pub fn new(size: u64, chunk_size: u64, digests: Vec<Digest>) -> Result<Self, IndexError> {
        if !chunk_size.is_power_of_two() || chunk_size > MAX_CHUNK_SIZE as u64 {
            return Err(IndexError::BadChunkSize(chunk_size));
        }
        if size == 0 {
            return Err(IndexError::EmptyFixedIndex);
        }
        let expected = size.div_ceil(chunk_size);
        if digests.len() as u64 != expected {
            return Err(IndexError::EntryCountMismatch {
                expected,
                actual: digests.len() as u64,
            });
        }
        Ok(Self {
            size,
            chunk_size,
            digests,
            header: None,
        })
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn header(&self) -> Option<&IndexHeaderInfo> {
        self.header.as_ref()
    }

    pub fn digests(&self) -> &[Digest] {
        &self.digests
    }

    pub fn to_bytes(&self, uuid: [u8; 16], ctime: i64) -> Vec<u8> {
        let mut out = vec![0u8; INDEX_HEADER_SIZE];
        out.reserve(self.digests.len() * FIXED_ENTRY_SIZE);
        for digest in &self.digests {
            out.extend_from_slice(digest);
        }
        let csum = self.compute_csum();
        write_header(&mut out, &FIXED_INDEX_MAGIC, &uuid, ctime, &csum);
        out[FIXED_SIZE_RANGE].copy_from_slice(&self.size.to_le_bytes());
        out[FIXED_CHUNK_SIZE_RANGE].copy_from_slice(&self.chunk_size.to_le_bytes());
        out
    }
}

impl ChunkIndex for FixedIndex {
    fn chunk_count(&self) -> usize {
        self.digests.len()
    }

    fn chunk_info(&self, i: usize) -> Option<ChunkInfo> {
        let digest = *self.digests.get(i)?;
        // i < ceil(size / chunk_size), so start < size and nothing overflows.
        let start = i as u64 * self.chunk_size;
        let end = (start + self.chunk_size).min(self.size);
        Some(ChunkInfo { start, end, digest })
    }

    fn total_size(&self) -> u64 {
        self.size
    }

    fn chunk_from_offset(&self, offset: u64) -> Option<(usize, u64)> {
        if offset >= self.size {
            return None;
        }
        Some((
            (offset / self.chunk_size) as usize,
            offset % self.chunk_size,
        ))
    }

    fn compute_csum(&self) -> Digest {
        let mut hasher = Sha256::new();
        for digest in &self.digests {
            hasher.update(digest);
        }
        hasher.finalize().into()
    }
}

// ---------------------------------------------------------------------------------------
// Either kind

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyIndex {
    Dynamic(DynamicIndex),
    Fixed(FixedIndex),
}

impl AnyIndex {
    /// Parses a `.didx` or `.fidx`, told apart by the magic.
    pub fn parse(bytes: &[u8]) -> Result<Self, IndexError> {
        let (magic, _) = check_header(bytes)?;
        match magic {
            DYNAMIC_INDEX_MAGIC => DynamicIndex::parse(bytes).map(Self::Dynamic),
            FIXED_INDEX_MAGIC => FixedIndex::parse(bytes).map(Self::Fixed),
            _ => Err(IndexError::BadMagic(magic)),
        }
    }

    fn inner(&self) -> &dyn ChunkIndex {
        match self {
            Self::Dynamic(index) => index,
            Self::Fixed(index) => index,
        }
    }

    pub fn digests(&self) -> &[Digest] {
        match self {
            Self::Dynamic(index) => index.digests(),
            Self::Fixed(index) => index.digests(),
        }
    }

    pub fn header(&self) -> Option<&IndexHeaderInfo> {
        match self {
            Self::Dynamic(index) => index.header(),
            Self::Fixed(index) => index.header(),
        }
    }

    pub fn to_bytes(&self, uuid: [u8; 16], ctime: i64) -> Vec<u8> {
        match self {
            Self::Dynamic(index) => index.to_bytes(uuid, ctime),
            Self::Fixed(index) => index.to_bytes(uuid, ctime),
        }
    }
}

impl ChunkIndex for AnyIndex {
    fn chunk_count(&self) -> usize {
        self.inner().chunk_count()
    }
    fn chunk_info(&self, i: usize) -> Option<ChunkInfo> {
        self.inner().chunk_info(i)
    }
    fn total_size(&self) -> u64 {
        self.inner().total_size()
    }
    fn chunk_from_offset(&self, offset: u64) -> Option<(usize, u64)> {
        self.inner().chunk_from_offset(offset)
    }
    fn compute_csum(&self) -> Digest {
        self.inner().compute_csum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::blob::chunk_digest;
    use std::io::Cursor;

    fn hello_world() -> DynamicIndex {
        DynamicIndex::from_entries(vec![
            (5, chunk_digest(b"hello")),
            (11, chunk_digest(b" world")),
        ])
        .unwrap()
    }

    #[test]
    fn magics_are_derived_from_their_strings() {
        let first8 = |s: &str| Sha256::digest(s.as_bytes())[..8].to_vec();
        assert_eq!(
            DYNAMIC_INDEX_MAGIC.to_vec(),
            first8("Proxmox Backup dynamic sized chunk index v1.0")
        );
        assert_eq!(
            FIXED_INDEX_MAGIC.to_vec(),
            first8("Proxmox Backup fixed sized chunk index v1.0")
        );
    }

    #[test]
    fn worked_example_checksums() {
        // index.md §6.
        let index = hello_world();
        assert_eq!(
            hex::encode(index.compute_csum()),
            "9b2fd908141c00eaabcc62853152a71a5db06f0b722ff557a0a50352eb6c22cd"
        );
        assert_eq!(index.total_size(), 11);
        let bytes = index.to_bytes([7; 16], 1234);
        assert_eq!(bytes.len(), 4176);
        assert_eq!(&bytes[32..64], &index.compute_csum());
        assert!(bytes[64..4096].iter().all(|&b| b == 0));

        let fixed = FixedIndex::new(11, 8, index.digests().to_vec()).unwrap();
        assert_eq!(
            hex::encode(fixed.compute_csum()),
            "c294108ea80a961178f4541da154e17888a24a37efb4a47e1b9901105dbc55fd"
        );
    }

    #[test]
    fn dynamic_round_trip_and_lookup() {
        let index = hello_world();
        let bytes = index.to_bytes([7; 16], -5);
        let parsed = DynamicIndex::parse(&bytes).unwrap();
        let header = *parsed.header().unwrap();
        assert_eq!(header.uuid, [7; 16]);
        assert_eq!(header.ctime, -5);
        assert_eq!(header.stored_csum, index.compute_csum());
        assert_eq!(parsed.digests(), index.digests());
        assert_eq!(parsed.to_bytes([7; 16], -5), bytes);

        assert_eq!(parsed.chunk_from_offset(0), Some((0, 0)));
        assert_eq!(parsed.chunk_from_offset(4), Some((0, 4)));
        assert_eq!(parsed.chunk_from_offset(5), Some((1, 0)));
        assert_eq!(parsed.chunk_from_offset(10), Some((1, 5)));
        assert_eq!(parsed.chunk_from_offset(11), None);
        let info = parsed.chunk_info(1).unwrap();
        assert_eq!((info.start, info.end, info.len()), (5, 11, 6));
        assert_eq!(parsed.chunk_info(2), None);
    }

    #[test]
    fn fixed_round_trip_and_lookup() {
        let digests = vec![[1; 32], [2; 32], [3; 32]];
        let index = FixedIndex::new(9, 4, digests.clone()).unwrap();
        let bytes = index.to_bytes([3; 16], 99);
        assert_eq!(bytes.len(), 4096 + 3 * 32);
        let parsed = AnyIndex::parse(&bytes).unwrap();
        assert!(matches!(parsed, AnyIndex::Fixed(_)));
        assert_eq!(parsed.to_bytes([3; 16], 99), bytes);
        assert_eq!(parsed.total_size(), 9);
        assert_eq!(parsed.chunk_from_offset(8), Some((2, 0)));
        assert_eq!(parsed.chunk_from_offset(7), Some((1, 3)));
        assert_eq!(parsed.chunk_from_offset(9), None);
        let last = parsed.chunk_info(2).unwrap();
        assert_eq!((last.start, last.end, last.digest), (8, 9, [3; 32]));
    }

    #[test]
    fn empty_dynamic_index_is_valid() {
        let index = DynamicIndex::from_entries(vec![]).unwrap();
        let parsed = AnyIndex::parse(&index.to_bytes([0; 16], 0)).unwrap();
        assert_eq!(parsed.total_size(), 0);
        assert_eq!(parsed.chunk_from_offset(0), None);
        assert_eq!(parsed.compute_csum(), <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for bytes in [
            hello_world().to_bytes([1; 16], 1),
            FixedIndex::new(9, 4, vec![[1; 32]; 3])
                .unwrap()
                .to_bytes([1; 16], 1),
        ] {
            for len in 0..bytes.len() {
                // Cutting whole dynamic entries leaves a valid shorter index.
                if len >= INDEX_HEADER_SIZE
                    && (len - INDEX_HEADER_SIZE).is_multiple_of(DYNAMIC_ENTRY_SIZE)
                    && bytes[..8] == DYNAMIC_INDEX_MAGIC
                {
                    assert!(AnyIndex::parse(&bytes[..len]).is_ok());
                    continue;
                }
                assert!(AnyIndex::parse(&bytes[..len]).is_err(), "len {len}");
            }
        }
    }

    #[test]
    fn bad_magic_is_refused() {
        let mut bytes = hello_world().to_bytes([1; 16], 1);
        bytes[3] ^= 0xff;
        assert!(matches!(
            AnyIndex::parse(&bytes),
            Err(IndexError::BadMagic(_))
        ));
        // A dynamic file is not a fixed one.
        let bytes = hello_world().to_bytes([1; 16], 1);
        assert!(matches!(
            FixedIndex::parse(&bytes),
            Err(IndexError::BadMagic(_))
        ));
    }

    #[test]
    fn hostile_dynamic_ends_are_refused() {
        let d = [0u8; 32];
        assert!(matches!(
            DynamicIndex::from_entries(vec![(5, d), (5, d)]),
            Err(IndexError::EndsNotIncreasing { index: 1, .. })
        ));
        assert!(matches!(
            DynamicIndex::from_entries(vec![(0, d)]),
            Err(IndexError::EndsNotIncreasing { index: 0, .. })
        ));
        assert!(matches!(
            DynamicIndex::from_entries(vec![(5, d), (u64::MAX, d)]),
            Err(IndexError::ChunkTooLarge { index: 1, .. })
        ));
        // Same checks when parsing raw bytes with a patched end.
        let mut bytes = hello_world().to_bytes([1; 16], 1);
        bytes[4096 + 40..4096 + 48].copy_from_slice(&3u64.to_le_bytes());
        assert!(matches!(
            DynamicIndex::parse(&bytes),
            Err(IndexError::EndsNotIncreasing { .. })
        ));
    }

    #[test]
    fn hostile_fixed_headers_are_refused() {
        let good = FixedIndex::new(9, 4, vec![[1; 32]; 3])
            .unwrap()
            .to_bytes([1; 16], 1);
        let patched = |range: std::ops::Range<usize>, value: u64| {
            let mut bytes = good.clone();
            bytes[range].copy_from_slice(&value.to_le_bytes());
            FixedIndex::parse(&bytes)
        };
        assert!(matches!(
            patched(FIXED_CHUNK_SIZE_RANGE, 3),
            Err(IndexError::BadChunkSize(3))
        ));
        assert!(matches!(
            patched(FIXED_CHUNK_SIZE_RANGE, 0),
            Err(IndexError::BadChunkSize(0))
        ));
        assert!(matches!(
            patched(FIXED_CHUNK_SIZE_RANGE, 1 << 40),
            Err(IndexError::BadChunkSize(_))
        ));
        assert!(matches!(
            patched(FIXED_SIZE_RANGE, u64::MAX),
            Err(IndexError::EntryCountMismatch { .. })
        ));
        assert!(matches!(
            patched(FIXED_SIZE_RANGE, 0),
            Err(IndexError::EmptyFixedIndex)
        ));
        assert!(matches!(
            patched(FIXED_SIZE_RANGE, 13),
            Err(IndexError::EntryCountMismatch {
                expected: 4,
                actual: 3
            })
        ));
    }

    #[test]
    fn streaming_writer_matches_to_bytes() {
        let index = hello_world();
        let mut writer = DynamicIndexWriter::new(Cursor::new(Vec::new()), [9; 16], 42).unwrap();
        for (end, digest) in index.ends().iter().zip(index.digests()) {
            writer.add_chunk(*end, digest).unwrap();
        }
        assert!(matches!(
            writer.add_chunk(11, &[0; 32]),
            Err(IndexError::EndsNotIncreasing { .. })
        ));
        let (cursor, csum, size) = writer.finish().unwrap();
        assert_eq!(csum, index.compute_csum());
        assert_eq!(size, 11);
        assert_eq!(cursor.position(), 4176);
        assert_eq!(cursor.into_inner(), index.to_bytes([9; 16], 42));
    }
}
