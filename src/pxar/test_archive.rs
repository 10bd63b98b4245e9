//! Test-only builder of small v1 archives, following the reference layout (pxar.md §5, §7),
//! so the readers can be tested on hand-made and deliberately broken input.

use super::format::*;

pub enum Node {
    Dir(Vec<(&'static [u8], Node)>),
    File(&'static [u8]),
    Symlink(&'static [u8]),
    /// Target path relative to the root; the target must come earlier.
    Hardlink(&'static [u8]),
}

fn item(out: &mut Vec<u8>, htype: u64, content: &[u8]) {
    out.extend_from_slice(&Header::new(htype, content.len() as u64).to_bytes());
    out.extend_from_slice(content);
}

/// The attributes every test entry has, with its `mode`.
pub fn test_stat(mode: u64) -> Stat {
    Stat {
        mode,
        flags: 0,
        uid: 1000,
        gid: 1000,
        mtime: MTime {
            secs: 1_700_000_000,
            nanos: 5,
        },
    }
}

fn stat(mode: u64) -> [u8; 40] {
    test_stat(mode).to_bytes()
}

fn with_nul(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.push(0);
    v
}

/// The reference BST permutation of `n` sorted items (pxar.md §7.4).
pub fn bst_order(n: usize) -> Vec<usize> {
    fn place(out: &mut [usize], n: usize, o: usize, e: u32, i: usize) {
        let p = 1usize << e;
        let t = p + p / 2 - 1;
        let m = if n > t { p - 1 } else { p - 1 - (t - n) };
        out[i] = o + m;
        if m > 0 {
            place(out, m, o, e.saturating_sub(1), 2 * i + 1);
        }
        if m + 1 < n {
            place(out, n - m - 1, o + m + 1, e.saturating_sub(1), 2 * i + 2);
        }
    }
    let mut out = vec![0; n];
    if n > 0 {
        place(&mut out, n, 0, n.ilog2(), 0);
    }
    out
}

struct Builder {
    out: Vec<u8>,
    filenames: Vec<(Vec<u8>, u64)>,
}

impl Builder {
    fn dir(&mut self, path: &[u8], children: &[(&'static [u8], Node)]) {
        let entry = self.out.len() as u64;
        item(&mut self.out, PXAR_ENTRY, &stat(mode::IFDIR | 0o755));
        let mut table = Vec::new();
        for (name, node) in children {
            let mut child_path = path.to_vec();
            if !child_path.is_empty() {
                child_path.push(b'/');
            }
            child_path.extend_from_slice(name);
            let start = self.out.len() as u64;
            self.filenames.push((child_path.clone(), start));
            item(&mut self.out, PXAR_FILENAME, &with_nul(name));
            match node {
                Node::Dir(grand) => self.dir(&child_path, grand),
                Node::File(data) => {
                    item(&mut self.out, PXAR_ENTRY, &stat(mode::IFREG | 0o644));
                    item(&mut self.out, PXAR_PAYLOAD, data);
                }
                Node::Symlink(target) => {
                    item(&mut self.out, PXAR_ENTRY, &stat(mode::IFLNK | 0o777));
                    item(&mut self.out, PXAR_SYMLINK, &with_nul(target));
                }
                Node::Hardlink(target) => {
                    let target_offset = self
                        .filenames
                        .iter()
                        .find(|(p, _)| p.as_slice() == *target)
                        .expect("hardlink target first")
                        .1;
                    let mut content = (start - target_offset).to_le_bytes().to_vec();
                    content.extend_from_slice(&with_nul(target));
                    item(&mut self.out, PXAR_HARDLINK, &content);
                }
            }
            table.push((pxar_hash(name), start, self.out.len() as u64 - start));
        }
        let goodbye = self.out.len() as u64;
        table.sort_by_key(|t| t.0);
        let mut content = Vec::new();
        for index in bst_order(table.len()) {
            let (hash, start, size) = table[index];
            content.extend_from_slice(&hash.to_le_bytes());
            content.extend_from_slice(&(goodbye - start).to_le_bytes());
            content.extend_from_slice(&size.to_le_bytes());
        }
        let full = 16 + 24 * (table.len() as u64 + 1);
        content.extend_from_slice(&PXAR_GOODBYE_TAIL_MARKER.to_le_bytes());
        content.extend_from_slice(&(goodbye - entry).to_le_bytes());
        content.extend_from_slice(&full.to_le_bytes());
        item(&mut self.out, PXAR_GOODBYE, &content);
    }
}

/// A v1 archive of the given root directory contents (children in the given order).
pub fn build(children: Vec<(&'static [u8], Node)>) -> Vec<u8> {
    let mut builder = Builder {
        out: Vec::new(),
        filenames: Vec::new(),
    };
    builder.dir(b"", &children);
    builder.out
}

/// The worked example of pxar.md §12.1.
pub fn spec_example() -> Vec<u8> {
    build(vec![
        (b"a.txt", Node::File(b"hello")),
        (b"d", Node::Dir(vec![(b"l", Node::Symlink(b"a.txt"))])),
        (b"h", Node::Hardlink(b"a.txt")),
    ])
}

/// `depth` directories nested in each other, named `n`.
pub fn nested(depth: usize) -> Vec<u8> {
    let mut node = Node::Dir(Vec::new());
    for _ in 1..depth {
        node = Node::Dir(vec![(b"n", node)]);
    }
    build(vec![(b"n", node)])
}
