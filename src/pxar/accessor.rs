//! Random access to a pxar archive (pxar.md §8, §10): open the root, look names up through
//! goodbye tables, list directories, re-open entries by id, read file contents by range.
//!
//! Works over [`ReadAt`] values, so the same code serves a local file, a buffer, or an index
//! read through chunks. Directory tables, listings and decoded entries are kept in small
//! bounded LRU caches; every offset taken from the archive is checked before use, and
//! directory end offsets strictly decrease on the way down, so hostile archives cannot loop.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::decode_error::{DecodeError, Result};
use super::dir_table::{DirTable, GoodbyeItem};
use super::entry::{Entry, EntryKind, FileData, NON_DIR_ID_TAG};
use super::format::{
    pxar_hash, Header, HEADER_SIZE, PXAR_FORMAT_VERSION, PXAR_PAYLOAD, PXAR_PAYLOAD_START_MARKER,
};
use super::items::{self, AtSource, Layout};
use crate::format::ReadAt;

mod sketch;
pub use sketch::ChildSketch;

/// Most path components [`Accessor::lookup_path`] follows.
pub const MAX_PATH_DEPTH: usize = 4096;

const DIR_CACHE: usize = 64;
const LISTING_CACHE: usize = 16;
/// Listings longer than this are not cached (the caller keeps what it needs).
const MAX_CACHED_LISTING: usize = 65_536;
const ENTRY_CACHE: usize = 1024;
/// Entries carrying more attribute bytes than this are not cached.
const MAX_CACHED_ENTRY_ATTRS: usize = 64 << 10;
const PAYLOAD_CHECK_CACHE: usize = 4096;

/// One child in a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Position in the listing (archive order); stable for a given archive.
    pub index: usize,
    pub name: Vec<u8>,
    pub filename_offset: u64,
    /// End offset of the parent directory (bounds the child's items).
    parent_end: u64,
    /// The child's goodbye item size (a directory's extent).
    item_size: u64,
}

/// A listed child, or why the child at this FILENAME offset could not be listed.
pub type ChildResult = std::result::Result<DirEntry, (u64, DecodeError)>;

/// A random-access reader over a v1 archive or a v2 metadata + payload pair.
pub struct Accessor {
    meta: Arc<dyn ReadAt>,
    payload: Option<Arc<dyn ReadAt>>,
    size: u64,
    dirs: Mutex<LruCache<u64, Arc<DirTable>>>,
    listings: Mutex<LruCache<u64, Arc<[DirEntry]>>>,
    entries: Mutex<LruCache<u64, Entry>>,
    checked_payloads: Mutex<LruCache<u64, ()>>,
}

impl std::fmt::Debug for Accessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accessor")
            .field("size", &self.size)
            .field("split", &self.payload.is_some())
            .finish()
    }
}

fn cache<K: std::hash::Hash + Eq, V>(capacity: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(NonZeroUsize::new(capacity).unwrap()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave a cache inconsistent: keep using it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Accessor {
    /// Opens a unified (v1) archive; fails on a v2 metadata stream.
    pub fn open_v1(reader: Arc<dyn ReadAt>) -> Result<Self> {
        Self::open(reader, None)
    }

    /// Opens a split (v2) archive: metadata stream and payload stream.
    pub fn open_v2(meta: Arc<dyn ReadAt>, payload: Arc<dyn ReadAt>) -> Result<Self> {
        Self::open(meta, Some(payload))
    }

    /// Opens either variant: the FORMAT_VERSION item decides, and a payload stream must be
    /// given exactly when it is present.
    pub fn open(meta: Arc<dyn ReadAt>, payload: Option<Arc<dyn ReadAt>>) -> Result<Self> {
        let size = meta.size();
        if !(HEADER_SIZE + 24..NON_DIR_ID_TAG).contains(&size) {
            return Err(DecodeError::invalid(0, "archive size out of range"));
        }
        let first = read_header_at(&*meta, 0)?;
        let split = first.htype == PXAR_FORMAT_VERSION;
        match (&payload, split) {
            (None, true) => {
                return Err(DecodeError::invalid(
                    0,
                    "v2 archive needs its payload stream",
                ))
            }
            (Some(_), false) => {
                return Err(DecodeError::invalid(0, "v1 archive has no payload stream"))
            }
            (Some(payload), true) => {
                let start = read_header_at(&**payload, 0)?;
                if start.htype != PXAR_PAYLOAD_START_MARKER || start.full_size != HEADER_SIZE {
                    return Err(DecodeError::invalid(
                        0,
                        "payload stream lacks its start marker",
                    ));
                }
            }
            (None, false) => {}
        }
        let accessor = Accessor {
            meta,
            payload,
            size,
            dirs: cache(DIR_CACHE),
            listings: cache(LISTING_CACHE),
            entries: cache(ENTRY_CACHE),
            checked_payloads: cache(PAYLOAD_CHECK_CACHE),
        };
        // Validate the root right away so that a broken archive fails at open.
        accessor.root()?;
        Ok(accessor)
    }

    /// Another accessor over the same streams, with caches of its own (for a second user
    /// whose reads should not evict the first one's tables and entries).
    pub fn reopen(&self) -> Self {
        Accessor {
            meta: self.meta.clone(),
            payload: self.payload.clone(),
            size: self.size,
            dirs: cache(DIR_CACHE),
            listings: cache(LISTING_CACHE),
            entries: cache(ENTRY_CACHE),
            checked_payloads: cache(PAYLOAD_CHECK_CACHE),
        }
    }

    /// Size of the metadata (or unified) stream.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_split(&self) -> bool {
        self.payload.is_some()
    }

    fn layout(&self) -> Layout {
        if self.payload.is_some() {
            Layout::Split
        } else {
            Layout::Unified
        }
    }

    /// The root directory (its id is the archive size).
    pub fn root(&self) -> Result<Entry> {
        self.entry_at(self.size)
    }

    /// Re-opens an entry by its [`Entry::id`].
    pub fn entry_at(&self, id: u64) -> Result<Entry> {
        if let Some(entry) = lock(&self.entries).get(&id) {
            return Ok(entry.clone());
        }
        let entry = if id & NON_DIR_ID_TAG != 0 {
            let entry = self.decode_child(id & !NON_DIR_ID_TAG, self.size, None)?;
            if entry.is_dir() {
                return Err(DecodeError::invalid(
                    id & !NON_DIR_ID_TAG,
                    "directories are addressed by their end offset",
                ));
            }
            entry
        } else {
            self.decode_dir_at_end(id)?
        };
        self.remember(&entry);
        Ok(entry)
    }

    fn remember(&self, entry: &Entry) {
        let attr_bytes: usize = entry
            .metadata
            .xattrs
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
            + entry.metadata.fcaps.as_ref().map_or(0, Vec::len);
        if let (Some(id), true) = (entry.id(), attr_bytes <= MAX_CACHED_ENTRY_ATTRS) {
            lock(&self.entries).put(id, entry.clone());
        }
    }

    fn dir_table(&self, end: u64) -> Result<Arc<DirTable>> {
        if let Some(table) = lock(&self.dirs).get(&end) {
            return Ok(table.clone());
        }
        let table = Arc::new(DirTable::open(&*self.meta, end)?);
        lock(&self.dirs).put(end, table.clone());
        Ok(table)
    }

    /// Decodes the directory whose GOODBYE item ends at `end` (name unknown: empty).
    fn decode_dir_at_end(&self, end: u64) -> Result<Entry> {
        let table = self.dir_table(end)?;
        let mut src = AtSource::new(&*self.meta, table.entry_offset, table.goodbye + HEADER_SIZE);
        let body = if end == self.size && self.is_split() {
            // The v2 root's tail points at offset 0, the FORMAT_VERSION item.
            if table.entry_offset != 0 {
                return Err(DecodeError::invalid(
                    end,
                    "v2 root tail must point at offset 0",
                ));
            }
            let version = items::next_header(&mut src)?;
            let first = items::skip_version_and_prelude(&mut src, version)?;
            items::read_body_after(&mut src, self.layout(), None, first)?
        } else {
            items::read_body(&mut src, self.layout(), None)?
        };
        if body.kind != EntryKind::Directory {
            return Err(DecodeError::invalid(
                table.entry_offset,
                "goodbye tail does not lead to a directory",
            ));
        }
        Ok(Entry {
            dir_end: Some(end),
            ..body.into_entry(Vec::new(), None)
        })
    }

    /// Decodes the child whose FILENAME is at `filename_offset`; `bound` is the parent's
    /// GOODBYE offset (the child lies before it; the body may end at its header).
    /// `dir_extent` (the goodbye item size) is needed to open a child directory.
    fn decode_child(
        &self,
        filename_offset: u64,
        bound: u64,
        dir_extent: Option<u64>,
    ) -> Result<Entry> {
        let mut src = self.child_source(bound);
        self.decode_child_with(&mut src, filename_offset, bound, dir_extent)
    }

    /// A cursor over the children of the directory whose GOODBYE is at `bound` (a body may
    /// end at that header).
    fn child_source(&self, bound: u64) -> AtSource<&dyn ReadAt> {
        AtSource::new(&*self.meta, 0, bound.saturating_add(HEADER_SIZE))
    }

    /// [`Self::decode_child`] through `src`, a [`Self::child_source`] for `bound`.
    fn decode_child_with(
        &self,
        src: &mut AtSource<&dyn ReadAt>,
        filename_offset: u64,
        bound: u64,
        dir_extent: Option<u64>,
    ) -> Result<Entry> {
        src.seek(filename_offset);
        let name = items::read_filename(src)?;
        let body = items::read_body(src, self.layout(), Some(filename_offset))?;
        let mut entry = body.into_entry(name, Some(filename_offset));
        match entry.kind {
            EntryKind::Directory => {
                let extent = dir_extent.ok_or_else(|| {
                    DecodeError::invalid(filename_offset, "directory reached without its table")
                })?;
                // A child directory lies entirely before its parent's GOODBYE (`bound`).
                let end = filename_offset
                    .checked_add(extent)
                    .filter(|&end| end <= bound)
                    .ok_or_else(|| {
                        DecodeError::invalid(
                            filename_offset,
                            "child directory overlaps its parent's table",
                        )
                    })?;
                let table = self.dir_table(end)?;
                if table.entry_offset != entry.entry_offset {
                    return Err(DecodeError::invalid(
                        end,
                        "directory table does not match its entry",
                    ));
                }
                entry.dir_end = Some(end);
            }
            EntryKind::File { size, data } => {
                self.check_file_bounds(filename_offset, size, data, bound)?
            }
            _ => {}
        }
        Ok(entry)
    }

    fn check_file_bounds(&self, at: u64, size: u64, data: FileData, bound: u64) -> Result<()> {
        let fits = match (data, &self.payload) {
            (FileData::Inline { data_offset }, _) => data_offset
                .checked_add(size)
                .is_some_and(|end| end <= bound),
            (FileData::PayloadRef { payload_offset }, Some(payload)) => payload_offset
                .checked_add(HEADER_SIZE)
                .and_then(|start| start.checked_add(size))
                .is_some_and(|end| end <= payload.size()),
            (FileData::PayloadRef { .. }, None) => false,
        };
        if !fits {
            return Err(DecodeError::invalid(
                at,
                "file contents lie outside the stream",
            ));
        }
        Ok(())
    }

    fn dir_table_of(&self, dir: &Entry) -> Result<Arc<DirTable>> {
        match (&dir.kind, dir.dir_end) {
            (EntryKind::Directory, Some(end)) => self.dir_table(end),
            _ => Err(DecodeError::WrongKind("not a directory of this accessor")),
        }
    }

    /// Finds `name` in `dir` through its goodbye table. Hardlinks are returned as they are
    /// (see [`Accessor::follow_hardlink`]). Names that cannot exist give `None`.
    pub fn lookup(&self, dir: &Entry, name: &[u8]) -> Result<Option<Entry>> {
        let table = self.dir_table_of(dir)?;
        if !items::is_valid_name(name) {
            return Ok(None);
        }
        for index in table.candidates(&*self.meta, pxar_hash(name))? {
            let item = table.item(&*self.meta, index)?;
            let filename_offset = table.child_filename_offset(&item)?;
            let mut src = AtSource::new(&*self.meta, filename_offset, table.goodbye);
            if items::read_filename(&mut src)? == name {
                let entry = self.decode_child(filename_offset, table.goodbye, Some(item.size))?;
                self.remember(&entry);
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Follows `path` (components separated by `/`; empty, `.` and leading `/` ignored)
    /// from the root. Intermediate hardlinks and symlinks are not followed.
    pub fn lookup_path(&self, path: &[u8]) -> Result<Option<Entry>> {
        let mut current = self.root()?;
        let components = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".");
        for (depth, component) in components.enumerate() {
            if component == b".." {
                return Err(DecodeError::WrongKind(
                    "'..' is not allowed in archive paths",
                ));
            }
            if depth >= MAX_PATH_DEPTH || !current.is_dir() {
                return Ok(None);
            }
            match self.lookup(&current, component)? {
                Some(next) => current = next,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// The children of `dir` in archive order; each [`DirEntry::index`] is its position.
    pub fn read_dir(&self, dir: &Entry) -> Result<Arc<[DirEntry]>> {
        match self.read_dir_partial(dir)? {
            (listing, None) => Ok(listing),
            (_, Some(err)) => Err(err),
        }
    }

    /// Like [`Self::read_dir`], but a child whose name cannot be read (in a chunk that
    /// cannot be read, say) is left out, and the first such error comes with the others.
    /// Only the directory's own table failing is an `Err`.
    pub fn read_dir_partial(&self, dir: &Entry) -> Result<(Arc<[DirEntry]>, Option<DecodeError>)> {
        let table = self.dir_table_of(dir)?;
        if let Some(listing) = lock(&self.listings).get(&table.end) {
            return Ok((listing.clone(), None));
        }
        let mut failed = None;
        let listing: Arc<[DirEntry]> = self
            .list_children(&table)?
            .into_iter()
            .filter_map(|child| match child {
                Ok(entry) => Some(entry),
                Err((_, err)) => {
                    failed.get_or_insert(err);
                    None
                }
            })
            .collect();
        // A partial listing is not kept: the next call tries the missing names again.
        if listing.len() <= MAX_CACHED_LISTING && failed.is_none() {
            lock(&self.listings).put(table.end, listing.clone());
        }
        Ok((listing, failed))
    }

    /// [`Self::read_dir`] for a damaged archive: each child's name is read on its own, and a
    /// child whose name cannot be read is an error in its place (with its FILENAME offset)
    /// while the others are listed. Fails only if the goodbye table cannot be read.
    pub fn read_dir_each(&self, dir: &Entry) -> Result<Vec<ChildResult>> {
        self.list_children(&*self.dir_table_of(dir)?)
    }

    fn list_children(&self, table: &DirTable) -> Result<Vec<ChildResult>> {
        let items = table.all_items(&*self.meta)?;
        let mut located: Vec<(u64, GoodbyeItem)> = items
            .iter()
            .map(|item| Ok((table.child_filename_offset(item)?, *item)))
            .collect::<Result<_>>()?;
        located.sort_unstable_by_key(|(offset, _)| *offset);
        // One cursor for all names: neighbours in archive order often share a window.
        let mut src = AtSource::new(&*self.meta, 0, table.goodbye);
        let listing = located
            .into_iter()
            .enumerate()
            .map(|(index, (filename_offset, item))| {
                src.seek(filename_offset);
                match items::read_filename(&mut src) {
                    Ok(name) => Ok(DirEntry {
                        index,
                        name,
                        filename_offset,
                        parent_end: table.goodbye,
                        item_size: item.size,
                    }),
                    Err(err) => Err((filename_offset, err)),
                }
            })
            .collect();
        Ok(listing)
    }

    /// Decodes listed children (of [`Self::read_dir`]) in order and hands each to `each`,
    /// through one cursor per directory: neighbours share its window rather than each
    /// reading its own. Unlike [`Self::open_dir_entry`] the entries are not cached: whoever
    /// decodes a whole listing keeps what it needs.
    pub fn decode_listed(
        &self,
        children: &[DirEntry],
        mut each: impl FnMut(&DirEntry, Result<Entry>),
    ) {
        let mut cursor: Option<(u64, AtSource<&dyn ReadAt>)> = None;
        for child in children {
            let src = match &mut cursor {
                Some((bound, src)) if *bound == child.parent_end => src,
                _ => {
                    let bound = child.parent_end;
                    &mut cursor.insert((bound, self.child_source(bound))).1
                }
            };
            let entry = self.decode_child_with(
                src,
                child.filename_offset,
                child.parent_end,
                Some(child.item_size),
            );
            each(child, entry);
        }
    }

    /// The path from the root (`/dir/file`) of the entry whose FILENAME item is at
    /// `filename_offset`, found by descending through the directories whose extent holds
    /// it: for naming an entry known only by its id (in an error message, say). Each step
    /// moves to a later offset, so even a hostile archive ends the descent.
    pub fn path_of(&self, filename_offset: u64) -> Result<Vec<u8>> {
        let not_found = || DecodeError::invalid(filename_offset, "no entry starts here");
        let mut dir = self.root()?;
        let mut path = Vec::new();
        loop {
            let children = self.read_dir(&dir)?;
            let after = children.partition_point(|c| c.filename_offset <= filename_offset);
            let child = after
                .checked_sub(1)
                .map(|i| &children[i])
                .ok_or_else(not_found)?;
            path.push(b'/');
            path.extend_from_slice(&child.name);
            if child.filename_offset == filename_offset {
                return Ok(path);
            }
            if filename_offset - child.filename_offset >= child.item_size {
                return Err(not_found());
            }
            dir = self.open_dir_entry(child)?;
            if !dir.is_dir() {
                return Err(not_found());
            }
        }
    }

    /// Decodes a listed child.
    pub fn open_dir_entry(&self, child: &DirEntry) -> Result<Entry> {
        let id = child.filename_offset | NON_DIR_ID_TAG;
        if let Some(entry) = lock(&self.entries).get(&id) {
            return Ok(entry.clone());
        }
        let entry = self.decode_child(
            child.filename_offset,
            child.parent_end,
            Some(child.item_size),
        )?;
        self.remember(&entry);
        Ok(entry)
    }

    /// The regular file a hardlink entry points to (hardlinks to anything else are errors).
    pub fn follow_hardlink(&self, link: &Entry) -> Result<Entry> {
        let (
            EntryKind::Hardlink {
                target_filename_offset,
                ..
            },
            Some(link_offset),
        ) = (&link.kind, link.filename_offset)
        else {
            return Err(DecodeError::WrongKind("not a hardlink"));
        };
        // The target lies entirely before the link.
        let target = self.entry_at(target_filename_offset | NON_DIR_ID_TAG);
        match target {
            Ok(target) if matches!(target.kind, EntryKind::File { .. }) => {
                if let EntryKind::File { size, data } = target.kind {
                    self.check_file_bounds(*target_filename_offset, size, data, link_offset)?;
                }
                Ok(target)
            }
            Ok(_) => Err(DecodeError::invalid(
                link_offset,
                "hardlink target is not a regular file",
            )),
            Err(err) => Err(err),
        }
    }

    /// Reads file contents at `offset` into `buf`; returns the bytes read (short only at the
    /// end of the file).
    pub fn read_file(&self, file: &Entry, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let EntryKind::File { size, data } = file.kind else {
            return Err(DecodeError::WrongKind("not a regular file"));
        };
        if offset >= size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(size - offset) as usize;
        let buf = &mut buf[..len];
        match (data, &self.payload) {
            (FileData::Inline { data_offset }, _) => {
                items::read_exact_at(&*self.meta, buf, data_offset + offset)?;
            }
            (FileData::PayloadRef { payload_offset }, Some(payload)) => {
                self.check_payload_header(&**payload, payload_offset, size)?;
                items::read_exact_at(&**payload, buf, payload_offset + HEADER_SIZE + offset)?;
            }
            (FileData::PayloadRef { .. }, None) => {
                return Err(DecodeError::WrongKind("entry belongs to a split archive"))
            }
        }
        Ok(len)
    }

    /// Checks what [`Self::read_file`] checks before handing out a file's bytes, for
    /// callers that read the data stream themselves.
    pub fn check_file_data(&self, file: &Entry) -> Result<()> {
        match (&file.kind, &self.payload) {
            (
                EntryKind::File {
                    size,
                    data: FileData::PayloadRef { payload_offset },
                },
                Some(payload),
            ) => self.check_payload_header(&**payload, *payload_offset, *size),
            (
                EntryKind::File {
                    data: FileData::PayloadRef { .. },
                    ..
                },
                None,
            ) => Err(DecodeError::WrongKind("entry belongs to a split archive")),
            (EntryKind::File { .. }, _) => Ok(()),
            _ => Err(DecodeError::WrongKind("not a regular file")),
        }
    }

    /// Verifies once per file that a PAYLOAD header of the right size sits where the
    /// reference points (pxar.md §3.12).
    fn check_payload_header(&self, payload: &dyn ReadAt, at: u64, size: u64) -> Result<()> {
        if lock(&self.checked_payloads).get(&at).is_some() {
            return Ok(());
        }
        let header = read_header_at(payload, at)?;
        if header.htype != PXAR_PAYLOAD || header.content_size() != Some(size) {
            return Err(DecodeError::invalid(
                at,
                "payload reference does not match a PAYLOAD item",
            ));
        }
        lock(&self.checked_payloads).put(at, ());
        Ok(())
    }
}

fn read_header_at(reader: &dyn ReadAt, offset: u64) -> Result<Header> {
    let mut raw = [0u8; 16];
    items::read_exact_at(reader, &mut raw, offset)?;
    Ok(Header::from_bytes(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pxar::decoder::{Decoder, MAX_DEPTH};
    use crate::pxar::format::*;
    use crate::pxar::test_archive::{nested, spec_example};

    fn open(data: Vec<u8>) -> Result<Accessor> {
        Accessor::open_v1(Arc::new(data))
    }

    fn put_u64(data: &mut [u8], at: usize, value: u64) {
        data[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    fn walk_all(accessor: &Accessor) -> Result<usize> {
        let mut count = 0;
        let mut pending = vec![accessor.root()?];
        while let Some(dir) = pending.pop() {
            for child in accessor.read_dir(&dir)?.iter() {
                count += 1;
                let entry = accessor.open_dir_entry(child)?;
                if entry.is_dir() {
                    pending.push(entry);
                }
            }
        }
        Ok(count)
    }

    #[test]
    fn spec_example_layout_and_access() {
        let data = spec_example();
        // Offsets and sizes as in pxar.md §12.1.
        assert_eq!(data.len(), 549);
        assert_eq!(&data[56..64], &PXAR_FILENAME.to_le_bytes());
        assert_eq!(&data[437..445], &PXAR_GOODBYE.to_le_bytes());
        let accessor = open(data).unwrap();
        let root = accessor.root().unwrap();
        assert_eq!(root.id(), Some(549));
        let file = accessor.lookup(&root, b"a.txt").unwrap().unwrap();
        assert_eq!(file.filename_offset, Some(56));
        let mut buf = [0u8; 16];
        assert_eq!(accessor.read_file(&file, 1, &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"ello");
        let link = accessor.lookup_path(b"d/l").unwrap().unwrap();
        assert_eq!(
            link.kind,
            EntryKind::Symlink {
                target: b"a.txt".to_vec()
            }
        );
        let dir = accessor.lookup(&root, b"d").unwrap().unwrap();
        assert_eq!(dir.dir_end, Some(389));
        let hard = accessor.lookup(&root, b"h").unwrap().unwrap();
        assert_eq!(accessor.follow_hardlink(&hard).unwrap().id(), file.id());
        let names: Vec<Vec<u8>> = accessor
            .read_dir(&root)
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(names, [b"a.txt".to_vec(), b"d".to_vec(), b"h".to_vec()]);
        assert!(accessor.lookup(&root, b"nope").unwrap().is_none());
        assert!(accessor.lookup(&root, b"..").unwrap().is_none());
        assert!(accessor.lookup(&file, b"x").is_err());
        assert_eq!(
            accessor.entry_at(dir.id().unwrap()).unwrap().metadata,
            dir.metadata
        );
        assert!(
            accessor.entry_at(56).is_err(),
            "untagged non-directory offset"
        );
    }

    /// Every directory of `data`, with the entries `open_dir_entry` decodes one by one.
    fn dirs_and_children(accessor: &Accessor) -> Vec<(Entry, Vec<Entry>)> {
        let mut out = Vec::new();
        let mut pending = vec![accessor.root().unwrap()];
        while let Some(dir) = pending.pop() {
            let children: Vec<Entry> = accessor
                .read_dir(&dir)
                .unwrap()
                .iter()
                .map(|child| accessor.open_dir_entry(child).unwrap())
                .collect();
            pending.extend(children.iter().filter(|c| c.is_dir()).cloned());
            out.push((dir, children));
        }
        out
    }

    fn mixed_tree() -> Vec<u8> {
        use crate::pxar::test_archive::{build, Node};
        build(vec![
            (b"a.txt", Node::File(b"hello")),
            (
                b"d",
                Node::Dir(vec![
                    (b"e", Node::Dir(vec![(b"f", Node::File(b"deep"))])),
                    (b"l", Node::Symlink(b"a.txt")),
                    (b"h2", Node::Hardlink(b"a.txt")),
                ]),
            ),
            (b"h", Node::Hardlink(b"a.txt")),
        ])
    }

    #[test]
    fn a_listing_decoded_at_once_matches_entries_decoded_one_by_one() {
        let accessor = open(mixed_tree()).unwrap();
        for (dir, expected) in dirs_and_children(&accessor) {
            let listing = accessor.read_dir(&dir).unwrap();
            let mut decoded = Vec::new();
            accessor.decode_listed(&listing, |child, entry| {
                let entry = entry.unwrap();
                assert_eq!(entry.name, child.name);
                decoded.push(entry);
            });
            assert_eq!(decoded, expected);
        }
        // A child that cannot be decoded is reported in its place; the others still come.
        let mut data = spec_example();
        data[78 + 8] = 0xff; // a.txt's ENTRY size
        let accessor = open(data).unwrap();
        let listing = accessor.read_dir(&accessor.root().unwrap()).unwrap();
        let mut results = Vec::new();
        accessor.decode_listed(&listing, |child, entry| {
            results.push((child.name.clone(), entry.is_ok()))
        });
        let names_ok: Vec<(&[u8], bool)> =
            results.iter().map(|(n, ok)| (n.as_slice(), *ok)).collect();
        assert_eq!(
            names_ok,
            [(&b"a.txt"[..], false), (b"d", true), (b"h", true)]
        );
    }

    #[test]
    fn every_entry_is_found_by_its_filename_offset() {
        let accessor = open(mixed_tree()).unwrap();
        let mut seen = 0;
        let mut pending = vec![(accessor.root().unwrap(), Vec::new())];
        while let Some((dir, dir_path)) = pending.pop() {
            for child in accessor.read_dir(&dir).unwrap().iter() {
                let mut path = dir_path.clone();
                path.push(b'/');
                path.extend_from_slice(&child.name);
                assert_eq!(accessor.path_of(child.filename_offset).unwrap(), path);
                seen += 1;
                let entry = accessor.open_dir_entry(child).unwrap();
                if entry.is_dir() {
                    pending.push((entry, path));
                }
            }
        }
        assert_eq!(seen, 7);
        // An offset where no entry starts (inside a.txt's items) is an error.
        let a = accessor.read_dir(&accessor.root().unwrap()).unwrap()[0].filename_offset;
        assert!(accessor.path_of(a + 3).is_err());
    }

    #[test]
    fn sketches_agree_with_the_decoded_entries() {
        let accessor = open(mixed_tree()).unwrap();
        for (dir, children) in dirs_and_children(&accessor) {
            let (sketches, failed) = accessor.sketch_children(dir.id().unwrap()).unwrap();
            assert!(failed.is_none());
            let expected: Vec<ChildSketch> = children
                .iter()
                .map(|child| match &child.kind {
                    EntryKind::Directory => ChildSketch::Directory {
                        id: child.id().unwrap(),
                    },
                    EntryKind::Hardlink {
                        target_filename_offset,
                        ..
                    } => ChildSketch::Hardlink {
                        id: child.id().unwrap(),
                        target_id: target_filename_offset | NON_DIR_ID_TAG,
                    },
                    _ => ChildSketch::Other,
                })
                .collect();
            assert_eq!(sketches, expected);
        }
        // A directory whose extent reaches past its parent's table is not followed.
        let mut data = spec_example();
        put_u64(&mut data, 477 + 16, 234 + 112);
        let accessor = open(data).unwrap();
        let (sketches, failed) = accessor.sketch_children(549).unwrap();
        assert_eq!(sketches.len(), 2);
        assert!(failed.is_some());
    }

    #[test]
    fn forbidden_names_are_rejected() {
        use crate::pxar::test_archive::{build, Node};
        for bad in [&b"."[..], b"..", b"a/b", b"/", b"", b"a\0b"] {
            let data = build(vec![(b"ok", Node::File(b"1")), (bad, Node::File(b"x"))]);
            let accessor = open(data.clone()).unwrap();
            assert!(walk_all(&accessor).is_err(), "{bad:?}");
            let decoded = Decoder::from_read_at(Arc::new(data), None).collect::<Result<Vec<_>>>();
            assert!(decoded.is_err(), "{bad:?}");
        }
        // Missing terminating NUL ("d\0" of the example at 171).
        let mut data = spec_example();
        data[172] = b'x';
        assert!(walk_all(&open(data).unwrap()).is_err());
    }

    #[test]
    fn goodbye_offsets_outside_the_directory_are_rejected() {
        // Root table at 437: items at 453, 477, 501 (a.txt, d, h), tail at 525.
        let mut data = spec_example();
        put_u64(&mut data, 477 + 8, 438); // `d` points past the start of the archive
        assert!(walk_all(&open(data).unwrap()).is_err());
        let mut data = spec_example();
        put_u64(&mut data, 477 + 16, 234 + 112); // `d` would end at the root's end: a loop
        let accessor = open(data).unwrap();
        assert!(accessor.lookup_path(b"d").is_err());
        let mut data = spec_example();
        put_u64(&mut data, 525 + 8, 0); // tail offset 0
        assert!(open(data).is_err());
        let mut data = spec_example();
        put_u64(&mut data, 525 + 16, 100); // table size not matching the header
        assert!(open(data).is_err());
    }

    #[test]
    fn hardlink_and_size_checks() {
        // HARDLINK at 407: its offset (333) made larger than its FILENAME offset.
        let mut data = spec_example();
        put_u64(&mut data, 407 + 16, 390);
        let accessor = open(data).unwrap();
        assert!(accessor.lookup_path(b"h").is_err());
        // Hardlink to a directory.
        let mut data = spec_example();
        put_u64(&mut data, 407 + 16, 389 - 155);
        let accessor = open(data).unwrap();
        let link = accessor.lookup_path(b"h").unwrap().unwrap();
        assert!(accessor.follow_hardlink(&link).is_err());
        // A file whose PAYLOAD claims more bytes than the archive holds.
        let mut data = spec_example();
        put_u64(&mut data, 134 + 8, 1 << 40);
        assert!(open(data.clone()).unwrap().lookup_path(b"a.txt").is_err());
        assert!(Decoder::from_read_at(Arc::new(data), None)
            .collect::<Result<Vec<_>>>()
            .is_err());
        // An ENTRY with a huge size is refused before anything is allocated.
        let mut data = spec_example();
        put_u64(&mut data, 78 + 8, u64::MAX);
        assert!(open(data).unwrap().lookup_path(b"a.txt").is_err());
    }

    #[test]
    fn nesting_depth_is_capped_in_the_decoder() {
        let ok = nested(MAX_DEPTH - 1);
        assert_eq!(Decoder::from_read_at(Arc::new(ok), None).count(), MAX_DEPTH);
        let deep = nested(MAX_DEPTH);
        let results: Vec<_> = Decoder::from_read_at(Arc::new(deep.clone()), None).collect();
        assert!(results.last().unwrap().is_err());
        // The accessor descends one checked level at a time.
        let accessor = open(deep).unwrap();
        let path = vec![&b"n"[..]; 100].join(&b'/');
        assert!(accessor.lookup_path(&path).unwrap().is_some());
    }

    #[test]
    fn truncated_archives_fail_to_open() {
        let data = spec_example();
        for len in [0, 10, 39, 100, 548] {
            assert!(open(data[..len].to_vec()).is_err(), "{len}");
        }
    }
}
