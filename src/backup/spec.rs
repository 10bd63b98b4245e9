//! What a push is asked to do (backup specs, change detection mode, options) and what it
//! reports (summaries).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};

use super::archive_options::ArchiveStats;
use super::exclude::ExcludePatterns;
use super::protection::Protection;
use crate::store::names::{BackupDir, BackupGroup, BackupNamespace};

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
