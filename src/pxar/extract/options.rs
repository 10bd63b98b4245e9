//! What an extraction is asked to do, and what it reports back.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// How to extract.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Replace existing non-directories.
    pub overwrite: bool,
    /// Accept directories that already exist (and restore their metadata).
    pub allow_existing_dirs: bool,
    /// Only entries matching one of these (or inside a matching directory) are extracted,
    /// with the directories leading to them; empty selects everything.
    pub patterns: Vec<String>,
    /// chown to the archived owner (needs root). Without it, setuid and setgid are cleared
    /// on everything but directories, as GNU tar does: the bits would otherwise apply to
    /// whoever restores.
    pub restore_owner: bool,
    /// Go on past entries that cannot be read or written, and list them in
    /// [`ExtractStats::failed`], instead of stopping at the first.
    pub ignore_errors: bool,
    /// Bytes of file data written so far, updated while the extraction runs (for a
    /// progress display on another thread).
    pub bytes_written: Arc<AtomicU64>,
    /// Entries restored so far, likewise (many small files move the bytes little).
    pub entries_done: Arc<AtomicU64>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            overwrite: false,
            allow_existing_dirs: false,
            patterns: Vec::new(),
            restore_owner: true,
            ignore_errors: false,
            bytes_written: Arc::default(),
            entries_done: Arc::default(),
        }
    }
}

/// What an extraction did.
#[derive(Debug, Default)]
pub struct ExtractStats {
    pub entries: u64,
    pub bytes: u64,
    /// Entries whose setuid/setgid bits were dropped because their owner was not restored.
    pub setid_cleared: u64,
    /// With `ignore_errors`: the entries not restored (or not completely), in archive order.
    pub failed: Vec<Failure>,
}

/// An entry that could not be restored.
#[derive(Debug)]
pub struct Failure {
    /// Path in the archive (lossy UTF-8).
    pub path: String,
    pub error: anyhow::Error,
}

/// The error's chain, which names the entry.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}
