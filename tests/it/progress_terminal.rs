//! Long commands draw a status line on a terminal (and clear it), and nothing when told to
//! be quiet: gc, prune, verify, restore and sync, with stderr on a pseudo-terminal.

use crate::common;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use common::cli::local_command;

/// Runs `command` with stderr on a new pseudo-terminal; its exit success and everything it
/// wrote there.
fn on_terminal(mut command: Command) -> (bool, String) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills the two descriptors it is given.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // Not inherited by the commands other tests start meanwhile: the terminal ends (EIO
    // on the master) only once every holder of the slave has closed it.
    for fd in [master, slave] {
        // SAFETY: setting a flag on a descriptor just opened.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) },
            0
        );
    }
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    // The command holds the parent's copy of the slave until it is dropped.
    drop(command);
    // The terminal is read while the command runs (its buffer is small); it ends with EIO
    // once the command, the slave's last holder, has exited.
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let status = child.wait().unwrap();
    (status.success(), reader.join().unwrap())
}

fn copy_of_fixtures() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = tmp.path().join("ds");
    common::copy_fixture_datastore(&store);
    (tmp, store)
}

fn pbsfs(store: &Path, args: &[&str]) -> Command {
    let mut command = local_command(store);
    command.args(args);
    command
}

/// A status line is drawn (and the terminal's line cleared) with `shows` in it.
fn assert_status(text: &str, shows: &[&str]) {
    assert!(text.contains("\r\x1b[K"), "no status line drawn: {text:?}");
    assert!(
        shows.iter().any(|s| text.contains(s)),
        "none of {shows:?} in {text:?}"
    );
    // Cleared at the end: what follows the last clearing is whole lines (a summary) or
    // nothing.
    let after = text.rsplit("\r\x1b[K").next().unwrap();
    assert!(
        after.is_empty() || after.ends_with('\n'),
        "status line not cleared: {text:?}"
    );
}

#[test]
fn gc_and_prune_show_progress_on_a_terminal() {
    let (_tmp, store) = copy_of_fixtures();
    let (ok, text) = on_terminal(pbsfs(&store, &["prune", "--all", "--keep-last", "1"]));
    assert!(ok, "{text}");
    assert_status(&text, &["pruning"]);
    // gc needs a whole chunk store (the fixture's holds only the directories it uses).
    let (empty, _) = common::new_datastore();
    let store = empty.path().join("ds");
    let (ok, text) = on_terminal(pbsfs(&store, &["gc"]));
    assert!(ok, "{text}");
    assert_status(
        &text,
        &["starting", "checking access", "phase 1", "phase 2"],
    );
}

#[test]
fn sync_shows_progress_on_a_terminal_and_nothing_when_quiet() {
    let (empty, _) = common::new_datastore();
    let to = empty.path().join("ds");
    let fixtures = common::datastore_dir();
    let sync = |quiet: bool| {
        let mut command = local_command(&fixtures);
        if quiet {
            command.arg("-q");
        }
        command.args(["sync", "--to", to.to_str().unwrap(), "host/fixture-data"]);
        on_terminal(command)
    };
    let (ok, text) = sync(false);
    assert!(ok, "{text}");
    assert_status(&text, &["snapshots, "]);
    let (ok, text) = sync(true);
    assert!(ok, "{text}");
    assert!(!text.contains("\x1b[K"), "{text:?}");
}

#[test]
fn verify_and_restore_show_progress_on_a_terminal() {
    let store = common::datastore_dir();
    let (ok, text) = on_terminal(pbsfs(&store, &["verify", "host/fixture-data/latest"]));
    assert!(ok, "{text}");
    assert_status(&text, &["verified"]);
    let target = tempfile::tempdir().unwrap();
    let into = target.path().join("out");
    let (ok, text) = on_terminal(pbsfs(
        &store,
        &[
            "restore",
            "host/fixture-data/latest",
            "root.pxar",
            into.to_str().unwrap(),
        ],
    ));
    assert!(ok, "{text}");
    assert_status(&text, &["entries, "]);
}

#[test]
fn quiet_commands_draw_nothing_on_a_terminal() {
    let (_tmp, store) = copy_of_fixtures();
    for args in [
        &["-q", "prune", "--all", "--keep-last", "1", "--dry-run"][..],
        &["-q", "gc", "--dry-run"],
        &["-q", "verify", "host/fixture-data/latest"],
    ] {
        let (ok, text) = on_terminal(pbsfs(&store, args));
        assert!(ok, "{args:?}: {text}");
        assert!(!text.contains("\x1b[K"), "{args:?} drew {text:?}");
    }
}
