//! The walker in metadata mode against a previous snapshot made up in memory: which
//! attributes and contents it reads, and where an unchanged file's content comes from when
//! the previous chunks around it are not re-used.

use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{bail, Result};

use super::archive::{
    create_archive, ArchiveHooks, ArchiveOptions, ArchiveStats, ChunkRun, PreviousArchive,
    PreviousEntry, PreviousFile, ReusableChunk,
};
use super::capture::MetadataCapture;
use super::fs_accessor::FileSystemAccessor;
use super::fs_flags::{feature, magic};
use super::mem_fs::MemFs;
use super::payload::PlainPayload;
use super::upload::KnownChunk;
use crate::pxar::encoder::Encoder;
use crate::pxar::format::HEADER_SIZE;

const REG: u32 = libc::S_IFREG | 0o644;
const DIR: u32 = libc::S_IFDIR | 0o755;
/// The one previous payload chunk: far bigger than the files, so re-using it would be
/// mostly padding.
const CHUNK: u64 = 1 << 20;

/// Files `a`, `b`, `c` in the previous payload stream, one after another, in a single
/// chunk; their previous contents are the upper-case versions of the current ones.
struct MadeUpPrevious {
    entries: Vec<(Vec<u8>, PreviousEntry, Vec<u8>)>,
    unchanged_before: i64,
    chunks_unreadable: bool,
}

impl MadeUpPrevious {
    fn of(fs: &MemFs, unchanged_before: i64) -> Self {
        let mut capture = MetadataCapture::new(feature::DEFAULT, magic::EXT4);
        let mut offset = HEADER_SIZE;
        let mut entries = Vec::new();
        for name in ["a", "b", "c"] {
            let path = Path::new(name);
            let stat = fs.lstat(path).unwrap();
            let metadata = capture.metadata(fs, path, &stat).unwrap();
            let content = fs.nodes[path].1.to_ascii_uppercase();
            let file = PreviousFile {
                size: stat.size,
                payload_offset: offset,
            };
            offset += HEADER_SIZE + stat.size;
            let entry = PreviousEntry {
                metadata,
                file: Some(file),
            };
            entries.push((name.as_bytes().to_vec(), entry, content));
        }
        fs.xattr_listings.store(0, Ordering::Relaxed);
        MadeUpPrevious {
            entries,
            unchanged_before,
            chunks_unreadable: false,
        }
    }
}

impl PreviousArchive for MadeUpPrevious {
    fn enter_directory(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn leave_directory(&mut self) {}
    fn lookup(&mut self, name: &[u8]) -> Result<Option<PreviousEntry>> {
        Ok(self
            .entries
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, entry, _)| entry.clone()))
    }
    fn chunks_covering(&self, range: Range<u64>) -> Result<ChunkRun> {
        let (start_padding, end_padding) = (range.start, CHUNK - range.end);
        Ok(ChunkRun {
            chunks: vec![ReusableChunk {
                chunk: KnownChunk {
                    size: CHUNK,
                    digest: [7; 32],
                },
                padding: start_padding + end_padding,
                end_offset: CHUNK,
            }],
            start_padding,
            end_padding,
        })
    }
    fn payload_size(&self) -> u64 {
        CHUNK
    }
    fn unchanged_before(&self) -> i64 {
        self.unchanged_before
    }
    fn read_content(&self, file: &PreviousFile) -> Result<Vec<u8>> {
        if self.chunks_unreadable {
            bail!("chunk damaged");
        }
        let (_, _, content) = self
            .entries
            .iter()
            .find(|(_, entry, _)| entry.file == Some(*file))
            .expect("a file of the previous snapshot");
        Ok(content.clone())
    }
}

/// Inode change times are 0 (the epoch): before any snapshot.
fn tree() -> MemFs {
    let mut fs = MemFs::default();
    fs.add("", DIR, 1, b"");
    fs.add("a", REG, 2, b"aaaa");
    fs.add("b", REG, 3, b"bbbbbbbb");
    fs.add("c", REG, 4, b"cc");
    fs.xattr("b", b"user.note", b"kept");
    fs
}

/// Walks `fs` against `previous` into a split archive; returns the payload stream.
fn walk(fs: &MemFs, previous: &mut MadeUpPrevious) -> (Vec<u8>, ArchiveStats) {
    let hooks = ArchiveHooks {
        observer: None,
        previous: Some(previous),
    };
    let options = ArchiveOptions::default();
    let (_, payload, stats) = create_archive(fs, &options, hooks, |root, prelude| {
        Encoder::new_v2(Vec::new(), PlainPayload::new(Vec::new()), root, prelude)
    })
    .unwrap();
    let mut payload = payload.unwrap().into_inner();
    payload.flush().unwrap();
    (payload, stats)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn unchanged_files_are_copied_from_the_previous_chunks_without_opening_them() {
    let fs = tree();
    let mut previous = MadeUpPrevious::of(&fs, 1_000);
    let (payload, stats) = walk(&fs, &mut previous);
    assert_eq!((stats.copied_files, stats.copied_bytes), (3, 14));
    assert_eq!((stats.reused_files, stats.reread_files), (0, 0));
    assert_eq!(fs.content_reads.load(Ordering::Relaxed), 0);
    // Only the root's attributes are read: it is not looked up in the previous snapshot.
    assert_eq!(stats.attributes_read, 0);
    assert_eq!(fs.xattr_listings.load(Ordering::Relaxed), 1);
    assert!(contains(&payload, b"AAAA") && contains(&payload, b"BBBBBBBB"));
    assert!(!contains(&payload, b"aaaa"));
}

#[test]
fn unreadable_previous_chunks_make_the_files_read_from_the_disk() {
    let fs = tree();
    let mut previous = MadeUpPrevious::of(&fs, 1_000);
    previous.chunks_unreadable = true;
    let (payload, stats) = walk(&fs, &mut previous);
    assert_eq!((stats.reread_files, stats.reread_bytes), (3, 14));
    assert_eq!(stats.copied_files, 0);
    assert_eq!(stats.warnings, 1, "one warning for all of them");
    assert!(fs.content_reads.load(Ordering::Relaxed) >= 3);
    assert!(contains(&payload, b"aaaa") && contains(&payload, b"bbbbbbbb"));
}

#[test]
fn inodes_changed_since_the_previous_snapshot_have_their_attributes_read() {
    let fs = tree();
    // The previous snapshot is older than every inode change.
    let mut previous = MadeUpPrevious::of(&fs, 0);
    let (_, stats) = walk(&fs, &mut previous);
    assert_eq!(stats.attributes_read, 3);
    assert_eq!(fs.xattr_listings.load(Ordering::Relaxed), 4);
    // Same attributes as recorded: still unchanged, so still copied.
    assert_eq!(stats.copied_files, 3);

    // A changed mode is noticed whatever the times say.
    let mut fs = tree();
    let mut previous = MadeUpPrevious::of(&fs, 1_000);
    fs.nodes.get_mut(Path::new("b")).unwrap().0.mode = libc::S_IFREG | 0o600;
    let (_, stats) = walk(&fs, &mut previous);
    assert_eq!(stats.attributes_read, 1, "{stats:?}");
    assert_eq!((stats.copied_files, stats.files), (2, 3));
}
