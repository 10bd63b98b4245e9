//! Writes a backup spec's pxar archives into a backup session: one v1 archive (legacy mode,
//! fed into the catalog as well) or a v2 metadata + payload pair (data and metadata modes,
//! the latter re-using the previous snapshot's chunks for unchanged files).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::archive::{
    create_archive, ArchiveHooks, ArchiveObserver, ArchiveOptions, ArchiveStats, OtherEntry,
    PreviousArchive,
};
use super::fs_accessor::FileSystemAccessor;
use super::payload::PayloadWriter;
use super::reuse::PreviousSnapshot;
use super::spec::{ArchiveSummary, BackupOptions, BackupSpec};
use super::upload::{ChunkedWriter, UploadPool};
use crate::format::catalog::CatalogWriter;
use crate::format::chunker::DEFAULT_CHUNK_SIZE;
use crate::pxar::encoder::Encoder;
use crate::store::target::BackupSession;

/// Progress callback: counts entries, remembers the current path, stops on abort.
pub(super) fn entry_callback(options: &BackupOptions) -> impl Fn(&Path) -> Result<()> + '_ {
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

/// Writes the pxar archives of the specs of one run.
pub(super) struct PxarContext<'a, 'p> {
    pub pool: &'p UploadPool,
    pub session: &'a Arc<dyn BackupSession>,
    pub options: &'a BackupOptions,
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

    pub(super) fn legacy<W: Write>(
        &self,
        tree: &dyn FileSystemAccessor,
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

    pub(super) fn split(
        &self,
        tree: &dyn FileSystemAccessor,
        spec: &BackupSpec,
        mut previous: Option<PreviousSnapshot>,
    ) -> Result<(Vec<ArchiveSummary>, ArchiveStats)> {
        let meta_name = format!("{}.mpxar.didx", spec.name);
        let payload_name = format!("{}.ppxar.didx", spec.name);
        let meta = self.writer(&meta_name)?;
        let payload = PayloadWriter::new(self.writer(&payload_name)?);
        let on_entry = entry_callback(self.options);
        let archive_options = self.archive_options(&on_entry);
        let hooks = ArchiveHooks {
            observer: None,
            previous: previous.as_mut().map(|p| p as &mut dyn PreviousArchive),
        };
        let (meta, payload, walk) =
            create_archive(tree, &archive_options, hooks, |root, prelude| {
                Encoder::new_v2(meta, payload, root, prelude)
            })
            .with_context(|| format!("cannot back up {}", spec.path.display()))?;
        let payload = payload.context("a split encoder returns its payload sink")?;
        let payload_index = payload.finish()?;
        let meta_index = meta.finish()?;
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
    fn add_other(&mut self, kind: OtherEntry, name: &[u8]) -> Result<()> {
        let catalog = &mut *self.catalog;
        Ok(match kind {
            OtherEntry::Hardlink => catalog.add_hardlink(name),
            OtherEntry::Symlink => catalog.add_symlink(name),
            OtherEntry::CharDevice => catalog.add_char_device(name),
            OtherEntry::BlockDevice => catalog.add_block_device(name),
            OtherEntry::Fifo => catalog.add_fifo(name),
            OtherEntry::Socket => catalog.add_socket(name),
        }?)
    }
}
