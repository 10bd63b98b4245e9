//! A bounded LRU of verified, decoded chunks in front of a [`ChunkReader`].
//!
//! - Bounded in bytes, not entries: chunks range from a few bytes to 16 MiB.
//! - Single-flight: concurrent readers of one missing chunk wait for one fetch.
//! - Sharded by digest, so readers of different chunks never queue on one lock. The byte
//!   budget is global, though: a per-shard budget (1/16 of the cache) would hold only one
//!   16 MiB chunk per shard and evict read-ahead chunks before they are read. Every entry
//!   carries a global use tick; eviction takes the shard tail with the oldest tick, which
//!   approximates one LRU over all shards without a global lock.
//! - Read-ahead: `prefetch` hands digests to a few worker threads that fill the cache,
//!   fetching with [`ChunkReader::read_chunk_streaming`].
//! - Release: `release` drops a chunk a reader is done with (a sequential reader has passed
//!   it), so that its memory goes to the chunks ahead before anything useful is evicted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use anyhow::{anyhow, Result};
use lru::LruCache;

use super::chunk_reader::ChunkReader;
use super::worker_pool::WorkerPool;
use crate::format::Digest;

const SHARDS: usize = 16;
/// Pending read-ahead requests beyond this are dropped: read-ahead is a hint.
const PREFETCH_QUEUE: usize = 64;

type Chunk = Arc<Vec<u8>>;
/// A read-ahead request: digest, length, and the source to fetch from (None: the cache's).
type Prefetch = (Digest, u64, Option<Arc<dyn ChunkReader>>);

/// How a missing chunk is fetched: for a reader waiting on it, or ahead of a sequential
/// reader (a one-pass read, which a local datastore serves past the page cache: the chunk is
/// kept here, decoded, and a raw copy in the page cache would only take fresh memory and a
/// copy; a random reader's chunk files stay there, a second level of cache behind this one).
#[derive(Clone, Copy)]
enum Fetch {
    OnDemand,
    Streaming,
}

/// One fetch in progress; late arrivals wait on it.
#[derive(Default)]
struct Flight {
    result: Mutex<Option<Result<Chunk, String>>>,
    done: Condvar,
}

impl Flight {
    fn wait(&self) -> Result<Chunk> {
        let mut result = self.result.lock().unwrap();
        while result.is_none() {
            result = self.done.wait(result).unwrap();
        }
        result.as_ref().unwrap().clone().map_err(|e| anyhow!(e))
    }

    fn finish(&self, value: Result<Chunk, String>) {
        *self.result.lock().unwrap() = Some(value);
        self.done.notify_all();
    }
}

struct Cached {
    chunk: Chunk,
    /// When it was last used, on the cache-wide clock.
    tick: u64,
}

/// What a cached chunk costs: what its buffer holds in memory, not just its length.
fn cost(chunk: &Chunk) -> usize {
    chunk.capacity()
}

struct Shard {
    lru: LruCache<Digest, Cached>,
    in_flight: HashMap<Digest, Arc<Flight>>,
}

struct Inner {
    source: Arc<dyn ChunkReader>,
    shards: Vec<Mutex<Shard>>,
    capacity: usize,
    bytes: AtomicUsize,
    clock: AtomicU64,
    /// Chunks waiting in the read-ahead queue. A chunk is queued once, however many reads
    /// ask for it, and a request whose chunk was released meanwhile is dropped: fetched
    /// then, it would be decoded a second time for nobody.
    queued: Mutex<HashSet<Digest>>,
}

impl Inner {
    fn shard(&self, digest: &Digest) -> &Mutex<Shard> {
        &self.shards[digest[0] as usize % SHARDS]
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The chunk from the cache, or fetched from `source` (None: the cache's own source).
    fn read(
        &self,
        digest: &Digest,
        expected_len: u64,
        source: Option<&dyn ChunkReader>,
        fetch: Fetch,
    ) -> Result<Chunk> {
        let flight = {
            let mut shard = self.shard(digest).lock().unwrap();
            if let Some(cached) = shard.lru.get_mut(digest) {
                cached.tick = self.tick();
                return Ok(cached.chunk.clone());
            }
            if let Some(flight) = shard.in_flight.get(digest) {
                let flight = flight.clone();
                drop(shard);
                return flight.wait();
            }
            let flight = Arc::new(Flight::default());
            shard.in_flight.insert(*digest, flight.clone());
            flight
        };
        // The chunk being fetched counts against the budget already: with read-ahead,
        // several are decoded at once, and memory must stay within the cache size.
        let reserved = (expected_len as usize).min(self.capacity);
        self.bytes.fetch_add(reserved, Ordering::Relaxed);
        self.evict_to_capacity();
        let source = source.unwrap_or(&*self.source);
        let result = match fetch {
            Fetch::OnDemand => source.read_chunk(digest, expected_len),
            Fetch::Streaming => source.read_chunk_streaming(digest, expected_len),
        };
        self.bytes.fetch_sub(reserved, Ordering::Relaxed);
        {
            let mut shard = self.shard(digest).lock().unwrap();
            shard.in_flight.remove(digest);
            if let Ok(chunk) = &result {
                self.insert(&mut shard, digest, chunk);
            }
        }
        if result.is_ok() {
            self.evict_to_capacity();
        }
        // Errors are not cached: the next read tries again (the source may recover).
        flight.finish(
            result
                .as_ref()
                .map(Arc::clone)
                .map_err(|e| format!("{e:#}")),
        );
        result
    }

    fn insert(&self, shard: &mut Shard, digest: &Digest, chunk: &Chunk) {
        if cost(chunk) > self.capacity {
            return; // would evict everything and still not fit
        }
        self.bytes.fetch_add(cost(chunk), Ordering::Relaxed);
        let cached = Cached {
            chunk: chunk.clone(),
            tick: self.tick(),
        };
        if let Some(old) = shard.lru.put(*digest, cached) {
            self.bytes.fetch_sub(cost(&old.chunk), Ordering::Relaxed);
        }
    }

    /// Drops least recently used chunks, across shards, until the budget holds. Locks one
    /// shard at a time.
    fn evict_to_capacity(&self) {
        while self.bytes.load(Ordering::Relaxed) > self.capacity {
            let oldest = self
                .shards
                .iter()
                .enumerate()
                .filter_map(|(n, shard)| {
                    let shard = shard.lock().unwrap();
                    shard.lru.peek_lru().map(|(_, cached)| (cached.tick, n))
                })
                .min();
            let Some((_, n)) = oldest else { return };
            let evicted = self.shards[n].lock().unwrap().lru.pop_lru();
            if let Some((_, cached)) = evicted {
                self.bytes.fetch_sub(cost(&cached.chunk), Ordering::Relaxed);
            }
        }
    }

    /// Drops a cached chunk; one being fetched stays (its reader is about to use it).
    fn forget(&self, digest: &Digest) {
        self.queued.lock().unwrap().remove(digest);
        let removed = self.shard(digest).lock().unwrap().lru.pop(digest);
        if let Some(cached) = removed {
            self.bytes.fetch_sub(cost(&cached.chunk), Ordering::Relaxed);
        }
    }

    fn contains(&self, digest: &Digest) -> bool {
        let shard = self.shard(digest).lock().unwrap();
        shard.lru.contains(digest) || shard.in_flight.contains_key(digest)
    }
}

/// The cache; cheap to share through `Arc`.
pub struct ChunkCache {
    inner: Arc<Inner>,
    prefetch: Option<WorkerPool<Prefetch>>,
}

impl ChunkCache {
    /// `capacity` bytes of decoded chunks; `prefetch_workers` threads for read-ahead (0: none).
    pub fn new(source: Arc<dyn ChunkReader>, capacity: usize, prefetch_workers: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    in_flight: HashMap::new(),
                })
            })
            .collect();
        let inner = Arc::new(Inner {
            source,
            shards,
            capacity,
            bytes: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            queued: Mutex::new(HashSet::new()),
        });
        // Without its threads the cache still works, only without read-ahead.
        let prefetch = (prefetch_workers > 0)
            .then(|| {
                WorkerPool::new("pbsfs-prefetch", prefetch_workers, PREFETCH_QUEUE, |_| {
                    prefetch_worker(Arc::downgrade(&inner))
                })
                .map_err(|err| log::warn!("no chunk read-ahead: {err}"))
                .ok()
            })
            .flatten();
        ChunkCache { inner, prefetch }
    }

    /// A cache with no source of its own, read only through [`CacheVia`] views.
    pub fn shared(capacity: usize, prefetch_workers: usize) -> Self {
        Self::new(Arc::new(NoSource), capacity, prefetch_workers)
    }

    /// Bytes of chunk data held now.
    pub fn cached_bytes(&self) -> usize {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Whether a chunk is cached or being fetched.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.inner.contains(digest)
    }
}

/// Nice value of read-ahead threads (see [`prefetch_worker`]).
const PREFETCH_NICE: libc::c_int = 10;

/// One read-ahead worker: fetches each queued chunk that is still wanted into the cache.
fn prefetch_worker(inner: Weak<Inner>) -> impl FnMut(Prefetch) + Send + 'static {
    let mut niced = false;
    move |(digest, len, source)| {
        if !niced {
            niced = true;
            lower_priority();
        }
        let Some(inner) = inner.upgrade() else { return }; // the cache is gone
        if !inner.queued.lock().unwrap().remove(&digest) {
            return; // released since it was queued
        }
        // A failed read-ahead is not reported: the real read will fetch again and report it.
        let _ = inner.read(&digest, len, source.as_deref(), Fetch::Streaming);
    }
}

/// Read-ahead yields to the threads that hand data to readers: with the cores busy decoding
/// chunks needed later, a reader whose data is ready would otherwise wait its turn behind
/// all of them. The workers still get every cycle nobody else wants. (On Linux the nice
/// value is per thread; best effort.)
fn lower_priority() {
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, PREFETCH_NICE);
    }
}

impl ChunkCache {
    fn queue_prefetch(&self, digest: &Digest, len: u64, source: Option<Arc<dyn ChunkReader>>) {
        let Some(pool) = &self.prefetch else { return };
        if self.inner.contains(digest) || !self.inner.queued.lock().unwrap().insert(*digest) {
            return;
        }
        if pool.try_submit((*digest, len, source)).is_err() {
            self.inner.queued.lock().unwrap().remove(digest);
        }
    }
}

impl ChunkReader for ChunkCache {
    fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Chunk> {
        self.inner.read(digest, expected_len, None, Fetch::OnDemand)
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.inner.capacity)
    }

    fn prefetch(&self, digest: &Digest, expected_len: u64) {
        self.queue_prefetch(digest, expected_len, None);
    }

    fn release(&self, digest: &Digest) {
        self.inner.forget(digest);
    }
}

/// The source of a cache that is only read through [`CacheVia`] views.
struct NoSource;

impl ChunkReader for NoSource {
    fn read_chunk(&self, digest: &Digest, _expected_len: u64) -> Result<Chunk> {
        Err(anyhow!(
            "chunk {} asked of a cache without a source",
            crate::format::digest_to_hex(digest)
        ))
    }
}

/// A shared cache seen through another source: hits come from the cache, misses are
/// fetched from `source`. A whole-store mount of a PBS server has one reader session per
/// snapshot (the server serves a session only the chunks of its own snapshot) but one
/// cache, and so one memory budget, for all of them.
pub struct CacheVia {
    cache: Arc<ChunkCache>,
    source: Arc<dyn ChunkReader>,
}

impl CacheVia {
    pub fn new(cache: Arc<ChunkCache>, source: Arc<dyn ChunkReader>) -> Self {
        CacheVia { cache, source }
    }
}

impl ChunkReader for CacheVia {
    fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Chunk> {
        self.cache
            .inner
            .read(digest, expected_len, Some(&*self.source), Fetch::OnDemand)
    }

    fn capacity(&self) -> Option<usize> {
        self.cache.capacity()
    }

    fn prefetch(&self, digest: &Digest, expected_len: u64) {
        self.cache
            .queue_prefetch(digest, expected_len, Some(self.source.clone()));
    }

    fn release(&self, digest: &Digest) {
        self.cache.inner.forget(digest);
    }
}

/// Default capacity for mounts: 256 MiB.
pub const DEFAULT_CACHE_SIZE: usize = 256 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;
    use std::time::Duration;

    /// Whether each of the chunks `digest(n)` is cached.
    fn cached<const N: usize>(cache: &ChunkCache, numbers: [u8; N]) -> [bool; N] {
        numbers.map(|n| cache.contains(&digest(n)))
    }

    /// Reads `digest` from `threads` threads at once; their results.
    fn read_at_once(cache: &Arc<ChunkCache>, threads: usize, digest: Digest) -> Vec<Result<Chunk>> {
        let threads: Vec<_> = (0..threads)
            .map(|_| {
                let cache = cache.clone();
                thread::spawn(move || cache.read_chunk(&digest, 10))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    /// Makes chunk data from the digest's first byte; counts and optionally slows fetches.
    struct FakeSource {
        fetches: AtomicUsize,
        /// Of the fetches, those made for a one-pass (streaming) read.
        streamed: AtomicUsize,
        delay: Duration,
        fail: Option<u8>,
    }

    impl ChunkReader for FakeSource {
        fn read_chunk(&self, digest: &Digest, expected_len: u64) -> Result<Chunk> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            thread::sleep(self.delay);
            if Some(digest[0]) == self.fail {
                anyhow::bail!("bad chunk");
            }
            Ok(Arc::new(vec![digest[0]; expected_len as usize]))
        }

        fn read_chunk_streaming(&self, digest: &Digest, expected_len: u64) -> Result<Chunk> {
            self.streamed.fetch_add(1, Ordering::SeqCst);
            self.read_chunk(digest, expected_len)
        }
    }

    fn digest(n: u8) -> Digest {
        let mut d = [0u8; 32];
        d[0] = n;
        d[1] = n;
        d
    }

    fn source(delay_ms: u64, fail: Option<u8>) -> Arc<FakeSource> {
        Arc::new(FakeSource {
            fetches: AtomicUsize::new(0),
            streamed: AtomicUsize::new(0),
            delay: Duration::from_millis(delay_ms),
            fail,
        })
    }

    #[test]
    fn hits_do_not_fetch_again() {
        let src = source(0, None);
        let cache = ChunkCache::new(src.clone(), 1 << 20, 0);
        for _ in 0..5 {
            assert_eq!(*cache.read_chunk(&digest(7), 100).unwrap(), vec![7u8; 100]);
        }
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn bounded_in_bytes() {
        let src = source(0, None);
        let cache = ChunkCache::new(src.clone(), 10_000, 0);
        for n in 0..=255u8 {
            cache.read_chunk(&digest(n), 600).unwrap();
            assert!(cache.cached_bytes() <= 10_000);
        }
        assert_eq!(cache.cached_bytes(), 16 * 600);
    }

    #[test]
    fn the_budget_is_shared_by_all_shards() {
        // Chunks 0, 16, 32 land in one shard; together they still fit the cache.
        let src = source(0, None);
        let cache = ChunkCache::new(src.clone(), 1000, 0);
        for n in [0, 16, 32] {
            cache.read_chunk(&digest(n), 300).unwrap();
        }
        for n in [0, 16, 32] {
            assert!(cache.contains(&digest(n)));
        }
        assert_eq!(src.fetches.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn eviction_takes_the_least_recently_used_of_any_shard() {
        let src = source(0, None);
        let cache = ChunkCache::new(src.clone(), 1000, 0);
        cache.read_chunk(&digest(1), 400).unwrap();
        cache.read_chunk(&digest(2), 400).unwrap();
        cache.read_chunk(&digest(1), 400).unwrap(); // 2 is now the oldest
        cache.read_chunk(&digest(3), 400).unwrap();
        assert_eq!(cached(&cache, [1, 2, 3]), [true, false, true]);
        assert_eq!(cache.cached_bytes(), 800);
    }

    #[test]
    fn concurrent_readers_share_one_fetch() {
        let src = source(200, None);
        let cache = Arc::new(ChunkCache::new(src.clone(), 1 << 20, 0));
        for chunk in read_at_once(&cache, 8, digest(3)) {
            assert_eq!(*chunk.unwrap(), vec![3u8; 10]);
        }
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn errors_reach_every_waiter_and_are_not_cached() {
        let src = source(100, Some(9));
        let cache = Arc::new(ChunkCache::new(src.clone(), 1 << 20, 0));
        assert!(read_at_once(&cache, 4, digest(9))
            .iter()
            .all(|chunk| chunk.is_err()));
        let before = src.fetches.load(Ordering::SeqCst);
        assert!(cache.read_chunk(&digest(9), 10).is_err());
        assert_eq!(src.fetches.load(Ordering::SeqCst), before + 1);
    }

    #[test]
    fn a_view_through_another_source_shares_the_cache() {
        let own = source(0, None);
        let other = source(0, None);
        let cache = Arc::new(ChunkCache::new(own.clone(), 1 << 20, 1));
        let via = CacheVia::new(cache.clone(), other.clone());
        assert_eq!(*via.read_chunk(&digest(4), 10).unwrap(), vec![4u8; 10]);
        // Hits are shared both ways; misses go to the view's own source.
        cache.read_chunk(&digest(4), 10).unwrap();
        assert_eq!(own.fetches.load(Ordering::SeqCst), 0);
        assert_eq!(other.fetches.load(Ordering::SeqCst), 1);
        via.prefetch(&digest(5), 10);
        wait_until(|| cache.contains(&digest(5)) && other.fetches.load(Ordering::SeqCst) == 2);
        via.read_chunk(&digest(5), 10).unwrap();
        assert_eq!(other.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(own.fetches.load(Ordering::SeqCst), 0);
    }

    /// A cache with one read-ahead worker, busy fetching chunk 1 (a fetch takes
    /// `delay_ms`).
    fn one_worker_busy_with_chunk_1(delay_ms: u64) -> (Arc<FakeSource>, ChunkCache) {
        let src = source(delay_ms, None);
        let cache = ChunkCache::new(src.clone(), 1 << 20, 1);
        cache.prefetch(&digest(1), 10);
        wait_until(|| src.fetches.load(Ordering::SeqCst) == 1);
        (src, cache)
    }

    fn wait_until(what: impl Fn() -> bool) {
        for _ in 0..500 {
            if what() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn released_chunks_leave_the_cache() {
        let src = source(0, None);
        let cache = ChunkCache::new(src.clone(), 1 << 20, 0);
        cache.read_chunk(&digest(1), 300).unwrap();
        cache.read_chunk(&digest(2), 200).unwrap();
        cache.release(&digest(1));
        cache.release(&digest(3)); // never cached: nothing happens
        assert_eq!(cached(&cache, [1, 2]), [false, true]);
        assert_eq!(cache.cached_bytes(), 200);
    }

    #[test]
    fn read_ahead_skips_a_chunk_released_while_it_waited() {
        // One worker, busy with chunk 1; chunk 2 waits in the queue and is released (its
        // reader fetched it and moved on): fetching it now would be for nobody.
        let (src, cache) = one_worker_busy_with_chunk_1(300);
        cache.prefetch(&digest(2), 10);
        cache.release(&digest(2));
        wait_until(|| cache.contains(&digest(1)));
        thread::sleep(Duration::from_millis(400));
        assert!(!cache.contains(&digest(2)));
        assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_chunk_is_queued_for_read_ahead_once() {
        // Every read of a sequential reader asks for the whole window ahead. Were each ask
        // queued, the queue would fill with repeats and further chunks would be dropped.
        let (src, cache) = one_worker_busy_with_chunk_1(200);
        for _ in 0..2 * PREFETCH_QUEUE {
            cache.prefetch(&digest(2), 10);
        }
        cache.prefetch(&digest(3), 10);
        wait_until(|| cache.contains(&digest(3)) && src.fetches.load(Ordering::SeqCst) == 3);
        thread::sleep(Duration::from_millis(50));
        assert!(cache.contains(&digest(2)));
        assert!(cache.contains(&digest(3)));
        assert_eq!(src.fetches.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn prefetch_fills_the_cache_in_the_background() {
        let src = source(0, None);
        let cache = ChunkCache::new(src.clone(), 1 << 20, 2);
        for n in 0..4 {
            cache.prefetch(&digest(n), 50);
        }
        wait_until(|| {
            (0..4).all(|n| cache.contains(&digest(n))) && src.fetches.load(Ordering::SeqCst) == 4
        });
        for n in 0..4 {
            cache.read_chunk(&digest(n), 50).unwrap();
        }
        assert_eq!(src.fetches.load(Ordering::SeqCst), 4);
        // Read-ahead fetches are one-pass reads; a reader's own miss is not.
        assert_eq!(src.streamed.load(Ordering::SeqCst), 4);
        cache.read_chunk(&digest(9), 50).unwrap();
        assert_eq!(src.fetches.load(Ordering::SeqCst), 5);
        assert_eq!(src.streamed.load(Ordering::SeqCst), 4);
    }
}
