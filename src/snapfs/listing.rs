//! Directory listings decoded ahead of the reader.
//!
//! `find`, `ls -R` and `rsync` list one directory after another and wait for every answer,
//! so decoding a listing (each entry's metadata) sits on their critical path while the
//! other core idles. When a directory is listed from its start, its subdirectories are
//! queued for a background thread, which lists them in the order a depth-first reader
//! comes to them, and the kernel's requests for them are answered from memory. A listing
//! is decoded once: not once per readdir batch (the kernel asks for a big directory in
//! several batches), and not again by a request that comes while the background thread is
//! making it (the request waits for it).
//!
//! Memory stays bounded: listings are dropped as soon as they have been read to the end
//! (the kernel caches directory contents itself; it asks once more at the end and stops at
//! the empty answer, which must not decode the listing again), the background thread waits
//! while `budget` entries are held (until the reader has used some; so at most about twice
//! the budget is held), and beyond it the oldest listings go first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use pbsfs_mount::{Attr, Errno};

/// One entry of a listing, with the attributes `readdirplus` hands to the kernel.
pub struct ListedEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
    /// Offset at which a listing resumes after this entry.
    pub next_offset: u64,
}

/// A directory's entries in order; `error` ends a listing that could not be read to the
/// end (the entries before it are still served, as a plain walk would have).
pub struct ListedDir {
    pub entries: Vec<ListedEntry>,
    pub error: Option<Errno>,
}

impl ListedDir {
    /// A listing that fails before its first entry.
    pub fn failed(error: Errno) -> Self {
        ListedDir {
            entries: Vec::new(),
            error: Some(error),
        }
    }

    fn subdirectories(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.entries
            .iter()
            .filter(|e| e.attr.mode & libc::S_IFMT == libc::S_IFDIR)
            .map(|e| e.attr.ino)
    }
}

/// Lists a directory by inode; `None` when the filesystem is gone.
pub type ListFn = dyn Fn(u64) -> Option<ListedDir> + Send + Sync;

/// Directories waiting for the background thread; more are not queued.
const QUEUE_LEN: usize = 1024;
/// The background thread ends after this long without work (a whole-store mount opens
/// many archives; an idle one should not keep a thread).
const WORKER_IDLE: Duration = Duration::from_secs(5);

pub struct ListingCache {
    shared: Arc<Shared>,
    list: Arc<ListFn>,
}

/// What the readers and the background thread share: the state, and a signal for each
/// change a waiter may be waiting for (a listing made, room freed, work queued).
struct Shared {
    held: Mutex<Held>,
    changed: Condvar,
    budget: usize,
    /// How long the background thread waits for something to do before it ends.
    idle: Duration,
}

#[derive(Default)]
struct Held {
    listings: HashMap<u64, Arc<ListedDir>>,
    /// Insertion order, for evicting the oldest; may name listings dropped since.
    order: VecDeque<u64>,
    entries: usize,
    /// Directories to list in the background, the next one first.
    pending: VecDeque<u64>,
    /// The directory the background thread is listing now.
    making: Option<u64>,
    worker_running: bool,
}

impl Held {
    fn insert(&mut self, ino: u64, listing: Arc<ListedDir>) {
        self.entries += listing.entries.len();
        if let Some(old) = self.listings.insert(ino, listing) {
            self.entries -= old.entries.len();
        }
        self.order.push_back(ino);
    }

    fn remove(&mut self, ino: u64) {
        if let Some(old) = self.listings.remove(&ino) {
            self.entries -= old.entries.len();
        }
        // Keep the order queue from filling up with names of dropped listings.
        if self.order.len() > 2 * self.listings.len() + 64 {
            let listings = &self.listings;
            self.order.retain(|ino| listings.contains_key(ino));
        }
    }

    /// Drops the oldest listings until `budget` entries are held, but never `keep`.
    fn evict_to(&mut self, budget: usize, keep: u64) {
        while self.entries > budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if oldest == keep {
                self.order.push_front(oldest);
                break;
            }
            if let Some(old) = self.listings.remove(&oldest) {
                self.entries -= old.entries.len();
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, held: MutexGuard<'a, Held>, timeout: Duration) -> MutexGuard<'a, Held> {
        match self.changed.wait_timeout(held, timeout) {
            Ok((held, _)) => held,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

impl ListingCache {
    /// A cache holding about `budget` entries at most, filled by `list`.
    pub fn new(budget: usize, list: Arc<ListFn>) -> Self {
        Self::with_idle(budget, list, WORKER_IDLE)
    }

    fn with_idle(budget: usize, list: Arc<ListFn>, idle: Duration) -> Self {
        ListingCache {
            shared: Arc::new(Shared {
                held: Mutex::default(),
                changed: Condvar::new(),
                budget,
                idle,
            }),
            list,
        }
    }

    /// Hands the entries of directory `ino` from `offset` (entries before it) on to `add`
    /// until it asks to stop; the listing's error comes when asked for at its end. A listing
    /// read from its start has its subdirectories listed in the background.
    pub fn serve(
        &self,
        ino: u64,
        offset: u64,
        add: &mut dyn FnMut(&ListedEntry) -> ControlFlow<()>,
    ) -> Result<(), Errno> {
        let (listing, held) = match self.held_or_claimed(ino) {
            Some(listing) => (listing, true),
            None => {
                let listing = (self.list)(ino).unwrap_or_else(|| ListedDir::failed(Errno::EIO));
                (Arc::new(listing), false)
            }
        };
        if offset == 0 {
            self.prepare_subdirectories(&listing);
        }
        let start = (offset as usize).min(listing.entries.len());
        let at_end = start == listing.entries.len();
        for listed in &listing.entries[start..] {
            if add(listed).is_break() {
                break;
            }
        }
        // Done with only when asked for at its end: the kernel asks once more after the
        // last entry went out, and stops at the empty answer.
        match (at_end, held) {
            (true, true) => self.finished(ino),
            (false, false) => self.keep(ino, listing.clone()),
            _ => {}
        }
        match (at_end, listing.error) {
            (true, Some(err)) => Err(err),
            _ => Ok(()),
        }
    }

    /// The listing held for `ino`, waiting for it if the background thread is making it;
    /// otherwise takes `ino` off the background queue, as the caller lists it now.
    fn held_or_claimed(&self, ino: u64) -> Option<Arc<ListedDir>> {
        let mut held = self.shared.lock();
        while held.making == Some(ino) {
            held = self.shared.wait(held, self.shared.idle);
        }
        if let Some(listing) = held.listings.get(&ino) {
            return Some(listing.clone());
        }
        if let Some(at) = held.pending.iter().position(|&queued| queued == ino) {
            held.pending.remove(at);
        }
        None
    }

    /// The listing held for `ino`, if any.
    #[cfg(test)]
    fn get(&self, ino: u64) -> Option<Arc<ListedDir>> {
        self.shared.lock().listings.get(&ino).cloned()
    }

    /// Keeps a listing that the kernel has not read to the end yet. It stays even if it is
    /// bigger than the budget alone: the kernel is about to ask for the rest, and decoding a
    /// huge directory again for every batch would take time quadratic in its size.
    pub fn keep(&self, ino: u64, listing: Arc<ListedDir>) {
        let mut held = self.shared.lock();
        held.insert(ino, listing);
        held.evict_to(self.shared.budget, ino);
    }

    /// Drops a listing read to its end, making room for the background thread.
    pub fn finished(&self, ino: u64) {
        self.shared.lock().remove(ino);
        self.shared.changed.notify_all();
    }

    /// Lists the subdirectories of `listing` in the background, ahead of those queued
    /// before: a depth-first reader comes to them first.
    pub fn prepare_subdirectories(&self, listing: &ListedDir) {
        self.prepare(listing.subdirectories().rev());
    }

    /// Queues directories (the last one given is listed first) for the background thread.
    pub fn prepare(&self, dirs: impl IntoIterator<Item = u64>) {
        let mut held = self.shared.lock();
        let wanted: Vec<u64> = dirs
            .into_iter()
            .filter(|ino| !held.listings.contains_key(ino) && held.making != Some(*ino))
            .collect();
        if wanted.is_empty() {
            return;
        }
        // Queued again (a directory listed from its start twice): moved to the front.
        let moved: HashSet<u64> = wanted.iter().copied().collect();
        held.pending.retain(|ino| !moved.contains(ino));
        for ino in wanted {
            held.pending.push_front(ino);
        }
        held.pending.truncate(QUEUE_LEN);
        if !held.worker_running {
            held.worker_running = self.spawn_worker();
        }
        drop(held);
        self.shared.changed.notify_all();
    }

    /// Starts the background thread; false when it cannot be (out of resources: listings
    /// are then decoded when asked for).
    fn spawn_worker(&self) -> bool {
        let shared = Arc::downgrade(&self.shared);
        let list = self.list.clone();
        std::thread::Builder::new()
            .name("pbsfs-listing".into())
            .spawn(move || prepare_listings(shared, list))
            .is_ok()
    }
}

/// The background thread: lists queued directories while fewer than the budget's entries
/// are held, until the cache is gone, or nothing could be done for a while (nothing
/// queued, or no room because the reader stopped using what was listed for it: the queue is
/// dropped then, and the reader lists what it still asks for itself).
fn prepare_listings(shared: std::sync::Weak<Shared>, list: Arc<ListFn>) {
    while let Some(shared) = shared.upgrade() {
        let Some(ino) = next_to_list(&shared) else {
            return;
        };
        let listing = list(ino);
        let mut held = shared.lock();
        held.making = None;
        let gone = listing.is_none();
        match listing {
            // A directory bigger than the whole budget is left to the reader.
            Some(listing) if listing.entries.len() <= shared.budget => {
                held.insert(ino, Arc::new(listing))
            }
            _ => {}
        }
        held.worker_running &= !gone;
        drop(held);
        shared.changed.notify_all();
        if gone {
            return;
        }
    }
}

/// Waits for a queued directory and room for its listing, and marks it as being made;
/// `None` when the thread should end.
fn next_to_list(shared: &Shared) -> Option<u64> {
    let mut held = shared.lock();
    loop {
        while let Some(&front) = held.pending.front() {
            if !held.listings.contains_key(&front) {
                break;
            }
            held.pending.pop_front();
        }
        if held.entries < shared.budget {
            if let Some(ino) = held.pending.pop_front() {
                held.making = Some(ino);
                return Some(ino);
            }
        }
        let timed_out;
        (held, timed_out) = match shared.changed.wait_timeout(held, shared.idle) {
            Ok((held, result)) => (held, result.timed_out()),
            Err(poisoned) => {
                let (held, result) = poisoned.into_inner();
                (held, result.timed_out())
            }
        };
        if timed_out {
            held.pending.clear();
            held.worker_running = false;
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbsfs_mount::Timespec;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn entry(ino: u64, dir: bool) -> ListedEntry {
        ListedEntry {
            name: format!("e{ino}").into_bytes(),
            attr: Attr {
                ino,
                size: 0,
                blocks: 0,
                mode: if dir {
                    libc::S_IFDIR | 0o755
                } else {
                    libc::S_IFREG | 0o644
                },
                nlink: 1,
                uid: 0,
                gid: 0,
                mtime: Timespec::new(0, 0),
                rdev: 0,
                blksize: 4096,
                provisional: false,
            },
            next_offset: 1,
        }
    }

    /// Directory n holds 10 entries: subdirectories 10n+1 and 10n+2, then files.
    fn tree(calls: Arc<AtomicUsize>) -> Arc<ListFn> {
        Arc::new(move |ino| {
            calls.fetch_add(1, Ordering::SeqCst);
            let entries = (1..=10).map(|i| entry(ino * 10 + i, i <= 2)).collect();
            Some(ListedDir {
                entries,
                error: None,
            })
        })
    }

    fn wait_for(cache: &ListingCache, ino: u64) -> Arc<ListedDir> {
        for _ in 0..500 {
            if let Some(listing) = cache.get(ino) {
                return listing;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("listing {ino} was never prepared");
    }

    #[test]
    fn subdirectories_are_listed_in_the_background() {
        let calls = Arc::new(AtomicUsize::new(0));
        let list = tree(calls.clone());
        let cache = ListingCache::new(1000, list.clone());
        let root = list(1).unwrap();
        cache.prepare_subdirectories(&root);
        assert_eq!(wait_for(&cache, 11).entries.len(), 10);
        assert_eq!(wait_for(&cache, 12).entries[0].attr.ino, 121);
        // Files are not listed, and nothing beyond the subdirectories asked for.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(cache.get(13).is_none());
        cache.finished(11);
        assert!(cache.get(11).is_none());
    }

    /// Lists directory `ino` from offset 0 in batches of `batch` entries, up to and
    /// including the call at the end, as the kernel does. Returns the inodes served.
    fn read_all(cache: &ListingCache, ino: u64, batch: usize) -> Result<Vec<u64>, Errno> {
        let mut served = Vec::new();
        loop {
            let before = served.len();
            let mut room = batch;
            cache.serve(ino, before as u64, &mut |listed| {
                served.push(listed.attr.ino);
                room -= 1;
                if room == 0 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
            if served.len() == before {
                return Ok(served);
            }
        }
    }

    #[test]
    fn a_listing_is_decoded_once_however_it_is_read() {
        let listed = Arc::new(Mutex::new(Vec::new()));
        let log = listed.clone();
        let list: Arc<ListFn> = Arc::new(move |ino| {
            log.lock().unwrap().push(ino);
            let entries = (1..=10).map(|i| entry(ino * 10 + i, false)).collect();
            Some(ListedDir {
                entries,
                error: None,
            })
        });
        let cache = ListingCache::new(1000, list);
        for batch in [3, 10, 100] {
            let ino = batch as u64;
            let served = read_all(&cache, ino, batch).unwrap();
            assert_eq!(served, (1..=10).map(|i| ino * 10 + i).collect::<Vec<_>>());
            let times = listed.lock().unwrap().iter().filter(|&&i| i == ino).count();
            assert_eq!(times, 1, "listing read in batches of {batch}");
            assert!(cache.get(ino).is_none(), "dropped once read to its end");
        }
    }

    #[test]
    fn a_failed_listing_serves_what_it_has_then_its_error() {
        let list: Arc<ListFn> = Arc::new(|_| {
            Some(ListedDir {
                entries: (1..=3).map(|i| entry(i, false)).collect(),
                error: Some(Errno::EIO),
            })
        });
        let cache = ListingCache::new(1000, list);
        let mut served = Vec::new();
        let first = cache.serve(1, 0, &mut |listed| {
            served.push(listed.attr.ino);
            ControlFlow::Continue(())
        });
        assert_eq!((first, served), (Ok(()), vec![1, 2, 3]));
        assert_eq!(read_all(&cache, 1, 10), Err(Errno::EIO));
    }

    #[test]
    fn memory_stays_within_the_budget() {
        let calls = Arc::new(AtomicUsize::new(0));
        let list = tree(calls);
        // Room for two listings of ten.
        let cache = ListingCache::new(25, list.clone());
        for ino in 1..=4 {
            cache.keep(ino, Arc::new(list(ino).unwrap()));
        }
        assert!(held_entries(&cache) <= 25);
        assert!(cache.get(1).is_none(), "the oldest listing goes first");
        assert!(cache.get(4).is_some());
        // A listing bigger than the whole budget is kept while it is being read.
        let huge = ListedDir {
            entries: (0..40).map(|i| entry(900 + i, false)).collect(),
            error: None,
        };
        cache.keep(9, Arc::new(huge));
        assert_eq!(cache.get(9).unwrap().entries.len(), 40);
        assert!(cache.get(4).is_none());
        cache.finished(9);
        assert_eq!(held_entries(&cache), 0);
        // The background thread starts a listing only while fewer entries than the budget
        // are held: 51 goes over it, 52 waits for room.
        for ino in 6..=7 {
            cache.keep(ino, Arc::new(list(ino).unwrap()));
        }
        cache.prepare_subdirectories(&list(5).unwrap());
        wait_for(&cache, 51);
        std::thread::sleep(Duration::from_millis(100));
        assert!(cache.get(52).is_none());
        assert!(held_entries(&cache) <= 2 * 25);
        // Room made by a listing read to its end lets the queue go on.
        cache.finished(6);
        wait_for(&cache, 52);
    }

    fn held_entries(cache: &ListingCache) -> usize {
        cache.shared.lock().entries
    }

    type Calls = Arc<Mutex<HashMap<u64, usize>>>;

    /// A listing function that counts its calls per directory and, for `blocked`, waits
    /// until the returned sender says go.
    fn counting_tree(blocked: u64) -> (Arc<ListFn>, Calls, std::sync::mpsc::Sender<()>) {
        let calls = Arc::new(Mutex::new(HashMap::new()));
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let counted = calls.clone();
        let list: Arc<ListFn> = Arc::new(move |ino| {
            *counted.lock().unwrap().entry(ino).or_insert(0) += 1;
            if ino == blocked {
                let _ = gate.lock().unwrap().recv();
            }
            let entries = (1..=10).map(|i| entry(ino * 10 + i, i <= 2)).collect();
            Some(ListedDir {
                entries,
                error: None,
            })
        });
        (list, calls, go)
    }

    #[test]
    fn a_listing_being_made_in_the_background_is_waited_for_not_made_again() {
        let (list, calls, go) = counting_tree(11);
        let cache = Arc::new(ListingCache::new(1000, list));
        cache.prepare([11]);
        for _ in 0..500 {
            if cache.shared.lock().making == Some(11) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cache.shared.lock().making, Some(11));
        let reader = {
            let cache = cache.clone();
            std::thread::spawn(move || read_all(&cache, 11, 4).unwrap())
        };
        std::thread::sleep(Duration::from_millis(50));
        go.send(()).unwrap();
        assert_eq!(reader.join().unwrap().len(), 10);
        assert_eq!(calls.lock().unwrap()[&11], 1, "listed once");
    }

    #[test]
    fn a_directory_listed_by_the_reader_leaves_the_queue() {
        // Budget 0: the background thread lists nothing, the queue stays as it is.
        let (list, calls, _go) = counting_tree(0);
        let cache = ListingCache::new(0, list);
        cache.prepare([12, 11]);
        read_all(&cache, 11, 100).unwrap();
        assert_eq!(cache.shared.lock().pending, [111, 112, 12]);
        assert_eq!(calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn subdirectories_are_queued_ahead_of_those_queued_before() {
        let (list, _, _go) = counting_tree(0);
        let cache = ListingCache::new(0, list.clone());
        cache.prepare_subdirectories(&list(1).unwrap());
        cache.prepare_subdirectories(&list(11).unwrap());
        // A depth-first reader (find, ls -R) comes to 111 and 112 before 12.
        assert_eq!(cache.shared.lock().pending, [111, 112, 11, 12]);
        // Queued again, a directory moves to the front rather than being queued twice.
        cache.prepare([12]);
        assert_eq!(cache.shared.lock().pending, [12, 111, 112, 11]);
    }

    #[test]
    fn an_idle_worker_ends_and_another_starts_when_needed() {
        let (list, calls, _go) = counting_tree(0);
        let cache = ListingCache::with_idle(1000, list, Duration::from_millis(20));
        cache.prepare([3]);
        wait_for(&cache, 3);
        for _ in 0..500 {
            if !cache.shared.lock().worker_running {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!cache.shared.lock().worker_running, "the idle worker ended");
        cache.prepare([4]);
        wait_for(&cache, 4);
        assert_eq!(calls.lock().unwrap().len(), 2);
    }
}
