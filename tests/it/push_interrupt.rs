//! An interrupted push (SIGTERM, SIGINT, SIGHUP, SIGKILL) leaves no snapshot that looks finished and
//! the datastore usable; a concurrent push to the same group is refused.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::common;
use common::cli::{local_command, ok};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use pbsfs::store::target::{BackupTarget, SessionParams};

struct Shared {
    dir: tempfile::TempDir,
    store: Arc<LocalDatastore>,
}

/// One datastore and one slow-to-push tree (a huge sparse file: cheap to make, takes
/// minutes to push even though its holes are not read) per test binary.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (dir, store) = common::new_datastore();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("small"), b"small file").unwrap();
        let sparse = std::fs::File::create(tree.join("sparse")).unwrap();
        sparse.set_len(4 << 40).unwrap();
        Shared { dir, store }
    })
}

fn spawn_push(id: &str, time: i64) -> Child {
    let shared = shared();
    local_command(shared.store.root())
        .args(["push", "--quiet", "--workers", "1", "--backup-id", id])
        .args(["--backup-time", &time.to_string()])
        .arg(format!(
            "root.pxar:{}",
            shared.dir.path().join("tree").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn group_path(id: &str) -> std::path::PathBuf {
    shared().store.root().join("host").join(id)
}

/// Waits until the push has created its snapshot directory and uploaded some chunks.
fn wait_until_running(id: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "push ended too early");
        let snapshots = std::fs::read_dir(group_path(id))
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .count()
            })
            .unwrap_or(0);
        if snapshots > 0 {
            std::thread::sleep(Duration::from_millis(500));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("push did not start");
}

fn finished_snapshots(id: &str) -> usize {
    let group = BackupGroup::parse(&format!("host/{id}")).unwrap();
    shared()
        .store
        .list_group_snapshots(&BackupNamespace::root(), &group)
        .unwrap()
        .iter()
        .filter(|s| s.finished)
        .count()
}

fn snapshot_dirs(id: &str) -> usize {
    std::fs::read_dir(group_path(id))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .count()
}

fn push_small_succeeds(id: &str, time: i64) {
    // The same group, now without the slow file (excluded).
    let shared = shared();
    let output = local_command(shared.store.root())
        .args(["push", "--quiet", "--backup-id", id, "--exclude", "sparse"])
        .args(["--backup-time", &time.to_string()])
        .arg(format!(
            "root.pxar:{}",
            shared.dir.path().join("tree").display()
        ))
        .output()
        .unwrap();
    ok(&output);
    assert_eq!(finished_snapshots(id), 1);
}

fn interrupt_with(signal: libc::c_int, id: &str) {
    let mut child = spawn_push(id, 1000);
    wait_until_running(id, &mut child);
    // SAFETY: the pid belongs to our child process.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_eq!(finished_snapshots(id), 0);
    if signal != libc::SIGKILL {
        // Cleaned up, then the status shells expect of a process the signal ended.
        assert_eq!(status.code(), Some(128 + signal), "{status:?}");
        // A clean unwind removes the unfinished snapshot itself.
        assert_eq!(
            snapshot_dirs(id),
            0,
            "the unfinished snapshot was not removed"
        );
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("interrupted"), "{stderr}");
    }
    // The next push cleans up whatever is left and succeeds.
    push_small_succeeds(id, 2000);
    assert_eq!(snapshot_dirs(id), 1);
}

#[test]
fn sigterm_discards_the_snapshot() {
    interrupt_with(libc::SIGTERM, "sigterm");
}

#[test]
fn sigint_discards_the_snapshot() {
    interrupt_with(libc::SIGINT, "sigint");
}

#[test]
fn sighup_discards_the_snapshot() {
    interrupt_with(libc::SIGHUP, "sighup");
}

#[test]
fn sigkill_leaves_no_finished_snapshot() {
    interrupt_with(libc::SIGKILL, "sigkill");
}

/// A second signal, even a different one (Ctrl-C, then a SIGTERM from a service manager),
/// ends the process at once with the default action instead of waiting for the unwind.
#[test]
fn a_second_signal_ends_the_push_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let id = "second-signal";
    let mut child = spawn_push(id, 1000);
    wait_until_running(id, &mut child);
    let pid = child.id() as libc::pid_t;
    // Stopped, both signals are pending together and arrive before any unwinding starts.
    // SAFETY: the pid belongs to our child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .trim_start()
        .starts_with('T')
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGCONT] {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
    let status = child.wait().unwrap();
    assert!(
        matches!(status.signal(), Some(libc::SIGINT | libc::SIGTERM)),
        "{status:?}"
    );
    assert_eq!(finished_snapshots(id), 0);
    // The next push cleans up the unfinished snapshot and succeeds.
    push_small_succeeds(id, 2000);
    assert_eq!(snapshot_dirs(id), 1);
}

#[test]
fn a_concurrent_push_to_the_same_group_is_refused() {
    let shared = shared();
    let store = LocalTarget::new(shared.store.clone());
    let group = BackupGroup::parse("host/busy").unwrap();
    let session = store
        .start_session(&SessionParams {
            ns: BackupNamespace::root(),
            dir: BackupDir::new(group, 1000).unwrap(),
            owner: "test@pam".into(),
            chunk_key: None,
        })
        .unwrap();
    let output = local_command(shared.store.root())
        .args([
            "push",
            "--quiet",
            "--backup-id",
            "busy",
            "--backup-time",
            "2000",
        ])
        .args(["--exclude", "sparse"])
        .arg(Path::new(shared.dir.path()).join("tree"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another backup"), "{stderr}");
    drop(session);
}
