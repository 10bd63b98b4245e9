//! Finding paths in a snapshot's pxar archives by glob, without reading file contents: a
//! legacy archive through the snapshot's catalog (one small file), a split archive through
//! its metadata stream. Only an archive without either is walked whole.

use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::access::SnapshotAccess;
use super::chunk_reader::ChunkReader;
use super::open::{mountables, open_index_reader, Mountable};
use crate::format::catalog::{CatalogReader, EntryAttr, EntryType};
use crate::format::ReadAt;
use crate::pxar::decoder::Decoder;
use crate::pxar::entry::{Entry, EntryKind};
use crate::pxar::format::mode;
use crate::pxar::pattern::PatternSet;

/// The catalog a legacy (v1) backup writes beside its archives.
pub const CATALOG_NAME: &str = "catalog.pcat1.didx";

/// A path that matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The archive's name (`root.pxar`).
    pub archive: String,
    /// Below the archive root, no leading `/`.
    pub path: Vec<u8>,
    /// `ls -l`'s type letter, and `h` for a second name of a hardlinked file.
    pub kind: char,
    /// Regular files only.
    pub size: Option<u64>,
    /// Seconds since the epoch; the catalog records it for regular files only.
    pub mtime: Option<i64>,
}

/// Visits what matches `pattern` (see [`PatternSet`]: as `--exclude`, at any depth unless it
/// starts with `/`) in every pxar archive of the snapshot, archive by archive in path order.
pub fn find_in_snapshot(
    snapshot: &dyn SnapshotAccess,
    chunks: Arc<dyn ChunkReader>,
    pattern: &PatternSet,
    visit: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<()> {
    let has_catalog = snapshot
        .manifest()
        .files
        .iter()
        .any(|f| f.filename == CATALOG_NAME);
    let mut catalog_read = false;
    for archive in mountables(snapshot.manifest()) {
        match &archive {
            Mountable::Pxar { .. } if has_catalog => {
                // One catalog lists every legacy archive of the snapshot.
                if !catalog_read {
                    catalog_read = true;
                    find_in_catalog(snapshot, chunks.clone(), pattern, visit)?;
                }
            }
            Mountable::Pxar { name, file } => {
                let meta = open_index_reader(snapshot, file, chunks.clone())?;
                find_in_stream(name, Arc::new(meta), false, pattern, visit)?;
            }
            Mountable::SplitPxar { name, meta, .. } => {
                let meta = open_index_reader(snapshot, meta, chunks.clone())?;
                find_in_stream(name, Arc::new(meta), true, pattern, visit)?;
            }
            Mountable::Image { .. } => {}
        }
    }
    Ok(())
}

fn find_in_catalog(
    snapshot: &dyn SnapshotAccess,
    chunks: Arc<dyn ChunkReader>,
    pattern: &PatternSet,
    visit: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<()> {
    let catalog = open_index_reader(snapshot, CATALOG_NAME, chunks)?;
    let reader = CatalogReader::new(catalog).context("cannot read the catalog")?;
    let mut failed = None;
    reader
        .walk(|path, entry| {
            if failed.is_some() {
                return;
            }
            // The first component names the archive (`root.pxar.didx`); it is the root.
            let Some((archive, path)) = split_first(path) else {
                return;
            };
            let kind = entry.entry_type();
            if !pattern.selects(path, catalog_mode(kind), false) {
                return;
            }
            let (size, mtime) = match entry.attr {
                EntryAttr::File { size, mtime } => (Some(size), Some(mtime)),
                _ => (None, None),
            };
            let found = Found {
                archive: archive
                    .strip_suffix(".didx")
                    .unwrap_or(&archive)
                    .to_string(),
                path: path.to_vec(),
                kind: catalog_letter(kind),
                size,
                mtime,
            };
            if let Err(err) = visit(found) {
                failed = Some(err);
            }
        })
        .context("cannot read the catalog")?;
    failed.map_or(Ok(()), Err)
}

/// `archive/rest` → (`archive`, `rest`); None for the archive itself.
fn split_first(path: &[u8]) -> Option<(String, &[u8])> {
    let slash = path.iter().position(|&c| c == b'/')?;
    let archive = String::from_utf8_lossy(&path[..slash]).into_owned();
    Some((archive, &path[slash + 1..]))
}

/// `ls -l`'s type letter of a catalog entry (`h` for a hardlink).
fn catalog_letter(kind: EntryType) -> char {
    match kind {
        EntryType::File => '-',
        other => other.as_byte() as char,
    }
}

/// The file type bits a catalog entry stands for (what a trailing `/` in a glob tests).
fn catalog_mode(kind: EntryType) -> u32 {
    let bits = match kind {
        EntryType::Directory => mode::IFDIR,
        EntryType::File | EntryType::Hardlink => mode::IFREG,
        EntryType::Symlink => mode::IFLNK,
        EntryType::BlockDevice => mode::IFBLK,
        EntryType::CharDevice => mode::IFCHR,
        EntryType::Fifo => mode::IFIFO,
        EntryType::Socket => mode::IFSOCK,
    };
    bits as u32
}

/// Walks an archive's metadata (never its payload stream).
fn find_in_stream(
    archive: &str,
    meta: Arc<dyn ReadAt>,
    split: bool,
    pattern: &PatternSet,
    visit: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<()> {
    let mut decoder = Decoder::metadata_only(meta, split);
    while let Some(item) = decoder
        .next_entry()
        .with_context(|| format!("cannot read {archive}"))?
    {
        if item.path.is_empty() {
            continue;
        }
        let entry = &item.entry;
        let file_mode = match entry.kind {
            EntryKind::Hardlink { .. } => mode::IFREG,
            _ => entry.mode(),
        };
        if !pattern.selects(&item.path, file_mode as u32, false) {
            continue;
        }
        visit(Found {
            archive: archive.to_string(),
            path: item.path,
            kind: type_letter(entry),
            size: matches!(entry.kind, EntryKind::File { .. }).then(|| entry.file_size()),
            mtime: (!matches!(entry.kind, EntryKind::Hardlink { .. }))
                .then_some(entry.metadata.stat.mtime.secs),
        })?;
    }
    Ok(())
}

/// `ls -l`'s type letter of an entry (`h` for a hardlink).
pub fn type_letter(entry: &Entry) -> char {
    match entry.kind {
        EntryKind::File { .. } => '-',
        EntryKind::Directory => 'd',
        EntryKind::Symlink { .. } => 'l',
        EntryKind::Hardlink { .. } => 'h',
        EntryKind::Device { .. } if entry.metadata.file_type() == mode::IFBLK => 'b',
        EntryKind::Device { .. } => 'c',
        EntryKind::Fifo => 'p',
        EntryKind::Socket => 's',
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::access::SnapshotAccess;
    use crate::store::open::tests::{fixture, CountingSource};

    fn find(snapshot: &str, pattern: &str) -> Vec<Found> {
        let snapshot = fixture(snapshot);
        let counting = CountingSource::over(&snapshot);
        let mut out = Vec::new();
        let pattern = PatternSet::new(&[pattern]).unwrap();
        find_in_snapshot(&snapshot, counting.reader(), &pattern, &mut |f| {
            out.push(f);
            Ok(())
        })
        .unwrap();
        // Only the catalog or the metadata stream is read.
        let manifest = snapshot.manifest();
        let wanted = ["catalog.pcat1.didx", "root.mpxar.didx"];
        let allowed: Vec<_> = manifest
            .files
            .iter()
            .filter(|f| wanted.contains(&f.filename.as_str()))
            .flat_map(|f| {
                crate::store::access::open_index(&snapshot, &f.filename)
                    .unwrap()
                    .digests()
                    .to_vec()
            })
            .collect();
        let fetched = counting.fetched.lock().unwrap();
        assert!(!fetched.is_empty());
        assert!(
            fetched.iter().all(|d| allowed.contains(d)),
            "{}",
            snapshot.dir()
        );
        out
    }

    #[test]
    fn the_catalog_and_the_metadata_stream_find_the_same_paths() {
        let legacy = find("host/fixture-legacy/2026-11-25T08:28:42Z", "rand-*");
        let split = find("host/fixture-data/2026-11-25T08:28:43Z", "rand-*");
        assert!(!legacy.is_empty());
        let paths = |found: &[Found]| -> Vec<(Vec<u8>, char, Option<u64>)> {
            found
                .iter()
                .map(|f| (f.path.clone(), f.kind, f.size))
                .collect()
        };
        assert_eq!(paths(&legacy), paths(&split));
        assert!(legacy.iter().all(|f| f.archive == "root.pxar"));
        let file = split.iter().find(|f| f.path == b"data/rand-4097").unwrap();
        assert_eq!((file.kind, file.size), ('-', Some(4097)));
    }
}
