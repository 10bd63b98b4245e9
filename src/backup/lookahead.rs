//! The look-ahead of metadata change detection: runs of unchanged regular files (with the
//! directories and other entries between them) are held back until the run ends; then the
//! previous payload chunks covering the run are re-used if they bring little padding, or
//! the held entries are encoded normally (pxar.md §9.4, chunker.md §5.2). This type decides;
//! the walker encodes.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::fs_accessor::FileStat;
use super::upload::KnownChunk;
use crate::pxar::format::HEADER_SIZE;
use crate::pxar::metadata::Metadata;

/// Re-use previous chunks only if at most this share of the re-used bytes is padding.
const CHUNK_PADDING_THRESHOLD: f64 = 0.1;

/// Entries the look-ahead holds before it is flushed. The official client allows about as
/// many as it may open files (usually far more); entries here hold no descriptor, only a
/// path and metadata, so this bounds memory to some tens of MiB.
const LOOKAHEAD_CACHE_SIZE: usize = 65536;

/// An entry as the previous snapshot's metadata archive has it.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviousEntry {
    pub metadata: Metadata,
    /// Present for a regular file whose content is in the previous payload stream.
    pub file: Option<PreviousFile>,
}

/// Where a regular file's content is in the previous payload stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreviousFile {
    pub size: u64,
    /// Offset of its PAYLOAD header in the previous payload stream.
    pub payload_offset: u64,
}

/// A chunk of the previous payload index selected for re-use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReusableChunk {
    pub chunk: KnownChunk,
    /// Bytes of the chunk not covered by the re-used range.
    pub padding: u64,
    /// End offset in the previous payload stream: with the digest, the identity of the
    /// index entry (equal digests at different positions are different entries).
    pub end_offset: u64,
}

impl ReusableChunk {
    fn same_entry_as(&self, other: &ReusableChunk) -> bool {
        self.chunk.digest == other.chunk.digest && self.end_offset == other.end_offset
    }
}

/// The previous-index chunks covering a payload range, and how far they overhang it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkRun {
    pub chunks: Vec<ReusableChunk>,
    pub start_padding: u64,
    pub end_padding: u64,
}

/// The previous snapshot of the group (metadata change detection). The walker tells it
/// which directory it is in; lookups are by name in that directory.
pub trait PreviousArchive {
    fn enter_directory(&mut self, name: &[u8]) -> Result<()>;
    fn leave_directory(&mut self);
    /// The entry of that name in the current directory.
    fn lookup(&mut self, name: &[u8]) -> Result<Option<PreviousEntry>>;
    /// The previous payload index entries covering `range`.
    fn chunks_covering(&self, range: Range<u64>) -> Result<ChunkRun>;
    /// Size of the previous payload stream.
    fn payload_size(&self) -> u64;
    /// An inode last changed (ctime) before this time, in seconds since the epoch, has the
    /// attributes the previous snapshot recorded: it was made after that time.
    fn unchanged_before(&self) -> i64;
    /// The content of a file the previous snapshot holds (its PAYLOAD item at
    /// `file.payload_offset`), read from the previous chunks.
    fn read_content(&self, file: &PreviousFile) -> Result<Vec<u8>>;
}

/// An entry of a directory listing, as the walker met it.
#[derive(Clone)]
pub(super) struct ListEntry {
    pub name: Vec<u8>,
    pub path: PathBuf,
    pub stat: FileStat,
}

/// An entry whose encoding waits for the look-ahead's decision.
pub(super) enum Held {
    /// A regular file; its copy in the previous snapshot for a re-usable one, `None` for a
    /// further name of a multiply-linked file.
    File(ListEntry, Metadata, Option<PreviousFile>),
    DirStart(ListEntry, Metadata),
    DirEnd,
    Other(ListEntry, Metadata),
}

/// What became of a regular file offered to the look-ahead.
pub(super) enum Offer {
    /// Held (a re-usable file continuing the run, or a further name of a held file).
    Held,
    /// Re-usable, but not contiguous with the held run: flush that run (keeping its last
    /// chunk), then [`Lookahead::start_run`] with these.
    NewRun(ListEntry, Metadata, PreviousFile),
    /// Changed (or not in the previous snapshot): flush, then encode it.
    Changed(ListEntry, Metadata),
}

/// How a held run ends.
pub(super) enum Flush {
    /// Encode the held entries, reading every file.
    Encode,
    Reuse(ReusePlan),
}

/// Re-use of the previous chunks covering a held run.
pub(super) struct ReusePlan {
    /// The chunk held back from the previous run, which this run does not start in:
    /// injected before anything else.
    pub inject_first: Option<ReusableChunk>,
    /// The chunks covering the run, in order.
    pub chunks: Vec<ReusableChunk>,
    /// Bytes of the first chunk before the run's first file.
    pub start_padding: u64,
    /// The run starts with the previous stream's first chunk, which holds a start marker
    /// identical to ours, and encoding the held entries writes no payload: the marker
    /// already written may be dropped in favour of that chunk's.
    pub starts_previous_stream: bool,
}

/// See the module documentation.
pub(super) struct Lookahead<'h> {
    previous: &'h mut dyn PreviousArchive,
    entries: Vec<Held>,
    /// Range of the previous payload stream the held re-usable files cover.
    range: Range<u64>,
    /// The last chunk of the previous flush, held back because the next run may start in
    /// it.
    last_chunk: Option<ReusableChunk>,
    /// Multiply-linked files seen by the look-ahead.
    hardlinks: HashSet<(u64, u64)>,
    /// Highest previous payload offset accepted for re-use: references must increase.
    last_reusable_offset: Option<u64>,
}

impl<'h> Lookahead<'h> {
    pub(super) fn new(previous: &'h mut dyn PreviousArchive) -> Self {
        Lookahead {
            previous,
            entries: Vec::new(),
            range: 0..0,
            last_chunk: None,
            hardlinks: HashSet::new(),
            last_reusable_offset: None,
        }
    }

    pub(super) fn previous(&mut self) -> &mut dyn PreviousArchive {
        &mut *self.previous
    }

    /// Entries are held: everything met goes in until the run ends.
    pub(super) fn is_holding(&self) -> bool {
        !self.entries.is_empty()
    }

    pub(super) fn is_full(&self) -> bool {
        self.entries.len() >= LOOKAHEAD_CACHE_SIZE
    }

    pub(super) fn hold(&mut self, held: Held) {
        self.entries.push(held);
    }

    /// Holds a re-usable file, or says why not. `previous` is the entry of that name in the
    /// previous snapshot.
    pub(super) fn offer_file(
        &mut self,
        entry: ListEntry,
        metadata: Metadata,
        previous: Option<&PreviousEntry>,
    ) -> Result<Offer> {
        if entry.stat.nlink > 1 {
            let key = (entry.stat.dev, entry.stat.ino);
            if self.hardlinks.contains(&key) {
                // Resolved to a hardlink (or its first name) when encoded.
                self.hold(Held::File(entry, metadata, None));
                return Ok(Offer::Held);
            }
            self.hardlinks.insert(key);
        }
        let Some((file, range)) = self.reusable_range(&entry, &metadata, previous)? else {
            return Ok(Offer::Changed(entry, metadata));
        };
        if self.range.end == 0 {
            self.range = range.start..range.start;
        }
        if self.range.end != range.start {
            return Ok(Offer::NewRun(entry, metadata, file));
        }
        self.range.end = range.end;
        self.hold(Held::File(entry, metadata, Some(file)));
        Ok(Offer::Held)
    }

    /// Starts a run with a file [`Offer::NewRun`] returned, after the old run was flushed.
    pub(super) fn start_run(&mut self, entry: ListEntry, metadata: Metadata, file: PreviousFile) {
        // `reusable_range` checked that the end does not overflow.
        self.range = file.payload_offset..payload_end(&file).unwrap_or(file.payload_offset);
        self.hold(Held::File(entry, metadata, Some(file)));
    }

    /// Where the held run starts in the previous payload stream: a held file's payload is
    /// referenced at the run's new position plus its offset from here.
    pub(super) fn run_start(&self) -> u64 {
        self.range.start
    }

    /// The previous snapshot's copy of this file and its payload range `[PAYLOAD header,
    /// end of data)`, if the file is unchanged (official `is_reusable_entry`).
    fn reusable_range(
        &mut self,
        entry: &ListEntry,
        metadata: &Metadata,
        previous: Option<&PreviousEntry>,
    ) -> Result<Option<(PreviousFile, Range<u64>)>> {
        let Some((previous, file)) = previous.and_then(|p| Some((p, p.file?))) else {
            return Ok(None);
        };
        if previous.metadata != *metadata || file.size != entry.stat.size {
            return Ok(None);
        }
        // An archive with non-increasing payload offsets cannot be referenced in order.
        if self
            .last_reusable_offset
            .is_some_and(|last| file.payload_offset <= last)
        {
            return Ok(None);
        }
        self.last_reusable_offset = Some(file.payload_offset);
        let end = payload_end(&file).context("previous payload reference overflows")?;
        Ok(Some((file, file.payload_offset..end)))
    }

    /// Decides how the held run ends: re-use if the padding the previous chunks bring is
    /// small enough. `first_names` holds the multiply-linked files already encoded (their
    /// further names become hardlinks). An error reading the previous index means
    /// [`Flush::Encode`], with the error for a warning.
    pub(super) fn plan_flush<T>(
        &mut self,
        first_names: &HashMap<(u64, u64), T>,
    ) -> (Flush, Option<anyhow::Error>) {
        let range = self.range.clone();
        if range.is_empty() {
            return (Flush::Encode, None);
        }
        let run = match self.previous.chunks_covering(range.clone()) {
            Ok(run) if !run.chunks.is_empty() => run,
            Ok(_) => return (Flush::Encode, None),
            Err(err) => return (Flush::Encode, Some(err)),
        };
        let prev_last = self.last_chunk.take();
        let mut padding = run.start_padding + run.end_padding;
        let total = (range.end - range.start) + padding;
        let mut chunks = run.chunks;
        let continues_last = prev_last.is_some_and(|last| last.same_entry_as(&chunks[0]));
        if let Some(last) = prev_last.filter(|_| continues_last) {
            // The held-back chunk is this run's first: its used part is not padding.
            padding = padding.saturating_sub(last.chunk.size - last.padding);
        }
        if padding as f64 / total as f64 > CHUNK_PADDING_THRESHOLD {
            self.last_chunk = prev_last;
            return (Flush::Encode, None);
        }
        if let Some(last) = prev_last.filter(|_| continues_last) {
            chunks[0].padding = chunks[0]
                .padding
                .saturating_sub(last.chunk.size - last.padding);
        }
        let first_start = chunks[0].end_offset - chunks[0].chunk.size;
        let plan = ReusePlan {
            inject_first: prev_last.filter(|_| !continues_last),
            starts_previous_stream: first_start == 0 && self.reads_no_file(first_names),
            chunks,
            start_padding: run.start_padding,
        };
        (Flush::Reuse(plan), None)
    }

    /// True if encoding the held entries with re-use writes nothing to the payload stream:
    /// every further name of a multiply-linked file resolves to a hardlink.
    fn reads_no_file<T>(&self, first_names: &HashMap<(u64, u64), T>) -> bool {
        let mut linked: HashSet<(u64, u64)> = HashSet::new();
        self.entries.iter().all(|held| match held {
            Held::File(entry, _, previous) => {
                let key = (entry.stat.dev, entry.stat.ino);
                if previous.is_some() {
                    linked.insert(key);
                    true
                } else {
                    linked.contains(&key) || first_names.contains_key(&key)
                }
            }
            _ => true,
        })
    }

    /// Hands out the held entries (and a chunk held back from an earlier run, to inject
    /// before them); the next run starts where this one ended.
    pub(super) fn take_entries(&mut self) -> (Option<ReusableChunk>, Vec<Held>) {
        self.range = self.range.end..self.range.end;
        (self.last_chunk.take(), std::mem::take(&mut self.entries))
    }

    /// Holds the run's last chunk back for a following run.
    pub(super) fn keep_last_chunk(&mut self, chunk: Option<ReusableChunk>) {
        self.last_chunk = chunk;
    }

    /// The chunks end the previous payload stream (so with its tail marker).
    pub(super) fn ends_previous_stream(&self, chunks: &[ReusableChunk]) -> bool {
        chunks.last().map(|c| c.end_offset) == Some(self.previous.payload_size())
    }
}

/// End of a previous file's payload range: its PAYLOAD header and its content.
fn payload_end(file: &PreviousFile) -> Option<u64> {
    file.payload_offset
        .checked_add(HEADER_SIZE)?
        .checked_add(file.size)
}
