//! The snapshot catalog `catalog.pcat1`: a compact directory tree (names, types, file sizes
//! and mtimes) of a snapshot's v1 pxar archives. Spec: catalog.md.
//!
//! Layout: magic, then one block per directory (children before parents), the root block
//! last, then the root block's offset as u64 LE. A directory entry stores how far *before*
//! its parent's block the child block starts, so offsets strictly decrease while descending;
//! the reader relies on that (and on blocks not being shared) to reject loops.

use std::collections::HashSet;
use std::io::{self, Write};

use super::ReadAt;

/// First 8 bytes of every catalog (`PROXMOX_CATALOG_FILE_MAGIC_1_0`).
pub const CATALOG_MAGIC: [u8; 8] = [0x91, 0xfd, 0x60, 0xf9, 0xc4, 0x67, 0x58, 0xd5];

/// Longest entry name; the official reader rejects 4096 and more.
pub const MAX_NAME_LEN: usize = 4095;

const TRAILER_LEN: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog I/O")]
    Io(#[from] io::Error),
    #[error("not a catalog: bad magic")]
    BadMagic,
    #[error("catalog too short ({0} bytes)")]
    TooShort(u64),
    #[error("catalog directory offset {offset} invalid: {reason}")]
    BadOffset { offset: u64, reason: &'static str },
    #[error("catalog directory block at {offset} malformed: {reason}")]
    BadBlock { offset: u64, reason: &'static str },
    #[error("catalog entry name {name:?} invalid: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("catalog directory block at {0} is referenced more than once")]
    SharedBlock(u64),
    #[error("catalog directory blocks overlap (more bytes parsed than the catalog holds)")]
    OverlappingBlocks,
    #[error("not a directory")]
    NotADirectory,
    #[error("catalog writer: {0}")]
    Unbalanced(&'static str),
}

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Kind of a catalog entry, with its one-byte tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryType {
    Directory,
    File,
    Symlink,
    /// The second and further names of a hardlinked file.
    Hardlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
}

impl EntryType {
    pub fn as_byte(self) -> u8 {
        match self {
            EntryType::Directory => b'd',
            EntryType::File => b'f',
            EntryType::Symlink => b'l',
            EntryType::Hardlink => b'h',
            EntryType::BlockDevice => b'b',
            EntryType::CharDevice => b'c',
            EntryType::Fifo => b'p',
            EntryType::Socket => b's',
        }
    }

    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            b'd' => EntryType::Directory,
            b'f' => EntryType::File,
            b'l' => EntryType::Symlink,
            b'h' => EntryType::Hardlink,
            b'b' => EntryType::BlockDevice,
            b'c' => EntryType::CharDevice,
            b'p' => EntryType::Fifo,
            b's' => EntryType::Socket,
            _ => return None,
        })
    }
}

/// What an entry records besides its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryAttr {
    /// `start`: absolute offset of the directory's block in the catalog.
    Directory {
        start: u64,
    },
    /// `mtime`: whole seconds since the epoch (`st_mtime`, i.e. rounded down).
    File {
        size: u64,
        mtime: i64,
    },
    Symlink,
    Hardlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
}

/// One named entry of a directory block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub attr: EntryAttr,
}

impl DirEntry {
    pub fn entry_type(&self) -> EntryType {
        match self.attr {
            EntryAttr::Directory { .. } => EntryType::Directory,
            EntryAttr::File { .. } => EntryType::File,
            EntryAttr::Symlink => EntryType::Symlink,
            EntryAttr::Hardlink => EntryType::Hardlink,
            EntryAttr::BlockDevice => EntryType::BlockDevice,
            EntryAttr::CharDevice => EntryType::CharDevice,
            EntryAttr::Fifo => EntryType::Fifo,
            EntryAttr::Socket => EntryType::Socket,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.attr, EntryAttr::Directory { .. })
    }
}

/// A name must be one non-empty path component of at most [`MAX_NAME_LEN`] bytes.
fn check_name(name: &[u8]) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "too long"
    } else if name.contains(&b'/') {
        "contains '/'"
    } else if name.contains(&0) {
        "contains NUL"
    } else if name == b"." || name == b".." {
        "is '.' or '..'"
    } else {
        return Ok(());
    };
    Err(CatalogError::BadName {
        name: String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned(),
        reason,
    })
}

// ---------------------------------------------------------------------------------------------
// Variable-length integers (catalog.md §2.1)

/// Appends `value` as little-endian base-128 (continuation bit 0x80).
pub fn encode_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `value`: non-negative as [`encode_u64`]; negative as its magnitude with the
/// continuation bit also on the last group, then a terminating zero byte.
pub fn encode_i64(out: &mut Vec<u8>, value: i64) {
    if value >= 0 {
        return encode_u64(out, value as u64);
    }
    let mut magnitude = value.unsigned_abs();
    while magnitude >= 0x80 {
        out.push(0x80 | (magnitude & 0x7f) as u8);
        magnitude >>= 7;
    }
    out.push(0x80 | magnitude as u8);
    out.push(0);
}

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    Truncated,
    /// More than 10 (11 for signed) bytes, or a value that does not fit.
    TooLarge,
}

/// Decodes a `vu64` from the start of `buf`; returns the value and the bytes used.
pub fn decode_u64(buf: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let byte = *buf.get(i).ok_or(VarintError::Truncated)?;
        let group = (byte & 0x7f) as u64;
        // The 10th byte holds only bit 63.
        if i == 9 && group > 1 {
            return Err(VarintError::TooLarge);
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(VarintError::TooLarge)
}

/// Decodes a `vi64` from the start of `buf`; returns the value and the bytes used.
pub fn decode_i64(buf: &[u8]) -> Result<(i64, usize), VarintError> {
    // 11 groups of 7 bits fit easily in u128; range checks happen at the end.
    let mut magnitude: u128 = 0;
    for i in 0..11 {
        let byte = *buf.get(i).ok_or(VarintError::Truncated)?;
        if byte == 0 && i > 0 {
            // A zero after continuation bytes marks a negative value.
            if magnitude > 1u128 << 63 {
                return Err(VarintError::TooLarge);
            }
            let value = if magnitude == 0 {
                0
            } else {
                (-(magnitude as i128)) as i64
            };
            return Ok((value, i + 1));
        }
        magnitude |= ((byte & 0x7f) as u128) << (7 * i);
        if byte & 0x80 == 0 {
            return i64::try_from(magnitude)
                .map(|v| (v, i + 1))
                .map_err(|_| VarintError::TooLarge);
        }
    }
    Err(VarintError::TooLarge)
}

// ---------------------------------------------------------------------------------------------
// Writer

struct OpenDir {
    name: Vec<u8>,
    entries: Vec<DirEntry>,
}

/// Writes a catalog in the order the official client does: call the `add_*` methods in
/// archive (encoder) order, `start_directory`/`end_directory` around each directory's
/// children. The root's direct children are the archives (`root.pxar.didx`).
pub struct CatalogWriter<W: Write> {
    writer: W,
    pos: u64,
    /// Open directories; index 0 is the root.
    dirs: Vec<OpenDir>,
}

impl<W: Write> CatalogWriter<W> {
    /// Starts a catalog (writes the magic).
    pub fn new(mut writer: W) -> Result<Self> {
        writer.write_all(&CATALOG_MAGIC)?;
        Ok(Self {
            writer,
            pos: CATALOG_MAGIC.len() as u64,
            dirs: vec![OpenDir {
                name: Vec::new(),
                entries: Vec::new(),
            }],
        })
    }

    /// Opens a subdirectory of the current directory; entries go into it until
    /// [`end_directory`](Self::end_directory).
    pub fn start_directory(&mut self, name: &[u8]) -> Result<()> {
        check_name(name)?;
        self.dirs.push(OpenDir {
            name: name.to_vec(),
            entries: Vec::new(),
        });
        Ok(())
    }

    /// Writes the current directory's block and records it in its parent.
    pub fn end_directory(&mut self) -> Result<()> {
        if self.dirs.len() < 2 {
            return Err(CatalogError::Unbalanced(
                "end_directory without start_directory",
            ));
        }
        let dir = self.dirs.pop().expect("checked above");
        let start = self.write_block(&dir.entries)?;
        self.current().entries.push(DirEntry {
            name: dir.name,
            attr: EntryAttr::Directory { start },
        });
        Ok(())
    }

    pub fn add_file(&mut self, name: &[u8], size: u64, mtime: i64) -> Result<()> {
        self.add(name, EntryAttr::File { size, mtime })
    }

    pub fn add_symlink(&mut self, name: &[u8]) -> Result<()> {
        self.add(name, EntryAttr::Symlink)
    }

    pub fn add_hardlink(&mut self, name: &[u8]) -> Result<()> {
        self.add(name, EntryAttr::Hardlink)
    }

    pub fn add_block_device(&mut self, name: &[u8]) -> Result<()> {
        self.add(name, EntryAttr::BlockDevice)
    }

    pub fn add_char_device(&mut self, name: &[u8]) -> Result<()> {
        self.add(name, EntryAttr::CharDevice)
    }

    pub fn add_fifo(&mut self, name: &[u8]) -> Result<()> {
        self.add(name, EntryAttr::Fifo)
    }

    pub fn add_socket(&mut self, name: &[u8]) -> Result<()> {
        self.add(name, EntryAttr::Socket)
    }

    /// Writes the root block and the trailer; returns the writer (e.g. the bytes of a
    /// `Vec<u8>`). Fails if a directory is still open.
    pub fn finish(mut self) -> Result<W> {
        if self.dirs.len() != 1 {
            return Err(CatalogError::Unbalanced(
                "finish with directories still open",
            ));
        }
        let root = self.dirs.pop().expect("root is always present");
        let start = self.write_block(&root.entries)?;
        self.writer.write_all(&start.to_le_bytes())?;
        self.writer.flush()?;
        Ok(self.writer)
    }

    fn current(&mut self) -> &mut OpenDir {
        self.dirs.last_mut().expect("root is always present")
    }

    fn add(&mut self, name: &[u8], attr: EntryAttr) -> Result<()> {
        check_name(name)?;
        self.current().entries.push(DirEntry {
            name: name.to_vec(),
            attr,
        });
        Ok(())
    }

    /// Writes one directory block at the current position; returns that position.
    fn write_block(&mut self, entries: &[DirEntry]) -> Result<u64> {
        let start = self.pos;
        let block = encode_block(entries, start);
        self.writer.write_all(&block)?;
        self.pos += block.len() as u64;
        Ok(start)
    }
}

/// `block_len`, `entry_count`, entries; directory offsets relative to `start`.
fn encode_block(entries: &[DirEntry], start: u64) -> Vec<u8> {
    let mut body = Vec::new();
    encode_u64(&mut body, entries.len() as u64);
    for entry in entries {
        body.push(entry.entry_type().as_byte());
        encode_u64(&mut body, entry.name.len() as u64);
        body.extend_from_slice(&entry.name);
        match entry.attr {
            // Children are always written before their parent, so this is positive.
            EntryAttr::Directory { start: child } => encode_u64(&mut body, start - child),
            EntryAttr::File { size, mtime } => {
                encode_u64(&mut body, size);
                encode_i64(&mut body, mtime);
            }
            _ => {}
        }
    }
    let mut block = Vec::with_capacity(body.len() + 10);
    encode_u64(&mut block, body.len() as u64);
    block.extend_from_slice(&body);
    block
}

// ---------------------------------------------------------------------------------------------
// Reader

/// Reads a catalog held by anything positional (a file, memory, an index over chunks).
pub struct CatalogReader<R: ReadAt> {
    data: R,
    /// Where directory blocks may lie: between the magic and the trailer.
    blocks_end: u64,
    root_start: u64,
}

impl<R: ReadAt> CatalogReader<R> {
    /// Checks the magic and reads the root offset.
    pub fn new(data: R) -> Result<Self> {
        let size = data.size();
        let min_size = CATALOG_MAGIC.len() as u64 + TRAILER_LEN;
        if size < min_size {
            return Err(CatalogError::TooShort(size));
        }
        let mut magic = [0u8; 8];
        data.read_exact_at(&mut magic, 0)?;
        if magic != CATALOG_MAGIC {
            return Err(CatalogError::BadMagic);
        }
        let mut trailer = [0u8; 8];
        let blocks_end = size - TRAILER_LEN;
        data.read_exact_at(&mut trailer, blocks_end)?;
        let root_start = u64::from_le_bytes(trailer);
        if root_start < CATALOG_MAGIC.len() as u64 || root_start >= blocks_end {
            return Err(CatalogError::BadOffset {
                offset: root_start,
                reason: "root block outside the catalog",
            });
        }
        Ok(Self {
            data,
            blocks_end,
            root_start,
        })
    }

    /// The root directory (nameless); its entries are the archives.
    pub fn root(&self) -> DirEntry {
        DirEntry {
            name: Vec::new(),
            attr: EntryAttr::Directory {
                start: self.root_start,
            },
        }
    }

    /// Entries of a directory, in stored order.
    pub fn read_dir(&self, dir: &DirEntry) -> Result<Vec<DirEntry>> {
        match dir.attr {
            EntryAttr::Directory { start } => self.read_dir_at(start),
            _ => Err(CatalogError::NotADirectory),
        }
    }

    /// Entries of the directory block at absolute offset `start`.
    pub fn read_dir_at(&self, start: u64) -> Result<Vec<DirEntry>> {
        let block = self.read_block(start)?;
        parse_block(&block, start)
    }

    /// Resolves a `/`-separated path below the root (first component: the archive name,
    /// e.g. `root.pxar.didx/etc/hosts`). Empty components are ignored; `""` is the root.
    /// `Ok(None)` if some component does not exist or is not a directory.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<DirEntry>> {
        let mut current = self.root();
        for component in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if !current.is_dir() {
                return Ok(None);
            }
            match self
                .read_dir(&current)?
                .into_iter()
                .find(|e| e.name == component)
            {
                Some(entry) => current = entry,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Visits every entry below the root depth-first, parents before children, with its
    /// full path (`archive/dir/name`, no leading slash). Bounded work on hostile input: each
    /// block is parsed at most once and all blocks together may not exceed the catalog size.
    pub fn walk(&self, mut visit: impl FnMut(&[u8], &DirEntry)) -> Result<()> {
        let mut seen = HashSet::new();
        let mut parsed_bytes = 0u64;
        let mut path = Vec::new();
        // Each frame: length of `path` for this directory, its remaining entries.
        let mut stack = vec![(0usize, Vec::new().into_iter())];
        let root_entries = self.read_dir_tracked(self.root_start, &mut seen, &mut parsed_bytes)?;
        stack[0].1 = root_entries.into_iter();

        while let Some((prefix_len, entries)) = stack.last_mut() {
            let prefix_len = *prefix_len;
            let Some(entry) = entries.next() else {
                stack.pop();
                continue;
            };
            path.truncate(prefix_len);
            if prefix_len > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(&entry.name);
            visit(&path, &entry);
            if let EntryAttr::Directory { start } = entry.attr {
                let children = self.read_dir_tracked(start, &mut seen, &mut parsed_bytes)?;
                stack.push((path.len(), children.into_iter()));
            }
        }
        Ok(())
    }

    fn read_dir_tracked(
        &self,
        start: u64,
        seen: &mut HashSet<u64>,
        parsed_bytes: &mut u64,
    ) -> Result<Vec<DirEntry>> {
        if !seen.insert(start) {
            return Err(CatalogError::SharedBlock(start));
        }
        let block = self.read_block(start)?;
        *parsed_bytes += block.len() as u64;
        if *parsed_bytes > self.blocks_end {
            return Err(CatalogError::OverlappingBlocks);
        }
        parse_block(&block, start)
    }

    /// The bytes of the block at `start` (length prefix included), bounds-checked.
    fn read_block(&self, start: u64) -> Result<Vec<u8>> {
        if start < CATALOG_MAGIC.len() as u64 || start >= self.blocks_end {
            return Err(CatalogError::BadOffset {
                offset: start,
                reason: "outside the directory area",
            });
        }
        let mut head = [0u8; 10];
        let head_len = (self.blocks_end - start).min(head.len() as u64) as usize;
        self.data.read_exact_at(&mut head[..head_len], start)?;
        let (body_len, prefix_len) =
            decode_u64(&head[..head_len]).map_err(|_| CatalogError::BadBlock {
                offset: start,
                reason: "bad block length",
            })?;
        let available = self.blocks_end - start - prefix_len as u64;
        if body_len > available {
            return Err(CatalogError::BadBlock {
                offset: start,
                reason: "block extends past the directory area",
            });
        }
        let mut block = vec![0u8; prefix_len + body_len as usize];
        self.data.read_exact_at(&mut block, start)?;
        Ok(block)
    }
}

/// Parses a whole block (length prefix included) that starts at catalog offset `start`.
fn parse_block(block: &[u8], start: u64) -> Result<Vec<DirEntry>> {
    let bad = |reason| CatalogError::BadBlock {
        offset: start,
        reason,
    };
    let mut cursor = Cursor { buf: block, pos: 0 };
    cursor.u64().map_err(|_| bad("bad block length"))?;
    let count = cursor.u64().map_err(|_| bad("bad entry count"))?;
    // No allocation by `count`: each entry takes at least 3 bytes of the block.
    let mut entries = Vec::new();
    for _ in 0..count {
        let tag = cursor.byte().ok_or_else(|| bad("truncated entry"))?;
        let kind = EntryType::from_byte(tag).ok_or_else(|| bad("unknown entry type"))?;
        let name_len = cursor.u64().map_err(|_| bad("bad name length"))?;
        if name_len > MAX_NAME_LEN as u64 {
            return Err(bad("name too long"));
        }
        let name = cursor
            .bytes(name_len as usize)
            .ok_or_else(|| bad("truncated name"))?;
        check_name(name)?;
        let attr = match kind {
            EntryType::Directory => {
                let back = cursor.u64().map_err(|_| bad("bad directory offset"))?;
                // Children precede parents: a zero or too large offset is a loop or garbage.
                if back == 0 || back > start - CATALOG_MAGIC.len() as u64 {
                    return Err(CatalogError::BadOffset {
                        offset: back,
                        reason: "child block not before its parent",
                    });
                }
                EntryAttr::Directory {
                    start: start - back,
                }
            }
            EntryType::File => {
                let size = cursor.u64().map_err(|_| bad("bad file size"))?;
                let mtime = cursor.i64().map_err(|_| bad("bad file mtime"))?;
                EntryAttr::File { size, mtime }
            }
            EntryType::Symlink => EntryAttr::Symlink,
            EntryType::Hardlink => EntryAttr::Hardlink,
            EntryType::BlockDevice => EntryAttr::BlockDevice,
            EntryType::CharDevice => EntryAttr::CharDevice,
            EntryType::Fifo => EntryAttr::Fifo,
            EntryType::Socket => EntryAttr::Socket,
        };
        entries.push(DirEntry {
            name: name.to_vec(),
            attr,
        });
    }
    if cursor.pos != block.len() {
        return Err(bad("trailing bytes after the entries"));
    }
    Ok(entries)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(byte)
    }

    fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        let slice = self.buf.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        Some(slice)
    }

    fn u64(&mut self) -> Result<u64, VarintError> {
        let (value, used) = decode_u64(&self.buf[self.pos..])?;
        self.pos += used;
        Ok(value)
    }

    fn i64(&mut self) -> Result<i64, VarintError> {
        let (value, used) = decode_i64(&self.buf[self.pos..])?;
        self.pos += used;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vu64(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_u64(&mut out, value);
        out
    }

    fn vi64(value: i64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_i64(&mut out, value);
        out
    }

    /// The worked example of catalog.md §5, byte for byte.
    const EXAMPLE: &str = "91fd60f9c46758d5\
        04016c016c\
        1503\
        6605612e74787405 80e2cfaa06\
        64016405\
        680168\
        120164 0e726f6f742e707861722e64696478 16\
        2300000000000000";

    fn example_bytes() -> Vec<u8> {
        hex::decode(EXAMPLE.replace(' ', "")).unwrap()
    }

    fn write_example() -> Vec<u8> {
        let mut w = CatalogWriter::new(Vec::new()).unwrap();
        w.start_directory(b"root.pxar.didx").unwrap();
        w.add_file(b"a.txt", 5, 1_700_000_000).unwrap();
        w.start_directory(b"d").unwrap();
        w.add_symlink(b"l").unwrap();
        w.end_directory().unwrap();
        w.add_hardlink(b"h").unwrap();
        w.end_directory().unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn varint_examples_from_spec() {
        assert_eq!(vu64(0), [0x00]);
        assert_eq!(vu64(127), [0x7f]);
        assert_eq!(vu64(128), [0x80, 0x01]);
        assert_eq!(vu64(300), [0xac, 0x02]);
        assert_eq!(vi64(-1), [0x81, 0x00]);
        assert_eq!(vi64(1_700_000_000), [0x80, 0xe2, 0xcf, 0xaa, 0x06]);
        assert_eq!(vu64(u64::MAX).len(), 10);
        assert_eq!(vi64(i64::MIN).len(), 11);
    }

    #[test]
    fn varint_hostile_inputs() {
        assert_eq!(decode_u64(&[]), Err(VarintError::Truncated));
        assert_eq!(decode_u64(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(decode_u64(&[0xff; 11]), Err(VarintError::TooLarge));
        // Ten bytes whose last group exceeds bit 63.
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert_eq!(decode_u64(&too_big), Err(VarintError::TooLarge));
        assert_eq!(decode_i64(&vu64(u64::MAX)), Err(VarintError::TooLarge));
        assert_eq!(decode_i64(&[0xff; 12]), Err(VarintError::TooLarge));
        // Magnitude 2^63 + 1 does not fit a negative i64.
        let mut below_min = vi64(i64::MIN);
        below_min[0] |= 1;
        assert_eq!(decode_i64(&below_min), Err(VarintError::TooLarge));
        // A "negative zero" decodes as zero, like the reference decoder.
        assert_eq!(decode_i64(&[0x80, 0x00]), Ok((0, 2)));
    }

    proptest! {
        #[test]
        fn varints_round_trip(u in any::<u64>(), i in any::<i64>()) {
            let enc = vu64(u);
            prop_assert_eq!(decode_u64(&enc), Ok((u, enc.len())));
            let enc = vi64(i);
            prop_assert_eq!(decode_i64(&enc), Ok((i, enc.len())));
        }
    }

    #[test]
    fn writer_reproduces_worked_example() {
        assert_eq!(hex::encode(write_example()), hex::encode(example_bytes()));
    }

    #[test]
    fn reader_parses_worked_example() {
        let data = example_bytes();
        let reader = CatalogReader::new(&data[..]).unwrap();
        let root = reader.read_dir(&reader.root()).unwrap();
        assert_eq!(root.len(), 1);
        assert_eq!(root[0].name, b"root.pxar.didx");
        assert_eq!(root[0].attr, EntryAttr::Directory { start: 0x0d });

        let file = reader.lookup(b"/root.pxar.didx/a.txt").unwrap().unwrap();
        assert_eq!(
            file.attr,
            EntryAttr::File {
                size: 5,
                mtime: 1_700_000_000
            }
        );
        let link = reader.lookup(b"root.pxar.didx//d/l").unwrap().unwrap();
        assert_eq!(link.entry_type(), EntryType::Symlink);
        assert_eq!(reader.lookup(b"root.pxar.didx/missing").unwrap(), None);
        assert_eq!(reader.lookup(b"root.pxar.didx/a.txt/x").unwrap(), None);
        assert_eq!(reader.lookup(b"").unwrap(), Some(reader.root()));
        assert!(matches!(
            reader.read_dir(&file),
            Err(CatalogError::NotADirectory)
        ));

        let mut seen = Vec::new();
        reader
            .walk(|path, e| seen.push((String::from_utf8(path.to_vec()).unwrap(), e.entry_type())))
            .unwrap();
        let want = [
            ("root.pxar.didx", EntryType::Directory),
            ("root.pxar.didx/a.txt", EntryType::File),
            ("root.pxar.didx/d", EntryType::Directory),
            ("root.pxar.didx/d/l", EntryType::Symlink),
            ("root.pxar.didx/h", EntryType::Hardlink),
        ];
        let want: Vec<_> = want.iter().map(|(p, t)| (p.to_string(), *t)).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn round_trip_of_every_entry_kind() {
        let mut w = CatalogWriter::new(Vec::new()).unwrap();
        w.start_directory(b"a.pxar.didx").unwrap();
        w.add_file(b"old", u64::MAX, -1_234_567_890_123).unwrap();
        w.add_block_device(b"blk").unwrap();
        w.add_char_device(b"chr").unwrap();
        w.add_fifo(b"fifo").unwrap();
        w.add_socket(b"sock").unwrap();
        w.start_directory(b"empty").unwrap();
        w.end_directory().unwrap();
        w.add_file(&[0xff, b' ', b'\n'], 0, i64::MIN).unwrap();
        w.end_directory().unwrap();
        w.start_directory(b"b.pxar.didx").unwrap();
        w.end_directory().unwrap();
        let data = w.finish().unwrap();

        let reader = CatalogReader::new(data).unwrap();
        let top = reader.read_dir(&reader.root()).unwrap();
        let names: Vec<_> = top.iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, [b"a.pxar.didx".to_vec(), b"b.pxar.didx".to_vec()]);
        let kinds: Vec<_> = reader
            .read_dir(&top[0])
            .unwrap()
            .iter()
            .map(|e| e.attr.clone())
            .collect();
        assert_eq!(
            kinds[0],
            EntryAttr::File {
                size: u64::MAX,
                mtime: -1_234_567_890_123
            }
        );
        assert_eq!(
            kinds[1..5],
            [
                EntryAttr::BlockDevice,
                EntryAttr::CharDevice,
                EntryAttr::Fifo,
                EntryAttr::Socket
            ]
        );
        assert!(matches!(kinds[5], EntryAttr::Directory { .. }));
        assert_eq!(
            kinds[6],
            EntryAttr::File {
                size: 0,
                mtime: i64::MIN
            }
        );
        assert!(reader.read_dir(&top[1]).unwrap().is_empty());
    }

    #[test]
    fn writer_rejects_bad_names_and_unbalanced_calls() {
        let mut w = CatalogWriter::new(Vec::new()).unwrap();
        for name in [&b""[..], b"a/b", b"a\0b", b".", b".."] {
            assert!(matches!(
                w.add_fifo(name),
                Err(CatalogError::BadName { .. })
            ));
        }
        assert!(matches!(
            w.add_fifo(&[b'x'; 4096]),
            Err(CatalogError::BadName { .. })
        ));
        w.add_fifo(&[b'x'; 4095]).unwrap();
        assert!(matches!(
            w.end_directory(),
            Err(CatalogError::Unbalanced(_))
        ));
        w.start_directory(b"open").unwrap();
        assert!(matches!(w.finish(), Err(CatalogError::Unbalanced(_))));
    }

    /// The example with one byte range replaced.
    fn patched(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut data = example_bytes();
        data[at..at + bytes.len()].copy_from_slice(bytes);
        data
    }

    fn walk_err(data: &[u8]) -> CatalogError {
        match CatalogReader::new(data) {
            Err(e) => e,
            Ok(reader) => reader
                .walk(|_, _| {})
                .expect_err("hostile catalog accepted"),
        }
    }

    #[test]
    fn hostile_headers() {
        assert!(matches!(
            walk_err(&example_bytes()[..15]),
            CatalogError::TooShort(15)
        ));
        assert!(matches!(
            walk_err(&patched(0, &[0])),
            CatalogError::BadMagic
        ));
        // Root offset past the end, inside the magic, and pointing at the trailer.
        for root in [u64::MAX, 3, 0x36] {
            let e = walk_err(&patched(0x36, &root.to_le_bytes()));
            assert!(matches!(e, CatalogError::BadOffset { .. }), "{e}");
        }
    }

    #[test]
    fn hostile_blocks() {
        // Root block length larger than the catalog.
        assert!(matches!(
            walk_err(&patched(0x23, &[0x7f])),
            CatalogError::BadBlock { .. }
        ));
        // Entry count larger than the block holds.
        assert!(matches!(
            walk_err(&patched(0x24, &[0x05])),
            CatalogError::BadBlock { .. }
        ));
        // Unknown entry type.
        assert!(matches!(
            walk_err(&patched(0x25, b"x")),
            CatalogError::BadBlock { .. }
        ));
        // Name with '/' and with NUL.
        assert!(matches!(
            walk_err(&patched(0x2a, b"/")),
            CatalogError::BadName { .. }
        ));
        assert!(matches!(
            walk_err(&patched(0x2a, &[0])),
            CatalogError::BadName { .. }
        ));
        // Huge varint as the child offset (root entry's last byte starts a 10+ byte run).
        assert!(matches!(
            walk_err(&patched(0x35, &[0xff])),
            CatalogError::BadBlock { .. }
        ));
        // Child offset 0 (self loop) and one pointing before the magic.
        for back in [0x00, 0x20] {
            let e = walk_err(&patched(0x35, &[back]));
            assert!(matches!(e, CatalogError::BadOffset { .. }), "{e}");
        }
        // Block length too short leaves entries unparsed; too long leaves trailing bytes.
        assert!(matches!(
            walk_err(&patched(0x0d, &[0x14])),
            CatalogError::BadBlock { .. }
        ));
        let mut data = example_bytes();
        data.insert(0x36, 0); // one padding byte after the root block's entries
        data[0x23] = 0x13; // and a root block length that includes it
        let reader = CatalogReader::new(&data[..]).unwrap();
        let e = reader.read_dir(&reader.root()).unwrap_err();
        assert!(e.to_string().contains("trailing bytes"), "{e}");
    }

    #[test]
    fn shared_blocks_are_rejected() {
        // Two archive entries pointing at the same child block: a DAG, not a tree.
        let mut w = CatalogWriter::new(Vec::new()).unwrap();
        w.start_directory(b"a").unwrap();
        w.add_fifo(b"f").unwrap();
        w.end_directory().unwrap();
        let mut data = w.finish().unwrap();
        // Rewrite the root block with the `d a` entry twice.
        let child = 8u64;
        let root = data.len() as u64 - 8;
        data.truncate(root as usize);
        let mut w_entries = Vec::new();
        for name in [b"a", b"b"] {
            w_entries.push(DirEntry {
                name: name.to_vec(),
                attr: EntryAttr::Directory { start: child },
            });
        }
        data.extend_from_slice(&encode_block(&w_entries, root));
        data.extend_from_slice(&root.to_le_bytes());
        let reader = CatalogReader::new(&data[..]).unwrap();
        assert_eq!(reader.read_dir(&reader.root()).unwrap().len(), 2);
        assert!(matches!(
            reader.walk(|_, _| {}),
            Err(CatalogError::SharedBlock(8))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random corruption never panics or hangs; it parses or fails.
        #[test]
        fn corrupted_catalogs_do_not_panic(at in 0usize..62, byte in any::<u8>(), cut in 16usize..=62) {
            let mut data = example_bytes();
            data[at] = byte;
            data.truncate(cut);
            if let Ok(reader) = CatalogReader::new(&data[..]) {
                let _ = reader.walk(|_, _| {});
                let _ = reader.lookup(b"root.pxar.didx/d/l");
            }
        }
    }
}
