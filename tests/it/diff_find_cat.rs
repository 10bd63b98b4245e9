//! `pbsfs diff`, `find` and `cat`: diffs of snapshots made from trees with known changes in
//! each push mode (legacy, data, metadata), a diff of split archives that fetches no payload
//! chunk, and find and cat on the fixtures.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::cli::{fails_with, ok, ok_json, pbsfs_local, stdout};
use common::source_tree::{chmod, is_root, random_bytes, set_mtime, set_xattr};
use pbsfs::backup::client::LocalClient;
use pbsfs::backup::server::{BackupOptions, BackupSpec, ChangeDetection, Server};
use pbsfs::format::Digest;
use pbsfs::store::access::LocalSnapshot;
use pbsfs::store::chunk_reader::VerifyingChunkReader;
use pbsfs::store::diff::{diff_archives, DiffOptions};
use pbsfs::store::local::LocalDatastore;
use pbsfs::store::local_target::LocalTarget;
use pbsfs::store::names::{BackupDir, BackupGroup, BackupNamespace};
use pbsfs::store::open::{open_archive, OpenedArchive, PxarArchive};
use pbsfs::store::time::epoch_to_rfc3339;
use pbsfs::store::ChunkSource;
use serde_json::Value;

fn store() -> &'static (tempfile::TempDir, Arc<LocalDatastore>) {
    static STORE: OnceLock<(tempfile::TempDir, Arc<LocalDatastore>)> = OnceLock::new();
    STORE.get_or_init(common::new_datastore)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Pushes `tree` as `host/ID` in `mode` once the clock has moved past every change made so
/// far (as `push_change_detection` does); returns the snapshot's name.
fn push(tree: &Path, id: &str, mode: ChangeDetection) -> String {
    let changed = now();
    while now() == changed {
        std::thread::sleep(Duration::from_millis(50));
    }
    let spec = BackupSpec::parse(&format!("root.pxar:{}", tree.display())).unwrap();
    let group = BackupGroup::parse(&format!("host/{id}")).unwrap();
    let time = now();
    let mut options = BackupOptions::new(group, time);
    options.mode = mode;
    let server = Server::new(Arc::new(LocalTarget::new(store().1.clone())));
    server
        .run_backup(&LocalClient::new(), &[spec], &options)
        .unwrap();
    format!("host/{id}/{}", epoch_to_rfc3339(time).unwrap())
}

fn setfacl(args: &[&str], path: &Path) {
    let status = Command::new("setfacl")
        .args(args)
        .arg(path)
        .status()
        .expect("setfacl (package acl) is needed");
    assert!(status.success(), "setfacl {args:?}");
}

/// Directory mtimes change with every entry added or removed: they are pinned, so that the
/// diff shows only the changes made on purpose.
fn pin_dir_times(root: &Path) {
    set_mtime(root, 1_700_000_000, 0);
}

/// The tree before: one file for each change to come, and `keep/` of unchanged files.
fn make_tree(root: &Path, unchanged: usize) {
    std::fs::create_dir_all(root.join("keep")).unwrap();
    for i in 0..unchanged {
        let path = root.join(format!("keep/f{i:05}"));
        std::fs::write(path, random_bytes(i as u64, 200 + i % 500)).unwrap();
    }
    set_mtime(&root.join("keep"), 1_600_000_000, 0);
    for name in [
        "acl.txt",
        "appended.txt",
        "chmod.txt",
        "chown.txt",
        "linked",
        "removed.txt",
        "replaced",
        "xattr.txt",
    ] {
        std::fs::write(root.join(name), format!("{name}\n").repeat(50)).unwrap();
    }
    std::os::unix::fs::symlink("target-one", root.join("symlink")).unwrap();
    set_mtime(&root.join("symlink"), 1_700_000_000, 0);
    pin_dir_times(root);
}

/// The changes the diff must find, with what it must say about each.
fn change_tree(root: &Path) -> BTreeMap<String, (&'static str, Vec<&'static str>)> {
    std::fs::write(root.join("added.txt"), b"new\n").unwrap();
    std::fs::remove_file(root.join("removed.txt")).unwrap();
    let mut appended = std::fs::read(root.join("appended.txt")).unwrap();
    appended.extend_from_slice(b"one more line\n");
    std::fs::write(root.join("appended.txt"), appended).unwrap();
    chmod(&root.join("chmod.txt"), 0o600);
    std::os::unix::fs::lchown(root.join("chown.txt"), Some(1234), Some(5678)).unwrap();
    set_xattr(&root.join("xattr.txt"), "user.tag", b"set").expect("user xattrs needed");
    setfacl(&["-m", "u:4321:r"], &root.join("acl.txt"));
    std::fs::hard_link(root.join("linked"), root.join("linked2")).unwrap();
    std::fs::remove_file(root.join("symlink")).unwrap();
    std::os::unix::fs::symlink("target-two", root.join("symlink")).unwrap();
    set_mtime(&root.join("symlink"), 1_700_000_000, 0);
    std::fs::remove_file(root.join("replaced")).unwrap();
    std::fs::create_dir(root.join("replaced")).unwrap();
    std::fs::write(root.join("replaced/inside"), b"inside\n").unwrap();
    set_mtime(&root.join("replaced"), 1_700_000_000, 0);
    pin_dir_times(root);
    [
        ("/acl.txt", "M", vec!["acl"]),
        ("/added.txt", "+", vec![]),
        ("/appended.txt", "M", vec!["content", "size", "mtime"]),
        ("/chmod.txt", "M", vec!["mode"]),
        ("/chown.txt", "M", vec!["owner"]),
        ("/linked2", "+", vec![]),
        ("/removed.txt", "-", vec![]),
        ("/replaced", "M", vec!["type"]),
        ("/replaced/inside", "+", vec![]),
        ("/symlink", "M", vec!["link-target"]),
        ("/xattr.txt", "M", vec!["xattrs"]),
    ]
    .into_iter()
    .map(|(path, sign, aspects)| (path.to_string(), (sign, aspects)))
    .collect()
}

/// `pbsfs diff A B --output-format json ARGS`: path → (sign, changed aspects), and the
/// whole document.
fn diff_json(a: &str, b: &str, extra: &[&str]) -> (BTreeMap<String, (String, Vec<String>)>, Value) {
    let mut args = vec!["--output-format", "json", "diff", a, b];
    args.extend_from_slice(extra);
    let doc = ok_json(&pbsfs_local(store().1.root(), &args));
    let changes = doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let aspects = c["changed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            (
                c["path"].as_str().unwrap().to_string(),
                (c["change"].as_str().unwrap().to_string(), aspects),
            )
        })
        .collect();
    (changes, doc)
}

fn known_changes_are_found(mode: ChangeDetection, id: &str) {
    assert!(is_root(), "the diff tests chown a file: run them as root");
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    make_tree(&tree, 50);
    let before = push(&tree, id, mode);
    let expected = change_tree(&tree);
    let after = push(&tree, id, mode);

    let (changes, doc) = diff_json(&before, &after, &[]);
    let found: BTreeMap<String, (&str, Vec<&str>)> = changes
        .iter()
        .map(|(path, (sign, aspects))| {
            let aspects = aspects.iter().map(String::as_str).collect();
            (path.clone(), (sign.as_str(), aspects))
        })
        .collect();
    assert_eq!(found, expected, "{mode:?}");
    let linked2 = doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "/linked2")
        .unwrap();
    assert_eq!(linked2["new"]["type"], "hardlink");
    assert_eq!(linked2["new"]["target"], "/linked");
    assert_eq!(doc["summary"]["added"], 3);
    assert_eq!(doc["summary"]["removed"], 1);

    // With --content every file of unknown content is read and compared: nothing else shows.
    let (with_content, doc) = diff_json(&before, &after, &["--content"]);
    assert_eq!(with_content, changes);
    assert_eq!(doc["summary"]["content-not-compared"], 0);

    // A path limits the diff to its subtree; the text form has +, - and M lines.
    let out = pbsfs_local(store().1.root(), &["diff", &before, &after, "/replaced"]);
    let text = stdout(&out);
    assert!(out.status.success());
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "M    /replaced/  type file → directory",
            "+    /replaced/inside"
        ]
    );
    let out = pbsfs_local(store().1.root(), &["diff", &before, &after]);
    let text = stdout(&out);
    assert!(text.contains("-    /removed.txt\n"), "{text}");
    assert!(text.contains("M    /chmod.txt  "), "{text}");
    assert!(text.contains("mode 0644 → 0600"), "{text}");
    assert!(text.contains("owner 0:0 → 1234:5678"), "{text}");
}

#[test]
fn diff_of_legacy_snapshots() {
    known_changes_are_found(ChangeDetection::Legacy, "diff-legacy");
}

#[test]
fn diff_of_data_mode_snapshots() {
    known_changes_are_found(ChangeDetection::Data, "diff-data");
}

#[test]
fn diff_of_metadata_mode_snapshots() {
    known_changes_are_found(ChangeDetection::Metadata, "diff-meta");
}

/// A chunk source that records the digests fetched.
struct Counting {
    inner: Arc<dyn ChunkSource>,
    fetched: Mutex<Vec<Digest>>,
}

impl ChunkSource for Counting {
    fn fetch_raw_chunk(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        self.fetched.lock().unwrap().push(*digest);
        self.inner.fetch_raw_chunk(digest)
    }
}

fn open_counted(name: &str, counting: &Arc<Counting>) -> PxarArchive {
    let dir = BackupDir::parse(name).unwrap();
    let snapshot = LocalSnapshot::open(store().1.clone(), &BackupNamespace::root(), &dir).unwrap();
    let source: Arc<dyn ChunkSource> = counting.clone();
    let chunks = Arc::new(VerifyingChunkReader::with_key(source, None));
    match open_archive(&snapshot, "root.pxar", chunks).unwrap() {
        OpenedArchive::Pxar(archive) => archive,
        OpenedArchive::Image(_) => panic!("a pxar archive"),
    }
}

#[test]
fn a_diff_of_split_snapshots_fetches_no_payload_chunk() {
    assert!(is_root(), "the diff tests chown a file: run them as root");
    let work = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tree = work.path().join("tree");
    make_tree(&tree, 3000);
    let before = push(&tree, "diff-count", ChangeDetection::Metadata);
    change_tree(&tree);
    let after = push(&tree, "diff-count", ChangeDetection::Metadata);

    let counting = Arc::new(Counting {
        inner: store().1.clone(),
        fetched: Mutex::default(),
    });
    let (a, b) = (
        open_counted(&before, &counting),
        open_counted(&after, &counting),
    );
    let mut changes = 0;
    let stats = diff_archives(&a, &b, &DiffOptions::default(), &mut |_| {
        changes += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(changes, 11);
    assert_eq!(stats.content_compared, 0);
    let meta: HashSet<Digest> = [&a, &b]
        .iter()
        .flat_map(|x| x.meta.index().digests().to_vec())
        .collect();
    let payload: HashSet<Digest> = [&a, &b]
        .iter()
        .flat_map(|x| x.payload.as_ref().unwrap().index().digests().to_vec())
        .filter(|d| !meta.contains(d))
        .collect();
    let fetched = counting.fetched.lock().unwrap();
    assert!(!fetched.is_empty(), "the metadata streams were read");
    let payload_fetched = fetched.iter().filter(|d| payload.contains(*d)).count();
    assert_eq!(payload_fetched, 0, "payload chunks fetched");
}

fn fixtures() -> std::path::PathBuf {
    common::fixtures_dir().join("datastore")
}

#[test]
fn find_in_the_fixtures_by_catalog_and_metadata_stream() {
    let out = pbsfs_local(
        &fixtures(),
        &["--output-format", "json", "find", "rand-409?"],
    );
    let found = ok_json(&out);
    let rows: Vec<(String, String)> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["snapshot"].as_str().unwrap().to_string(),
                r["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Legacy (catalog), data and both metadata snapshots; the second metadata snapshot lost
    // rand-4097. The encrypted snapshots need a key and are passed by.
    let count = |snapshot: &str| rows.iter().filter(|(s, _)| s.contains(snapshot)).count();
    assert_eq!(count("fixture-legacy"), 3);
    assert_eq!(count("fixture-data"), 3);
    assert_eq!(count("fixture-meta/2026-11-25T08:28:43Z"), 3);
    assert_eq!(count("fixture-meta/2026-11-25T08:28:55Z"), 2);
    assert_eq!(rows.len(), 11);
    let legacy = found
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["snapshot"].as_str().unwrap().contains("fixture-legacy"))
        .unwrap();
    assert_eq!(legacy["type"], "-");
    assert!(legacy["size"].is_u64() && legacy["mtime"].is_i64());

    // One group, a directory-only pattern, the text table.
    let out = pbsfs_local(&fixtures(), &["find", "host/fixture-meta", "/data/"]);
    let text = stdout(&out);
    ok(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().skip(1).all(|l| l.contains("/data ")), "{text}");

    // The key opens the encrypted legacy snapshot's catalog.
    let key = common::fixtures_dir().join("fixture.key");
    let out = pbsfs_local(
        &fixtures(),
        &[
            "--keyfile",
            key.to_str().unwrap(),
            "find",
            "host/fixture-enc/latest",
            "big-text",
        ],
    );
    assert!(stdout(&out).contains("/data/big-text"), "{}", stdout(&out));

    fails_with(
        &pbsfs_local(&fixtures(), &["find", "host/nothing", "*"]),
        "no readable snapshots",
    );
}

#[test]
fn cat_writes_a_file_and_refuses_directories_and_missing_paths() {
    let expected = "803237a2b911b7f54b84e3c8c7fdb02f24c7b5ed51360aa21f0f005f2a9ccfd3";
    let out = pbsfs_local(
        &fixtures(),
        &["cat", "host/fixture-meta/latest", "/data/big-text"],
    );
    assert_eq!(common::sha256_hex(ok(&out)), expected);
    let legacy = "9267c24ed7e02fc512702754e856e0b51346951a52b48feced21699312a5a828";
    let out = pbsfs_local(
        &fixtures(),
        &[
            "cat",
            "host/fixture-legacy/latest",
            "data/big-text",
            "--archive",
            "root.pxar",
        ],
    );
    assert_eq!(common::sha256_hex(ok(&out)), legacy);
    fails_with(
        &pbsfs_local(&fixtures(), &["cat", "host/fixture-meta/latest", "/data"]),
        "is a directory",
    );
    fails_with(
        &pbsfs_local(
            &fixtures(),
            &["cat", "host/fixture-meta/latest", "/data/nope"],
        ),
        "no such file",
    );
    fails_with(
        &pbsfs_local(&fixtures(), &["cat", "vm/100/latest", "/x"]),
        "no pxar archive",
    );
}

#[test]
fn diff_find_and_cat_through_the_server() {
    use common::pbs_server::{fixture_datastore, ServerConfig, TestServer};
    let server = TestServer::start(&fixture_datastore(), ServerConfig::default());
    let out = common::cli::pbsfs(
        &server,
        &[
            "diff",
            "host/fixture-meta/2026-11-25T08:28:43Z",
            "host/fixture-meta/latest",
            "/data/big-text",
        ],
    );
    assert!(
        stdout(&out).starts_with("M    /data/big-text  content, size 10988890 → 10988904"),
        "{}",
        stdout(&out)
    );
    let out = common::cli::pbsfs(&server, &["find", "host/fixture-data", "added.txt"]);
    assert_eq!(stdout(&out), "");
    ok(&out);
    let out = common::cli::pbsfs(
        &server,
        &["cat", "host/fixture-meta/latest", "data/added.txt"],
    );
    assert_eq!(
        common::sha256_hex(ok(&out)),
        "0f15384d18789b1ebf3043dc7b6bc27273c8576373fbeb6f3e15854b588141c0"
    );
}
