//! The backup server: for each backup spec, walk the client's tree through the
//! [`ClientProvider`], encode pxar (v1 or v2 split) or read an image, cut and upload chunks
//! on worker threads while the walk goes on, write the catalog where the official client
//! writes one, and finish the snapshot.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::archive::{
    create_archive, ArchiveHooks, ArchiveObserver, ArchiveOptions, ArchiveStats, PayloadStream,
};
use super::client::{ClientProvider, SubTree};
use super::exclude::ExcludePatterns;
use super::protection::{NotReusable, Protection};
use super::reuse::PreviousSnapshot;
use super::upload::{ChunkedWriter, KnownChunk, SharedChunkedWriter, UploadPool};
use crate::format::catalog::CatalogWriter;
use crate::format::chunker::{CATALOG_CHUNK_SIZE, DEFAULT_CHUNK_SIZE, FIXED_CHUNK_SIZE};
use crate::format::manifest::CryptMode;
use crate::pxar::encoder::Encoder;
use crate::pxar::format::{Header, PXAR_PAYLOAD_START_MARKER, PXAR_PAYLOAD_TAIL_MARKER};
use crate::store::access::SnapshotAccess;
use crate::store::names::{BackupDir, BackupGroup, BackupNamespace};
use crate::store::target::{BackupSession, BackupTarget, SessionParams};

/// Name of the catalog file in a snapshot.
pub const CATALOG_NAME: &str = "catalog.pcat1.didx";

/// How files are compared with the previous snapshot (`--change-detection-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChangeDetection {
    /// One v1 `.pxar` archive per spec plus a catalog; every file is read.
    Legacy,
    /// v2 split archives; every file is read.
    Data,
    /// v2 split archives; unchanged files are referenced from the previous snapshot.
    #[default]
    Metadata,
}

/// What a spec backs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecKind {
    /// A directory tree as a pxar archive.
    Pxar,
    /// A file or block device as a fixed-index image.
    Image,
}

/// One `NAME.pxar:PATH`, `NAME.img:PATH` or bare `PATH` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSpec {
    /// Archive name without the extension (`root`, `home`, `drive-scsi0`).
    pub name: String,
    pub kind: SpecKind,
    pub path: PathBuf,
}

impl BackupSpec {
    /// Parses a spec like the official client's (`NAME.pxar:PATH`, `NAME.img:PATH`); a bare
    /// path is a pxar archive named after its last component (`root` for `/`).
    pub fn parse(text: &str) -> Result<Self> {
        if let Some((archive, path)) = text.split_once(':') {
            let (name, kind) = if let Some(name) = archive.strip_suffix(".pxar") {
                (name, SpecKind::Pxar)
            } else if let Some(name) = archive.strip_suffix(".img") {
                (name, SpecKind::Image)
            } else {
                bail!("backup spec '{text}': archive name must end in .pxar or .img");
            };
            check_archive_name(name, text)?;
            if path.is_empty() {
                bail!("backup spec '{text}' has no path");
            }
            return Ok(BackupSpec {
                name: name.to_string(),
                kind,
                path: absolute_path(Path::new(path)),
            });
        }
        if text.is_empty() {
            bail!("empty backup source");
        }
        let path = absolute_path(Path::new(text));
        let name = match normalized_last_component(&path) {
            Some(last) => sanitize_name(&last),
            None => "root".to_string(),
        };
        check_archive_name(&name, text)?;
        Ok(BackupSpec {
            name,
            kind: SpecKind::Pxar,
            path,
        })
    }

    /// The index files this spec produces.
    pub fn files(&self, mode: ChangeDetection) -> Vec<String> {
        match (self.kind, mode) {
            (SpecKind::Image, _) => vec![format!("{}.img.fidx", self.name)],
            (SpecKind::Pxar, ChangeDetection::Legacy) => vec![format!("{}.pxar.didx", self.name)],
            (SpecKind::Pxar, _) => vec![
                format!("{}.mpxar.didx", self.name),
                format!("{}.ppxar.didx", self.name),
            ],
        }
    }
}

/// Relative sources are relative to the working directory, as in any command; the walk
/// itself only ever sees absolute paths.
fn absolute_path(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn check_archive_name(name: &str, spec: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && !name.starts_with('.');
    if !ok {
        bail!("backup spec '{spec}': invalid archive name '{name}' (use NAME.pxar:PATH)");
    }
    Ok(())
}

/// Last component after resolving `.` and `..` lexically; `None` for `/`.
fn normalized_last_component(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.pop()
}

/// Characters the official archive names do not allow become `_`.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub entries: AtomicU64,
    pub current: Mutex<PathBuf>,
}

/// Everything about one backup run except the sources.
pub struct BackupOptions {
    pub ns: BackupNamespace,
    pub group: BackupGroup,
    pub time: i64,
    pub owner: String,
    pub mode: ChangeDetection,
    pub patterns: ExcludePatterns,
    pub all_file_systems: bool,
    /// Walk and encode, but store nothing.
    pub dry_run: bool,
    /// Hash/compress threads (0: one per core).
    pub workers: usize,
    /// Crypt mode and key of every archive (default: neither encrypted nor signed).
    pub protection: Protection,
    /// Set (e.g. by a signal handler) to stop the backup; the snapshot is then discarded.
    pub abort: Arc<AtomicBool>,
    pub progress: Option<Arc<Progress>>,
}

impl BackupOptions {
    pub fn new(group: BackupGroup, time: i64) -> Self {
        BackupOptions {
            ns: BackupNamespace::root(),
            group,
            time,
            owner: default_owner(),
            mode: ChangeDetection::default(),
            patterns: ExcludePatterns::default(),
            all_file_systems: false,
            dry_run: false,
            workers: 0,
            protection: Protection::none(),
            abort: Arc::default(),
            progress: None,
        }
    }
}

/// The owner a local push records: `<user>@pam`, like a PAM login on a PBS server.
pub fn default_owner() -> String {
    // SAFETY: getuid cannot fail; getpwuid returns a pointer into static storage or null.
    let name = unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if pw.is_null() {
            None
        } else {
            Some(
                std::ffi::CStr::from_ptr((*pw).pw_name)
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    };
    format!("{}@pam", name.unwrap_or_else(|| "root".into()))
}

/// One archive written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub filename: String,
    pub size: u64,
    pub chunks: u64,
}

/// What a backup did.
#[derive(Clone, Debug, Default)]
pub struct BackupSummary {
    /// `None` for a dry run.
    pub snapshot: Option<BackupDir>,
    pub archives: Vec<ArchiveSummary>,
    pub walk: ArchiveStats,
    /// File content read from the client.
    pub bytes_read: u64,
    /// Chunks and bytes that went through hashing (re-used chunks not included).
    pub chunks: u64,
    pub bytes: u64,
    /// Of those, new to the datastore.
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub new_stored_bytes: u64,
    /// Chunks of the previous snapshot referenced without reading.
    pub reused_chunks: u64,
    pub reused_chunk_bytes: u64,
    pub duration: Duration,
}

/// Runs backups into a store.
pub struct Server {
    /// None for a server that only does dry runs.
    store: Option<Arc<dyn BackupTarget>>,
}

impl Server {
    pub fn new(store: Arc<dyn BackupTarget>) -> Self {
        Server { store: Some(store) }
    }

    /// A server without a store: walks and encodes (`options.dry_run`), stores nothing.
    pub fn dry_run_only() -> Self {
        Server { store: None }
    }

    /// Backs up `specs` from `client` into one new snapshot.
    pub fn run_backup(
        &self,
        client: &dyn ClientProvider,
        specs: &[BackupSpec],
        options: &BackupOptions,
    ) -> Result<BackupSummary> {
        let started = Instant::now();
        if specs.is_empty() {
            bail!("nothing to back up");
        }
        let mut names = std::collections::HashSet::new();
        for spec in specs {
            if !names.insert(&spec.name) {
                bail!("archive name '{}' is used twice", spec.name);
            }
        }
        let read_before = client.counters().content_bytes();
        let mut summary = if options.dry_run {
            dry_run(client, specs, options)?
        } else {
            self.backup(client, specs, options)?
        };
        summary.bytes_read = client.counters().content_bytes() - read_before;
        summary.duration = started.elapsed();
        Ok(summary)
    }

    fn backup(
        &self,
        client: &dyn ClientProvider,
        specs: &[BackupSpec],
        options: &BackupOptions,
    ) -> Result<BackupSummary> {
        let dir = BackupDir::new(options.group.clone(), options.time)?;
        let params = SessionParams {
            ns: options.ns.clone(),
            dir: dir.clone(),
            owner: options.owner.clone(),
            chunk_key: options.protection.chunk_key().map(|key| key.fingerprint()),
        };
        let store = self
            .store
            .as_deref()
            .context("a dry-run server cannot store a backup")?;
        let session: Arc<dyn BackupSession> = Arc::from(store.start_session(&params)?);
        // Looked for after the session started: the group is locked now.
        let previous = match options.mode {
            // One that cannot be opened only costs reading every file, as one that cannot
            // be re-used does (`open_previous`).
            ChangeDetection::Metadata => store
                .previous(&options.ns, &options.group)
                .unwrap_or_else(|err| {
                    log::warn!("cannot open the previous snapshot for change detection: {err:#}");
                    None
                }),
            _ => None,
        };
        let pool = UploadPool::new(
            session.clone(),
            options.protection.chunk_encoding(),
            options.workers,
            options.abort.clone(),
        );
        let mut summary = BackupSummary::default();
        let has_pxar = specs.iter().any(|s| s.kind == SpecKind::Pxar);
        let mut catalog = if options.mode == ChangeDetection::Legacy && has_pxar {
            let index = session.create_dynamic_index(CATALOG_NAME)?;
            let writer = ChunkedWriter::dynamic(&pool, session.clone(), index, CATALOG_CHUNK_SIZE);
            Some(CatalogWriter::new(writer)?)
        } else {
            None
        };

        for spec in specs {
            let archives = match spec.kind {
                SpecKind::Image => vec![backup_image(client, spec, &pool, &session, options)?],
                SpecKind::Pxar => {
                    let tree = SubTree::new(client, &spec.path);
                    let ctx = PxarContext {
                        pool: &pool,
                        session: &session,
                        options,
                    };
                    let (archives, walk) = match options.mode {
                        ChangeDetection::Legacy => ctx.legacy(&tree, spec, catalog.as_mut())?,
                        _ => {
                            let previous = match &previous {
                                Some(prev) => open_previous(&**prev, options, &spec.name),
                                None => None,
                            };
                            ctx.split(&tree, spec, previous)?
                        }
                    };
                    add_walk_stats(&mut summary.walk, &walk);
                    archives
                }
            };
            summary.archives.extend(archives);
        }

        if let Some(catalog) = catalog {
            let writer = catalog.finish()?;
            let index = writer.finish()?;
            summary.archives.push(ArchiveSummary {
                filename: CATALOG_NAME.to_string(),
                size: index.size,
                chunks: index.chunk_count,
            });
        }
        let stats = pool.stats().clone();
        drop(pool);
        if options.abort.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        summary.snapshot = Some(match options.protection.mode() {
            CryptMode::None => session.finish()?,
            _ => session
                .finish_with(&|manifest| Ok(options.protection.complete_manifest(manifest)?))?,
        });
        summary.chunks = stats.chunks();
        summary.bytes = stats.bytes();
        summary.new_chunks = stats.new_chunks();
        summary.new_bytes = stats.new_bytes();
        summary.new_stored_bytes = stats.new_stored_bytes();
        summary.reused_chunks = stats.injected_chunks();
        summary.reused_chunk_bytes = stats.injected_bytes();
        Ok(summary)
    }
}

/// The previous snapshot's archive `name` for change detection; `None` (every file is
/// read) when it cannot be used, with a note why.
fn open_previous(
    previous: &dyn SnapshotAccess,
    options: &BackupOptions,
    name: &str,
) -> Option<PreviousSnapshot> {
    let prev = previous.dir();
    PreviousSnapshot::open(previous, name, &options.protection).unwrap_or_else(|err| {
        if let Some(reason) = err.downcast_ref::<NotReusable>() {
            // A warning: it makes this push read everything, even with -q.
            log::warn!("previous snapshot {prev} is not re-used ({reason}); every file is read");
        } else {
            log::warn!("cannot use previous snapshot {prev} for change detection: {err:#}");
        }
        None
    })
}

fn add_walk_stats(total: &mut ArchiveStats, walk: &ArchiveStats) {
    total.files += walk.files;
    total.hardlinks += walk.hardlinks;
    total.directories += walk.directories;
    total.others += walk.others;
    total.reused_files += walk.reused_files;
    total.reused_bytes += walk.reused_bytes;
    total.injected_bytes += walk.injected_bytes;
    total.warnings += walk.warnings;
    total.left_out += walk.left_out;
    total.incomplete += walk.incomplete;
}

/// Progress callback: counts entries, remembers the current path, stops on abort.
fn entry_callback(options: &BackupOptions) -> impl Fn(&Path) -> Result<()> + '_ {
    move |path: &Path| {
        if options.abort.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if let Some(progress) = &options.progress {
            progress.entries.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut current) = progress.current.try_lock() {
                current.clear();
                current.push(path);
            }
        }
        Ok(())
    }
}

struct PxarContext<'a, 'p> {
    pool: &'p UploadPool,
    session: &'a Arc<dyn BackupSession>,
    options: &'a BackupOptions,
}

impl<'p> PxarContext<'_, 'p> {
    fn archive_options<'o>(
        &'o self,
        on_entry: &'o dyn Fn(&Path) -> Result<()>,
    ) -> ArchiveOptions<'o> {
        ArchiveOptions {
            all_file_systems: self.options.all_file_systems,
            patterns: Some(&self.options.patterns),
            on_entry: Some(on_entry),
            ..Default::default()
        }
    }

    fn writer(&self, name: &str) -> Result<ChunkedWriter<'p>> {
        let index = self.session.create_dynamic_index(name)?;
        Ok(ChunkedWriter::dynamic(
            self.pool,
            self.session.clone(),
            index,
            DEFAULT_CHUNK_SIZE,
        ))
    }

    fn legacy<W: Write>(
        &self,
        tree: &dyn super::fs_accessor::FileSystemAccessor,
        spec: &BackupSpec,
        catalog: Option<&mut CatalogWriter<W>>,
    ) -> Result<(Vec<ArchiveSummary>, ArchiveStats)> {
        let filename = format!("{}.pxar.didx", spec.name);
        let writer = self.writer(&filename)?;
        let on_entry = entry_callback(self.options);
        let archive_options = self.archive_options(&on_entry);
        let mut observer = catalog.map(|catalog| CatalogObserver { catalog });
        if let Some(observer) = observer.as_mut() {
            observer.catalog.start_directory(filename.as_bytes())?;
        }
        let hooks = ArchiveHooks {
            observer: observer.as_mut().map(|o| o as &mut dyn ArchiveObserver),
            ..Default::default()
        };
        let (writer, _, walk) = create_archive(tree, &archive_options, hooks, |root, _| {
            Encoder::new_v1(writer, root)
        })
        .with_context(|| format!("cannot back up {}", spec.path.display()))?;
        if let Some(observer) = observer.as_mut() {
            observer.catalog.end_directory()?;
        }
        let index = writer.finish()?;
        Ok((
            vec![ArchiveSummary {
                filename,
                size: index.size,
                chunks: index.chunk_count,
            }],
            walk,
        ))
    }

    fn split(
        &self,
        tree: &dyn super::fs_accessor::FileSystemAccessor,
        spec: &BackupSpec,
        mut previous: Option<PreviousSnapshot>,
    ) -> Result<(Vec<ArchiveSummary>, ArchiveStats)> {
        let meta_name = format!("{}.mpxar.didx", spec.name);
        let payload_name = format!("{}.ppxar.didx", spec.name);
        let meta = SplitWriter::Meta(Box::new(self.writer(&meta_name)?));
        let payload = SharedChunkedWriter::new(self.writer(&payload_name)?);
        let mut hook = PayloadHook {
            writer: payload.clone(),
            tail_injected: false,
        };
        let on_entry = entry_callback(self.options);
        let archive_options = self.archive_options(&on_entry);
        let hooks = ArchiveHooks {
            observer: None,
            payload: Some(&mut hook),
            previous: previous
                .as_mut()
                .map(|p| p as &mut dyn super::archive::PreviousArchive),
        };
        let payload_sink = SplitWriter::Payload(payload.clone());
        let (meta, payload_sink, walk) =
            create_archive(tree, &archive_options, hooks, |root, prelude| {
                Encoder::new_v2(meta, payload_sink, root, prelude)
            })
            .with_context(|| format!("cannot back up {}", spec.path.display()))?;
        drop(payload_sink);
        let tail_injected = hook.tail_injected;
        drop(hook);
        let mut payload = payload.into_inner()?;
        if tail_injected {
            // The stream already ends with the previous stream's identical tail marker.
            payload.discard_bytes_after_injection_if(&marker(PXAR_PAYLOAD_TAIL_MARKER));
        }
        let SplitWriter::Meta(meta) = meta else {
            unreachable!("the metadata sink stays the metadata sink")
        };
        let payload_index = payload.finish()?;
        let meta_index = (*meta).finish()?;
        Ok((
            vec![
                ArchiveSummary {
                    filename: meta_name,
                    size: meta_index.size,
                    chunks: meta_index.chunk_count,
                },
                ArchiveSummary {
                    filename: payload_name,
                    size: payload_index.size,
                    chunks: payload_index.chunk_count,
                },
            ],
            walk,
        ))
    }
}

/// The two sinks of a split encoder must have one type; this is it.
enum SplitWriter<'p> {
    Meta(Box<ChunkedWriter<'p>>),
    Payload(SharedChunkedWriter<'p>),
}

impl Write for SplitWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            SplitWriter::Meta(writer) => writer.write(data),
            SplitWriter::Payload(writer) => writer.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct PayloadHook<'p> {
    writer: SharedChunkedWriter<'p>,
    /// The last injection ended with the previous stream's tail marker.
    tail_injected: bool,
}

impl PayloadStream for PayloadHook<'_> {
    fn suggest_boundary(&mut self) -> Result<()> {
        self.writer.lock().suggest_boundary()
    }

    fn inject(&mut self, chunks: &[KnownChunk], ends_previous: bool) -> Result<()> {
        self.tail_injected = ends_previous;
        self.writer.lock().inject(chunks)
    }

    fn absorb_start_marker(&mut self) -> Result<bool> {
        Ok(self
            .writer
            .lock()
            .discard_first_bytes_if(&marker(PXAR_PAYLOAD_START_MARKER)))
    }
}

/// A payload stream marker item (header only).
fn marker(htype: u64) -> [u8; 16] {
    Header::new(htype, 0).to_bytes()
}

/// Feeds the catalog from the walk.
struct CatalogObserver<'c, W: Write> {
    catalog: &'c mut CatalogWriter<W>,
}

impl<W: Write> ArchiveObserver for CatalogObserver<'_, W> {
    fn start_directory(&mut self, name: &[u8]) -> Result<()> {
        Ok(self.catalog.start_directory(name)?)
    }
    fn end_directory(&mut self) -> Result<()> {
        Ok(self.catalog.end_directory()?)
    }
    fn add_file(&mut self, name: &[u8], size: u64, mtime_secs: i64) -> Result<()> {
        Ok(self.catalog.add_file(name, size, mtime_secs)?)
    }
    fn add_hardlink(&mut self, name: &[u8]) -> Result<()> {
        Ok(self.catalog.add_hardlink(name)?)
    }
    fn add_symlink(&mut self, name: &[u8]) -> Result<()> {
        Ok(self.catalog.add_symlink(name)?)
    }
    fn add_char_device(&mut self, name: &[u8]) -> Result<()> {
        Ok(self.catalog.add_char_device(name)?)
    }
    fn add_block_device(&mut self, name: &[u8]) -> Result<()> {
        Ok(self.catalog.add_block_device(name)?)
    }
    fn add_fifo(&mut self, name: &[u8]) -> Result<()> {
        Ok(self.catalog.add_fifo(name)?)
    }
    fn add_socket(&mut self, name: &[u8]) -> Result<()> {
        Ok(self.catalog.add_socket(name)?)
    }
}

/// Reads a file or block device into a fixed index of 4 MiB chunks.
fn backup_image(
    client: &dyn ClientProvider,
    spec: &BackupSpec,
    pool: &UploadPool,
    session: &Arc<dyn BackupSession>,
    options: &BackupOptions,
) -> Result<ArchiveSummary> {
    let path = spec.path.strip_prefix("/").unwrap_or(&spec.path);
    let size = client
        .image_size(path)
        .with_context(|| format!("cannot back up image {}", spec.path.display()))?;
    let filename = format!("{}.img.fidx", spec.name);
    let index = session.create_fixed_index(&filename, size, FIXED_CHUNK_SIZE as u64)?;
    let mut writer = ChunkedWriter::fixed(pool, session.clone(), index, FIXED_CHUNK_SIZE);
    let mut reader = client
        .open_file(path)
        .with_context(|| format!("cannot open image {}", spec.path.display()))?;
    if let Some(progress) = &options.progress {
        *progress.current.lock().unwrap_or_else(|e| e.into_inner()) = spec.path.clone();
    }
    let mut buf = vec![0u8; 1024 * 1024];
    let mut remaining = size;
    while remaining > 0 {
        if options.abort.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let want = remaining.min(buf.len() as u64) as usize;
        let got = match reader.read(&mut buf[..want]) {
            Ok(0) => bail!(
                "image {} ended {remaining} bytes early",
                spec.path.display()
            ),
            Ok(got) => got,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("image read failed"),
        };
        writer.write_all(&buf[..got])?;
        remaining -= got as u64;
    }
    let index = writer.finish()?;
    Ok(ArchiveSummary {
        filename,
        size: index.size,
        chunks: index.chunk_count,
    })
}

/// Walks and encodes without storing anything (`--dry-run`).
fn dry_run(
    client: &dyn ClientProvider,
    specs: &[BackupSpec],
    options: &BackupOptions,
) -> Result<BackupSummary> {
    let mut summary = BackupSummary::default();
    let on_entry = entry_callback(options);
    for spec in specs {
        match spec.kind {
            SpecKind::Image => {
                let path = spec.path.strip_prefix("/").unwrap_or(&spec.path);
                let size = client.image_size(path)?;
                summary.archives.push(ArchiveSummary {
                    filename: format!("{}.img.fidx", spec.name),
                    size,
                    chunks: size.div_ceil(FIXED_CHUNK_SIZE as u64),
                });
            }
            SpecKind::Pxar => {
                let tree = SubTree::new(client, &spec.path);
                let archive_options = ArchiveOptions {
                    all_file_systems: options.all_file_systems,
                    patterns: Some(&options.patterns),
                    on_entry: Some(&on_entry),
                    ..Default::default()
                };
                let (counter, _, walk) = create_archive(
                    &tree,
                    &archive_options,
                    ArchiveHooks::default(),
                    |root, _| Encoder::new_v1(ByteCounter(0), root),
                )?;
                summary.archives.push(ArchiveSummary {
                    filename: format!("{}.pxar.didx", spec.name),
                    size: counter.0,
                    chunks: 0,
                });
                add_walk_stats(&mut summary.walk, &walk);
            }
        }
    }
    Ok(summary)
}

struct ByteCounter(u64);

impl Write for ByteCounter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0 += data.len() as u64;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_the_official_client() {
        let spec = BackupSpec::parse("root.pxar:/").unwrap();
        assert_eq!((spec.name.as_str(), spec.kind), ("root", SpecKind::Pxar));
        assert_eq!(spec.path, Path::new("/"));
        let spec = BackupSpec::parse("drive-scsi0.img:/dev/sda").unwrap();
        assert_eq!(spec.kind, SpecKind::Image);
        assert_eq!(
            spec.files(ChangeDetection::Metadata),
            ["drive-scsi0.img.fidx"]
        );
        assert_eq!(BackupSpec::parse("/").unwrap().name, "root");
        assert_eq!(BackupSpec::parse("/home/").unwrap().name, "home");
        assert_eq!(BackupSpec::parse("/srv/my data").unwrap().name, "my_data");
        let home = BackupSpec::parse("/home").unwrap();
        assert_eq!(
            home.files(ChangeDetection::Data),
            ["home.mpxar.didx", "home.ppxar.didx"]
        );
        assert_eq!(home.files(ChangeDetection::Legacy), ["home.pxar.didx"]);
        assert!(BackupSpec::parse("x.tar:/").is_err());
        assert!(BackupSpec::parse("bad name.pxar:/").is_err());
        assert!(BackupSpec::parse("root.pxar:").is_err());
        // Relative sources are taken relative to the working directory.
        let cwd = std::env::current_dir().unwrap();
        let relative = BackupSpec::parse("some/dir").unwrap();
        assert_eq!(relative.name, "dir");
        assert_eq!(relative.path, cwd.join("some/dir"));
        assert_eq!(
            BackupSpec::parse("x.pxar:sub").unwrap().path,
            cwd.join("sub")
        );
    }
}
