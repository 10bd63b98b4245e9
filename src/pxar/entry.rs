//! A decoded archive entry: name, kind, metadata and where it lives in the stream.

use super::metadata::Metadata;

/// Bit set in the [`Entry::id`] of every entry that is not a directory.
///
/// A directory's end offset can equal the FILENAME offset of its next sibling, so the two
/// kinds of offsets need a tag to stay distinct.
pub const NON_DIR_ID_TAG: u64 = 1 << 63;

/// Where a regular file's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileData {
    /// v1: the contents follow the PAYLOAD header in the same stream, at this offset.
    Inline { data_offset: u64 },
    /// v2: a PAYLOAD item at this offset of the payload stream (header included).
    PayloadRef { payload_offset: u64 },
}

/// What an entry is, with the data specific to that kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File {
        size: u64,
        data: FileData,
    },
    Directory,
    Symlink {
        target: Vec<u8>,
    },
    /// `target_filename_offset` is where the target's FILENAME item starts (already resolved
    /// from the stored backward distance); `target_path` is relative to the archive root.
    Hardlink {
        target_filename_offset: u64,
        target_path: Vec<u8>,
    },
    Device {
        major: u64,
        minor: u64,
    },
    Fifo,
    Socket,
}

/// One entry of an archive.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The file name (empty for the root).
    pub name: Vec<u8>,
    pub kind: EntryKind,
    /// Hardlink entries carry no metadata of their own: theirs is the default value.
    pub metadata: Metadata,
    /// Offset of the FILENAME item (`None` for the root, and for directories re-opened by
    /// [`Entry::id`], whose name is not recorded at their end).
    pub filename_offset: Option<u64>,
    /// Offset of the ENTRY item (or of the HARDLINK item for hardlinks).
    pub entry_offset: u64,
    /// For directories: the offset just past their GOODBYE item. `None` in entries of the
    /// sequential decoder, which has not reached the end yet.
    pub dir_end: Option<u64>,
}

impl Entry {
    /// A stable identifier built from archive offsets, suitable as an inode number:
    /// a directory's end offset (the root's is the archive size), or `FILENAME offset |`
    /// [`NON_DIR_ID_TAG`] for every other entry. `Accessor::entry_at` re-opens it.
    pub fn id(&self) -> Option<u64> {
        match self.kind {
            EntryKind::Directory => self.dir_end,
            _ => self.filename_offset.map(|offset| offset | NON_DIR_ID_TAG),
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Directory)
    }

    /// File size for regular files, 0 for everything else.
    pub fn file_size(&self) -> u64 {
        match self.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        }
    }

    /// The `st_mode` (type and permission bits).
    pub fn mode(&self) -> u64 {
        self.metadata.stat.mode
    }
}
