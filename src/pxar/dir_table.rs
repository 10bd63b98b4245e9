//! Reading a directory's goodbye table (pxar.md §7, §10): locating it from the directory's
//! end offset, and searching it in the implicit binary-search-tree order.

use std::sync::Arc;

use super::decode_error::{DecodeError, Result};
use super::format::{GOODBYE_ITEM_SIZE, HEADER_SIZE, PXAR_GOODBYE, PXAR_GOODBYE_TAIL_MARKER};
use crate::format::ReadAt;

/// Tables up to this many bytes are loaded whole and cached; larger ones are read item by
/// item so that one lookup costs O(log n) small reads and no big allocation.
pub const MAX_CACHED_TABLE_BYTES: u64 = 256 << 10;
/// Directories with more children than this are refused by `read_dir` (96 MiB of table).
pub const MAX_LISTED_CHILDREN: u64 = 1 << 22;

/// One 24-byte goodbye-table item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoodbyeItem {
    pub hash: u64,
    /// Distance back from the GOODBYE header to the child's FILENAME.
    pub offset: u64,
    /// Byte length of the child (not exact for v2 files, pxar.md §7.1).
    pub size: u64,
}

impl GoodbyeItem {
    fn from_bytes(raw: &[u8]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().unwrap());
        GoodbyeItem {
            hash: u64_at(0),
            offset: u64_at(8),
            size: u64_at(16),
        }
    }
}

/// A directory located by its end offset.
#[derive(Debug)]
pub struct DirTable {
    /// Offset just past the GOODBYE item.
    pub end: u64,
    /// Offset of the GOODBYE header.
    pub goodbye: u64,
    /// Offset of the directory's ENTRY (0 for a v2 root: the FORMAT_VERSION item).
    pub entry_offset: u64,
    /// Number of children.
    pub len: u64,
    /// The child items when the table is small enough to keep.
    items: Option<Arc<[GoodbyeItem]>>,
}

impl DirTable {
    /// Reads the tail item before `end` and validates the table's frame.
    pub fn open(reader: &dyn ReadAt, end: u64) -> Result<DirTable> {
        let invalid = |reason: &str| DecodeError::invalid(end, reason.to_string());
        if end > reader.size() || end < HEADER_SIZE + GOODBYE_ITEM_SIZE {
            return Err(invalid("directory end out of range"));
        }
        let tail = read_item(reader, end - GOODBYE_ITEM_SIZE)?;
        if tail.hash != PXAR_GOODBYE_TAIL_MARKER {
            return Err(invalid("no goodbye tail marker"));
        }
        let table_bytes = tail
            .size
            .checked_sub(HEADER_SIZE + GOODBYE_ITEM_SIZE)
            .filter(|bytes| bytes % GOODBYE_ITEM_SIZE == 0 && tail.size <= end)
            .ok_or_else(|| invalid("bad goodbye table size"))?;
        let goodbye = end - tail.size;
        let mut raw = [0u8; 16];
        reader.read_exact_at(&mut raw, goodbye)?;
        let header = super::format::Header::from_bytes(&raw);
        if header.htype != PXAR_GOODBYE || header.full_size != tail.size {
            return Err(invalid("goodbye tail does not match its GOODBYE header"));
        }
        if tail.offset == 0 || tail.offset > goodbye {
            return Err(invalid("goodbye tail points outside the archive"));
        }
        let mut table = DirTable {
            end,
            goodbye,
            entry_offset: goodbye - tail.offset,
            len: table_bytes / GOODBYE_ITEM_SIZE,
            items: None,
        };
        if table_bytes <= MAX_CACHED_TABLE_BYTES {
            table.items = Some(table.read_items(reader, 0, table.len)?.into());
        }
        Ok(table)
    }

    /// Reads `count` items from index `first` on.
    fn read_items(&self, reader: &dyn ReadAt, first: u64, count: u64) -> Result<Vec<GoodbyeItem>> {
        let mut raw = vec![0u8; (count * GOODBYE_ITEM_SIZE) as usize];
        reader.read_exact_at(&mut raw, self.item_offset(first))?;
        Ok(raw
            .chunks_exact(GOODBYE_ITEM_SIZE as usize)
            .map(GoodbyeItem::from_bytes)
            .collect())
    }

    fn item_offset(&self, index: u64) -> u64 {
        self.goodbye + HEADER_SIZE + index * GOODBYE_ITEM_SIZE
    }

    /// The child item at `index` (< `len`).
    pub fn item(&self, reader: &dyn ReadAt, index: u64) -> Result<GoodbyeItem> {
        match &self.items {
            Some(items) => Ok(items[index as usize]),
            None => read_item(reader, self.item_offset(index)),
        }
    }

    /// All child items in table order (for listing).
    pub fn all_items(&self, reader: &dyn ReadAt) -> Result<Arc<[GoodbyeItem]>> {
        if let Some(items) = &self.items {
            return Ok(items.clone());
        }
        if self.len > MAX_LISTED_CHILDREN {
            return Err(DecodeError::invalid(
                self.goodbye,
                "directory too large to list",
            ));
        }
        Ok(self.read_items(reader, 0, self.len)?.into())
    }

    /// The FILENAME offset of a child item, checked to lie inside this directory.
    pub fn child_filename_offset(&self, item: &GoodbyeItem) -> Result<u64> {
        match self.goodbye.checked_sub(item.offset) {
            Some(offset) if offset > self.entry_offset && item.offset > 0 => Ok(offset),
            _ => Err(DecodeError::invalid(
                self.goodbye,
                "goodbye item points outside its directory",
            )),
        }
    }

    /// Table indices whose hash equals `hash`, in the order the reference searches them:
    /// the binary-search path, and below each match its left subtree before its right one.
    pub fn candidates(&self, reader: &dyn ReadAt, hash: u64) -> Result<Vec<u64>> {
        let mut found = Vec::new();
        let mut pending = vec![0u64];
        while let Some(index) = pending.pop() {
            if index >= self.len {
                continue;
            }
            let item = self.item(reader, index)?;
            match hash.cmp(&item.hash) {
                std::cmp::Ordering::Less => pending.push(2 * index + 1),
                std::cmp::Ordering::Greater => pending.push(2 * index + 2),
                std::cmp::Ordering::Equal => {
                    found.push(index);
                    pending.push(2 * index + 2);
                    pending.push(2 * index + 1);
                }
            }
        }
        Ok(found)
    }
}

fn read_item(reader: &dyn ReadAt, offset: u64) -> Result<GoodbyeItem> {
    let mut raw = [0u8; 24];
    reader
        .read_exact_at(&mut raw, offset)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => DecodeError::Truncated { offset },
            _ => err.into(),
        })?;
    Ok(GoodbyeItem::from_bytes(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pxar::test_archive::bst_order;

    fn table_bytes(hashes: &[u64]) -> (Vec<u8>, u64) {
        // A fake directory: 100 filler bytes, then GOODBYE with the given items + tail.
        let mut data = vec![0u8; 100];
        let goodbye = data.len() as u64;
        let full = 16 + 24 * (hashes.len() as u64 + 1);
        data.extend_from_slice(&PXAR_GOODBYE.to_le_bytes());
        data.extend_from_slice(&full.to_le_bytes());
        for (i, h) in hashes.iter().enumerate() {
            data.extend_from_slice(&h.to_le_bytes());
            data.extend_from_slice(&(i as u64 + 1).to_le_bytes());
            data.extend_from_slice(&1u64.to_le_bytes());
        }
        data.extend_from_slice(&PXAR_GOODBYE_TAIL_MARKER.to_le_bytes());
        data.extend_from_slice(&goodbye.to_le_bytes());
        data.extend_from_slice(&full.to_le_bytes());
        (data, goodbye)
    }

    #[test]
    fn layout_matches_reference_table() {
        assert_eq!(bst_order(5), vec![3, 1, 4, 0, 2]);
        assert_eq!(
            bst_order(17),
            vec![9, 5, 13, 3, 7, 11, 15, 1, 4, 6, 8, 10, 12, 14, 16, 0, 2]
        );
    }

    #[test]
    fn every_hash_is_found_including_duplicates() {
        for n in 1..40usize {
            // Hashes with runs of duplicates: 0,0,0,1,1,1,...
            let sorted: Vec<u64> = (0..n as u64).map(|i| i / 3 * 10).collect();
            let hashes: Vec<u64> = bst_order(n).iter().map(|&s| sorted[s]).collect();
            let (data, _) = table_bytes(&hashes);
            let table = DirTable::open(&data, data.len() as u64).unwrap();
            assert_eq!(table.len, n as u64);
            for want in sorted.iter().copied() {
                let found = table.candidates(&data, want).unwrap();
                let expected = hashes.iter().filter(|&&h| h == want).count();
                assert_eq!(found.len(), expected, "n={n} hash={want}");
                assert!(found.iter().all(|&i| hashes[i as usize] == want));
            }
            assert!(table.candidates(&data, 5).unwrap().is_empty());
        }
    }

    #[test]
    fn broken_tails_are_rejected() {
        let (data, _) = table_bytes(&[1, 2, 3]);
        let end = data.len() as u64;
        assert!(DirTable::open(&data, end - 1).is_err());
        assert!(DirTable::open(&data, end + 1).is_err());
        assert!(DirTable::open(&data, 10).is_err());
        let mut bad = data.clone();
        let n = bad.len();
        bad[n - 8..].copy_from_slice(&(end + 24).to_le_bytes());
        assert!(DirTable::open(&bad, end).is_err());
        let mut bad = data.clone();
        bad[n - 16..n - 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(DirTable::open(&bad, end).is_err());
    }
}
