//! Backs up a file or block device as a fixed-index image.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::client::ClientProvider;
use super::spec::{ArchiveSummary, BackupOptions, BackupSpec};
use super::upload::{ChunkedWriter, UploadPool};
use crate::format::chunker::FIXED_CHUNK_SIZE;
use crate::store::target::BackupSession;

/// Reads a file or block device into a fixed index of 4 MiB chunks.
pub(super) fn backup_image(
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
