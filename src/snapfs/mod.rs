//! Snapshots as read-only filesystems for the mount crate: a pxar archive (v1 or a v2 pair)
//! as its tree, or a snapshot's disk images as files.

pub mod archive;
pub mod images;
mod listing;
mod open_files;
pub mod store_tree;

use std::sync::Arc;

use anyhow::{bail, Result};
use pbsfs_mount::ReadOnlyFs;

use crate::format::manifest::Manifest;
use crate::store::access::{open_index_reader, SnapshotAccess};
use crate::store::chunk_reader::ChunkReader;

pub use archive::ArchiveFs;
pub use images::ImageDirFs;
pub use store_tree::{StoreFs, StoreSource};

/// What a snapshot can show: its pxar archives (by the name the official client uses,
/// `root.pxar` also for a split `root.mpxar` + `root.ppxar` pair) and its images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mountable {
    /// `name.pxar.didx`.
    Pxar { name: String, file: String },
    /// `name.mpxar.didx` + `name.ppxar.didx`.
    SplitPxar {
        name: String,
        meta: String,
        payload: String,
    },
    /// `name.img.fidx`.
    Image { name: String, file: String },
}

impl Mountable {
    pub fn name(&self) -> &str {
        match self {
            Mountable::Pxar { name, .. }
            | Mountable::SplitPxar { name, .. }
            | Mountable::Image { name, .. } => name,
        }
    }
}

/// The archives of a manifest that can be mounted.
pub fn mountables(manifest: &Manifest) -> Vec<Mountable> {
    let has = |f: &str| manifest.files.iter().any(|i| i.filename == f);
    let mut out = Vec::new();
    for info in &manifest.files {
        let file = &info.filename;
        if let Some(stem) = file.strip_suffix(".pxar.didx") {
            out.push(Mountable::Pxar {
                name: format!("{stem}.pxar"),
                file: file.clone(),
            });
        } else if let Some(stem) = file.strip_suffix(".mpxar.didx") {
            let payload = format!("{stem}.ppxar.didx");
            if has(&payload) {
                out.push(Mountable::SplitPxar {
                    name: format!("{stem}.pxar"),
                    meta: file.clone(),
                    payload,
                });
            }
        } else if let Some(stem) = file.strip_suffix(".img.fidx") {
            out.push(Mountable::Image {
                name: format!("{stem}.img"),
                file: file.clone(),
            });
        }
    }
    out
}

/// The archives a user-typed name means: `root.pxar`, `root`, or a file name such as
/// `root.pxar.didx` or `root.mpxar.didx`.
pub fn select_archive<'a>(all: &'a [Mountable], wanted: &str) -> Vec<&'a Mountable> {
    all.iter()
        .filter(|m| {
            m.name() == wanted
                || m.name().rsplit_once('.').map(|(stem, _)| stem) == Some(wanted)
                || match m {
                    Mountable::Pxar { file, .. } | Mountable::Image { file, .. } => file == wanted,
                    Mountable::SplitPxar { meta, payload, .. } => {
                        meta == wanted || payload == wanted
                    }
                }
        })
        .collect()
}

/// Opens the filesystem for one snapshot: the archive named `archive` (with or without
/// `.pxar`/`.img`/index suffix), else the only pxar archive, else all images as files.
pub fn open_snapshot(
    snapshot: &dyn SnapshotAccess,
    archive: Option<&str>,
    chunks: Arc<dyn ChunkReader>,
) -> Result<Arc<dyn ReadOnlyFs>> {
    let dir = snapshot.dir();
    let all = mountables(snapshot.manifest());
    let names = || {
        all.iter()
            .map(|m| m.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Vec<&Mountable> = match archive {
        Some(wanted) => {
            let matches = select_archive(&all, wanted);
            if matches.is_empty() {
                bail!(
                    "snapshot {dir} has no archive '{wanted}'; it has: {}",
                    names()
                );
            }
            matches
        }
        None => {
            let pxars: Vec<&Mountable> = all
                .iter()
                .filter(|m| !matches!(m, Mountable::Image { .. }))
                .collect();
            match pxars.len() {
                0 if all.is_empty() => {
                    bail!("snapshot {dir} has no pxar archive or image to mount")
                }
                0 => all.iter().collect(), // images only
                1 => pxars,
                _ => bail!(
                    "snapshot {dir} has several archives; choose one with --archive: {}",
                    names()
                ),
            }
        }
    };
    let open = |file: &str| -> Result<Arc<crate::store::range::IndexReader>> {
        Ok(Arc::new(open_index_reader(snapshot, file, chunks.clone())?))
    };
    match chosen.as_slice() {
        [Mountable::Pxar { file, .. }] => Ok(Arc::new(ArchiveFs::open(open(file)?, None)?)),
        [Mountable::SplitPxar { meta, payload, .. }] => Ok(Arc::new(ArchiveFs::open(
            open(meta)?,
            Some(open(payload)?),
        )?)),
        many if many.iter().any(|m| !matches!(m, Mountable::Image { .. })) => bail!(
            "archive name '{}' is ambiguous in {dir}; it has: {}",
            archive.unwrap_or(""),
            names()
        ),
        images => {
            let mut list = Vec::new();
            for image in images {
                if let Mountable::Image { name, file } = image {
                    list.push((name.clone(), open(file)?));
                }
            }
            Ok(Arc::new(ImageDirFs::new(list, dir.time)))
        }
    }
}
