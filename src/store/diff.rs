//! What changed between two pxar archives (of the same or different snapshots): a merge walk
//! of both metadata streams in step. pxar stores a directory's entries in name order and
//! walks depth-first, so both walks visit paths in the same total order and one pass pairs
//! them up. File contents are compared by where they are stored: bytes that lie in the same
//! chunks at the same place are the same bytes, so no payload chunk is fetched unless the
//! references differ, the sizes match and the caller asked for a byte comparison.

use std::cmp::Ordering;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};

use super::open::PxarArchive;
use crate::format::index::{AnyIndex, ChunkIndex};
use crate::format::ReadAt;
use crate::pxar::decoder::{DecodedEntry, Decoder};
use crate::pxar::entry::{Entry, EntryKind, FileData};
use crate::pxar::format::HEADER_SIZE;
use crate::pxar::Accessor;

/// What to compare.
#[derive(Clone, Debug, Default)]
pub struct DiffOptions {
    /// Only this path and what is below it (relative to the archive root, no leading `/`).
    pub path: Option<Vec<u8>>,
    /// Compare the bytes of files whose sizes match but whose stored chunks differ (reads
    /// those files' chunks); otherwise their content is reported as unknown.
    pub compare_content: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

impl ChangeKind {
    /// The prefix of a text line: `+`, `-` or `M`.
    pub fn sign(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Modified => 'M',
        }
    }
}

/// One thing about an entry that changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Aspect {
    /// File, directory, symlink, ... (nothing else is compared across kinds).
    Type,
    Content,
    Size,
    Mode,
    Owner,
    Mtime,
    Xattrs,
    Acl,
    /// File attribute flags (chattr).
    Flags,
    /// Symlink target, or the path a hardlink points to.
    LinkTarget,
    Device,
}

impl Aspect {
    pub fn name(self) -> &'static str {
        match self {
            Aspect::Type => "type",
            Aspect::Content => "content",
            Aspect::Size => "size",
            Aspect::Mode => "mode",
            Aspect::Owner => "owner",
            Aspect::Mtime => "mtime",
            Aspect::Xattrs => "xattrs",
            Aspect::Acl => "acl",
            Aspect::Flags => "flags",
            Aspect::LinkTarget => "link-target",
            Aspect::Device => "device",
        }
    }
}

/// An added, removed or modified entry.
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: ChangeKind,
    /// Relative to the archive root (empty for the root itself).
    pub path: Vec<u8>,
    /// The entry in the first archive (None when added).
    pub old: Option<Entry>,
    /// The entry in the second archive (None when removed).
    pub new: Option<Entry>,
    /// What changed (modified entries), in [`Aspect`] order.
    pub aspects: Vec<Aspect>,
    /// A modified file of the same size whose stored chunks differ and whose bytes were
    /// not compared: its content may or may not have changed.
    pub content_unknown: bool,
}

/// Counts of a finished diff.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    /// Files equal in every attribute whose stored chunks differ, not compared byte by
    /// byte (not reported as changes).
    pub content_not_compared: u64,
    /// Files whose bytes were read and compared.
    pub content_compared: u64,
}

/// Entries decoded per message between a decoding thread and the walk.
const BATCH: usize = 1024;

/// Compares archive `a` (old) with `b` (new) and hands every change to `report`, in path
/// order. Each metadata stream is decoded on a thread of its own.
pub fn diff_archives(
    a: &PxarArchive,
    b: &PxarArchive,
    options: &DiffOptions,
    report: &mut dyn FnMut(Change) -> Result<()>,
) -> Result<DiffStats> {
    std::thread::scope(|scope| {
        let mut old = EntryStream::start(scope, a, options.path.clone());
        let mut new = EntryStream::start(scope, b, options.path.clone());
        let mut walk = Walk {
            a,
            b,
            options,
            accessors: None,
            stats: DiffStats::default(),
        };
        let (mut x, mut y) = (
            old.next().context("first archive")?,
            new.next().context("second archive")?,
        );
        if let Some(path) = &options.path {
            let found = |e: &Option<DecodedEntry>| e.as_ref().is_some_and(|e| &e.path == path);
            if !found(&x) && !found(&y) {
                bail!("{} is in neither archive", show_path(path));
            }
        }
        loop {
            let order = match (&x, &y) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => compare_paths(&x.path, &y.path),
            };
            match order {
                Ordering::Less => {
                    let gone = x.take().expect("an old entry");
                    walk.stats.removed += 1;
                    report(one_sided(ChangeKind::Removed, gone))?;
                    x = old.next().context("first archive")?;
                }
                Ordering::Greater => {
                    let added = y.take().expect("a new entry");
                    walk.stats.added += 1;
                    report(one_sided(ChangeKind::Added, added))?;
                    y = new.next().context("second archive")?;
                }
                Ordering::Equal => {
                    let (was, is) = (x.take().expect("old"), y.take().expect("new"));
                    if let Some(change) = walk.compare(was, is)? {
                        walk.stats.modified += 1;
                        report(change)?;
                    }
                    x = old.next().context("first archive")?;
                    y = new.next().context("second archive")?;
                }
            }
        }
        Ok(walk.stats)
    })
}

fn one_sided(kind: ChangeKind, entry: DecodedEntry) -> Change {
    let (old, new) = match kind {
        ChangeKind::Removed => (Some(entry.entry), None),
        _ => (None, Some(entry.entry)),
    };
    Change {
        kind,
        path: entry.path,
        old,
        new,
        aspects: Vec::new(),
        content_unknown: false,
    }
}

/// `/path` for messages and listings (`/` for the root).
pub fn show_path(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// Orders paths as a depth-first walk over name-sorted directories visits them: component by
/// component (so `a/b` comes before `a-c`, although `/` sorts after `-` as a byte).
pub fn compare_paths(a: &[u8], b: &[u8]) -> Ordering {
    if a.is_empty() || b.is_empty() {
        return a.len().cmp(&b.len());
    }
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// Where a path lies against the diff's scope.
fn in_scope(path: &[u8], scope: &[u8]) -> Ordering {
    if scope.is_empty()
        || path
            .strip_prefix(scope)
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
    {
        Ordering::Equal
    } else {
        compare_paths(path, scope)
    }
}

/// The entries of one archive in walk order, decoded on a thread of their own (from the
/// metadata stream only) and limited to the scope.
struct EntryStream {
    batches: Receiver<Result<Vec<DecodedEntry>>>,
    current: std::vec::IntoIter<DecodedEntry>,
}

impl EntryStream {
    fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        archive: &PxarArchive,
        path: Option<Vec<u8>>,
    ) -> Self {
        let meta: Arc<dyn ReadAt> = archive.meta.clone();
        let split = archive.payload.is_some();
        let (send, batches) = sync_channel(8);
        scope.spawn(move || {
            let scope = path.unwrap_or_default();
            let mut decoder = Decoder::metadata_only(meta, split);
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let entry = match decoder.next_entry() {
                    Ok(Some(entry)) => entry,
                    Ok(None) => break,
                    Err(err) => {
                        let _ = send.send(Err(err.into()));
                        return;
                    }
                };
                match in_scope(&entry.path, &scope) {
                    Ordering::Less => continue,
                    Ordering::Greater => break,
                    Ordering::Equal => batch.push(entry),
                }
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if send.send(Ok(full)).is_err() {
                        return; // the walk stopped
                    }
                }
            }
            if !batch.is_empty() {
                let _ = send.send(Ok(batch));
            }
        });
        EntryStream {
            batches,
            current: Vec::new().into_iter(),
        }
    }

    fn next(&mut self) -> Result<Option<DecodedEntry>> {
        loop {
            if let Some(entry) = self.current.next() {
                return Ok(Some(entry));
            }
            match self.batches.recv() {
                Ok(batch) => self.current = batch?.into_iter(),
                Err(_) => return Ok(None), // the decoding thread is done
            }
        }
    }
}

/// State of the walk: the archives, and accessors opened once a byte comparison needs them.
struct Walk<'a> {
    a: &'a PxarArchive,
    b: &'a PxarArchive,
    options: &'a DiffOptions,
    accessors: Option<(Accessor, Accessor)>,
    stats: DiffStats,
}

impl Walk<'_> {
    /// The change between two entries at the same path, if any.
    fn compare(&mut self, was: DecodedEntry, is: DecodedEntry) -> Result<Option<Change>> {
        let (old, new) = (&was.entry, &is.entry);
        let mut aspects = Vec::new();
        let mut content_unknown = false;
        if std::mem::discriminant(&old.kind) != std::mem::discriminant(&new.kind)
            || old.metadata.file_type() != new.metadata.file_type()
        {
            aspects.push(Aspect::Type);
        } else {
            match self.content(old, new)? {
                Content::Same => {}
                Content::Differs => aspects.push(Aspect::Content),
                Content::Unknown => content_unknown = true,
            }
            if old.file_size() != new.file_size() {
                aspects.push(Aspect::Size);
            }
            aspects.extend(attribute_changes(old, new));
        }
        if aspects.is_empty() {
            if content_unknown {
                self.stats.content_not_compared += 1;
            }
            return Ok(None);
        }
        Ok(Some(Change {
            kind: ChangeKind::Modified,
            path: is.path,
            old: Some(was.entry),
            new: Some(is.entry),
            aspects,
            content_unknown,
        }))
    }

    /// Whether two regular files (same kind) hold the same bytes; `Same` for other kinds.
    fn content(&mut self, old: &Entry, new: &Entry) -> Result<Content> {
        let (
            EntryKind::File {
                size: old_size,
                data: old_data,
            },
            EntryKind::File {
                size: new_size,
                data: new_data,
            },
        ) = (&old.kind, &new.kind)
        else {
            return Ok(Content::Same);
        };
        if old_size != new_size {
            return Ok(Content::Differs);
        }
        let (old_index, old_start) = stored_at(self.a, *old_data);
        let (new_index, new_start) = stored_at(self.b, *new_data);
        if same_chunks(old_index, old_start, new_index, new_start, *old_size) {
            return Ok(Content::Same);
        }
        if !self.options.compare_content {
            return Ok(Content::Unknown);
        }
        self.stats.content_compared += 1;
        if self.accessors.is_none() {
            self.accessors = Some((self.a.accessor()?, self.b.accessor()?));
        }
        let (a, b) = self.accessors.as_ref().expect("opened above");
        Ok(if same_bytes(a, old, b, new, *old_size)? {
            Content::Same
        } else {
            Content::Differs
        })
    }
}

enum Content {
    Same,
    Differs,
    Unknown,
}

/// The attributes (not kind, size or content) in which two entries of one kind differ.
fn attribute_changes(old: &Entry, new: &Entry) -> Vec<Aspect> {
    let (was, is) = (&old.metadata, &new.metadata);
    let mut aspects = Vec::new();
    let mut changed = |differs: bool, aspect| {
        if differs {
            aspects.push(aspect);
        }
    };
    changed(was.stat.mode != is.stat.mode, Aspect::Mode);
    changed(
        (was.stat.uid, was.stat.gid) != (is.stat.uid, is.stat.gid),
        Aspect::Owner,
    );
    changed(was.stat.mtime != is.stat.mtime, Aspect::Mtime);
    let sorted = |xattrs: &[(Vec<u8>, Vec<u8>)]| {
        let mut list = xattrs.to_vec();
        list.sort();
        list
    };
    changed(
        sorted(&was.xattrs) != sorted(&is.xattrs) || was.fcaps != is.fcaps,
        Aspect::Xattrs,
    );
    changed(was.acl != is.acl, Aspect::Acl);
    changed(was.stat.flags != is.stat.flags, Aspect::Flags);
    let target = |kind: &EntryKind| match kind {
        EntryKind::Symlink { target } => Some(target.clone()),
        EntryKind::Hardlink { target_path, .. } => Some(target_path.clone()),
        _ => None,
    };
    changed(target(&old.kind) != target(&new.kind), Aspect::LinkTarget);
    let device = |kind: &EntryKind| match kind {
        EntryKind::Device { major, minor } => Some((*major, *minor)),
        _ => None,
    };
    changed(device(&old.kind) != device(&new.kind), Aspect::Device);
    aspects
}

/// The index holding a file's bytes and where they start in its stream.
fn stored_at(archive: &PxarArchive, data: FileData) -> (&AnyIndex, u64) {
    match (data, &archive.payload) {
        (FileData::PayloadRef { payload_offset }, Some(payload)) => {
            (payload.index(), payload_offset + HEADER_SIZE)
        }
        (FileData::PayloadRef { payload_offset }, None) => {
            // Not produced by the decoder (no payload references without a payload stream);
            // compared as an unknown place.
            (archive.meta.index(), payload_offset)
        }
        (FileData::Inline { data_offset }, _) => (archive.meta.index(), data_offset),
    }
}

/// Whether `size` bytes at `a_start` of one stream and `b_start` of another lie in chunks of
/// the same digests at the same offsets inside them: then they are the same bytes (a digest
/// names its chunk's content). Reads no chunk.
pub fn same_chunks(
    a: &dyn ChunkIndex,
    a_start: u64,
    b: &dyn ChunkIndex,
    b_start: u64,
    size: u64,
) -> bool {
    if size == 0 {
        return true;
    }
    let (Some((mut i, a_offset)), Some((mut j, b_offset))) =
        (a.chunk_from_offset(a_start), b.chunk_from_offset(b_start))
    else {
        return false;
    };
    if a_offset != b_offset {
        return false;
    }
    let end = a_start + size;
    loop {
        match (a.chunk_info(i), b.chunk_info(j)) {
            (Some(x), Some(y)) if x.digest == y.digest => {
                if x.end >= end {
                    return true;
                }
            }
            _ => return false,
        }
        i += 1;
        j += 1;
    }
}

/// Reads both files and compares their bytes.
fn same_bytes(a: &Accessor, old: &Entry, b: &Accessor, new: &Entry, size: u64) -> Result<bool> {
    const BLOCK: usize = 1 << 20;
    let mut x = vec![0u8; BLOCK.min(size as usize)];
    let mut y = x.clone();
    let mut offset = 0u64;
    while offset < size {
        let n = a.read_file(old, offset, &mut x)?;
        let m = b.read_file(new, offset, &mut y)?;
        if n == 0 || n != m {
            bail!("file data ends early at byte {offset}");
        }
        if x[..n] != y[..n] {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::index::DynamicIndex;

    #[test]
    fn paths_are_ordered_component_by_component() {
        assert_eq!(compare_paths(b"a/b", b"a-c"), Ordering::Less);
        assert_eq!(compare_paths(b"", b"a"), Ordering::Less);
        assert_eq!(compare_paths(b"a", b"a/b"), Ordering::Less);
        assert_eq!(compare_paths(b"b", b"a/z"), Ordering::Greater);
        assert_eq!(in_scope(b"data/x", b"data"), Ordering::Equal);
        assert_eq!(in_scope(b"data-1", b"data"), Ordering::Greater);
        assert_eq!(in_scope(b"a/b", b"data"), Ordering::Less);
    }

    fn index(chunks: &[(u64, u8)]) -> DynamicIndex {
        DynamicIndex::from_entries(chunks.iter().map(|&(end, d)| (end, [d; 32])).collect()).unwrap()
    }

    #[test]
    fn bytes_in_the_same_chunks_at_the_same_place_are_the_same() {
        let a = index(&[(100, 1), (200, 2), (300, 3)]);
        // The same chunks 2 and 3, shifted by 50 bytes in the other stream.
        let b = index(&[(150, 9), (250, 2), (350, 3)]);
        assert!(same_chunks(&a, 120, &b, 170, 150));
        assert!(!same_chunks(&a, 120, &b, 180, 150), "other offset in chunk");
        assert!(!same_chunks(&a, 50, &b, 100, 100), "first chunk differs");
        assert!(!same_chunks(&a, 120, &b, 170, 500), "runs past the end");
        assert!(same_chunks(&a, 0, &b, 0, 0));
    }

    use crate::format::Digest;
    use crate::store::open::tests::{fixture, CountingSource};
    use crate::store::open::{open_archive, OpenedArchive};
    use std::collections::HashSet;

    fn open(snapshot: &str, counting: &Arc<CountingSource>) -> PxarArchive {
        let snapshot = fixture(snapshot);
        let OpenedArchive::Pxar(archive) =
            open_archive(&snapshot, "root.pxar", counting.reader()).unwrap()
        else {
            panic!("a pxar archive");
        };
        archive
    }

    fn run(a: &PxarArchive, b: &PxarArchive, options: &DiffOptions) -> (Vec<Change>, DiffStats) {
        let mut changes = Vec::new();
        let stats = diff_archives(a, b, options, &mut |c| {
            changes.push(c);
            Ok(())
        })
        .unwrap();
        (changes, stats)
    }

    fn lines(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| {
                let aspects: Vec<&str> = c.aspects.iter().map(|a| a.name()).collect();
                format!(
                    "{} {} {}",
                    c.kind.sign(),
                    show_path(&c.path),
                    aspects.join(",")
                )
            })
            .collect()
    }

    const META_1: &str = "host/fixture-meta/2026-11-25T08:28:43Z";
    const META_2: &str = "host/fixture-meta/2026-11-25T08:28:55Z";

    #[test]
    fn the_fixture_changes_without_a_payload_chunk() {
        let counting = CountingSource::over(&fixture(META_1));
        let (a, b) = (open(META_1, &counting), open(META_2, &counting));
        let (changes, stats) = run(&a, &b, &DiffOptions::default());
        assert_eq!(
            lines(&changes),
            [
                "M /data mtime",
                "+ /data/added.txt ",
                "M /data/big-text content,size,mtime",
                "- /data/rand-4097 ",
                "M /data/rand-65536 mode",
            ]
        );
        assert_eq!((stats.added, stats.removed, stats.modified), (1, 1, 3));
        let payload: HashSet<Digest> = [&a, &b]
            .iter()
            .flat_map(|x| x.payload.as_ref().unwrap().index().digests().to_vec())
            .collect();
        let meta: HashSet<Digest> = [&a, &b]
            .iter()
            .flat_map(|x| x.meta.index().digests().to_vec())
            .collect();
        let fetched = counting.fetched.lock().unwrap();
        assert!(!fetched.is_empty());
        assert!(
            fetched
                .iter()
                .all(|d| meta.contains(d) || !payload.contains(d)),
            "a payload chunk was fetched"
        );
    }

    #[test]
    fn a_path_limits_the_diff_and_must_exist() {
        let counting = CountingSource::over(&fixture(META_1));
        let (a, b) = (open(META_1, &counting), open(META_2, &counting));
        let options = DiffOptions {
            path: Some(b"data/big-text".to_vec()),
            ..Default::default()
        };
        assert_eq!(
            lines(&run(&a, &b, &options).0),
            ["M /data/big-text content,size,mtime"]
        );
        let missing = DiffOptions {
            path: Some(b"nowhere".to_vec()),
            ..Default::default()
        };
        let err = diff_archives(&a, &b, &missing, &mut |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
    }

    #[test]
    fn legacy_and_split_archives_of_one_tree_compare_equal_by_bytes() {
        let counting = CountingSource::over(&fixture(META_1));
        let legacy = open("host/fixture-legacy/2026-11-25T08:28:42Z", &counting);
        let split = open("host/fixture-data/2026-11-25T08:28:43Z", &counting);
        let (changes, stats) = run(&legacy, &split, &DiffOptions::default());
        assert_eq!(lines(&changes), Vec::<String>::new());
        assert!(stats.content_not_compared > 0);
        let compare = DiffOptions {
            compare_content: true,
            ..Default::default()
        };
        let (changes, stats) = run(&legacy, &split, &compare);
        assert_eq!(lines(&changes), Vec::<String>::new());
        assert_eq!(stats.content_not_compared, 0);
        assert!(stats.content_compared > 0);
    }
}
