//! Temporary chunk files: a chunk is written to `<digest>.tmp_pbsfs_<random>` in its prefix
//! directory and renamed into place. A writer that is killed leaves its temporary file
//! behind; this module tells such leftovers from files a live writer still owns.
//!
//! The writer holds an exclusive `flock` on its temporary file from creation to rename, and
//! the kernel drops that lock when the writer dies, however it dies. A leftover of ours is
//! therefore a temporary file nobody holds a lock on. Temporary files of other writers (the
//! PBS server itself writes `<digest>.tmp_XXXXXX`, and so did older pbsfs versions) carry no
//! lock, so they are only taken for leftovers once they are a day old.

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::fs_modes::{create_new_file, FILE_MODE};

/// What follows a digest in the name of a temporary chunk file of any writer.
const TMP_MARK: &str = ".tmp_";
/// What follows the digest in the name of our own temporary chunk files.
const OWN_TMP_MARK: &str = ".tmp_pbsfs_";
/// Age after which another writer's temporary chunk file is a leftover: no writer spends
/// that long on one chunk.
const FOREIGN_TMP_AGE: Duration = Duration::from_secs(24 * 3600);

/// A temporary chunk file, locked for as long as it is open.
pub struct TmpChunkFile {
    pub file: File,
    pub path: PathBuf,
}

/// Creates a temporary file for chunk `hex_digest` in `prefix_dir` and locks it.
pub fn create(prefix_dir: &Path, hex_digest: &str, random: &str) -> io::Result<TmpChunkFile> {
    let path = prefix_dir.join(format!("{hex_digest}{OWN_TMP_MARK}{random}"));
    let file = create_new_file(&path, FILE_MODE)?;
    // A cleaner may take the lock between the create and this call and unlink the file;
    // then the rename into place fails with NotFound and the caller writes again.
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let err = io::Error::last_os_error();
        let _ = fs::remove_file(&path);
        return Err(err);
    }
    Ok(TmpChunkFile { file, path })
}

/// Whether `name` is a temporary chunk file (of any writer).
pub(super) fn is_tmp_name(name: &str) -> bool {
    name.len() > 64
        && name.as_bytes()[..64].iter().all(u8::is_ascii_hexdigit)
        && name[64..].starts_with(TMP_MARK)
}

/// Removes `path` if it is a leftover: ours and unlocked, or another writer's and old.
/// Returns whether it was removed.
pub(super) fn remove_if_abandoned(path: &Path, name: &str, now: SystemTime) -> io::Result<bool> {
    if name[64..].starts_with(OWN_TMP_MARK) {
        let file = match File::open(path) {
            Ok(file) => file,
            // Renamed into place (or removed) since it was listed.
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        // SAFETY: a valid open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Ok(false); // a live writer holds it
        }
        // Unlinked while we hold the lock, so no writer can be between lock and rename.
        fs::remove_file(path)?;
        return Ok(true);
    }
    let modified = fs::symlink_metadata(path)?.modified()?;
    if now.duration_since(modified).unwrap_or_default() < FOREIGN_TMP_AGE {
        return Ok(false);
    }
    fs::remove_file(path)?;
    Ok(true)
}

/// Removes the temporary chunk files left behind by dead writers from the prefix
/// directories of `chunks_dir`. Returns how many were removed.
pub fn remove_abandoned(chunks_dir: &Path) -> io::Result<u64> {
    let now = SystemTime::now();
    let mut removed = 0;
    for prefix in fs::read_dir(chunks_dir)? {
        let prefix = prefix?;
        if !prefix.file_type()?.is_dir() {
            continue;
        }
        let entries = match fs::read_dir(prefix.path()) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_tmp_name(name) {
                continue;
            }
            match remove_if_abandoned(&entry.path(), name, now) {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn set_mtime(path: &Path, age: Duration) {
        let time = SystemTime::now() - age;
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    #[test]
    fn only_leftovers_of_dead_writers_are_removed() {
        let chunks = tempfile::tempdir().unwrap();
        let prefix = chunks.path().join("0123");
        fs::create_dir(&prefix).unwrap();

        // A live writer: its file stays locked while it is open.
        let live = create(&prefix, DIGEST, "live").unwrap();
        // A dead writer: its lock went with it.
        let dead = create(&prefix, DIGEST, "dead").unwrap();
        let dead_path = dead.path.clone();
        drop(dead);
        // Another writer's files: a fresh one may still be renamed, an old one will not.
        let fresh_foreign = prefix.join(format!("{DIGEST}.tmp_AbCdEf"));
        let old_foreign = prefix.join(format!("{DIGEST}.tmp_XyZ123"));
        fs::write(&fresh_foreign, b"x").unwrap();
        fs::write(&old_foreign, b"x").unwrap();
        set_mtime(&old_foreign, Duration::from_secs(2 * 24 * 3600));
        // A chunk and a file that only looks similar are never touched.
        let chunk = prefix.join(DIGEST);
        fs::write(&chunk, b"chunk").unwrap();
        let other = prefix.join("notes.tmp_x");
        fs::write(&other, b"x").unwrap();
        set_mtime(&other, Duration::from_secs(2 * 24 * 3600));

        assert_eq!(remove_abandoned(chunks.path()).unwrap(), 2);
        assert!(live.path.exists());
        assert!(!dead_path.exists());
        assert!(fresh_foreign.exists());
        assert!(!old_foreign.exists());
        assert!(chunk.exists());
        assert!(other.exists());

        // Once its writer is gone, the live writer's file is a leftover too.
        let live_path = live.path.clone();
        drop(live);
        assert_eq!(remove_abandoned(chunks.path()).unwrap(), 1);
        assert!(!live_path.exists());
    }
}
