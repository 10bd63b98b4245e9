//! Where the reader of each open file is: whether a read continues a sequential run (then
//! the chunks ahead are fetched in the background), and which part of the file such a run
//! has left behind (then its chunks can leave the chunk cache: the kernel's page cache holds
//! that data now, and the cache's memory is better spent on the chunks ahead).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::store::range::IndexReader;

/// How far from the end of the previous read a read still counts as sequential: the
/// kernel's read-ahead sends several requests at once, and they arrive slightly out of order.
const SEQUENTIAL_WINDOW: u64 = 8 << 20;

/// A run counts as sequential once it has read this many bytes: a random reader's jump
/// that happens to land within the window of its last read (one in 64 in a 1 GiB file)
/// must not set off a whole read-ahead window.
const MIN_RUN: u64 = 1 << 20;

/// How far ahead of a sequential reader chunks are fetched: far enough that decoding on
/// the workers keeps both cores busy even with 16 MiB chunks, but never more than a
/// quarter of the chunk cache, so that fetched chunks are not evicted before they are read.
const READ_AHEAD: u64 = 96 << 20;

/// Acts on a read that ended at `read_end` in a file of `file_size` bytes whose data starts
/// at `start` in `data`: a sequential reader gets the chunks ahead of it fetched in the
/// background, and those it has passed released (they are in the kernel's page cache now;
/// holding them too would only push out what is still to come).
pub fn follow_reader(
    data: &IndexReader,
    start: u64,
    file_size: u64,
    read_end: u64,
    pattern: &ReadPattern,
) {
    if !pattern.sequential {
        return;
    }
    if read_end < file_size {
        let window = read_ahead_window(data);
        data.prefetch(start + read_end, window.min(file_size - read_end));
    }
    if let Some(passed) = &pattern.passed {
        data.release(start, start + passed.start..start + passed.end);
    }
}

/// Where in an archive's data stream the latest reads went, whatever file they were of.
/// `tar`, `rsync` and `cp -a` read the files of a tree one after another in archive order:
/// no small file alone makes a sequential run, but together they read the data stream
/// from front to back, and the chunks ahead of them can be fetched in the background as
/// for one big file.
#[derive(Default)]
pub struct StreamCursor {
    /// The stream offset where the run would continue, and the bytes the run has read.
    state: Mutex<(u64, u64)>,
}

impl StreamCursor {
    /// Records a read of `len` bytes at stream offset `at`: whether the reads are now in a
    /// run through the stream.
    pub fn read(&self, at: u64, len: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        let (next, run_bytes) = &mut *state;
        let continues = at.abs_diff(*next) <= SEQUENTIAL_WINDOW;
        if !continues {
            *run_bytes = 0;
        }
        *run_bytes += len;
        *next = at + len;
        continues && *run_bytes >= MIN_RUN
    }
}

/// Fetches the chunks ahead of stream offset `from` (the end of a read) in the background.
pub fn read_ahead_in_stream(data: &IndexReader, from: u64) {
    data.prefetch(from, read_ahead_window(data));
}

fn read_ahead_window(data: &IndexReader) -> u64 {
    data.chunk_capacity()
        .map_or(READ_AHEAD, |bytes| READ_AHEAD.min(bytes as u64 / 4))
}

/// What a read on an open file means for the chunk cache.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadPattern {
    pub sequential: bool,
    /// File offsets that the sequential run has now passed for good.
    pub passed: Option<Range<u64>>,
}

struct OpenFile {
    ino: u64,
    /// The offset where a sequential read would continue.
    next: u64,
    /// Data before this offset has been reported as passed.
    passed: u64,
    /// Bytes read by the current run of reads, each within the window of the last.
    run_bytes: u64,
}

/// The open file handles of one filesystem.
pub struct OpenFiles {
    files: Mutex<HashMap<u64, OpenFile>>,
    next_fh: AtomicU64,
}

impl Default for OpenFiles {
    fn default() -> Self {
        OpenFiles {
            files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }
}

impl OpenFiles {
    /// A new handle for inode `ino`.
    pub fn open(&self, ino: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let file = OpenFile {
            ino,
            next: 0,
            passed: 0,
            run_bytes: 0,
        };
        self.files.lock().unwrap().insert(fh, file);
        fh
    }

    pub fn close(&self, fh: u64) {
        self.files.lock().unwrap().remove(&fh);
    }

    /// Records a read of `size` bytes at `offset` on handle `fh` of a file of `file_size`
    /// bytes. A run counts what its reads get, not what they ask for: a small file read in
    /// one big request is no run of its own. Data counts as passed once the reader is
    /// `SEQUENTIAL_WINDOW` beyond it (requests still in flight may want it), and not while
    /// another handle of the same file is reading before it.
    pub fn read(&self, fh: u64, offset: u64, size: u32, file_size: u64) -> ReadPattern {
        let mut files = self.files.lock().unwrap();
        let Some(file) = files.get_mut(&fh) else {
            return ReadPattern {
                sequential: false,
                passed: None,
            };
        };
        let continues = offset.abs_diff(file.next) <= SEQUENTIAL_WINDOW;
        if !continues {
            file.run_bytes = 0;
        }
        let got = u64::from(size).min(file_size.saturating_sub(offset));
        file.run_bytes += got;
        file.next = offset + got;
        let sequential = continues && file.run_bytes >= MIN_RUN;
        let behind = offset.saturating_sub(SEQUENTIAL_WINDOW);
        if !sequential {
            file.passed = behind; // a new run starts here
        }
        if !sequential || behind <= file.passed {
            return ReadPattern {
                sequential,
                passed: None,
            };
        }
        let passed = file.passed..behind;
        file.passed = behind;
        let ino = file.ino;
        let still_read = files
            .iter()
            .any(|(other, f)| *other != fh && f.ino == ino && f.next < passed.end);
        ReadPattern {
            sequential,
            passed: (!still_read).then_some(passed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn passed(files: &OpenFiles, fh: u64, offset: u64) -> Option<Range<u64>> {
        let pattern = files.read(fh, offset, MIB as u32, u64::MAX);
        assert!(pattern.sequential, "read at {offset} should be sequential");
        pattern.passed
    }

    #[test]
    fn a_sequential_run_passes_what_lies_a_window_behind_it() {
        let files = OpenFiles::default();
        let fh = files.open(5);
        for n in 0..=8 {
            assert_eq!(passed(&files, fh, n * MIB), None);
        }
        assert_eq!(passed(&files, fh, 9 * MIB), Some(0..MIB));
        assert_eq!(passed(&files, fh, 10 * MIB), Some(MIB..2 * MIB));
        // Slightly out of order (kernel read-ahead): nothing is passed twice.
        assert_eq!(passed(&files, fh, 10 * MIB), None);
        assert_eq!(passed(&files, fh, 12 * MIB), Some(2 * MIB..4 * MIB));
    }

    #[test]
    fn a_jump_starts_a_new_run() {
        let files = OpenFiles::default();
        let fh = files.open(5);
        files.read(fh, 0, 4096, u64::MAX);
        let jump = files.read(fh, 100 * MIB, MIB as u32, u64::MAX);
        assert_eq!(
            jump,
            ReadPattern {
                sequential: false,
                passed: None
            }
        );
        assert_eq!(passed(&files, fh, 101 * MIB), Some(92 * MIB..93 * MIB));
        // Back to the start: the run there passes its data again.
        assert!(!files.read(fh, 0, MIB as u32, u64::MAX).sequential);
        for n in 1..=8 {
            assert_eq!(passed(&files, fh, n * MIB), None);
        }
        assert_eq!(passed(&files, fh, 9 * MIB), Some(0..MIB));
    }

    #[test]
    fn nothing_is_passed_while_another_handle_reads_behind() {
        let files = OpenFiles::default();
        let ahead = files.open(5);
        let behind = files.open(5);
        let other_file = files.open(6);
        for n in 0..=8 {
            files.read(ahead, n * MIB, MIB as u32, u64::MAX);
        }
        files.read(behind, 0, 4096, u64::MAX);
        files.read(other_file, 0, MIB as u32, u64::MAX);
        assert_eq!(passed(&files, ahead, 9 * MIB), None);
        files.close(behind);
        assert_eq!(passed(&files, ahead, 10 * MIB), Some(MIB..2 * MIB));
    }

    #[test]
    fn random_reads_that_land_close_are_not_a_run() {
        let files = OpenFiles::default();
        let fh = files.open(5);
        // 4 KiB reads, each a few MiB from the last: within the window, but no run.
        for n in [300u64, 302, 297, 301, 305] {
            assert!(
                !files.read(fh, n * MIB, 4096, u64::MAX).sequential,
                "read at {n} MiB"
            );
        }
        // Reading on from there makes a run once it has read enough.
        let mut offset = 305 * MIB + 4096;
        let mut sequential = false;
        for _ in 0..(MIN_RUN / (128 << 10)) {
            sequential = files.read(fh, offset, 128 << 10, u64::MAX).sequential;
            offset += 128 << 10;
        }
        assert!(sequential);
    }

    #[test]
    fn small_files_read_in_archive_order_make_a_run_through_the_stream() {
        let cursor = StreamCursor::default();
        // 40 files of 30 KiB, each followed by a header, read one after another.
        let mut at = 0;
        let mut runs = Vec::new();
        for _ in 0..40 {
            runs.push(cursor.read(at, 30 << 10));
            at += (30 << 10) + 200;
        }
        let first_run = runs.iter().position(|&run| run).unwrap();
        assert_eq!(first_run as u64, MIN_RUN / (30 << 10)); // once 1 MiB has been read
        assert!(runs[first_run..].iter().all(|&run| run));
        // Another reader elsewhere in the stream breaks the run; so does a jump back.
        assert!(!cursor.read(at + 500 * MIB, 4096));
        assert!(!cursor.read(at, 30 << 10));
    }

    #[test]
    fn unknown_handles_are_not_sequential() {
        let files = OpenFiles::default();
        assert!(!files.read(42, 0, 4096, u64::MAX).sequential);
    }
}
