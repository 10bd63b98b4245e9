//! Read-ahead of a directory's files: hints the kernel to fetch the next ones while the
//! walker encodes the current one.

use std::path::PathBuf;

use super::fs_accessor::{FileStat, FileSystemAccessor};

/// Keeps the kernel reading the next big files of a directory while the walker encodes the
/// current one, so the disk and the CPUs work at the same time.
pub(super) struct ReadAhead {
    /// (index in the listing, path, bytes to read ahead) of the directory's big files.
    files: Vec<(usize, PathBuf, u64)>,
    /// `files[..done]` are at or before the walker; `files[done..next]` were hinted.
    done: usize,
    next: usize,
}

impl ReadAhead {
    /// Bytes hinted ahead of the walker at most.
    const WINDOW: u64 = 32 << 20;
    /// Bytes hinted per file: the kernel's own read-ahead takes over once it is read.
    const PER_FILE: u64 = 8 << 20;
    /// Small files are hinted too: each costs an extra open and close, but read one after
    /// another from a cold disk every one of them would be a wait for the device.
    const MIN_SIZE: u64 = 1;

    /// Over a directory's listing, in walk order.
    pub(super) fn new<'e>(list: impl Iterator<Item = (&'e PathBuf, &'e FileStat)>) -> Self {
        let files = list
            .enumerate()
            .filter(|(_, (_, stat))| stat.is_regular_file() && stat.size >= Self::MIN_SIZE)
            .map(|(i, (path, stat))| (i, path.clone(), stat.size.min(Self::PER_FILE)))
            .collect();
        ReadAhead {
            files,
            done: 0,
            next: 0,
        }
    }

    /// The walker is at entry `index`: hint files until the window ahead of it is full, in
    /// bytes or in the files `fs` keeps hinted.
    pub(super) fn advance<A: FileSystemAccessor + ?Sized>(&mut self, fs: &A, index: usize) {
        while self.done < self.files.len() && self.files[self.done].0 <= index {
            self.done += 1;
        }
        self.next = self.next.max(self.done);
        let mut ahead: u64 = self.files[self.done..self.next].iter().map(|f| f.2).sum();
        let kept = fs.read_hints_kept();
        while self.next < self.files.len() && ahead < Self::WINDOW && self.next - self.done < kept {
            let (_, path, len) = &self.files[self.next];
            fs.will_read(path, *len);
            ahead += len;
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::mem_fs::MemFs;

    /// `count` regular files of `size` bytes, in walk order.
    fn files(count: usize, size: u64) -> Vec<(PathBuf, FileStat)> {
        let stat = FileStat {
            mode: libc::S_IFREG | 0o644,
            size,
            ..Default::default()
        };
        (0..count)
            .map(|i| (PathBuf::from(format!("d/f{i:04}")), stat))
            .collect()
    }

    /// An accessor that records the hints and says it keeps `kept` (None: any number).
    fn recorder(kept: Option<usize>) -> MemFs {
        MemFs {
            read_hints_kept: kept,
            ..Default::default()
        }
    }

    /// How many files are hinted when the walker is at the first.
    fn hinted_at_the_first(list: &[(PathBuf, FileStat)], kept: Option<usize>) -> usize {
        let fs = recorder(kept);
        ReadAhead::new(list.iter().map(|(p, s)| (p, s))).advance(&fs, 0);
        let hinted = fs.read_hints.lock().unwrap().len();
        hinted
    }

    /// An accessor that keeps only so many hinted files (a pull's agent client) gets no
    /// more: a directory of tiny files hinted whole would push out the first ones before the
    /// walker gets to them.
    #[test]
    fn tiny_files_are_hinted_no_more_ahead_than_the_accessor_keeps_each_once() {
        let list = files(1000, 100);
        let fs = recorder(Some(64));
        let mut read_ahead = ReadAhead::new(list.iter().map(|(p, s)| (p, s)));
        for index in 0..list.len() {
            read_ahead.advance(&fs, index);
            // Hinted so far: the files after the first up to some k; ahead of the walker
            // are those after `index`.
            let hinted = fs.read_hints.lock().unwrap().len();
            let ahead = hinted - index;
            let left = list.len() - 1 - index;
            assert_eq!(ahead, left.min(64), "at {index}");
        }
        // The walker reads the first file at once: hinting it would be of no use.
        let hints = fs.read_hints.lock().unwrap().clone();
        let expected: Vec<PathBuf> = list.into_iter().skip(1).map(|(p, _)| p).collect();
        assert_eq!(hints, expected);
    }

    #[test]
    fn big_files_are_hinted_up_to_the_byte_window() {
        // 8 MiB per file, 32 MiB ahead of the walker's file.
        assert_eq!(hinted_at_the_first(&files(20, 100 << 20), None), 4);
    }

    /// A local accessor: the kernel keeps any number of hints.
    #[test]
    fn tiny_files_are_hinted_up_to_the_byte_window_where_hints_cost_nothing_to_keep() {
        assert_eq!(hinted_at_the_first(&files(1000, 100), None), 999);
    }
}
