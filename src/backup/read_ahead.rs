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

    /// The walker is at entry `index`: hint files until the window ahead of it is full.
    pub(super) fn advance<A: FileSystemAccessor + ?Sized>(&mut self, fs: &A, index: usize) {
        while self.done < self.files.len() && self.files[self.done].0 <= index {
            self.done += 1;
        }
        self.next = self.next.max(self.done);
        let mut ahead: u64 = self.files[self.done..self.next].iter().map(|f| f.2).sum();
        while self.next < self.files.len() && ahead < Self::WINDOW {
            let (_, path, len) = &self.files[self.next];
            fs.will_read(path, *len);
            ahead += len;
            self.next += 1;
        }
    }
}
