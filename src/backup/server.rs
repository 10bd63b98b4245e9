//! The backup server: for each backup spec, walk the client's tree through the
//! [`ClientProvider`], encode pxar (v1 or v2 split) or read an image, cut and upload chunks
//! on worker threads while the walk goes on, write the catalog where the official client
//! writes one, and finish the snapshot.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::archive::{create_archive, ArchiveHooks, ArchiveOptions};
use super::client::{ClientProvider, SubTree};
use super::image::backup_image;
use super::protection::NotReusable;
use super::pxar_archives::{entry_callback, PxarContext};
use super::reuse::PreviousSnapshot;
pub use super::spec::{
    default_owner, ArchiveSummary, BackupOptions, BackupSpec, BackupSummary, ChangeDetection,
    Progress, SpecKind,
};
use super::upload::{ChunkedWriter, UploadPool};
use crate::format::catalog::CatalogWriter;
use crate::format::chunker::{CATALOG_CHUNK_SIZE, FIXED_CHUNK_SIZE};
use crate::format::manifest::CryptMode;
use crate::pxar::encoder::Encoder;
use crate::store::access::SnapshotAccess;
use crate::store::names::BackupDir;
use crate::store::target::{BackupSession, BackupTarget, SessionParams};

/// Name of the catalog file in a snapshot.
pub const CATALOG_NAME: &str = "catalog.pcat1.didx";

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
        )
        .context("cannot start the chunk workers")?;
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
                    summary.walk.add(&walk);
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
        let total = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        summary.chunks = total(&stats.chunks);
        summary.bytes = total(&stats.bytes);
        summary.new_chunks = total(&stats.new_chunks);
        summary.new_bytes = total(&stats.new_bytes);
        summary.new_stored_bytes = total(&stats.new_stored_bytes);
        summary.reused_chunks = total(&stats.injected_chunks);
        summary.reused_chunk_bytes = total(&stats.injected_bytes);
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
                summary.walk.add(&walk);
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
