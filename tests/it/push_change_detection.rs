//! Metadata change detection on trees of small files: an inode unchanged since the previous
//! snapshot is not opened at all (its attributes come from that snapshot), and when a few
//! changed files break the runs of re-usable chunks, the unchanged files around them are
//! copied from the previous chunks instead of being read again.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cli::{ok, pbsfs_local};
use common::source_tree::{describe_tree, random_bytes, set_xattr};
use pbsfs::backup::client::{ClientProvider, LocalClient};
use pbsfs::backup::server::{BackupOptions, BackupSpec, BackupSummary, ChangeDetection, Server};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::BackupGroup;

fn store() -> &'static (tempfile::TempDir, Arc<LocalDatastore>) {
    static STORE: OnceLock<(tempfile::TempDir, Arc<LocalDatastore>)> = OnceLock::new();
    STORE.get_or_init(common::new_datastore)
}

/// `dirs` directories of `files` small random files each; returns the paths.
fn small_files_tree(root: &Path, dirs: usize, files: usize) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for d in 0..dirs {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            let path = dir.join(format!("f{f:04}"));
            let seed = (d * files + f) as u64;
            std::fs::write(&path, random_bytes(seed, 100 + (f * 37) % 300)).unwrap();
            paths.push(path);
        }
    }
    paths
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A metadata-mode push named after the current time, as the CLI does, once the clock has
/// moved past every change made so far (inode change times have a finer grain than
/// snapshot times). Returns the summary and the bytes of file contents read.
fn push_now(tree: &Path, id: &str) -> (BackupSummary, u64) {
    let changed = now();
    while now() == changed {
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = LocalClient::new();
    let spec = BackupSpec::parse(&format!("root.pxar:{}", tree.display())).unwrap();
    let group = BackupGroup::parse(&format!("host/{id}")).unwrap();
    let mut options = BackupOptions::new(group, now());
    options.mode = ChangeDetection::Metadata;
    let server = Server::new(Arc::new(LocalTarget::new(store().1.clone())));
    let summary = server.run_backup(&client, &[spec], &options).unwrap();
    (summary, client.counters().content_bytes())
}

fn restore_latest(id: &str, target: &Path) {
    ok(&pbsfs_local(
        store().1.root(),
        &[
            "restore",
            &format!("host/{id}/latest"),
            "root.pxar",
            target.to_str().unwrap(),
        ],
    ));
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let len = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn unchanged_inodes_are_not_opened_and_changed_attributes_are_seen() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    let files = small_files_tree(&tree, 3, 20);
    let tagged = &files[7];
    if set_xattr(tagged, "user.tag", b"one").is_err() {
        panic!("the test directory's file system must allow user xattrs");
    }
    push_now(&tree, "attrs");

    let (second, read) = push_now(&tree, "attrs");
    assert_eq!(read, 0);
    assert_eq!(second.walk.reused_files, 60);
    assert_eq!(
        second.walk.attributes_read, 0,
        "attributes of unchanged inodes were read"
    );

    // An attribute change leaves mtime and size alone but moves the inode's ctime.
    set_xattr(tagged, "user.tag", b"two").unwrap();
    let (third, read) = push_now(&tree, "attrs");
    assert_eq!(third.walk.attributes_read, 1);
    assert_eq!(read, std::fs::metadata(tagged).unwrap().len());
    let target = work.path().join("restored");
    restore_latest("attrs", &target);
    let restored = target.join(tagged.strip_prefix(&tree).unwrap());
    assert_eq!(
        get_xattr(&restored, "user.tag").as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(describe_tree(&target), describe_tree(&tree));
}

/// Rewrites every `step`-th file with new content of the same size; returns the bytes.
fn change_files(files: &[PathBuf], step: usize, seed: u64) -> u64 {
    let mut bytes = 0;
    for (i, path) in files
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == step / 2)
    {
        let len = std::fs::metadata(path).unwrap().len() as usize;
        std::fs::write(path, random_bytes(seed + i as u64, len)).unwrap();
        bytes += len as u64;
    }
    bytes
}

#[test]
fn a_few_changed_small_files_are_the_only_ones_read() {
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    // 3000 files of 100-400 bytes: one payload chunk, so any change breaks every run.
    let files = small_files_tree(&tree, 10, 300);
    push_now(&tree, "few");
    let changed = change_files(&files, 100, 1_000_000);

    let (second, read) = push_now(&tree, "few");
    assert_eq!(read, changed, "only the changed files may be read");
    assert_eq!(second.walk.reread_files, 0);
    assert_eq!(
        second.walk.copied_files + second.walk.reused_files,
        3000 - 30
    );
    assert!(second.walk.copied_files > 0);
    let target = work.path().join("restored");
    restore_latest("few", &target);
    assert_eq!(describe_tree(&target), describe_tree(&tree));
}
