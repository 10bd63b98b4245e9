//! Directory listings decoded ahead of the reader.
//!
//! `find`, `ls -R` and `rsync` list one directory after another and wait for every answer,
//! so decoding a listing (each entry's metadata) sits on their critical path while the
//! other core idles. When a directory is listed from its start, its subdirectories are
//! listed on a background thread and kept here, and the kernel's requests for them are
//! answered from memory. A listing is also decoded once rather than once per readdir batch
//! (the kernel asks for a big directory in several batches).
//!
//! Memory stays bounded: listings are dropped as soon as they have been read to the end
//! (the kernel caches directory contents itself; it asks once more at the end and stops at
//! the empty answer, which must not decode the listing again), background listings are only made while
//! fewer than `budget` entries are held, and beyond it the oldest listings go first.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
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

    fn subdirectories(&self) -> impl Iterator<Item = u64> + '_ {
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
    held: Arc<Mutex<Held>>,
    budget: usize,
    list: Arc<ListFn>,
    worker: Mutex<Option<SyncSender<u64>>>,
}

#[derive(Default)]
struct Held {
    listings: HashMap<u64, Arc<ListedDir>>,
    /// Insertion order, for evicting the oldest; may name listings dropped since.
    order: VecDeque<u64>,
    entries: usize,
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

impl ListingCache {
    /// A cache holding about `budget` entries at most, filled by `list`.
    pub fn new(budget: usize, list: Arc<ListFn>) -> Self {
        ListingCache {
            held: Arc::new(Mutex::new(Held::default())),
            budget,
            list,
            worker: Mutex::new(None),
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
        let (listing, held) = match self.get(ino) {
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

    /// The listing held for `ino`, if any.
    pub fn get(&self, ino: u64) -> Option<Arc<ListedDir>> {
        self.held.lock().unwrap().listings.get(&ino).cloned()
    }

    /// Keeps a listing that the kernel has not read to the end yet. It stays even if it is
    /// bigger than the budget alone: the kernel is about to ask for the rest, and decoding a
    /// huge directory again for every batch would take time quadratic in its size.
    pub fn keep(&self, ino: u64, listing: Arc<ListedDir>) {
        let mut held = self.held.lock().unwrap();
        held.insert(ino, listing);
        held.evict_to(self.budget, ino);
    }

    /// Drops a listing read to its end.
    pub fn finished(&self, ino: u64) {
        self.held.lock().unwrap().remove(ino);
    }

    /// Lists the subdirectories of `listing` in the background.
    pub fn prepare_subdirectories(&self, listing: &ListedDir) {
        let mut worker = self.worker.lock().unwrap();
        for ino in listing.subdirectories() {
            let sender = worker.get_or_insert_with(|| self.spawn_worker());
            match sender.try_send(ino) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return,
                // The idle worker has ended: start another.
                Err(TrySendError::Disconnected(ino)) => {
                    let sender = self.spawn_worker();
                    let _ = sender.try_send(ino);
                    *worker = Some(sender);
                }
            }
        }
    }

    fn spawn_worker(&self) -> SyncSender<u64> {
        let (sender, receiver) = sync_channel(QUEUE_LEN);
        let held = Arc::downgrade(&self.held);
        let list = self.list.clone();
        let budget = self.budget;
        // Without the thread (out of resources) listings are decoded when asked for.
        let _ = std::thread::Builder::new()
            .name("pbsfs-listing".into())
            .spawn(move || prepare_listings(receiver, held, list, budget));
        sender
    }
}

fn prepare_listings(
    receiver: Receiver<u64>,
    held: std::sync::Weak<Mutex<Held>>,
    list: Arc<ListFn>,
    budget: usize,
) {
    while let Ok(ino) = receiver.recv_timeout(WORKER_IDLE) {
        let Some(held) = held.upgrade() else { return };
        {
            let held = held.lock().unwrap();
            if held.listings.contains_key(&ino) || held.entries >= budget {
                continue;
            }
        }
        let Some(listing) = list(ino) else { return };
        let mut held = held.lock().unwrap();
        if held.entries + listing.entries.len() <= budget {
            held.insert(ino, Arc::new(listing));
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
        assert!(cache.held.lock().unwrap().entries <= 25);
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
        assert_eq!(cache.held.lock().unwrap().entries, 0);
        // A full cache prepares nothing more in the background.
        for ino in 6..=7 {
            cache.keep(ino, Arc::new(list(ino).unwrap()));
        }
        cache.prepare_subdirectories(&list(5).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        assert!(cache.get(51).is_none() && cache.get(52).is_none());
        assert!(cache.held.lock().unwrap().entries <= 25);
    }

    #[test]
    fn an_idle_worker_ends_and_another_starts_when_needed() {
        let calls = Arc::new(AtomicUsize::new(0));
        let list = tree(calls);
        let cache = ListingCache::new(1000, list.clone());
        // A worker whose receiver is gone stands for one that ended while idle.
        let (dead, receiver) = sync_channel(1);
        drop(receiver);
        *cache.worker.lock().unwrap() = Some(dead);
        cache.prepare_subdirectories(&list(3).unwrap());
        assert_eq!(wait_for(&cache, 31).entries.len(), 10);
    }
}
