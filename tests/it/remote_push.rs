//! `pbsfs push` to the in-process PBS test server: the pushed snapshot verifies on the
//! server's datastore and mounts (from the server) as the source tree; an unchanged tree
//! pushed again in metadata mode uploads no payload chunk; a mount whose server goes away
//! answers EIO and works again once it is back.

use crate::common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use common::cli::{ok, pbsfs, pbsfs_local, umount};
use common::disk_tree::{assert_same_tree, tree_from_disk};
use common::pbs_server::{empty_datastore, ServerConfig, TestServer};
use common::source_tree::{make_basic_tree, make_special_files, random_bytes};
use common::wait_until_counted;
use pbsfs::format::index::AnyIndex;
use pbsfs::format::Digest;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};

/// Every entry kind (devices need root, which the tests have), xattrs, a hardlink, and two
/// random files large enough for several payload chunks each.
fn make_tree(root: &Path) {
    make_basic_tree(root);
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("dir/sub/big-a"), random_bytes(1, 9 << 20)).unwrap();
    std::fs::write(root.join("big-b"), random_bytes(2, 7 << 20)).unwrap();
    make_special_files(root);
}

/// Pushes `tree` as `host/<id>` at `time`; the JSON summary.
fn push(server: &TestServer, tree: &Path, id: &str, time: i64) -> serde_json::Value {
    let source = format!("root.pxar:{}", tree.display());
    let out = pbsfs(
        server,
        &[
            "push",
            "--backup-id",
            id,
            "--backup-time",
            &time.to_string(),
            "--output-format",
            "json",
            &source,
        ],
    );
    serde_json::from_slice(ok(&out)).unwrap()
}

fn index_digests(server: &TestServer, id: &str, time: i64, name: &str) -> Vec<Digest> {
    let group = BackupGroup::parse(&format!("host/{id}")).unwrap();
    let dir = BackupDir::new(group, time).unwrap();
    let raw = server
        .store()
        .read_snapshot_file(&BackupNamespace::root(), &dir, name)
        .unwrap();
    AnyIndex::parse(&raw).unwrap().digests().to_vec()
}

/// A mount of a snapshot served by the test server; unmounted on drop.
struct Mount {
    point: PathBuf,
}

impl Mount {
    fn new(server: &TestServer, snapshot: &str, point: PathBuf) -> Mount {
        std::fs::create_dir_all(&point).unwrap();
        ok(&pbsfs(
            server,
            &["mount", snapshot, point.to_str().unwrap()],
        ));
        wait_until_counted(&point);
        Mount { point }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        umount(&self.point);
    }
}

/// A work directory holding the test tree (`tree`), and an empty datastore (its path)
/// served by a test server.
fn tree_and_server() -> (tempfile::TempDir, PathBuf, PathBuf, TestServer) {
    let tmp = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree);
    let datastore = empty_datastore(tmp.path());
    let server = TestServer::start(&datastore, ServerConfig::default());
    (tmp, tree, datastore, server)
}

fn uploads(server: &TestServer) -> u64 {
    server.counters.chunk_uploads.load(Ordering::SeqCst)
}

#[test]
fn a_pushed_tree_verifies_mounts_as_the_source_and_is_pushed_again_without_payload() {
    let (tmp, tree, datastore, server) = tree_and_server();

    let first = push(&server, &tree, "tree", 1000);
    let uploaded = uploads(&server);
    assert!(uploaded >= 4, "{first}");
    assert_eq!(first["new-chunks"], uploaded, "{first}");
    assert_eq!(first["snapshot"], "host/tree/1970-01-01T00:16:40Z");

    // The server's datastore, checked as a local one: every chunk present and correct,
    // indexes and manifest valid.
    let verify = pbsfs_local(&datastore, &["verify"]);
    let report = String::from_utf8_lossy(ok(&verify)).to_string();
    assert!(
        report.contains("ok      host/tree/1970-01-01T00:16:40Z"),
        "{report}"
    );

    {
        let mount = Mount::new(&server, "host/tree/latest", tmp.path().join("mnt"));
        assert_same_tree(
            &tree_from_disk(&mount.point),
            &tree_from_disk(&tree),
            "mounted from the server",
        );
    }

    // Unchanged tree, metadata mode: no file is read and no payload chunk is uploaded.
    let before = uploads(&server);
    let second = push(&server, &tree, "tree", 2000);
    let uploaded = uploads(&server) - before;
    assert_eq!(second["bytes-read"], 0, "{second}");
    let first_payload: HashSet<Digest> = index_digests(&server, "tree", 1000, "root.ppxar.didx")
        .into_iter()
        .collect();
    let second_payload = index_digests(&server, "tree", 2000, "root.ppxar.didx");
    assert!(second_payload.iter().all(|d| first_payload.contains(d)));
    let second_meta = index_digests(&server, "tree", 2000, "root.mpxar.didx");
    assert!(
        uploaded <= second_meta.len() as u64,
        "{uploaded} uploads for {} metadata chunks",
        second_meta.len()
    );

    // Once the previous snapshot re-used its payload too, nothing at all is new.
    let before = uploads(&server);
    let third = push(&server, &tree, "tree", 3000);
    assert_eq!(uploads(&server), before, "{third}");
    assert_eq!(third["new-chunks"], 0, "{third}");

    let mount = Mount::new(&server, "host/tree/latest", tmp.path().join("mnt3"));
    assert_same_tree(
        &tree_from_disk(&mount.point),
        &tree_from_disk(&tree),
        "third snapshot mounted from the server",
    );
}

#[test]
fn an_image_pushed_to_the_server_restores_byte_for_byte() {
    let tmp = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = tmp.path().join("disk.img");
    // Not a multiple of 4 MiB: the last chunk is short.
    let data = random_bytes(7, (9 << 20) + 12345);
    std::fs::write(&image, &data).unwrap();
    let server = TestServer::start(&empty_datastore(tmp.path()), ServerConfig::default());
    let source = format!("disk.img:{}", image.display());
    ok(&pbsfs(
        &server,
        &["push", "--backup-type", "vm", "--backup-id", "7", &source],
    ));
    assert_eq!(uploads(&server), 3);
    let restored = pbsfs(&server, &["restore", "vm/7/latest", "disk.img", "-"]);
    assert!(ok(&restored) == data.as_slice(), "restored image differs");
}

#[test]
fn mount_reads_fail_with_eio_while_the_server_is_down_and_work_again_after() {
    let (tmp, tree, _, mut server) = tree_and_server();
    std::fs::write(tree.join("huge"), random_bytes(3, 48 << 20)).unwrap();
    push(&server, &tree, "tree", 1000);
    let mount = Mount::new(&server, "host/tree/latest", tmp.path().join("mnt"));
    // Metadata only: the payload chunks are not fetched yet.
    let names: Vec<_> = std::fs::read_dir(mount.point.join("dir/sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["big-a"]);
    let reads_before = server.counters.chunk_reads.load(Ordering::SeqCst);

    // Far more payload chunks than the mount reads ahead: most are fetched only when read.
    let huge = random_bytes(3, 48 << 20);
    server.stop();
    let err = std::fs::read(mount.point.join("huge")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    server.restart();
    let data = std::fs::read(mount.point.join("huge")).unwrap();
    assert!(data == huge, "huge differs after the restart");
    let data = std::fs::read(mount.point.join("dir/sub/big-a")).unwrap();
    assert!(
        data == random_bytes(1, 9 << 20),
        "big-a differs after the restart"
    );
    assert!(server.counters.chunk_reads.load(Ordering::SeqCst) > reads_before);
}

#[test]
fn an_encrypted_push_to_the_server_is_signed_and_restores_with_the_key() {
    let (tmp, tree, datastore, server) = tree_and_server();
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/fixture.key"
    );
    let source = format!("root.pxar:{}", tree.display());
    let push_at = |time: &str| {
        ok(&pbsfs(
            &server,
            &[
                "push",
                "--keyfile",
                key,
                "--backup-id",
                "secret",
                "--backup-time",
                time,
                &source,
            ],
        ));
    };
    push_at("2000");
    // On the server: every index encrypted, the manifest signed with the key's fingerprint.
    let store = pbsfs::store::local::LocalDatastore::open(&datastore).unwrap();
    let dir = pbsfs::store::names::BackupDir::parse("host/secret/1970-01-01T00:33:20Z").unwrap();
    let manifest = store
        .read_manifest(&pbsfs::store::names::BackupNamespace::root(), &dir)
        .unwrap();
    assert!(manifest.signature.is_some());
    assert!(manifest
        .files
        .iter()
        .all(|f| f.crypt_mode == pbsfs::format::manifest::CryptMode::Encrypt));
    // Restored from the server with the key: the same tree; without the key: a clear error.
    let target = tmp.path().join("restored");
    ok(&pbsfs(
        &server,
        &[
            "restore",
            "host/secret/latest",
            "root.pxar",
            target.to_str().unwrap(),
            "--keyfile",
            key,
        ],
    ));
    assert_same_tree(
        &tree_from_disk(&target),
        &tree_from_disk(&tree),
        "encrypted remote push",
    );
    let without = pbsfs(
        &server,
        &["restore", "host/secret/latest", "root.pxar", "-"],
    );
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("key needed"));

    // Pushed again with the same key: the previous snapshot's encrypted chunks are known on
    // the server, so nothing of the unchanged tree is uploaded again.
    let before = uploads(&server);
    push_at("3000");
    assert_eq!(
        uploads(&server),
        before,
        "unchanged chunks were uploaded again"
    );
}
