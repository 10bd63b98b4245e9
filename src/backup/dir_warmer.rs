//! Directories warmed ahead of the walk: on a cold disk every `lstat` of the walk waits for
//! the device, one inode table block at a time. Threads that list and stat the directories
//! the walker will enter next keep several requests in flight, so the walk finds their
//! inodes in the cache.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Threads listing ahead: enough to keep a disk's queue busy without crowding the CPUs
/// the walk and the chunk upload need.
const WARMING_THREADS: usize = 2;

/// Lists and stats directories on background threads, in the order they are given.
pub(super) struct DirWarmer {
    queue: Mutex<Option<Sender<PathBuf>>>,
}

impl DirWarmer {
    pub(super) fn new() -> Self {
        DirWarmer {
            queue: Mutex::new(None),
        }
    }

    /// Queues directories (absolute paths) to warm; threads start on first use.
    pub(super) fn warm(&self, dirs: impl IntoIterator<Item = PathBuf>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sender = queue.get_or_insert_with(start_threads);
        for dir in dirs {
            // The threads only end with the sender: a send cannot fail while it exists.
            let _ = sender.send(dir);
        }
    }
}

fn start_threads() -> Sender<PathBuf> {
    let (sender, receiver) = mpsc::channel::<PathBuf>();
    let receiver = Arc::new(Mutex::new(receiver));
    for i in 0..WARMING_THREADS {
        let receiver = receiver.clone();
        // Without threads the walk is only slower: no error to report.
        let _ = std::thread::Builder::new()
            .name(format!("dir-warmer-{i}"))
            .spawn(move || warm_until_closed(&receiver));
    }
    sender
}

fn warm_until_closed(receiver: &Mutex<Receiver<PathBuf>>) {
    loop {
        let next = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(dir) = next else {
            return;
        };
        // Errors are the walker's to report when it gets there.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let _ = std::fs::symlink_metadata(entry.path());
        }
    }
}
