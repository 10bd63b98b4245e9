//! Datastore files and directories get the modes PBS gives them, whatever the umask of the
//! process writing them: a umask of 000 must not make snapshots writable by every local user,
//! and 077 must not hide them from the PBS server's `backup` user.

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;

/// Directories of the datastore, its namespaces, groups and snapshots.
pub const DIR_MODE: u32 = 0o755;
/// `.chunks` and its 65536 prefix directories.
pub const CHUNK_DIR_MODE: u32 = 0o750;
/// Every file: chunks, indexes, blobs, manifests, `owner`, `.lock`.
pub const FILE_MODE: u32 = 0o644;

/// The process's umask, read without changing it (umask(2) can only be read by setting it,
/// which would race with other threads creating files).
fn umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|line| line.starts_with("Umask:"))?;
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
    })
}

/// Whether the umask takes bits away from `mode`, so that a chmod must put them back. When
/// the umask cannot be read, assume it does.
fn umask_cuts(mode: u32) -> bool {
    umask().is_none_or(|mask| mode & mask != 0)
}

/// Creates directory `path` (it must not exist) with exactly `mode`.
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().mode(mode).create(path)?;
    if umask_cuts(mode) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Creates directory `path` with exactly `mode` unless it is a directory already (which is
/// left as it is).
pub fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    match create_dir(path, mode) {
        Err(err) if err.kind() == ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Creates `path` and its missing parents below `base` (which must exist) with `mode`.
pub fn create_dir_below(base: &Path, path: &Path, mode: u32) -> io::Result<()> {
    let relative = path.strip_prefix(base).map_err(|_| {
        io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not below {}", path.display(), base.display()),
        )
    })?;
    let mut current = base.to_path_buf();
    for component in relative.components() {
        current.push(component);
        ensure_dir(&current, mode)?;
    }
    Ok(())
}

/// Creates a new file (it must not exist) with exactly `mode`, open for writing.
pub fn create_new_file(path: &Path, mode: u32) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    if umask_cuts(mode) {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// Opens `path` for writing, creating it with exactly `mode` if missing (never truncates).
pub fn open_or_create_file(path: &Path, mode: u32) -> io::Result<File> {
    match create_new_file(path, mode) {
        Err(err) if err.kind() == ErrorKind::AlreadyExists => {
            fs::OpenOptions::new().read(true).write(true).open(path)
        }
        other => other,
    }
}

/// Replaces `path` whole with `bytes` (mode [`FILE_MODE`]): written and synced under a
/// temporary name beside it, then renamed over it, so a reader sees the old file or the new
/// one, never a part. The caller holds whatever lock keeps other writers of `path` away.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp_{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let write = || -> io::Result<()> {
        let mut file = create_new_file(&tmp, FILE_MODE)?;
        io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_umask_is_read_from_the_kernel() {
        // SAFETY: setting and restoring the mask; no other thread of this test creates files
        // in between that the assertion depends on.
        let previous = unsafe { libc::umask(0o022) };
        unsafe { libc::umask(previous) };
        assert_eq!(umask(), Some(previous as u32));
    }

    #[test]
    fn created_entries_have_exactly_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        create_dir_below(dir.path(), &dir.path().join("a/b"), CHUNK_DIR_MODE).unwrap();
        let file = dir.path().join("a/b/f");
        create_new_file(&file, FILE_MODE).unwrap();
        assert_eq!(
            fs::metadata(dir.path().join("a")).unwrap().mode() & 0o7777,
            0o750
        );
        assert_eq!(
            fs::metadata(dir.path().join("a/b")).unwrap().mode() & 0o7777,
            0o750
        );
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o644);
        assert!(create_new_file(&file, FILE_MODE).is_err());
        open_or_create_file(&file, FILE_MODE).unwrap();
    }
}
