//! Content-defined chunking with the buzhash rolling hash of the official client.
//!
//! Boundaries are bit-for-bit those of `proxmox-backup-client` (spec: chunker.md), so the same
//! data gives the same chunks and digests, and pushes deduplicate against official backups.
//!
//! Speed notes: the hash over a full 64-byte window does not depend on older bytes (rotating a
//! u32 by 64 is the identity, so the outgoing byte cancels exactly). No break test happens
//! before `min`, so the first `min - 65` bytes of every chunk are skipped without being read,
//! and the hash is primed from the 64 bytes before the first tested one. The rolling loop then reads the
//! outgoing byte straight from the input slice; a 64-byte ring is only needed across `scan`
//! calls.

use std::io::{self, Read};

/// Average chunk size of pxar archives (`.pxar`, `.mpxar`, `.ppxar`).
pub const DEFAULT_CHUNK_SIZE: usize = 4 * 1024 * 1024;
/// Average chunk size of `catalog.pcat1`.
pub const CATALOG_CHUNK_SIZE: usize = 512 * 1024;
/// Chunk size of fixed indexes (images); the server only accepts this size.
pub const FIXED_CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// Smallest and largest average sizes [`Chunker::try_new`] accepts (powers of two).
/// The official client allows 64 KiB … 4 MiB; the wider range is for tests.
pub const MIN_AVG_CHUNK_SIZE: usize = 256;
pub const MAX_AVG_CHUNK_SIZE: usize = 1 << 30;

const WINDOW: usize = 64;

/// The chunker's configuration was invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid average chunk size {0}: must be a power of two between \
     {MIN_AVG_CHUNK_SIZE} and {MAX_AVG_CHUNK_SIZE}"
)]
pub struct InvalidChunkSize(pub usize);

/// The streaming buzhash chunker. Feed data with [`Chunker::scan`] in pieces of any size.
#[derive(Clone)]
pub struct Chunker {
    min: usize,
    max: usize,
    mask: u32,
    threshold: u32,
    /// Bytes of the current chunk consumed so far.
    size: usize,
    /// Rolling hash; meaningful once `size >= prime_start`.
    h: u32,
    /// Chunk position where hashing starts: the 64 bytes before the first tested byte.
    prime_start: usize,
    /// Last bytes of the current chunk, byte at chunk position `p` stored at `p % 64`.
    ring: [u8; WINDOW],
}

impl Chunker {
    /// A chunker for the given average size (a power of two, see [`Chunker::try_new`]).
    ///
    /// # Panics
    /// If `chunk_size_avg` is not accepted by [`Chunker::try_new`]; sizes from users should go
    /// through `try_new`.
    pub fn new(chunk_size_avg: usize) -> Self {
        Self::try_new(chunk_size_avg).expect("invalid chunk size")
    }

    /// A chunker with `min = avg/4`, `max = avg*4` and break mask `2*avg - 1`.
    pub fn try_new(chunk_size_avg: usize) -> Result<Self, InvalidChunkSize> {
        let avg = chunk_size_avg;
        if !avg.is_power_of_two() || !(MIN_AVG_CHUNK_SIZE..=MAX_AVG_CHUNK_SIZE).contains(&avg) {
            return Err(InvalidChunkSize(avg));
        }
        let mask = (2 * avg - 1) as u32;
        let min = avg >> 2;
        Ok(Self {
            min,
            max: avg << 2,
            mask,
            threshold: mask - 2,
            size: 0,
            h: 0,
            // The first tested byte is the one that makes the chunk `min` long (and the
            // official chunker tests only after a full window): roll from the byte before.
            prime_start: min.max(WINDOW + 1) - 1 - WINDOW,
            ring: [0; WINDOW],
        })
    }

    /// Smallest chunk the chunker cuts (except the last chunk of a stream).
    pub fn min_size(&self) -> usize {
        self.min
    }

    /// Largest chunk the chunker produces.
    pub fn max_size(&self) -> usize {
        self.max
    }

    /// Forgets the current chunk, as after a boundary.
    pub fn reset(&mut self) {
        self.size = 0;
        self.h = 0;
    }

    /// Bytes of the current (not yet cut) chunk that were already scanned.
    pub fn pending(&self) -> usize {
        self.size
    }

    /// A suggested boundary (chunker.md §5) at the current stream position, e.g. where the
    /// next file's payload starts in a v2 payload stream. Returns true, and starts a new
    /// chunk, if the chunk so far is between min and max size: the caller then ends the
    /// chunk here. Unlike the official client, whose result depends on how much data it had
    /// buffered, this is deterministic: a hash boundary found before the suggestion wins.
    pub fn suggest_boundary(&mut self) -> bool {
        let accept = (self.min..=self.max).contains(&self.size);
        if accept {
            self.reset();
        }
        accept
    }

    /// Consumes `data`, the continuation of the stream. Returns 0 if no boundary lies in
    /// `data` (all of it belongs to the current chunk), or `n > 0`: the current chunk ends
    /// after `data[n - 1]`. After a boundary the chunker has started a new chunk and the
    /// caller passes `&data[n..]` next.
    pub fn scan(&mut self, data: &[u8]) -> usize {
        let start_size = self.size;
        let mut pos = 0;

        // Before `prime_start` the bytes cannot influence any break test.
        if self.size < self.prime_start {
            let skip = (self.prime_start - self.size).min(data.len());
            self.size += skip;
            pos = skip;
            if self.size == self.prime_start {
                self.h = 0;
            }
        }

        // Prime the hash with the window before the first tested byte.
        let roll_start = self.prime_start + WINDOW;
        if self.size < roll_start && pos < data.len() {
            let fill = (roll_start - self.size).min(data.len() - pos);
            let mut h = self.h;
            for &b in &data[pos..pos + fill] {
                h = h.rotate_left(1) ^ TABLE[b as usize];
            }
            self.h = h;
            self.size += fill;
            pos += fill;
        }

        if self.size >= roll_start && pos < data.len() {
            if let Some(cut) = self.roll(data, pos, start_size) {
                self.reset();
                return cut;
            }
        }

        self.remember_tail(data, start_size);
        0
    }

    /// Consumes `len` zero bytes, exactly like [`Chunker::scan`] of that many zeros, but in
    /// constant time once the window holds only zeros: the hash over a window of zeros is 0
    /// (each of the 32 rotations of `T[0]` appears twice and cancels), `0 & mask` never
    /// reaches the threshold, and rolling in more zeros keeps it 0. So inside a run of zeros
    /// only `max` can cut. Used for sparse files and zero-filled regions.
    pub fn scan_zeros(&mut self, len: usize) -> usize {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let roll_start = self.prime_start + WINDOW;
        let mut done = 0;
        while done < len {
            let left = len - done;
            if self.size >= roll_start && self.ring == [0; WINDOW] {
                debug_assert_eq!(self.h, 0, "the hash over a window of zeros is 0");
                let room = self.max - self.size;
                if left >= room {
                    self.reset();
                    return done + room;
                }
                self.size += left;
                return 0;
            }
            // Until the window is full of zeros: byte by byte (at most a few windows once
            // hashing has started; before that `scan` skips bytes without looking).
            let step = if self.size >= self.prime_start {
                left.min(WINDOW)
            } else {
                left.min(ZEROS.len())
            };
            let cut = self.scan(&ZEROS[..step]);
            if cut > 0 {
                return done + cut;
            }
            done += step;
        }
        0
    }

    /// The rolling phase over `data[pos..]`; returns the boundary position if one is found.
    fn roll(&mut self, data: &[u8], mut pos: usize, start_size: usize) -> Option<usize> {
        let (mask, threshold) = (self.mask, self.threshold);
        let mut h = self.h;
        // Never look past the byte at which `max` forces a cut.
        let end = data.len().min(pos + (self.max - self.size));
        let first = pos;

        // The outgoing byte is 64 positions back; for the first 64 bytes of this call it
        // lies in an earlier call's data, kept in the ring.
        let ring_end = end.min(WINDOW);
        while pos < ring_end {
            let out = self.ring[(start_size + pos) % WINDOW];
            h = h.rotate_left(1) ^ TABLE[out as usize] ^ TABLE[data[pos] as usize];
            pos += 1;
            if (h & mask) >= threshold {
                return self.cut(h, first, pos);
            }
        }

        if pos < end {
            let incoming = &data[pos..end];
            let outgoing = &data[pos - WINDOW..end - WINDOW];
            for (i, (&b_in, &b_out)) in incoming.iter().zip(outgoing).enumerate() {
                h = h.rotate_left(1) ^ TABLE[b_out as usize] ^ TABLE[b_in as usize];
                if (h & mask) >= threshold {
                    return self.cut(h, first, pos + i + 1);
                }
            }
            pos = end;
        }

        self.h = h;
        self.size += pos - first;
        (self.size >= self.max).then_some(pos)
    }

    fn cut(&mut self, h: u32, first: usize, cut: usize) -> Option<usize> {
        self.h = h;
        self.size += cut - first;
        Some(cut)
    }

    /// Keeps the last (up to) 64 bytes of `data` for the next call's outgoing bytes.
    fn remember_tail(&mut self, data: &[u8], start_size: usize) {
        let tail = data.len().saturating_sub(WINDOW);
        for (i, &b) in data[tail..].iter().enumerate() {
            self.ring[(start_size + tail + i) % WINDOW] = b;
        }
    }
}

/// Splits a byte stream from a reader into chunks of the buzhash chunker.
///
/// Holds at most one chunk (≤ max size) plus one read buffer; an empty stream yields nothing.
pub struct ChunkStream<R: Read> {
    reader: R,
    chunker: Chunker,
    /// Bytes read but not yet emitted; `buf[..scanned]` were fed to the chunker.
    buf: Vec<u8>,
    scanned: usize,
    read_size: usize,
    done: bool,
}

/// How much [`ChunkStream`] asks the reader for at once.
pub const STREAM_READ_SIZE: usize = 1024 * 1024;

impl<R: Read> ChunkStream<R> {
    /// A stream with the given average chunk size (see [`Chunker::new`]).
    pub fn new(reader: R, chunk_size_avg: usize) -> Self {
        Self::with_chunker(reader, Chunker::new(chunk_size_avg))
    }

    pub fn with_chunker(reader: R, chunker: Chunker) -> Self {
        Self {
            reader,
            chunker,
            buf: Vec::new(),
            scanned: 0,
            read_size: STREAM_READ_SIZE,
            done: false,
        }
    }

    /// Changes how many bytes are requested per read (at least 1).
    pub fn with_read_size(mut self, read_size: usize) -> Self {
        self.read_size = read_size.max(1);
        self
    }

    /// Gives back the reader.
    pub fn into_inner(self) -> R {
        self.reader
    }

    /// Appends up to one read buffer; returns how many bytes arrived (0 at end of stream).
    fn fill(&mut self) -> io::Result<usize> {
        let old_len = self.buf.len();
        self.buf.resize(old_len + self.read_size, 0);
        let result = loop {
            match self.reader.read(&mut self.buf[old_len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(old_len + n);
        result
    }

    /// Splits off the first `len` bytes; the rest starts the next chunk.
    fn take_chunk(&mut self, len: usize) -> Vec<u8> {
        let tail = &self.buf[len..];
        // Room for a typical chunk, so the next one rarely reallocates.
        let mut rest = Vec::with_capacity(tail.len().max(self.chunker.min_size() + self.read_size));
        rest.extend_from_slice(tail);
        self.scanned = 0;
        let mut chunk = std::mem::replace(&mut self.buf, rest);
        chunk.truncate(len);
        chunk
    }
}

impl<R: Read> Iterator for ChunkStream<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if self.scanned < self.buf.len() {
                let cut = self.chunker.scan(&self.buf[self.scanned..]);
                if cut > 0 {
                    return Some(Ok(self.take_chunk(self.scanned + cut)));
                }
                self.scanned = self.buf.len();
            }
            match self.fill() {
                Ok(0) => {
                    self.done = true;
                    if self.buf.is_empty() {
                        return None;
                    }
                    let len = self.buf.len();
                    return Some(Ok(self.take_chunk(len)));
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The official buzhash table (chunker.md §7), indexed by byte value.
#[rustfmt::skip]
const TABLE: [u32; 256] = [
    0x458be752, 0xc10748cc, 0xfbbcdbb8, 0x6ded5b68, 0xb10a82b5, 0x20d75648, 0xdfc5665f, 0xa8428801,
    0x7ebf5191, 0x841135c7, 0x65cc53b3, 0x280a597c, 0x16f60255, 0xc78cbc3e, 0x294415f5, 0xb938d494,
    0xec85c4e6, 0xb7d33edc, 0xe549b544, 0xfdeda5aa, 0x882bf287, 0x3116737c, 0x05569956, 0xe8cc1f68,
    0x0806ac5e, 0x22a14443, 0x15297e10, 0x50d090e7, 0x4ba60f6f, 0xefd9f1a7, 0x5c5c885c, 0x82482f93,
    0x9bfd7c64, 0x0b3e7276, 0xf2688e77, 0x8fad8abc, 0xb0509568, 0xf1ada29f, 0xa53efdfe, 0xcb2b1d00,
    0xf2a9e986, 0x6463432b, 0x95094051, 0x5a223ad2, 0x9be8401b, 0x61e579cb, 0x1a556a14, 0x5840fdc2,
    0x9261ddf6, 0xcde002bb, 0x52432bb0, 0xbf17373e, 0x7b7c222f, 0x2955ed16, 0x9f10ca59, 0xe840c4c9,
    0xccabd806, 0x14543f34, 0x1462417a, 0x0d4a1f9c, 0x087ed925, 0xd7f8f24c, 0x7338c425, 0xcf86c8f5,
    0xb19165cd, 0x9891c393, 0x325384ac, 0x0308459d, 0x86141d7e, 0xc922116a, 0xe2ffa6b6, 0x53f52aed,
    0x2cd86197, 0xf5b9f498, 0xbf319c8f, 0xe0411fae, 0x977eb18c, 0xd8770976, 0x9833466a, 0xc674df7f,
    0x8c297d45, 0x8ca48d26, 0xc49ed8e2, 0x7344f874, 0x556f79c7, 0x6b25eaed, 0xa03e2b42, 0xf68f66a4,
    0x8e8b09a2, 0xf2e0e62a, 0x0d3a9806, 0x9729e493, 0x8c72b0fc, 0x160b94f6, 0x450e4d3d, 0x7a320e85,
    0xbef8f0e1, 0x21d73653, 0x4e3d977a, 0x1e7b3929, 0x1cc6c719, 0xbe478d53, 0x8d752809, 0xe6d8c2c6,
    0x275f0892, 0xc8acc273, 0x4cc21580, 0xecc4a617, 0xf5f7be70, 0xe795248a, 0x375a2fe9, 0x425570b6,
    0x8898dcf8, 0xdc2d97c4, 0x0106114b, 0x364dc22f, 0x1e0cad1f, 0xbe63803c, 0x5f69fac2, 0x4d5afa6f,
    0x1bc0dfb5, 0xfb273589, 0x0ea47f7b, 0x3c1c2b50, 0x21b2a932, 0x6b1223fd, 0x2fe706a8, 0xf9bd6ce2,
    0xa268e64e, 0xe987f486, 0x3eacf563, 0x1ca2018c, 0x65e18228, 0x2207360a, 0x57cf1715, 0x34c37d2b,
    0x1f8f3cde, 0x93b657cf, 0x31a019fd, 0xe69eb729, 0x8bca7b9b, 0x4c9d5bed, 0x277ebeaf, 0xe0d8f8ae,
    0xd150821c, 0x31381871, 0xafc3f1b0, 0x927db328, 0xe95effac, 0x305a47bd, 0x426ba35b, 0x1233af3f,
    0x686a5b83, 0x50e072e5, 0xd9d3bb2a, 0x8befc475, 0x487f0de6, 0xc88dff89, 0xbd664d5e, 0x971b5d18,
    0x63b14847, 0xd7d3c1ce, 0x7f583cf3, 0x72cbcb09, 0xc0d0a81c, 0x7fa3429b, 0xe9158a1b, 0x225ea19a,
    0xd8ca9ea3, 0xc763b282, 0xbb0c6341, 0x020b8293, 0xd4cd299d, 0x58cfa7f8, 0x91b4ee53, 0x37e4d140,
    0x95ec764c, 0x30f76b06, 0x5ee68d24, 0x679c8661, 0xa41979c2, 0xf2b61284, 0x4fac1475, 0x0adb49f9,
    0x19727a23, 0x15a7e374, 0xc43a18d5, 0x3fb1aa73, 0x342fc615, 0x924c0793, 0xbee2d7f0, 0x8a279de9,
    0x4aa2d70c, 0xe24dd37f, 0xbe862c0b, 0x177c22c2, 0x5388e5ee, 0xcd8a7510, 0xf901b4fd, 0xdbc13dbc,
    0x6c0bae5b, 0x64efe8c7, 0x48b02079, 0x80331a49, 0xca3d8ae6, 0xf3546190, 0xfed7108b, 0xc49b941b,
    0x32baf4a9, 0xeb833a4a, 0x88a3f1a5, 0x3a91ce0a, 0x3cc27da1, 0x7112e684, 0x4a3096b1, 0x3794574c,
    0xa3c8b6f3, 0x1d213941, 0x6e0a2e00, 0x233479f1, 0x0f4cd82f, 0x6093edd2, 0x5d7d209e, 0x464fe319,
    0xd4dcac9e, 0x0db845cb, 0xfb5e4bc3, 0xe0256ce1, 0x09fb4ed1, 0x0914be1e, 0xa5bdb2c3, 0xc6eb57bb,
    0x30320350, 0x3f397e91, 0xa67791bc, 0x86bc0e2c, 0xefa0a7e2, 0xe9ff7543, 0xe733612c, 0xd185897b,
    0x329e5388, 0x91dd236b, 0x2ecb0d93, 0xf4d82a3d, 0x35b5c03f, 0xe4e606f0, 0x05b21843, 0x37b45964,
    0x5eff22f4, 0x6027f4cc, 0x77178b3c, 0xae507131, 0x7bf7cabc, 0xf9c18d66, 0x593ade65, 0xd95ddf11,
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The spec's pseudocode (chunker.md §2), written as plainly as possible: end offsets
    /// of every chunk, including the final one.
    fn reference_ends(data: &[u8], avg: usize) -> Vec<usize> {
        let (min, max, mask) = (avg / 4, avg * 4, (2 * avg - 1) as u32);
        let mut ends = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let mut h = 0u32;
            let mut n = 0;
            while n < 64 && start + n < data.len() {
                h = h.rotate_left(1) ^ TABLE[data[start + n] as usize];
                n += 1;
            }
            let mut cut = None;
            while start + n < data.len() {
                h = h.rotate_left(1)
                    ^ TABLE[data[start + n - 64] as usize]
                    ^ TABLE[data[start + n] as usize];
                n += 1;
                if n >= max || (n >= min && (h & mask) >= mask - 2) {
                    cut = Some(start + n);
                    break;
                }
            }
            let end = cut.unwrap_or(data.len());
            ends.push(end);
            start = end;
        }
        ends
    }

    /// End offsets of all chunks when `data` is fed in pieces of the given sizes (cycled).
    fn chunk_ends(data: &[u8], avg: usize, pieces: &[usize]) -> Vec<usize> {
        feed_in_pieces(data, avg, pieces, false)
    }

    /// Feeds `data` in pieces; with `zero_runs` each piece is split further into runs of
    /// zeros, which go through `scan_zeros`, and other bytes. End offsets of all chunks.
    fn feed_in_pieces(data: &[u8], avg: usize, pieces: &[usize], zero_runs: bool) -> Vec<usize> {
        let mut chunker = Chunker::new(avg);
        let mut ends = Vec::new();
        let (mut offset, mut piece) = (0, 0);
        while offset < data.len() {
            let len = pieces[piece % pieces.len()].clamp(1, data.len() - offset);
            piece += 1;
            let piece_end = offset + len;
            while offset < piece_end {
                let zeros = zero_runs && data[offset] == 0;
                let run = match zero_runs {
                    true => data[offset..piece_end]
                        .iter()
                        .position(|&b| (b == 0) != zeros)
                        .unwrap_or(piece_end - offset),
                    false => piece_end - offset,
                };
                let (mut base, mut left) = (offset, run);
                loop {
                    let cut = if zeros {
                        chunker.scan_zeros(left)
                    } else {
                        chunker.scan(&data[base..base + left])
                    };
                    if cut == 0 {
                        break;
                    }
                    ends.push(base + cut);
                    base += cut;
                    left -= cut;
                }
                offset += run;
            }
        }
        if ends.last() != Some(&data.len()) && !data.is_empty() {
            ends.push(data.len());
        }
        ends
    }

    fn lcg_bytes(len: usize) -> Vec<u8> {
        let mut x: u32 = 1;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect()
    }

    fn le32_counter(len: usize) -> Vec<u8> {
        (0..len / 4)
            .flat_map(|i| (i as u32).to_le_bytes())
            .collect()
    }

    fn with_final(mut cuts: Vec<usize>, len: usize) -> Vec<usize> {
        cuts.push(len);
        cuts
    }

    #[test]
    fn table_sanity_values() {
        assert_eq!(TABLE[0], 0x458be752);
        assert_eq!(TABLE[128], 0xa268e64e);
        assert_eq!(TABLE[255], 0xd95ddf11);
    }

    #[test]
    fn vector_a_counter_64k() {
        let data = le32_counter(1 << 20);
        let want = with_final(vec![143377, 405521, 667665, 929809], data.len());
        assert_eq!(chunk_ends(&data, 64 * 1024, &[usize::MAX]), want);
    }

    #[test]
    fn vector_b_lcg_64k() {
        let data = lcg_bytes(2 << 20);
        let cuts = vec![
            16517, 94597, 169274, 231833, 257216, 286678, 398882, 419296, 633014, 733990, 770653,
            852169, 931129, 979485, 1006664, 1034684, 1092842, 1148849, 1280690, 1298045, 1389361,
            1422364, 1452191, 1500084, 1519389, 1614418, 1661971, 1683913, 1718162, 1744536,
            1816320, 1837384, 2064273,
        ];
        let want = with_final(cuts, data.len());
        assert_eq!(chunk_ends(&data, 64 * 1024, &[usize::MAX]), want);
        assert_eq!(
            chunk_ends(&data, 64 * 1024, &[1, 63, 64, 65, 4096, 100_000]),
            want
        );
    }

    #[test]
    fn vector_c_lcg_default_size() {
        let data = lcg_bytes(16 << 20);
        let want = with_final(vec![3899013, 5125675, 10554017], data.len());
        assert_eq!(chunk_ends(&data, DEFAULT_CHUNK_SIZE, &[usize::MAX]), want);
        assert_eq!(
            chunk_ends(&data, DEFAULT_CHUNK_SIZE, &[65536, 7, 1 << 20]),
            want
        );
    }

    #[test]
    fn vector_d_zeros_cut_at_max() {
        let data = vec![0u8; 20 << 20];
        let want = vec![16 << 20, 20 << 20];
        assert_eq!(chunk_ends(&data, DEFAULT_CHUNK_SIZE, &[usize::MAX]), want);
    }

    /// A cut exactly at `min` (found by the property test below): the byte that makes the
    /// chunk `min` long is tested.
    #[test]
    fn boundary_exactly_at_min_size() {
        let mut x: u32 = 332576554;
        let data: Vec<u8> = (0..263797)
            .map(|_| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let ends = reference_ends(&data, 4096);
        assert!(
            ends.windows(2).any(|w| w[1] - w[0] == 1024),
            "data lost its point"
        );
        assert_eq!(chunk_ends(&data, 4096, &[usize::MAX]), ends);
        assert_eq!(chunk_ends(&data, 4096, &[1]), ends);
    }

    #[test]
    fn empty_input_has_no_boundary() {
        let mut chunker = Chunker::new(CATALOG_CHUNK_SIZE);
        assert_eq!(chunker.scan(&[]), 0);
        assert_eq!(chunker.pending(), 0);
    }

    #[test]
    fn invalid_sizes_are_rejected() {
        for avg in [0, 3, 100, 128, 3 << 20, 1 << 31] {
            assert_eq!(Chunker::try_new(avg).err(), Some(InvalidChunkSize(avg)));
        }
        let chunker = Chunker::try_new(CATALOG_CHUNK_SIZE).unwrap();
        assert_eq!(
            (chunker.min_size(), chunker.max_size()),
            (128 << 10, 2 << 20)
        );
    }

    #[test]
    fn reset_forgets_the_current_chunk() {
        let data = lcg_bytes(1 << 20);
        let mut chunker = Chunker::new(64 * 1024);
        assert_eq!(chunker.scan(&data[..5000]), 0);
        chunker.reset();
        let mut fresh = Chunker::new(64 * 1024);
        assert_eq!(chunker.scan(&data[5000..]), fresh.scan(&data[5000..]));
    }

    #[test]
    fn suggested_boundaries_cut_only_between_min_and_max() {
        let data = lcg_bytes(1 << 20);
        let mut chunker = Chunker::new(64 * 1024);
        // Too early: 1000 bytes < min (16 KiB); the chunk goes on.
        assert_eq!(chunker.scan(&data[..1000]), 0);
        assert!(!chunker.suggest_boundary());
        assert_eq!(chunker.pending(), 1000);
        // 16400 bytes (min is 16384; vector B cuts at 16517): accepted, a fresh chunk starts.
        assert_eq!(chunker.scan(&data[1000..16400]), 0);
        assert!(chunker.suggest_boundary());
        assert_eq!(chunker.pending(), 0);
        let mut fresh = Chunker::new(64 * 1024);
        assert_eq!(chunker.scan(&data[16400..]), fresh.scan(&data[16400..]));
    }

    #[test]
    fn stream_yields_same_chunks_as_scan() {
        let data = lcg_bytes(3 << 20);
        let ends = reference_ends(&data, 64 * 1024);
        for read_size in [1000, 65536, 1 << 20] {
            let stream = ChunkStream::new(&data[..], 64 * 1024).with_read_size(read_size);
            let chunks: Vec<Vec<u8>> = stream.collect::<io::Result<_>>().unwrap();
            let mut start = 0;
            assert_eq!(chunks.len(), ends.len());
            for (chunk, &end) in chunks.iter().zip(&ends) {
                assert_eq!(chunk.as_slice(), &data[start..end]);
                start = end;
            }
        }
    }

    #[test]
    fn stream_of_nothing_is_empty_and_errors_pass_through() {
        assert_eq!(ChunkStream::new(io::empty(), 64 * 1024).count(), 0);

        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        let mut stream = ChunkStream::new(Failing, 64 * 1024);
        assert!(stream.next().unwrap().is_err());
        assert!(stream.next().is_none());
    }

    /// End offsets of all chunks when `data` is fed in pieces as in `chunk_ends`, each piece
    /// split further into runs of zeros, which go through `scan_zeros`, and other bytes.
    fn chunk_ends_with_zero_runs(data: &[u8], avg: usize, pieces: &[usize]) -> Vec<usize> {
        feed_in_pieces(data, avg, pieces, true)
    }

    #[test]
    fn zero_runs_cut_like_the_byte_by_byte_scan() {
        // Vector D through the shortcut, in one piece and in odd pieces.
        let data = vec![0u8; 20 << 20];
        let want = vec![16 << 20, 20 << 20];
        assert_eq!(
            chunk_ends_with_zero_runs(&data, DEFAULT_CHUNK_SIZE, &[usize::MAX]),
            want
        );
        assert_eq!(
            chunk_ends_with_zero_runs(&data, DEFAULT_CHUNK_SIZE, &[1, 63, 64, 65, 3 << 20]),
            want
        );
        // Islands of data in zeros, with zero runs shorter and longer than a window.
        let mut data = vec![0u8; 9 << 20];
        let noise = lcg_bytes(300_000);
        data[1000..1100].copy_from_slice(&noise[..100]);
        data[(5 << 20)..(5 << 20) + 300_000].copy_from_slice(&noise);
        data[(8 << 20) + 30..(8 << 20) + 40].copy_from_slice(&noise[..10]);
        let avg = 256 * 1024;
        let want = reference_ends(&data, avg);
        for pieces in [&[4096][..], &[10, 54, 64, 65, 100_000], &[usize::MAX]] {
            assert_eq!(chunk_ends_with_zero_runs(&data, avg, pieces), want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any split of the input gives the reference boundaries.
        #[test]
        fn pieces_do_not_change_boundaries(
            seed in any::<u32>(),
            len in 0usize..600_000,
            pieces in proptest::collection::vec(1usize..70_000, 1..16),
            text_like in any::<bool>(),
            avg_log2 in 8u32..=12,
        ) {
            let mut x = seed;
            let data: Vec<u8> = (0..len).map(|i| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                // Low-entropy data exercises long runs and max cuts as well.
                if text_like { b"abc \n"[(x >> 29) as usize % 5] ^ (i as u8 & 1) } else { (x >> 16) as u8 }
            }).collect();
            let avg = 1usize << avg_log2;
            prop_assert_eq!(chunk_ends(&data, avg, &pieces), reference_ends(&data, avg));
        }

        /// Zero runs of any length between data, in any split, give the reference
        /// boundaries when the zero pieces take the shortcut.
        #[test]
        fn zero_shortcut_keeps_boundaries(
            seed in any::<u32>(),
            runs in proptest::collection::vec((0usize..5_000, 0usize..40_000), 1..20),
            pieces in proptest::collection::vec(1usize..70_000, 1..16),
            avg_log2 in 8u32..=12,
        ) {
            let mut x = seed;
            let mut data = Vec::new();
            for (data_len, zero_len) in runs {
                data.extend((0..data_len).map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    (x >> 16) as u8
                }));
                data.resize(data.len() + zero_len, 0);
            }
            let avg = 1usize << avg_log2;
            prop_assert_eq!(
                chunk_ends_with_zero_runs(&data, avg, &pieces),
                reference_ends(&data, avg)
            );
        }
    }
}
