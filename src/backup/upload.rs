//! From a byte stream to an index of stored chunks: [`ChunkedWriter`] cuts what is written
//! to it (buzhash or fixed size), hands each chunk to the [`UploadPool`]'s worker threads for
//! hashing, compression and upload, and appends the results to the index in stream order.
//!
//! Memory is bounded: one chunk being cut per stream plus a bounded number of chunks in
//! flight (see [`UploadPool::new`]).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};

use crate::format::blob::{chunk_digest_with, encode_blob_into, encode_blob_with};
use crate::format::chunker::Chunker;
use crate::format::crypto::CryptConfig;
use crate::format::Digest;
use crate::store::target::{BackupSession, IndexSummary, IndexWriter};
use crate::store::worker_pool::WorkerPool;

/// How chunks are turned into stored blobs: with a key the digest is the keyed one and
/// the blob is encrypted (crypto.md). Made from the run's
/// [`Protection`](super::protection::Protection).
#[derive(Clone)]
pub struct ChunkEncoding {
    pub compress: bool,
    pub crypt: Option<Arc<CryptConfig>>,
}

impl Default for ChunkEncoding {
    fn default() -> Self {
        ChunkEncoding {
            compress: true,
            crypt: None,
        }
    }
}

impl ChunkEncoding {
    pub fn digest(&self, data: &[u8]) -> Digest {
        chunk_digest_with(data, self.crypt.as_deref())
    }

    pub fn encode(&self, data: &[u8]) -> Result<Vec<u8>> {
        Ok(encode_blob_with(
            data,
            self.compress,
            self.crypt.as_deref(),
        )?)
    }

    /// Encodes into `out` (kept by the caller across chunks); returns the blob's length.
    pub fn encode_into(&self, data: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        if self.crypt.is_some() {
            let blob = self.encode(data)?;
            out.clear();
            out.extend_from_slice(&blob);
            return Ok(blob.len());
        }
        Ok(encode_blob_into(data, self.compress, out)?)
    }
}

/// Totals over all chunks of a backup.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
    pub new_chunks: AtomicU64,
    pub new_bytes: AtomicU64,
    /// Stored (compressed) size of the new chunks.
    pub new_stored_bytes: AtomicU64,
    /// Chunks of a previous snapshot referenced without their data passing through.
    pub injected_chunks: AtomicU64,
    pub injected_bytes: AtomicU64,
}

/// What a worker made of one chunk.
#[derive(Clone, Copy, Debug)]
struct ChunkDone {
    digest: Digest,
    size: u64,
}

struct Job {
    data: Vec<u8>,
    reply: SyncSender<Result<ChunkDone>>,
}

/// Digest and stored blob of an all-zero chunk.
type ZeroChunk = (Digest, Vec<u8>);

/// Worker threads that hash, compress and upload chunks.
pub struct UploadPool {
    workers: WorkerPool<Job>,
    /// Chunks one stream may have in flight before it waits for the oldest.
    in_flight: usize,
    stats: Arc<UploadStats>,
    abort: Arc<AtomicBool>,
    session: Arc<dyn BackupSession>,
    encoding: ChunkEncoding,
    /// Digest and blob of the all-zero chunk of each size met so far: holes of sparse files
    /// and zero-filled regions are cut into many equal chunks, hashed and compressed once.
    zero_chunks: Mutex<HashMap<usize, Arc<ZeroChunk>>>,
}

impl UploadPool {
    /// `workers` threads (0: one per core). At most about `2 * workers + 2` chunks per stream
    /// are in flight, i.e. `(2 * workers + 2) * 4 MiB` on average, and never more than 64 MiB
    /// of queued data on top of the chunks being worked on.
    pub fn new(
        session: Arc<dyn BackupSession>,
        encoding: ChunkEncoding,
        workers: usize,
        abort: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            workers
        };
        // Cap the queue so peak memory does not grow with the core count.
        let workers = workers.clamp(1, 16);
        let stats = Arc::new(UploadStats::default());
        let in_flight = (workers + 2).min(8);
        let pool = WorkerPool::new("pbsfs-chunk", workers, workers, |_| {
            worker(session.clone(), encoding.clone(), stats.clone())
        })?;
        Ok(UploadPool {
            workers: pool,
            in_flight,
            stats,
            abort,
            session,
            encoding,
            zero_chunks: Mutex::default(),
        })
    }

    pub fn stats(&self) -> &Arc<UploadStats> {
        &self.stats
    }

    /// Stores an all-zero chunk of `size` bytes, computing its digest and blob only the
    /// first time that size occurs.
    fn store_zero_chunk(&self, size: usize) -> Result<KnownChunk> {
        let zero_chunk = {
            let mut cache = self.zero_chunks.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&size) {
                Some(chunk) => chunk.clone(),
                None => {
                    let zeros = vec![0u8; size];
                    let chunk =
                        Arc::new((self.encoding.digest(&zeros), self.encoding.encode(&zeros)?));
                    cache.insert(size, chunk.clone());
                    chunk
                }
            }
        };
        let (digest, blob) = &*zero_chunk;
        store_chunk(&*self.session, &self.stats, digest, size as u64, || {
            Ok(blob.as_slice())
        })?;
        Ok(KnownChunk {
            size: size as u64,
            digest: *digest,
        })
    }

    fn submit(&self, data: Vec<u8>) -> Result<Receiver<Result<ChunkDone>>> {
        let (reply, result) = sync_channel(1);
        self.workers
            .submit(Job { data, reply })
            .map_err(|_| anyhow!("chunk workers stopped"))?;
        Ok(result)
    }
}

/// One chunk worker: hashes, encodes and stores each chunk it is handed.
fn worker(
    session: Arc<dyn BackupSession>,
    encoding: ChunkEncoding,
    stats: Arc<UploadStats>,
) -> impl FnMut(Job) + Send + 'static {
    // The encoded blob goes here, chunk after chunk.
    let mut blob = Vec::new();
    move |job: Job| {
        let result = process_chunk(&job.data, &*session, &encoding, &stats, &mut blob);
        let _ = job.reply.send(result);
    }
}

fn process_chunk(
    data: &[u8],
    session: &dyn BackupSession,
    encoding: &ChunkEncoding,
    stats: &UploadStats,
    blob: &mut Vec<u8>,
) -> Result<ChunkDone> {
    let digest = encoding.digest(data);
    let size = data.len() as u64;
    store_chunk(session, stats, &digest, size, || {
        let len = encoding.encode_into(data, blob)?;
        Ok(&blob[..len])
    })?;
    Ok(ChunkDone { digest, size })
}

/// Counts a chunk and uploads it unless the store has it; `encode` makes its blob only
/// when needed: known chunks are not compressed at all (the common case of an unchanged
/// tree).
fn store_chunk<'b>(
    session: &dyn BackupSession,
    stats: &UploadStats,
    digest: &Digest,
    size: u64,
    encode: impl FnOnce() -> Result<&'b [u8]>,
) -> Result<()> {
    stats.chunks.fetch_add(1, Ordering::Relaxed);
    stats.bytes.fetch_add(size, Ordering::Relaxed);
    if !session.is_known_chunk(digest)? {
        let blob = encode()?;
        if session.upload_chunk(digest, blob, size)? {
            stats.new_chunks.fetch_add(1, Ordering::Relaxed);
            stats.new_bytes.fetch_add(size, Ordering::Relaxed);
            stats
                .new_stored_bytes
                .fetch_add(blob.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// A chunk of a previous snapshot's index: `size` bytes with `digest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownChunk {
    pub size: u64,
    pub digest: Digest,
}

/// Where a stream is cut.
enum Cutter {
    Buzhash(Chunker),
    Fixed(usize),
}

/// Writes at least this long that hold only zeros take the zero path (no copy, no hashing
/// of chunks that are all zeros); shorter ones are not worth the check.
const MIN_ZERO_WRITE: usize = 4096;

/// True if every byte is zero; looks at blocks at a time so the compiler vectorises it and
/// data that is not zero is usually rejected in the first block.
fn is_all_zeros(data: &[u8]) -> bool {
    data.chunks(256)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Data handed to the workers by one stream and not yet back, at most (besides the count
/// limit): long runs of zeros are cut into 16 MiB chunks.
const MAX_IN_FLIGHT_BYTES: u64 = 48 * 1024 * 1024;

enum Pending {
    Worker(Receiver<Result<ChunkDone>>, u64),
    Known(KnownChunk),
}

/// A `Write` sink that becomes an index of uploaded chunks. Call [`ChunkedWriter::finish`]
/// at the end; dropping it unfinished abandons the index.
pub struct ChunkedWriter<'p> {
    pool: &'p UploadPool,
    session: Arc<dyn BackupSession>,
    index: Option<Box<dyn IndexWriter>>,
    cutter: Cutter,
    /// The current, not yet cut chunk; every byte of it was scanned. It goes on with
    /// `zeros` zero bytes that are only written into `buf` if data follows them in the same
    /// chunk: a chunk of nothing but zeros never passes through memory.
    buf: Vec<u8>,
    zeros: usize,
    pending: VecDeque<Pending>,
    pending_bytes: u64,
    position: u64,
    /// Nothing was cut since the last injection.
    after_injection: bool,
}

impl<'p> ChunkedWriter<'p> {
    /// A dynamic index cut by the buzhash chunker with average size `avg`.
    pub fn dynamic(
        pool: &'p UploadPool,
        session: Arc<dyn BackupSession>,
        index: Box<dyn IndexWriter>,
        avg: usize,
    ) -> Self {
        Self::new(pool, session, index, Cutter::Buzhash(Chunker::new(avg)))
    }

    /// A fixed index: every chunk `chunk_size` bytes but the last.
    pub fn fixed(
        pool: &'p UploadPool,
        session: Arc<dyn BackupSession>,
        index: Box<dyn IndexWriter>,
        chunk_size: usize,
    ) -> Self {
        Self::new(pool, session, index, Cutter::Fixed(chunk_size.max(1)))
    }

    fn new(
        pool: &'p UploadPool,
        session: Arc<dyn BackupSession>,
        index: Box<dyn IndexWriter>,
        cutter: Cutter,
    ) -> Self {
        ChunkedWriter {
            pool,
            session,
            index: Some(index),
            cutter,
            buf: Vec::new(),
            zeros: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            position: 0,
            after_injection: false,
        }
    }

    /// Bytes written (or injected) so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// A payload starts here: ends the current chunk if the chunker agrees (chunker.md §5.1).
    pub fn suggest_boundary(&mut self) -> Result<()> {
        if let Cutter::Buzhash(chunker) = &mut self.cutter {
            if chunker.suggest_boundary() {
                self.emit()?;
            }
        }
        Ok(())
    }

    /// Ends the current chunk here and appends chunks of a previous snapshot without their
    /// data (chunker.md §5.2). They must be present in the store.
    pub fn inject(&mut self, chunks: &[KnownChunk]) -> Result<()> {
        self.force_boundary()?;
        let stats = self.pool.stats();
        for chunk in chunks {
            if !self.session.is_known_chunk(&chunk.digest)? {
                bail!(
                    "chunk {} of the previous snapshot is missing from the datastore",
                    crate::format::digest_to_hex(&chunk.digest)
                );
            }
            stats.injected_chunks.fetch_add(1, Ordering::Relaxed);
            stats
                .injected_bytes
                .fetch_add(chunk.size, Ordering::Relaxed);
            self.pending.push_back(Pending::Known(*chunk));
            self.position += chunk.size;
        }
        self.after_injection = !chunks.is_empty();
        self.drain(self.pool.in_flight)
    }

    /// Forgets the not yet cut bytes if they are exactly `expected` and nothing else was
    /// written or injected (the start marker the first injected chunk already holds).
    pub fn discard_first_bytes_if(&mut self, expected: &[u8]) -> bool {
        if self.pending.is_empty()
            && self.position == expected.len() as u64
            && self.zeros == 0
            && self.buf == expected
        {
            self.buf.clear();
            self.position = 0;
            self.force_boundary().is_ok()
        } else {
            false
        }
    }

    /// Forgets the not yet cut bytes if they are exactly `expected` and were written right
    /// after an injection (a tail marker the injected chunks already end with).
    pub fn discard_bytes_after_injection_if(&mut self, expected: &[u8]) -> bool {
        if self.after_injection && self.zeros == 0 && self.buf == expected {
            self.buf.clear();
            self.position -= expected.len() as u64;
            true
        } else {
            false
        }
    }

    /// Cuts the current chunk now, whatever its size.
    pub fn force_boundary(&mut self) -> Result<()> {
        if let Cutter::Buzhash(chunker) = &mut self.cutter {
            chunker.reset();
        }
        self.emit()
    }

    /// Uploads the rest, waits for all chunks and closes the index.
    pub fn finish(mut self) -> Result<IndexSummary> {
        self.emit()?;
        self.drain(0)?;
        self.index
            .take()
            .context("index already finished")?
            .finish()
    }

    /// Sends the current chunk (if any) to the workers.
    fn emit(&mut self) -> Result<()> {
        if self.buf.is_empty() && self.zeros == 0 {
            return Ok(());
        }
        if self.pool.abort.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        self.after_injection = false;
        if self.buf.is_empty() {
            let chunk = self
                .pool
                .store_zero_chunk(std::mem::take(&mut self.zeros))?;
            self.pending.push_back(Pending::Known(chunk));
            return self.drain(self.pool.in_flight);
        }
        self.write_out_zeros();
        let capacity = match &self.cutter {
            Cutter::Buzhash(chunker) => chunker.min_size() * 2,
            Cutter::Fixed(size) => *size,
        };
        // A fresh buffer each time: recycling the sent ones measured no faster and held
        // more memory.
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(capacity));
        let size = data.len() as u64;
        let result = self.pool.submit(data)?;
        self.pending.push_back(Pending::Worker(result, size));
        self.pending_bytes += size;
        self.drain(self.pool.in_flight)
    }

    /// Appends finished chunks to the index until at most `keep` are outstanding.
    fn drain(&mut self, keep: usize) -> Result<()> {
        while self.pending.len() > keep || (keep > 0 && self.pending_bytes > MAX_IN_FLIGHT_BYTES) {
            let chunk = match self.pending.pop_front().expect("length checked") {
                Pending::Known(chunk) => chunk,
                Pending::Worker(result, size) => {
                    self.pending_bytes -= size;
                    let done = result
                        .recv()
                        .map_err(|_| anyhow!("a chunk worker died"))??;
                    KnownChunk {
                        size: done.size,
                        digest: done.digest,
                    }
                }
            };
            if chunk.size > 0 {
                self.index
                    .as_mut()
                    .context("index already finished")?
                    .add_chunk(chunk.size, &chunk.digest)?;
            }
        }
        Ok(())
    }

    fn write_data(&mut self, mut data: &[u8]) -> Result<()> {
        if data.len() >= MIN_ZERO_WRITE && is_all_zeros(data) {
            return self.write_zeros(data.len());
        }
        while !data.is_empty() {
            let cut = match &mut self.cutter {
                Cutter::Buzhash(chunker) => chunker.scan(data),
                Cutter::Fixed(size) => {
                    Self::fixed_cut(*size, self.buf.len() + self.zeros, data.len())
                }
            };
            self.write_out_zeros();
            if cut == 0 {
                self.buf.extend_from_slice(data);
                self.position += data.len() as u64;
                return Ok(());
            }
            self.buf.extend_from_slice(&data[..cut]);
            self.position += cut as u64;
            data = &data[cut..];
            self.emit()?;
        }
        Ok(())
    }

    /// Like `write_data` of `len` zero bytes, without touching them.
    fn write_zeros(&mut self, mut len: usize) -> Result<()> {
        while len > 0 {
            let cut = match &mut self.cutter {
                Cutter::Buzhash(chunker) => chunker.scan_zeros(len),
                Cutter::Fixed(size) => Self::fixed_cut(*size, self.buf.len() + self.zeros, len),
            };
            let taken = if cut == 0 { len } else { cut };
            self.zeros += taken;
            self.position += taken as u64;
            if cut == 0 {
                return Ok(());
            }
            len -= cut;
            self.emit()?;
        }
        Ok(())
    }

    /// Where a fixed-size chunk holding `filled` bytes ends in the next `len` bytes (0: not
    /// in them).
    fn fixed_cut(size: usize, filled: usize, len: usize) -> usize {
        let room = size - filled;
        if len >= room {
            room
        } else {
            0
        }
    }

    /// Data follows the pending zeros in the same chunk: they become real bytes.
    fn write_out_zeros(&mut self) {
        if self.zeros > 0 {
            self.buf.resize(self.buf.len() + self.zeros, 0);
            self.zeros = 0;
        }
    }
}

impl Write for ChunkedWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_data(data)
            .map_err(|err| io::Error::other(format!("{err:#}")))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
