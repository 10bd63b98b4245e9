//! Copying snapshots from one datastore to another (`pbsfs sync`), local or on a server on
//! either side: the source is read through [`DatastoreAccess`], the destination written
//! through [`BackupTarget`].
//!
//! The copy is exact. Chunks travel as the raw blobs they are stored as (so encrypted
//! chunks need no key), index entries keep their digests and offsets (so the manifest's
//! index checksums hold), blobs keep their bytes, and the manifest is stored as it came
//! (so its signature holds); a local destination keeps every file's bytes, a server writes
//! its own index headers and adds its upload statistics to the manifest's unprotected part.
//!
//! Only what the destination lacks travels: a snapshot it already has is skipped, and a
//! chunk it already has (a local chunk file, or a chunk the server session knows from the
//! group's previous snapshot or from this session) is not sent. Chunks are checked before
//! they are sent (CRC; digest and size of plain chunks), as PBS's own pull does.
//!
//! The manifest goes last, as in a push: an interrupted sync leaves no snapshot that looks
//! complete, and the next run copies it again, finding the chunks already sent. The client
//! log (`client.log.blob`, outside the manifest) follows the finished snapshot.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::access::{DatastoreAccess, SnapshotAccess};
use super::archive::{check_blob, check_index, ArchiveKind};
use super::local::MANIFEST_BLOB_NAME;
use super::names::{BackupDir, BackupGroup, BackupNamespace};
use super::target::{BackupSession, BackupTarget, SessionParams};
use super::worker_pool::WorkerPool;
use super::ChunkSource;
use crate::format::blob::{
    check_chunk_crypt_mode, chunk_digest, decompress_bounded, parse_blob, verify_chunk, BlobBody,
    MAX_CHUNK_SIZE,
};
use crate::format::index::{AnyIndex, ChunkIndex};
use crate::format::manifest::CryptMode;
use crate::format::{digest_to_hex, Digest};

/// What to copy: a whole group, or one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    Group(BackupGroup),
    Snapshot(BackupDir),
}

/// How a sync runs.
pub struct SyncOptions {
    /// Recorded as the owner of a group new to a local destination (a server records the
    /// user that connects).
    pub owner: String,
    /// Chunks fetched, checked and sent at once.
    pub workers: usize,
    /// Set (e.g. by a signal handler) to stop; the snapshot being copied is discarded.
    pub abort: Arc<AtomicBool>,
    pub progress: Arc<SyncProgress>,
}

impl SyncOptions {
    pub fn new(owner: &str) -> Self {
        SyncOptions {
            owner: owner.to_string(),
            workers: 4,
            abort: Arc::default(),
            progress: Arc::default(),
        }
    }
}

/// Counters for a progress display, updated as the sync goes.
#[derive(Default)]
pub struct SyncProgress {
    pub snapshots_done: AtomicU64,
    pub snapshots_total: AtomicU64,
    pub chunks_sent: AtomicU64,
    /// Encoded (stored) bytes of the chunks sent.
    pub bytes_sent: AtomicU64,
    /// The snapshot being copied.
    pub current: Mutex<String>,
}

/// What happened to one selected snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    Copied {
        chunks_sent: u64,
        bytes_sent: u64,
        /// Chunks the destination had already.
        chunks_present: u64,
        /// Whether the snapshot's client log came along (a snapshot may have none).
        client_log: bool,
    },
    /// The destination has it already.
    Present,
    /// The destination's group has a newer snapshot; a store only takes snapshots newer
    /// than its group's last one.
    OlderThanDestination,
}

#[derive(Clone, Debug)]
pub struct SyncSummary {
    pub snapshots: Vec<(BackupDir, SnapshotOutcome)>,
    pub duration: Duration,
}

impl SyncSummary {
    pub fn copied(&self) -> usize {
        self.snapshots
            .iter()
            .filter(|(_, o)| matches!(o, SnapshotOutcome::Copied { .. }))
            .count()
    }

    pub fn skipped(&self) -> usize {
        self.snapshots.len() - self.copied()
    }

    /// Chunks and encoded bytes sent, and chunks found present.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.snapshots
            .iter()
            .fold((0, 0, 0), |(c, b, p), (_, outcome)| match outcome {
                SnapshotOutcome::Copied {
                    chunks_sent,
                    bytes_sent,
                    chunks_present,
                    ..
                } => (c + chunks_sent, b + bytes_sent, p + chunks_present),
                _ => (c, b, p),
            })
    }
}

/// The finished, readable snapshots of the source to copy, oldest first per group: those
/// named, or those of every group of `ns` when `selection` is empty; with `last`, only the
/// newest `last` of each group. A named snapshot that is missing or not readable is an
/// error; unfinished and damaged snapshots of a group are passed by.
pub fn select_snapshots(
    source: &dyn DatastoreAccess,
    ns: &BackupNamespace,
    selection: &[Selection],
    last: Option<usize>,
) -> Result<Vec<BackupDir>> {
    let groups: Vec<BackupGroup> = if selection.is_empty() {
        source.list_groups(ns)?
    } else {
        Vec::new()
    };
    let mut chosen: Vec<BackupDir> = Vec::new();
    let add_group = |group: &BackupGroup, chosen: &mut Vec<BackupDir>| -> Result<()> {
        let mut dirs: Vec<BackupDir> = source
            .list_snapshots(ns, Some(group))?
            .into_iter()
            .filter(|s| s.entry.is_readable())
            .map(|s| s.entry.dir)
            .collect();
        dirs.sort_by_key(|d| d.time);
        let keep = last.unwrap_or(dirs.len()).min(dirs.len());
        chosen.extend(dirs.split_off(dirs.len() - keep));
        Ok(())
    };
    for group in &groups {
        add_group(group, &mut chosen)?;
    }
    for item in selection {
        match item {
            Selection::Group(group) => add_group(group, &mut chosen)?,
            Selection::Snapshot(dir) => {
                let listed = source.list_snapshots(ns, Some(&dir.group))?;
                match listed.iter().find(|s| s.entry.dir == *dir) {
                    Some(s) if s.entry.is_readable() => chosen.push(dir.clone()),
                    Some(_) => bail!("snapshot {dir} is unfinished or damaged"),
                    None => bail!("snapshot {dir} not found in namespace '{ns}'"),
                }
            }
        }
    }
    let mut seen = HashSet::new();
    chosen.retain(|dir| seen.insert(dir.clone()));
    chosen.sort_by(|a, b| (&a.group, a.time).cmp(&(&b.group, b.time)));
    Ok(chosen)
}

/// Copies `snapshots` of `source`'s namespace `from_ns` to `target`'s namespace `to_ns`.
/// Stops at the first error (the snapshot being copied is discarded; those copied before
/// stay).
pub fn sync_snapshots(
    source: &dyn DatastoreAccess,
    from_ns: &BackupNamespace,
    target: &dyn BackupTarget,
    to_ns: &BackupNamespace,
    snapshots: &[BackupDir],
    options: &SyncOptions,
) -> Result<SyncSummary> {
    let started = Instant::now();
    let progress = &options.progress;
    progress
        .snapshots_total
        .store(snapshots.len() as u64, Ordering::Relaxed);
    let mut outcomes = Vec::with_capacity(snapshots.len());
    // The destination's finished snapshot times, per group, listed once.
    let mut present: Option<(BackupGroup, Vec<i64>)> = None;
    for dir in snapshots {
        if options.abort.load(Ordering::Relaxed) {
            bail!("sync interrupted");
        }
        if present.as_ref().map(|(g, _)| g) != Some(&dir.group) {
            present = Some((
                dir.group.clone(),
                finished_times(target, to_ns, &dir.group)?,
            ));
        }
        let times = &mut present.as_mut().expect("set above").1;
        *progress.current.lock().unwrap_or_else(|e| e.into_inner()) = dir.to_string();
        let outcome = if times.contains(&dir.time) {
            SnapshotOutcome::Present
        } else if times.iter().any(|t| *t > dir.time) {
            SnapshotOutcome::OlderThanDestination
        } else {
            let snapshot = source.open_snapshot(from_ns, dir)?;
            let outcome = copy_snapshot(snapshot.as_ref(), target, to_ns, options)
                .with_context(|| format!("cannot copy snapshot {dir}"))?;
            times.push(dir.time);
            outcome
        };
        if outcome == SnapshotOutcome::OlderThanDestination {
            log::warn!("{dir}: not copied, the destination's group has a newer snapshot");
        }
        outcomes.push((dir.clone(), outcome));
        progress.snapshots_done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(SyncSummary {
        snapshots: outcomes,
        duration: started.elapsed(),
    })
}

fn finished_times(
    target: &dyn BackupTarget,
    ns: &BackupNamespace,
    group: &BackupGroup,
) -> Result<Vec<i64>> {
    let access = target.access();
    if !access.namespace_exists(ns)? {
        bail!("namespace '{ns}' does not exist at the destination");
    }
    if !access.list_groups(ns)?.contains(group) {
        return Ok(Vec::new());
    }
    Ok(access
        .list_snapshots(ns, Some(group))?
        .into_iter()
        .filter(|s| s.entry.finished)
        .map(|s| s.entry.dir.time)
        .collect())
}

/// One snapshot: its indexes' chunks, then each index, its blobs, and the manifest last.
fn copy_snapshot(
    snapshot: &dyn SnapshotAccess,
    target: &dyn BackupTarget,
    to_ns: &BackupNamespace,
    options: &SyncOptions,
) -> Result<SnapshotOutcome> {
    // Copied as stored, not as parsed and written again.
    let raw_manifest = snapshot.read_file(MANIFEST_BLOB_NAME)?;
    let manifest = snapshot.manifest();
    let params = SessionParams {
        ns: to_ns.clone(),
        dir: snapshot.dir().clone(),
        owner: options.owner.clone(),
        // A server registers the previous snapshot's encrypted chunks only for this key.
        chunk_key: manifest.stored_fingerprint().ok().flatten(),
    };
    let session: Arc<dyn BackupSession> = Arc::from(target.start_session(&params)?);
    let mut counts = ChunkCounts::default();
    for info in &manifest.files {
        let name = &info.filename;
        let raw = snapshot.read_file(name)?;
        match ArchiveKind::of(name) {
            Some(ArchiveKind::DynamicIndex | ArchiveKind::FixedIndex) => {
                let index = check_index(name, &raw, info)?;
                let copy = session.start_index_copy(name, raw, index.clone())?;
                let encrypted = info.crypt_mode == CryptMode::Encrypt;
                copy_chunks(snapshot, &session, &index, encrypted, options, &mut counts)
                    .with_context(|| format!("{name}: copying its chunks"))?;
                copy.finish()?;
            }
            Some(ArchiveKind::Blob) => {
                check_blob(name, &raw, info)?;
                session.add_blob(name, &raw)?;
            }
            None => bail!("{name}: not a file a snapshot can hold"),
        }
    }
    if options.abort.load(Ordering::Relaxed) {
        bail!("sync interrupted");
    }
    session.finish_with_manifest(&raw_manifest)?;
    Ok(SnapshotOutcome::Copied {
        chunks_sent: counts.sent,
        bytes_sent: counts.bytes,
        chunks_present: counts.present,
        client_log: copy_client_log(snapshot, target, to_ns),
    })
}

/// Copies the client log (a blob outside the manifest, added after the backup) once the
/// snapshot is complete, as PBS's sync does. The snapshot stands without it, so a log that
/// cannot be read, is damaged or cannot be stored is a warning, not a failed copy.
fn copy_client_log(
    snapshot: &dyn SnapshotAccess,
    target: &dyn BackupTarget,
    to_ns: &BackupNamespace,
) -> bool {
    let dir = snapshot.dir();
    let copied = snapshot.read_client_log().and_then(|log| match log {
        None => Ok(false),
        Some(raw) => {
            parse_blob(&raw).map_err(|err| anyhow!("it is damaged: {err}"))?;
            target.add_client_log(to_ns, dir, &raw)?;
            Ok(true)
        }
    });
    copied.unwrap_or_else(|err| {
        log::warn!("{dir}: copied without its client log: {err:#}");
        false
    })
}

#[derive(Default)]
struct ChunkCounts {
    sent: u64,
    bytes: u64,
    present: u64,
}

/// One chunk to fetch, check and send.
struct ChunkJob {
    digest: Digest,
    plain_size: u64,
}

/// What the chunk workers share.
struct ChunkCopier {
    source: Arc<dyn ChunkSource>,
    session: Arc<dyn BackupSession>,
    encrypted: bool,
    abort: Arc<AtomicBool>,
    progress: Arc<SyncProgress>,
    first_error: Mutex<Option<anyhow::Error>>,
    sent: AtomicU64,
    bytes: AtomicU64,
}

impl ChunkCopier {
    fn failed(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
            || self
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    fn run(&self, job: ChunkJob) {
        if self.failed() {
            return;
        }
        if let Err(err) = self.copy(&job) {
            let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert(err);
        }
    }

    fn copy(&self, job: &ChunkJob) -> Result<()> {
        let raw = self.source.fetch_raw_chunk_streaming(&job.digest)?;
        check_raw_chunk(&raw, &job.digest, job.plain_size, self.encrypted)?;
        self.session
            .upload_chunk(&job.digest, &raw, job.plain_size)?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
        self.progress.chunks_sent.fetch_add(1, Ordering::Relaxed);
        self.progress
            .bytes_sent
            .fetch_add(raw.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Sends the chunks of `index` the destination lacks, on `options.workers` threads; returns
/// when all are sent (a server's index appends need them known).
fn copy_chunks(
    snapshot: &dyn SnapshotAccess,
    session: &Arc<dyn BackupSession>,
    index: &AnyIndex,
    encrypted: bool,
    options: &SyncOptions,
    counts: &mut ChunkCounts,
) -> Result<()> {
    let copier = Arc::new(ChunkCopier {
        source: snapshot.chunk_source(),
        session: session.clone(),
        encrypted,
        abort: options.abort.clone(),
        progress: options.progress.clone(),
        first_error: Mutex::new(None),
        sent: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let workers = options.workers.max(1);
    let pool = WorkerPool::new("sync", workers, workers * 2, |_| {
        let copier = copier.clone();
        move |job| copier.run(job)
    })?;
    let mut seen = HashSet::new();
    for i in 0..index.chunk_count() {
        let chunk = index.chunk_info(i).expect("i < chunk_count");
        if !seen.insert(chunk.digest) {
            continue;
        }
        if copier.failed() {
            break;
        }
        // For a server this claims the chunk: it is then sent by us or the session fails.
        if session.is_known_chunk(&chunk.digest)? {
            counts.present += 1;
            continue;
        }
        let job = ChunkJob {
            digest: chunk.digest,
            plain_size: chunk.len(),
        };
        if pool.submit(job).is_err() {
            bail!("the chunk workers stopped");
        }
    }
    drop(pool); // waits for the jobs in hand and queued
    counts.sent += copier.sent.load(Ordering::Relaxed);
    counts.bytes += copier.bytes.load(Ordering::Relaxed);
    if let Some(err) = copier
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(err);
    }
    if options.abort.load(Ordering::Relaxed) {
        bail!("sync interrupted");
    }
    Ok(())
}

/// What can be checked without the key: the CRC and crypt mode of every chunk, and the
/// digest and size of a plain one (an uncompressed one in place, without a copy).
fn check_raw_chunk(raw: &[u8], digest: &Digest, plain_size: u64, encrypted: bool) -> Result<()> {
    let checked = check_chunk_crypt_mode(raw, encrypted).and_then(|()| match parse_blob(raw)? {
        BlobBody::Encrypted { .. } => Ok(()),
        BlobBody::Plain {
            compressed: false,
            data,
        } => verify_chunk(data, &chunk_digest(data), digest, Some(plain_size)),
        BlobBody::Plain {
            compressed: true,
            data,
        } => {
            let data = decompress_bounded(data, MAX_CHUNK_SIZE)?;
            verify_chunk(&data, &chunk_digest(&data), digest, Some(plain_size))
        }
    });
    checked.map_err(|err| anyhow!("chunk {}: {err}", digest_to_hex(digest)))
}
