//! The previous snapshot of a group as metadata change detection sees it: its `.mpxar`
//! read at random through the goodbye tables (lookups by name, directory by directory, as
//! the walker goes) and its `.ppxar.didx`, whose chunks are re-used for unchanged files
//! (pxar.md §9.4, chunker.md §5.2).

use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::archive::{ChunkRun, PreviousArchive, PreviousEntry, PreviousFile, ReusableChunk};
use super::protection::Protection;
use super::upload::KnownChunk;
use crate::format::index::{AnyIndex, DynamicIndex};
use crate::format::read_at::ReadAt;
use crate::pxar::accessor::Accessor;
use crate::pxar::entry::{Entry, EntryKind, FileData};
use crate::pxar::format::{Header, HEADER_SIZE, PXAR_PAYLOAD};
use crate::store::access::SnapshotAccess;
use crate::store::open::{open_archive, snapshot_chunks, OpenedArchive};
use crate::store::range::IndexReader;

/// Decoded chunks of the previous metadata archive kept while walking.
const METADATA_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// How far the metadata archive is fetched ahead of the walk: from the start of the
/// directory entered, into which the walk's lookups go next. Half the cache, so read-ahead
/// never pushes out what the walk is reading.
const METADATA_READ_AHEAD: u64 = METADATA_CACHE_BYTES as u64 / 2;

/// The previous snapshot's split archive `<name>.mpxar` / `<name>.ppxar`.
pub struct PreviousSnapshot {
    accessor: Accessor,
    /// The directory the walker is in; `None` where the previous snapshot had no such
    /// directory (then nothing below it is re-usable).
    dirs: Vec<Option<Entry>>,
    payload_index: DynamicIndex,
    /// The payload stream, for contents re-encoded from the previous chunks.
    payload: Arc<IndexReader>,
    /// The metadata stream, fetched ahead of the walk.
    meta: Arc<IndexReader>,
    /// The last entry looked up: the walker enters a directory right after looking it up.
    last_lookup: Option<(Vec<u8>, Entry)>,
    unchanged_before: i64,
    lookup_errors: u64,
}

impl PreviousSnapshot {
    /// Opens archive `base` (`root` for `root.mpxar.didx` + `root.ppxar.didx`) of
    /// `previous`, to be re-used by a run protected by `protection` (the key decrypts the
    /// previous archive). `Ok(None)` if the snapshot has no such split archive; an error if it
    /// has but cannot be read or re-used (a [`NotReusable`](super::protection::NotReusable)
    /// for another key or crypt mode).
    pub fn open(
        previous: &dyn SnapshotAccess,
        base: &str,
        protection: &Protection,
    ) -> Result<Option<Self>> {
        let dir = previous.dir();
        let manifest = previous.manifest();
        let meta_name = format!("{base}.mpxar.didx");
        let payload_name = format!("{base}.ppxar.didx");
        if manifest.file(&meta_name).is_none() || manifest.file(&payload_name).is_none() {
            return Ok(None);
        }
        protection.check_previous(manifest, &[&meta_name, &payload_name])?;
        let chunks = snapshot_chunks(
            previous,
            protection.chunk_key().cloned(),
            METADATA_CACHE_BYTES,
            1,
        );
        let OpenedArchive::Pxar(archive) = open_archive(previous, &meta_name, chunks)? else {
            bail!("{meta_name} of {dir} is not a pxar archive");
        };
        let (payload_index, payload) = match &archive.payload {
            Some(payload) => match payload.index() {
                AnyIndex::Dynamic(index) => (index.clone(), payload.clone()),
                _ => bail!("{payload_name} of {dir} is not a dynamic index"),
            },
            None => bail!("{meta_name} of {dir} has no payload stream"),
        };
        archive.meta.prefetch(0, METADATA_READ_AHEAD);
        let accessor = archive
            .accessor()
            .with_context(|| format!("cannot open {meta_name} of {dir}"))?;
        let root = accessor.root()?;
        // Snapshots are named after the time their backup started (the default here and in
        // the official client), and a push never takes a time in the future: everything
        // captured for it was read after that time. Bounded by now against a wrong clock.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Ok(Some(PreviousSnapshot {
            accessor,
            dirs: vec![Some(root)],
            payload_index,
            payload,
            meta: archive.meta.clone(),
            last_lookup: None,
            unchanged_before: dir.time.min(now),
            lookup_errors: 0,
        }))
    }

    /// Lookups that failed (a damaged previous archive): those files were read again.
    pub fn lookup_errors(&self) -> u64 {
        self.lookup_errors
    }

    fn lookup_entry(&mut self, name: &[u8]) -> Option<Entry> {
        if let Some((last, entry)) = &self.last_lookup {
            if last == name {
                return Some(entry.clone());
            }
        }
        let dir = self.dirs.last()?.as_ref()?;
        match self.accessor.lookup(dir, name) {
            Ok(entry) => {
                self.last_lookup = entry
                    .clone()
                    .filter(Entry::is_dir)
                    .map(|e| (name.to_vec(), e));
                entry
            }
            Err(err) => {
                if self.lookup_errors == 0 {
                    log::warn!("previous snapshot unreadable, files are read again: {err:#}");
                }
                self.lookup_errors += 1;
                None
            }
        }
    }
}

impl PreviousArchive for PreviousSnapshot {
    fn enter_directory(&mut self, name: &[u8]) -> Result<()> {
        let entry = self.lookup_entry(name).filter(Entry::is_dir);
        if let Some(dir) = &entry {
            // The walk's next lookups read this directory's items, front to back.
            let len = dir
                .dir_end
                .unwrap_or(u64::MAX)
                .saturating_sub(dir.entry_offset);
            self.meta
                .prefetch(dir.entry_offset, len.min(METADATA_READ_AHEAD));
        }
        self.dirs.push(entry);
        self.last_lookup = None;
        Ok(())
    }

    fn leave_directory(&mut self) {
        // The root stays.
        if self.dirs.len() > 1 {
            self.dirs.pop();
        }
        self.last_lookup = None;
    }

    fn lookup(&mut self, name: &[u8]) -> Result<Option<PreviousEntry>> {
        let Some(entry) = self.lookup_entry(name) else {
            return Ok(None);
        };
        let file = match entry.kind {
            EntryKind::File {
                size,
                data: FileData::PayloadRef { payload_offset },
            } => Some(PreviousFile {
                size,
                payload_offset,
            }),
            _ => None,
        };
        Ok(Some(PreviousEntry {
            metadata: entry.metadata,
            file,
        }))
    }

    fn unchanged_before(&self) -> i64 {
        self.unchanged_before
    }

    fn read_content(&self, file: &PreviousFile) -> Result<Vec<u8>> {
        let mut header = [0u8; HEADER_SIZE as usize];
        self.payload
            .read_exact_at(&mut header, file.payload_offset)
            .context("cannot read the previous payload stream")?;
        let header = Header::from_bytes(&header);
        if header.htype != PXAR_PAYLOAD || header.full_size != file.size + HEADER_SIZE {
            bail!(
                "the previous payload stream has no PAYLOAD item of {} bytes at offset {}",
                file.size,
                file.payload_offset
            );
        }
        let size = usize::try_from(file.size).context("file too large")?;
        let mut content = vec![0u8; size];
        self.payload
            .read_exact_at(&mut content, file.payload_offset + HEADER_SIZE)
            .context("cannot read the previous payload stream")?;
        Ok(content)
    }

    fn chunks_covering(&self, range: Range<u64>) -> Result<ChunkRun> {
        chunks_covering(&self.payload_index, range)
    }

    fn payload_size(&self) -> u64 {
        self.payload_index.ends().last().copied().unwrap_or(0)
    }
}

/// The index entries covering `range` of the stream, with the bytes they add before and
/// after it (the official `lookup_dynamic_entries`).
pub fn chunks_covering(index: &DynamicIndex, range: Range<u64>) -> Result<ChunkRun> {
    let ends = index.ends();
    let digests = index.digests();
    let total = ends.last().copied().unwrap_or(0);
    if range.start >= range.end || range.end > total {
        bail!("range {range:?} is not inside the previous payload stream ({total} bytes)");
    }
    let first = ends.partition_point(|&end| end <= range.start);
    let mut start = if first == 0 { 0 } else { ends[first - 1] };
    let start_padding = range.start - start;
    let mut end_padding = 0;
    let mut chunks = Vec::new();
    for (&end, digest) in ends[first..].iter().zip(&digests[first..]) {
        chunks.push(ReusableChunk {
            chunk: KnownChunk {
                size: end - start,
                digest: *digest,
            },
            padding: 0,
            end_offset: end,
        });
        if range.end <= end {
            end_padding = end - range.end;
            break;
        }
        start = end;
    }
    if let Some(first) = chunks.first_mut() {
        first.padding += start_padding;
    }
    if let Some(last) = chunks.last_mut() {
        last.padding += end_padding;
    }
    Ok(ChunkRun {
        chunks,
        start_padding,
        end_padding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(ends: &[u64]) -> DynamicIndex {
        let entries = ends
            .iter()
            .enumerate()
            .map(|(i, &end)| (end, [i as u8; 32]))
            .collect();
        DynamicIndex::from_entries(entries).unwrap()
    }

    #[test]
    fn covering_chunks_and_their_padding() {
        let index = index(&[100, 250, 400, 1000]);
        let run = chunks_covering(&index, 120..260).unwrap();
        assert_eq!(run.start_padding, 20);
        assert_eq!(run.end_padding, 140);
        let sizes: Vec<(u64, u64, u64)> = run
            .chunks
            .iter()
            .map(|c| (c.chunk.size, c.padding, c.end_offset))
            .collect();
        assert_eq!(sizes, [(150, 20, 250), (150, 140, 400)]);

        // A range that ends on a chunk boundary takes no further chunk.
        let run = chunks_covering(&index, 100..250).unwrap();
        assert_eq!(run.chunks.len(), 1);
        assert_eq!((run.start_padding, run.end_padding), (0, 0));
        assert_eq!(run.chunks[0].chunk.digest, [1; 32]);

        // One chunk holding the whole range.
        let run = chunks_covering(&index, 500..600).unwrap();
        assert_eq!(run.chunks.len(), 1);
        assert_eq!(run.chunks[0].padding, 400 + 100);

        assert!(chunks_covering(&index, 900..1001).is_err());
        assert!(chunks_covering(&index, 10..10).is_err());
    }
}
