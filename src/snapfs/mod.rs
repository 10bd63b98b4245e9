//! Snapshots as read-only filesystems for the mount crate: a pxar archive (v1 or a v2 pair)
//! as its tree, or a snapshot's disk images as files. Archives are found and opened with
//! the kit in `store::open`.

pub mod archive;
pub mod images;
mod listing;
mod open_files;
pub mod store_tree;

use std::sync::Arc;

use anyhow::{bail, Result};
use pbsfs_mount::ReadOnlyFs;

use crate::store::access::SnapshotAccess;
use crate::store::chunk_reader::ChunkReader;
use crate::store::open::{
    ambiguous, mountables, names, open_mountable, select_named, Mountable, OpenedArchive,
};

pub use archive::ArchiveFs;
pub use images::ImageDirFs;
pub use store_tree::StoreFs;

/// Opens the filesystem for one snapshot: the archive named `archive` (with or without
/// `.pxar`/`.img`/index suffix), else the only pxar archive, else all images as files.
pub fn open_snapshot(
    snapshot: &dyn SnapshotAccess,
    archive: Option<&str>,
    chunks: Arc<dyn ChunkReader>,
) -> Result<Arc<dyn ReadOnlyFs>> {
    let dir = snapshot.dir();
    let all = mountables(snapshot.manifest());
    let chosen: Vec<&Mountable> = match archive {
        Some(wanted) => select_named(&all, dir, wanted)?,
        None => {
            let pxars: Vec<&Mountable> = all.iter().filter(|m| !m.is_image()).collect();
            match pxars.len() {
                0 if all.is_empty() => {
                    bail!("snapshot {dir} has no pxar archive or image to mount")
                }
                0 => all.iter().collect(), // images only
                1 => pxars,
                _ => bail!(
                    "snapshot {dir} has several archives; choose one with --archive: {}",
                    names(&all)
                ),
            }
        }
    };
    if chosen.len() > 1 && chosen.iter().any(|m| !m.is_image()) {
        return Err(ambiguous(&all, dir, archive.unwrap_or("")));
    }
    let mut images = Vec::new();
    for what in chosen {
        match open_mountable(snapshot, what, chunks.clone())? {
            OpenedArchive::Pxar(pxar) => {
                let label = format!("{dir}/{}", what.name());
                return Ok(Arc::new(ArchiveFs::open(pxar, label)?));
            }
            OpenedArchive::Image(reader) => images.push((what.name().to_string(), reader)),
        }
    }
    Ok(Arc::new(ImageDirFs::new(images, dir.time, dir.to_string())))
}
