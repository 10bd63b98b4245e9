//! Running the `pbsfs` binary: against a local datastore directory or the in-process test
//! server, and checking what it printed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::disk_tree::tree_from_disk;
use super::pbs_server::TestServer;
use super::{wait_until_counted, Expected};

/// The `pbsfs` binary without the caller's own PBS settings (repository, namespace,
/// fingerprint, passwords), so a developer's environment cannot change a test.
pub fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pbsfs"));
    for name in [
        "PBS_REPOSITORY",
        "PBS_NAMESPACE",
        "PBS_FINGERPRINT",
        "PBS_PASSWORD",
        "PBS_ENCRYPTION_PASSWORD",
    ] {
        command.env_remove(name);
    }
    command
}

/// `pbsfs --repository STORE` (a local datastore directory), arguments still to add.
pub fn local_command(store: &Path) -> Command {
    let mut command = command();
    command.arg("--repository").arg(store);
    command
}

/// `pbsfs --repository STORE ARGS` on a local datastore directory.
pub fn pbsfs_local(store: &Path, args: &[&str]) -> Output {
    local_command(store).args(args).output().expect("run pbsfs")
}

/// The server's datastore as a repository string (token auth-id, loopback port).
pub fn repository(server: &TestServer) -> String {
    format!(
        "{}@127.0.0.1:{}:{}",
        server.config.token_id,
        server.addr.port(),
        server.config.store_name
    )
}

/// `pbsfs ARGS` against the server (token secret from PBS_PASSWORD, pinned fingerprint).
pub fn pbsfs(server: &TestServer, args: &[&str]) -> Output {
    command()
        .args([
            "--repository",
            &repository(server),
            "--fingerprint",
            &server.fingerprint,
        ])
        .args(args)
        .env("PBS_PASSWORD", &server.config.token_secret)
        .output()
        .expect("run pbsfs")
}

/// `pbsfs umount POINT`, best effort: for clean-up, where a failure must not hide the
/// test's own outcome.
pub fn umount(point: &Path) {
    let _ = command().arg("umount").arg(point).output();
}

/// The output's stdout, after asserting the command succeeded.
pub fn ok(out: &Output) -> &[u8] {
    assert!(
        out.status.success(),
        "pbsfs failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    &out.stdout
}

/// The output's stdout parsed as JSON, after asserting the command succeeded.
pub fn ok_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(ok(out)).expect("valid JSON on stdout")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command failed with `text` somewhere in its stderr.
pub fn fails_with(out: &Output, text: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "pbsfs succeeded; stderr: {err}");
    assert!(err.contains(text), "{err}");
}

/// A fresh empty directory to mount on, and the temporary directory that holds it.
pub fn mount_point() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    (tmp, point)
}

/// The whole tree a mount shows once it is ready; unmounts it afterwards.
pub fn read_mounted_tree(point: &Path) -> BTreeMap<Vec<u8>, Expected> {
    wait_until_counted(point);
    let tree = tree_from_disk(point);
    umount(point);
    tree
}
