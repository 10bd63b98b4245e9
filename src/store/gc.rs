//! Garbage collection of a local datastore, by PBS's algorithm and safety rules (checked
//! against `pbs-datastore/src/datastore.rs` `garbage_collection` and `chunk_store.rs`
//! `sweep_unused_chunks`, PBS 4.2):
//!
//! 1. the chunk store lock is taken exclusively ([`process_lock::lock_gc`]): no writer of
//!    another process (pbsfs push, a PBS server's backup) runs meanwhile, and none starts;
//! 2. atime updates must work on the file system (checked first; gc refuses otherwise);
//! 3. phase 1 sets the atime of every chunk that any index file anywhere in the datastore
//!    refers to (every namespace, unfinished snapshots too); a referenced chunk that is missing
//!    keeps its `.bad` copies instead;
//! 4. phase 2 removes every chunk (and `.bad` copy) whose atime is older than the cutoff:
//!    24 h 5 min before the start, or 5 min before the start of the oldest writer of this
//!    process still running if that is older. Chunks between the cutoff and the start were
//!    not marked but are kept as too young ("pending"), as PBS does. Temporary chunk files
//!    left by dead writers are removed too (`chunk_tmp` rules).
//!
//! The atime check writes a temporary file instead of PBS's 4 MiB zero chunk, so gc adds no
//! chunk to the store; the check itself (utimensat, then the atime must have moved) is the same.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use super::chunk_tmp;
use super::local::{touch_atime, LocalDatastore};
use super::process_lock;
use crate::format::index::AnyIndex;
use crate::format::{digest_to_hex, Digest};

/// PBS's default access time cutoff: a day plus five minutes (for clock and relatime slack).
pub const DEFAULT_CUTOFF: Duration = Duration::from_secs(24 * 3600 + 300);
/// Safety gap before the oldest running writer's start.
const WRITER_GAP: i64 = 300;
/// Digests whose atime was set lately: not touched again (PBS caches a million too).
const TOUCHED_CACHE: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Report what would be removed; change nothing (no lock, no atime update).
    pub dry_run: bool,
    pub cutoff: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            cutoff: DEFAULT_CUTOFF,
        }
    }
}

/// Where a running gc is, for a progress display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcProgress {
    CheckingAtime,
    Marking {
        done: usize,
        total: usize,
    },
    /// Percent of the 65536 chunk directories swept.
    Sweeping {
        percent: u32,
    },
    /// A line of a server's garbage collection task log.
    ServerLog(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    /// Chunks older than this (epoch seconds) were removed.
    pub min_atime: i64,
    pub index_files: u64,
    /// Chunks an index refers to that are not in the store.
    pub missing_chunks: u64,
    pub removed_chunks: u64,
    pub removed_bytes: u64,
    pub removed_bad: u64,
    pub still_bad: u64,
    pub removed_tmp_files: u64,
    /// Not referenced, but kept because younger than the cutoff.
    pub pending_chunks: u64,
    pub pending_bytes: u64,
    /// Referenced (or written during the gc) and kept.
    pub kept_chunks: u64,
    pub kept_bytes: u64,
    pub elapsed: Duration,
    /// Done by a PBS server: `removed_tmp_files` is unknown (0), `missing_chunks` counted
    /// from its log's warnings.
    pub by_server: bool,
}

fn epoch_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs garbage collection on `store`; `progress` is called now and then.
pub fn collect(
    store: &LocalDatastore,
    options: &GcOptions,
    progress: &mut dyn FnMut(GcProgress),
) -> Result<GcReport> {
    let started = Instant::now();
    let lock = if options.dry_run {
        None
    } else {
        Some(process_lock::lock_gc(store.root())?)
    };
    let start = epoch_now();
    let oldest_writer = lock
        .as_ref()
        .and_then(|lock| lock.oldest_writer())
        .unwrap_or(start);
    let chunks_dir = store.root().join(".chunks");
    if !options.dry_run {
        progress(GcProgress::CheckingAtime);
        check_atime_updates(&chunks_dir, &touch_atime)?;
    }
    let mut min_atime = start - options.cutoff.as_secs() as i64;
    if oldest_writer < min_atime {
        min_atime = oldest_writer - WRITER_GAP;
    }
    let mut report = GcReport {
        dry_run: options.dry_run,
        min_atime,
        ..Default::default()
    };

    let mut marker = Marker::new(store, options.dry_run);
    let indexes = index_files(store.root())?;
    let total = indexes.len();
    for (done, path) in indexes.iter().enumerate() {
        progress(GcProgress::Marking { done, total });
        marker.mark_index(path, &mut report)?;
    }
    progress(GcProgress::Marking { done: total, total });

    sweep(
        &chunks_dir,
        &marker,
        min_atime,
        oldest_writer,
        &mut report,
        progress,
    )?;
    drop(lock);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Every `.fidx`/`.didx` file below `root` outside the chunk store, in path order: where the
/// layout expects them and anywhere else (PBS marks strays too).
fn index_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed meanwhile (a forget or prune next to us).
            Err(err) if err.kind() == ErrorKind::NotFound && dir != root => continue,
            Err(err) => return Err(err).with_context(|| format!("cannot list {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if dir == root && (name == ".chunks" || name.starts_with(".chunks.")) {
                    continue;
                }
                dirs.push(entry.path());
            } else if kind.is_file() && (name.ends_with(".fidx") || name.ends_with(".didx")) {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Phase 1: what the indexes refer to, recorded in the chunks' atimes (or, in a dry run, in
/// memory).
struct Marker<'a> {
    store: &'a LocalDatastore,
    dry_run: bool,
    touched: lru::LruCache<Digest, ()>,
    /// Dry run only: every referenced digest.
    referenced: HashSet<Digest>,
}

impl<'a> Marker<'a> {
    fn new(store: &'a LocalDatastore, dry_run: bool) -> Self {
        Marker {
            store,
            dry_run,
            touched: lru::LruCache::new(std::num::NonZeroUsize::new(TOUCHED_CACHE).unwrap()),
            referenced: HashSet::new(),
        }
    }

    fn mark_index(&mut self, path: &Path, report: &mut GcReport) -> Result<()> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()), // pruned meanwhile
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        // An index that cannot be read stops gc: its chunks cannot be told apart from garbage.
        let index = AnyIndex::parse(&bytes).map_err(|err| {
            anyhow::anyhow!(
                "index file {} is damaged ({err}); garbage collection stopped so that no chunk \
                 it may refer to is removed",
                path.display()
            )
        })?;
        report.index_files += 1;
        for digest in index.digests() {
            if self.dry_run {
                if self.referenced.insert(*digest) && !self.store.chunk_path(digest).exists() {
                    report.missing_chunks += 1;
                }
                continue;
            }
            if self.touched.put(*digest, ()).is_some() {
                continue;
            }
            let chunk = self.store.chunk_path(digest);
            if !touch_atime(&chunk)? {
                report.missing_chunks += 1;
                // Keep its bad copies while the chunk is missing: they may be all there is.
                for n in 0..=9 {
                    touch_atime(&bad_path(&chunk, n))?;
                }
                log::warn!(
                    "chunk {} is missing, referenced by {}",
                    digest_to_hex(digest),
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Dry run: whether a chunk file of this name would be kept by phase 1's marks.
    fn marks(&self, digest_hex: &str, bad: bool, chunk_dir: &Path) -> bool {
        let Ok(bytes) = hex::decode(digest_hex) else {
            return false;
        };
        let Ok(digest) = <Digest>::try_from(bytes.as_slice()) else {
            return false;
        };
        self.referenced.contains(&digest) && (!bad || !chunk_dir.join(digest_hex).exists())
    }
}

fn bad_path(chunk: &Path, n: u32) -> PathBuf {
    let mut name = chunk.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n}.bad"));
    chunk.with_file_name(name)
}

/// Refuses a file system on which setting the atime (with `touch`) does not work: gc would
/// remove chunks still in use.
fn check_atime_updates(chunks_dir: &Path, touch: &dyn Fn(&Path) -> Result<bool>) -> Result<()> {
    let zero = "0".repeat(64);
    let random: u64 = rand::random();
    let tmp = chunk_tmp::create(&chunks_dir.join("0000"), &zero, &format!("atime{random:x}"))
        .with_context(|| format!("cannot write a test file in {}", chunks_dir.display()))?;
    let result = (|| -> Result<()> {
        // Past the kernel's timestamp granularity.
        std::thread::sleep(Duration::from_secs(1));
        let before = fs::metadata(&tmp.path)?;
        touch(&tmp.path)?;
        let after = fs::metadata(&tmp.path)?;
        if before.ino() != after.ino() {
            bail!("the test file changed during the check");
        }
        if (after.atime(), after.atime_nsec()) <= (before.atime(), before.atime_nsec()) {
            bail!(
                "the file system of {} does not update access times (atime), which garbage \
                 collection relies on to tell used chunks; refusing to run (check the mount \
                 options, e.g. no `noatime` on a file system that then ignores explicit \
                 updates)",
                chunks_dir.display()
            );
        }
        Ok(())
    })();
    let _ = fs::remove_file(&tmp.path);
    result.context("access time safety check failed")
}

/// What a name in a chunk directory is.
enum ChunkName<'a> {
    Chunk(&'a str),
    Bad(&'a str),
    Tmp,
    Other,
}

fn classify(name: &str) -> ChunkName<'_> {
    if name.len() < 64 || !name.as_bytes()[..64].iter().all(u8::is_ascii_hexdigit) {
        return ChunkName::Other;
    }
    let (digest, rest) = name.split_at(64);
    let rest = rest.as_bytes();
    if rest.is_empty() {
        ChunkName::Chunk(digest)
    } else if rest.len() == 6
        && rest[0] == b'.'
        && rest[1].is_ascii_digit()
        && &rest[2..] == b".bad"
    {
        ChunkName::Bad(digest)
    } else if chunk_tmp::is_tmp_name(name) {
        ChunkName::Tmp
    } else {
        ChunkName::Other
    }
}

/// Phase 2: removes what phase 1 did not mark and is older than `min_atime`.
fn sweep(
    chunks_dir: &Path,
    marker: &Marker,
    min_atime: i64,
    oldest_writer: i64,
    report: &mut GcReport,
    progress: &mut dyn FnMut(GcProgress),
) -> Result<()> {
    let now = SystemTime::now();
    let mut last_percent = u32::MAX;
    for prefix in 0..=0xffffu32 {
        let percent = prefix * 100 / 0x10000;
        if percent != last_percent {
            progress(GcProgress::Sweeping { percent });
            last_percent = percent;
        }
        let dir = chunks_dir.join(format!("{prefix:04x}"));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("cannot list {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            let (digest, bad) = match classify(name) {
                ChunkName::Chunk(digest) => (digest, false),
                ChunkName::Bad(digest) => (digest, true),
                ChunkName::Tmp => {
                    if !marker.dry_run && chunk_tmp::remove_if_abandoned(&path, name, now)? {
                        report.removed_tmp_files += 1;
                    }
                    continue;
                }
                ChunkName::Other => continue,
            };
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(err) if err.kind() == ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot stat {}", path.display()))
                }
            };
            if !meta.is_file() {
                continue;
            }
            let size = meta.len();
            let atime = if marker.dry_run && marker.marks(digest, bad, &dir) {
                i64::MAX // what phase 1 would have set
            } else {
                meta.atime()
            };
            if atime < min_atime {
                if !marker.dry_run {
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(err) if err.kind() == ErrorKind::NotFound => continue,
                        Err(err) => {
                            return Err(err)
                                .with_context(|| format!("cannot remove {}", path.display()))
                        }
                    }
                }
                if bad {
                    report.removed_bad += 1;
                } else {
                    report.removed_chunks += 1;
                }
                report.removed_bytes += size;
            } else if bad {
                report.still_bad += 1;
            } else if atime < oldest_writer {
                report.pending_chunks += 1;
                report.pending_bytes += size;
            } else {
                report.kept_chunks += 1;
                report.kept_bytes += size;
            }
        }
    }
    progress(GcProgress::Sweeping { percent: 100 });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_a_chunk_directory_are_told_apart() {
        let digest = "ab".repeat(32);
        assert!(matches!(classify(&digest), ChunkName::Chunk(d) if d == digest));
        assert!(matches!(
            classify(&format!("{digest}.3.bad")),
            ChunkName::Bad(_)
        ));
        assert!(matches!(
            classify(&format!("{digest}.tmp_pbsfs_x1")),
            ChunkName::Tmp
        ));
        assert!(matches!(
            classify(&format!("{digest}.tmp_AbC123")),
            ChunkName::Tmp
        ));
        for other in [
            &digest[..63],
            &format!("{digest}.10.bad"),
            &format!("{digest}x"),
            "zz",
        ] {
            assert!(matches!(classify(other), ChunkName::Other), "{other}");
        }
    }

    #[test]
    fn a_file_system_that_ignores_atime_updates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("0000")).unwrap();
        check_atime_updates(dir.path(), &touch_atime).unwrap();
        let ignored = |_: &Path| -> Result<bool> { Ok(true) };
        let err = check_atime_updates(dir.path(), &ignored).unwrap_err();
        assert!(
            format!("{err:#}").contains("does not update access times"),
            "{err:#}"
        );
        // The test file is gone either way.
        assert_eq!(fs::read_dir(dir.path().join("0000")).unwrap().count(), 0);
    }
}
