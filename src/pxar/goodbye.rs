//! The goodbye table that ends every directory (pxar.md §7): one item per child in
//! implicit binary-search-tree order, then the tail item.

use super::format::{
    Header, GOODBYE_ITEM_SIZE, HEADER_SIZE, PXAR_GOODBYE, PXAR_GOODBYE_TAIL_MARKER,
};

/// One 24-byte table item.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoodbyeItem {
    pub hash: u64,
    pub offset: u64,
    pub size: u64,
}

impl GoodbyeItem {
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[0..8].copy_from_slice(&self.hash.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..24].copy_from_slice(&self.size.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8; 24]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        GoodbyeItem {
            hash: u64_at(0),
            offset: u64_at(8),
            size: u64_at(16),
        }
    }
}

/// A child as the encoder records it while its directory is open: offsets are absolute
/// positions of the child's FILENAME, made relative only when the table is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildRecord {
    pub hash: u64,
    pub filename_offset: u64,
    pub size: u64,
}

/// For a hash-sorted list of `n` items, returns `order` with `order[table_pos] = sorted_index`:
/// the complete-BST array layout where position `i` has children `2i+1` (smaller) and `2i+2`
/// (larger), and an in-order walk yields the sorted list.
pub fn bst_order(n: usize) -> Vec<usize> {
    let mut order = vec![0usize; n];
    if n > 0 {
        let levels = (usize::BITS - 1 - n.leading_zeros()) as usize;
        place(&mut order, n, 0, levels, 0);
    }
    order
}

/// Puts `count` sorted items starting at `first` into the subtree rooted at `root`. `level`
/// is floor(log2) of the subtree's capacity; the left subtree gets as many items as keep the
/// tree complete (filled level by level, the last level from the left).
fn place(order: &mut [usize], count: usize, first: usize, level: usize, root: usize) {
    let full = 1usize << level;
    let threshold = full + full / 2 - 1;
    let left = if count > threshold {
        full - 1
    } else {
        full - 1 - (threshold - count)
    };
    order[root] = first + left;
    if left > 0 {
        place(order, left, first, level - 1, 2 * root + 1);
    }
    if left + 1 < count {
        place(
            order,
            count - left - 1,
            first + left + 1,
            level - 1,
            2 * root + 2,
        );
    }
}

/// Builds the complete GOODBYE item (header, items, tail) for a directory whose table starts
/// at `goodbye_offset` and whose ENTRY is at `entry_offset`.
pub fn build_goodbye(
    mut children: Vec<ChildRecord>,
    goodbye_offset: u64,
    entry_offset: u64,
) -> Vec<u8> {
    // The reference sorts unstably by hash; equal hashes only matter for name collisions.
    children.sort_unstable_by_key(|child| child.hash);
    let full_size = HEADER_SIZE + GOODBYE_ITEM_SIZE * (children.len() as u64 + 1);
    let mut out = Vec::with_capacity(full_size as usize);
    out.extend_from_slice(&Header::new(PXAR_GOODBYE, full_size - HEADER_SIZE).to_bytes());
    for sorted_index in bst_order(children.len()) {
        let child = &children[sorted_index];
        let item = GoodbyeItem {
            hash: child.hash,
            offset: goodbye_offset - child.filename_offset,
            size: child.size,
        };
        out.extend_from_slice(&item.to_bytes());
    }
    let tail = GoodbyeItem {
        hash: PXAR_GOODBYE_TAIL_MARKER,
        offset: goodbye_offset - entry_offset,
        size: full_size,
    };
    out.extend_from_slice(&tail.to_bytes());
    out
}

/// Indices of table items whose hash equals `hash`, in the order the reference searches them
/// (matches first, then the left subtree, then the right one).
pub fn search(table: &[GoodbyeItem], hash: u64) -> Vec<usize> {
    let mut found = Vec::new();
    search_from(table, hash, 0, &mut found);
    found
}

fn search_from(table: &[GoodbyeItem], hash: u64, mut i: usize, found: &mut Vec<usize>) {
    while i < table.len() {
        match hash.cmp(&table[i].hash) {
            std::cmp::Ordering::Less => i = 2 * i + 1,
            std::cmp::Ordering::Greater => i = 2 * i + 2,
            std::cmp::Ordering::Equal => {
                found.push(i);
                // Duplicates may sit in either subtree.
                search_from(table, hash, 2 * i + 1, found);
                search_from(table, hash, 2 * i + 2, found);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pxar::format::pxar_hash;

    #[test]
    fn bst_order_matches_the_reference_permutations() {
        // Values asserted by the reference tests (pxar.md §7.4).
        let expected: &[&[usize]] = &[
            &[0],
            &[1, 0],
            &[1, 0, 2],
            &[2, 1, 3, 0],
            &[3, 1, 4, 0, 2],
            &[3, 1, 5, 0, 2, 4],
            &[3, 1, 5, 0, 2, 4, 6],
            &[4, 2, 6, 1, 3, 5, 7, 0],
            &[5, 3, 7, 1, 4, 6, 8, 0, 2],
            &[6, 3, 8, 1, 5, 7, 9, 0, 2, 4],
            &[7, 3, 9, 1, 5, 8, 10, 0, 2, 4, 6],
            &[7, 3, 10, 1, 5, 9, 11, 0, 2, 4, 6, 8],
            &[7, 3, 11, 1, 5, 9, 12, 0, 2, 4, 6, 8, 10],
            &[7, 3, 11, 1, 5, 9, 13, 0, 2, 4, 6, 8, 10, 12],
            &[7, 3, 11, 1, 5, 9, 13, 0, 2, 4, 6, 8, 10, 12, 14],
            &[8, 4, 12, 2, 6, 10, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0],
            &[9, 5, 13, 3, 7, 11, 15, 1, 4, 6, 8, 10, 12, 14, 16, 0, 2],
        ];
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(bst_order(i + 1), *want, "n = {}", i + 1);
        }
        assert!(bst_order(0).is_empty());
    }

    #[test]
    fn bst_order_is_a_permutation_with_the_search_property() {
        for n in 0..600 {
            let order = bst_order(n);
            let mut seen = order.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
            // Every node: all of its left subtree is smaller, its right subtree larger.
            for i in 0..n {
                let mut stack = vec![(2 * i + 1, true), (2 * i + 2, false)];
                while let Some((j, left)) = stack.pop() {
                    if j >= n {
                        continue;
                    }
                    assert_eq!(order[j] < order[i], left, "n = {n} node {i} desc {j}");
                    stack.push((2 * j + 1, left));
                    stack.push((2 * j + 2, left));
                }
            }
        }
    }

    fn table_of(names: &[String]) -> Vec<GoodbyeItem> {
        let children = names
            .iter()
            .enumerate()
            .map(|(i, name)| ChildRecord {
                hash: pxar_hash(name.as_bytes()),
                filename_offset: i as u64 * 100,
                size: 7,
            })
            .collect();
        let bytes = build_goodbye(children, 1_000_000, 0);
        bytes[16..bytes.len() - 24]
            .chunks(24)
            .map(|c| GoodbyeItem::from_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn every_child_is_found_by_tree_search() {
        for n in [1usize, 2, 3, 7, 8, 100, 3000] {
            let names: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();
            let table = table_of(&names);
            assert_eq!(table.len(), n);
            for (i, name) in names.iter().enumerate() {
                let hits = search(&table, pxar_hash(name.as_bytes()));
                assert_eq!(hits.len(), 1, "{name}");
                assert_eq!(table[hits[0]].offset, 1_000_000 - i as u64 * 100);
            }
            assert!(search(&table, pxar_hash(b"missing")).is_empty());
        }
    }

    #[test]
    fn duplicate_hashes_are_all_found() {
        let children: Vec<ChildRecord> = [5u64, 3, 5, 9, 5, 1]
            .iter()
            .enumerate()
            .map(|(i, &hash)| ChildRecord {
                hash,
                filename_offset: i as u64,
                size: 0,
            })
            .collect();
        let bytes = build_goodbye(children, 100, 0);
        let table: Vec<GoodbyeItem> = bytes[16..bytes.len() - 24]
            .chunks(24)
            .map(|c| GoodbyeItem::from_bytes(c.try_into().unwrap()))
            .collect();
        let hits = search(&table, 5);
        assert_eq!(hits.len(), 3);
        let mut offsets: Vec<u64> = hits.iter().map(|&i| table[i].offset).collect();
        offsets.sort_unstable();
        assert_eq!(offsets, vec![96, 98, 100]);
    }

    #[test]
    fn tail_points_at_entry_and_carries_full_size() {
        let bytes = build_goodbye(Vec::new(), 500, 120);
        assert_eq!(bytes.len(), 40);
        let header = Header::from_bytes(bytes[..16].try_into().unwrap());
        assert_eq!(header.htype, PXAR_GOODBYE);
        assert_eq!(header.full_size, 40);
        let tail = GoodbyeItem::from_bytes(bytes[16..40].try_into().unwrap());
        assert_eq!(tail.hash, PXAR_GOODBYE_TAIL_MARKER);
        assert_eq!(tail.offset, 380);
        assert_eq!(tail.size, 40);
    }
}
