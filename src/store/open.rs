//! The snapshot-reading kit: which archives a snapshot has and what a user-typed name
//! means (the one place archive names are resolved), and opening one of them: index →
//! verifying reader → chunk cache → pxar accessor (v1, or a v2 pair) or image reader.
//! Mounts, restore, change detection and tests all open archives through here.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};

use super::access::{open_index, SnapshotAccess};
use super::cache::ChunkCache;
use super::chunk_reader::{ChunkReader, VerifyingChunkReader};
use super::names::BackupDir;
use super::range::IndexReader;
use crate::format::crypto::CryptConfig;
use crate::format::manifest::Manifest;
use crate::format::ReadAt;
use crate::pxar::accessor::Accessor;

/// An archive a snapshot can show: its pxar archives (by the name the official client uses,
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

    pub fn is_image(&self) -> bool {
        matches!(self, Mountable::Image { .. })
    }
}

/// The archives of a manifest that can be opened as a tree or an image.
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

/// Finds the file a user meant by `archive` among a manifest's file names: the name as is, or
/// with `.didx`, `.fidx` or `.blob` added (like the official client).
pub fn resolve_archive_name<'a>(archive: &str, files: &'a [String]) -> Result<&'a str> {
    if let Some(exact) = files.iter().find(|f| f.as_str() == archive) {
        return Ok(exact);
    }
    let matching: Vec<&String> = files
        .iter()
        .filter(|f| {
            [".didx", ".fidx", ".blob"]
                .iter()
                .any(|suffix| f.strip_suffix(suffix) == Some(archive))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.as_str()),
        [] => {
            let stem = archive.strip_suffix(".pxar").unwrap_or(archive);
            let split = [format!("{stem}.mpxar.didx"), format!("{stem}.ppxar.didx")];
            if split.iter().all(|name| files.contains(name)) && archive.ends_with(".pxar") {
                bail!(
                    "'{archive}' is stored as a split pair ({} and {}); name one of them",
                    split[0],
                    split[1]
                );
            }
            bail!(
                "no archive '{archive}' in this snapshot; it has: {}",
                files.join(", ")
            )
        }
        many => bail!(
            "archive name '{archive}' is ambiguous: {}",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A pxar archive opened for random access: the metadata stream (the whole archive for v1)
/// and, for a split archive, the payload stream.
pub struct PxarArchive {
    pub meta: Arc<IndexReader>,
    pub payload: Option<Arc<IndexReader>>,
}

impl PxarArchive {
    /// A goodbye-table accessor over the streams.
    pub fn accessor(&self) -> Result<Accessor> {
        Accessor::open(
            self.meta.clone(),
            self.payload.clone().map(|p| p as Arc<dyn ReadAt>),
        )
        .context("cannot open the pxar archive")
    }
}

/// An archive of a snapshot, opened.
pub enum OpenedArchive {
    Pxar(PxarArchive),
    Image(Arc<IndexReader>),
}

/// Verified, decrypted (with `crypt`) and cached reads of a snapshot's chunks.
pub fn snapshot_chunks(
    snapshot: &dyn SnapshotAccess,
    crypt: Option<Arc<CryptConfig>>,
    cache_bytes: usize,
    prefetch_workers: usize,
) -> Arc<ChunkCache> {
    Arc::new(ChunkCache::new(
        Arc::new(VerifyingChunkReader::with_key(
            snapshot.chunk_source(),
            crypt,
        )),
        cache_bytes,
        prefetch_workers,
    ))
}

/// An index of the snapshot, checked against the manifest, as a random-access reader over
/// `chunks`.
pub fn open_index_reader(
    snapshot: &dyn SnapshotAccess,
    filename: &str,
    chunks: Arc<dyn ChunkReader>,
) -> Result<IndexReader> {
    let index = open_index(snapshot, filename)?;
    Ok(IndexReader::new(filename, Arc::new(index), chunks))
}

/// Opens one archive of the snapshot, reading its chunks through `chunks`.
pub fn open_mountable(
    snapshot: &dyn SnapshotAccess,
    what: &Mountable,
    chunks: Arc<dyn ChunkReader>,
) -> Result<OpenedArchive> {
    let open = |file: &str| -> Result<Arc<IndexReader>> {
        Ok(Arc::new(open_index_reader(snapshot, file, chunks.clone())?))
    };
    Ok(match what {
        Mountable::Pxar { file, .. } => OpenedArchive::Pxar(PxarArchive {
            meta: open(file)?,
            payload: None,
        }),
        Mountable::SplitPxar { meta, payload, .. } => OpenedArchive::Pxar(PxarArchive {
            meta: open(meta)?,
            payload: Some(open(payload)?),
        }),
        Mountable::Image { file, .. } => OpenedArchive::Image(open(file)?),
    })
}

/// Opens the archive named `name` (see [`select_archive`]): exactly one must match.
pub fn open_archive(
    snapshot: &dyn SnapshotAccess,
    name: &str,
    chunks: Arc<dyn ChunkReader>,
) -> Result<OpenedArchive> {
    let all = mountables(snapshot.manifest());
    match select_named(&all, snapshot.dir(), name)?.as_slice() {
        [one] => open_mountable(snapshot, one, chunks),
        _ => Err(ambiguous(&all, snapshot.dir(), name)),
    }
}

/// The archives of `dir` that `wanted` names (see [`select_archive`]); none is an error
/// that lists what there is.
pub fn select_named<'a>(
    all: &'a [Mountable],
    dir: &BackupDir,
    wanted: &str,
) -> Result<Vec<&'a Mountable>> {
    let matches = select_archive(all, wanted);
    if matches.is_empty() {
        bail!(
            "snapshot {dir} has no archive '{wanted}'; it has: {}",
            names(all)
        );
    }
    Ok(matches)
}

/// The pxar archive of `dir` a command means: the one `wanted` names, or without a name the
/// snapshot's only pxar archive (several are an error that lists them).
pub fn select_pxar<'a>(
    all: &'a [Mountable],
    dir: &BackupDir,
    wanted: Option<&str>,
) -> Result<&'a Mountable> {
    let pxars: Vec<&Mountable> = match wanted {
        Some(name) => select_named(all, dir, name)?
            .into_iter()
            .filter(|m| !m.is_image())
            .collect(),
        None => all.iter().filter(|m| !m.is_image()).collect(),
    };
    match (pxars.as_slice(), wanted) {
        ([one], _) => Ok(one),
        ([], Some(name)) => bail!("'{name}' in snapshot {dir} is an image, not a pxar archive"),
        ([], None) => bail!("snapshot {dir} has no pxar archive; it has: {}", names(all)),
        (_, _) => bail!(
            "snapshot {dir} has several pxar archives; name one with --archive: {}",
            names(all)
        ),
    }
}

/// The error for a name that means several archives of `dir`.
pub fn ambiguous(all: &[Mountable], dir: &BackupDir, name: &str) -> anyhow::Error {
    anyhow!(
        "archive name '{name}' is ambiguous in {dir}; it has: {}",
        names(all)
    )
}

/// The names of `all`, for messages.
pub fn names(all: &[Mountable]) -> String {
    all.iter()
        .map(|m| m.name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::access::LocalSnapshot;
    use crate::store::local::LocalDatastore;
    use crate::store::names::BackupNamespace;

    /// A chunk source that records every digest fetched.
    pub(crate) struct CountingSource {
        pub inner: Arc<dyn crate::store::ChunkSource>,
        pub fetched: std::sync::Mutex<Vec<crate::format::Digest>>,
    }

    impl CountingSource {
        pub(crate) fn over(snapshot: &dyn SnapshotAccess) -> Arc<Self> {
            Arc::new(CountingSource {
                inner: snapshot.chunk_source(),
                fetched: Default::default(),
            })
        }

        /// Verified chunk reads through this source.
        pub(crate) fn reader(self: &Arc<Self>) -> Arc<VerifyingChunkReader> {
            let source: Arc<dyn crate::store::ChunkSource> = self.clone();
            Arc::new(VerifyingChunkReader::with_key(source, None))
        }
    }

    impl crate::store::ChunkSource for CountingSource {
        fn fetch_raw_chunk(&self, digest: &crate::format::Digest) -> Result<Vec<u8>> {
            self.fetched.lock().unwrap().push(*digest);
            self.inner.fetch_raw_chunk(digest)
        }
    }

    /// A snapshot of the fixture datastore (root namespace).
    pub(crate) fn fixture(snapshot: &str) -> LocalSnapshot {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/datastore");
        let store = Arc::new(LocalDatastore::open(std::path::Path::new(path)).unwrap());
        let dir = BackupDir::parse(snapshot).unwrap();
        LocalSnapshot::open(store, &BackupNamespace::root(), &dir).unwrap()
    }

    #[test]
    fn opens_a_split_pair_by_its_pxar_name_and_an_image() {
        let meta = fixture("host/fixture-meta/2026-11-25T08:28:55Z");
        let chunks = snapshot_chunks(&meta, None, 1 << 20, 0);
        let OpenedArchive::Pxar(pxar) = open_archive(&meta, "root.pxar", chunks).unwrap() else {
            panic!("a pxar archive");
        };
        assert!(pxar.payload.is_some());
        let accessor = pxar.accessor().unwrap();
        assert!(accessor.is_split());
        assert!(accessor.root().unwrap().is_dir());

        let vm = fixture("vm/100/2026-11-25T08:29:01Z");
        let chunks = snapshot_chunks(&vm, None, 1 << 20, 0);
        let opened = open_archive(&vm, "drive-scsi0", chunks).unwrap();
        let OpenedArchive::Image(reader) = opened else {
            panic!("an image");
        };
        assert_eq!(reader.size(), vm.manifest().files[0].size);
    }

    #[test]
    fn an_unknown_name_lists_what_there_is() {
        let meta = fixture("host/fixture-meta/2026-11-25T08:28:55Z");
        let chunks = snapshot_chunks(&meta, None, 1 << 20, 0);
        let err = open_archive(&meta, "etc.pxar", chunks).err().unwrap();
        let text = format!("{err:#}");
        assert!(
            text.contains("no archive 'etc.pxar'") && text.contains("root.pxar"),
            "{text}"
        );
    }

    #[test]
    fn a_name_of_several_archives_is_ambiguous() {
        let all = vec![
            Mountable::Pxar {
                name: "root.pxar".into(),
                file: "root.pxar.didx".into(),
            },
            Mountable::Image {
                name: "root.img".into(),
                file: "root.img.fidx".into(),
            },
        ];
        let dir = BackupDir::parse("host/a/2026-01-01T00:00:00Z").unwrap();
        assert_eq!(select_named(&all, &dir, "root").unwrap().len(), 2);
        let err = ambiguous(&all, &dir, "root").to_string();
        assert!(err.contains("ambiguous"), "{err}");
    }

    #[test]
    fn the_only_pxar_archive_is_chosen_without_a_name() {
        let all = vec![
            Mountable::Pxar {
                name: "root.pxar".into(),
                file: "root.pxar.didx".into(),
            },
            Mountable::Image {
                name: "disk.img".into(),
                file: "disk.img.fidx".into(),
            },
        ];
        let dir = BackupDir::parse("host/a/2026-01-01T00:00:00Z").unwrap();
        assert_eq!(select_pxar(&all, &dir, None).unwrap().name(), "root.pxar");
        assert!(select_pxar(&all, &dir, Some("disk")).is_err());
        let mut two = all.clone();
        two.push(Mountable::Pxar {
            name: "etc.pxar".into(),
            file: "etc.pxar.didx".into(),
        });
        let err = select_pxar(&two, &dir, None).unwrap_err().to_string();
        assert!(err.contains("--archive"), "{err}");
        assert_eq!(
            select_pxar(&two, &dir, Some("etc")).unwrap().name(),
            "etc.pxar"
        );
    }

    #[test]
    fn archive_names() {
        let files: Vec<String> = [
            "root.pxar.didx",
            "catalog.pcat1.didx",
            "drive-scsi0.img.fidx",
            "qemu.conf.blob",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (typed, stored) in [
            ("root.pxar", "root.pxar.didx"),
            ("root.pxar.didx", "root.pxar.didx"),
            ("drive-scsi0.img", "drive-scsi0.img.fidx"),
            ("qemu.conf", "qemu.conf.blob"),
        ] {
            assert_eq!(resolve_archive_name(typed, &files).unwrap(), stored);
        }
        assert!(resolve_archive_name("root", &files).is_err());
        let split: Vec<String> = ["root.mpxar.didx", "root.ppxar.didx"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = resolve_archive_name("root.pxar", &split)
            .unwrap_err()
            .to_string();
        assert!(err.contains("split"), "{err}");
    }
}
