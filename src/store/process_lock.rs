//! The chunk store lock, as PBS's process locker (proxmox-sys `process_locker.rs`) keeps it on
//! `<datastore>/.lock`: every backup writer holds a shared lock, garbage collection an
//! exclusive one, both as `fcntl` record locks over the whole file.
//!
//! `fcntl` locks belong to a process, not to a descriptor: closing *any* descriptor of the
//! file drops all of the process's locks on it. So, as in PBS, each process keeps one open
//! descriptor per datastore for good and counts its writers itself:
//! - the first writer of the process takes the shared lock, the last one releases it;
//! - garbage collection takes the exclusive lock, which fails while another process (a PBS
//!   server, another pbsfs) has a writer; this process's own writers go on, and gc learns the
//!   start of the oldest of them ([`oldest_writer`]) to keep the chunks they may still refer to;
//! - a writer may start in this process during its own gc (its new chunks are young).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context, Result};

use super::fs_modes;

struct Locker {
    file: File,
    exclusive: bool,
    /// Start time (epoch seconds) of each live writer of this process, by guard id.
    writers: HashMap<u64, i64>,
    next_id: u64,
}

type SharedLocker = Arc<Mutex<Locker>>;

/// One locker per lock file (by device and inode), for the life of the process. The file is
/// opened once: closing a second descriptor of it would drop the locks of the first.
fn locker(root: &Path) -> Result<SharedLocker> {
    static LOCKERS: OnceLock<Mutex<HashMap<(u64, u64), SharedLocker>>> = OnceLock::new();
    let path = root.join(".lock");
    let mut lockers = LOCKERS.get_or_init(Default::default).lock().unwrap();
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        // Missing: no locker of ours can be on it, so opening (and creating) it is safe.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            fs_modes::open_or_create_file(&path, fs_modes::FILE_MODE)
                .with_context(|| format!("cannot create {}", path.display()))?
                .metadata()?
        }
        Err(err) => return Err(err).with_context(|| format!("cannot open {}", path.display())),
    };
    let key = (meta.dev(), meta.ino());
    if let Some(locker) = lockers.get(&key) {
        return Ok(locker.clone());
    }
    let file = fs_modes::open_or_create_file(&path, fs_modes::FILE_MODE)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let locker = Arc::new(Mutex::new(Locker {
        file,
        exclusive: false,
        writers: HashMap::new(),
        next_id: 0,
    }));
    lockers.insert(key, locker.clone());
    Ok(locker)
}

/// `F_SETLK` (no waiting) of `kind` over the whole file.
fn set_lock(file: &File, kind: i32) -> std::io::Result<()> {
    let lock = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: a valid open descriptor and a valid flock structure.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A writer's share of the datastore lock; released when dropped.
pub struct WriterLock {
    locker: SharedLocker,
    id: u64,
}

/// Registers a writer: takes the shared lock unless this process already holds one.
pub fn lock_writer(root: &Path) -> Result<WriterLock> {
    let locker = locker(root)?;
    let mut data = locker.lock().unwrap();
    if data.writers.is_empty() && !data.exclusive && set_lock(&data.file, libc::F_RDLCK).is_err() {
        bail!(
            "datastore {} is busy: garbage collection is running on it",
            root.display()
        );
    }
    let id = data.next_id;
    data.next_id += 1;
    data.writers.insert(id, now());
    drop(data);
    Ok(WriterLock { locker, id })
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let mut data = self.locker.lock().unwrap();
        data.writers.remove(&self.id);
        if data.writers.is_empty() && !data.exclusive {
            let _ = set_lock(&data.file, libc::F_UNLCK);
        }
    }
}

/// Garbage collection's exclusive hold of the datastore; released when dropped.
pub struct GcLock {
    locker: SharedLocker,
}

/// Takes the exclusive lock, refused while a writer of another process holds a shared one
/// (or a gc runs, here or elsewhere).
pub fn lock_gc(root: &Path) -> Result<GcLock> {
    let locker = locker(root)?;
    let mut data = locker.lock().unwrap();
    if data.exclusive {
        bail!(
            "garbage collection is already running on {}",
            root.display()
        );
    }
    if set_lock(&data.file, libc::F_WRLCK).is_err() {
        bail!(
            "datastore {} is busy: a backup (of pbsfs or a PBS server) or a garbage collection \
             is running on it; try again when it has finished",
            root.display()
        );
    }
    data.exclusive = true;
    drop(data);
    Ok(GcLock { locker })
}

impl GcLock {
    /// Start time of the oldest writer of this process still running.
    pub fn oldest_writer(&self) -> Option<i64> {
        self.locker.lock().unwrap().writers.values().copied().min()
    }
}

impl Drop for GcLock {
    fn drop(&mut self) {
        let mut data = self.locker.lock().unwrap();
        let kind = if data.writers.is_empty() {
            libc::F_UNLCK
        } else {
            libc::F_RDLCK
        };
        let _ = set_lock(&data.file, kind);
        data.exclusive = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Whether another process can take `kind` on the lock file now (asked of Python, whose
    /// `lockf` takes fcntl locks).
    fn other_process_can_lock(root: &Path, exclusive: bool) -> bool {
        let kind = if exclusive { "LOCK_EX" } else { "LOCK_SH" };
        let script = format!(
            "import fcntl,sys\nf=open(sys.argv[1],'r+')\ntry:\n fcntl.lockf(f,fcntl.{kind}|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(1)\n"
        );
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(root.join(".lock"))
            .status()
            .expect("python3 runs")
            .success()
    }

    #[test]
    fn writers_share_and_gc_excludes_other_processes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join(".lock"), b"").unwrap();
        assert!(other_process_can_lock(root, true));
        let first = lock_writer(root).unwrap();
        let second = lock_writer(root).unwrap();
        assert!(
            !other_process_can_lock(root, true),
            "a writer blocks gc elsewhere"
        );
        assert!(
            other_process_can_lock(root, false),
            "writers elsewhere may run"
        );
        // One writer ending must not drop the other's lock (fcntl's per-process pitfall).
        drop(first);
        assert!(!other_process_can_lock(root, true));
        // gc in this process runs next to its own writers and learns the oldest start.
        let gc = lock_gc(root).unwrap();
        assert!(gc.oldest_writer().is_some());
        assert!(
            !other_process_can_lock(root, false),
            "gc blocks writers elsewhere"
        );
        assert!(lock_gc(root).is_err());
        let during_gc = lock_writer(root).unwrap();
        drop(gc);
        assert!(
            !other_process_can_lock(root, true),
            "the writers still hold it"
        );
        assert!(other_process_can_lock(root, false));
        drop(second);
        drop(during_gc);
        assert!(other_process_can_lock(root, true));
    }
}
