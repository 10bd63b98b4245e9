//! What a walk is told (options, exclude filter, observer of the entries archived) and what
//! it reports (statistics).

use std::path::Path;

use anyhow::Result;

use super::exclude::ExcludePatterns;
use super::fs_flags::feature;
use super::lookahead::PreviousArchive;

/// Decides which entries are left out. Sees the path relative to the archive root with a
/// leading `/` (as the official pattern matcher does) and the entry's `st_mode`.
pub trait ExcludeFilter {
    fn is_excluded(&self, path: &[u8], mode: u32) -> bool;
}

/// Entries other than regular files and directories, as the catalog tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtherEntry {
    Hardlink,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// Told about every entry as it is archived (the shape of the official catalog writer), so a
/// catalog can be written alongside. All methods default to doing nothing.
pub trait ArchiveObserver {
    fn start_directory(&mut self, _name: &[u8]) -> Result<()> {
        Ok(())
    }
    fn end_directory(&mut self) -> Result<()> {
        Ok(())
    }
    fn add_file(&mut self, _name: &[u8], _size: u64, _mtime_secs: i64) -> Result<()> {
        Ok(())
    }
    fn add_other(&mut self, _kind: OtherEntry, _name: &[u8]) -> Result<()> {
        Ok(())
    }
}

pub(super) struct NoObserver;
impl ArchiveObserver for NoObserver {}

/// How to walk. `Default` is what the official client does without options.
pub struct ArchiveOptions<'a> {
    /// Descend into mount points (`--all-file-systems`); otherwise they are archived as
    /// empty directories.
    pub all_file_systems: bool,
    /// Requested capture features ([`feature`] bits), further limited per file system.
    pub features: u64,
    pub exclude: Option<&'a dyn ExcludeFilter>,
    /// Command-line exclude patterns; `.pxarexclude` files are honoured in any case.
    pub patterns: Option<&'a ExcludePatterns>,
    /// Called with each entry's path before it is archived (progress); an error aborts.
    pub on_entry: Option<&'a EntryCallback<'a>>,
}

/// See [`ArchiveOptions::on_entry`].
pub type EntryCallback<'a> = dyn Fn(&Path) -> Result<()> + 'a;

impl Default for ArchiveOptions<'_> {
    fn default() -> Self {
        ArchiveOptions {
            all_file_systems: false,
            features: feature::DEFAULT,
            exclude: None,
            patterns: None,
            on_entry: None,
        }
    }
}

/// Optional participants of a walk.
#[derive(Default)]
pub struct ArchiveHooks<'h> {
    pub observer: Option<&'h mut dyn ArchiveObserver>,
    /// Metadata change detection; needs a split encoder.
    pub previous: Option<&'h mut dyn PreviousArchive>,
}

/// What a walk did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Regular files (without hardlinks).
    pub files: u64,
    pub hardlinks: u64,
    pub directories: u64,
    /// Symlinks, devices, fifos, sockets.
    pub others: u64,
    /// Files whose payload was referenced from the previous snapshot.
    pub reused_files: u64,
    pub reused_bytes: u64,
    /// Bytes of the previous payload stream injected (re-used files plus padding).
    pub injected_bytes: u64,
    /// Unchanged files whose previous chunks were not re-used (they would have brought more
    /// padding than the official rule allows): copied from those chunks, not read...
    pub copied_files: u64,
    pub copied_bytes: u64,
    /// ... or, too big to copy or with unreadable previous chunks, read again.
    pub reread_files: u64,
    pub reread_bytes: u64,
    /// Directories and regular files whose attributes (xattrs, ACLs, flags) were read: in
    /// metadata mode only those changed since the previous snapshot.
    pub attributes_read: u64,
    pub warnings: u64,
    /// Entries left out because they could not be read (each also counted as a warning).
    pub left_out: u64,
    /// Files whose reading failed part-way: stored with zeros in place of the rest.
    pub incomplete: u64,
}

impl ArchiveStats {
    /// Something of the tree is missing from the archive or stored incompletely.
    pub fn is_partial(&self) -> bool {
        self.left_out > 0 || self.incomplete > 0
    }

    /// Adds the counts of another walk.
    pub fn add(&mut self, walk: &ArchiveStats) {
        self.files += walk.files;
        self.hardlinks += walk.hardlinks;
        self.directories += walk.directories;
        self.others += walk.others;
        self.reused_files += walk.reused_files;
        self.reused_bytes += walk.reused_bytes;
        self.injected_bytes += walk.injected_bytes;
        self.copied_files += walk.copied_files;
        self.copied_bytes += walk.copied_bytes;
        self.reread_files += walk.reread_files;
        self.reread_bytes += walk.reread_bytes;
        self.attributes_read += walk.attributes_read;
        self.warnings += walk.warnings;
        self.left_out += walk.left_out;
        self.incomplete += walk.incomplete;
    }
}
